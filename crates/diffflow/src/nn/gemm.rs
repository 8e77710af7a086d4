//! The GEMM behind every fused engine (MLP and U-Net): `dst (+)= A · B` on the `gemm` crate
//! with free transposes through strides, and a FLOP counter that the tests read.

use super::act::Real;

#[cfg(test)]
thread_local! {
    /// Matrix-multiply FLOPs done on this thread (tests check the cost model with it).
    pub(crate) static FLOPS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Counts `2·m·n·k` FLOPs (tests only).
#[inline(always)]
pub(super) fn count(_m: usize, _n: usize, _k: usize) {
    #[cfg(test)]
    FLOPS.with(|c| c.set(c.get() + 2 * (_m * _n * _k) as u64));
}

/// `dst[m, n] (+)= A[m, k] · B[k, n]`, with `dst` row-major contiguous and `A`, `B` given by
/// their row and column strides (so transposes are free).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul<T: Real>(
    dst: &mut [T],
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    a_strides: (usize, usize),
    b: &[T],
    b_strides: (usize, usize),
    accumulate: bool,
) {
    matmul_strided(dst, (n, 1), m, n, k, a, a_strides, b, b_strides, accumulate)
}

/// [`matmul`] with `dst` also given by its row and column strides (e.g. a block of columns
/// of a wider matrix).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_strided<T: Real>(
    dst: &mut [T],
    (d_rs, d_cs): (usize, usize),
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    (a_rs, a_cs): (usize, usize),
    b: &[T],
    (b_rs, b_cs): (usize, usize),
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    count(m, n, k);
    let last = |rs: usize, cs: usize, r: usize, c: usize| (r - 1) * rs + (c - 1) * cs;
    assert!(
        dst.len() > last(d_rs, d_cs, m, n),
        "matmul: destination too small"
    );
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst[i * d_rs + j * d_cs] = T::zero();
                }
            }
        }
        return;
    }
    assert!(a.len() > last(a_rs, a_cs, m, k), "matmul: lhs too small");
    assert!(b.len() > last(b_rs, b_cs, k, n), "matmul: rhs too small");
    // SAFETY: the asserts above keep every access inside the three slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            d_cs as isize,
            d_rs as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

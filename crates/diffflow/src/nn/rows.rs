//! Row-wise loops of the MLP engine: column sums, the thin input and output layers (`d`
//! columns, too narrow for a GEMM), dots, and the f64 drains of gradient buffers; vectorised per
//! instruction set where that pays, with the same bits on every path.

use super::act::fast::{isa, Isa};
use super::act::Real;
use super::gemm::count;

/// `acc[j] += Σ_rows x[row, j]`. Shapes: `x` `[rows, acc.len()]`.
#[inline(always)]
pub(super) fn add_colsum<T: Real>(acc: &mut [T], x: &[T]) {
    for row in x.chunks_exact(acc.len()) {
        for (a, v) in acc.iter_mut().zip(row) {
            *a += *v;
        }
    }
}

/// `g ← g ⊙ d` and, when given, `acc[j] += Σ_rows g[row, j]` (of the product) in the same
/// pass. Shapes: `g`, `d` `[rows, H]`, `acc` `[H]`.
#[inline(always)]
pub(super) fn mul_colsum<T: Real>(g: &mut [T], d: &[T], acc: Option<&mut [T]>) {
    match acc {
        Some(acc) => {
            let w = acc.len();
            for (grow, drow) in g.chunks_exact_mut(w).zip(d.chunks_exact(w)) {
                for ((a, x), y) in acc.iter_mut().zip(grow.iter_mut()).zip(drow) {
                    *x *= *y;
                    *a += *x;
                }
            }
        }
        None => mul_assign(g, d),
    }
}

/// `x ← x ⊙ y`.
#[inline(always)]
pub(super) fn mul_assign<T: Real>(x: &mut [T], y: &[T]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a *= *b;
    }
}

#[inline(always)]
pub(super) fn add_assign<T: Real>(x: &mut [T], y: &[T]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += *b;
    }
}

/// `Σ_j a[j] b[j]` with 8 interleaved partial sums (a fixed order that vectorises).
#[inline(always)]
fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    for (x, y) in ra.iter().zip(rb) {
        acc[0] += *x * *y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// `out[r, :] = Σ_c a[r, c] · w[c, :]`: a thin product with `c < a.len()/rows` (the input
/// layer, or the output layer's pullback). Shapes: `a` `[rows, k]`, `w` `[k, n]`, `out` `[rows, n]`.
#[inline(always)]
pub(super) fn thin_rows<T: Real>(out: &mut [T], a: &[T], w: &[T], k: usize, n: usize) {
    count(a.len() / k, n, k);
    for (orow, arow) in out.chunks_exact_mut(n).zip(a.chunks_exact(k)) {
        let (first, rest) = w.split_at(n);
        for (o, w0) in orow.iter_mut().zip(first) {
            *o = arow[0] * *w0;
        }
        for (c, wc) in rest.chunks_exact(n).enumerate() {
            let ac = arow[c + 1];
            for (o, wv) in orow.iter_mut().zip(wc) {
                *o += ac * *wv;
            }
        }
    }
}

/// `acc[c, :] += Σ_r a[r, c] · x[r, :]` (a thin weight gradient). Shapes: `a` `[rows, k]`,
/// `x` `[rows, n]`, `acc` `[k, n]`.
#[inline(always)]
pub(super) fn thin_grad<T: Real>(acc: &mut [T], a: &[T], x: &[T], k: usize, n: usize) {
    count(a.len() / k, n, k);
    for (arow, xrow) in a.chunks_exact(k).zip(x.chunks_exact(n)) {
        for (c, acc_c) in acc.chunks_exact_mut(n).enumerate() {
            let ac = arow[c];
            for (o, xv) in acc_c.iter_mut().zip(xrow) {
                *o += ac * *xv;
            }
        }
    }
}

/// `out[r, c] = Σ_j h[r, j] w[c, j] (+ b[c])`: a product onto `d` columns by dot products.
/// Shapes: `h` `[rows, n]`, `w` `[d, n]`, `out` `[rows, d]`.
#[inline(always)]
pub(super) fn thin_dots<T: Real>(out: &mut [T], h: &[T], w: &[T], bias: Option<&[T]>, n: usize) {
    let d = w.len() / n;
    count(h.len() / n, n, d);
    for (orow, hrow) in out.chunks_exact_mut(d).zip(h.chunks_exact(n)) {
        for (c, o) in orow.iter_mut().enumerate() {
            let s = dot(hrow, &w[c * n..(c + 1) * n]);
            *o = match bias {
                Some(b) => s + b[c],
                None => s,
            };
        }
    }
}

/// `acc += v` (in f64), then `v = 0`. Vectorised for the best instruction set (the same bits
/// on each: the conversion is exact and each sum rounded once).
pub fn drain_into<T: Real>(acc: &mut [f64], v: &mut [T]) {
    #[inline(always)]
    fn body<T: Real>(acc: &mut [f64], v: &mut [T]) {
        for (a, x) in acc.iter_mut().zip(v.iter_mut()) {
            *a += x.to_f64();
            *x = T::zero();
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    unsafe fn body_avx512<T: Real>(acc: &mut [f64], v: &mut [T]) {
        body(acc, v)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn body_avx2<T: Real>(acc: &mut [f64], v: &mut [T]) {
        body(acc, v)
    }
    match isa() {
        // SAFETY: `isa()` found the features these functions are compiled for.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { body_avx512(acc, v) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { body_avx2(acc, v) },
        _ => body(acc, v),
    }
}

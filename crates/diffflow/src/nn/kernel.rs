//! Fused CPU engine of the [`Mlp`]: GEMMs on the `gemm` crate, bias + activation + its
//! derivative in one pass, buffers reused across calls, hand-written backward.

use super::act::Real;
use super::mlp::{idx, Mlp};
use super::{Engine, TimeNet};
use crate::{Error, Result};
use candle_core::{Device, Tensor};

/// `dst[m, n] (+)= A[m, k] · B[k, n]`, with `dst` row-major contiguous and `A`, `B` given by
/// their row and column strides (so transposes are free).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul<T: Real>(
    dst: &mut [T],
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
    assert!(dst.len() >= m * n, "matmul: destination too small");
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(T::zero());
        }
        return;
    }
    let last = |rs: usize, cs: usize, r: usize, c: usize| (r - 1) * rs + (c - 1) * cs;
    assert!(a.len() > last(a_rs, a_cs, m, k), "matmul: lhs too small");
    assert!(b.len() > last(b_rs, b_cs, k, n), "matmul: rhs too small");
    // SAFETY: the asserts above keep every access inside the three slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
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

/// `acc[j] += Σ_rows x[row, j]`. Shapes: `x` [rows, acc.len()].
fn add_colsum<T: Real>(acc: &mut [T], x: &[T]) {
    for row in x.chunks_exact(acc.len()) {
        for (a, v) in acc.iter_mut().zip(row) {
            *a += *v;
        }
    }
}

/// `x ← x ⊙ y`.
fn mul_assign<T: Real>(x: &mut [T], y: &[T]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a *= *b;
    }
}

fn to_vec<T: Real>(t: &Tensor) -> Result<Vec<T>> {
    Ok(t.flatten_all()?.to_dtype(T::DTYPE)?.to_vec1::<T>()?)
}

/// What one kept evaluation needs for its backward pass.
struct Tape<T> {
    rows: usize,
    x: Vec<T>,
    /// Post-activations of the input layer and of each hidden layer: [rows, H] each.
    h: Vec<Vec<T>>,
    /// Activation derivatives at the same places.
    d: Vec<Vec<T>>,
    /// Time path: pre-sine arguments [K], features [2K], act(v) [H], act'(v) [H].
    arg: Vec<T>,
    feat: Vec<T>,
    u: Vec<T>,
    du: Vec<T>,
    valid: bool,
}

impl<T> Default for Tape<T> {
    fn default() -> Self {
        Tape {
            rows: 0,
            x: Vec::new(),
            h: Vec::new(),
            d: Vec::new(),
            arg: Vec::new(),
            feat: Vec::new(),
            u: Vec::new(),
            du: Vec::new(),
            valid: false,
        }
    }
}

/// The [`Mlp`]'s fused CPU engine over element type `T` (f32 or f64).
pub struct MlpEngine<T> {
    act: super::Activation,
    dim: usize,
    width: usize,
    depth: usize,
    shapes: Vec<Vec<usize>>,
    /// Weights in [`Mlp::vars`] order, then the Fourier coefficients.
    w: Vec<Vec<T>>,
    coeff: Vec<T>,
    grads: Vec<Vec<T>>,
    tape: Tape<T>,
    /// Scratch buffers [rows, H].
    s0: Vec<T>,
    s1: Vec<T>,
}

impl<T: Real> MlpEngine<T> {
    /// Snapshot of `mlp`'s weights.
    pub fn new(mlp: &Mlp) -> Result<Self> {
        let cfg = mlp.config();
        let w = mlp
            .vars()
            .iter()
            .map(|(_, v)| to_vec::<T>(v.as_tensor()))
            .collect::<Result<Vec<_>>>()?;
        let shapes = mlp.vars().iter().map(|(_, v)| v.dims().to_vec()).collect();
        let grads = w.iter().map(|v| vec![T::zero(); v.len()]).collect();
        Ok(MlpEngine {
            act: cfg.activation,
            dim: mlp.dim(),
            width: cfg.width,
            depth: cfg.depth,
            shapes,
            coeff: to_vec::<T>(mlp.buffers()[0].1.as_tensor())?,
            w,
            grads,
            tape: Tape::default(),
            s0: Vec::new(),
            s1: Vec::new(),
        })
    }

    fn input(&self, x: &Tensor) -> Result<(usize, Vec<T>)> {
        let (rows, d) = x.dims2()?;
        if d != self.dim {
            return Err(Error::data(format!(
                "network expects {} columns, got {d}",
                self.dim
            )));
        }
        Ok((rows, to_vec::<T>(x)?))
    }

    fn output(&self, y: Vec<T>, rows: usize) -> Result<Tensor> {
        Ok(Tensor::from_vec(y, (rows, self.dim), &Device::Cpu)?)
    }

    /// Time features: fills `arg`, `feat`, `u`, `du` and returns the combined first-layer
    /// bias `b_in + h_t` [H].
    fn time_path(&self, t: f64, tape: &mut Tape<T>, keep: bool) -> Vec<T> {
        let (h, k) = (self.width, self.coeff.len());
        let t = T::from_f64(t);
        let phase = &self.w[idx::PHASE];
        tape.arg.clear();
        tape.arg
            .extend(self.coeff.iter().zip(phase).map(|(c, p)| *c * t + *p));
        tape.feat.resize(2 * k, T::zero());
        for (i, a) in tape.arg.iter().enumerate() {
            let (s, c) = a.sin_cos();
            tape.feat[i] = s;
            tape.feat[k + i] = c;
        }
        // v = W_t0 e (bias added with the activation)
        tape.u.resize(h, T::zero());
        matvec(&mut tape.u, &self.w[idx::T0_W], &tape.feat, h, 2 * k);
        tape.du.resize(h, T::zero());
        T::bias_act(
            self.act,
            &mut tape.u,
            &self.w[idx::T0_B],
            if keep { Some(&mut tape.du) } else { None },
        );
        let mut ht = vec![T::zero(); h];
        matvec(&mut ht, &self.w[idx::T2_W], &tape.u, h, h);
        for ((o, b2), bi) in ht
            .iter_mut()
            .zip(&self.w[idx::T2_B])
            .zip(&self.w[idx::IN_B])
        {
            *o = *bi + (*o + *b2);
        }
        ht
    }

    /// Forward pass; with `keep` the tape is filled, otherwise scratch buffers are used.
    fn run(&mut self, x: &Tensor, t: f64, keep: bool) -> Result<Tensor> {
        let (rows, xv) = self.input(x)?;
        let (d, h, depth) = (self.dim, self.width, self.depth);
        let mut tape = std::mem::take(&mut self.tape);
        let bias0 = self.time_path(t, &mut tape, keep);
        let layers = if keep { depth + 1 } else { 2 };
        tape.h.resize_with(layers, Vec::new);
        for buf in tape.h.iter_mut() {
            buf.resize(rows * h, T::zero());
        }
        if keep {
            tape.d.resize_with(depth + 1, Vec::new);
            for buf in tape.d.iter_mut() {
                buf.resize(rows * h, T::zero());
            }
        }
        // input layer
        matmul(
            &mut tape.h[0],
            rows,
            h,
            d,
            &xv,
            (d, 1),
            &self.w[idx::IN_W],
            (1, d),
            false,
        );
        T::bias_act(
            self.act,
            &mut tape.h[0],
            &bias0,
            if keep { Some(&mut tape.d[0]) } else { None },
        );
        for l in 0..depth {
            let (src, dst) = if keep {
                (l, l + 1)
            } else {
                (l % 2, (l + 1) % 2)
            };
            let (lo, hi) = tape.h.split_at_mut(src.max(dst));
            let (inp, out) = if src < dst {
                (&lo[src], &mut hi[0])
            } else {
                (&hi[0], &mut lo[dst])
            };
            let wi = idx::hidden_w(l);
            matmul(out, rows, h, h, inp, (h, 1), &self.w[wi], (1, h), false);
            T::bias_act(
                self.act,
                out,
                &self.w[wi + 1],
                if keep { Some(&mut tape.d[l + 1]) } else { None },
            );
        }
        let last = if keep { depth } else { depth % 2 };
        let wo = idx::out_w(depth);
        let mut y = vec![T::zero(); rows * d];
        matmul(
            &mut y,
            rows,
            d,
            h,
            &tape.h[last],
            (h, 1),
            &self.w[wo],
            (1, h),
            false,
        );
        for row in y.chunks_exact_mut(d) {
            for (v, b) in row.iter_mut().zip(&self.w[wo + 1]) {
                *v += *b;
            }
        }
        tape.rows = rows;
        tape.valid = keep;
        if keep {
            tape.x = xv;
        }
        self.tape = tape;
        self.output(y, rows)
    }
}

/// `out[i] = Σ_j w[i, j] v[j]`. Shapes: `w` [rows, cols].
fn matvec<T: Real>(out: &mut [T], w: &[T], v: &[T], rows: usize, cols: usize) {
    for (o, wr) in out.iter_mut().zip(w.chunks_exact(cols)).take(rows) {
        let mut s = T::zero();
        for (a, b) in wr.iter().zip(v) {
            s += *a * *b;
        }
        *o = s;
    }
}

impl<T: Real> Engine for MlpEngine<T> {
    fn eval(&mut self, x: &Tensor, t: f64) -> Result<Tensor> {
        // A plain evaluation must not destroy a kept tape: run it on the scratch buffers.
        let kept = std::mem::take(&mut self.tape);
        let mut scratch = Tape {
            h: vec![std::mem::take(&mut self.s0), std::mem::take(&mut self.s1)],
            ..Tape::default()
        };
        std::mem::swap(&mut self.tape, &mut scratch);
        let y = self.run(x, t, false);
        let mut used = std::mem::replace(&mut self.tape, kept);
        self.s1 = used.h.pop().unwrap_or_default();
        self.s0 = used.h.pop().unwrap_or_default();
        y
    }

    fn eval_keep(&mut self, x: &Tensor, t: f64) -> Result<Tensor> {
        self.run(x, t, true)
    }

    fn pullback(&mut self, cot: &Tensor, params: bool) -> Result<Tensor> {
        if !self.tape.valid {
            return Err(Error::config("pullback without a kept evaluation"));
        }
        let (d, h, depth) = (self.dim, self.width, self.depth);
        let rows = self.tape.rows;
        let (cr, cd) = cot.dims2()?;
        if cr != rows || cd != d {
            return Err(Error::data(format!(
                "cotangent shape [{cr}, {cd}] does not match the kept evaluation [{rows}, {d}]"
            )));
        }
        let cot = to_vec::<T>(cot)?;
        let tape = &self.tape;
        let mut g = std::mem::take(&mut self.s0);
        let mut g2 = std::mem::take(&mut self.s1);
        g.resize(rows * h, T::zero());
        g2.resize(rows * h, T::zero());
        // output layer
        let wo = idx::out_w(depth);
        if params {
            matmul(
                &mut self.grads[wo],
                d,
                h,
                rows,
                &cot,
                (1, d),
                &tape.h[depth],
                (h, 1),
                true,
            );
            add_colsum(&mut self.grads[wo + 1], &cot);
        }
        matmul(&mut g, rows, h, d, &cot, (d, 1), &self.w[wo], (h, 1), false);
        // hidden layers, last to first
        for l in (0..depth).rev() {
            mul_assign(&mut g, &tape.d[l + 1]);
            let wi = idx::hidden_w(l);
            if params {
                matmul(
                    &mut self.grads[wi],
                    h,
                    h,
                    rows,
                    &g,
                    (1, h),
                    &tape.h[l],
                    (h, 1),
                    true,
                );
                add_colsum(&mut self.grads[wi + 1], &g);
            }
            matmul(&mut g2, rows, h, h, &g, (h, 1), &self.w[wi], (h, 1), false);
            std::mem::swap(&mut g, &mut g2);
        }
        // input layer and the time path
        mul_assign(&mut g, &tape.d[0]);
        let mut dx = vec![T::zero(); rows * d];
        matmul(
            &mut dx,
            rows,
            d,
            h,
            &g,
            (h, 1),
            &self.w[idx::IN_W],
            (d, 1),
            false,
        );
        if params {
            matmul(
                &mut self.grads[idx::IN_W],
                h,
                d,
                rows,
                &g,
                (1, h),
                &tape.x,
                (d, 1),
                true,
            );
            let mut dht = vec![T::zero(); h];
            add_colsum(&mut dht, &g);
            add_assign(&mut self.grads[idx::IN_B], &dht);
            self.time_backward(&dht);
        }
        self.s0 = g;
        self.s1 = g2;
        self.output(dx, rows)
    }

    fn take_grads(&mut self) -> Result<Vec<Tensor>> {
        self.grads
            .iter_mut()
            .zip(&self.shapes)
            .map(|(g, shape)| {
                let v = std::mem::replace(g, vec![T::zero(); g.len()]);
                Ok(Tensor::from_vec(v, shape.as_slice(), &Device::Cpu)?)
            })
            .collect()
    }
}

fn add_assign<T: Real>(x: &mut [T], y: &[T]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += *b;
    }
}

impl<T: Real> MlpEngine<T> {
    /// Backward through `h_t = W_t2 act(W_t0 e(t) + b_t0) + b_t2` and the Fourier features,
    /// given `dh_t` [H].
    fn time_backward(&mut self, dht: &[T]) {
        let (h, k) = (self.width, self.coeff.len());
        let tape = &self.tape;
        // W_t2, b_t2
        for (i, gi) in dht.iter().enumerate() {
            let row = &mut self.grads[idx::T2_W][i * h..(i + 1) * h];
            for (w, u) in row.iter_mut().zip(&tape.u) {
                *w += *gi * *u;
            }
        }
        add_assign(&mut self.grads[idx::T2_B], dht);
        // dv = (W_t2ᵀ dh_t) ⊙ act'(v)
        let mut dv = vec![T::zero(); h];
        for (i, gi) in dht.iter().enumerate() {
            let row = &self.w[idx::T2_W][i * h..(i + 1) * h];
            for (o, w) in dv.iter_mut().zip(row) {
                *o += *w * *gi;
            }
        }
        mul_assign(&mut dv, &tape.du);
        for (i, gi) in dv.iter().enumerate() {
            let row = &mut self.grads[idx::T0_W][i * 2 * k..(i + 1) * 2 * k];
            for (w, e) in row.iter_mut().zip(&tape.feat) {
                *w += *gi * *e;
            }
        }
        add_assign(&mut self.grads[idx::T0_B], &dv);
        // de = W_t0ᵀ dv, then through sin and cos to the phase
        let mut de = vec![T::zero(); 2 * k];
        for (i, gi) in dv.iter().enumerate() {
            let row = &self.w[idx::T0_W][i * 2 * k..(i + 1) * 2 * k];
            for (o, w) in de.iter_mut().zip(row) {
                *o += *w * *gi;
            }
        }
        for j in 0..k {
            // feat[j] = sin a_j, feat[k + j] = cos a_j
            let (s, c) = (tape.feat[j], tape.feat[k + j]);
            self.grads[idx::PHASE][j] += de[j] * c - de[k + j] * s;
        }
    }
}

//! Fused CPU engine of the [`Mlp`]: hidden-layer GEMMs on the `gemm` crate, hand loops for the
//! thin input and output layers (`d` columns), bias + activation + its derivative in one pass,
//! hand-written backward, no allocation in the hot path (buffers live in [`Tape`]s and
//! [`Scratch`]es that the caller reuses).
//!
//! Two faces: the slice-level functions ([`MlpEngine::time_features`], [`MlpEngine::forward`],
//! [`MlpEngine::backward`], [`MlpEngine::time_backward`]) take `&self`, so one snapshot of the
//! weights serves several threads, each with its own tapes and gradients; and the tensor-level
//! [`Engine`] implementation built on them.

use super::act::fast::{isa, Isa};
use super::act::Real;
use super::gemm::matmul;
use super::mlp::{idx, Mlp};
use super::rows::{
    add_assign, add_colsum, drain_into, mul_assign, mul_colsum, thin_dots, thin_grad, thin_rows,
};
use super::{Engine, TimeNet};
use crate::{Error, Result};
use candle_core::{Device, Tensor};

/// Data dimension from which the input and output layers (`[rows, d]·[d, H]` and back) run
/// on the GEMM; below it (the 2-D sets) the hand-written thin loops are faster.
const GEMM_MIN_DIM: usize = 16;

/// Everything of one time `t` that does not depend on the rows: the first layer's combined
/// bias `b_in + h_t(t)` and what the time path's backward needs. The time path is computed
/// in f64 whatever `T` (it costs `O(H·K)` per time, against `O(B·H²)` for the rows): with
/// frequencies up to 100, `c·t + p` rounded to f32 would shift every feature by up to an
/// ulp of the argument, and the phase gradient sums these features over all nodes.
#[derive(Clone, Debug)]
pub struct TimeFeatures<T> {
    /// `b_in + h_t` `[H]`, rounded once to `T`.
    bias0: Vec<T>,
    /// `[sin a, cos a]` with `a = c·t + p` `[2K]`.
    feat: Vec<f64>,
    /// `act(W_t0 e + b_t0)` `[H]` and its derivative.
    u: Vec<f64>,
    du: Vec<f64>,
}

/// The activations of one kept evaluation (`rows` rows), for [`MlpEngine::backward`]. Buffers
/// are reused across calls (they grow, never shrink).
#[derive(Clone, Debug)]
pub struct Tape<T> {
    rows: usize,
    x: Vec<T>,
    /// Post-activations of the input layer and of each hidden layer: `[rows, H]` each.
    h: Vec<Vec<T>>,
    /// Activation derivatives at the same places.
    d: Vec<Vec<T>>,
    valid: bool,
}

impl<T: Real> Tape<T> {
    /// Bytes held by a tape of `rows` rows for an engine of width `h`, depth `depth`, dim `d`.
    pub fn bytes(rows: usize, d: usize, h: usize, depth: usize) -> usize {
        std::mem::size_of::<T>() * rows * (d + 2 * (depth + 1) * h)
    }
}

/// Two `[rows, H]` work buffers of one thread.
#[derive(Clone, Debug)]
pub struct Scratch<T> {
    a: Vec<T>,
    b: Vec<T>,
    /// `[d, H]` accumulator of the input weight's gradient.
    w_in: Vec<T>,
}

impl<T> TimeFeatures<T> {
    /// Only what [`MlpEngine::forward`] needs (the first layer's bias): enough for forward
    /// passes, not for [`MlpEngine::time_backward`].
    pub fn bias_only(self) -> Self {
        TimeFeatures {
            bias0: self.bias0,
            ..TimeFeatures::default()
        }
    }
}

impl<T> Default for TimeFeatures<T> {
    fn default() -> Self {
        TimeFeatures {
            bias0: Vec::new(),
            feat: Vec::new(),
            u: Vec::new(),
            du: Vec::new(),
        }
    }
}

impl<T> Default for Tape<T> {
    fn default() -> Self {
        Tape {
            rows: 0,
            x: Vec::new(),
            h: Vec::new(),
            d: Vec::new(),
            valid: false,
        }
    }
}

impl<T> Default for Scratch<T> {
    fn default() -> Self {
        Scratch {
            a: Vec::new(),
            b: Vec::new(),
            w_in: Vec::new(),
        }
    }
}

fn grow<T: Real>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len, T::zero());
    }
}

/// The [`Mlp`]'s fused CPU engine over element type `T` (f32 or f64): a snapshot of the
/// weights, plus the state of the tensor-level [`Engine`] face.
pub struct MlpEngine<T> {
    act: super::Activation,
    dim: usize,
    width: usize,
    depth: usize,
    shapes: Vec<Vec<usize>>,
    /// Weights in [`Mlp::vars`] order.
    w: Vec<Vec<T>>,
    /// The weights of the time path and of the input layer (`vars[..=T2_B]`) in f64, and
    /// the Fourier coefficients.
    time_w: Vec<Vec<f64>>,
    coeff: Vec<f64>,
    /// The input weight transposed: `[d, H]`.
    w_in_t: Vec<T>,
    /// The hidden weights transposed (`[H_in, H_out]`): the forward GEMM then reads them with
    /// unit stride, and the `gemm` crate does not repack them for every call.
    w_hidden_t: Vec<Vec<T>>,
    // State of the tensor-level face: gradients summed in f64, one pullback's in `T`.
    grads: Vec<Vec<f64>>,
    node: Vec<Vec<T>>,
    tape: Tape<T>,
    kept_time: TimeFeatures<T>,
    work: Tape<T>,
    scratch: Scratch<T>,
}

fn to_vec<T: Real>(t: &Tensor) -> Result<Vec<T>> {
    Ok(t.flatten_all()?.to_dtype(T::DTYPE)?.to_vec1::<T>()?)
}

/// `out[i] = Σ_j w[i, j] v[j]`. Shapes: `w` `[rows, cols]`.
fn matvec<T: Real>(out: &mut [T], w: &[T], v: &[T], rows: usize, cols: usize) {
    for (o, wr) in out.iter_mut().zip(w.chunks_exact(cols)).take(rows) {
        let mut s = T::zero();
        for (a, b) in wr.iter().zip(v) {
            s += *a * *b;
        }
        *o = s;
    }
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
        let time_w = mlp.vars()[..=idx::T2_B]
            .iter()
            .map(|(_, v)| to_vec::<f64>(v.as_tensor()))
            .collect::<Result<Vec<_>>>()?;
        let grads = w.iter().map(|v| vec![0.0; v.len()]).collect();
        let node = w.iter().map(|v| vec![T::zero(); v.len()]).collect();
        let (d, h) = (mlp.dim(), cfg.width);
        let mut w_in_t = vec![T::zero(); d * h];
        for j in 0..h {
            for c in 0..d {
                w_in_t[c * h + j] = w[idx::IN_W][j * d + c];
            }
        }
        let w_hidden_t = (0..cfg.depth)
            .map(|l| {
                let wl = &w[idx::hidden_w(l)];
                let mut t = vec![T::zero(); h * h];
                for i in 0..h {
                    for j in 0..h {
                        t[j * h + i] = wl[i * h + j];
                    }
                }
                t
            })
            .collect();
        Ok(MlpEngine {
            act: cfg.activation,
            w_hidden_t,
            dim: d,
            width: h,
            depth: cfg.depth,
            shapes,
            coeff: to_vec::<f64>(mlp.buffers()[0].1.as_tensor())?,
            w,
            time_w,
            w_in_t,
            grads,
            node,
            tape: Tape::default(),
            kept_time: TimeFeatures::default(),
            work: Tape::default(),
            scratch: Scratch::default(),
        })
    }

    /// Data dimension `d`.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Bytes of a [`Tape`] of `rows` rows for this net.
    pub fn tape_bytes(&self, rows: usize) -> usize {
        Tape::<T>::bytes(rows, self.dim, self.width, self.depth)
    }

    /// Zeroed parameter gradients in [`Mlp::vars`] order (flat), of element type `U`.
    pub fn zero_grads<U: Real>(&self) -> Vec<Vec<U>> {
        self.w.iter().map(|v| vec![U::zero(); v.len()]).collect()
    }

    /// Whether `g` has the shapes of [`MlpEngine::zero_grads`].
    pub fn fits_grads<U>(&self, g: &[Vec<U>]) -> bool {
        g.iter().map(Vec::len).eq(self.w.iter().map(Vec::len))
    }

    /// Adds the gradients that [`MlpEngine::backward`] summed into `node` (those of the
    /// input, hidden and output layers) to `acc` and zeroes them in `node`. Summing each
    /// node's gradient in `T` and the nodes in f64 keeps the cancellations between the
    /// nodes (the gradient is much smaller than its terms) out of `T`'s rounding.
    pub fn drain_grads(&self, acc: &mut [Vec<f64>], node: &mut [Vec<T>]) {
        let layers = std::iter::once(idx::IN_W).chain(idx::hidden_w(0)..idx::out_w(self.depth) + 2);
        for i in layers {
            drain_into(&mut acc[i], &mut node[i]);
        }
    }

    /// Gradients summed in f64 (flat, [`Mlp::vars`] order) as tensors of `T` of the
    /// parameters' shapes.
    pub fn grads_to_tensors(&self, grads: Vec<Vec<f64>>) -> Result<Vec<Tensor>> {
        grads
            .into_iter()
            .zip(&self.shapes)
            .map(|(g, shape)| {
                Ok(Tensor::from_vec(g, shape.as_slice(), &Device::Cpu)?.to_dtype(T::DTYPE)?)
            })
            .collect()
    }

    /// The time features `e(t)`, `act(W_t0 e + b_t0)` and the first layer's bias
    /// `b_in + W_t2 act(…) + b_t2`, computed in f64.
    pub fn time_features(&self, t: f64) -> TimeFeatures<T> {
        let (h, k) = (self.width, self.coeff.len());
        let tw = &self.time_w;
        let mut feat = vec![0.0; 2 * k];
        for (i, (c, p)) in self.coeff.iter().zip(&tw[idx::PHASE]).enumerate() {
            let (s, co) = (c * t + p).sin_cos();
            feat[i] = s;
            feat[k + i] = co;
        }
        // v = W_t0 e (bias added with the activation)
        let mut u = vec![0.0; h];
        matvec(&mut u, &tw[idx::T0_W], &feat, h, 2 * k);
        let mut du = vec![0.0; h];
        f64::bias_act(self.act, &mut u, &tw[idx::T0_B], Some(&mut du));
        let mut ht = vec![0.0; h];
        matvec(&mut ht, &tw[idx::T2_W], &u, h, h);
        let bias0 = ht
            .iter()
            .zip(&tw[idx::T2_B])
            .zip(&tw[idx::IN_B])
            .map(|((o, b2), bi)| T::from_f64(bi + (o + b2)))
            .collect();
        TimeFeatures { bias0, feat, u, du }
    }

    /// `y = net(x, t)` for the time features `tf` of `t`. With `keep` the activations are kept
    /// in `tape` for [`MlpEngine::backward`]; otherwise `tape` serves as scratch.
    /// Shapes: `x` `[rows, d]`, `y` `[rows, d]`.
    pub fn forward(
        &self,
        tf: &TimeFeatures<T>,
        x: &[T],
        y: &mut [T],
        tape: &mut Tape<T>,
        keep: bool,
    ) {
        self.forward_isa(isa(), tf, x, y, tape, keep)
    }

    /// [`MlpEngine::forward`] with the loops compiled for `isa` (the same bits on each).
    fn forward_isa(
        &self,
        isa: Isa,
        tf: &TimeFeatures<T>,
        x: &[T],
        y: &mut [T],
        tape: &mut Tape<T>,
        keep: bool,
    ) {
        match isa {
            // SAFETY: `isa()` found the features these functions are compiled for.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { self.forward_avx512(tf, x, y, tape, keep) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { self.forward_avx2(tf, x, y, tape, keep) },
            _ => self.forward_impl(tf, x, y, tape, keep),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    unsafe fn forward_avx512(
        &self,
        tf: &TimeFeatures<T>,
        x: &[T],
        y: &mut [T],
        tape: &mut Tape<T>,
        keep: bool,
    ) {
        self.forward_impl(tf, x, y, tape, keep)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn forward_avx2(
        &self,
        tf: &TimeFeatures<T>,
        x: &[T],
        y: &mut [T],
        tape: &mut Tape<T>,
        keep: bool,
    ) {
        self.forward_impl(tf, x, y, tape, keep)
    }

    #[inline(always)]
    fn forward_impl(
        &self,
        tf: &TimeFeatures<T>,
        x: &[T],
        y: &mut [T],
        tape: &mut Tape<T>,
        keep: bool,
    ) {
        let (d, h, depth) = (self.dim, self.width, self.depth);
        let rows = x.len() / d;
        assert_eq!(y.len(), rows * d, "forward: output size");
        let layers = if keep { depth + 1 } else { 2 };
        if tape.h.len() < layers {
            tape.h.resize_with(layers, Vec::new);
        }
        for buf in tape.h.iter_mut().take(layers) {
            grow(buf, rows * h);
        }
        if keep {
            if tape.d.len() < depth + 1 {
                tape.d.resize_with(depth + 1, Vec::new);
            }
            for buf in tape.d.iter_mut() {
                grow(buf, rows * h);
            }
        }
        let n = rows * h;
        let Tape { h: hs, d: ds, .. } = tape;
        // input layer
        if d >= GEMM_MIN_DIM {
            matmul(
                &mut hs[0][..n],
                rows,
                h,
                d,
                x,
                (d, 1),
                &self.w_in_t,
                (h, 1),
                false,
            );
        } else {
            thin_rows(&mut hs[0][..n], x, &self.w_in_t, d, h);
        }
        T::bias_act(
            self.act,
            &mut hs[0][..n],
            &tf.bias0,
            if keep { Some(&mut ds[0][..n]) } else { None },
        );
        for l in 0..depth {
            let (src, dst) = if keep {
                (l, l + 1)
            } else {
                (l % 2, (l + 1) % 2)
            };
            let (lo, hi) = hs.split_at_mut(src.max(dst));
            let (inp, out) = if src < dst {
                (&lo[src], &mut hi[0])
            } else {
                (&hi[0], &mut lo[dst])
            };
            let wi = idx::hidden_w(l);
            matmul(
                &mut out[..n],
                rows,
                h,
                h,
                &inp[..n],
                (h, 1),
                &self.w_hidden_t[l],
                (h, 1),
                false,
            );
            T::bias_act(
                self.act,
                &mut out[..n],
                &self.w[wi + 1],
                if keep {
                    Some(&mut ds[l + 1][..n])
                } else {
                    None
                },
            );
        }
        let last = if keep { depth } else { depth % 2 };
        let wo = idx::out_w(depth);
        if d >= GEMM_MIN_DIM {
            matmul(
                y,
                rows,
                d,
                h,
                &hs[last][..n],
                (h, 1),
                &self.w[wo],
                (1, h),
                false,
            );
            for row in y.chunks_exact_mut(d) {
                add_assign(row, &self.w[wo + 1]);
            }
        } else {
            thin_dots(y, &hs[last][..n], &self.w[wo], Some(&self.w[wo + 1]), h);
        }
        tape.rows = rows;
        tape.valid = keep;
        if keep {
            tape.x.clear();
            tape.x.extend_from_slice(x);
        }
    }

    /// For the evaluation kept in `tape` and a cotangent `cot` `[rows, d]`: writes
    /// `dx = (∂y/∂x)ᵀ cot` `[rows, d]`; with `params = Some((grads, dh0))` adds the weight
    /// gradients (all but the time path's) to `grads` and the cotangent of the first layer's
    /// bias `b_in + h_t` to `dh0` `[H]` (finish with [`MlpEngine::time_backward`]).
    pub fn backward(
        &self,
        tape: &Tape<T>,
        cot: &[T],
        dx: &mut [T],
        params: Option<(&mut [Vec<T>], &mut [T])>,
        scratch: &mut Scratch<T>,
    ) {
        self.backward_isa(isa(), tape, cot, dx, params, scratch)
    }

    /// [`MlpEngine::backward`] with the loops compiled for `isa` (the same bits on each).
    fn backward_isa(
        &self,
        isa: Isa,
        tape: &Tape<T>,
        cot: &[T],
        dx: &mut [T],
        params: Option<(&mut [Vec<T>], &mut [T])>,
        scratch: &mut Scratch<T>,
    ) {
        match isa {
            // SAFETY: `isa()` found the features these functions are compiled for.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { self.backward_avx512(tape, cot, dx, params, scratch) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { self.backward_avx2(tape, cot, dx, params, scratch) },
            _ => self.backward_impl(tape, cot, dx, params, scratch),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    unsafe fn backward_avx512(
        &self,
        tape: &Tape<T>,
        cot: &[T],
        dx: &mut [T],
        params: Option<(&mut [Vec<T>], &mut [T])>,
        scratch: &mut Scratch<T>,
    ) {
        self.backward_impl(tape, cot, dx, params, scratch)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn backward_avx2(
        &self,
        tape: &Tape<T>,
        cot: &[T],
        dx: &mut [T],
        params: Option<(&mut [Vec<T>], &mut [T])>,
        scratch: &mut Scratch<T>,
    ) {
        self.backward_impl(tape, cot, dx, params, scratch)
    }

    #[inline(always)]
    fn backward_impl(
        &self,
        tape: &Tape<T>,
        cot: &[T],
        dx: &mut [T],
        params: Option<(&mut [Vec<T>], &mut [T])>,
        scratch: &mut Scratch<T>,
    ) {
        let (d, h, depth) = (self.dim, self.width, self.depth);
        let rows = tape.rows;
        assert!(tape.valid, "backward without a kept evaluation");
        assert_eq!(cot.len(), rows * d, "backward: cotangent size");
        assert_eq!(dx.len(), rows * d, "backward: dx size");
        let n = rows * h;
        grow(&mut scratch.a, n);
        grow(&mut scratch.b, n);
        let (mut g, mut g2) = (&mut scratch.a[..n], &mut scratch.b[..n]);
        let wo = idx::out_w(depth);
        let mut params = params;
        // output layer: g = cot · W_out, dW_out += cotᵀ h, db_out += Σ cot
        let gemm = d >= GEMM_MIN_DIM;
        if let Some((grads, _)) = params.as_mut() {
            if gemm {
                let hl = &tape.h[depth][..n];
                matmul(&mut grads[wo], d, h, rows, cot, (1, d), hl, (h, 1), true);
            } else {
                thin_grad(&mut grads[wo], cot, &tape.h[depth][..n], d, h);
            }
            add_colsum(&mut grads[wo + 1], cot);
        }
        if gemm {
            matmul(g, rows, h, d, cot, (d, 1), &self.w[wo], (h, 1), false);
        } else {
            thin_rows(g, cot, &self.w[wo], d, h);
        }
        // hidden layers, last to first
        for l in (0..depth).rev() {
            let wi = idx::hidden_w(l);
            let db = params
                .as_mut()
                .map(|(grads, _)| grads[wi + 1].as_mut_slice());
            mul_colsum(g, &tape.d[l + 1][..n], db);
            if let Some((grads, _)) = params.as_mut() {
                matmul(
                    &mut grads[wi],
                    h,
                    h,
                    rows,
                    g,
                    (1, h),
                    &tape.h[l][..n],
                    (h, 1),
                    true,
                );
            }
            matmul(g2, rows, h, h, g, (h, 1), &self.w[wi], (h, 1), false);
            std::mem::swap(&mut g, &mut g2);
        }
        // input layer: dx = g · W_in, dW_in += gᵀ x, dh0 += Σ g
        let dh0 = params.as_mut().map(|(_, dh0)| &mut **dh0);
        mul_colsum(g, &tape.d[0][..n], dh0);
        if gemm {
            matmul(dx, rows, d, h, g, (h, 1), &self.w_in_t, (1, h), false);
            if let Some((grads, _)) = params {
                let acc = &mut grads[idx::IN_W];
                matmul(acc, h, d, rows, g, (1, h), &tape.x, (d, 1), true);
            }
            return;
        }
        thin_dots(dx, g, &self.w_in_t, None, h);
        if let Some((grads, _)) = params {
            scratch.w_in.clear();
            scratch.w_in.resize(d * h, T::zero());
            thin_grad(&mut scratch.w_in, &tape.x, g, d, h);
            let acc = &mut grads[idx::IN_W];
            for j in 0..h {
                for c in 0..d {
                    acc[j * d + c] += scratch.w_in[c * h + j];
                }
            }
        }
    }

    /// Backward through the first layer's bias `b_in + h_t(t)` given its cotangent `dh0` `[H]`:
    /// adds to the gradients of `b_in`, the time MLP and the phases (all in f64).
    pub fn time_backward(&self, tf: &TimeFeatures<T>, dh0: &[f64], grads: &mut [Vec<f64>]) {
        let (h, k) = (self.width, self.coeff.len());
        add_assign(&mut grads[idx::IN_B], dh0);
        // W_t2, b_t2
        for (i, gi) in dh0.iter().enumerate() {
            let row = &mut grads[idx::T2_W][i * h..(i + 1) * h];
            for (w, u) in row.iter_mut().zip(&tf.u) {
                *w += *gi * *u;
            }
        }
        add_assign(&mut grads[idx::T2_B], dh0);
        // dv = (W_t2ᵀ dh_t) ⊙ act'(v)
        let mut dv = vec![0.0; h];
        for (i, gi) in dh0.iter().enumerate() {
            let row = &self.time_w[idx::T2_W][i * h..(i + 1) * h];
            for (o, w) in dv.iter_mut().zip(row) {
                *o += *w * *gi;
            }
        }
        mul_assign(&mut dv, &tf.du);
        for (i, gi) in dv.iter().enumerate() {
            let row = &mut grads[idx::T0_W][i * 2 * k..(i + 1) * 2 * k];
            for (w, e) in row.iter_mut().zip(&tf.feat) {
                *w += *gi * *e;
            }
        }
        add_assign(&mut grads[idx::T0_B], &dv);
        // de = W_t0ᵀ dv, then through sin and cos to the phase
        let mut de = vec![0.0; 2 * k];
        for (i, gi) in dv.iter().enumerate() {
            let row = &self.time_w[idx::T0_W][i * 2 * k..(i + 1) * 2 * k];
            for (o, w) in de.iter_mut().zip(row) {
                *o += *w * *gi;
            }
        }
        for j in 0..k {
            // feat[j] = sin a_j, feat[k + j] = cos a_j
            let (s, c) = (tf.feat[j], tf.feat[k + j]);
            grads[idx::PHASE][j] += de[j] * c - de[k + j] * s;
        }
    }

    fn input(&self, x: &Tensor) -> Result<Vec<T>> {
        let (_, d) = x.dims2()?;
        if d != self.dim {
            return Err(Error::data(format!(
                "network expects {} columns, got {d}",
                self.dim
            )));
        }
        to_vec::<T>(x)
    }

    fn output(&self, y: Vec<T>) -> Result<Tensor> {
        let rows = y.len() / self.dim;
        Ok(Tensor::from_vec(y, (rows, self.dim), &Device::Cpu)?)
    }
}

impl<T: Real> Engine for MlpEngine<T> {
    fn eval(&mut self, x: &Tensor, t: f64) -> Result<Tensor> {
        let xv = self.input(x)?;
        let tf = self.time_features(t);
        let mut y = vec![T::zero(); xv.len()];
        let mut work = std::mem::take(&mut self.work);
        self.forward(&tf, &xv, &mut y, &mut work, false);
        self.work = work;
        self.output(y)
    }

    fn eval_keep(&mut self, x: &Tensor, t: f64) -> Result<Tensor> {
        let xv = self.input(x)?;
        self.kept_time = self.time_features(t);
        let mut y = vec![T::zero(); xv.len()];
        let mut tape = std::mem::take(&mut self.tape);
        self.forward(&self.kept_time, &xv, &mut y, &mut tape, true);
        self.tape = tape;
        self.output(y)
    }

    fn pullback(&mut self, cot: &Tensor, params: bool) -> Result<Tensor> {
        if !self.tape.valid {
            return Err(Error::config("pullback without a kept evaluation"));
        }
        let (d, rows) = (self.dim, self.tape.rows);
        let (cr, cd) = cot.dims2()?;
        if cr != rows || cd != d {
            return Err(Error::data(format!(
                "cotangent shape [{cr}, {cd}] does not match the kept evaluation [{rows}, {d}]"
            )));
        }
        let cot = to_vec::<T>(cot)?;
        let mut dx = vec![T::zero(); rows * d];
        let mut node = std::mem::take(&mut self.node);
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut dh0 = vec![T::zero(); self.width];
        self.backward(
            &self.tape,
            &cot,
            &mut dx,
            params.then_some((node.as_mut_slice(), dh0.as_mut_slice())),
            &mut scratch,
        );
        if params {
            let mut grads = std::mem::take(&mut self.grads);
            self.drain_grads(&mut grads, &mut node);
            let dh0: Vec<f64> = dh0.iter().map(|v| v.to_f64()).collect();
            self.time_backward(&self.kept_time, &dh0, &mut grads);
            self.grads = grads;
        }
        self.node = node;
        self.scratch = scratch;
        self.output(dx)
    }

    fn take_grads(&mut self) -> Result<Vec<Tensor>> {
        let zero = self.zero_grads();
        let grads = std::mem::replace(&mut self.grads, zero);
        self.grads_to_tensors(grads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Activation, MlpConfig};
    use crate::rng::Rng;
    use candle_core::DType;

    /// A small net: width 24, 2 hidden layers, 5 frequencies.
    fn tiny() -> MlpConfig {
        MlpConfig {
            width: 24,
            depth: 2,
            fourier: 5,
            freq_min: 0.1,
            freq_max: 10.0,
            activation: Activation::Gelu,
        }
    }

    /// `drain_grads` moves every gradient that `backward` wrote into the f64 sums (each sum
    /// rounded once, the same bits as the scalar `acc + v`) and leaves the node buffers zero.
    #[test]
    fn drain_moves_every_gradient_backward_writes() {
        let cfg = tiny();
        let mut rng = Rng::new(5);
        let mlp = Mlp::new(2, &cfg, DType::F32, &mut rng).unwrap();
        let e = MlpEngine::<f32>::new(&mlp).unwrap();
        let rows = 13;
        let x: Vec<f32> = rng.normals(rows * 2).iter().map(|v| *v as f32).collect();
        let cot: Vec<f32> = rng.normals(rows * 2).iter().map(|v| *v as f32).collect();
        let tf = e.time_features(0.03);
        let (mut y, mut dx) = (vec![0.0f32; rows * 2], vec![0.0f32; rows * 2]);
        let (mut tape, mut scratch) = (Tape::default(), Scratch::default());
        let mut node = e.zero_grads::<f32>();
        let mut dh = vec![0.0f32; cfg.width];
        e.forward(&tf, &x, &mut y, &mut tape, true);
        e.backward(
            &tape,
            &cot,
            &mut dx,
            Some((&mut node, &mut dh)),
            &mut scratch,
        );
        let mut acc: Vec<Vec<f64>> = node
            .iter()
            .map(|v| (0..v.len()).map(|i| 0.1 * i as f64 + 1.0).collect())
            .collect();
        let want: Vec<Vec<f64>> = acc
            .iter()
            .zip(&node)
            .map(|(a, v)| a.iter().zip(v).map(|(a, v)| a + *v as f64).collect())
            .collect();
        let written = node.iter().flatten().filter(|v| **v != 0.0).count();
        // Input weight, hidden layers, output layer: all of them, none of the time path.
        let (d, h) = (2, cfg.width);
        assert_eq!(written, d * h + 2 * (h * h + h) + (h * d + d));
        e.drain_grads(&mut acc, &mut node);
        assert!(
            node.iter().flatten().all(|v| *v == 0.0),
            "left in the node buffers"
        );
        assert_eq!(acc, want);
    }

    /// Forward and backward give the same bits on every instruction-set path.
    #[test]
    fn all_isa_paths_agree_bitwise() {
        let cfg = tiny();
        let mut rng = Rng::new(2);
        let mlp = Mlp::new(3, &cfg, DType::F32, &mut rng).unwrap();
        let e = MlpEngine::<f32>::new(&mlp).unwrap();
        let rows = 37;
        let x: Vec<f32> = rng.normals(rows * 3).iter().map(|v| *v as f32).collect();
        let cot: Vec<f32> = rng.normals(rows * 3).iter().map(|v| *v as f32).collect();
        let tf = e.time_features(0.02);
        let run = |isa: Isa| {
            let (mut y, mut dx) = (vec![0.0f32; rows * 3], vec![0.0f32; rows * 3]);
            let (mut tape, mut scratch) = (Tape::default(), Scratch::default());
            let mut grads = e.zero_grads();
            let mut dh = vec![0.0f32; 24];
            e.forward_isa(isa, &tf, &x, &mut y, &mut tape, true);
            e.backward_isa(
                isa,
                &tape,
                &cot,
                &mut dx,
                Some((&mut grads, &mut dh)),
                &mut scratch,
            );
            let mut all = y;
            all.extend(dx);
            all.extend(dh);
            all.extend(grads.into_iter().flatten());
            all.into_iter().map(f32::to_bits).collect::<Vec<_>>()
        };
        let want = run(Isa::Plain);
        let best = crate::nn::act::fast::best_isa();
        for isa in [Isa::Avx512, Isa::Avx2] {
            let supported = match isa {
                Isa::Avx512 => best == Isa::Avx512,
                _ => best != Isa::Plain,
            };
            if supported {
                assert!(run(isa) == want, "{isa:?}");
            }
        }
    }
}

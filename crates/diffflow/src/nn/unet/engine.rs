//! The U-Net's CPU engine: a snapshot of the weights that walks the [`Plan`] over
//! channel-major activations `[C, B·H·W]` (convs as im2col + GEMM, hand-written GroupNorm,
//! SiLU, attention and their backward), single-threaded, with every buffer reused across
//! calls. Parameter gradients are accumulated in f64.
//!
//! Two faces, as the MLP's engine: slice-level [`UNetEngine::forward`] and
//! [`UNetEngine::backward`] on `&self` (one snapshot can serve several threads, each with its
//! own [`UNetTape`] and [`UNetScratch`]), and the tensor-level [`Engine`].

use super::conv::{self, grow};
use super::dropout::Mask;
use super::norm::{self, Gn};
use super::plan::{Conv, Layer, Op, Plan, ResBlock};
use super::{attn, sinusoid, UNet, UNetConfig};
use crate::nn::fast::{isa, Isa};
use crate::nn::{Activation, Engine, Real, TimeNet};
use crate::{Error, Result};
use candle_core::{Device, Tensor};

/// What one layer keeps of an evaluation (fields unused by its op stay empty).
#[derive(Clone, Debug, Default)]
pub(crate) struct Kept<T> {
    /// The input with the skip concatenated (up-path ResBlocks).
    pub cat: Vec<T>,
    /// ResBlock: `SiLU(GN1(x))`; attention: `GN(x)`; output: `SiLU(GN(x))`.
    pub a: Vec<T>,
    /// ResBlock: `conv1(a) + temb projection`.
    pub h: Vec<T>,
    /// ResBlock: `dropout(SiLU(GN2(h)))`.
    pub a2: Vec<T>,
    /// Attention: `q, k, v` `[C, B·n]`, `P` `[B, n, n]`, `o` `[C, B·n]`.
    pub q: Vec<T>,
    pub k: Vec<T>,
    pub v: Vec<T>,
    pub p: Vec<T>,
    pub o: Vec<T>,
    /// GroupNorm statistics `(mean, rstd)` per (image, group).
    pub s1: Vec<(f64, f64)>,
    pub s2: Vec<(f64, f64)>,
    pub out: Vec<T>,
}

/// The time path of one evaluation (f64): `e = sinusoid`, `u = L0(e)`, `su = SiLU(u)`,
/// `temb = L1(su)`, `stemb = SiLU(temb)`.
#[derive(Clone, Debug, Default)]
struct Time {
    e: Vec<f64>,
    u: Vec<f64>,
    su: Vec<f64>,
    temb: Vec<f64>,
    stemb: Vec<f64>,
}

/// The activations of one evaluation of `rows` images, for [`UNetEngine::backward`].
#[derive(Clone, Debug, Default)]
pub struct UNetTape<T> {
    rows: usize,
    t: f64,
    /// The input, channel-major.
    x: Vec<T>,
    layers: Vec<Kept<T>>,
    time: Time,
    valid: bool,
}

/// Work buffers of one thread (they grow, never shrink).
#[derive(Clone, Debug, Default)]
pub struct UNetScratch<T> {
    conv: conv::Bufs<T>,
    gn: norm::Bufs<T>,
    attn: attn::Bufs<T>,
    /// Cotangent of the current layer's output, and of its input.
    g: Vec<T>,
    g2: Vec<T>,
    t1: Vec<T>,
    t2: Vec<T>,
    /// Cotangents of skips waiting for their layer, and spare buffers for them.
    stack: Vec<Vec<T>>,
    pool: Vec<Vec<T>>,
    bias: Vec<T>,
    sums: Vec<f64>,
    /// Cotangent of `stemb`.
    dstemb: Vec<f64>,
}

/// `(weight, bias)` gradients of the layer whose weight is parameter `i`.
pub(crate) fn pair<'a>(
    grads: &'a mut Option<&mut [Vec<f64>]>,
    i: usize,
) -> Option<(&'a mut [f64], &'a mut [f64])> {
    grads.as_deref_mut().map(|g| {
        let (a, b) = g[i..].split_at_mut(1);
        (a[0].as_mut_slice(), b[0].as_mut_slice())
    })
}

/// `out[i] = Σ_j w[i, j] v[j] + b[i]` in f64 over weights of type `T`.
fn affine64<T: Real>(w: &[T], b: &[T], v: &[f64]) -> Vec<f64> {
    w.chunks_exact(v.len())
        .zip(b)
        .map(|(row, b)| b.to_f64() + row.iter().zip(v).map(|(w, x)| w.to_f64() * x).sum::<f64>())
        .collect()
}

fn silu64(v: &[f64]) -> Vec<f64> {
    v.iter().map(|a| Activation::Silu.eval_f64(*a).0).collect()
}

/// `dw[i, j] += d[i] v[j]`, `db[i] += d[i]`, and with `dv`, `dv[j] += Σ_i w[i, j] d[i]`.
fn affine64_backward<T: Real>(
    (dw, db): (&mut [f64], &mut [f64]),
    w: &[T],
    v: &[f64],
    d: &[f64],
    dv: Option<&mut [f64]>,
) {
    let k = v.len();
    for (i, di) in d.iter().enumerate() {
        for (o, x) in dw[i * k..(i + 1) * k].iter_mut().zip(v) {
            *o += di * x;
        }
        db[i] += di;
    }
    if let Some(dv) = dv {
        for (row, di) in w.chunks_exact(k).zip(d) {
            for (o, wv) in dv.iter_mut().zip(row) {
                *o += wv.to_f64() * di;
            }
        }
    }
}

/// The U-Net's engine over element type `T` (f32 or f64).
pub struct UNetEngine<T> {
    cfg: UNetConfig,
    plan: Plan,
    seed: Option<u64>,
    /// Weights in [`TimeNet::vars`] order, flattened (conv weights `[cout, cin·k·k]`).
    w: Vec<Vec<T>>,
    shapes: Vec<Vec<usize>>,
    device: Device,
    grads: Vec<Vec<f64>>,
    tape: UNetTape<T>,
    work: UNetTape<T>,
    scratch: UNetScratch<T>,
}

impl<T: Real + Default> UNetEngine<T> {
    /// A snapshot of `net`'s weights and dropout seed.
    pub fn new(net: &UNet) -> Result<Self> {
        let mut w = Vec::new();
        let mut shapes = Vec::new();
        for (_, v) in net.vars() {
            w.push(v.flatten_all()?.to_dtype(T::DTYPE)?.to_vec1::<T>()?);
            shapes.push(v.dims().to_vec());
        }
        let device = net.vars()[0].1.device().clone();
        let grads = shapes
            .iter()
            .map(|s| vec![0.0; s.iter().product()])
            .collect();
        Ok(UNetEngine {
            cfg: net.config().clone(),
            plan: net.plan().clone(),
            seed: net.dropout_seed(),
            w,
            shapes,
            device,
            grads,
            tape: UNetTape::default(),
            work: UNetTape::default(),
            scratch: UNetScratch::default(),
        })
    }

    /// Zero gradients in [`TimeNet::vars`] order (f64).
    pub fn zero_grads(&self) -> Vec<Vec<f64>> {
        self.shapes
            .iter()
            .map(|s| vec![0.0; s.iter().product()])
            .collect()
    }

    fn time_forward(&self, t: f64, time: &mut Time) {
        let [w0, w1] = self.plan.temb;
        time.e = sinusoid(self.cfg.time_scale * t, self.plan.emb_dim);
        time.u = affine64(&self.w[w0], &self.w[w0 + 1], &time.e);
        time.su = silu64(&time.u);
        time.temb = affine64(&self.w[w1], &self.w[w1 + 1], &time.su);
        time.stemb = silu64(&time.temb);
    }

    /// Backward through the time MLP for the cotangent `dstemb` of `SiLU(temb)`.
    fn time_backward(&self, time: &Time, dstemb: &[f64], grads: &mut [Vec<f64>]) {
        let [w0, w1] = self.plan.temb;
        let dsilu = |a: &[f64], d: &[f64]| -> Vec<f64> {
            a.iter()
                .zip(d)
                .map(|(a, d)| d * Activation::Silu.eval_f64(*a).1)
                .collect()
        };
        let dtemb = dsilu(&time.temb, dstemb);
        let mut dsu = vec![0.0; time.su.len()];
        let mut g = Some(grads);
        let gp = pair(&mut g, w1).expect("grads given");
        affine64_backward(gp, &self.w[w1], &time.su, &dtemb, Some(&mut dsu));
        let du = dsilu(&time.u, &dsu);
        let gp = pair(&mut g, w0).expect("grads given");
        affine64_backward(gp, &self.w[w0], &time.e, &du, None);
    }

    fn conv_geom(&self, c: Conv, layer: &Layer, rows: usize) -> conv::Geom {
        conv::Geom {
            c,
            batch: rows,
            h: layer.h,
            w: layer.w,
        }
    }

    fn gn(&self, c: usize, layer: &Layer, rows: usize) -> Gn {
        Gn {
            c,
            groups: self.cfg.groups,
            batch: rows,
            hw: layer.h * layer.w,
        }
    }

    fn attn_geom(&self, a: super::plan::Attention, layer: &Layer, rows: usize) -> attn::Geom {
        attn::Geom {
            a,
            batch: rows,
            h: layer.h,
            w: layer.w,
            groups: self.cfg.groups,
        }
    }

    /// `y = net(x, t)` for `rows = x.len() / d` images, keeping the activations in `tape`.
    /// Shapes: `x`, `y` `[rows, d]`.
    pub fn forward(
        &self,
        t: f64,
        x: &[T],
        y: &mut [T],
        tape: &mut UNetTape<T>,
        scratch: &mut UNetScratch<T>,
    ) {
        self.forward_isa(isa(), t, x, y, tape, scratch)
    }

    /// [`UNetEngine::forward`] with the hand-written loops compiled for `isa` (every path
    /// gives the same bits).
    pub(crate) fn forward_isa(
        &self,
        isa: Isa,
        t: f64,
        x: &[T],
        y: &mut [T],
        tape: &mut UNetTape<T>,
        scratch: &mut UNetScratch<T>,
    ) {
        match isa {
            // SAFETY: `isa()` found the features these functions are compiled for.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { self.forward_avx512(t, x, y, tape, scratch) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { self.forward_avx2(t, x, y, tape, scratch) },
            _ => self.forward_impl(t, x, y, tape, scratch),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    unsafe fn forward_avx512(
        &self,
        t: f64,
        x: &[T],
        y: &mut [T],
        tape: &mut UNetTape<T>,
        scratch: &mut UNetScratch<T>,
    ) {
        self.forward_impl(t, x, y, tape, scratch)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn forward_avx2(
        &self,
        t: f64,
        x: &[T],
        y: &mut [T],
        tape: &mut UNetTape<T>,
        scratch: &mut UNetScratch<T>,
    ) {
        self.forward_impl(t, x, y, tape, scratch)
    }

    #[inline(always)]
    fn forward_impl(
        &self,
        t: f64,
        x: &[T],
        y: &mut [T],
        tape: &mut UNetTape<T>,
        scratch: &mut UNetScratch<T>,
    ) {
        let (c_img, hw) = (self.cfg.channels, self.cfg.height * self.cfg.width);
        let rows = x.len() / (c_img * hw);
        assert_eq!(y.len(), x.len(), "forward: output size");
        let n_layers = self.plan.layers.len();
        tape.rows = rows;
        tape.t = t;
        tape.valid = false;
        tape.layers.resize_with(n_layers, Kept::default);
        let UNetTape {
            x: tx,
            layers,
            time,
            ..
        } = tape;
        grow(tx, x.len());
        to_channel_major(x, tx, c_img, rows, hw);
        self.time_forward(t, time);
        let mut stack: Vec<usize> = Vec::with_capacity(n_layers);
        for (i, layer) in self.plan.layers.iter().enumerate() {
            let (cin, cout) = layer.channels();
            let (ho, wo) = layer.out_hw();
            let (n_in, n_out) = (rows * layer.h * layer.w, rows * ho * wo);
            let (before, rest) = layers.split_at_mut(i);
            let kept = &mut rest[0];
            let prev: &[T] = if i == 0 { tx } else { &before[i - 1].out };
            if layer.skip > 0 {
                let j = stack.pop().expect("the plan pops only what it pushed");
                let own = (cin - layer.skip) * n_in;
                grow(&mut kept.cat, cin * n_in);
                kept.cat[..own].copy_from_slice(&prev[..own]);
                kept.cat[own..cin * n_in].copy_from_slice(&before[j].out[..layer.skip * n_in]);
            }
            let mut out = std::mem::take(&mut kept.out);
            grow(&mut out, cout * n_out);
            let cat = std::mem::take(&mut kept.cat);
            let input = if layer.skip > 0 { &cat[..] } else { prev };
            let input = &input[..cin * n_in];
            let out_s = &mut out[..cout * n_out];
            let bufs = &mut scratch.conv;
            match layer.op {
                Op::Conv(c) => {
                    let g = self.conv_geom(c, layer, rows);
                    conv::forward(
                        &g,
                        &self.w[c.w],
                        &self.w[c.w + 1],
                        input,
                        out_s,
                        false,
                        bufs,
                    );
                }
                Op::Res(r) => {
                    self.res_forward(&r, layer, rows, t, input, out_s, kept, time, scratch)
                }
                Op::Attn(a) => {
                    let g = self.attn_geom(a, layer, rows);
                    attn::forward(&g, &self.w, input, out_s, kept, bufs);
                }
                Op::Out(nm, c) => {
                    grow(&mut kept.a, cin * n_in);
                    let a = &mut kept.a[..cin * n_in];
                    let (gamma, beta) = (&self.w[nm.p], &self.w[nm.p + 1]);
                    let gn = self.gn(cin, layer, rows);
                    norm::forward(&gn, gamma, beta, input, a, &mut kept.s1, true);
                    let g = self.conv_geom(c, layer, rows);
                    conv::forward(&g, &self.w[c.w], &self.w[c.w + 1], a, out_s, false, bufs);
                }
            }
            kept.cat = cat;
            kept.out = out;
            if layer.push {
                stack.push(i);
            }
        }
        let last = &layers[n_layers - 1].out;
        from_channel_major(last, y, c_img, rows, hw);
        tape.valid = true;
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn res_forward(
        &self,
        r: &ResBlock,
        layer: &Layer,
        rows: usize,
        t: f64,
        input: &[T],
        out: &mut [T],
        kept: &mut Kept<T>,
        time: &Time,
        scratch: &mut UNetScratch<T>,
    ) {
        let (cin, cout) = layer.channels();
        let n = rows * layer.h * layer.w;
        let w = &self.w;
        let bufs = &mut scratch.conv;
        grow(&mut kept.a, cin * n);
        grow(&mut kept.h, cout * n);
        grow(&mut kept.a2, cout * n);
        let (a, h, a2) = (
            &mut kept.a[..cin * n],
            &mut kept.h[..cout * n],
            &mut kept.a2[..cout * n],
        );
        let (n1, n2) = (r.norm1, r.norm2);
        norm::forward(
            &self.gn(cin, layer, rows),
            &w[n1.p],
            &w[n1.p + 1],
            input,
            a,
            &mut kept.s1,
            true,
        );
        // conv1 with bias b1 + Linear(SiLU(temb))
        let tb = affine64(&w[r.temb], &w[r.temb + 1], &time.stemb);
        scratch.bias.clear();
        let b1 = &w[r.conv1.w + 1];
        scratch
            .bias
            .extend(b1.iter().zip(&tb).map(|(b, t)| T::from_f64(b.to_f64() + t)));
        let g1 = self.conv_geom(r.conv1, layer, rows);
        conv::forward(&g1, &w[r.conv1.w], &scratch.bias, a, h, false, bufs);
        let gn2 = self.gn(cout, layer, rows);
        norm::forward(&gn2, &w[n2.p], &w[n2.p + 1], h, a2, &mut kept.s2, true);
        if let Some(mask) = Mask::new(self.seed, t, r.id, self.cfg.dropout) {
            mask.apply(a2, cout, rows, layer.h * layer.w);
        }
        let g2 = self.conv_geom(r.conv2, layer, rows);
        conv::forward(&g2, &w[r.conv2.w], &w[r.conv2.w + 1], a2, out, false, bufs);
        match r.shortcut {
            Some(c) => {
                let gs = self.conv_geom(c, layer, rows);
                conv::forward(&gs, &w[c.w], &w[c.w + 1], input, out, true, bufs);
            }
            None => {
                for (o, x) in out.iter_mut().zip(input) {
                    *o += *x;
                }
            }
        }
    }
}

impl<T: Real + Default> UNetEngine<T> {
    /// For the evaluation kept in `tape` and the output cotangent `cot` `[rows, d]`: writes
    /// the input cotangent into `dx` `[rows, d]` and, with `grads`, adds the parameter
    /// gradients (f64, [`TimeNet::vars`] order).
    pub fn backward(
        &self,
        tape: &UNetTape<T>,
        cot: &[T],
        dx: &mut [T],
        grads: Option<&mut [Vec<f64>]>,
        scratch: &mut UNetScratch<T>,
    ) {
        self.backward_isa(isa(), tape, cot, dx, grads, scratch)
    }

    /// [`UNetEngine::backward`] with the hand-written loops compiled for `isa`.
    pub(crate) fn backward_isa(
        &self,
        isa: Isa,
        tape: &UNetTape<T>,
        cot: &[T],
        dx: &mut [T],
        grads: Option<&mut [Vec<f64>]>,
        scratch: &mut UNetScratch<T>,
    ) {
        match isa {
            // SAFETY: `isa()` found the features these functions are compiled for.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { self.backward_avx512(tape, cot, dx, grads, scratch) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { self.backward_avx2(tape, cot, dx, grads, scratch) },
            _ => self.backward_impl(tape, cot, dx, grads, scratch),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    unsafe fn backward_avx512(
        &self,
        tape: &UNetTape<T>,
        cot: &[T],
        dx: &mut [T],
        grads: Option<&mut [Vec<f64>]>,
        scratch: &mut UNetScratch<T>,
    ) {
        self.backward_impl(tape, cot, dx, grads, scratch)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn backward_avx2(
        &self,
        tape: &UNetTape<T>,
        cot: &[T],
        dx: &mut [T],
        grads: Option<&mut [Vec<f64>]>,
        scratch: &mut UNetScratch<T>,
    ) {
        self.backward_impl(tape, cot, dx, grads, scratch)
    }

    #[inline(always)]
    fn backward_impl(
        &self,
        tape: &UNetTape<T>,
        cot: &[T],
        dx: &mut [T],
        grads: Option<&mut [Vec<f64>]>,
        scratch: &mut UNetScratch<T>,
    ) {
        assert!(tape.valid, "backward without a kept evaluation");
        let (c_img, hw) = (self.cfg.channels, self.cfg.height * self.cfg.width);
        let rows = tape.rows;
        assert_eq!(cot.len(), rows * c_img * hw, "backward: cotangent size");
        assert_eq!(dx.len(), cot.len(), "backward: dx size");
        let mut grads = grads;
        let max = rows * self.plan.max_activation();
        for b in [
            &mut scratch.g,
            &mut scratch.g2,
            &mut scratch.t1,
            &mut scratch.t2,
        ] {
            grow(b, max);
        }
        scratch.dstemb.clear();
        scratch.dstemb.resize(4 * self.cfg.ch, 0.0);
        let mut g = std::mem::take(&mut scratch.g);
        let mut g2 = std::mem::take(&mut scratch.g2);
        to_channel_major(cot, &mut g, c_img, rows, hw);
        for (i, layer) in self.plan.layers.iter().enumerate().rev() {
            let (cin, cout) = layer.channels();
            let (ho, wo) = layer.out_hw();
            let (n_in, n_out) = (rows * layer.h * layer.w, rows * ho * wo);
            let kept = &tape.layers[i];
            let input = if layer.skip > 0 {
                &kept.cat[..]
            } else if i == 0 {
                &tape.x[..]
            } else {
                &tape.layers[i - 1].out[..]
            };
            let input = &input[..cin * n_in];
            if layer.push {
                let s = scratch
                    .stack
                    .pop()
                    .expect("a skip cotangent for every push");
                for (a, b) in g[..cout * n_out].iter_mut().zip(&s) {
                    *a += *b;
                }
                scratch.pool.push(s);
            }
            let (dy, din) = (&g[..cout * n_out], &mut g2[..cin * n_in]);
            match layer.op {
                Op::Conv(c) => {
                    let geom = self.conv_geom(c, layer, rows);
                    let gp = pair(&mut grads, c.w);
                    conv::backward(
                        &geom,
                        &self.w[c.w],
                        input,
                        dy,
                        Some((din, false)),
                        gp,
                        &mut scratch.conv,
                    );
                }
                Op::Res(r) => {
                    let s = &mut *scratch;
                    self.res_backward(&r, layer, rows, tape, kept, input, dy, din, &mut grads, s);
                }
                Op::Attn(a) => {
                    let geom = self.attn_geom(a, layer, rows);
                    let s = &mut *scratch;
                    let gr = grads.as_deref_mut();
                    attn::backward(
                        &geom,
                        &self.w,
                        input,
                        kept,
                        dy,
                        din,
                        gr,
                        &mut s.attn,
                        &mut s.conv,
                        &mut s.gn,
                    );
                }
                Op::Out(nm, c) => {
                    let geom = self.conv_geom(c, layer, rows);
                    let da = &mut scratch.t1[..cin * n_in];
                    let gp = pair(&mut grads, c.w);
                    conv::backward(
                        &geom,
                        &self.w[c.w],
                        &kept.a,
                        dy,
                        Some((&mut da[..], false)),
                        gp,
                        &mut scratch.conv,
                    );
                    let gn = self.gn(cin, layer, rows);
                    let gp = pair(&mut grads, nm.p);
                    let (gamma, beta) = (&self.w[nm.p], &self.w[nm.p + 1]);
                    norm::backward(
                        &gn,
                        gamma,
                        beta,
                        input,
                        &kept.s1,
                        da,
                        (din, false),
                        gp,
                        true,
                        &mut scratch.gn,
                    );
                }
            }
            if layer.skip > 0 {
                let mut s = scratch.pool.pop().unwrap_or_default();
                s.clear();
                s.extend_from_slice(&g2[(cin - layer.skip) * n_in..cin * n_in]);
                scratch.stack.push(s);
            }
            std::mem::swap(&mut g, &mut g2);
        }
        from_channel_major(&g, dx, c_img, rows, hw);
        scratch.g = g;
        scratch.g2 = g2;
        if let Some(grads) = grads {
            self.time_backward(&tape.time, &scratch.dstemb, grads);
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn res_backward(
        &self,
        r: &ResBlock,
        layer: &Layer,
        rows: usize,
        tape: &UNetTape<T>,
        kept: &Kept<T>,
        input: &[T],
        dy: &[T],
        din: &mut [T],
        grads: &mut Option<&mut [Vec<f64>]>,
        s: &mut UNetScratch<T>,
    ) {
        let (cin, cout) = layer.channels();
        let hw = layer.h * layer.w;
        let n = rows * hw;
        let w = &self.w;
        let (t1, t2) = (&mut s.t1, &mut s.t2);
        // conv2, dropout, GN2 + SiLU: t2 = d(h)
        let g2 = self.conv_geom(r.conv2, layer, rows);
        let da2 = &mut t1[..cout * n];
        let gp = pair(grads, r.conv2.w);
        conv::backward(
            &g2,
            &w[r.conv2.w],
            &kept.a2,
            dy,
            Some((&mut da2[..], false)),
            gp,
            &mut s.conv,
        );
        if let Some(mask) = Mask::new(self.seed, tape.t, r.id, self.cfg.dropout) {
            mask.apply(da2, cout, rows, hw);
        }
        let n2 = r.norm2;
        let dh = &mut t2[..cout * n];
        let gp = pair(grads, n2.p);
        let gn2 = self.gn(cout, layer, rows);
        norm::backward(
            &gn2,
            &w[n2.p],
            &w[n2.p + 1],
            &kept.h,
            &kept.s2,
            da2,
            (&mut dh[..], false),
            gp,
            true,
            &mut s.gn,
        );
        // the time projection: its cotangent is Σ_pixels d(h) per channel
        if grads.is_some() {
            s.sums.clear();
            s.sums.resize(cout, 0.0);
            conv::add_row_sums(&mut s.sums, dh, n);
            let gp = pair(grads, r.temb).expect("grads given");
            let stemb = &tape.time.stemb;
            affine64_backward(gp, &w[r.temb], stemb, &s.sums, Some(&mut s.dstemb));
        }
        // conv1, GN1 + SiLU: din = d(x)
        let g1 = self.conv_geom(r.conv1, layer, rows);
        let da1 = &mut t1[..cin * n];
        let gp = pair(grads, r.conv1.w);
        conv::backward(
            &g1,
            &w[r.conv1.w],
            &kept.a,
            dh,
            Some((&mut da1[..], false)),
            gp,
            &mut s.conv,
        );
        let n1 = r.norm1;
        let gp = pair(grads, n1.p);
        let gn1 = self.gn(cin, layer, rows);
        norm::backward(
            &gn1,
            &w[n1.p],
            &w[n1.p + 1],
            input,
            &kept.s1,
            da1,
            (&mut din[..], false),
            gp,
            true,
            &mut s.gn,
        );
        match r.shortcut {
            Some(c) => {
                let gs = self.conv_geom(c, layer, rows);
                let gp = pair(grads, c.w);
                conv::backward(&gs, &w[c.w], input, dy, Some((din, true)), gp, &mut s.conv);
            }
            None => {
                for (a, b) in din.iter_mut().zip(dy) {
                    *a += *b;
                }
            }
        }
    }

    fn input(&self, x: &Tensor, what: &str) -> Result<Vec<T>> {
        let d = self.cfg.dim();
        match *x.dims() {
            [_, n] if n == d => Ok(x.flatten_all()?.to_dtype(T::DTYPE)?.to_vec1::<T>()?),
            _ => Err(Error::data(format!(
                "U-Net {what} has shape {:?}, expected [B, {d}]",
                x.dims()
            ))),
        }
    }

    fn output(&self, y: Vec<T>, dev: &Device) -> Result<Tensor> {
        let rows = y.len() / self.cfg.dim();
        Ok(Tensor::from_vec(y, (rows, self.cfg.dim()), dev)?)
    }
}

/// `[B, C·hw]` rows → channel-major `[C, B·hw]`.
#[inline(always)]
fn to_channel_major<T: Real>(x: &[T], out: &mut [T], c: usize, rows: usize, hw: usize) {
    for b in 0..rows {
        for ch in 0..c {
            let src = &x[(b * c + ch) * hw..][..hw];
            out[(ch * rows + b) * hw..][..hw].copy_from_slice(src);
        }
    }
}

/// Channel-major `[C, B·hw]` → `[B, C·hw]` rows.
#[inline(always)]
fn from_channel_major<T: Real>(x: &[T], out: &mut [T], c: usize, rows: usize, hw: usize) {
    for b in 0..rows {
        for ch in 0..c {
            let src = &x[(ch * rows + b) * hw..][..hw];
            out[(b * c + ch) * hw..][..hw].copy_from_slice(src);
        }
    }
}

impl<T: Real + Default> Engine for UNetEngine<T> {
    fn eval(&mut self, x: &Tensor, t: f64) -> Result<Tensor> {
        let xv = self.input(x, "input")?;
        let mut y = vec![T::zero(); xv.len()];
        let mut work = std::mem::take(&mut self.work);
        let mut scratch = std::mem::take(&mut self.scratch);
        self.forward(t, &xv, &mut y, &mut work, &mut scratch);
        self.work = work;
        self.scratch = scratch;
        self.output(y, x.device())
    }

    fn eval_keep(&mut self, x: &Tensor, t: f64) -> Result<Tensor> {
        let xv = self.input(x, "input")?;
        let mut y = vec![T::zero(); xv.len()];
        let mut tape = std::mem::take(&mut self.tape);
        let mut scratch = std::mem::take(&mut self.scratch);
        self.forward(t, &xv, &mut y, &mut tape, &mut scratch);
        self.tape = tape;
        self.scratch = scratch;
        self.output(y, x.device())
    }

    fn pullback(&mut self, cot: &Tensor, params: bool) -> Result<Tensor> {
        if !self.tape.valid {
            return Err(Error::config("pullback without a kept evaluation"));
        }
        let rows = self.tape.rows;
        let cv = self.input(cot, "cotangent")?;
        if cv.len() != rows * self.cfg.dim() {
            return Err(Error::data(format!(
                "cotangent shape {:?} does not match the kept evaluation [{rows}, {}]",
                cot.dims(),
                self.cfg.dim()
            )));
        }
        let mut dx = vec![T::zero(); cv.len()];
        let mut grads = std::mem::take(&mut self.grads);
        let mut scratch = std::mem::take(&mut self.scratch);
        let g = params.then_some(grads.as_mut_slice());
        self.backward(&self.tape, &cv, &mut dx, g, &mut scratch);
        self.grads = grads;
        self.scratch = scratch;
        self.output(dx, cot.device())
    }

    fn take_grads(&mut self) -> Result<Vec<Tensor>> {
        let zero = self.zero_grads();
        let grads = std::mem::replace(&mut self.grads, zero);
        grads
            .into_iter()
            .zip(&self.shapes)
            .map(|(g, s)| {
                let v: Vec<T> = g.into_iter().map(T::from_f64).collect();
                Ok(Tensor::from_vec(v, s.as_slice(), &self.device)?)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::fast::best_isa;
    use crate::rng::Rng;
    use candle_core::DType;

    /// Forward and backward (with dropout) give the same bits on every instruction-set path.
    #[test]
    fn all_isa_paths_agree_bitwise() {
        let cfg = UNetConfig {
            dropout: 0.2,
            ..UNetConfig::tiny(2, 8, 4)
        };
        let mut rng = Rng::new(5);
        let net = UNet::new(&cfg, DType::F32, &Device::Cpu, &mut rng).unwrap();
        for (_, v) in net.vars() {
            let z: Vec<f32> = rng
                .normals(v.elem_count())
                .iter()
                .map(|a| *a as f32 * 0.3)
                .collect();
            v.set(&Tensor::from_vec(z, v.dims(), &Device::Cpu).unwrap())
                .unwrap();
        }
        net.set_dropout_seed(Some(9));
        let e = UNetEngine::<f32>::new(&net).unwrap();
        let rows = 3;
        let x: Vec<f32> = rng
            .normals(rows * cfg.dim())
            .iter()
            .map(|v| *v as f32)
            .collect();
        let cot: Vec<f32> = rng
            .normals(rows * cfg.dim())
            .iter()
            .map(|v| *v as f32)
            .collect();
        let run = |isa: Isa| {
            let (mut tape, mut scratch) = (UNetTape::default(), UNetScratch::default());
            let (mut y, mut dx) = (vec![0.0f32; x.len()], vec![0.0f32; x.len()]);
            let mut grads = e.zero_grads();
            e.forward_isa(isa, 0.013, &x, &mut y, &mut tape, &mut scratch);
            e.backward_isa(isa, &tape, &cot, &mut dx, Some(&mut grads), &mut scratch);
            let bits: Vec<u64> = y
                .iter()
                .chain(&dx)
                .map(|v| v.to_bits() as u64)
                .chain(grads.iter().flatten().map(|g| g.to_bits()))
                .collect();
            bits
        };
        let want = run(Isa::Plain);
        let best = best_isa();
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

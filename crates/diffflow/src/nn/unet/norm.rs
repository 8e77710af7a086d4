//! GroupNorm, optionally followed by SiLU, over channel-major activations `[C, B·hw]`, and
//! its backward. Statistics and the backward's sums are accumulated in f64, so an f32 engine
//! stays close to an f64 one.

use super::config::GN_EPS;
use crate::nn::{Activation, Real};

/// A GroupNorm of `c` channels in `groups` groups over `batch` images of `hw` pixels.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Gn {
    pub c: usize,
    pub groups: usize,
    pub batch: usize,
    pub hw: usize,
}

/// Work buffers of [`backward`].
#[derive(Clone, Debug, Default)]
pub(crate) struct Bufs<T> {
    z: Vec<T>,
    d: Vec<T>,
    dz: Vec<T>,
}

/// `a ← SiLU(a)`, and `deriv ← SiLU'(a)` when given (the f32 path is the vectorised kernel).
#[inline(always)]
pub(crate) fn silu<T: Real>(a: &mut [T], deriv: Option<&mut [T]>) {
    // `bias_act` with zero biases, on rows of `W` elements and then the tail.
    const W: usize = 64;
    let zeros = [T::zero(); W];
    let full = a.len() / W * W;
    let (a0, a1) = a.split_at_mut(full);
    let tail = &zeros[..a1.len()];
    match deriv {
        Some(d) => {
            let (d0, d1) = d[..full + tail.len()].split_at_mut(full);
            T::bias_act(Activation::Silu, a0, &zeros, Some(d0));
            if !tail.is_empty() {
                T::bias_act(Activation::Silu, a1, tail, Some(d1));
            }
        }
        None => {
            T::bias_act(Activation::Silu, a0, &zeros, None);
            if !tail.is_empty() {
                T::bias_act(Activation::Silu, a1, tail, None);
            }
        }
    }
}

/// `Σ_i f(x_i)` in f64 with 8 interleaved partial sums (a fixed order that vectorises).
#[inline(always)]
pub(crate) fn sum_map<T: Real>(x: &[T], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = x.chunks_exact(8);
    let rem = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] += f(c[k].to_f64());
        }
    }
    for (a, v) in acc.iter_mut().zip(rem) {
        *a += f(v.to_f64());
    }
    reduce8(acc)
}

/// `(Σ_i (x_i − s), Σ_i (x_i − s)²)` in f64, as [`sum_map`].
#[inline(always)]
fn sum_pair_sq<T: Real>(x: &[T], s: f64) -> (f64, f64) {
    let (mut p, mut q) = ([0.0f64; 8], [0.0f64; 8]);
    let chunks = x.chunks_exact(8);
    let rem = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            let d = c[k].to_f64() - s;
            p[k] += d;
            q[k] += d * d;
        }
    }
    for (k, v) in rem.iter().enumerate() {
        let d = v.to_f64() - s;
        p[k] += d;
        q[k] += d * d;
    }
    (reduce8(p), reduce8(q))
}

/// The sum of 8 partial sums, in a fixed order.
#[inline(always)]
fn reduce8(a: [f64; 8]) -> f64 {
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
}

/// `(Σ_i a_i, Σ_i a_i·(b_i − m))` in f64, as [`sum_map`].
#[inline(always)]
fn sum_pair<T: Real>(a: &[T], b: &[T], m: f64) -> (f64, f64) {
    let (mut s, mut t) = ([0.0f64; 8], [0.0f64; 8]);
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            let v = x[k].to_f64();
            s[k] += v;
            t[k] += v * (y[k].to_f64() - m);
        }
    }
    for (k, (x, y)) in ra.iter().zip(rb).enumerate() {
        let v = x.to_f64();
        s[k] += v;
        t[k] += v * (y.to_f64() - m);
    }
    (reduce8(s), reduce8(t))
}

impl Gn {
    /// The columns `[c, b·hw .. (b+1)·hw)` of channel `c`, image `b`, in a `[C, B·hw]` buffer.
    #[inline(always)]
    fn seg(&self, c: usize, b: usize) -> std::ops::Range<usize> {
        let start = c * self.batch * self.hw + b * self.hw;
        start..start + self.hw
    }

    /// Channels per group.
    fn cg(&self) -> usize {
        self.c / self.groups
    }

    /// The affine map `z = x·scale + shift` of channel `c` for statistics `(mean, rstd)`.
    #[inline(always)]
    fn affine<T: Real>(gamma: T, beta: T, (mean, rstd): (f64, f64)) -> (T, T) {
        let scale = gamma.to_f64() * rstd;
        (
            T::from_f64(scale),
            T::from_f64(beta.to_f64() - mean * scale),
        )
    }
}

/// `out = GN(x)` (then SiLU when `silu`), keeping `(mean, rstd)` of every (image, group) in
/// `stats` (index `b·groups + group`). Shapes: `x`, `out` `[C, B·hw]`, `gamma`, `beta` `[C]`.
#[inline(always)]
pub(crate) fn forward<T: Real>(
    g: &Gn,
    gamma: &[T],
    beta: &[T],
    x: &[T],
    out: &mut [T],
    stats: &mut Vec<(f64, f64)>,
    silu_after: bool,
) {
    stats.clear();
    let m = (g.cg() * g.hw) as f64;
    for b in 0..g.batch {
        for grp in 0..g.groups {
            let chans = grp * g.cg()..(grp + 1) * g.cg();
            // one pass: sums of `x − s` and `(x − s)²` around a sample `s` of the group
            let s = x[g.seg(chans.start, b).start].to_f64();
            let (s1, s2) = chans.clone().fold((0.0, 0.0), |(a, b2), c| {
                let (p, q) = sum_pair_sq(&x[g.seg(c, b)], s);
                (a + p, b2 + q)
            });
            let (mean, ss) = (s + s1 / m, s2 - s1 * s1 / m);
            let st = (mean, 1.0 / (ss.max(0.0) / m + GN_EPS).sqrt());
            stats.push(st);
            for c in chans {
                let (scale, shift) = Gn::affine(gamma[c], beta[c], st);
                let o = &mut out[g.seg(c, b)];
                for (o, v) in o.iter_mut().zip(&x[g.seg(c, b)]) {
                    *o = *v * scale + shift;
                }
                if silu_after {
                    silu(o, None);
                }
            }
        }
    }
}

/// Backward of [`forward`] for the output cotangent `dout`: writes (with the flag `true`,
/// adds) the input cotangent into `dx`, and with `grads` adds the gradients of `gamma` and
/// `beta` (f64). Shapes as [`forward`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn backward<T: Real>(
    g: &Gn,
    gamma: &[T],
    beta: &[T],
    x: &[T],
    stats: &[(f64, f64)],
    dout: &[T],
    (dx, accumulate): (&mut [T], bool),
    grads: Option<(&mut [f64], &mut [f64])>,
    silu_after: bool,
    bufs: &mut Bufs<T>,
) {
    let (hw, cg) = (g.hw, g.cg());
    let m = (cg * hw) as f64;
    super::conv::grow(&mut bufs.dz, cg * hw);
    if silu_after {
        super::conv::grow(&mut bufs.z, hw);
        super::conv::grow(&mut bufs.d, hw);
    }
    let mut grads = grads;
    for b in 0..g.batch {
        for grp in 0..g.groups {
            let (mean, rstd) = stats[b * g.groups + grp];
            let (mut s1, mut s2) = (0.0, 0.0);
            for k in 0..cg {
                let c = grp * cg + k;
                let (xs, ds) = (&x[g.seg(c, b)], &dout[g.seg(c, b)]);
                let dz = &mut bufs.dz[k * hw..(k + 1) * hw];
                if silu_after {
                    let (scale, shift) = Gn::affine(gamma[c], beta[c], (mean, rstd));
                    let (z, d) = (&mut bufs.z[..hw], &mut bufs.d[..hw]);
                    for (z, v) in z.iter_mut().zip(xs) {
                        *z = *v * scale + shift;
                    }
                    silu(z, Some(d));
                    for ((o, a), b) in dz.iter_mut().zip(ds).zip(d.iter()) {
                        *o = *a * *b;
                    }
                } else {
                    dz.copy_from_slice(ds);
                }
                let (sd, sdx) = sum_pair(dz, xs, mean);
                let sdx = sdx * rstd;
                if let Some((dg, db)) = grads.as_mut() {
                    dg[c] += sdx;
                    db[c] += sd;
                }
                let gam = gamma[c].to_f64();
                s1 += gam * sd;
                s2 += gam * sdx;
            }
            let (m1, m2) = (s1 / m, s2 / m);
            for k in 0..cg {
                let c = grp * cg + k;
                let gam = gamma[c].to_f64();
                let dz = &bufs.dz[k * hw..(k + 1) * hw];
                let seg = g.seg(c, b);
                for ((o, dv), xv) in dx[seg.clone()].iter_mut().zip(dz).zip(&x[seg]) {
                    let xhat = (xv.to_f64() - mean) * rstd;
                    let v = T::from_f64(rstd * (gam * dv.to_f64() - m1 - xhat * m2));
                    *o = if accumulate { *o + v } else { v };
                }
            }
        }
    }
}

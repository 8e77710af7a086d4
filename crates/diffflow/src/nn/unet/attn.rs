//! Single-head self-attention of the engine, forward and backward, over channel-major
//! activations `[C, B·n]` (`n` pixels per image): `y = x + proj(o)`, `o_b = v_b P_bᵀ`,
//! `P_b = softmax(q_bᵀ k_b / √C)` per image `b`, with `q, k, v` 1×1 convs of `GN(x)`.

use super::conv::{self, grow};
use super::engine::{pair, Kept};
use super::norm::{self, Gn};
use super::plan::{Attention, Conv};
use crate::nn::gemm::matmul_strided;
use crate::nn::Real;

/// Work buffers of [`backward`].
#[derive(Clone, Debug, Default)]
pub(crate) struct Bufs<T> {
    d_o: Vec<T>,
    dq: Vec<T>,
    dk: Vec<T>,
    dv: Vec<T>,
    dhn: Vec<T>,
    /// `[n, n]`: `dP`, then `dS`, of one image.
    ds: Vec<T>,
}

/// The attention block over `batch` images of `n` pixels, with its GroupNorm of `groups`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geom {
    pub a: Attention,
    pub batch: usize,
    pub h: usize,
    pub w: usize,
    pub groups: usize,
}

impl Geom {
    fn n(&self) -> usize {
        self.h * self.w
    }

    fn gn(&self) -> Gn {
        Gn {
            c: self.a.norm.c,
            groups: self.groups,
            batch: self.batch,
            hw: self.n(),
        }
    }

    fn conv(&self, c: Conv) -> conv::Geom {
        conv::Geom {
            c,
            batch: self.batch,
            h: self.h,
            w: self.w,
        }
    }
}

/// `out = x + attention(x)`, keeping `GN(x)` in `kept.a`, its statistics in `kept.s1`, and
/// `q, k, v, P, o`. Shapes: `x`, `out` `[C, B·n]`; `w` the net's parameters.
#[inline(always)]
pub(crate) fn forward<T: Real>(
    g: &Geom,
    w: &[Vec<T>],
    x: &[T],
    out: &mut [T],
    kept: &mut Kept<T>,
    bufs: &mut conv::Bufs<T>,
) {
    let (c, n) = (g.a.norm.c, g.n());
    let big_n = g.batch * n;
    let len = c * big_n;
    let Kept {
        a: hn,
        q,
        k,
        v,
        p,
        o,
        s1,
        ..
    } = kept;
    for buf in [&mut *hn, &mut *q, &mut *k, &mut *v, &mut *o] {
        grow(buf, len);
    }
    grow(p, g.batch * n * n);
    let nm = g.a.norm;
    norm::forward(
        &g.gn(),
        &w[nm.p],
        &w[nm.p + 1],
        x,
        &mut hn[..len],
        s1,
        false,
    );
    for (cv, dst) in [(g.a.q, &mut *q), (g.a.k, &mut *k), (g.a.v, &mut *v)] {
        conv::forward(&g.conv(cv), &w[cv.w], &w[cv.w + 1], hn, dst, false, bufs);
    }
    let scale = 1.0 / (c as f64).sqrt();
    for b in 0..g.batch {
        let pb = &mut p[b * n * n..(b + 1) * n * n];
        // S[i, j] = Σ_c q[c, i] k[c, j]
        let (qb, kb) = (&q[b * n..], &k[b * n..]);
        matmul_strided(pb, (n, 1), n, n, c, qb, (1, big_n), kb, (big_n, 1), false);
        for row in pb.chunks_exact_mut(n) {
            let max = row.iter().fold(f64::NEG_INFINITY, |m, v| m.max(v.to_f64()));
            let mut z = 0.0;
            for v in row.iter_mut() {
                let e = ((v.to_f64() - max) * scale).exp();
                z += e;
                *v = T::from_f64(e);
            }
            let inv = T::from_f64(1.0 / z);
            for v in row.iter_mut() {
                *v *= inv;
            }
        }
        // o[c, i] = Σ_j v[c, j] P[i, j]
        let ob = &mut o[b * n..];
        matmul_strided(
            ob,
            (big_n, 1),
            c,
            n,
            n,
            &v[b * n..],
            (big_n, 1),
            pb,
            (1, n),
            false,
        );
    }
    let pr = g.a.proj;
    conv::forward(&g.conv(pr), &w[pr.w], &w[pr.w + 1], o, out, false, bufs);
    for (y, xv) in out[..len].iter_mut().zip(x) {
        *y += *xv;
    }
}

/// Backward of [`forward`] for the output cotangent `dy`: writes the input cotangent into
/// `dx` and, with `grads`, adds the parameter gradients (f64, [`crate::nn::TimeNet::vars`]
/// order). Shapes: `x`, `dy`, `dx` `[C, B·n]`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn backward<T: Real>(
    g: &Geom,
    w: &[Vec<T>],
    x: &[T],
    kept: &Kept<T>,
    dy: &[T],
    dx: &mut [T],
    grads: Option<&mut [Vec<f64>]>,
    bufs: &mut Bufs<T>,
    cbufs: &mut conv::Bufs<T>,
    gbufs: &mut norm::Bufs<T>,
) {
    let (c, n) = (g.a.norm.c, g.n());
    let big_n = g.batch * n;
    let len = c * big_n;
    let mut grads = grads;
    let Bufs {
        d_o,
        dq,
        dk,
        dv,
        dhn,
        ds,
    } = bufs;
    for buf in [&mut *d_o, &mut *dq, &mut *dk, &mut *dv, &mut *dhn] {
        grow(buf, len);
    }
    grow(ds, n * n);
    dx[..len].copy_from_slice(&dy[..len]);
    let pr = g.a.proj;
    let gp = pair(&mut grads, pr.w);
    conv::backward(
        &g.conv(pr),
        &w[pr.w],
        &kept.o,
        dy,
        Some((d_o, false)),
        gp,
        cbufs,
    );
    let scale = 1.0 / (c as f64).sqrt();
    let (q, k, v) = (&kept.q, &kept.k, &kept.v);
    for b in 0..g.batch {
        let pb = &kept.p[b * n * n..(b + 1) * n * n];
        let dob = &d_o[b * n..];
        let ds = &mut ds[..n * n];
        // dP[i, j] = Σ_c dO[c, i] v[c, j]; dv[c, j] = Σ_i dO[c, i] P[i, j]
        matmul_strided(
            ds,
            (n, 1),
            n,
            n,
            c,
            dob,
            (1, big_n),
            &v[b * n..],
            (big_n, 1),
            false,
        );
        let dvb = &mut dv[b * n..];
        matmul_strided(dvb, (big_n, 1), c, n, n, dob, (big_n, 1), pb, (n, 1), false);
        // dS = P ⊙ (dP − rowsum(P ⊙ dP)) / √C
        for (drow, prow) in ds.chunks_exact_mut(n).zip(pb.chunks_exact(n)) {
            let dot: f64 = drow
                .iter()
                .zip(prow)
                .map(|(d, p)| d.to_f64() * p.to_f64())
                .sum();
            for (d, p) in drow.iter_mut().zip(prow) {
                *d = T::from_f64(p.to_f64() * (d.to_f64() - dot) * scale);
            }
        }
        // dq[c, i] = Σ_j k[c, j] dS[i, j]; dk[c, j] = Σ_i q[c, i] dS[i, j]
        let dqb = &mut dq[b * n..];
        matmul_strided(
            dqb,
            (big_n, 1),
            c,
            n,
            n,
            &k[b * n..],
            (big_n, 1),
            ds,
            (1, n),
            false,
        );
        let dkb = &mut dk[b * n..];
        matmul_strided(
            dkb,
            (big_n, 1),
            c,
            n,
            n,
            &q[b * n..],
            (big_n, 1),
            ds,
            (n, 1),
            false,
        );
    }
    let parts = [(g.a.q, &*dq), (g.a.k, &*dk), (g.a.v, &*dv)];
    for (i, (cv, d)) in parts.into_iter().enumerate() {
        let gp = pair(&mut grads, cv.w);
        let dst = Some((&mut dhn[..], i > 0));
        conv::backward(&g.conv(cv), &w[cv.w], &kept.a, d, dst, gp, cbufs);
    }
    let nm = g.a.norm;
    let gp = pair(&mut grads, nm.p);
    let (gamma, beta) = (&w[nm.p], &w[nm.p + 1]);
    norm::backward(
        &g.gn(),
        gamma,
        beta,
        x,
        &kept.s1,
        dhn,
        (dx, true),
        gp,
        false,
        gbufs,
    );
}

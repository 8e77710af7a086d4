//! The U-Net's forward pass from candle ops: the reference that candle's autograd
//! differentiates (naive backprop, tests). Activations are NCHW `[B, C, H, W]`.

use super::config::GN_EPS;
use super::dropout::Mask;
use super::plan::{Attention, Conv, Norm, Op, ResBlock};
use super::{sinusoid, UNet};
use crate::nn::Activation;
use crate::Result;
use candle_core::{Tensor, D};

fn silu(x: &Tensor) -> Result<Tensor> {
    Ok(Activation::Silu.apply(x)?)
}

/// Softmax over the last dimension (the max is subtracted as a constant).
fn softmax_last(s: &Tensor) -> Result<Tensor> {
    let m = s.max_keepdim(D::Minus1)?.detach();
    let e = s.broadcast_sub(&m)?.exp()?;
    let z = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&z)?)
}

impl UNet {
    /// Shapes: `x` [B, C·H·W] → [B, C·H·W].
    pub(super) fn forward_candle(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        let b = self.check_input(x)?;
        let cfg = &self.cfg;
        let stemb = silu(&self.time_embedding(x, t)?)?;
        let seed = self.dropout_seed();
        let mut h = x.reshape((b, cfg.channels, cfg.height, cfg.width))?;
        let mut skips: Vec<Tensor> = Vec::new();
        for layer in &self.plan.layers {
            if layer.skip > 0 {
                let s = skips.pop().expect("the plan pops only what it pushed");
                h = Tensor::cat(&[&h, &s], 1)?;
            }
            h = match layer.op {
                Op::Conv(c) => self.conv(&h, c)?,
                Op::Res(r) => self.res_block(&h, &r, &stemb, t, seed)?,
                Op::Attn(a) => self.attention(&h, &a)?,
                Op::Out(n, c) => self.conv(&silu(&self.group_norm(&h, n)?)?, c)?,
            };
            if layer.push {
                skips.push(h.clone());
            }
        }
        Ok(h.reshape((b, cfg.dim()))?)
    }

    /// `temb` [1, 4ch] at time `t`, on `x`'s device.
    fn time_embedding(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        let dim = self.plan.emb_dim;
        let e = sinusoid(self.cfg.time_scale * t, dim);
        let e = Tensor::from_vec(e, (1, dim), x.device())?.to_dtype(self.dtype)?;
        let [w0, w1] = self.plan.temb;
        let u = silu(&self.linear(&e, w0)?)?;
        self.linear(&u, w1)
    }

    /// `x Wᵀ + b` for the Linear whose weight is parameter `w`. Shapes: [B, in] → [B, out].
    fn linear(&self, x: &Tensor, w: usize) -> Result<Tensor> {
        Ok(x.matmul(&self.var(w).t()?)?
            .broadcast_add(self.var(w + 1))?)
    }

    /// Shapes: [B, cin, H, W] → [B, cout, H·up/stride, W·up/stride].
    fn conv(&self, x: &Tensor, c: Conv) -> Result<Tensor> {
        let x = if c.up > 1 {
            // (upsample_nearest2d's backward overwrites its input's gradient instead of
            // adding to it: fine here, the input has no other consumer)
            let (_, _, h, w) = x.dims4()?;
            x.upsample_nearest2d(h * c.up, w * c.up)?
        } else {
            x.clone()
        };
        let y = x.conv2d(self.var(c.w), c.k / 2, c.stride, 1, 1)?;
        Ok(y.broadcast_add(&self.var(c.w + 1).reshape((1, c.cout, 1, 1))?)?)
    }

    /// GroupNorm with the layer's scale and shift. Shapes: [B, C, H, W] → same.
    fn group_norm(&self, x: &Tensor, n: Norm) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let g = self.cfg.groups;
        let xg = x.reshape((b, g, (c / g) * h * w))?;
        let mean = xg.mean_keepdim(2)?;
        let xc = xg.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(2)?;
        let xn = xc.broadcast_div(&(var + GN_EPS)?.sqrt()?)?;
        let xn = xn.reshape((b, c, h, w))?;
        let gamma = self.var(n.p).reshape((1, c, 1, 1))?;
        let beta = self.var(n.p + 1).reshape((1, c, 1, 1))?;
        Ok(xn.broadcast_mul(&gamma)?.broadcast_add(&beta)?)
    }

    /// Shapes: `x` [B, cin, H, W], `stemb` = SiLU(temb) [1, 4ch] → [B, cout, H, W].
    fn res_block(
        &self,
        x: &Tensor,
        r: &ResBlock,
        stemb: &Tensor,
        t: f64,
        seed: Option<u64>,
    ) -> Result<Tensor> {
        let cout = r.conv2.cout;
        let h = self.conv(&silu(&self.group_norm(x, r.norm1)?)?, r.conv1)?;
        let tb = self.linear(stemb, r.temb)?.reshape((1, cout, 1, 1))?;
        let h = h.broadcast_add(&tb)?;
        let mut a = silu(&self.group_norm(&h, r.norm2)?)?;
        if let Some(mask) = Mask::new(seed, t, r.id, self.cfg.dropout) {
            let m: Vec<f64> = (0..a.elem_count() as u64).map(|i| mask.factor(i)).collect();
            let m = Tensor::from_vec(m, a.shape(), a.device())?.to_dtype(self.dtype)?;
            a = (a * m)?;
        }
        let h = self.conv(&a, r.conv2)?;
        let skip = match r.shortcut {
            Some(c) => self.conv(x, c)?,
            None => x.clone(),
        };
        Ok((skip + h)?)
    }

    /// Shapes: [B, C, H, W] → same.
    fn attention(&self, x: &Tensor, a: &Attention) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let hn = self.group_norm(x, a.norm)?;
        let flat = |y: Tensor| y.reshape((b, c, h * w));
        let q = flat(self.conv(&hn, a.q)?)?;
        let k = flat(self.conv(&hn, a.k)?)?;
        let v = flat(self.conv(&hn, a.v)?)?;
        // s[b, i, j] = Σ_c q[b, c, i] k[b, c, j] / √c
        let s = q.transpose(1, 2)?.contiguous()?.matmul(&k)?;
        let p = softmax_last(&s.affine(1.0 / (c as f64).sqrt(), 0.0)?)?;
        // o[b, c, i] = Σ_j v[b, c, j] p[b, i, j]
        let o = v.matmul(&p.transpose(1, 2)?.contiguous()?)?;
        let y = self.conv(&o.reshape((b, c, h, w))?, a.proj)?;
        Ok((x + y)?)
    }
}

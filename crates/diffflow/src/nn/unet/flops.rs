//! Cost model of the [`super::UNetEngine`]: matrix-multiply FLOPs (2 per multiply-add) of its
//! passes, counted from the [`Plan`]. Elementwise work (GroupNorm, SiLU, softmax, im2col)
//! and the time MLP (independent of the batch) are not counted.

use super::plan::{Conv, Op, Plan};
use super::UNetConfig;

/// `2·cout·cin·k²` per output pixel, times the output pixels of `rows` images.
fn conv(c: &Conv, h: usize, w: usize, rows: usize) -> u64 {
    let (ho, wo) = (h * c.up / c.stride, w * c.up / c.stride);
    2 * (c.cout * c.cin * c.k * c.k * rows * ho * wo) as u64
}

/// FLOPs of `(forward, input cotangent, parameter gradients)` of the whole net over `rows`
/// images. A conv costs the same in each of the three; attention's `qᵀk` and `P v` products
/// (`2·n²·C` each per image) have four counterparts in the input cotangent and none in the
/// parameter gradients.
fn costs(cfg: &UNetConfig, rows: usize) -> (u64, u64, u64) {
    let plan = Plan::new(cfg);
    let (mut fwd, mut dx, mut dw) = (0u64, 0u64, 0u64);
    for l in &plan.layers {
        let convs: Vec<Conv> = match l.op {
            Op::Conv(c) | Op::Out(_, c) => vec![c],
            Op::Res(r) => [Some(r.conv1), Some(r.conv2), r.shortcut]
                .into_iter()
                .flatten()
                .collect(),
            Op::Attn(a) => {
                let (c, n) = (a.norm.c as u64, (l.h * l.w) as u64);
                let per = 2 * n * n * c * rows as u64;
                fwd += 2 * per;
                dx += 4 * per;
                vec![a.q, a.k, a.v, a.proj]
            }
        };
        for c in &convs {
            let f = conv(c, l.h, l.w, rows);
            fwd += f;
            dx += f;
            dw += f;
        }
    }
    (fwd, dx, dw)
}

/// Matrix-multiply FLOPs of one forward pass over `rows` images.
pub fn unet_forward_flops(cfg: &UNetConfig, rows: usize) -> u64 {
    costs(cfg, rows).0
}

/// Matrix-multiply FLOPs of one pullback over `rows` images (input cotangent, and with
/// `params` the parameter gradients).
pub fn unet_pullback_flops(cfg: &UNetConfig, rows: usize, params: bool) -> u64 {
    let (_, dx, dw) = costs(cfg, rows);
    if params {
        dx + dw
    } else {
        dx
    }
}

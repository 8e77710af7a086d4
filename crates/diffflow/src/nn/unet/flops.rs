//! Cost model of the [`super::UNetEngine`]: matrix-multiply FLOPs (2 per multiply-add) of its
//! passes, counted from the [`Plan`]. Elementwise work (GroupNorm, SiLU, softmax, im2col)
//! and the time MLP (independent of the batch) are not counted.

use super::conv::Geom;
use super::plan::{Conv, Op, Plan};
use super::UNetConfig;

/// `2·cout·cin·k²` per output pixel, times the output pixels of `rows` images (with `bias`,
/// `cin·k² + 1`: the forward pass of a 3×3 or strided conv multiplies the bias in the GEMM).
fn conv(c: &Conv, h: usize, w: usize, rows: usize, bias: bool) -> u64 {
    let (ho, wo) = (h * c.up / c.stride, w * c.up / c.stride);
    let direct = c.k == 1 && c.stride == 1 && c.up == 1;
    let kk = c.cin * c.k * c.k + usize::from(bias && !direct);
    2 * (c.cout * kk * rows * ho * wo) as u64
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
            let f = conv(c, l.h, l.w, rows, false);
            fwd += conv(c, l.h, l.w, rows, true);
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

/// The GEMM calls `(m, n, k)` (`C[m, n] = A[m, k]·B[k, n]`) the engine makes over `rows`
/// images with elements of `elem` bytes (f32: 4), per pass: to put its speed against the
/// machine's GEMM rate on the same shapes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UNetGemms {
    /// The forward pass.
    pub forward: Vec<(usize, usize, usize)>,
    /// The input cotangent of a pullback.
    pub input: Vec<(usize, usize, usize)>,
    /// The parameter gradients of a pullback.
    pub weights: Vec<(usize, usize, usize)>,
}

/// See [`UNetGemms`].
pub fn unet_gemms(cfg: &UNetConfig, rows: usize, elem: usize) -> UNetGemms {
    let plan = Plan::new(cfg);
    let mut out = UNetGemms::default();
    for l in &plan.layers {
        let convs: Vec<Conv> = match l.op {
            Op::Conv(c) | Op::Out(_, c) => vec![c],
            Op::Res(r) => [Some(r.conv1), Some(r.conv2), r.shortcut]
                .into_iter()
                .flatten()
                .collect(),
            Op::Attn(a) => {
                let (c, n) = (a.norm.c, l.h * l.w);
                for _ in 0..rows {
                    out.forward.extend([(n, n, c), (c, n, n)]);
                    out.input
                        .extend([(n, n, c), (c, n, n), (c, n, n), (c, n, n)]);
                }
                vec![a.q, a.k, a.v, a.proj]
            }
        };
        for c in convs {
            let g = Geom {
                c,
                batch: rows,
                h: l.h,
                w: l.w,
            };
            let [f, dx, dw] = g.gemms(elem);
            out.forward.extend(f);
            out.input.extend(dx);
            out.weights.extend(dw);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{UNet, UNetScratch, UNetTape, FLOPS};
    use crate::rng::Rng;
    use candle_core::{DType, Device};

    /// The cost model counts exactly the GEMM FLOPs the engine does.
    #[test]
    fn flop_counts_match_the_engine() {
        let cfg = UNetConfig {
            mults: vec![1, 2, 2],
            attn: vec![4, 2],
            ..UNetConfig::tiny(2, 8, 8)
        };
        let net = UNet::new(&cfg, DType::F64, &Device::Cpu, &mut Rng::new(1)).unwrap();
        let e = crate::nn::UNetEngine::<f64>::new(&net).unwrap();
        let rows = 3;
        let x = Rng::new(2).normals(rows * cfg.dim());
        let mut y = vec![0.0; x.len()];
        let mut dx = vec![0.0; x.len()];
        let (mut tape, mut scratch) = (UNetTape::default(), UNetScratch::default());
        let mut grads = e.zero_grads();
        let counted = |f: &mut dyn FnMut()| {
            FLOPS.with(|c| c.set(0));
            f();
            FLOPS.with(|c| c.get())
        };
        let fwd = counted(&mut || e.forward(0.01, &x, &mut y, &mut tape, &mut scratch));
        assert_eq!(fwd, unet_forward_flops(&cfg, rows));
        let back = counted(&mut || e.backward(&tape, &x, &mut dx, None, &mut scratch));
        assert_eq!(back, unet_pullback_flops(&cfg, rows, false));
        let full = counted(&mut || e.backward(&tape, &x, &mut dx, Some(&mut grads), &mut scratch));
        assert_eq!(full, unet_pullback_flops(&cfg, rows, true));
        // The list of GEMM shapes adds up to the same counts.
        let flops = |v: &[(usize, usize, usize)]| -> u64 {
            v.iter().map(|&(m, n, k)| 2 * (m * n * k) as u64).sum()
        };
        let shapes = unet_gemms(&cfg, rows, 8);
        assert_eq!(flops(&shapes.forward), fwd);
        assert_eq!(flops(&shapes.input), back);
        assert_eq!(flops(&shapes.input) + flops(&shapes.weights), full);
    }
}

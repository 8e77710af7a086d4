//! Activation functions: differentiable candle versions (exact) and fused CPU kernels that
//! compute the activation and its derivative in one pass.
//!
//! The f64 kernels use libm (exact to rounding). The f32 GELU and SiLU kernels are
//! branch-free and vectorise: GELU uses one `exp(−a²/2)` for both the normal CDF
//! (Abramowitz & Stegun 7.1.26, |error| ≤ 7.5e-8 on Φ) and the density in the derivative.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// Pointwise nonlinearity of the MLPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// Exact GELU `a·Φ(a)` (erf form), as in the official code.
    #[default]
    Gelu,
    /// `a·σ(a)`.
    Silu,
    /// `tanh(a)`.
    Tanh,
    /// `max(a, 0)`.
    Relu,
}

impl std::str::FromStr for Activation {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "gelu" => Ok(Activation::Gelu),
            "silu" => Ok(Activation::Silu),
            "tanh" => Ok(Activation::Tanh),
            "relu" => Ok(Activation::Relu),
            _ => Err(crate::Error::config(format!(
                "unknown activation '{s}' (expected gelu, silu, tanh or relu)"
            ))),
        }
    }
}

const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

impl Activation {
    /// Differentiable candle version, built from primitives whose backward passes are exact.
    pub fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            // candle's fused gelu_erf backward uses a truncated 1/sqrt(2π); build it from erf.
            Activation::Gelu => {
                let cdf = (x.affine(std::f64::consts::FRAC_1_SQRT_2, 0.0)?.erf()? + 1.0)? * 0.5;
                x * cdf?
            }
            Activation::Silu => {
                let sig = (x.neg()?.exp()? + 1.0)?.recip()?;
                x * sig
            }
            Activation::Tanh => x.tanh(),
            Activation::Relu => x.relu(),
        }
    }

    /// Value and derivative `(act(x), act'(x))`, both differentiable candle ops (for the
    /// forward-mode JVP of [`super::Mlp::forward_jvp`], which the CNF differentiates again):
    /// GELU' = `Φ(x) + x φ(x)` from erf and exp; ReLU' is the step `x > 0` (no gradient).
    pub fn apply_with_derivative(self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        match self {
            Activation::Gelu => {
                let cdf = ((x.affine(std::f64::consts::FRAC_1_SQRT_2, 0.0)?.erf()? + 1.0)? * 0.5)?;
                let pdf = x
                    .sqr()?
                    .affine(-0.5, 0.0)?
                    .exp()?
                    .affine(FRAC_1_SQRT_2PI, 0.0)?;
                let y = (x * &cdf)?;
                let dy = (cdf + (x * pdf)?)?;
                Ok((y, dy))
            }
            Activation::Silu => {
                let sig = (x.neg()?.exp()? + 1.0)?.recip()?;
                let y = (x * &sig)?;
                // σ (1 + x (1 − σ))
                let one_minus = sig.affine(-1.0, 1.0)?;
                let dy = (&sig * ((x * one_minus)? + 1.0)?)?;
                Ok((y, dy))
            }
            Activation::Tanh => {
                let y = x.tanh()?;
                let dy = y.sqr()?.affine(-1.0, 1.0)?;
                Ok((y, dy))
            }
            Activation::Relu => {
                let y = x.relu()?;
                let dy = x.gt(0.0)?.to_dtype(x.dtype())?;
                Ok((y, dy))
            }
        }
    }

    /// Value and derivative at `a`, in f64 (the reference for the kernels).
    pub fn eval_f64(self, a: f64) -> (f64, f64) {
        match self {
            Activation::Gelu => {
                let cdf = 0.5 * libm::erfc(-a * std::f64::consts::FRAC_1_SQRT_2);
                let pdf = FRAC_1_SQRT_2PI * (-0.5 * a * a).exp();
                (a * cdf, cdf + a * pdf)
            }
            Activation::Silu => {
                let s = 1.0 / (1.0 + (-a).exp());
                (a * s, s * (1.0 + a * (1.0 - s)))
            }
            Activation::Tanh => {
                let t = a.tanh();
                (t, 1.0 - t * t)
            }
            Activation::Relu => {
                if a > 0.0 {
                    (a, 1.0)
                } else {
                    (0.0, 0.0)
                }
            }
        }
    }
}

/// Element types of the CPU kernels (f32 and f64).
pub trait Real: candle_core::WithDType + std::ops::Neg<Output = Self> {
    /// `a ← act(a + bias)` row by row, and `deriv ← act'(a + bias)` when given.
    /// Shapes: `a` [rows, bias.len()], `deriv` like `a`.
    fn bias_act(act: Activation, a: &mut [Self], bias: &[Self], deriv: Option<&mut [Self]>);
    /// `sin` and `cos`.
    fn sin_cos(self) -> (Self, Self);
}

impl Real for f64 {
    fn bias_act(act: Activation, a: &mut [f64], bias: &[f64], deriv: Option<&mut [f64]>) {
        let w = bias.len();
        match deriv {
            Some(d) => {
                for (row, drow) in a.chunks_exact_mut(w).zip(d.chunks_exact_mut(w)) {
                    for ((v, dv), b) in row.iter_mut().zip(drow.iter_mut()).zip(bias) {
                        let (y, dy) = act.eval_f64(*v + *b);
                        *v = y;
                        *dv = dy;
                    }
                }
            }
            None => {
                for row in a.chunks_exact_mut(w) {
                    for (v, b) in row.iter_mut().zip(bias) {
                        *v = act.eval_f64(*v + *b).0;
                    }
                }
            }
        }
    }

    fn sin_cos(self) -> (f64, f64) {
        self.sin_cos()
    }
}

impl Real for f32 {
    fn bias_act(act: Activation, a: &mut [f32], bias: &[f32], deriv: Option<&mut [f32]>) {
        fast::bias_act_f32(act, a, bias, deriv)
    }

    fn sin_cos(self) -> (f32, f32) {
        self.sin_cos()
    }
}

/// Vectorisable f32 kernels.
pub mod fast {
    use super::Activation;

    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;

    /// `exp(x)` for f32, relative error below 2e-7, branch-free (inputs clamped to
    /// [−87, 88]). Explicit fused multiply-adds (`mul_add`, exactly rounded on every
    /// instruction set, so every dispatch path gives the same bits).
    #[inline(always)]
    pub fn exp(x: f32) -> f32 {
        let x = x.clamp(-87.0, 88.0);
        let k = x.mul_add(LOG2E, MAGIC);
        let n = k - MAGIC;
        let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
        // Taylor polynomial of degree 7 on |r| ≤ ln2/2.
        let p = (1.0f32 / 5040.0).mul_add(r, 1.0 / 720.0);
        let p = p.mul_add(r, 1.0 / 120.0);
        let p = p.mul_add(r, 1.0 / 24.0);
        let p = p.mul_add(r, 1.0 / 6.0);
        let p = p.mul_add(r, 0.5);
        let p = p.mul_add(r, 1.0);
        let p = p.mul_add(r, 1.0);
        let ni = (k.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
        let scale = f32::from_bits(((ni + 127) << 23) as u32);
        p * scale
    }

    /// Abramowitz & Stegun 7.1.26 for `erfc(z)/2 = Φ(−z√2)`: `t·Σ a_k t^k · exp(−z²)` with
    /// `t = 1/(1 + p z)`; the coefficients are halved here.
    const AS_P: f32 = 0.327_591_1;
    const AS_HALF: [f32; 5] = [
        0.5 * 0.254_829_6,
        0.5 * -0.284_496_74,
        0.5 * 1.421_413_7,
        0.5 * -1.453_152,
        0.5 * 1.061_405_4,
    ];
    const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
    const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

    /// GELU value and derivative.
    #[inline(always)]
    pub fn gelu(a: f32) -> (f32, f32) {
        let e = exp(-0.5 * a * a); // exp(−z²) with z = |a|/√2
        let t = 1.0 / a.abs().mul_add(AS_P * FRAC_1_SQRT_2, 1.0);
        let h = &AS_HALF;
        let poly = h[4].mul_add(t, h[3]).mul_add(t, h[2]);
        let poly = poly.mul_add(t, h[1]).mul_add(t, h[0]);
        let tail = (t * poly) * e; // Φ(−|a|)
        let cdf = if a >= 0.0 { 1.0 - tail } else { tail };
        (a * cdf, a.mul_add(FRAC_1_SQRT_2PI * e, cdf))
    }

    /// SiLU value and derivative.
    #[inline(always)]
    pub fn silu(a: f32) -> (f32, f32) {
        let s = 1.0 / (1.0 + exp(-a));
        (a * s, s * a.mul_add(1.0 - s, 1.0))
    }

    #[inline(always)]
    fn pointwise(a: f32, act: Activation) -> (f32, f32) {
        match act {
            Activation::Gelu => gelu(a),
            Activation::Silu => silu(a),
            Activation::Tanh => {
                let t = a.tanh();
                (t, 1.0 - t * t)
            }
            Activation::Relu => {
                if a > 0.0 {
                    (a, 1.0)
                } else {
                    (0.0, 0.0)
                }
            }
        }
    }

    #[inline(always)]
    fn body<const ACT: u8>(a: &mut [f32], bias: &[f32], deriv: Option<&mut [f32]>) {
        let act = match ACT {
            0 => Activation::Gelu,
            1 => Activation::Silu,
            2 => Activation::Tanh,
            _ => Activation::Relu,
        };
        let w = bias.len();
        match deriv {
            Some(d) => {
                for (row, drow) in a.chunks_exact_mut(w).zip(d.chunks_exact_mut(w)) {
                    for ((v, dv), b) in row.iter_mut().zip(drow.iter_mut()).zip(bias) {
                        let (y, dy) = pointwise(*v + *b, act);
                        *v = y;
                        *dv = dy;
                    }
                }
            }
            None => {
                for row in a.chunks_exact_mut(w) {
                    for (v, b) in row.iter_mut().zip(bias) {
                        *v = pointwise(*v + *b, act).0;
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn body_avx2<const ACT: u8>(a: &mut [f32], bias: &[f32], deriv: Option<&mut [f32]>) {
        body::<ACT>(a, bias, deriv)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    unsafe fn body_avx512<const ACT: u8>(a: &mut [f32], bias: &[f32], deriv: Option<&mut [f32]>) {
        body::<ACT>(a, bias, deriv)
    }

    /// Instruction sets of the kernels, best first.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum Isa {
        Avx512,
        Avx2,
        Plain,
    }

    pub(crate) fn best_isa() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
                return Isa::Avx512;
            }
            if has!("avx2") && has!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Plain
    }

    /// The same scalar code compiled for each instruction set. Without fast-math flags LLVM
    /// neither contracts mul+add into FMA nor reassociates, and the explicit `mul_add`s are
    /// exactly rounded everywhere (hardware FMA, or libm's `fmaf` on the plain path), so every
    /// path gives the same bits.
    pub(super) fn dispatch<const ACT: u8>(
        isa: Isa,
        a: &mut [f32],
        bias: &[f32],
        deriv: Option<&mut [f32]>,
    ) {
        match isa {
            // SAFETY: `best_isa` found the features enabled on these functions.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { body_avx512::<ACT>(a, bias, deriv) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { body_avx2::<ACT>(a, bias, deriv) },
            _ => body::<ACT>(a, bias, deriv),
        }
    }

    /// The best instruction set of this CPU (detected once).
    pub(crate) fn isa() -> Isa {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(best_isa)
    }

    /// `a ← act(a + bias)` per row (and the derivative), f32.
    pub fn bias_act_f32(act: Activation, a: &mut [f32], bias: &[f32], deriv: Option<&mut [f32]>) {
        bias_act_f32_isa(isa(), act, a, bias, deriv)
    }

    pub(super) fn bias_act_f32_isa(
        isa: Isa,
        act: Activation,
        a: &mut [f32],
        bias: &[f32],
        deriv: Option<&mut [f32]>,
    ) {
        match act {
            Activation::Gelu => dispatch::<0>(isa, a, bias, deriv),
            Activation::Silu => dispatch::<1>(isa, a, bias, deriv),
            Activation::Tanh => dispatch::<2>(isa, a, bias, deriv),
            Activation::Relu => dispatch::<3>(isa, a, bias, deriv),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_accurate() {
        let mut worst: f64 = 0.0;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f64 / 200_000.0;
            let x32 = x as f32;
            let want = (x32 as f64).exp();
            let got = fast::exp(x32) as f64;
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 3e-7, "max relative error {worst}");
    }

    #[test]
    fn fast_kernels_match_f64_reference() {
        for act in [
            Activation::Gelu,
            Activation::Silu,
            Activation::Tanh,
            Activation::Relu,
        ] {
            let n = 40_001;
            let a: Vec<f32> = (0..n)
                .map(|i| -12.0 + 24.0 * i as f32 / (n - 1) as f32)
                .collect();
            let bias = vec![0.0f32; 1];
            let mut v = a.clone();
            let mut d = vec![0.0f32; n];
            f32::bias_act(act, &mut v, &bias, Some(&mut d));
            let mut v2 = a.clone();
            f32::bias_act(act, &mut v2, &bias, None);
            for i in 0..n {
                let (y, dy) = act.eval_f64(a[i] as f64);
                let tol = 4e-7 * (1.0 + y.abs());
                assert!(
                    (v[i] as f64 - y).abs() < tol,
                    "{act:?} value at {}: {} vs {y}",
                    a[i],
                    v[i]
                );
                assert!(
                    (d[i] as f64 - dy).abs() < 4e-7 * (1.0 + dy.abs()),
                    "{act:?} derivative at {}: {} vs {dy}",
                    a[i],
                    d[i]
                );
                assert_eq!(v[i], v2[i]);
            }
        }
    }

    /// Every instruction-set path of the f32 kernels gives the same bits.
    #[test]
    fn all_isa_paths_agree_bitwise() {
        use fast::Isa;
        let best = fast::best_isa();
        let isas: Vec<Isa> = [Isa::Avx512, Isa::Avx2, Isa::Plain]
            .into_iter()
            .filter(|i| {
                matches!(
                    (best, i),
                    (_, Isa::Plain) | (Isa::Avx512, _) | (Isa::Avx2, Isa::Avx2)
                )
            })
            .collect();
        let n = 3 * 4099;
        let a: Vec<f32> = (0..n)
            .map(|i| -9.0 + 18.0 * ((i * 7919) % n) as f32 / n as f32)
            .collect();
        let bias: Vec<f32> = (0..3).map(|i| 0.1 * i as f32 - 0.05).collect();
        for act in [
            Activation::Gelu,
            Activation::Silu,
            Activation::Tanh,
            Activation::Relu,
        ] {
            let run = |isa: Isa| {
                let (mut v, mut d) = (a.clone(), vec![0.0f32; n]);
                fast::bias_act_f32_isa(isa, act, &mut v, &bias, Some(&mut d));
                let mut v2 = a.clone();
                fast::bias_act_f32_isa(isa, act, &mut v2, &bias, None);
                let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                (bits(&v), bits(&d), bits(&v2))
            };
            let want = run(Isa::Plain);
            for &isa in &isas {
                assert!(run(isa) == want, "{act:?} on {isa:?}");
            }
        }
    }

    /// Timing of the GELU paths (run with `--ignored --nocapture`).
    #[test]
    #[ignore]
    fn time_gelu_paths() {
        use fast::Isa;
        let n = 128 * 128;
        let a: Vec<f32> = (0..n)
            .map(|i| -4.0 + 8.0 * (i % 1000) as f32 / 1000.0)
            .collect();
        let bias = vec![0.01f32; 128];
        let mut d = vec![0.0f32; n];
        for round in 0..3 {
            for isa in [Isa::Avx512, Isa::Avx2, Isa::Plain] {
                let mut v = a.clone();
                let t0 = std::time::Instant::now();
                for _ in 0..2000 {
                    v.copy_from_slice(&a);
                    fast::bias_act_f32_isa(isa, Activation::Gelu, &mut v, &bias, Some(&mut d));
                }
                let ns = t0.elapsed().as_secs_f64() * 1e9 / (2000.0 * n as f64);
                println!("round {round} {isa:?}: {ns:.3} ns/element");
            }
        }
    }

    #[test]
    fn f64_derivatives_match_finite_differences() {
        for act in [Activation::Gelu, Activation::Silu, Activation::Tanh] {
            for &a in &[-3.1, -0.7, 0.0, 0.4, 2.5] {
                let h = 1e-6;
                let fd = (act.eval_f64(a + h).0 - act.eval_f64(a - h).0) / (2.0 * h);
                assert!((fd - act.eval_f64(a).1).abs() < 1e-8, "{act:?} at {a}");
            }
        }
    }

    #[test]
    fn candle_gelu_matches_reference() -> candle_core::Result<()> {
        let xs = vec![-4.0f64, -1.0, -0.3, 0.0, 0.5, 2.0, 6.0];
        let t = Tensor::new(xs.as_slice(), &candle_core::Device::Cpu)?;
        let y = Activation::Gelu.apply(&t)?.to_vec1::<f64>()?;
        for (x, y) in xs.iter().zip(y) {
            assert!((y - Activation::Gelu.eval_f64(*x).0).abs() < 1e-15);
        }
        Ok(())
    }
}

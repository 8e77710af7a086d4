//! The Fourier-feature MLP of the official 2-D code ("FourierMLP"), with configurable width,
//! depth, number of frequencies and activation.
//!
//! `e(t) = [sin(c·t + p), cos(c·t + p)]` with fixed `c = linspace(freq_min, freq_max, K)` and a
//! trainable phase `p`; `h_t = L_t2(act(L_t0(e)))`; `h = act(L_in(x) + h_t)`; `depth` times
//! `h = act(L_k(h))`; output `L_out(h)`. Parameter names are the official state-dict names.

use super::{act::Activation, Engine, MlpEngine, TimeNet};
use crate::rng::Rng;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

/// Architecture of an [`Mlp`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpConfig {
    /// Hidden width `H`.
    pub width: usize,
    /// Number of hidden `H → H` layers after the input layer.
    pub depth: usize,
    /// Number of Fourier frequencies `K` (the time feature has `2K` entries).
    pub fourier: usize,
    /// Smallest frequency.
    pub freq_min: f64,
    /// Largest frequency.
    pub freq_max: f64,
    /// Nonlinearity.
    pub activation: Activation,
}

impl MlpConfig {
    /// The official 2-D network: width 128, 3 hidden layers, 128 frequencies in [0.1, 100],
    /// exact GELU (99,714 parameters for d = 2).
    pub fn paper_2d() -> Self {
        MlpConfig {
            width: 128,
            depth: 3,
            fourier: 128,
            freq_min: 0.1,
            freq_max: 100.0,
            activation: Activation::Gelu,
        }
    }

    /// The quick default: about 47k parameters per net for d = 2 (94k for drift + score).
    pub fn small() -> Self {
        MlpConfig {
            width: 96,
            depth: 3,
            fourier: 48,
            ..Self::paper_2d()
        }
    }

    /// Checks sizes and frequencies.
    pub fn validate(&self) -> Result<()> {
        if self.width == 0 || self.fourier == 0 {
            return Err(Error::config(format!(
                "network width and fourier must be >= 1, got width = {}, fourier = {}",
                self.width, self.fourier
            )));
        }
        if !(self.freq_min.is_finite() && self.freq_max.is_finite())
            || self.freq_min > self.freq_max
        {
            return Err(Error::config(format!(
                "need finite freq_min <= freq_max, got {} and {}",
                self.freq_min, self.freq_max
            )));
        }
        Ok(())
    }

    /// Number of parameters for data dimension `d`.
    pub fn num_params(&self, d: usize) -> usize {
        let (h, k) = (self.width, self.fourier);
        k + (d * h + h) + (2 * k * h + h) + (h * h + h) + self.depth * (h * h + h) + (h * d + d)
    }

    /// This architecture with `knob` set so that the net has the number of parameters nearest
    /// to `target` for dimension `d` (matched model sizes of the baselines): the width among
    /// the current one and the multiples of 8 up to four times it, or the number of Fourier
    /// frequencies among 1..=512. Ties go to the first candidate in that order.
    pub fn matched(&self, d: usize, target: usize, knob: ParamKnob) -> MlpConfig {
        let with = |v: usize| match knob {
            ParamKnob::Width => MlpConfig {
                width: v,
                ..self.clone()
            },
            ParamKnob::Fourier => MlpConfig {
                fourier: v,
                ..self.clone()
            },
        };
        let candidates: Vec<usize> = match knob {
            ParamKnob::Width => std::iter::once(self.width)
                .chain((8..=4 * self.width).step_by(8))
                .collect(),
            ParamKnob::Fourier => (1..=512).collect(),
        };
        let gap = |v: usize| with(v).num_params(d).abs_diff(target);
        let mut best = candidates[0];
        for &v in &candidates[1..] {
            if gap(v) < gap(best) {
                best = v;
            }
        }
        with(best)
    }

    /// The time features moved from an interval ending at `from_t_max` to one ending at
    /// `to_t_max`: frequencies × `from_t_max / to_t_max`, so that `c·t` spans the same range.
    pub fn rescale_time(&self, from_t_max: f64, to_t_max: f64) -> MlpConfig {
        let scale = from_t_max / to_t_max;
        MlpConfig {
            freq_min: self.freq_min * scale,
            freq_max: self.freq_max * scale,
            ..self.clone()
        }
    }
}

/// What [`MlpConfig::matched`] varies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKnob {
    /// The hidden width (data of any dimension).
    Width,
    /// The number of Fourier frequencies (the 2-D comparison keeps the paper's width).
    Fourier,
}

/// Indices into [`Mlp::vars`].
pub(crate) mod idx {
    pub const PHASE: usize = 0;
    pub const IN_W: usize = 1;
    pub const IN_B: usize = 2;
    pub const T0_W: usize = 3;
    pub const T0_B: usize = 4;
    pub const T2_W: usize = 5;
    pub const T2_B: usize = 6;
    /// Weight of hidden layer `k` (0-based); its bias follows.
    pub const fn hidden_w(k: usize) -> usize {
        7 + 2 * k
    }
    /// Output weight for `depth` hidden layers; its bias follows.
    pub const fn out_w(depth: usize) -> usize {
        7 + 2 * depth
    }
}

/// Fourier-feature MLP (see the module docs).
pub struct Mlp {
    cfg: MlpConfig,
    dim: usize,
    dtype: DType,
    vars: Vec<(String, Var)>,
    buffers: Vec<(String, Var)>,
}

impl Mlp {
    /// A freshly initialised net for data dimension `dim`: Linear layers as PyTorch's default
    /// (weights and biases uniform in ±1/sqrt(fan_in)), phases N(0, 1), all from `rng`.
    pub fn new(dim: usize, cfg: &MlpConfig, dtype: DType, rng: &mut Rng) -> Result<Self> {
        cfg.validate()?;
        if dim == 0 {
            return Err(Error::config("data dimension must be >= 1"));
        }
        if !matches!(dtype, DType::F32 | DType::F64) {
            return Err(Error::config(format!(
                "dtype {dtype:?} not supported (f32 or f64)"
            )));
        }
        let dev = Device::Cpu;
        let (h, k) = (cfg.width, cfg.fourier);
        let mk = |v: Vec<f64>, shape: &[usize]| -> Result<Var> {
            Ok(Var::from_tensor(
                &Tensor::from_vec(v, shape, &dev)?.to_dtype(dtype)?,
            )?)
        };
        let mut vars = Vec::new();
        vars.push(("timestep_phase".to_string(), mk(rng.normals(k), &[1, k])?));
        let mut linear = |name: &str, out: usize, inp: usize, vars: &mut Vec<(String, Var)>| {
            let bound = 1.0 / (inp as f64).sqrt();
            let w: Vec<f64> = (0..out * inp)
                .map(|_| (2.0 * rng.uniform() - 1.0) * bound)
                .collect();
            let b: Vec<f64> = (0..out)
                .map(|_| (2.0 * rng.uniform() - 1.0) * bound)
                .collect();
            vars.push((format!("{name}.weight"), mk(w, &[out, inp])?));
            vars.push((format!("{name}.bias"), mk(b, &[out])?));
            Ok::<(), Error>(())
        };
        linear("input_embed", h, dim, &mut vars)?;
        linear("timestep_embed.0", h, 2 * k, &mut vars)?;
        linear("timestep_embed.2", h, h, &mut vars)?;
        for l in 0..cfg.depth {
            linear(&format!("layers.{}.0", l + 1), h, h, &mut vars)?;
        }
        linear(&format!("layers.{}", cfg.depth + 1), dim, h, &mut vars)?;
        let coeff: Vec<f64> = (0..k)
            .map(|i| {
                if k == 1 {
                    cfg.freq_min
                } else {
                    cfg.freq_min + (cfg.freq_max - cfg.freq_min) * i as f64 / (k - 1) as f64
                }
            })
            .collect();
        let buffers = vec![("timestep_coeff".to_string(), mk(coeff, &[1, k])?)];
        Ok(Mlp {
            cfg: cfg.clone(),
            dim,
            dtype,
            vars,
            buffers,
        })
    }

    /// The architecture.
    pub fn config(&self) -> &MlpConfig {
        &self.cfg
    }

    /// Element type of the weights.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    fn var(&self, i: usize) -> &Tensor {
        self.vars[i].1.as_tensor()
    }

    /// `x Wᵀ + b` for the Linear layer whose weight is `vars[w]`.
    fn linear(&self, x: &Tensor, w: usize) -> Result<Tensor> {
        Ok(x.matmul(&self.var(w).t()?)?
            .broadcast_add(self.var(w + 1))?)
    }

    /// The time features `h_t` [1, H] (candle ops).
    fn time_embedding(&self, t: f64) -> Result<Tensor> {
        let act = self.cfg.activation;
        let coeff = self.buffers[0].1.as_tensor();
        let a = coeff.affine(t, 0.0)?.add(self.var(idx::PHASE))?;
        let e = Tensor::cat(&[a.sin()?, a.cos()?], 1)?;
        let u = act.apply(&self.linear(&e, idx::T0_W)?)?;
        self.linear(&u, idx::T2_W)
    }
}

impl Mlp {
    /// The forward pass with forward-mode Jacobian-vector products, all as differentiable
    /// candle ops (candle has no second-order gradients, so the CNF's divergence is built
    /// this way and then differentiated once by candle's autograd). For each tangent `u_k`
    /// returns `J u_k` with `J = ∂net(x, t)/∂x`: the tangent follows the layers,
    /// `u̇ ← act'(a) ⊙ (u̇ Wᵀ)` at each hidden layer with pre-activation `a` (the time
    /// features do not depend on `x`), and `u̇ Wᵀ` at the output.
    /// Shapes: `x` [B, d], each tangent [B, d] → (`y` [B, d], each `J u_k` [B, d]).
    pub fn forward_jvp(
        &self,
        x: &Tensor,
        t: f64,
        tangents: &[Tensor],
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let act = self.cfg.activation;
        let ht = self.time_embedding(t)?;
        let w_in = self.var(idx::IN_W).t()?;
        let pre = self.linear(x, idx::IN_W)?.broadcast_add(&ht)?;
        let (mut h, mut dh) = act.apply_with_derivative(&pre)?;
        let mut tan: Vec<Tensor> = tangents
            .iter()
            .map(|u| Ok((u.matmul(&w_in)? * &dh)?))
            .collect::<Result<_>>()?;
        for l in 0..self.cfg.depth {
            let w = self.var(idx::hidden_w(l)).t()?;
            let pre = self.linear(&h, idx::hidden_w(l))?;
            (h, dh) = act.apply_with_derivative(&pre)?;
            for u in tan.iter_mut() {
                *u = (u.matmul(&w)? * &dh)?;
            }
        }
        let w_out = self.var(idx::out_w(self.cfg.depth)).t()?;
        let y = self.linear(&h, idx::out_w(self.cfg.depth))?;
        let tan = tan
            .iter()
            .map(|u| Ok(u.matmul(&w_out)?))
            .collect::<Result<_>>()?;
        Ok((y, tan))
    }
}

impl TimeNet for Mlp {
    fn dim(&self) -> usize {
        self.dim
    }

    fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    fn buffers(&self) -> &[(String, Var)] {
        &self.buffers
    }

    fn forward(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        let act = self.cfg.activation;
        let ht = self.time_embedding(t)?;
        let mut h = act.apply(&self.linear(x, idx::IN_W)?.broadcast_add(&ht)?)?;
        for l in 0..self.cfg.depth {
            h = act.apply(&self.linear(&h, idx::hidden_w(l))?)?;
        }
        self.linear(&h, idx::out_w(self.cfg.depth))
    }

    fn as_mlp(&self) -> Option<&Mlp> {
        Some(self)
    }

    fn engine(&self) -> Result<Box<dyn Engine + '_>> {
        Ok(match self.dtype {
            DType::F32 => Box::new(MlpEngine::<f32>::new(self)?),
            _ => Box::new(MlpEngine::<f64>::new(self)?),
        })
    }
}

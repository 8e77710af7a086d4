//! DDPM-style U-Net (Ho et al. 2020) over images stored as rows `[B, C·H·W]`, the paper's
//! drift and score networks for images.
//!
//! `temb = Linear(4ch, 4ch)(SiLU(Linear(ch, 4ch)(sinusoid(time_scale · t))))`; a 3×3 input
//! conv; per level `blocks` ResBlocks (each followed by self-attention at the levels in
//! `attn`) and a stride-2 3×3 conv down (not after the last level); a middle ResBlock,
//! attention, ResBlock; the up path mirrors it with `blocks + 1` ResBlocks per level, each
//! taking the matching down-path tensor concatenated to its input, and ×2 nearest-neighbour
//! upsampling + 3×3 conv; out: GroupNorm, SiLU, 3×3 conv to `C` channels. See [`plan`] for the
//! blocks. Parameters start as PyTorch's defaults (uniform `±1/√fan_in`), except that the
//! last conv of every ResBlock, the attention projections and the output conv start at zero,
//! as in DDPM, so that a fresh net outputs 0.
//!
//! Two implementations: [`TimeNet::forward`] from candle ops (the reference, differentiable by
//! autograd), and the CPU [`UNetEngine`] (im2col + GEMM, hand-written backward).

mod attn;
mod config;
mod conv;
mod dropout;
mod engine;
mod flops;
mod forward;
mod norm;
mod plan;

pub use config::{UNetConfig, DEFAULT_TIME_SCALE};
pub use engine::{UNetEngine, UNetScratch, UNetTape};
pub use flops::{unet_forward_flops, unet_gemms, unet_pullback_flops, UNetGemms};

use super::{Engine, TimeNet};
use crate::rng::Rng;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use plan::{Init, Plan};
use std::sync::Mutex;

/// A DDPM-style U-Net (see the module docs).
pub struct UNet {
    cfg: UNetConfig,
    plan: Plan,
    dtype: DType,
    vars: Vec<(String, Var)>,
    /// Dropout seed of the current training iteration; `None` = evaluation (no dropout).
    seed: Mutex<Option<u64>>,
}

impl UNet {
    /// A freshly initialised net on `dev` (see the module docs), weights drawn from `rng` in
    /// [`TimeNet::vars`] order.
    pub fn new(cfg: &UNetConfig, dtype: DType, dev: &Device, rng: &mut Rng) -> Result<Self> {
        cfg.validate()?;
        if !matches!(dtype, DType::F32 | DType::F64) {
            return Err(Error::config(format!(
                "dtype {dtype:?} not supported (f32 or f64)"
            )));
        }
        let plan = Plan::new(cfg);
        let mut vars = Vec::with_capacity(plan.params.len());
        for p in &plan.params {
            let n: usize = p.shape.iter().product();
            let v: Vec<f64> = match p.init {
                Init::Uniform { fan_in } => {
                    let bound = 1.0 / (fan_in as f64).sqrt();
                    (0..n)
                        .map(|_| (2.0 * rng.uniform() - 1.0) * bound)
                        .collect()
                }
                Init::Zeros => vec![0.0; n],
                Init::Ones => vec![1.0; n],
            };
            let t = Tensor::from_vec(v, p.shape.as_slice(), dev)?.to_dtype(dtype)?;
            vars.push((p.name.clone(), Var::from_tensor(&t)?));
        }
        Ok(UNet {
            cfg: cfg.clone(),
            plan,
            dtype,
            vars,
            seed: Mutex::new(None),
        })
    }

    /// The architecture.
    pub fn config(&self) -> &UNetConfig {
        &self.cfg
    }

    /// Element type of the weights.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The dropout seed set by [`TimeNet::set_dropout_seed`].
    pub fn dropout_seed(&self) -> Option<u64> {
        *self.seed.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn plan(&self) -> &Plan {
        &self.plan
    }

    fn var(&self, i: usize) -> &Tensor {
        self.vars[i].1.as_tensor()
    }

    /// Checks that `x` is `[B, C·H·W]` of the net's dtype; returns `B`.
    fn check_input(&self, x: &Tensor) -> Result<usize> {
        let d = self.cfg.dim();
        match *x.dims() {
            [_, n] if n == d => {}
            _ => {
                return Err(Error::data(format!(
                    "U-Net input has shape {:?}, expected [B, {d}] (C·H·W = {}·{}·{})",
                    x.dims(),
                    self.cfg.channels,
                    self.cfg.height,
                    self.cfg.width
                )))
            }
        }
        if x.dtype() != self.dtype {
            return Err(Error::data(format!(
                "U-Net input is {:?}, the net is {:?}",
                x.dtype(),
                self.dtype
            )));
        }
        Ok(x.dim(0)?)
    }
}

/// DDPM's sinusoidal embedding of `s` (computed in f64): `[sin(s·f_i), cos(s·f_i)]` for
/// `f_i = 10000^{−i/(dim/2 − 1)}`, `i < dim/2`. Shapes: → `[dim]` (`dim` even, ≥ 4).
pub(crate) fn sinusoid(s: f64, dim: usize) -> Vec<f64> {
    let half = dim / 2;
    let step = 10_000f64.ln() / (half - 1) as f64;
    let args: Vec<f64> = (0..half).map(|i| s * (-step * i as f64).exp()).collect();
    args.iter()
        .map(|a| a.sin())
        .chain(args.iter().map(|a| a.cos()))
        .collect()
}

impl TimeNet for UNet {
    fn dim(&self) -> usize {
        self.cfg.dim()
    }

    fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    fn forward(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        self.forward_candle(x, t)
    }

    fn engine(&self) -> Result<Box<dyn Engine + '_>> {
        Ok(match self.dtype {
            DType::F32 => Box::new(UNetEngine::<f32>::new(self)?),
            _ => Box::new(UNetEngine::<f64>::new(self)?),
        })
    }

    fn set_dropout_seed(&self, seed: Option<u64>) {
        *self.seed.lock().unwrap_or_else(|e| e.into_inner()) = seed;
    }
}

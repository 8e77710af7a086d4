//! Baselines on the same networks, samplers and likelihood code as DiffFlow (paper 3.4, 4.1):
//!
//! - [`ddpm`]: the VP SDE with its drift frozen (`f = −β(t) x / 2`), trained either by
//!   DiffFlow's own trajectory loss ("DDPM (L)", through [`crate::train::Trainer`]) or by the
//!   ε-prediction loss on the closed-form marginals ("DDPM (L_s)", [`ddpm::EpsTrainer`]);
//! - [`cnf`]: an FFJORD-style continuous normalizing flow `dx = v(x, t) dt` trained by maximum
//!   likelihood through a fixed-step RK4 solver ([`cnf::CnfTrainer`]).
//!
//! Each baseline is a [`DiffFlow`] (drift, score, g), so sampling ([`crate::sample`]) and the
//! probability-flow likelihood ([`crate::likelihood`]) apply unchanged.

pub mod cnf;
pub mod ddpm;

use crate::config::{ModelConfig, ModelKind, TrainConfig, Weights};
use crate::flow::DiffFlow;
use crate::nn::{Mlp, TimeNet};
use crate::optim::{clip_global_norm, step_decay, Adam, Ema};
use crate::rng::Rng;
use crate::{Error, Result};
use candle_core::{Device, Tensor, Var};

/// Drift and score of `cfg.kind` for dimension `dim`, initialised from `rng`:
/// DiffFlow = two MLPs; DDPM = [`ddpm::VpDrift`] and an [`ddpm::EpsScore`] MLP; CNF = the
/// velocity MLP and [`cnf::ZeroField`].
pub fn build(cfg: &ModelConfig, dim: usize, rng: &mut Rng) -> Result<DiffFlow> {
    let dtype = cfg.precision.dtype();
    let (drift, score): (Box<dyn TimeNet>, Box<dyn TimeNet>) = match cfg.kind {
        ModelKind::DiffFlow => (
            Box::new(Mlp::new(dim, &cfg.net, dtype, rng)?),
            Box::new(Mlp::new(dim, &cfg.net, dtype, rng)?),
        ),
        ModelKind::Ddpm => {
            let schedule = ddpm::VpSchedule::from_diffusion(&cfg.g)?;
            (
                Box::new(ddpm::VpDrift::new(dim, schedule)),
                Box::new(ddpm::EpsScore::new(
                    Box::new(Mlp::new(dim, &cfg.net, dtype, rng)?),
                    schedule,
                )),
            )
        }
        ModelKind::Cnf => (
            Box::new(Mlp::new(dim, &cfg.net, dtype, rng)?),
            Box::new(cnf::ZeroField::new(dim)),
        ),
    };
    Ok(DiffFlow {
        drift,
        score,
        diffusion: cfg.g,
    })
}

/// Copies the weights of `src` into `dst` (same architecture): buffers as they are, the
/// parameters from `ema`'s shadow when given, else the live ones.
pub fn copy_weights(dst: &dyn TimeNet, src: &dyn TimeNet, ema: Option<&Ema>) -> Result<()> {
    if dst.vars().len() != src.vars().len() || dst.buffers().len() != src.buffers().len() {
        return Err(Error::config(
            "copy_weights: the nets differ in architecture",
        ));
    }
    for ((_, b), (_, bsrc)) in dst.buffers().iter().zip(src.buffers()) {
        b.set(bsrc.as_tensor())?;
    }
    for (i, ((_, v), (_, vsrc))) in dst.vars().iter().zip(src.vars()).enumerate() {
        match ema {
            Some(e) => v.set(&e.shadow[i])?,
            None => v.set(vsrc.as_tensor())?,
        }
    }
    Ok(())
}

/// A fresh copy of `flow` (built from `cfg`) with live or EMA weights (`ema` = the EMAs of
/// drift and score), for sampling and evaluation while training goes on.
pub fn snapshot(
    cfg: &ModelConfig,
    flow: &DiffFlow,
    ema: [&Ema; 2],
    weights: Weights,
) -> Result<DiffFlow> {
    let copy = build(cfg, flow.dim(), &mut Rng::new(0))?;
    let use_ema = weights == Weights::Ema;
    copy_weights(
        copy.drift.as_ref(),
        flow.drift.as_ref(),
        use_ema.then_some(ema[0]),
    )?;
    copy_weights(
        copy.score.as_ref(),
        flow.score.as_ref(),
        use_ema.then_some(ema[1]),
    )?;
    Ok(copy)
}

/// Adam, global-norm clipping, the step learning-rate decay and the EMA for the parameters
/// of one net, with the settings of a [`TrainConfig`] (the baselines' optimiser; the same
/// rules as [`crate::train::Trainer`]).
pub struct NetOptimizer {
    /// Adam state.
    pub adam: Adam,
    /// EMA of the weights.
    pub ema: Ema,
    /// Base learning rate.
    pub lr: f64,
    /// Learning-rate factor applied every `every` iterations.
    pub decay: f64,
    /// Period of the decay (0: never).
    pub every: usize,
    /// Global gradient-norm clip (0: off).
    pub clip: f64,
}

impl NetOptimizer {
    /// For the parameters `vars` with base learning rate `lr`.
    pub fn new(vars: &[(String, Var)], t: &TrainConfig, lr: f64) -> Result<Self> {
        Ok(NetOptimizer {
            adam: Adam::new(vars, t.adam)?,
            ema: Ema::new(vars, t.ema_decay, t.ema_start)?,
            lr,
            decay: t.lr_decay,
            every: t.lr_decay_every,
            clip: t.clip,
        })
    }

    /// One update at iteration `iter` (0-based). Returns the gradient norm before clipping
    /// and the learning rate used. Errors on a non-finite gradient (`step` = `iter + 1`).
    pub fn update(
        &mut self,
        vars: &[(String, Var)],
        mut grads: Vec<Tensor>,
        iter: usize,
    ) -> Result<(f64, f64)> {
        let max_norm = if self.clip > 0.0 {
            self.clip
        } else {
            f64::INFINITY
        };
        let norm = clip_global_norm(&mut [&mut grads], max_norm)?;
        if !norm.is_finite() {
            return Err(Error::NonFinite {
                step: iter + 1,
                what: "gradient norm".into(),
            });
        }
        let lr = step_decay(self.lr, self.decay, self.every, iter);
        self.adam.update(vars, &grads, lr)?;
        self.ema.update(vars)?;
        Ok((norm, lr))
    }
}

/// `b` training rows drawn with replacement (standardised; with fresh dequantisation noise
/// where the data have it, as for DiffFlow: [`TrainData::draw_batch`]), as a tensor of
/// `dtype`. Shapes: → [b, d].
pub(crate) fn draw_batch(
    data: &crate::train::TrainData,
    b: usize,
    dtype: candle_core::DType,
    rng: &mut Rng,
) -> Result<Tensor> {
    if data.is_empty() {
        return Err(Error::data("no training points"));
    }
    let x0 = data.draw_batch(b, rng);
    Ok(Tensor::from_vec(x0, (b, data.dim), &Device::Cpu)?.to_dtype(dtype)?)
}

/// Element-wise sum of per-piece gradient lists, in piece order.
pub(crate) fn sum_grads(parts: Vec<Vec<Tensor>>) -> Result<Vec<Tensor>> {
    let mut it = parts.into_iter();
    let mut total = it
        .next()
        .ok_or_else(|| Error::config("no gradient pieces"))?;
    for p in it {
        for (a, b) in total.iter_mut().zip(p) {
            *a = (&*a + b)?;
        }
    }
    Ok(total)
}

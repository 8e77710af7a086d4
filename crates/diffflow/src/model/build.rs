//! The networks of each model kind, freshly initialised, and copies of their weights.

use crate::baselines::{cnf, ddpm};
use crate::config::{ModelConfig, ModelKind};
use crate::flow::DiffFlow;
use crate::nn::{Mlp, TimeNet, UNet};
use crate::optim::Ema;
use crate::rng::Rng;
use crate::{Error, Result};

const CPU: candle_core::Device = candle_core::Device::Cpu;

/// Drift and score of `cfg.kind` for dimension `dim`, initialised from `rng`, each net an
/// MLP, or a U-Net when `cfg.unet` is given: DiffFlow = two nets (drift first); DDPM =
/// [`ddpm::VpDrift`] and an [`ddpm::EpsScore`] net; CNF = the velocity MLP and
/// [`cnf::ZeroField`] (no U-Net: refused).
pub fn build(cfg: &ModelConfig, dim: usize, rng: &mut Rng) -> Result<DiffFlow> {
    let dtype = cfg.precision.dtype();
    let net = |rng: &mut Rng| -> Result<Box<dyn TimeNet>> {
        match &cfg.unet {
            None => Ok(Box::new(Mlp::new(dim, &cfg.net, dtype, rng)?)),
            Some(u) if u.dim() != dim => Err(Error::config(format!(
                "model.unet is for images of {} pixels, the data have dimension {dim}",
                u.dim()
            ))),
            // On the CPU, where `Mlp::new` builds its nets (the fused engines are CPU code).
            Some(u) => Ok(Box::new(UNet::new(u, dtype, &CPU, rng)?)),
        }
    };
    let (drift, score): (Box<dyn TimeNet>, Box<dyn TimeNet>) = match cfg.kind {
        ModelKind::DiffFlow => (net(rng)?, net(rng)?),
        ModelKind::DdpmL | ModelKind::DdpmLs => {
            let schedule = ddpm::VpSchedule::from_diffusion(&cfg.g)?;
            (
                Box::new(ddpm::VpDrift::new(dim, schedule)),
                Box::new(ddpm::EpsScore::new(net(rng)?, schedule)),
            )
        }
        ModelKind::Cnf if cfg.unet.is_some() => {
            return Err(Error::config(
                "a CNF on U-Nets is not supported (use diffflow or ddpm-ls on images)",
            ))
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

/// A fresh copy of `flow` (built from `cfg`) with the live weights, or the EMA weights when
/// `ema` (the EMAs of drift and score) is given: for sampling and evaluation while training
/// goes on.
pub fn snapshot(cfg: &ModelConfig, flow: &DiffFlow, ema: Option<[&Ema; 2]>) -> Result<DiffFlow> {
    let copy = build(cfg, flow.dim(), &mut Rng::new(0))?;
    copy_weights(copy.drift.as_ref(), flow.drift.as_ref(), ema.map(|e| e[0]))?;
    copy_weights(copy.score.as_ref(), flow.score.as_ref(), ema.map(|e| e[1]))?;
    Ok(copy)
}

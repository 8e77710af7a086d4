//! The loss each model kind is trained by, and its gradient on one batch:
//!
//! - DiffFlow and DDPM (L): the trajectory loss (15), by the stochastic adjoint (Algorithm 2)
//!   or naive backprop, on a fixed or flexible grid with the progressive N;
//! - DDPM (L_s): the ε-prediction loss on the closed-form VP marginals, the batch split into
//!   time groups;
//! - CNF: maximum likelihood through RK4 on the fixed grid, with the exact or Hutchinson
//!   divergence.
//!
//! Every draw (grid, batch, noises, times, probes) comes from the trainer's generator in a
//! fixed order, so a run is a deterministic function of its seed. Nets with dropout (the
//! U-Net) drop units only while a gradient is computed, with masks seeded by the run's seed
//! and the iteration ([`dropout_seeds`]; the generator is not drawn from, so a net without
//! dropout trains to the same bytes as before).

use crate::adjoint::{gradient, Gradient, LossParts};
use crate::baselines::cnf::{cnf_gradient, rademacher, Trace};
use crate::baselines::ddpm::{eps_loss_gradient, group_times, VpSchedule};
use crate::config::{ModelKind, RunConfig};
use crate::data::TrainData;
use crate::flow::{DiffFlow, Steps};
use crate::nn::TimeNet;
use crate::rng::Rng;
use crate::sde::{fixed_grid, flexible_grid, GridKind};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};

/// The training loss of a model kind.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Objective {
    /// The trajectory loss (15): DiffFlow, DDPM (L).
    Trajectory,
    /// The ε loss: DDPM (L_s).
    Eps { schedule: VpSchedule, groups: usize },
    /// The NLL through RK4: the CNF.
    Likelihood { trace: Trace },
}

impl Objective {
    /// The objective of `cfg.model.kind`.
    pub fn of(cfg: &RunConfig) -> Result<Self> {
        Ok(match cfg.model.kind {
            ModelKind::DiffFlow | ModelKind::DdpmL => Objective::Trajectory,
            ModelKind::DdpmLs => Objective::Eps {
                schedule: VpSchedule::from_diffusion(&cfg.model.g)?,
                groups: cfg.train.eps_groups,
            },
            ModelKind::Cnf => Objective::Likelihood {
                trace: cfg.train.cnf_trace,
            },
        })
    }

    /// Whether the loss is the negative ELBO with its prior and path parts.
    pub fn has_parts(&self) -> bool {
        matches!(self, Objective::Trajectory)
    }

    /// Draws one batch for iteration `step` (0-based) from `rng` and returns the batch-mean
    /// loss with its gradient, and the number of time steps N used (0 for the ε loss).
    pub fn gradient(
        &self,
        cfg: &RunConfig,
        flow: &DiffFlow,
        data: &TrainData,
        step: usize,
        rng: &mut Rng,
    ) -> Result<(Gradient, usize)> {
        let t = &cfg.train;
        let (d, b) = (data.dim, t.batch);
        let (dtype, device) = (flow.dtype(), flow.device());
        if data.is_empty() {
            return Err(Error::data("no training points"));
        }
        let [drift_seed, score_seed] = dropout_seeds(t.seed, step);
        let _drift = Dropout::on(flow.drift.as_ref(), drift_seed);
        let _score = Dropout::on(flow.score.as_ref(), score_seed);
        let batch = |rng: &mut Rng| -> Result<Tensor> {
            let x0 = data.draw_batch(b, rng);
            Ok(Tensor::from_vec(x0, (b, d), &device)?.to_dtype(dtype)?)
        };
        match *self {
            Objective::Trajectory => {
                let n = t.steps.at(step);
                let spec = &cfg.model.grid;
                let grid = match t.grid {
                    GridKind::Fixed => fixed_grid(spec, n),
                    GridKind::Flexible => flexible_grid(spec, n, rng),
                };
                let steps = Steps::new(grid, &flow.diffusion);
                let x0 = batch(rng)?;
                let noise = normals(n * b * d, &[n, b, d], dtype, &device, rng)?;
                let g = gradient(flow, &x0, &steps, &noise, t.grad, t.chunks, t.threads)?;
                Ok((g, n))
            }
            Objective::Eps { schedule, groups } => {
                let x0 = batch(rng)?;
                let grid = cfg.model.grid;
                let times = group_times(groups, grid.t_min, grid.t_max, rng);
                let eps = Tensor::from_vec(rng.normals(b * d), (b, d), &device)?.to_dtype(dtype)?;
                let (loss, grads) = eps_loss_gradient(
                    flow.score.as_ref(),
                    &schedule,
                    &x0,
                    &eps,
                    &times,
                    t.threads,
                )?;
                Ok((whole_loss(loss, Vec::new(), grads), 0))
            }
            Objective::Likelihood { trace } => {
                let net = flow.drift.as_mlp().ok_or_else(|| {
                    Error::config("the CNF's maximum-likelihood training needs an MLP velocity")
                })?;
                let n = t.steps.at(step);
                let ts = fixed_grid(&cfg.model.grid, n);
                let x0 = batch(rng)?;
                let probe = match trace {
                    Trace::Exact => None,
                    Trace::Hutchinson => Some(rademacher(b, d, dtype, &device, rng)?),
                };
                let (loss, grads) =
                    cnf_gradient(net, &x0, &ts, probe.as_ref(), t.chunks, t.threads)?;
                Ok((whole_loss(loss, grads, Vec::new()), n))
            }
        }
    }
}

/// The dropout seeds of the drift and score nets at iteration `step` (0-based) of a run with
/// `seed`: a function of both alone, so a resumed run drops the same units.
pub(crate) fn dropout_seeds(seed: u64, step: usize) -> [u64; 2] {
    const DROPOUT_STREAMS: u64 = 1 << 32;
    let mut rng = Rng::substream(seed, DROPOUT_STREAMS + step as u64);
    [rng.next_u64(), rng.next_u64()]
}

/// Training mode of one net for the lifetime of the guard: its dropout seed set, cleared
/// (evaluation mode) when the guard drops, on every return path.
struct Dropout<'a>(&'a dyn TimeNet);

impl<'a> Dropout<'a> {
    fn on(net: &'a dyn TimeNet, seed: u64) -> Self {
        net.set_dropout_seed(Some(seed));
        Dropout(net)
    }
}

impl Drop for Dropout<'_> {
    fn drop(&mut self) {
        self.0.set_dropout_seed(None);
    }
}

/// A loss without the negative ELBO's parts (both reported as zero).
fn whole_loss(loss: f64, drift: Vec<Tensor>, score: Vec<Tensor>) -> Gradient {
    Gradient {
        loss: LossParts {
            loss,
            prior: 0.0,
            path: 0.0,
        },
        drift,
        score,
    }
}

/// Standard normal noise of `shape` in the model's precision: f32 values are the f64 draws
/// rounded (drawn straight into f32, without an f64 copy of `[N, B, d]`).
fn normals(
    count: usize,
    shape: &[usize],
    dtype: DType,
    device: &Device,
    rng: &mut Rng,
) -> Result<Tensor> {
    Ok(match dtype {
        DType::F32 => {
            let v: Vec<f32> = (0..count).map(|_| rng.normal() as f32).collect();
            Tensor::from_vec(v, shape, device)?
        }
        _ => Tensor::from_vec(rng.normals(count), shape, device)?.to_dtype(dtype)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;
    use crate::model::build;

    /// Dropout acts in a gradient only: the loss with masks differs from the loss without,
    /// repeats for the same (seed, iteration), changes with the iteration, and the nets are
    /// back in evaluation mode (no masks) afterwards.
    #[test]
    fn dropout_is_on_during_a_gradient_only_and_repeats_per_iteration() {
        let mut cfg = RunConfig::preset(Preset::DigitsImages, "digits-images");
        cfg.train.threads = 1;
        let data = cfg.training_data().unwrap();
        // A fresh U-Net's output conv is zero (so is its output, masks or not): every weight
        // is moved by the same small noise in both flows.
        let flow_with = |p: f64| {
            let mut m = cfg.model.clone();
            m.unet.as_mut().unwrap().dropout = p;
            let flow = build(&m, data.dim, &mut Rng::new(3)).unwrap();
            let mut rng = Rng::new(5);
            for (_, v) in flow.drift.vars().iter().chain(flow.score.vars()) {
                let z = Tensor::from_vec(rng.normals(v.elem_count()), v.dims(), &Device::Cpu)
                    .unwrap()
                    .to_dtype(v.dtype())
                    .unwrap();
                v.set(&(v.as_tensor() + z.affine(0.05, 0.0).unwrap()).unwrap())
                    .unwrap();
            }
            flow
        };
        let loss = |flow: &DiffFlow, step: usize| {
            let obj = Objective::of(&cfg).unwrap();
            let (g, _) = obj
                .gradient(&cfg, flow, &data, step, &mut Rng::new(4))
                .unwrap();
            g.loss.loss
        };
        let (plain, dropped) = (flow_with(0.0), flow_with(0.3));
        let x = Tensor::from_vec(
            data.train[..2 * data.dim].to_vec(),
            (2, data.dim),
            &Device::Cpu,
        )
        .unwrap();
        let out = |f: &DiffFlow| -> Vec<Vec<f64>> {
            let y = f
                .drift
                .forward(&x.to_dtype(f.dtype()).unwrap(), 0.01)
                .unwrap();
            y.to_dtype(DType::F64).unwrap().to_vec2().unwrap()
        };
        assert_eq!(out(&plain), out(&dropped), "no masks outside training");
        let a = loss(&dropped, 0);
        assert_eq!(a, loss(&dropped, 0));
        assert_ne!(a, loss(&plain, 0));
        assert_ne!(a, loss(&dropped, 1));
        assert_eq!(
            out(&plain),
            out(&dropped),
            "masks cleared after the gradient"
        );
        assert_ne!(dropout_seeds(0, 0), dropout_seeds(0, 1));
        assert_ne!(dropout_seeds(0, 0), dropout_seeds(1, 0));
    }
}

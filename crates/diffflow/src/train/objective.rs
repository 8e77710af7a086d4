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
//! fixed order, so a run is a deterministic function of its seed.

use crate::adjoint::{gradient, Gradient, LossParts};
use crate::baselines::cnf::{cnf_gradient, rademacher, Trace};
use crate::baselines::ddpm::{eps_loss_gradient, group_times, VpSchedule};
use crate::config::{ModelKind, RunConfig};
use crate::data::TrainData;
use crate::flow::{DiffFlow, Steps};
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

//! Model selection during training: a validation metric every K iterations on held-out
//! points, the best checkpoint (`best.safetensors`) and early stopping (patience).
//!
//! The metric is measured with the sampling weights (`sample.weights`) in standardised
//! units, where lower is better: the negative ELBO (13) on the fixed grid of the sampling N
//! (cheap: one forward trajectory per point by default) or the probability-flow NLL
//! (Dormand–Prince, exact divergence; costly in high dimension). Its noise (ELBO trajectories)
//! comes from the same seed at every validation, so that successive values differ by the
//! model only.

use crate::flow::{DiffFlow, Steps};
use crate::likelihood::{neg_elbo_mc, pf_ode_nll, summarize, ElboOptions, NllOptions, Summary};
use crate::rng::{Rng, Stream};
use crate::sde::{fixed_grid, GridSpec};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// The validation metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ValMetric {
    /// Negative ELBO (13), Monte Carlo over forward trajectories.
    #[default]
    Elbo,
    /// Probability-flow NLL.
    Nll,
}

impl std::str::FromStr for ValMetric {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "elbo" => Ok(ValMetric::Elbo),
            "nll" => Ok(ValMetric::Nll),
            _ => Err(Error::config(format!(
                "unknown validation metric '{s}' (expected elbo or nll)"
            ))),
        }
    }
}

impl std::fmt::Display for ValMetric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ValMetric::Elbo => "negative ELBO",
            ValMetric::Nll => "NLL",
        })
    }
}

/// How and when to validate (`[train.validation]` in `config.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationConfig {
    /// Iterations between validations (0: off); the last iteration is always validated.
    pub every: usize,
    /// The metric.
    pub metric: ValMetric,
    /// Validation points used: the first `points` (0: all).
    pub points: usize,
    /// Forward trajectories per point of the ELBO.
    pub trajectories: usize,
    /// Validations without improvement after which training stops (0: never).
    pub patience: usize,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig {
            every: 0,
            metric: ValMetric::Elbo,
            points: 0,
            trajectories: 1,
            patience: 0,
        }
    }
}

impl ValidationConfig {
    /// Whether this is the default (off): then it is left out of `config.toml`.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Whether validation runs at all.
    pub fn enabled(&self) -> bool {
        self.every > 0
    }

    /// Whether iteration `step` (1-based) of `iters` is validated.
    pub fn due(&self, step: usize, iters: usize) -> bool {
        self.enabled() && (step % self.every == 0 || step == iters)
    }

    /// Checks the values; errors name the field.
    pub fn validate(&self) -> Result<()> {
        if self.trajectories == 0 || self.trajectories > 10_000 {
            return Err(Error::config(format!(
                "train.validation.trajectories must be in 1..=10000, got {}",
                self.trajectories
            )));
        }
        Ok(())
    }
}

/// Where model selection stands (saved in every checkpoint, for exact resume).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValState {
    /// Best (lowest) metric so far, standardised units.
    pub best: Option<f64>,
    /// The iteration of the best value.
    pub best_step: usize,
    /// Validations since the best one.
    pub since_best: usize,
    /// Training stopped early (patience exhausted): the run is complete.
    pub stopped: bool,
}

impl ValState {
    /// Whether nothing was validated yet (then it is left out of checkpoints).
    pub fn is_initial(&self) -> bool {
        *self == Self::default()
    }

    /// Records `value` measured at `step`; returns whether it is the best so far. Sets
    /// `stopped` when `patience` (> 0) validations passed without improvement.
    pub fn update(&mut self, value: f64, step: usize, patience: usize) -> bool {
        let improved = self.best.is_none_or(|b| value < b);
        if improved {
            self.best = Some(value);
            self.best_step = step;
            self.since_best = 0;
        } else {
            self.since_best += 1;
            if patience > 0 && self.since_best >= patience {
                self.stopped = true;
            }
        }
        improved
    }

    /// Checks a stored state.
    pub fn validate(&self, step: usize) -> Result<()> {
        if self.best.is_some_and(|b| !b.is_finite()) || self.best_step > step {
            return Err(Error::data(format!(
                "validation state {self:?} is inconsistent at step {step}"
            )));
        }
        Ok(())
    }
}

/// One validation, as a line of `metrics.jsonl` (nats per point; `val` in data units,
/// `val_standardised` in the model's units).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValRecord {
    /// Iterations completed.
    pub step: usize,
    /// `elbo` or `nll`.
    pub val_metric: ValMetric,
    /// Mean over the validation points, data units.
    pub val: f64,
    /// Its standard error over the points.
    pub val_stderr: f64,
    /// The mean in standardised units (what is compared).
    pub val_standardised: f64,
    /// Points evaluated.
    pub val_points: usize,
    /// Whether this is the best so far (then `best.safetensors` holds this model).
    pub val_best: bool,
    /// Iteration of the best so far.
    pub best_step: usize,
}

/// The validation metric `v.metric` of `flow` on `x` [n, d] (standardised units): the
/// negative ELBO on the fixed grid `grid` with `elbo_n` steps, or the probability-flow NLL
/// on `[grid.t_min, grid.t_max]`; noise from the seed's evaluation stream.
pub fn measure(
    flow: &DiffFlow,
    x: &[f64],
    v: &ValidationConfig,
    grid: &GridSpec,
    elbo_n: usize,
    seed: u64,
    threads: usize,
) -> Result<Summary> {
    let mut rng = Rng::stream(seed, Stream::Eval);
    let quiet = |_: usize| {};
    let values = match v.metric {
        ValMetric::Elbo => {
            let steps = Steps::new(fixed_grid(grid, elbo_n), &flow.diffusion);
            let opts = ElboOptions {
                trajectories: v.trajectories,
                chunk: 256,
                threads,
            };
            neg_elbo_mc(flow, x, &steps, &opts, &mut rng, &quiet)?
        }
        ValMetric::Nll => {
            let opts = NllOptions {
                threads,
                ..NllOptions::default()
            };
            pf_ode_nll(flow, x, &[grid.t_min, grid.t_max], &opts, &mut rng, &quiet)?.nll
        }
    };
    Ok(summarize(&values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_and_patience() {
        let mut s = ValState::default();
        assert!(s.update(3.0, 10, 2));
        assert!(s.update(2.0, 20, 2));
        assert!(!s.update(2.5, 30, 2));
        assert!(!s.stopped);
        // Equal is not better.
        assert!(!s.update(2.0, 40, 2));
        assert!(s.stopped);
        assert_eq!((s.best, s.best_step, s.since_best), (Some(2.0), 20, 2));
        // Patience 0 never stops.
        let mut s = ValState::default();
        s.update(1.0, 1, 0);
        for k in 2..50 {
            assert!(!s.update(5.0, k, 0));
        }
        assert!(!s.stopped);
        assert!(s.validate(49).is_ok());
        assert!(s.validate(0).is_err(), "best step after the current step");
    }

    #[test]
    fn due_includes_the_last_iteration() {
        let v = ValidationConfig {
            every: 10,
            ..Default::default()
        };
        let due: Vec<usize> = (1..=25).filter(|&s| v.due(s, 25)).collect();
        assert_eq!(due, vec![10, 20, 25]);
        assert!(!ValidationConfig::default().due(10, 10));
    }
}

//! Run configuration: what `diffflow train` reads from `--config FILE.toml`, builds from its
//! flags, and saves as `config.toml` beside every run.

use crate::adjoint::GradMethod;
use crate::nn::MlpConfig;
use crate::optim::AdamConfig;
use crate::sde::{Diffusion, GridKind, GridSpec, StepsSchedule};
use crate::{Error, Result};
use candle_core::DType;
use serde::{Deserialize, Serialize};

/// Floating-point precision of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit (default for training).
    #[default]
    F32,
    /// 64-bit (exact checks).
    F64,
}

impl Precision {
    /// The candle dtype.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F64 => DType::F64,
        }
    }
}

/// Which weights sampling uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Weights {
    /// Exponential moving average of the weights.
    #[default]
    Ema,
    /// The weights as last updated.
    Live,
}

impl std::str::FromStr for Weights {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ema" => Ok(Weights::Ema),
            "live" => Ok(Weights::Live),
            _ => Err(Error::config(format!(
                "unknown weights '{s}' (expected ema or live)"
            ))),
        }
    }
}

/// The data set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Built-in 2-D data set name.
    pub dataset: String,
    /// Noise level of the data set (its own default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<f64>,
    /// Size of the generated training pool.
    pub train_size: usize,
    /// Size of the held-out set.
    pub test_size: usize,
}

/// The model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Precision of weights and states.
    pub precision: Precision,
    /// Drift and score architecture (the same for both, separate weights).
    pub net: MlpConfig,
    /// Diffusion coefficient g(t).
    pub g: Diffusion,
    /// Time interval and grid exponent.
    pub grid: GridSpec,
}

/// The optimisation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Number of iterations.
    pub iters: usize,
    /// Batch size.
    pub batch: usize,
    /// Number of steps N, possibly progressive (`5,10@500,30@2000`).
    pub steps: StepsSchedule,
    /// Fixed (`L_β`) or flexible (`L̂_β`) grid.
    pub grid: GridKind,
    /// Adjoint or naive backprop.
    pub grad: GradMethod,
    /// Learning rate of both nets.
    pub lr: f64,
    /// Learning rate of the drift (overrides `lr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_drift: Option<f64>,
    /// Learning rate of the score (overrides `lr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_score: Option<f64>,
    /// Learning-rate factor applied every `lr_decay_every` iterations.
    pub lr_decay: f64,
    /// Period of the learning-rate decay (0: never).
    pub lr_decay_every: usize,
    /// Global gradient-norm clip (0: off).
    pub clip: f64,
    /// Adam's betas and eps.
    pub adam: AdamConfig,
    /// EMA decay of the weights.
    pub ema_decay: f64,
    /// Iterations before the EMA starts averaging.
    pub ema_start: u64,
    /// Seed of everything random.
    pub seed: u64,
    /// Worker threads for the gradient (results do not depend on it).
    pub threads: usize,
    /// Pieces the batch is split into (results depend on it, not on `threads`).
    pub chunks: usize,
    /// Iterations per line of `metrics.jsonl`.
    pub log_every: usize,
    /// Iterations between checkpoints (0: only at the end).
    pub checkpoint_every: usize,
}

/// Sampling defaults of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleConfig {
    /// Number of samples drawn at the end of training.
    pub n: usize,
    /// Number of sampling steps (the last N of training when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// λ of the sampler (16): 1 = backward SDE, 0 = probability-flow ODE.
    pub lambda: f64,
    /// EMA or live weights.
    pub weights: Weights,
}

/// Everything that defines a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Data.
    pub data: DataConfig,
    /// Model.
    pub model: ModelConfig,
    /// Training.
    pub train: TrainConfig,
    /// Sampling.
    pub sample: SampleConfig,
}

/// Named configurations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// Small and quick: a few minutes on two CPU cores.
    Quick,
    /// The authors' 2-D configuration (DESIGN.md section 1), exactly.
    Paper2d,
}

impl std::str::FromStr for Preset {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "quick" => Ok(Preset::Quick),
            "paper-2d" => Ok(Preset::Paper2d),
            _ => Err(Error::config(format!(
                "unknown preset '{s}' (expected quick or paper-2d)"
            ))),
        }
    }
}

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().min(2))
        .unwrap_or(1)
}

impl RunConfig {
    /// The configuration of a preset for `dataset`.
    pub fn preset(preset: Preset, dataset: &str) -> Self {
        match preset {
            Preset::Paper2d => RunConfig {
                data: DataConfig {
                    dataset: dataset.to_string(),
                    noise: None,
                    train_size: 500_000,
                    test_size: 10_000,
                },
                model: ModelConfig {
                    precision: Precision::F32,
                    net: MlpConfig::paper_2d(),
                    g: Diffusion::Constant { value: 0.2 },
                    grid: GridSpec {
                        t_min: 0.001,
                        t_max: 0.05,
                        beta: 0.9,
                    },
                },
                train: TrainConfig {
                    iters: 3000,
                    batch: 5000,
                    steps: StepsSchedule::constant(30),
                    grid: GridKind::Fixed,
                    grad: GradMethod::Adjoint,
                    lr: 1e-2,
                    lr_drift: None,
                    lr_score: None,
                    lr_decay: 0.95,
                    lr_decay_every: 200,
                    clip: 1.0,
                    adam: AdamConfig::default(),
                    ema_decay: 0.999,
                    ema_start: 10,
                    seed: 0,
                    threads: default_threads(),
                    chunks: 2,
                    log_every: 10,
                    checkpoint_every: 500,
                },
                sample: SampleConfig {
                    n: 10_000,
                    steps: None,
                    lambda: 1.0,
                    // The authors sample their 2-D models from the live weights.
                    weights: Weights::Live,
                },
            },
            Preset::Quick => {
                let mut c = RunConfig::preset(Preset::Paper2d, dataset);
                c.data.train_size = 100_000;
                c.model.net = MlpConfig::small();
                c.train.iters = 1500;
                c.train.batch = 1000;
                c.train.steps = StepsSchedule::parse("10,20@500").expect("valid schedule");
                c.train.grid = GridKind::Flexible;
                c.train.lr_decay_every = 150;
                c.train.checkpoint_every = 500;
                // Measured on rings (held-out negative ELBO after 1500 iterations, standardised
                // units): EMA 0.548 against live 0.696, so the quick preset samples from the EMA.
                c.sample.weights = Weights::Ema;
                c
            }
        }
    }

    /// Parses a TOML configuration (unknown keys are errors) and validates it.
    pub fn from_toml(text: &str) -> Result<Self> {
        let cfg: RunConfig =
            toml::from_str(text).map_err(|e| Error::config(e.message().to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::config(format!("cannot encode config: {e}")))
    }

    /// Checks every value; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let t = &self.train;
        let pos = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Error::config(format!("{name} must be > 0, got {v}")))
            }
        };
        let at_least_one = |name: &str, v: usize| {
            if v >= 1 {
                Ok(())
            } else {
                Err(Error::config(format!("{name} must be >= 1, got {v}")))
            }
        };
        at_least_one("train.iters", t.iters)?;
        at_least_one("train.batch", t.batch)?;
        at_least_one("train.threads", t.threads)?;
        at_least_one("train.chunks", t.chunks)?;
        at_least_one("train.log_every", t.log_every)?;
        at_least_one("data.train_size", self.data.train_size)?;
        at_least_one("sample.n", self.sample.n)?;
        if let Some(s) = self.sample.steps {
            at_least_one("sample.steps", s)?;
        }
        pos("train.lr", t.lr)?;
        if let Some(v) = t.lr_drift {
            pos("train.lr_drift", v)?;
        }
        if let Some(v) = t.lr_score {
            pos("train.lr_score", v)?;
        }
        pos("train.lr_decay", t.lr_decay)?;
        if !(t.clip.is_finite() && t.clip >= 0.0) {
            return Err(Error::config(format!(
                "train.clip must be >= 0 (0 = off), got {}",
                t.clip
            )));
        }
        if !(0.0..1.0).contains(&t.ema_decay) {
            return Err(Error::config(format!(
                "train.ema_decay must be in [0, 1), got {}",
                t.ema_decay
            )));
        }
        let a = &t.adam;
        if !((0.0..1.0).contains(&a.beta1) && (0.0..1.0).contains(&a.beta2) && a.eps > 0.0) {
            return Err(Error::config(format!(
                "train.adam needs betas in [0, 1) and eps > 0, got {a:?}"
            )));
        }
        if !(0.0..=1.0).contains(&self.sample.lambda) {
            return Err(Error::config(format!(
                "sample.lambda must be in [0, 1], got {}",
                self.sample.lambda
            )));
        }
        if let Some(noise) = self.data.noise {
            if !(noise.is_finite() && noise >= 0.0) {
                return Err(Error::config(format!(
                    "data.noise must be >= 0, got {noise}"
                )));
            }
        }
        self.model.grid.validate()?;
        self.model.g.validate(self.model.grid.t_max)?;
        self.model.net.validate()?;
        Ok(())
    }

    /// Learning rates of drift and score.
    pub fn learning_rates(&self) -> (f64, f64) {
        let t = &self.train;
        (t.lr_drift.unwrap_or(t.lr), t.lr_score.unwrap_or(t.lr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_round_trip_through_toml() {
        for p in [Preset::Quick, Preset::Paper2d] {
            let c = RunConfig::preset(p, "rings");
            c.validate().unwrap();
            let text = c.to_toml().unwrap();
            assert_eq!(RunConfig::from_toml(&text).unwrap(), c);
        }
    }

    #[test]
    fn bad_values_and_unknown_keys_are_named() {
        let c = RunConfig::preset(Preset::Quick, "rings");
        let mut bad = c.clone();
        bad.train.lr = -1.0;
        assert!(bad.validate().unwrap_err().to_string().contains("train.lr"));
        let mut bad = c.clone();
        bad.model.grid.beta = 0.0;
        assert!(bad.validate().unwrap_err().to_string().contains("beta"));
        let mut bad = c.clone();
        bad.train.batch = 0;
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("train.batch"));
        let text = c
            .to_toml()
            .unwrap()
            .replace("[train]", "[train]\nlearning_rate = 3");
        let err = RunConfig::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("learning_rate"), "{err}");
        let text = c
            .to_toml()
            .unwrap()
            .replace("steps = \"10,20@500\"", "steps = \"0\"");
        assert!(RunConfig::from_toml(&text).is_err());
    }
}

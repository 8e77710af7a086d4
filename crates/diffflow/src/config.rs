//! Run configuration: what `diffflow train` reads from `--config FILE.toml`, builds from its
//! flags, and saves as `config.toml` beside every run.

use crate::adjoint::GradMethod;
use crate::data::source::FileSource;
use crate::nn::MlpConfig;
use crate::optim::AdamConfig;
use crate::sde::{Diffusion, GridKind, GridSpec, StepsSchedule};
use crate::validation::ValidationConfig;
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

/// Which model the two networks make up (paper 3.4 and its baselines).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// DiffFlow: learned drift `f` and score `s` (two MLPs).
    #[default]
    DiffFlow,
    /// DDPM: the drift frozen to the VP SDE's `−β(t) x / 2` (no parameters) and one MLP
    /// `ε_θ` with score `s = −ε_θ / σ_t`; needs `g = vp`. Trained by the trajectory loss
    /// ("DDPM (L)", [`crate::train::Trainer`]) or the ε loss ("DDPM (L_s)",
    /// [`crate::baselines::ddpm::EpsTrainer`]).
    Ddpm,
    /// FFJORD-style CNF: drift = the velocity MLP `v`, score = 0, so the probability flow is
    /// `dx = v dt` whatever `g`; trained by maximum likelihood
    /// ([`crate::baselines::cnf::CnfTrainer`]).
    Cnf,
}

impl ModelKind {
    fn is_diffflow(&self) -> bool {
        *self == ModelKind::DiffFlow
    }
}

impl std::str::FromStr for ModelKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "diffflow" => Ok(ModelKind::DiffFlow),
            "ddpm" => Ok(ModelKind::Ddpm),
            "cnf" => Ok(ModelKind::Cnf),
            _ => Err(Error::config(format!(
                "unknown model kind '{s}' (expected diffflow, ddpm or cnf)"
            ))),
        }
    }
}

/// What training does when a NaN or infinity appears in the loss, the gradients or the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NanAction {
    /// Stop with [`Error::NonFinite`], keeping the last good checkpoint.
    #[default]
    Stop,
    /// Go back to the last good checkpoint and continue with a smaller learning rate.
    Restart,
}

impl std::str::FromStr for NanAction {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "stop" => Ok(NanAction::Stop),
            "restart" => Ok(NanAction::Restart),
            _ => Err(Error::config(format!(
                "unknown on-nan action '{s}' (expected stop or restart)"
            ))),
        }
    }
}

/// The divergence guard's policy.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnNan {
    /// Stop, or restart from the last checkpoint.
    pub action: NanAction,
    /// Factor applied to the learning rate at each restart, in (0, 1).
    pub lr_factor: f64,
    /// Restarts allowed in one run before training stops.
    pub max_restarts: usize,
}

impl Default for OnNan {
    fn default() -> Self {
        OnNan {
            action: NanAction::Stop,
            lr_factor: 0.5,
            max_restarts: 3,
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
    /// Size of the generated training pool (a data file: its number of training rows,
    /// recorded by `diffflow train`).
    pub train_size: usize,
    /// Size of the held-out set (a data file: its number of test rows, recorded).
    pub test_size: usize,
    /// A data file instead of the built-in set (`dataset` is then only the run's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSource>,
}

/// The model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// DiffFlow (default; absent from older files) or a baseline.
    #[serde(default, skip_serializing_if = "ModelKind::is_diffflow")]
    pub kind: ModelKind,
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
    /// What to do when a NaN or infinity appears.
    #[serde(default)]
    pub on_nan: OnNan,
    /// Validation, best checkpoint and early stopping (off by default).
    #[serde(default, skip_serializing_if = "ValidationConfig::is_default")]
    pub validation: ValidationConfig,
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

/// Largest data set / sample count a configuration may ask for.
pub const MAX_POINTS: usize = 100_000_000;
/// Largest batch.
pub const MAX_BATCH: usize = 1 << 20;
/// Largest number of steps N.
pub const MAX_STEPS: usize = 100_000;
/// Largest hidden width and number of Fourier frequencies.
pub const MAX_WIDTH: usize = 1 << 16;
/// Largest number of hidden layers.
pub const MAX_DEPTH: usize = 1024;

/// Named configurations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// Small and quick: a few minutes on two CPU cores.
    Quick,
    /// The authors' 2-D configuration (DESIGN.md section 1), exactly.
    Paper2d,
    /// Tabular data files: see [`RunConfig::preset`] and [`tabular_width`].
    Tabular,
}

impl std::str::FromStr for Preset {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "quick" => Ok(Preset::Quick),
            "paper-2d" => Ok(Preset::Paper2d),
            "tabular" => Ok(Preset::Tabular),
            _ => Err(Error::config(format!(
                "unknown preset '{s}' (expected quick, paper-2d or tabular)"
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
                    file: None,
                },
                model: ModelConfig {
                    kind: ModelKind::DiffFlow,
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
                    on_nan: OnNan::default(),
                    validation: ValidationConfig::default(),
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
            Preset::Tabular => tabular(RunConfig::preset(Preset::Quick, dataset)),
        }
    }

    /// Parses a TOML configuration (unknown keys are errors; the error gives the line) and
    /// validates it.
    pub fn from_toml(text: &str) -> Result<Self> {
        let cfg: RunConfig = toml::from_str(text).map_err(|e| {
            let msg = e.message().trim_end().replace('\n', " ");
            match e.span() {
                Some(span) => {
                    let before = &text.as_bytes()[..span.start.min(text.len())];
                    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
                    Error::config(format!("line {line}: {msg}"))
                }
                None => Error::config(msg),
            }
        })?;
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
        // Upper bounds: a typo or a hostile file must be an error, not an attempt to
        // allocate terabytes.
        let at_most = |name: &str, v: usize, max: usize| {
            if v <= max {
                Ok(())
            } else {
                Err(Error::config(format!("{name} must be <= {max}, got {v}")))
            }
        };
        at_most("data.train_size", self.data.train_size, MAX_POINTS)?;
        at_most("data.test_size", self.data.test_size, MAX_POINTS)?;
        at_most("train.batch", t.batch, MAX_BATCH)?;
        at_most("train.steps (largest N)", t.steps.max(), MAX_STEPS)?;
        at_most("train.threads", t.threads, 1024)?;
        at_most("train.chunks", t.chunks, MAX_BATCH)?;
        at_most("sample.n", self.sample.n, MAX_POINTS)?;
        at_most("sample.steps", self.sample.steps.unwrap_or(1), MAX_STEPS)?;
        at_most("model.net.width", self.model.net.width, MAX_WIDTH)?;
        at_most("model.net.fourier", self.model.net.fourier, MAX_WIDTH)?;
        at_most("model.net.depth", self.model.net.depth, MAX_DEPTH)?;
        let on_nan = &t.on_nan;
        if !(on_nan.lr_factor > 0.0 && on_nan.lr_factor < 1.0) {
            return Err(Error::config(format!(
                "train.on_nan.lr_factor must be in (0, 1), got {}",
                on_nan.lr_factor
            )));
        }
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
        if self.model.kind == ModelKind::Ddpm && !matches!(self.model.g, Diffusion::Vp { .. }) {
            return Err(Error::config(
                "model.kind = \"ddpm\" needs the VP diffusion (model.g.kind = \"vp\")",
            ));
        }
        self.model.net.validate()?;
        if let Some(f) = &self.data.file {
            f.validate()?;
        }
        t.validation.validate()?;
        Ok(())
    }

    /// Learning rates of drift and score.
    pub fn learning_rates(&self) -> (f64, f64) {
        let t = &self.train;
        (t.lr_drift.unwrap_or(t.lr), t.lr_score.unwrap_or(t.lr))
    }
}

/// The tabular preset, in the spirit of the paper's appendix for tabular data (section 4.2:
/// MLPs of fewer than 5 layers; the flexible grid with progressive N) and sized for two CPU
/// cores: nets with an input layer, 2 hidden layers and an output layer, width
/// [`tabular_width`]`(d)` (set once the data are read; 128 here), 32 Fourier frequencies;
/// batch 256; N = 5, then 10, then 20; Adam 2e-3 decayed ×0.9 every 300 iterations;
/// EMA 0.995; validation by the negative ELBO every 100 iterations, keeping the best.
fn tabular(mut c: RunConfig) -> RunConfig {
    c.model.net = MlpConfig {
        width: 128,
        depth: 2,
        fourier: 32,
        ..MlpConfig::small()
    };
    let t = &mut c.train;
    t.iters = 3000;
    t.batch = 256;
    t.steps = StepsSchedule::parse("5,10@1000,20@2000").expect("valid schedule");
    t.grid = GridKind::Flexible;
    t.lr = 2e-3;
    t.lr_decay = 0.9;
    t.lr_decay_every = 300;
    t.ema_decay = 0.995;
    t.checkpoint_every = 500;
    t.validation = ValidationConfig {
        every: 100,
        ..ValidationConfig::default()
    };
    c.sample.n = 2000;
    c.sample.weights = Weights::Ema;
    c
}

/// Hidden width of the tabular preset for data of dimension `d`: `4d` rounded up to a
/// multiple of 32, between 64 and 512 (d = 43 → 192, d = 61 → 256).
pub fn tabular_width(d: usize) -> usize {
    (4 * d).div_ceil(32).saturating_mul(32).clamp(64, 512)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_round_trip_through_toml() {
        for p in [Preset::Quick, Preset::Paper2d, Preset::Tabular] {
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

    #[test]
    fn hostile_config_files_are_clear_errors() {
        let good = RunConfig::preset(Preset::Quick, "rings").to_toml().unwrap();
        let line_of = |key: &str| 1 + good[..good.find(key).unwrap()].matches('\n').count();
        let cases: Vec<(String, String)> = vec![
            // Unknown key: named, with its line.
            (
                good.replace("[train]\n", "[train]\nmomentum = 0.9\n"),
                format!("line {}: unknown field `momentum`", line_of("[train]") + 1),
            ),
            (
                good.replace("[sample]", "[extra]\nx = 1\n\n[sample]"),
                "unknown field `extra`".into(),
            ),
            // Wrong types and syntax.
            (
                good.replace("batch = 1000", "batch = \"big\""),
                format!("line {}: invalid type", line_of("batch = 1000")),
            ),
            (
                good.replace("batch = 1000", "batch = -3"),
                "invalid value: integer `-3`".into(),
            ),
            (good.replace("batch = 1000", "batch = "), "line".into()),
            (good.replace("[train]", "[train"), "line".into()),
            ("".into(), "missing field `data`".into()),
            // Out-of-range values.
            (
                good.replace("lr = 0.01", "lr = nan"),
                "train.lr must be > 0, got NaN".into(),
            ),
            (
                good.replace("lr = 0.01", "lr = inf"),
                "train.lr must be > 0, got inf".into(),
            ),
            (
                good.replace("train_size = 100000", "train_size = 1000000000000000"),
                "data.train_size must be <= 100000000".into(),
            ),
            (
                good.replace("width = 96", "width = 4000000000"),
                "model.net.width must be <= 65536".into(),
            ),
            (
                good.replace("batch = 1000", "batch = 0"),
                "train.batch must be >= 1".into(),
            ),
            (
                good.replace("steps = \"10,20@500\"", "steps = \"1000000\""),
                "largest N) must be <= 100000".into(),
            ),
            (
                good.replace("ema_decay = 0.999", "ema_decay = 1.5"),
                "train.ema_decay must be in [0, 1)".into(),
            ),
            (
                good.replace("lambda = 1.0", "lambda = 2.0"),
                "sample.lambda must be in [0, 1]".into(),
            ),
            (
                good.replace("lr_factor = 0.5", "lr_factor = 1.5"),
                "train.on_nan.lr_factor must be in (0, 1)".into(),
            ),
            (
                good.replace("action = \"stop\"", "action = \"explode\""),
                "unknown variant `explode`".into(),
            ),
        ];
        for (text, expect) in cases {
            assert_ne!(text, good, "case {expect} did not change the file");
            let err = RunConfig::from_toml(&text).unwrap_err().to_string();
            println!("{err}");
            assert!(err.contains(&expect), "expected '{expect}' in: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
        // Configurations written before `on_nan` existed still load (it has a default).
        let old = good.replace(
            "[train.on_nan]\naction = \"stop\"\nlr_factor = 0.5\nmax_restarts = 3\n",
            "",
        );
        assert_ne!(old, good);
        assert_eq!(
            RunConfig::from_toml(&old).unwrap().train.on_nan,
            OnNan::default()
        );
    }
}

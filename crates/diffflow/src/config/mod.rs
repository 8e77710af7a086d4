//! Run configuration: what `diffflow train` reads from `--config FILE.toml`, builds from its
//! flags, and saves as `config.toml` beside every run. The named configurations (presets) and
//! the adaptation of a configuration to a model kind are in [`presets`].

mod presets;

pub use presets::{default_threads, matched_unet, progressive, tabular_width, Preset};

use crate::adjoint::GradMethod;
use crate::baselines::cnf::Trace;
use crate::baselines::ddpm::VpSchedule;
pub use crate::data::DataConfig;
use crate::nn::{MlpConfig, UNetConfig};
use crate::optim::AdamConfig;
use crate::sde::{Diffusion, GridKind, GridSpec, StepsSchedule};
use crate::validation::{ValMetric, ValidationConfig};
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

/// Which model the two networks make up and how it is trained (paper 3.4 and its baselines).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum ModelKind {
    /// DiffFlow: learned drift `f` and score `s` (two nets), trained by the trajectory loss
    /// (15).
    #[default]
    #[serde(rename = "diffflow")]
    DiffFlow,
    /// "DDPM (L)": the drift frozen to the VP SDE's `−β(t) x / 2` (no parameters) and one
    /// net `ε_θ` with score `s = −ε_θ / σ_t`, trained by DiffFlow's trajectory loss (15).
    /// Needs `g = vp`. (`"ddpm"` in configurations written before the DDPM kinds split.)
    #[serde(rename = "ddpm-l", alias = "ddpm")]
    DdpmL,
    /// "DDPM (L_s)": the same model trained by the ε-prediction loss on the closed-form
    /// marginals ([`crate::baselines::ddpm::eps_loss_gradient`]).
    #[serde(rename = "ddpm-ls")]
    DdpmLs,
    /// FFJORD-style CNF: drift = the velocity net `v`, score = 0, so the probability flow is
    /// `dx = v dt` whatever `g`; trained by maximum likelihood through RK4
    /// ([`crate::baselines::cnf::cnf_gradient`]). Sampled by its ODE only (λ = 0), no ELBO.
    #[serde(rename = "cnf")]
    Cnf,
}

impl ModelKind {
    /// All kinds, in the order of the paper's comparisons.
    pub const ALL: [ModelKind; 4] = [
        ModelKind::DiffFlow,
        ModelKind::DdpmL,
        ModelKind::DdpmLs,
        ModelKind::Cnf,
    ];

    fn is_diffflow(&self) -> bool {
        *self == ModelKind::DiffFlow
    }

    /// The name in the paper's tables: `DiffFlow`, `DDPM (L)`, `DDPM (L_s)`, `CNF`.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::DiffFlow => "DiffFlow",
            ModelKind::DdpmL => "DDPM (L)",
            ModelKind::DdpmLs => "DDPM (L_s)",
            ModelKind::Cnf => "CNF",
        }
    }

    /// The name in configurations and on the command line: `diffflow`, `ddpm-l`, `ddpm-ls`,
    /// `cnf`.
    pub fn key(self) -> &'static str {
        match self {
            ModelKind::DiffFlow => "diffflow",
            ModelKind::DdpmL => "ddpm-l",
            ModelKind::DdpmLs => "ddpm-ls",
            ModelKind::Cnf => "cnf",
        }
    }

    /// DDPM (L) or DDPM (L_s): the frozen VP drift and an ε-network.
    pub fn is_ddpm(self) -> bool {
        matches!(self, ModelKind::DdpmL | ModelKind::DdpmLs)
    }

    /// Whether the model has a stochastic reverse process: SDE (16) with any λ and the ELBO
    /// apply (all kinds but the CNF, which is deterministic).
    pub fn is_diffusion(self) -> bool {
        self != ModelKind::Cnf
    }
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ModelKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let key = s.replace('_', "-");
        match key.as_str() {
            "diffflow" => Ok(ModelKind::DiffFlow),
            "ddpm-l" => Ok(ModelKind::DdpmL),
            "ddpm-ls" => Ok(ModelKind::DdpmLs),
            "cnf" => Ok(ModelKind::Cnf),
            _ => Err(Error::config(format!(
                "unknown model '{s}' (expected diffflow, ddpm-l, ddpm-ls or cnf)"
            ))),
        }
    }
}

/// Largest `α_T` of the VP SDE a DDPM accepts: its marginal at `T` is then within about
/// `α_T²/2` nats per dimension of the prior `N(0, I)` for standardised data.
pub const DDPM_MAX_ALPHA_T: f64 = 0.1;

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

/// The model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// DiffFlow (default; absent from older files) or a baseline.
    #[serde(default, skip_serializing_if = "ModelKind::is_diffflow")]
    pub kind: ModelKind,
    /// Precision of weights and states.
    pub precision: Precision,
    /// Drift and score architecture (the same for both, separate weights) when they are
    /// MLPs; unused when `unet` is given.
    pub net: MlpConfig,
    /// The nets are U-Nets of this architecture (images) instead of MLPs. Absent from MLP
    /// runs, so their files are as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unet: Option<UNetConfig>,
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
    /// DDPM (L_s): time groups per batch of the ε loss (our nets take one time per batch).
    #[serde(
        default = "default_eps_groups",
        skip_serializing_if = "is_default_eps_groups"
    )]
    pub eps_groups: usize,
    /// CNF: the divergence of the training solve (exact, or Hutchinson with one Rademacher
    /// probe per row).
    #[serde(default, skip_serializing_if = "is_exact")]
    pub cnf_trace: Trace,
}

/// Default [`TrainConfig::eps_groups`].
pub const EPS_GROUPS: usize = 10;

fn default_eps_groups() -> usize {
    EPS_GROUPS
}

fn is_default_eps_groups(g: &usize) -> bool {
    *g == EPS_GROUPS
}

fn is_exact(t: &Trace) -> bool {
    *t == Trace::Exact
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
    /// The last step of the run's sampler is Tweedie's denoising step (absent: no).
    #[serde(default, skip_serializing_if = "is_false")]
    pub tweedie: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl ModelConfig {
    /// Trainable parameters of one net (MLP or U-Net) for data of dimension `dim`.
    pub fn net_params(&self, dim: usize) -> usize {
        match &self.unet {
            Some(u) => u.num_params(),
            None => self.net.num_params(dim),
        }
    }

    /// The image shape `C x H x W` of a U-Net model.
    pub fn image_shape(&self) -> Option<crate::data::ImageShape> {
        self.unet.as_ref().map(|u| crate::data::ImageShape {
            channels: u.channels,
            height: u.height,
            width: u.width,
        })
    }
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

impl RunConfig {
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
        self.validate_kind()?;
        self.model.net.validate()?;
        if let Some(u) = &self.model.unet {
            u.validate()?;
        }
        self.data.validate_sources(self.model.image_shape())?;
        t.validation.validate()?;
        Ok(())
    }

    /// The checks a model kind adds: a DDPM needs the VP diffusion and a time interval whose
    /// end is near the prior; a CNF is sampled by its ODE only and has no ELBO.
    fn validate_kind(&self) -> Result<()> {
        let kind = self.model.kind;
        if kind.is_ddpm() {
            let schedule = VpSchedule::from_diffusion(&self.model.g).map_err(|_| {
                Error::config(format!(
                    "model.kind = \"{}\" needs the VP diffusion (model.g.kind = \"vp\", \
                     --g vp), got g = {}",
                    kind.key(),
                    self.model.g
                ))
            })?;
            let t = self.model.grid.t_max;
            let alpha = schedule.alpha(t);
            if alpha > DDPM_MAX_ALPHA_T {
                return Err(Error::config(format!(
                    "model.grid.t_max = T = {t}: the VP SDE keeps alpha_T = {alpha:.3} of the \
                     data at T, so its marginal there is far from the prior N(0, I); a {} needs \
                     alpha_T <= {DDPM_MAX_ALPHA_T} (T >= {:.3} with this schedule, e.g. T = 1)",
                    kind.name(),
                    schedule.time_of_alpha(DDPM_MAX_ALPHA_T)
                )));
            }
        }
        if kind == ModelKind::DdpmLs {
            let g = self.train.eps_groups;
            if g == 0 || g > self.train.batch {
                return Err(Error::config(format!(
                    "train.eps_groups must be in 1..=train.batch ({}), got {g}",
                    self.train.batch
                )));
            }
        }
        if kind == ModelKind::Cnf {
            if self.model.unet.is_some() {
                return Err(Error::config(
                    "model.unet: the CNF is not built on U-Nets (its training solve needs the \
                     divergence of every step; use diffflow or ddpm-ls on images)",
                ));
            }
            if self.sample.tweedie {
                return Err(Error::config(
                    "sample.tweedie: a CNF is deterministic, it has no Tweedie step",
                ));
            }
            if self.sample.lambda != 0.0 {
                return Err(Error::config(format!(
                    "sample.lambda = {}: a CNF is deterministic, it is sampled by its ODE \
                     (lambda = 0) only",
                    self.sample.lambda
                )));
            }
            let v = &self.train.validation;
            if v.enabled() && v.metric == ValMetric::Elbo {
                return Err(Error::config(
                    "train.validation.metric = \"elbo\": a CNF has no ELBO (use \"nll\")",
                ));
            }
        }
        Ok(())
    }

    /// The run's data, prepared from its data configuration and seed (a fresh run and a
    /// resumed one build them the same way).
    pub fn training_data(&self) -> Result<crate::data::TrainData> {
        crate::data::TrainData::from_config(&self.data, self.train.seed)
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

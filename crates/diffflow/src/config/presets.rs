//! Named configurations ([`Preset`]) and the adaptation of a configuration to a model kind
//! ([`RunConfig::for_model`]) and to the data's dimension ([`RunConfig::fit_to_data`]).

use super::{
    DataConfig, ModelConfig, ModelKind, OnNan, Precision, RunConfig, SampleConfig, TrainConfig,
    Weights, EPS_GROUPS,
};
use crate::adjoint::GradMethod;
use crate::baselines::cnf::Trace;
use crate::nn::{MlpConfig, ParamKnob};
use crate::optim::AdamConfig;
use crate::sde::{Diffusion, GridKind, GridSpec, StepsSchedule};
use crate::validation::{ValMetric, ValidationConfig};
use crate::{Error, Result};

pub use crate::par::default_threads;

/// Named configurations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// Small and quick: a few minutes on two CPU cores.
    Quick,
    /// The authors' 2-D configuration (their code, qsh-zh/DiffFlow), exactly.
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
                    eps_groups: EPS_GROUPS,
                    cnf_trace: Trace::Exact,
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

    /// This configuration for the model `kind`, with the settings the kind needs where they
    /// differ from DiffFlow's (the flags given afterwards override them):
    /// - DDPM (L), DDPM (L_s): the VP SDE (`g = vp`, β from 0.1 to 20) on `[0.001, 1]` (its
    ///   prior is `N(0, I)` only near `T = 1`), grid exponent 0.9, 100 sampling steps;
    /// - CNF: the ODE on `[0, 1]` with a uniform fixed grid of 6 RK4 steps for training, a
    ///   quarter of the batch (its iterations cost several times more), λ = 0 for sampling,
    ///   validation by the NLL (it has no ELBO); Hutchinson's trace for data of more than 8
    ///   dimensions is set by [`RunConfig::fit_to_data`].
    ///
    /// The baselines' time features are rescaled to their time interval (frequencies ×
    /// `T_diffflow / T`, so that `c·t` spans the same range). One net of the baselines gets
    /// the parameters of DiffFlow's two by [`RunConfig::fit_to_data`].
    pub fn for_model(mut self, kind: ModelKind) -> Self {
        let t_from = self.model.grid.t_max;
        self.model.kind = kind;
        match kind {
            ModelKind::DiffFlow => return self,
            ModelKind::DdpmL | ModelKind::DdpmLs => {
                self.model.g = Diffusion::vp_default();
                self.model.grid = GridSpec {
                    t_min: 1e-3,
                    t_max: 1.0,
                    beta: 0.9,
                };
                self.sample.steps = Some(100);
            }
            ModelKind::Cnf => {
                self.model.grid = GridSpec {
                    t_min: 0.0,
                    t_max: 1.0,
                    beta: 1.0,
                };
                self.train.steps = StepsSchedule::constant(6);
                self.train.grid = GridKind::Fixed;
                self.train.batch = self.train.batch.div_ceil(4);
                self.sample.lambda = 0.0;
                self.train.validation.metric = ValMetric::Nll;
            }
        }
        self.model.net = self.model.net.rescale_time(t_from, self.model.grid.t_max);
        self
    }

    /// Settings of a baseline that depend on the data's dimension `d`, once the data are
    /// read: with `match_params`, the width of its one net chosen so that it has about the
    /// parameters of DiffFlow's two nets of the current architecture (matched model size);
    /// and Hutchinson's trace for a CNF on more than 8 dimensions (d JVPs per evaluation
    /// would dominate its training). Nothing for DiffFlow.
    pub fn fit_to_data(&mut self, d: usize, match_params: bool) {
        if self.model.kind == ModelKind::DiffFlow {
            return;
        }
        if match_params {
            let target = 2 * self.model.net.num_params(d);
            self.model.net = self.model.net.matched(d, target, ParamKnob::Width);
        }
        if self.model.kind == ModelKind::Cnf && d > 8 {
            self.train.cnf_trace = Trace::Hutchinson;
        }
    }
}

/// The tabular preset, in the spirit of the paper's appendix for tabular data (section 4.2:
/// MLPs of fewer than 5 layers; the flexible grid with progressive N) and sized for two CPU
/// cores; chosen by the study in `docs/tune` (MINIBOONE validation points, never the test
/// split; `diffflow tune --plan docs/tune/stage1-g.toml`):
/// - diffusion `g = 2` (constant) on `[0.001, 0.05]`: the 2-D value `g = 0.2` gives a total
///   noise `g²T = 0.002`, so the learned drift does nearly all the transport and DiffFlow is
///   a CNF with a noisy loss. Validation NLL on MINIBOONE (nats) after 1500 iterations: g =
///   0.2: 25.82, 0.5: 20.85, 1: 19.29, 2: 19.04, 4: 20.00 (g = 4 led at iterations 500 and
///   1000, 26.10 and 21.84 against 30.91 and 22.95 for g = 2, and fell behind by the end). g is in standardised units (the
///   data are standardised before training), so the choice does not depend on the set's
///   scale; the T factor (same g²T on a longer interval) was not measured;
/// - nets with an input layer, 2 hidden layers and an output layer, width
///   [`tabular_width`]`(d)` (set once the data are read; 128 here), 32 Fourier frequencies;
/// - 1500 iterations of batch 256, N = 5, then 10 from iteration 500, 20 from 1000 (the
///   study's length: half of the earlier 3000; 200-370 CPU-seconds for d = 43 on the shared
///   2-core machine; longer runs were not measured with this g); Adam 2e-3 decayed ×0.9 every 150 iterations; EMA 0.995;
/// - validation by the negative ELBO every 100 iterations, keeping the best.
fn tabular(mut c: RunConfig) -> RunConfig {
    c.model.net = MlpConfig {
        width: 128,
        depth: 2,
        fourier: 32,
        ..MlpConfig::small()
    };
    c.model.g = Diffusion::Constant { value: 2.0 };
    let t = &mut c.train;
    t.iters = 1500;
    t.batch = 256;
    t.steps = StepsSchedule::parse("5,10@500,20@1000").expect("valid schedule");
    t.grid = GridKind::Flexible;
    t.lr = 2e-3;
    t.lr_decay = 0.9;
    t.lr_decay_every = 150;
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

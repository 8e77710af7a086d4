//! Named configurations ([`Preset`]) and the adaptation of a configuration to a model kind
//! ([`RunConfig::for_model`]) and to the data's dimension ([`RunConfig::fit_to_data`]).

use super::{
    DataConfig, ModelConfig, ModelKind, OnNan, Precision, RunConfig, SampleConfig, TrainConfig,
    Weights, EPS_GROUPS,
};
use crate::adjoint::GradMethod;
use crate::baselines::cnf::Trace;
use crate::data::{ImageDataset, ImageSource};
use crate::nn::{MlpConfig, ParamKnob, UNetConfig};
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
    /// MNIST (or Fashion-MNIST) on two CPU cores with U-Nets: see [`RunConfig::preset`].
    Mnist,
    /// The built-in 8x8 digits with tiny U-Nets: seconds per run (demo and tests).
    DigitsImages,
}

impl std::str::FromStr for Preset {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "quick" => Ok(Preset::Quick),
            "paper-2d" => Ok(Preset::Paper2d),
            "tabular" => Ok(Preset::Tabular),
            "mnist" => Ok(Preset::Mnist),
            "digits-images" => Ok(Preset::DigitsImages),
            _ => Err(Error::config(format!(
                "unknown preset '{s}' (expected quick, paper-2d, tabular, mnist or \
                 digits-images)"
            ))),
        }
    }
}

impl RunConfig {
    /// The configuration of a preset for `dataset` (the image presets: `fashion-mnist`
    /// selects Fashion-MNIST, anything else MNIST; the folder is set afterwards,
    /// `data.image.dir`).
    pub fn preset(preset: Preset, dataset: &str) -> Self {
        match preset {
            Preset::Paper2d => RunConfig {
                data: DataConfig {
                    dataset: dataset.to_string(),
                    noise: None,
                    train_size: 500_000,
                    test_size: 10_000,
                    file: None,
                    image: None,
                },
                model: ModelConfig {
                    kind: ModelKind::DiffFlow,
                    precision: Precision::F32,
                    net: MlpConfig::paper_2d(),
                    unet: None,
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
                    tweedie: false,
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
            Preset::Mnist => {
                let set = if dataset == ImageDataset::FashionMnist.name() {
                    ImageDataset::FashionMnist
                } else {
                    ImageDataset::Mnist
                };
                images(RunConfig::preset(Preset::Quick, set.name()), set)
            }
            Preset::DigitsImages => digits_images(images(
                RunConfig::preset(Preset::Quick, ImageDataset::Digits.name()),
                ImageDataset::Digits,
            )),
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
                self.sample.tweedie = false;
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
        if let Some(u) = &mut self.model.unet {
            // The embedding sees the same range of `time_scale · t`.
            u.time_scale *= t_from / self.model.grid.t_max;
        }
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
            match &mut self.model.unet {
                Some(u) => *u = matched_unet(u, 2 * u.num_params()),
                None => {
                    let target = 2 * self.model.net.num_params(d);
                    self.model.net = self.model.net.matched(d, target, ParamKnob::Width);
                }
            }
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
/// - validation every 100 iterations by the probability-flow NLL of (the first 1000)
///   validation points, keeping the best: the measure the tabular table reports and the
///   baselines are selected by. Selecting by the cheaper negative ELBO picked other
///   checkpoints (the ELBO-ODE gap grows with g); the same training selected by the NLL:
///   `docs/bench-tabular/README.md`.
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
        metric: ValMetric::Nll,
        points: 1000,
        ..ValidationConfig::default()
    };
    c.sample.n = 2000;
    c.sample.weights = Weights::Ema;
    c
}

/// The image presets' common part, in the spirit of the authors' MNIST setup (issue 12):
/// two U-Nets ([`UNetConfig::mnist_cpu`], 280,177 parameters each), g = 1 constant on
/// `[0.001, 0.05]` with the grid uniform in `t^0.5`, the flexible grid in training with
/// progressive N 5 → 10 → 20 → 30 at a quarter, half and three quarters of the iterations,
/// Adam 2e-4 without decay, clip 1, EMA 0.999 (sampling from the EMA), batch 64, 2000
/// iterations (CPU-sized; the authors train 94k on a GPU); sampling N = 30 with Tweedie's
/// final step; no validation (the test file is held out).
fn images(mut c: RunConfig, set: ImageDataset) -> RunConfig {
    let src = ImageSource::new(set, None);
    c.data.dataset = set.name().to_string();
    c.data.train_size = if set.needs_dir() { 60_000 } else { 1_437 };
    c.data.test_size = if set.needs_dir() { 10_000 } else { 180 };
    c.model.unet = Some(UNetConfig::mnist_cpu());
    c.model.g = Diffusion::Constant { value: 1.0 };
    c.model.grid = GridSpec {
        t_min: 0.001,
        t_max: 0.05,
        beta: 0.5,
    };
    c.data.image = Some(src);
    let t = &mut c.train;
    t.iters = 2000;
    t.batch = 64;
    t.steps = progressive(t.iters);
    t.grid = GridKind::Flexible;
    t.lr = 2e-4;
    t.lr_decay = 1.0;
    t.lr_decay_every = 0;
    t.clip = 1.0;
    t.ema_decay = 0.999;
    t.checkpoint_every = 250;
    t.log_every = 10;
    c.sample.n = 100;
    c.sample.steps = Some(30);
    c.sample.lambda = 1.0;
    c.sample.weights = Weights::Ema;
    c.sample.tweedie = true;
    c
}

/// N = 5, then 10, 20 and 30 from a quarter, a half and three quarters of `iters`.
pub fn progressive(iters: usize) -> StepsSchedule {
    let at = |q: usize| (iters * q / 4).max(q);
    StepsSchedule::parse(&format!("5,10@{},20@{},30@{}", at(1), at(2), at(3)))
        .expect("valid schedule")
}

/// The digits-images preset: the image settings on the built-in 8x8 digits with
/// [`UNetConfig::tiny`] nets (4,877 parameters), batch 32, 200 iterations, N 5 → 10 at half
/// way, 10 sampling steps, Adam 2e-3 and EMA 0.99 (seconds per run).
fn digits_images(mut c: RunConfig) -> RunConfig {
    c.model.unet = Some(UNetConfig::tiny(1, 8, 8));
    let t = &mut c.train;
    t.iters = 200;
    t.batch = 32;
    t.steps = StepsSchedule::parse("5,10@100").expect("valid schedule");
    t.lr = 2e-3;
    t.ema_decay = 0.99;
    t.checkpoint_every = 100;
    c.sample.steps = Some(10);
    c
}

/// `u` with the base width `ch` (a multiple of its groups) whose parameter count is nearest
/// `target`: a baseline's one U-Net with the parameters of DiffFlow's two.
pub fn matched_unet(u: &UNetConfig, target: usize) -> UNetConfig {
    let with = |ch: usize| UNetConfig { ch, ..u.clone() };
    // `ch` must be even and a multiple of the groups.
    let step = if u.groups % 2 == 0 {
        u.groups
    } else {
        2 * u.groups
    };
    let gap = |ch: usize| with(ch).num_params().abs_diff(target);
    let mut best = u.ch;
    let mut ch = 4usize.div_ceil(step) * step;
    while ch <= 64 * u.ch.max(4) {
        if gap(ch) < gap(best) {
            best = ch;
        }
        if with(ch).num_params() > target {
            break;
        }
        ch += step;
    }
    with(best)
}

/// Hidden width of the tabular preset for data of dimension `d`: `4d` rounded up to a
/// multiple of 32, between 64 and 512 (d = 43 → 192, d = 61 → 256).
pub fn tabular_width(d: usize) -> usize {
    (4 * d).div_ceil(32).saturating_mul(32).clamp(64, 512)
}

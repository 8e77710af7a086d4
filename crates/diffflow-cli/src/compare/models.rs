//! The four models of `diffflow compare`: their configurations (matched parameter counts) and
//! their training under a matched budget (the library's [`diffflow::train::budget`]).

use anyhow::Result;
use diffflow::config::{ModelKind, Preset, RunConfig, Weights};
use diffflow::likelihood::NllOptions;
use diffflow::model::Model;
use diffflow::nn::{MlpConfig, ParamKnob};
use diffflow::sde::{GridKind, StepsSchedule};
use diffflow::train::budget::{fit_budget, Budget, BudgetPlan, BudgetProgress};
use diffflow::train::{TrainData, Trainer};

/// Hyper-parameters of the comparison.
#[derive(Clone, Debug)]
pub struct Hyper {
    pub batch: usize,
    /// Batch of the CNF (its iterations cost several times more).
    pub cnf_batch: usize,
    pub train_size: usize,
    pub test_size: usize,
    pub seed: u64,
    pub threads: usize,
    pub lr_diffflow: f64,
    pub lr_ddpm_l: f64,
    pub lr_eps: f64,
    pub lr_cnf: f64,
    /// Time groups per batch of the ε loss.
    pub groups: usize,
    /// RK4 steps of the CNF's training solve.
    pub cnf_steps: usize,
    /// Trajectory-loss N: the first third of the budget, then the rest.
    pub train_n: (usize, usize),
    /// Target number of parameters of every model (DiffFlow: both nets together).
    pub params: usize,
    /// ε of the VP SDE: the DDPMs live on `[ε, 1]` (their data time is 0, the closed-form
    /// marginals start there; sampling ends and the likelihood starts at ε).
    pub ddpm_t_min: f64,
}

/// Total decays of the learning rate (×0.95 each) over the budget, as in the paper's
/// 3000 iterations with a decay every 200.
pub const LR_DECAYS: usize = 15;

/// The run configuration of model `kind` on `dataset`: the quick preset's two nets for
/// DiffFlow; for a baseline the settings of [`RunConfig::for_model`] and one Fourier MLP of
/// the paper's width whose number of frequencies brings its parameter count nearest to
/// `h.params` (d = 2), its time features rescaled to the baseline's interval.
pub fn config(kind: ModelKind, dataset: &str, h: &Hyper) -> RunConfig {
    let mut c = RunConfig::preset(Preset::Quick, dataset);
    c.data.train_size = h.train_size;
    c.data.test_size = h.test_size;
    c.train.batch = h.batch;
    c.train.seed = h.seed;
    c.train.threads = h.threads;
    c.train.chunks = h.threads.max(2);
    c.train.lr_decay_every = 0; // the budget sets the learning rate from its fraction
    c.train.steps = StepsSchedule::constant(h.train_n.0);
    c.train.grid = GridKind::Flexible;
    c.sample.weights = Weights::Ema;
    if kind == ModelKind::DiffFlow {
        // The quick preset's two nets (2 × 47,090 parameters for d = 2).
        c.model.net = MlpConfig::small();
        c.train.lr = h.lr_diffflow;
        return c;
    }
    let t_from = c.model.grid.t_max;
    let mut c = c.for_model(kind);
    c.model.net = MlpConfig::paper_2d()
        .matched(2, h.params, ParamKnob::Fourier)
        .rescale_time(t_from, c.model.grid.t_max);
    match kind {
        ModelKind::DdpmL | ModelKind::DdpmLs => {
            c.model.grid.t_min = h.ddpm_t_min;
            c.train.eps_groups = h.groups;
            c.train.lr = if kind == ModelKind::DdpmL {
                h.lr_ddpm_l
            } else {
                h.lr_eps
            };
        }
        ModelKind::Cnf => {
            c.train.steps = StepsSchedule::constant(h.cnf_steps);
            c.train.batch = h.cnf_batch;
            c.train.lr = h.lr_cnf;
        }
        ModelKind::DiffFlow => {}
    }
    c
}

/// A trained model and what its training cost.
pub struct Trained {
    pub kind: ModelKind,
    /// The model with the EMA weights.
    pub model: Model,
    pub params: usize,
    pub iters: usize,
    pub seconds: f64,
    /// CPU seconds of training (only measured under a CPU-time budget, else 0).
    pub cpu_seconds: f64,
    /// Mean training loss over the last 10% of the iterations (the model's own loss).
    pub final_loss: f64,
}

/// N stages of the trajectory loss: `train_n.0` for the first third, then `train_n.1`.
pub fn stages(kind: ModelKind, h: &Hyper) -> Vec<(f64, usize)> {
    match kind {
        ModelKind::DiffFlow | ModelKind::DdpmL => {
            vec![(0.0, h.train_n.0), (1.0 / 3.0, h.train_n.1)]
        }
        _ => Vec::new(),
    }
}

/// Trains `kind` on `data` under `budget` (N stages from [`stages`] unless overridden, the
/// learning rate ×0.95 [`LR_DECAYS`] times over the budget); `every` is called after each
/// iteration and may stop the run by returning false.
pub fn train(
    kind: ModelKind,
    dataset: &str,
    data: &TrainData,
    budget: Budget,
    h: &Hyper,
    stages_override: Option<Vec<(f64, usize)>>,
    every: &mut dyn FnMut(&Trainer, BudgetProgress) -> diffflow::Result<bool>,
) -> Result<Trained> {
    let cfg = config(kind, dataset, h);
    let plan = BudgetPlan {
        budget,
        lr_decay: 0.95,
        lr_decays: LR_DECAYS,
        stages: stages_override.unwrap_or_else(|| stages(kind, h)),
        validations: 0,
    };
    let mut tr = Trainer::new(cfg.clone(), data.clone())?;
    let run = fit_budget(
        &mut tr,
        &plan,
        cfg.train.lr,
        &[],
        &NllOptions::default(),
        every,
        &mut |_| {},
    )?;
    let model = tr.model(Some(Weights::Ema))?;
    Ok(Trained {
        kind,
        params: model.num_params(),
        model,
        iters: run.iters,
        seconds: run.seconds,
        cpu_seconds: run.cpu_seconds,
        final_loss: run.final_loss,
    })
}

//! The four models of `diffflow compare`, their configurations (matched parameter counts)
//! and one training loop under a matched budget.

use anyhow::{bail, Result};
use diffflow::baselines::cnf::{CnfTrainer, Trace};
use diffflow::baselines::ddpm::EpsTrainer;
use diffflow::config::{ModelKind, Preset, RunConfig, Weights};
use diffflow::flow::DiffFlow;
use diffflow::nn::MlpConfig;
use diffflow::sde::{Diffusion, GridKind, GridSpec, StepsSchedule};
use diffflow::train::{TrainData, Trainer};
use std::time::Instant;

/// One of the compared models.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    DiffFlow,
    DdpmL,
    DdpmLs,
    Cnf,
}

impl Which {
    pub const ALL: [Which; 4] = [Which::DiffFlow, Which::DdpmL, Which::DdpmLs, Which::Cnf];

    pub fn name(self) -> &'static str {
        match self {
            Which::DiffFlow => "DiffFlow",
            Which::DdpmL => "DDPM (L)",
            Which::DdpmLs => "DDPM (L_s)",
            Which::Cnf => "CNF",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Which::DiffFlow => "diffflow",
            Which::DdpmL => "ddpm_l",
            Which::DdpmLs => "ddpm_ls",
            Which::Cnf => "cnf",
        }
    }

    /// Whether it is sampled by the SDE(λ) sampler (the CNF is sampled by its ODE).
    pub fn is_diffusion(self) -> bool {
        self != Which::Cnf
    }
}

/// Matched budget of every model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// Training iterations (same batch for all).
    Iters(usize),
    /// Wall-clock seconds of training.
    Seconds(f64),
    /// CPU seconds of training (all threads of the process; robust to other processes
    /// sharing the machine).
    CpuSeconds(f64),
}

/// CPU time (user + system) of this process, all threads, in seconds, from
/// `/proc/self/stat` (Linux; clock ticks of 1/100 s).
pub fn process_cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")
        .map_err(|e| anyhow::anyhow!("--cpu-seconds needs /proc/self/stat (Linux): {e}"))?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("unexpected /proc/self/stat format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| anyhow::anyhow!("unexpected /proc/self/stat format"))
    };
    // In `rest`, field 3 (state) is index 0, so utime (14) is index 11 and stime (15) 12.
    Ok((tick(11)? + tick(12)?) / 100.0)
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Budget::Iters(i) => write!(f, "{i} iterations per model"),
            Budget::Seconds(s) => write!(f, "{s} s of training per model"),
            Budget::CpuSeconds(s) => write!(f, "{s} CPU-seconds of training per model"),
        }
    }
}

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
pub const LR_DECAYS: f64 = 15.0;

/// A one-net Fourier MLP (width 128, depth 3) whose number of frequencies brings its
/// parameter count nearest to `target` for d = 2, with the time features of DiffFlow's nets
/// rescaled from `T = 0.05` to `t_max` (frequencies × 0.05 / t_max, so that `c·t` spans the
/// same range).
pub fn one_net(target: usize, t_max: f64) -> MlpConfig {
    let base = MlpConfig::paper_2d();
    let scale = 0.05 / t_max;
    let mut best = base.clone();
    let mut best_gap = usize::MAX;
    for k in 1..=512 {
        let c = MlpConfig {
            fourier: k,
            ..base.clone()
        };
        let gap = c.num_params(2).abs_diff(target);
        if gap < best_gap {
            best_gap = gap;
            best = c;
        }
    }
    best.freq_min = base.freq_min * scale;
    best.freq_max = base.freq_max * scale;
    best
}

/// The run configuration of model `which` on `dataset`.
pub fn config(which: Which, dataset: &str, h: &Hyper) -> RunConfig {
    let mut c = RunConfig::preset(Preset::Quick, dataset);
    c.data.train_size = h.train_size;
    c.data.test_size = h.test_size;
    c.train.batch = h.batch;
    c.train.seed = h.seed;
    c.train.threads = h.threads;
    c.train.chunks = h.threads.max(2);
    c.train.lr_decay_every = 0; // the loop sets the learning rate from the budget fraction
    c.train.steps = StepsSchedule::constant(h.train_n.0);
    c.train.grid = GridKind::Flexible;
    c.sample.weights = Weights::Ema;
    let single = |t_max: f64| one_net(h.params, t_max);
    match which {
        Which::DiffFlow => {
            // The quick preset's two nets (2 × 47,090 parameters for d = 2).
            c.model.net = MlpConfig::small();
            c.train.lr = h.lr_diffflow;
        }
        Which::DdpmL | Which::DdpmLs => {
            c.model.kind = ModelKind::Ddpm;
            c.model.g = Diffusion::vp_default();
            c.model.grid = GridSpec {
                t_min: h.ddpm_t_min,
                t_max: 1.0,
                beta: 0.9,
            };
            c.model.net = single(1.0);
            c.train.lr = if which == Which::DdpmL {
                h.lr_ddpm_l
            } else {
                h.lr_eps
            };
        }
        Which::Cnf => {
            c.model.kind = ModelKind::Cnf;
            c.model.grid = GridSpec {
                t_min: 0.0,
                t_max: 1.0,
                beta: 1.0,
            };
            c.model.net = single(1.0);
            c.train.steps = StepsSchedule::constant(h.cnf_steps);
            c.train.grid = GridKind::Fixed;
            c.train.batch = h.cnf_batch;
            c.train.lr = h.lr_cnf;
        }
    }
    c
}

/// A trainer of any of the four kinds.
pub enum Fit {
    Trajectory(Box<Trainer>),
    Eps(Box<EpsTrainer>),
    Cnf(Box<CnfTrainer>),
}

impl Fit {
    pub fn new(which: Which, cfg: RunConfig, data: TrainData, h: &Hyper) -> Result<Self> {
        Ok(match which {
            Which::DiffFlow | Which::DdpmL => Fit::Trajectory(Box::new(Trainer::new(cfg, data)?)),
            Which::DdpmLs => Fit::Eps(Box::new(EpsTrainer::new(cfg, data, h.groups)?)),
            Which::Cnf => Fit::Cnf(Box::new(CnfTrainer::new(cfg, data, Trace::Exact)?)),
        })
    }

    /// Sets the learning rate and N for the fraction `frac` of the budget done.
    pub fn schedule(&mut self, frac: f64, base_lr: f64, stages: &[(f64, usize)]) {
        let lr = base_lr * 0.95f64.powi((LR_DECAYS * frac).floor() as i32);
        let n = stages.iter().rev().find(|(f, _)| *f <= frac).map(|s| s.1);
        match self {
            Fit::Trajectory(t) => {
                t.cfg.train.lr = lr;
                if let Some(n) = n {
                    t.cfg.train.steps = StepsSchedule::constant(n);
                }
            }
            Fit::Eps(t) => t.opt.lr = lr,
            Fit::Cnf(t) => t.opt.lr = lr,
        }
    }

    /// One iteration; returns its loss.
    pub fn step(&mut self) -> Result<f64> {
        Ok(match self {
            Fit::Trajectory(t) => t.train_step()?.loss.loss,
            Fit::Eps(t) => t.train_step()?.loss,
            Fit::Cnf(t) => t.train_step()?.loss,
        })
    }

    pub fn iters(&self) -> usize {
        match self {
            Fit::Trajectory(t) => t.step,
            Fit::Eps(t) => t.step,
            Fit::Cnf(t) => t.step,
        }
    }

    /// The model with EMA weights.
    pub fn sampling_flow(&self) -> Result<DiffFlow> {
        Ok(match self {
            Fit::Trajectory(t) => t.sampling_flow(Weights::Ema)?,
            Fit::Eps(t) => t.sampling_flow(Weights::Ema)?,
            Fit::Cnf(t) => t.sampling_flow(Weights::Ema)?,
        })
    }
}

/// A trained model and what its training cost.
pub struct Trained {
    pub which: Which,
    pub cfg: RunConfig,
    pub flow: DiffFlow,
    pub params: usize,
    pub iters: usize,
    pub seconds: f64,
    /// CPU seconds of training (only measured under a CPU-time budget, else 0).
    pub cpu_seconds: f64,
    /// Mean training loss over the last 10% of the iterations (the model's own loss).
    pub final_loss: f64,
}

/// N stages of the trajectory loss: `train_n.0` for the first third, then `train_n.1`.
pub fn stages(which: Which, h: &Hyper) -> Vec<(f64, usize)> {
    match which {
        Which::DiffFlow | Which::DdpmL => vec![(0.0, h.train_n.0), (1.0 / 3.0, h.train_n.1)],
        _ => Vec::new(),
    }
}

/// Trains `which` on `data` under `budget` (N stages from [`stages`] unless overridden);
/// `every` is called after each iteration with the fit, the fraction of the budget done and
/// the training seconds so far (CPU seconds under a CPU budget; its own time is not
/// counted), and may stop the run by returning false.
pub fn train(
    which: Which,
    dataset: &str,
    data: &TrainData,
    budget: Budget,
    h: &Hyper,
    stages_override: Option<Vec<(f64, usize)>>,
    every: &mut dyn FnMut(&Fit, f64, f64) -> Result<bool>,
) -> Result<Trained> {
    let cfg = config(which, dataset, h);
    let base_lr = cfg.train.lr;
    let st = stages_override.unwrap_or_else(|| stages(which, h));
    let fraction = |iters: usize, secs: f64, cpu: f64| match budget {
        Budget::Iters(i) => iters as f64 / i as f64,
        Budget::Seconds(s) => secs / s,
        Budget::CpuSeconds(s) => cpu / s,
    };
    let cpu_now = || -> Result<f64> {
        match budget {
            Budget::CpuSeconds(_) => process_cpu_seconds(),
            _ => Ok(0.0),
        }
    };
    let mut cpu_secs = 0.0;
    let mut fit = Fit::new(which, cfg.clone(), data.clone(), h)?;
    let mut losses = Vec::new();
    let mut train_secs = 0.0;
    loop {
        let frac = fraction(fit.iters(), train_secs, cpu_secs);
        if frac >= 1.0 {
            break;
        }
        fit.schedule(frac, base_lr, &st);
        let (t0, c0) = (Instant::now(), cpu_now()?);
        let loss = fit.step()?;
        train_secs += t0.elapsed().as_secs_f64();
        cpu_secs += cpu_now()? - c0;
        if !loss.is_finite() {
            bail!(
                "{} on {dataset}: non-finite loss at iteration {}",
                which.name(),
                fit.iters()
            );
        }
        losses.push(loss);
        let clock = match budget {
            Budget::CpuSeconds(_) => cpu_secs,
            _ => train_secs,
        };
        if !every(&fit, fraction(fit.iters(), train_secs, cpu_secs), clock)? {
            break;
        }
    }
    let tail = (losses.len() / 10).max(1).min(losses.len());
    let final_loss = if losses.is_empty() {
        f64::NAN
    } else {
        losses[losses.len() - tail..].iter().sum::<f64>() / tail as f64
    };
    let flow = fit.sampling_flow()?;
    Ok(Trained {
        which,
        params: flow.num_params(),
        cfg,
        flow,
        iters: fit.iters(),
        seconds: train_secs,
        cpu_seconds: cpu_secs,
        final_loss,
    })
}

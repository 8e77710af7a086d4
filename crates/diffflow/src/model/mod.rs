//! The model interface: one face for DiffFlow, DDPM (L), DDPM (L_s) and the CNF.
//!
//! A [`Model`] is a trained model in the data's own units: its configuration, its two nets
//! ([`DiffFlow`]: drift, score, g) with the chosen weights, and the transform between data
//! units and the model's standardised units. It samples ([`Model::sample`], SDE (16) with any
//! λ, Tweedie's last step, or an ODE solver on the probability flow) and evaluates
//! ([`Model::nll`], [`Model::elbo`], [`Model::evaluate`]) in data units, whatever its kind; the
//! kinds differ only in how their nets are built ([`build`]) and trained
//! ([`crate::train::Trainer`]). A CNF is deterministic: asking it for λ ≠ 0, Tweedie's step
//! or an ELBO is an error, not a wrong number.
//!
//! Models come from a run folder ([`Model::load`]) or from a trainer
//! ([`crate::train::Trainer::model`]).

mod build;
pub mod file;
mod points;

pub use build::{build, copy_weights, snapshot};
pub use file::{BEST_FILE, CONFIG_FILE, METRICS_FILE, MODEL_FILE};
pub use points::column_notes;

use crate::config::{ModelKind, RunConfig, Weights};
use crate::data::source::ColumnMap;
use crate::data::Standardizer;
use crate::flow::{DiffFlow, Steps};
use crate::likelihood::{
    bits_per_dim, neg_elbo_mc, pf_ode_nll, summarize, ElboOptions, Nll, NllOptions, Summary,
};
use crate::ode::{Method, Stats, Tolerances};
use crate::rng::{Rng, Stream};
use crate::sample::{sample_ode, sample_sde};
use crate::sde::{fixed_grid, flexible_grid, GridSpec};
use crate::validation::ValState;
use crate::{Error, Result};
use candle_core::DType;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Which checkpoint of a run folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checkpoint {
    /// `best.safetensors` (the best validation value; written when training validates).
    Best,
    /// `model.safetensors` (the last one written).
    Last,
}

impl std::str::FromStr for Checkpoint {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "best" => Ok(Checkpoint::Best),
            "last" => Ok(Checkpoint::Last),
            _ => Err(Error::config(format!(
                "unknown checkpoint '{s}' (expected best or last)"
            ))),
        }
    }
}

/// How to draw samples.
#[derive(Clone, Debug, PartialEq)]
pub enum Sampler {
    /// Euler–Maruyama steps of SDE (16) with parameter `lambda` (1: the backward SDE, 0: the
    /// probability-flow ODE by Euler) on the grid `steps`, the last step optionally replaced
    /// by Tweedie's denoising step.
    Sde {
        lambda: f64,
        steps: Steps,
        tweedie: bool,
    },
    /// An ODE solver on the probability flow: Euler or RK4 along the grid `t` (increasing),
    /// Dormand–Prince between its ends with tolerances `tol`.
    Ode {
        method: Method,
        t: Vec<f64>,
        tol: Tolerances,
    },
}

/// How the time grid of a sampler is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SampleGrid {
    /// Uniform in `t^β` with the run's β (`L_β`'s grid).
    Fixed,
    /// Uniform in `t` (β = 1).
    Uniform,
    /// Random inner points, one per cell of the fixed grid, drawn once.
    Flexible,
}

impl std::str::FromStr for SampleGrid {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fixed" => Ok(SampleGrid::Fixed),
            "uniform" => Ok(SampleGrid::Uniform),
            "flexible" => Ok(SampleGrid::Flexible),
            _ => Err(Error::config(format!(
                "unknown grid '{s}' (expected fixed, uniform or flexible)"
            ))),
        }
    }
}

/// Samples in data units, with the solver's costs.
#[derive(Clone, Debug, PartialEq)]
pub struct Samples {
    /// The samples. Shapes: [n, d] row-major, the model's coordinates in data units.
    pub x: Vec<f64>,
    /// ODE solvers: the costs of each solve (piece of rows); empty for the SDE sampler.
    pub stats: Vec<Stats>,
}

/// The probability-flow NLL of points, in data units.
#[derive(Clone, Debug, PartialEq)]
pub struct PointNll {
    /// Per point, nats, data units (the standardisation's log-Jacobian included).
    pub nll: Vec<f64>,
    /// The solve's result in the model's standardised units (per point, per probe, latent
    /// points, solver costs).
    pub standardised: Nll,
}

/// Which part of [`Model::evaluate`] a progress report is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The probability-flow NLL.
    Nll,
    /// The negative ELBO.
    Elbo,
}

/// Settings of [`Model::evaluate`].
#[derive(Clone, Debug, PartialEq)]
pub struct EvalOptions {
    /// The probability-flow NLL's solver, divergence, chunks and threads.
    pub nll: NllOptions,
    /// Time points of the NLL solve (fixed-step solvers step along them; Dormand–Prince
    /// uses their ends).
    pub t: Vec<f64>,
    /// The ELBO's grid and options; `None` skips it (always, for a CNF).
    pub elbo: Option<(Steps, ElboOptions)>,
    /// Seed of the probes and the ELBO's noise.
    pub seed: u64,
}

/// What [`Model::evaluate`] measured: nats per point in data units unless named
/// `_standardised`, means with standard errors over the points.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// Points evaluated.
    pub n: usize,
    /// Their dimension.
    pub dim: usize,
    /// Probability-flow NLL.
    pub nll: Summary,
    /// Its mean in the model's standardised units.
    pub nll_standardised: f64,
    /// `nll` in bits per dimension.
    pub bits_per_dim: f64,
    /// Negative ELBO (13), when computed.
    pub elbo: Option<Summary>,
    /// Its mean in standardised units.
    pub elbo_standardised: Option<f64>,
    /// The negative ELBO in bits per dimension.
    pub elbo_bits_per_dim: Option<f64>,
    /// Negative ELBO − NLL per point (≥ 0 in expectation).
    pub elbo_gap: Option<Summary>,
    /// Mean, largest and number of the ODE solves' velocity evaluations.
    pub nfe: f64,
    pub nfe_max: usize,
    pub solves: usize,
    /// Seconds spent on the NLL and on the ELBO.
    pub seconds_nll: f64,
    pub seconds_elbo: f64,
    /// `log |det|` of the standardisation: `nll = nll_standardised − log_abs_det`.
    pub log_abs_det: f64,
    /// Per point: NLL and negative ELBO (NaN when not computed), data units.
    pub per_point: Vec<[f64; 2]>,
}

/// A trained model in data units (see the module docs).
pub struct Model {
    /// The run's configuration.
    pub cfg: RunConfig,
    /// The nets with the chosen weights.
    pub flow: DiffFlow,
    /// Data units → the model's standardised units.
    pub standardizer: Standardizer,
    /// File columns → model coordinates (runs on a data file).
    pub columns: Option<ColumnMap>,
    /// Iterations trained.
    pub step: usize,
    /// Model selection when this model was saved.
    pub validation: ValState,
    /// The weights: EMA or live.
    pub weights: Weights,
    /// The checkpoint it was loaded from.
    pub path: Option<PathBuf>,
}

impl Model {
    /// The run in `dir`: the checkpoint `which` (by default the best one when the run has
    /// one, else the last) with live or EMA weights (by default the run's sampling weights).
    pub fn load(dir: &Path, which: Option<Checkpoint>, weights: Option<Weights>) -> Result<Self> {
        let file = match which {
            Some(Checkpoint::Best) => {
                if !dir.join(BEST_FILE).exists() {
                    return Err(Error::checkpoint(
                        dir.join(BEST_FILE),
                        "no best checkpoint (it is written when training validates: \
                         --validate-every)",
                    ));
                }
                BEST_FILE
            }
            Some(Checkpoint::Last) => MODEL_FILE,
            None if dir.join(BEST_FILE).exists() => BEST_FILE,
            None => MODEL_FILE,
        };
        Self::load_file(&dir.join(file), weights)
    }

    /// The checkpoint file `path` with live or EMA weights (by default the run's).
    pub fn load_file(path: &Path, weights: Option<Weights>) -> Result<Self> {
        let run = file::read_run(path)?;
        let weights = weights.unwrap_or(run.cfg.sample.weights);
        let flow = file::load_flow(&run, weights == Weights::Ema, path)?;
        Ok(Model {
            cfg: run.cfg,
            flow,
            standardizer: run.state.standardizer,
            columns: run.state.columns,
            step: run.state.step,
            validation: run.state.validation,
            weights,
            path: Some(path.to_path_buf()),
        })
    }

    /// The model kind.
    pub fn kind(&self) -> ModelKind {
        self.cfg.model.kind
    }

    /// Data dimension `d` (modelled coordinates).
    pub fn dim(&self) -> usize {
        self.flow.dim()
    }

    /// Trainable parameters of both nets.
    pub fn num_params(&self) -> usize {
        self.flow.num_params()
    }

    /// `log |det|` of data units → standardised units (`nll_data = nll_std − log_abs_det`).
    pub fn log_abs_det(&self) -> f64 {
        self.standardizer.log_abs_det()
    }

    /// The run's sampling N: `sample.steps`, else the last N of training.
    pub fn sample_n(&self) -> usize {
        self.cfg.sample.steps.unwrap_or(self.cfg.train.steps.last())
    }

    /// A sampling grid of `n` steps on the run's time interval; `beta` overrides the
    /// exponent; a flexible grid draws its inner points from `rng`.
    pub fn grid(
        &self,
        n: usize,
        layout: SampleGrid,
        beta: Option<f64>,
        rng: &mut Rng,
    ) -> Result<Steps> {
        if n == 0 {
            return Err(Error::config("the number of sampling steps must be >= 1"));
        }
        let mut spec: GridSpec = self.cfg.model.grid;
        if layout == SampleGrid::Uniform {
            spec.beta = 1.0;
        }
        if let Some(b) = beta {
            spec.beta = b;
        }
        spec.validate()?;
        let t = match layout {
            SampleGrid::Flexible => flexible_grid(&spec, n, rng),
            _ => fixed_grid(&spec, n),
        };
        Ok(Steps::new(t, &self.flow.diffusion))
    }

    /// The run's own sampler: SDE (16) with its λ on the fixed grid of its sampling N, with
    /// Tweedie's last step when the run says so (`sample.tweedie`).
    pub fn default_sampler(&self) -> Sampler {
        let steps = Steps::new(
            fixed_grid(&self.cfg.model.grid, self.sample_n()),
            &self.flow.diffusion,
        );
        Sampler::Sde {
            lambda: self.cfg.sample.lambda,
            steps,
            tweedie: self.cfg.sample.tweedie,
        }
    }

    /// The forward process (11) from the points `x` [n, d] (data units) along the run's fixed
    /// grid of `n_steps` steps, the noises from `rng`: the `n_steps + 1` states `x_0 … x_N`
    /// in the model's standardised units (for images: `[−1, 1]`). Shapes: → N + 1 × [n, d].
    pub fn forward_states(
        &self,
        x: &[f64],
        n_steps: usize,
        rng: &mut Rng,
    ) -> Result<Vec<Vec<f64>>> {
        let xs = self.standardised(x)?;
        let (d, flow) = (self.dim(), &self.flow);
        let n = xs.len() / d;
        let steps = self.grid(n_steps, SampleGrid::Fixed, None, rng)?;
        let (dev, dtype) = (flow.device(), flow.dtype());
        let x0 = candle_core::Tensor::from_vec(xs, (n, d), &dev)?.to_dtype(dtype)?;
        let noise = rng.normals(n_steps * n * d);
        let noise = candle_core::Tensor::from_vec(noise, (n_steps, n, d), &dev)?.to_dtype(dtype)?;
        let mut drift = flow.drift.engine()?;
        crate::flow::forward_trajectory(drift.as_mut(), &x0, &steps, &noise)?
            .iter()
            .map(|s| Ok(s.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?))
            .collect()
    }

    /// The image shape of an image run (`data.image`), else `None`.
    pub fn image(&self) -> Option<(crate::data::ImageShape, u32)> {
        self.cfg.data.image.as_ref().map(|s| (s.shape, s.levels))
    }

    /// Refuses what a CNF cannot do: it has no noise to sample with or to denoise.
    fn check_sampler(&self, sampler: &Sampler) -> Result<()> {
        if let Sampler::Sde {
            lambda, tweedie, ..
        } = sampler
        {
            if !(0.0..=1.0).contains(lambda) {
                return Err(Error::config(format!(
                    "lambda must be in [0, 1], got {lambda}"
                )));
            }
            if !self.kind().is_diffusion() && (*lambda != 0.0 || *tweedie) {
                return Err(Error::config(format!(
                    "a CNF is deterministic: it is sampled by its ODE (lambda = 0, no Tweedie \
                     step), not with lambda = {lambda}{}",
                    if *tweedie { " and Tweedie's step" } else { "" }
                )));
            }
        }
        Ok(())
    }

    /// `n` samples in data units (the prior draw and the noises from `rng`), in pieces of at
    /// most `chunk` rows on `threads` workers (the samples do not depend on `threads`). A
    /// sample with a non-finite coordinate (a diverged model) is an error.
    pub fn sample(
        &self,
        n: usize,
        sampler: &Sampler,
        chunk: usize,
        threads: usize,
        rng: &mut Rng,
    ) -> Result<Samples> {
        if n == 0 {
            return Err(Error::config("the number of samples must be >= 1"));
        }
        self.check_sampler(sampler)?;
        let (x, stats) = match sampler {
            Sampler::Sde {
                lambda,
                steps,
                tweedie,
            } => (
                sample_sde(&self.flow, n, steps, *lambda, *tweedie, chunk, threads, rng)?,
                Vec::new(),
            ),
            Sampler::Ode { method, t, tol } => {
                sample_ode(&self.flow, n, t, *method, tol, chunk, threads, rng)?
            }
        };
        let mut x = x.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        self.standardizer.invert(&mut x);
        let d = self.dim();
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                step: self.step,
                what: format!(
                    "coordinate in sample {} (the model diverged; try more sampling steps)",
                    i / d
                ),
            });
        }
        Ok(Samples { x, stats })
    }

    /// Samples `x` [n, d] (data units) as rows of the training file's columns: constant
    /// columns filled in, dequantised columns rounded down to whole numbers when `quantize`
    /// (like the data before dequantisation). Returns the rows and their width.
    pub fn file_rows(&self, x: &[f64], quantize: bool) -> Result<(Vec<f64>, usize)> {
        let d = self.dim();
        let Some(map) = &self.columns else {
            if quantize {
                return Err(Error::config(
                    "quantize: the run has no dequantised columns",
                ));
            }
            return Ok((x.to_vec(), d));
        };
        if quantize && map.dequantized.is_empty() {
            return Err(Error::config(
                "quantize: the run has no dequantised columns",
            ));
        }
        let mut x = x.to_vec();
        if quantize {
            for row in x.chunks_exact_mut(d) {
                for &k in &map.dequantized {
                    row[k] = row[k].floor();
                }
            }
        }
        Ok((map.expand(&x), map.width))
    }

    /// The probability-flow NLL of the points `x` [n, d] (data units) from `t[0]` to the
    /// last of `t` (the run's interval when `None`). `progress` gets the rows finished.
    pub fn nll(
        &self,
        x: &[f64],
        opts: &NllOptions,
        t: Option<&[f64]>,
        rng: &mut Rng,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<PointNll> {
        let grid = self.cfg.model.grid;
        let span = [grid.t_min, grid.t_max];
        let xs = self.standardised(x)?;
        let out = pf_ode_nll(&self.flow, &xs, t.unwrap_or(&span), opts, rng, progress)?;
        let shift = -self.log_abs_det();
        Ok(PointNll {
            nll: out.nll.iter().map(|v| v + shift).collect(),
            standardised: out,
        })
    }

    /// The negative ELBO (13) of the points `x` [n, d] (data units), averaged over
    /// `opts.trajectories` forward trajectories per point on `steps`; nats per point, data
    /// units. A CNF has none (an error).
    pub fn elbo(
        &self,
        x: &[f64],
        steps: &Steps,
        opts: &ElboOptions,
        rng: &mut Rng,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<Vec<f64>> {
        if !self.kind().is_diffusion() {
            return Err(Error::config(
                "a CNF has no ELBO (its forward process has no noise): use the NLL",
            ));
        }
        let xs = self.standardised(x)?;
        let shift = -self.log_abs_det();
        let e = neg_elbo_mc(&self.flow, &xs, steps, opts, rng, progress)?;
        Ok(e.into_iter().map(|v| v + shift).collect())
    }

    /// The run's ELBO grid: `n` steps (default: its sampling N) on the fixed grid.
    pub fn elbo_steps(&self, n: Option<usize>) -> Steps {
        let n = n.unwrap_or(self.sample_n());
        Steps::new(fixed_grid(&self.cfg.model.grid, n), &self.flow.diffusion)
    }

    /// The run's evaluation settings: dopri5 (rtol = atol = 1e-5) with the exact divergence on
    /// its interval (images: Hutchinson's with one Rademacher probe, as `D` JVPs per
    /// evaluation would dominate), and (not for a CNF) the negative ELBO with 10 trajectories
    /// per point on its sampling grid; `threads` workers; seed: the run's.
    pub fn default_eval(&self, threads: usize) -> EvalOptions {
        let grid = self.cfg.model.grid;
        let divergence = match self.image() {
            Some(_) => crate::likelihood::Divergence::Hutchinson {
                probes: 1,
                probe: crate::likelihood::Probe::Rademacher,
            },
            None => crate::likelihood::Divergence::Exact,
        };
        EvalOptions {
            nll: NllOptions {
                threads,
                divergence,
                ..NllOptions::default()
            },
            t: vec![grid.t_min, grid.t_max],
            elbo: self.kind().is_diffusion().then(|| {
                (
                    self.elbo_steps(None),
                    ElboOptions {
                        threads,
                        ..ElboOptions::default()
                    },
                )
            }),
            seed: self.cfg.train.seed,
        }
    }

    /// NLL and (when asked) negative ELBO of `x` [n, d] (data units), with summaries and
    /// per-point values in data units. Both draw from one evaluation stream of `opts.seed`,
    /// the NLL's probes first. `progress` gets the phase and the rows finished.
    pub fn evaluate(
        &self,
        x: &[f64],
        opts: &EvalOptions,
        progress: &(dyn Fn(Phase, usize) + Sync),
    ) -> Result<Evaluation> {
        let d = self.dim();
        let started = Instant::now();
        let mut rng = Rng::stream(opts.seed, Stream::Eval);
        let nll = self.nll(x, &opts.nll, Some(&opts.t), &mut rng, &|k| {
            progress(Phase::Nll, k)
        })?;
        let seconds_nll = started.elapsed().as_secs_f64();
        let s = summarize(&nll.nll);
        let std = &nll.standardised;
        let mut ev = Evaluation {
            n: s.n,
            dim: d,
            nll: s,
            nll_standardised: summarize(&std.nll).mean,
            bits_per_dim: bits_per_dim(s.mean, d),
            elbo: None,
            elbo_standardised: None,
            elbo_bits_per_dim: None,
            elbo_gap: None,
            nfe: std.mean_nfe(),
            nfe_max: std.stats.iter().map(|s| s.nfe).max().unwrap_or(0),
            solves: std.stats.len(),
            seconds_nll,
            seconds_elbo: 0.0,
            log_abs_det: self.log_abs_det(),
            per_point: nll.nll.iter().map(|v| [*v, f64::NAN]).collect(),
        };
        if let Some((steps, eopts)) = &opts.elbo {
            let t0 = Instant::now();
            let elbo = self.elbo(x, steps, eopts, &mut rng, &|k| progress(Phase::Elbo, k))?;
            let es = summarize(&elbo);
            let gap: Vec<f64> = elbo.iter().zip(&nll.nll).map(|(a, b)| a - b).collect();
            for (row, e) in ev.per_point.iter_mut().zip(&elbo) {
                row[1] = *e;
            }
            ev.elbo = Some(es);
            ev.elbo_standardised = Some(es.mean + self.log_abs_det());
            ev.elbo_bits_per_dim = Some(bits_per_dim(es.mean, d));
            ev.elbo_gap = Some(summarize(&gap));
            ev.seconds_elbo = t0.elapsed().as_secs_f64();
        }
        Ok(ev)
    }

    /// The run's held-out points in data units: its test split (`val = false`) or its
    /// validation split, rebuilt from its configuration.
    pub fn held_out(&self, val: bool) -> Result<Vec<f64>> {
        let data = self.cfg.training_data()?;
        let mut x = if val { data.val } else { data.test };
        data.standardizer.invert(&mut x);
        Ok(x)
    }

    /// Points in data units → the model's standardised units (checked: a whole number of
    /// finite rows of the model's dimension).
    fn standardised(&self, x: &[f64]) -> Result<Vec<f64>> {
        let d = self.dim();
        if x.is_empty() || x.len() % d != 0 {
            return Err(Error::data(format!(
                "need a non-empty [n, {d}] array of points, got {} values",
                x.len()
            )));
        }
        let mut xs = x.to_vec();
        self.standardizer.apply(&mut xs);
        Ok(xs)
    }
}

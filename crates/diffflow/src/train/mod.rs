//! Training: one [`Trainer`] for every model kind (Algorithm 1 with the stochastic adjoint for
//! DiffFlow and DDPM (L), the ε loss for DDPM (L_s), maximum likelihood for the CNF; see
//! [`objective`]), with clipping, Adam, EMA, validation and the best checkpoint, the
//! divergence guard, checkpoints and exact resume ([`state`]), the metrics and progress
//! reports ([`records`]) and training under a matched budget ([`budget`]).

pub mod budget;
mod objective;
mod records;
mod state;

pub use crate::data::TrainData;
pub use crate::model::{BEST_FILE, CONFIG_FILE, METRICS_FILE, MODEL_FILE};
pub use records::{append_metrics, HeldOutRecord, LogRecord, Observer, Restart, Silent, StepStats};
#[doc(hidden)]
pub use state::parse_run_bytes;

use crate::checkpoint;
use crate::config::{NanAction, RunConfig, Weights};
use crate::flow::DiffFlow;
use crate::model::file::all_finite;
use crate::model::file::MetricSums;
use crate::model::{build, snapshot, Model, Phase};
use crate::nn::TimeNet;
use crate::optim::{clip_global_norm, step_decay, Adam, Ema};
use crate::rng::{Rng, Stream};
use crate::validation::{self, ValRecord, ValState};
use crate::{Error, Result};
use candle_core::Tensor;
use objective::Objective;
use records::MetricsWriter;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// The training state: model, optimiser, EMA, RNG and data.
pub struct Trainer {
    /// Configuration.
    pub cfg: RunConfig,
    /// Model with the live weights.
    pub flow: DiffFlow,
    /// Data.
    pub data: TrainData,
    /// Adam of the drift and of the score.
    pub adam: [Adam; 2],
    /// EMA of the drift and of the score.
    pub ema: [Ema; 2],
    /// Iterations completed.
    pub step: usize,
    rng: Rng,
    /// Sums since the last metrics line (saved, so that a resumed run writes the same lines).
    acc: MetricSums,
    /// Learning-rate factor from divergence restarts (1 without).
    lr_scale: f64,
    /// Divergence restarts so far.
    restarts: usize,
    /// Model selection so far.
    val: ValState,
    /// The loss of the model kind.
    objective: Objective,
}

impl Trainer {
    /// A fresh run: weights from the seed's init stream.
    pub fn new(cfg: RunConfig, data: TrainData) -> Result<Self> {
        cfg.validate()?;
        if data.is_empty() {
            return Err(Error::data("no training points"));
        }
        if cfg.train.validation.enabled() && data.val.is_empty() {
            return Err(Error::config(
                "train.validation.every > 0 needs validation points (a data file with a \
                 validation split or file)",
            ));
        }
        let objective = Objective::of(&cfg)?;
        let seed = cfg.train.seed;
        let flow = build(&cfg.model, data.dim, &mut Rng::stream(seed, Stream::Init))?;
        let t = &cfg.train;
        let adam = [
            Adam::new(flow.drift.vars(), t.adam)?,
            Adam::new(flow.score.vars(), t.adam)?,
        ];
        let ema = [
            Ema::new(flow.drift.vars(), t.ema_decay, t.ema_start)?,
            Ema::new(flow.score.vars(), t.ema_decay, t.ema_start)?,
        ];
        Ok(Trainer {
            flow,
            data,
            adam,
            ema,
            step: 0,
            rng: Rng::stream(seed, Stream::Train),
            acc: MetricSums::default(),
            lr_scale: 1.0,
            restarts: 0,
            val: ValState::default(),
            objective,
            cfg,
        })
    }

    /// Changes the number of iterations of the run (e.g. to train a resumed run longer);
    /// it cannot go below the iterations already done.
    pub fn set_iters(&mut self, iters: usize) -> Result<()> {
        if iters < self.step {
            return Err(Error::config(format!(
                "train.iters = {iters} is below the {} iterations already done",
                self.step
            )));
        }
        let mut cfg = self.cfg.clone();
        cfg.train.iters = iters;
        cfg.validate()?;
        self.cfg = cfg;
        Ok(())
    }

    /// Divergence restarts so far.
    pub fn restarts(&self) -> usize {
        self.restarts
    }

    /// The learning-rate factor left by divergence restarts (1 without).
    pub fn lr_scale(&self) -> f64 {
        self.lr_scale
    }

    /// Model selection so far (best validation value and step, early stop).
    pub fn validation_state(&self) -> &ValState {
        &self.val
    }

    /// Whether training is over: all iterations done, or stopped early.
    pub fn is_complete(&self) -> bool {
        self.step >= self.cfg.train.iters || self.val.stopped
    }

    /// One iteration: the batch (with the grid, noises, times or probes of the model's loss),
    /// the gradient, clipping, Adam, EMA. A NaN or infinity in the loss, a gradient or the
    /// updated state is [`Error::NonFinite`] naming the step and the quantity.
    pub fn train_step(&mut self) -> Result<StepStats> {
        let t = self.cfg.train.clone();
        let (mut g, n) =
            self.objective
                .gradient(&self.cfg, &self.flow, &self.data, self.step, &mut self.rng)?;
        let step = self.step + 1;
        let non_finite = |what: String| Error::NonFinite { step, what };
        let l = &g.loss;
        if !l.loss.is_finite() {
            return Err(non_finite(if self.objective.has_parts() {
                format!(
                    "loss ({}; prior term {}, path term {})",
                    l.loss, l.prior, l.path
                )
            } else {
                format!("{} loss ({})", self.cfg.model.kind, l.loss)
            }));
        }
        let names = |net: &dyn TimeNet, prefix: &str| -> Vec<String> {
            net.vars()
                .iter()
                .map(|(n, _)| format!("{prefix}.{n}"))
                .collect()
        };
        let (drift_names, score_names) = (
            names(self.flow.drift.as_ref(), "drift"),
            names(self.flow.score.as_ref(), "score"),
        );
        let grads = drift_names.iter().zip(&g.drift);
        if let Some(name) = first_non_finite(grads.chain(score_names.iter().zip(&g.score)))? {
            return Err(non_finite(format!("gradient of {name}")));
        }
        let max_norm = if t.clip > 0.0 { t.clip } else { f64::INFINITY };
        let grad_norm = clip_global_norm(&mut [&mut g.drift, &mut g.score], max_norm)?;
        if !grad_norm.is_finite() {
            return Err(non_finite(format!("gradient norm ({grad_norm})")));
        }
        let (lr_f, lr_s) = self.cfg.learning_rates();
        let lr_f = step_decay(lr_f, t.lr_decay, t.lr_decay_every, self.step) * self.lr_scale;
        let lr_s = step_decay(lr_s, t.lr_decay, t.lr_decay_every, self.step) * self.lr_scale;
        self.adam[0].update(self.flow.drift.vars(), &g.drift, lr_f)?;
        self.adam[1].update(self.flow.score.vars(), &g.score, lr_s)?;
        self.ema[0].update(self.flow.drift.vars())?;
        self.ema[1].update(self.flow.score.vars())?;
        if let Some(what) = self.non_finite_state()? {
            return Err(non_finite(format!("{what} after the update")));
        }
        self.step = step;
        Ok(StepStats {
            step,
            loss: g.loss,
            n,
            lr: lr_f,
            grad_norm,
        })
    }

    /// The first non-finite tensor of the training state (weights, Adam moments, EMA), named.
    fn non_finite_state(&self) -> Result<Option<String>> {
        for (k, net, prefix) in [
            (0, self.flow.drift.as_ref(), "drift"),
            (1, self.flow.score.as_ref(), "score"),
        ] {
            for (i, (name, v)) in net.vars().iter().enumerate() {
                for (kind, t) in [
                    ("parameter", v.as_tensor()),
                    ("Adam first moment of", &self.adam[k].m[i]),
                    ("Adam second moment of", &self.adam[k].v[i]),
                    ("EMA of", &self.ema[k].shadow[i]),
                ] {
                    if !all_finite(t)? {
                        return Ok(Some(format!("{kind} {prefix}.{name}")));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Trains until `cfg.train.iters`, writing `metrics.jsonl` lines and checkpoints into `dir`
    /// when given (a fresh run first writes its step-0 checkpoint, so that the folder always
    /// holds a complete one). Stops early, with a checkpoint, when `stop` becomes true
    /// ([`Error::Interrupted`]).
    ///
    /// A NaN or infinity in the loss, a gradient or the state stops training with
    /// [`Error::NonFinite`] naming the step and the quantity; the checkpoint on disk is the
    /// last good one (a bad state is never saved). With `train.on_nan.action = restart` (and
    /// `dir` given), training instead goes back to that checkpoint, multiplies the learning
    /// rate by `lr_factor` and goes on, at most `max_restarts` times; the batches replayed
    /// are the same (the RNG state is restored), only the learning rate differs.
    pub fn run(
        &mut self,
        dir: Option<&Path>,
        obs: &mut dyn Observer,
        stop: Option<&AtomicBool>,
    ) -> Result<()> {
        obs.start(self.step, self.cfg.train.iters);
        let mut metrics = None;
        if let Some(d) = dir {
            checkpoint::remove_stale_temps(&d.join(MODEL_FILE));
            checkpoint::remove_stale_temps(&d.join(BEST_FILE));
            checkpoint::remove_stale_temps(&d.join(METRICS_FILE));
            if self.step == 0 {
                self.save(d)?;
            }
            metrics = Some(MetricsWriter::open(&d.join(METRICS_FILE), self.step)?);
        }
        loop {
            let (step, what) = match self.run_steps(dir, metrics.as_mut(), obs, stop) {
                Err(Error::NonFinite { step, what }) => (step, what),
                other => return other,
            };
            let policy = self.cfg.train.on_nan;
            let d = match dir {
                Some(d) if policy.action == NanAction::Restart => d,
                _ => return Err(Error::NonFinite { step, what }),
            };
            if self.restarts >= policy.max_restarts {
                return Err(Error::NonFinite {
                    step,
                    what: format!("{what} (after {} restarts)", self.restarts),
                });
            }
            let (lr_scale, restarts) = (self.lr_scale * policy.lr_factor, self.restarts + 1);
            let path = d.join(MODEL_FILE);
            let run = crate::model::file::read_run(&path)?;
            self.restore(&run.state, &run.file, &path)?;
            self.lr_scale = lr_scale;
            self.restarts = restarts;
            self.save(d)?;
            metrics = Some(MetricsWriter::open(&d.join(METRICS_FILE), self.step)?);
            obs.restart(&Restart {
                failed_step: step,
                what,
                from_step: self.step,
                lr_scale,
                restarts,
            });
        }
    }

    fn run_steps(
        &mut self,
        dir: Option<&Path>,
        mut metrics: Option<&mut MetricsWriter>,
        obs: &mut dyn Observer,
        stop: Option<&AtomicBool>,
    ) -> Result<()> {
        let t = self.cfg.train.clone();
        while self.step < t.iters && !self.val.stopped {
            let s = self.train_step()?;
            obs.step(&s);
            self.acc.add(&s);
            if s.step % t.log_every == 0 || s.step == t.iters {
                let rec = self
                    .acc
                    .record(&s, self.restarts, self.objective.has_parts());
                if let Some(m) = metrics.as_mut() {
                    m.write(&rec)?;
                }
                obs.log(&rec);
            }
            if t.validation.due(s.step, t.iters) {
                let rec = self.validate()?;
                if let Some(m) = metrics.as_mut() {
                    m.write(&rec)?;
                }
                if let (Some(d), true) = (dir, rec.val_best) {
                    self.save_file(&d.join(BEST_FILE))?;
                }
                obs.validation(&rec);
            }
            let interrupted = stop.is_some_and(|f| f.load(Ordering::Relaxed));
            let periodic = t.checkpoint_every > 0 && s.step % t.checkpoint_every == 0;
            if let Some(d) = dir {
                if periodic || interrupted || s.step == t.iters || self.val.stopped {
                    self.save(d)?;
                    obs.checkpoint(s.step);
                }
            }
            if interrupted && !self.is_complete() {
                return Err(Error::Interrupted { step: self.step });
            }
        }
        Ok(())
    }

    /// Measures the validation metric of the sampling weights on (the first
    /// `train.validation.points` of) the validation points and updates the model selection.
    /// A non-finite value is [`Error::NonFinite`] (the divergence guard handles it).
    fn validate(&mut self) -> Result<ValRecord> {
        let v = self.cfg.train.validation.clone();
        let d = self.data.dim;
        let rows = self.data.val.len() / d;
        let n = if v.points == 0 {
            rows
        } else {
            v.points.min(rows)
        };
        let flow = self.sampling_flow(self.cfg.sample.weights)?;
        let c = &self.cfg;
        let elbo_n = c.sample.steps.unwrap_or(c.train.steps.last());
        let s = validation::measure(
            &flow,
            &self.data.val[..n * d],
            &v,
            &c.model.grid,
            elbo_n,
            c.train.seed,
            c.train.threads,
        )?;
        if !s.mean.is_finite() {
            return Err(Error::NonFinite {
                step: self.step,
                what: format!("validation {} ({})", v.metric, s.mean),
            });
        }
        let best = self.val.update(s.mean, self.step, v.patience);
        Ok(ValRecord {
            step: self.step,
            val_metric: v.metric,
            val: s.mean - self.data.standardizer.log_abs_det(),
            val_stderr: s.stderr,
            val_standardised: s.mean,
            val_points: n,
            val_best: best,
            best_step: self.val.best_step,
        })
    }

    /// A copy of the nets with the chosen weights (live or EMA), for sampling and evaluation
    /// while training goes on.
    pub fn sampling_flow(&self, weights: Weights) -> Result<DiffFlow> {
        let ema = (weights == Weights::Ema).then_some([&self.ema[0], &self.ema[1]]);
        snapshot(&self.cfg.model, &self.flow, ema)
    }

    /// The model as it is now, with the chosen weights (default: the run's sampling weights),
    /// in data units.
    pub fn model(&self, weights: Option<Weights>) -> Result<Model> {
        let weights = weights.unwrap_or(self.cfg.sample.weights);
        Ok(Model {
            cfg: self.cfg.clone(),
            flow: self.sampling_flow(weights)?,
            standardizer: self.data.standardizer.clone(),
            columns: self.data.columns.clone(),
            step: self.step,
            validation: self.val.clone(),
            weights,
            path: None,
        })
    }

    /// The held-out evaluation of a finished run in `dir`: the probability-flow NLL and
    /// (not for a CNF) the negative ELBO of up to `points` test points, with the run's
    /// sampling weights of its best checkpoint (with validation) or of the final model,
    /// appended to `metrics.jsonl`. `None` when there are no test points.
    pub fn evaluate_held_out(
        &self,
        dir: &Path,
        points: usize,
        progress: &(dyn Fn(Phase, usize) + Sync),
    ) -> Result<Option<(HeldOutRecord, crate::model::Evaluation)>> {
        let d = self.data.dim;
        let n = (self.data.test.len() / d).min(points);
        if n == 0 {
            return Ok(None);
        }
        let (model, model_step) = match self.val.best {
            Some(_) if dir.join(BEST_FILE).exists() => {
                let m = Model::load_file(&dir.join(BEST_FILE), None)?;
                let step = m.step;
                (m, Some(step))
            }
            _ => (self.model(None)?, None),
        };
        let mut x = self.data.test[..n * d].to_vec();
        self.data.standardizer.invert(&mut x);
        let ev = model.evaluate(&x, &model.default_eval(self.cfg.train.threads), progress)?;
        let rec = HeldOutRecord {
            step: self.step,
            test_nll: ev.nll.mean,
            test_nll_stderr: ev.nll.stderr,
            test_nll_standardised: ev.nll_standardised,
            test_bits_per_dim: ev.bits_per_dim,
            test_elbo: ev.elbo.map_or(f64::NAN, |e| e.mean),
            test_elbo_stderr: ev.elbo.map_or(f64::NAN, |e| e.stderr),
            test_elbo_standardised: ev.elbo_standardised.unwrap_or(f64::NAN),
            test_points: n,
            nfe: ev.nfe,
            weights: model.weights,
            model_step,
        };
        append_metrics(dir, &rec)?;
        Ok(Some((rec, ev)))
    }

    /// Sets the base learning rate of both nets (clearing per-net rates) and, when given,
    /// a constant N: the knobs of training under a budget ([`budget`]).
    pub fn set_schedule(&mut self, lr: f64, n: Option<usize>) {
        let t = &mut self.cfg.train;
        t.lr = lr;
        t.lr_drift = None;
        t.lr_score = None;
        if let Some(n) = n {
            t.steps = crate::sde::StepsSchedule::constant(n);
        }
    }
}

/// The name of the first tensor with a NaN or infinity.
fn first_non_finite<'a>(
    named: impl Iterator<Item = (&'a String, &'a Tensor)>,
) -> Result<Option<String>> {
    for (name, t) in named {
        if !all_finite(t)? {
            return Ok(Some(name.clone()));
        }
    }
    Ok(None)
}

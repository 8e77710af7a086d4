//! The training loop (Algorithm 1 with the stochastic adjoint), its observers, the run folder
//! (`config.toml`, `model.safetensors`, `metrics.jsonl`) and loading a trained model back.

use crate::adjoint::{gradient, LossParts};
use crate::checkpoint::{self, TensorFile};
use crate::config::{DataConfig, ModelConfig, NanAction, RunConfig, Weights};
use crate::data::source::{self, ColumnMap, FileSource};
use crate::data::{toy_2d, Standardizer};
use crate::flow::{DiffFlow, Steps};
use crate::nn::TimeNet;
use crate::optim::{clip_global_norm, step_decay, Adam, Ema};
use crate::rng::{Rng, RngState, Stream};
use crate::sde::{fixed_grid, flexible_grid, GridKind};
use crate::validation::{self, ValRecord, ValState};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// File names inside a run folder.
pub const CONFIG_FILE: &str = "config.toml";
/// The checkpoint.
pub const MODEL_FILE: &str = "model.safetensors";
/// One JSON line per logging interval.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The checkpoint with the best validation metric (when validation is on).
pub const BEST_FILE: &str = "best.safetensors";

/// Training and held-out points in standardised units, with the transform from data units.
#[derive(Clone, Debug)]
pub struct TrainData {
    /// Training pool, standardised. Shapes: [n_train, dim] row-major.
    pub train: Vec<f64>,
    /// Held-out points, standardised. Shapes: [n_test, dim].
    pub test: Vec<f64>,
    /// Data dimension.
    pub dim: usize,
    /// Data units → standardised units.
    pub standardizer: Standardizer,
    /// Validation points, standardised (empty: none). Shapes: [n_val, dim].
    pub val: Vec<f64>,
    /// Width of the dequantisation noise added to each coordinate of every training batch,
    /// in standardised units (`1/std` for a dequantised column, 0 otherwise; empty: none).
    /// Shapes: `[dim]` or `[0]`.
    pub dequantize: Vec<f64>,
    /// File columns → model coordinates (data files only).
    pub columns: Option<ColumnMap>,
    /// What the preprocessing did, one line each (data files only).
    pub notes: Vec<String>,
}

impl TrainData {
    /// Standardises `train` and `test` (data units, [n, dim]) with statistics of `train`.
    pub fn from_points(mut train: Vec<f64>, mut test: Vec<f64>, dim: usize) -> Result<Self> {
        let standardizer = Standardizer::fit(&train, dim)?;
        standardizer.apply(&mut train);
        standardizer.apply(&mut test);
        Ok(TrainData {
            train,
            test,
            dim,
            standardizer,
            val: Vec::new(),
            dequantize: Vec::new(),
            columns: None,
            notes: Vec::new(),
        })
    }

    /// The data of a run's configuration: its file source, else its built-in 2-D set.
    pub fn from_config(cfg: &RunConfig) -> Result<Self> {
        match &cfg.data.file {
            Some(src) => Self::from_file(src, cfg.train.seed),
            None => Self::toy(&cfg.data, cfg.train.seed),
        }
    }

    /// A data file through the pipeline of [`crate::data::source`], with the split and the
    /// held-out dequantisation noise drawn from the seed's data stream.
    pub fn from_file(src: &FileSource, seed: u64) -> Result<Self> {
        let p = source::prepare(src, &mut Rng::stream(seed, Stream::Data))?;
        let s = p.standardizer;
        let (mut train, mut val, mut test) = (p.train, p.val, p.test);
        for x in [&mut train, &mut val, &mut test] {
            s.apply(x);
        }
        let dequantize = if p.columns.dequantized.is_empty() {
            Vec::new()
        } else {
            let mut w = vec![0.0; p.dim];
            for &k in &p.columns.dequantized {
                w[k] = 1.0 / s.std[k];
            }
            w
        };
        Ok(TrainData {
            train,
            test,
            dim: p.dim,
            standardizer: s,
            val,
            dequantize,
            columns: Some(p.columns),
            notes: p.notes,
        })
    }

    /// `b` training points drawn with replacement from `rng`, plus fresh dequantisation
    /// noise for the dequantised coordinates (drawn after the rows, row by row).
    /// Shapes: → [b, dim].
    pub fn draw_batch(&self, b: usize, rng: &mut Rng) -> Vec<f64> {
        let (d, rows) = (self.dim, self.len());
        let mut x0 = Vec::with_capacity(b * d);
        for _ in 0..b {
            let r = rng.below(rows);
            x0.extend_from_slice(&self.train[r * d..(r + 1) * d]);
        }
        if !self.dequantize.is_empty() {
            for row in x0.chunks_exact_mut(d) {
                for (x, &w) in row.iter_mut().zip(&self.dequantize) {
                    if w > 0.0 {
                        *x += w * rng.uniform();
                    }
                }
            }
        }
        x0
    }

    /// A built-in 2-D set: `train_size + test_size` points generated together from the seed's
    /// data stream (so both share the rescaling), shuffled, split, then standardised.
    pub fn toy(cfg: &DataConfig, seed: u64) -> Result<Self> {
        let mut rng = Rng::stream(seed, Stream::Data);
        let n = cfg.train_size + cfg.test_size;
        let mut all = toy_2d(&cfg.dataset, n, cfg.noise, &mut rng)?;
        shuffle_rows(&mut all, 2, &mut rng);
        let test = all.split_off(2 * cfg.train_size);
        Self::from_points(all, test, 2)
    }

    /// Number of training points.
    pub fn len(&self) -> usize {
        self.train.len() / self.dim
    }

    /// Whether there is no training point.
    pub fn is_empty(&self) -> bool {
        self.train.is_empty()
    }
}

/// Fisher–Yates shuffle of the rows of `x` [n, d].
pub fn shuffle_rows(x: &mut [f64], d: usize, rng: &mut Rng) {
    let n = x.len() / d;
    for i in (1..n).rev() {
        let j = rng.below(i + 1);
        if i != j {
            for k in 0..d {
                x.swap(i * d + k, j * d + k);
            }
        }
    }
}

/// Drift and score nets of `cfg` for dimension `dim`, initialised from `rng` (for the
/// model kinds see [`crate::baselines::build`]).
pub fn build_flow(cfg: &ModelConfig, dim: usize, rng: &mut Rng) -> Result<DiffFlow> {
    crate::baselines::build(cfg, dim, rng)
}

/// What one iteration did.
#[derive(Clone, Debug, PartialEq)]
pub struct StepStats {
    /// Iterations completed (1 after the first).
    pub step: usize,
    /// Batch-mean loss (negative ELBO, nats, standardised units).
    pub loss: LossParts,
    /// Number of steps N used.
    pub n: usize,
    /// Learning rate of the drift.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// One line of `metrics.jsonl`: means over the iterations since the previous line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Iterations completed.
    pub step: usize,
    /// Mean loss (negative ELBO, nats per sample, standardised units).
    pub loss: f64,
    /// Mean `−log p_B(x_N)`.
    pub prior: f64,
    /// Mean path term.
    pub path: f64,
    /// Mean gradient norm.
    pub grad_norm: f64,
    /// N at the last iteration.
    pub n: usize,
    /// Learning rate at the last iteration.
    pub lr: f64,
    /// Divergence restarts so far (absent from the line when 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restarts: usize,
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

/// A divergence restart: training went back to the last good checkpoint with a smaller
/// learning rate.
#[derive(Clone, Debug, PartialEq)]
pub struct Restart {
    /// The iteration that produced the NaN or infinity.
    pub failed_step: usize,
    /// The quantity that was not finite.
    pub what: String,
    /// The step of the checkpoint training went back to.
    pub from_step: usize,
    /// The learning-rate scale from now on.
    pub lr_scale: f64,
    /// Restarts so far, this one included.
    pub restarts: usize,
}

/// Receives progress from [`Trainer::run`].
pub trait Observer {
    /// Training starts at iteration `first` of `total`.
    fn start(&mut self, _first: usize, _total: usize) {}
    /// One iteration finished.
    fn step(&mut self, _stats: &StepStats) {}
    /// A metrics line was written.
    fn log(&mut self, _record: &LogRecord) {}
    /// A checkpoint was written after `step` iterations.
    fn checkpoint(&mut self, _step: usize) {}
    /// Training diverged and went back to the last good checkpoint.
    fn restart(&mut self, _restart: &Restart) {}
    /// A validation was done (and written to the metrics).
    fn validation(&mut self, _record: &ValRecord) {}
}

/// An observer that ignores everything.
pub struct Silent;
impl Observer for Silent {}

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
    acc: Accumulator,
    /// Learning-rate factor from divergence restarts (1 without).
    lr_scale: f64,
    /// Divergence restarts so far.
    restarts: usize,
    /// Model selection so far.
    val: ValState,
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
        if cfg.model.kind == crate::config::ModelKind::Cnf {
            return Err(Error::config(
                "a CNF is trained by maximum likelihood (baselines::cnf::CnfTrainer)",
            ));
        }
        let seed = cfg.train.seed;
        let flow = build_flow(&cfg.model, data.dim, &mut Rng::stream(seed, Stream::Init))?;
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
            acc: Accumulator::default(),
            lr_scale: 1.0,
            restarts: 0,
            val: ValState::default(),
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

    /// The time grid for the next iteration (draws from the training stream when flexible).
    fn next_steps(&mut self, n: usize) -> Steps {
        let spec = &self.cfg.model.grid;
        let t = match self.cfg.train.grid {
            GridKind::Fixed => fixed_grid(spec, n),
            GridKind::Flexible => flexible_grid(spec, n, &mut self.rng),
        };
        Steps::new(t, &self.flow.diffusion)
    }

    /// One iteration: grid, batch, noises, gradient, clipping, Adam, EMA.
    pub fn train_step(&mut self) -> Result<StepStats> {
        let t = self.cfg.train.clone();
        let (d, b) = (self.data.dim, t.batch);
        let n = t.steps.at(self.step);
        let steps = self.next_steps(n);
        let x0 = self.data.draw_batch(b, &mut self.rng);
        let dtype = self.flow.dtype();
        let x0 = Tensor::from_vec(x0, (b, d), &Device::Cpu)?.to_dtype(dtype)?;
        // Drawn straight into the model's precision (the same values as converting the f64
        // draws): no [N, B, d] f64 copy.
        let noise = match dtype {
            DType::F32 => {
                let v: Vec<f32> = (0..n * b * d).map(|_| self.rng.normal() as f32).collect();
                Tensor::from_vec(v, (n, b, d), &Device::Cpu)?
            }
            _ => Tensor::from_vec(self.rng.normals(n * b * d), (n, b, d), &Device::Cpu)?
                .to_dtype(dtype)?,
        };
        let mut g = gradient(&self.flow, &x0, &steps, &noise, t.grad, t.chunks, t.threads)?;
        let step = self.step + 1;
        let non_finite = |what: String| Error::NonFinite { step, what };
        let l = &g.loss;
        if !l.loss.is_finite() {
            return Err(non_finite(format!(
                "loss ({}; prior term {}, path term {})",
                l.loss, l.prior, l.path
            )));
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
            let (_, state, file) = read_run(&path)?;
            self.restore(&state, &file, &path)?;
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
                let rec = self.acc.record(&s, self.restarts);
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
        let s = validation::measure(&flow, &self.data.val[..n * d], &self.cfg)?;
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

    /// Writes the checkpoint `dir/model.safetensors` atomically (temp file, fsync, rename:
    /// the previous checkpoint stays complete until the new one replaces it). Refuses to
    /// write a state with a NaN or infinity ([`Error::NonFinite`]).
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.save_file(&dir.join(MODEL_FILE))
    }

    /// [`Trainer::save`] to the file `path` (e.g. the best checkpoint).
    pub fn save_file(&self, path: &Path) -> Result<()> {
        if let Some(what) = self.non_finite_state()? {
            return Err(Error::NonFinite {
                step: self.step,
                what: format!("{what} (checkpoint not written)"),
            });
        }
        let mut tensors = BTreeMap::new();
        for (k, (net, prefix)) in [
            (self.flow.drift.as_ref(), "drift"),
            (self.flow.score.as_ref(), "score"),
        ]
        .into_iter()
        .enumerate()
        {
            tensors.extend(checkpoint::net_tensors(net, prefix));
            for (i, (name, _)) in net.vars().iter().enumerate() {
                tensors.insert(
                    format!("ema.{prefix}.{name}"),
                    self.ema[k].shadow[i].clone(),
                );
                tensors.insert(format!("adam.m.{prefix}.{name}"), self.adam[k].m[i].clone());
                tensors.insert(format!("adam.v.{prefix}.{name}"), self.adam[k].v[i].clone());
            }
        }
        let state = TrainState {
            step: self.step,
            adam_steps: [self.adam[0].step, self.adam[1].step],
            ema_updates: [self.ema[0].updates, self.ema[1].updates],
            rng: self.rng.state(),
            standardizer: self.data.standardizer.clone(),
            dim: self.data.dim,
            metrics: self.acc.clone(),
            lr_scale: self.lr_scale,
            restarts: self.restarts,
            validation: self.val.clone(),
            columns: self.data.columns.clone(),
        };
        let mut meta = BTreeMap::new();
        meta.insert("format".into(), "diffflow".into());
        meta.insert("version".into(), env!("CARGO_PKG_VERSION").into());
        meta.insert("config".into(), self.cfg.to_toml()?);
        meta.insert(
            "state".into(),
            serde_json::to_string(&state).map_err(|e| Error::config(e.to_string()))?,
        );
        checkpoint::write(path, &tensors, &meta)
    }

    /// Restores a run from `dir/model.safetensors` (for `--resume`): weights, EMA, Adam
    /// moments, step, RNG state, metrics sums and restart count, so that the resumed run
    /// continues exactly as the uninterrupted one would. `data` must be the run's data,
    /// regenerated from its configuration (checked through the standardisation, which must
    /// agree to the bit).
    pub fn resume(dir: &Path, data: TrainData) -> Result<Self> {
        Self::resume_with(dir, |_| Ok(data))
    }

    /// [`Trainer::resume`] with the data built from the run's configuration by `make_data`.
    pub fn resume_with(
        dir: &Path,
        make_data: impl FnOnce(&RunConfig) -> Result<TrainData>,
    ) -> Result<Self> {
        let path = dir.join(MODEL_FILE);
        if !path.exists() {
            return Err(Error::checkpoint(
                &path,
                "no checkpoint to resume from (is this a run folder written by `diffflow train`?)",
            ));
        }
        let (cfg, state, file) = read_run(&path)?;
        let data = make_data(&cfg)?;
        if data.standardizer != state.standardizer || data.columns != state.columns {
            return Err(Error::checkpoint(
                &path,
                "the training data differ from the run's (their standardisation does not match \
                 the checkpoint's): resume needs the same data set, seed and sizes",
            ));
        }
        let mut tr = Trainer::new(cfg, data)?;
        tr.restore(&state, &file, &path)?;
        Ok(tr)
    }

    fn restore(&mut self, state: &TrainState, file: &TensorFile, path: &Path) -> Result<()> {
        if state.dim != self.data.dim {
            return Err(Error::checkpoint(
                path,
                format!(
                    "model has dimension {}, data has {}",
                    state.dim, self.data.dim
                ),
            ));
        }
        check_tensors(&self.flow, file, path)?;
        for (k, prefix) in ["drift", "score"].into_iter().enumerate() {
            let net: &dyn TimeNet = if k == 0 {
                self.flow.drift.as_ref()
            } else {
                self.flow.score.as_ref()
            };
            checkpoint::load_net(net, prefix, file, path)?;
            for (i, (name, _)) in net.vars().iter().enumerate() {
                let get = |key: String| file.get(&key, path).cloned();
                self.ema[k].shadow[i] = get(format!("ema.{prefix}.{name}"))?;
                self.adam[k].m[i] = get(format!("adam.m.{prefix}.{name}"))?;
                self.adam[k].v[i] = get(format!("adam.v.{prefix}.{name}"))?;
            }
            self.adam[k].step = state.adam_steps[k];
            self.ema[k].updates = state.ema_updates[k];
        }
        self.step = state.step;
        self.rng = Rng::from_state(&state.rng)
            .map_err(|e| Error::checkpoint(path, format!("stored state: {e}")))?;
        self.data.standardizer = state.standardizer.clone();
        self.acc = state.metrics.clone();
        self.lr_scale = state.lr_scale;
        self.restarts = state.restarts;
        self.val = state.validation.clone();
        Ok(())
    }

    /// A copy of the model with the chosen weights (live or EMA), for sampling.
    pub fn sampling_flow(&self, weights: Weights) -> Result<DiffFlow> {
        let flow = build_flow(&self.cfg.model, self.data.dim, &mut Rng::new(0))?;
        for (k, (src, dst)) in [
            (self.flow.drift.as_ref(), flow.drift.as_ref()),
            (self.flow.score.as_ref(), flow.score.as_ref()),
        ]
        .into_iter()
        .enumerate()
        {
            for (b, bsrc) in dst.buffers().iter().zip(src.buffers()) {
                b.1.set(bsrc.1.as_tensor())?;
            }
            for (i, ((_, v), (_, vsrc))) in dst.vars().iter().zip(src.vars()).enumerate() {
                match weights {
                    Weights::Live => v.set(vsrc.as_tensor())?,
                    Weights::Ema => v.set(&self.ema[k].shadow[i])?,
                }
            }
        }
        Ok(flow)
    }
}

/// The part of the training state that is not a tensor (saved as JSON metadata).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainState {
    step: usize,
    adam_steps: [u64; 2],
    ema_updates: [u64; 2],
    rng: RngState,
    standardizer: Standardizer,
    dim: usize,
    /// Sums since the last metrics line.
    #[serde(default)]
    metrics: Accumulator,
    #[serde(default = "one")]
    lr_scale: f64,
    #[serde(default)]
    restarts: usize,
    /// Model selection (absent until the first validation).
    #[serde(default, skip_serializing_if = "ValState::is_initial")]
    validation: ValState,
    /// File columns → model coordinates (data files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    columns: Option<ColumnMap>,
}

fn one() -> f64 {
    1.0
}

/// Whether every value of `t` is finite (a NaN or ±inf makes the f64 sum non-finite; f32
/// values cannot overflow an f64 sum).
fn all_finite(t: &Tensor) -> Result<bool> {
    if !matches!(t.dtype(), DType::F32 | DType::F64) {
        return Ok(true);
    }
    let sum = t.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
    if sum.is_finite() {
        return Ok(true);
    }
    // An f64 sum can overflow with finite values: look at each one.
    let v = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok(v.iter().all(|x| x.is_finite()))
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

/// Reads and validates a run checkpoint: safetensors structure, content checksum, metadata
/// (format, config, state) and their consistency. Tensors are checked against the model by
/// [`check_tensors`] once it is built.
fn read_run(path: &Path) -> Result<(RunConfig, TrainState, TensorFile)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_run(&bytes).map_err(|e| match e {
        Error::Checkpoint { msg, .. } => Error::checkpoint(path, msg),
        other => Error::checkpoint(path, other.to_string()),
    })
}

/// [`read_run`] on bytes (errors carry an empty path; the caller adds it). Exposed for the
/// fuzz targets.
#[doc(hidden)]
pub fn parse_run_bytes(bytes: &[u8]) -> Result<()> {
    let (cfg, state, file) = parse_run(bytes)?;
    let flow = build_flow(&cfg.model, state.dim, &mut Rng::new(0))?;
    check_tensors(&flow, &file, Path::new(""))
}

fn parse_run(bytes: &[u8]) -> Result<(RunConfig, TrainState, TensorFile)> {
    let path = Path::new("");
    let bad = |msg: String| Error::checkpoint(path, msg);
    let file = checkpoint::from_bytes(bytes).map_err(bad)?;
    if file.metadata.get("format").map(String::as_str) != Some("diffflow") {
        return Err(bad("not a diffflow checkpoint (metadata 'format')".into()));
    }
    if !file.verified {
        return Err(bad(format!(
            "no content checksum (metadata '{}'): not written by diffflow",
            checkpoint::CHECKSUM_KEY
        )));
    }
    let cfg = RunConfig::from_toml(file.meta("config", path)?)
        .map_err(|e| bad(format!("stored config: {e}")))?;
    let state: TrainState = serde_json::from_str(file.meta("state", path)?)
        .map_err(|e| bad(format!("stored state: {e}")))?;
    state
        .standardizer
        .validate()
        .map_err(|e| bad(format!("stored state: {e}")))?;
    if state.standardizer.mean.len() != state.dim {
        return Err(bad(format!(
            "stored state: standardisation has {} columns, dimension is {}",
            state.standardizer.mean.len(),
            state.dim
        )));
    }
    let s = state.step as u64;
    if state.adam_steps != [s, s] || state.ema_updates != [s, s] {
        return Err(bad(format!(
            "stored state: step {} but Adam steps {:?} and EMA updates {:?}",
            state.step, state.adam_steps, state.ema_updates
        )));
    }
    if !(state.lr_scale.is_finite() && state.lr_scale > 0.0) {
        return Err(bad(format!(
            "stored state: learning-rate scale {} is not > 0",
            state.lr_scale
        )));
    }
    Rng::from_state(&state.rng).map_err(|e| bad(format!("stored state: {e}")))?;
    state
        .validation
        .validate(state.step)
        .map_err(|e| bad(format!("stored state: {e}")))?;
    if let Some(c) = &state.columns {
        c.validate(state.dim)
            .map_err(|e| bad(format!("stored state: {e}")))?;
    }
    // The model about to be built must be of the order of what the file holds: a hostile
    // `dim` must not make us allocate a huge network before the shapes are compared (which
    // gives the precise error).
    let held: usize = file
        .tensors
        .iter()
        .filter(|(n, _)| n.starts_with("drift."))
        .map(|(_, t)| t.elem_count())
        .sum();
    let limit = 4 * held + (1 << 20);
    let needed = cfg.model.net.num_params(state.dim.min(limit));
    if state.dim > limit || needed > limit {
        return Err(bad(format!(
            "stored state: dimension {} needs {} drift parameters, far more than the file \
             holds ({held})",
            state.dim, needed
        )));
    }
    Ok((cfg, state, file))
}

/// Checks that `file` holds exactly the tensors of a run of `flow`: live weights and
/// buffers, EMA weights and both Adam moments, each with the network's shape and dtype
/// and with finite values. Errors name the tensor.
fn check_tensors(flow: &DiffFlow, file: &TensorFile, path: &Path) -> Result<()> {
    let mut expected: BTreeMap<String, &candle_core::Var> = BTreeMap::new();
    for (net, prefix) in [
        (flow.drift.as_ref(), "drift"),
        (flow.score.as_ref(), "score"),
    ] {
        for (name, v) in net.vars().iter().chain(net.buffers()) {
            expected.insert(format!("{prefix}.{name}"), v);
        }
        for (name, v) in net.vars() {
            for kind in ["ema", "adam.m", "adam.v"] {
                expected.insert(format!("{kind}.{prefix}.{name}"), v);
            }
        }
    }
    let bad = |msg: String| Error::checkpoint(path, msg);
    if let Some(name) = file.tensors.keys().find(|k| !expected.contains_key(*k)) {
        return Err(bad(format!(
            "unexpected tensor '{name}' (not part of the configured model)"
        )));
    }
    for (key, var) in &expected {
        let t = file.get(key, path)?;
        if t.dims() != var.dims() {
            return Err(bad(format!(
                "tensor '{key}' has shape {:?}, the configured network needs {:?}",
                t.dims(),
                var.dims()
            )));
        }
        if t.dtype() != var.dtype() {
            return Err(bad(format!(
                "tensor '{key}' has dtype {:?}, the configured precision needs {:?}",
                t.dtype(),
                var.dtype()
            )));
        }
        if !all_finite(t)? {
            return Err(bad(format!("tensor '{key}' holds NaN or infinite values")));
        }
    }
    Ok(())
}

/// A trained model loaded from a run folder, ready for sampling and evaluation.
pub struct LoadedRun {
    /// The run's configuration.
    pub cfg: RunConfig,
    /// The model with the requested weights.
    pub flow: DiffFlow,
    /// Data units → standardised units.
    pub standardizer: Standardizer,
    /// Iterations trained.
    pub step: usize,
    /// File columns → model coordinates (runs on a data file).
    pub columns: Option<ColumnMap>,
    /// Model selection when this checkpoint was written.
    pub validation: ValState,
    /// The file loaded.
    pub path: PathBuf,
}

/// Loads `dir/model.safetensors` with live or EMA weights (`None`: the run's default).
pub fn load_run(dir: &Path, weights: Option<Weights>) -> Result<LoadedRun> {
    load_run_file(dir, MODEL_FILE, weights)
}

/// Loads the checkpoint `dir/file` (e.g. [`BEST_FILE`]) with live or EMA weights (`None`:
/// the run's default).
pub fn load_run_file(dir: &Path, file: &str, weights: Option<Weights>) -> Result<LoadedRun> {
    let path: PathBuf = dir.join(file);
    if !path.exists() {
        return Err(Error::checkpoint(
            &path,
            "no checkpoint here (is this a run folder written by `diffflow train`?)",
        ));
    }
    let (cfg, state, file) = read_run(&path)?;
    let flow = build_flow(&cfg.model, state.dim, &mut Rng::new(0))?;
    check_tensors(&flow, &file, &path)?;
    let weights = weights.unwrap_or(cfg.sample.weights);
    for (net, prefix) in [
        (flow.drift.as_ref(), "drift"),
        (flow.score.as_ref(), "score"),
    ] {
        match weights {
            Weights::Live => checkpoint::load_net(net, prefix, &file, &path)?,
            Weights::Ema => {
                // Buffers from the live tensors, parameters from the EMA ones.
                checkpoint::load_net(net, prefix, &file, &path)?;
                checkpoint::load_net_vars(net, &format!("ema.{prefix}"), &file, &path)?;
            }
        }
    }
    Ok(LoadedRun {
        cfg,
        flow,
        standardizer: state.standardizer,
        step: state.step,
        columns: state.columns,
        validation: state.validation,
        path,
    })
}

/// One held-out evaluation, appended to `metrics.jsonl` at the end of training (its fields
/// differ from [`LogRecord`]'s; both have `step`). Nats per sample; `test_nll` and
/// `test_elbo` in data units, `*_standardised` in the model's units like `loss`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeldOutRecord {
    /// Iterations completed.
    pub step: usize,
    /// Mean probability-flow NLL of the held-out points, data units.
    pub test_nll: f64,
    /// Its standard error over the points.
    pub test_nll_stderr: f64,
    /// The same in standardised units.
    pub test_nll_standardised: f64,
    /// `test_nll` in bits per dimension.
    pub test_bits_per_dim: f64,
    /// Mean negative ELBO (13), data units.
    pub test_elbo: f64,
    /// Its standard error over the points.
    pub test_elbo_stderr: f64,
    /// The same in standardised units.
    pub test_elbo_standardised: f64,
    /// Number of held-out points evaluated.
    pub test_points: usize,
    /// Mean velocity evaluations per ODE solve.
    pub nfe: f64,
    /// Weights evaluated (`ema` or `live`).
    pub weights: Weights,
    /// The iteration of the model evaluated when it is the best checkpoint (absent: the
    /// final model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_step: Option<usize>,
}

/// Appends one JSON line (e.g. a [`HeldOutRecord`]) to `dir/metrics.jsonl`.
pub fn append_metrics(dir: &Path, line: &impl Serialize) -> Result<()> {
    let path = dir.join(METRICS_FILE);
    let text = serde_json::to_string(line).map_err(|e| Error::config(e.to_string()))?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    writeln!(file, "{text}").map_err(|e| Error::io(&path, e))
}

/// The `step` of any metrics line.
#[derive(Deserialize)]
struct StepOf {
    step: usize,
}

/// Appends metrics lines; on open, drops lines past `step` (left by an interrupted run), of
/// any shape (training lines and held-out evaluations alike).
struct MetricsWriter {
    file: std::fs::File,
    path: PathBuf,
}

impl MetricsWriter {
    fn open(path: &Path, step: usize) -> Result<Self> {
        let kept: String = match std::fs::read_to_string(path) {
            Ok(text) => text
                .lines()
                .filter(|l| serde_json::from_str::<StepOf>(l).is_ok_and(|r| r.step <= step))
                .map(|l| format!("{l}\n"))
                .collect(),
            Err(_) => String::new(),
        };
        checkpoint::atomic_write(path, kept.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(MetricsWriter {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Appends one line with a single write (a killed process leaves at most one partial
    /// line, which does not parse and is dropped on resume).
    fn write(&mut self, rec: &impl Serialize) -> Result<()> {
        let mut line = serde_json::to_string(rec).map_err(|e| Error::config(e.to_string()))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// Sums of the iterations since the last metrics line.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Accumulator {
    count: usize,
    loss: f64,
    prior: f64,
    path: f64,
    grad_norm: f64,
}

impl Accumulator {
    fn add(&mut self, s: &StepStats) {
        self.count += 1;
        self.loss += s.loss.loss;
        self.prior += s.loss.prior;
        self.path += s.loss.path;
        self.grad_norm += s.grad_norm;
    }

    fn record(&mut self, last: &StepStats, restarts: usize) -> LogRecord {
        let c = self.count.max(1) as f64;
        let r = LogRecord {
            step: last.step,
            loss: self.loss / c,
            prior: self.prior / c,
            path: self.path / c,
            grad_norm: self.grad_norm / c,
            n: last.n,
            lr: last.lr,
            restarts,
        };
        *self = Accumulator::default();
        r
    }
}

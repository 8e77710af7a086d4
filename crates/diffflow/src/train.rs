//! The training loop (Algorithm 1 with the stochastic adjoint), its observers, the run folder
//! (`config.toml`, `model.safetensors`, `metrics.jsonl`) and loading a trained model back.

use crate::adjoint::{gradient, LossParts};
use crate::checkpoint::{self, TensorFile};
use crate::config::{DataConfig, ModelConfig, RunConfig, Weights};
use crate::data::{toy_2d, Standardizer};
use crate::flow::{DiffFlow, Steps};
use crate::nn::{Mlp, TimeNet};
use crate::optim::{clip_global_norm, step_decay, Adam, Ema};
use crate::rng::{Rng, RngState, Stream};
use crate::sde::{fixed_grid, flexible_grid, GridKind};
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
        })
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

/// Drift and score nets of `cfg` for dimension `dim`, initialised from `rng`.
pub fn build_flow(cfg: &ModelConfig, dim: usize, rng: &mut Rng) -> Result<DiffFlow> {
    let dtype = cfg.precision.dtype();
    Ok(DiffFlow {
        drift: Box::new(Mlp::new(dim, &cfg.net, dtype, rng)?),
        score: Box::new(Mlp::new(dim, &cfg.net, dtype, rng)?),
        diffusion: cfg.g,
    })
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
}

impl Trainer {
    /// A fresh run: weights from the seed's init stream.
    pub fn new(cfg: RunConfig, data: TrainData) -> Result<Self> {
        cfg.validate()?;
        if data.is_empty() {
            return Err(Error::data("no training points"));
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
            cfg,
        })
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
        let rows = self.data.len();
        let mut x0 = Vec::with_capacity(b * d);
        for _ in 0..b {
            let r = self.rng.below(rows);
            x0.extend_from_slice(&self.data.train[r * d..(r + 1) * d]);
        }
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
        if !g.loss.loss.is_finite() {
            return Err(Error::NonFinite {
                step,
                what: format!("loss ({})", g.loss.loss),
            });
        }
        let max_norm = if t.clip > 0.0 { t.clip } else { f64::INFINITY };
        let grad_norm = clip_global_norm(&mut [&mut g.drift, &mut g.score], max_norm)?;
        if !grad_norm.is_finite() {
            return Err(Error::NonFinite {
                step,
                what: "gradient norm".into(),
            });
        }
        let (lr_f, lr_s) = self.cfg.learning_rates();
        let lr_f = step_decay(lr_f, t.lr_decay, t.lr_decay_every, self.step);
        let lr_s = step_decay(lr_s, t.lr_decay, t.lr_decay_every, self.step);
        self.adam[0].update(self.flow.drift.vars(), &g.drift, lr_f)?;
        self.adam[1].update(self.flow.score.vars(), &g.score, lr_s)?;
        self.ema[0].update(self.flow.drift.vars())?;
        self.ema[1].update(self.flow.score.vars())?;
        self.step = step;
        Ok(StepStats {
            step,
            loss: g.loss,
            n,
            lr: lr_f,
            grad_norm,
        })
    }

    /// Trains until `cfg.train.iters`, writing `metrics.jsonl` lines and checkpoints into `dir`
    /// when given. Stops early (with a checkpoint) when `stop` becomes true.
    pub fn run(
        &mut self,
        dir: Option<&Path>,
        obs: &mut dyn Observer,
        stop: Option<&AtomicBool>,
    ) -> Result<()> {
        let t = self.cfg.train.clone();
        obs.start(self.step, t.iters);
        let mut metrics = match dir {
            Some(d) => Some(MetricsWriter::open(&d.join(METRICS_FILE), self.step)?),
            None => None,
        };
        let mut acc = Accumulator::default();
        while self.step < t.iters {
            let s = self.train_step()?;
            obs.step(&s);
            acc.add(&s);
            if s.step % t.log_every == 0 || s.step == t.iters {
                let rec = acc.record(&s);
                if let Some(m) = metrics.as_mut() {
                    m.write(&rec)?;
                }
                obs.log(&rec);
            }
            let interrupted = stop.is_some_and(|f| f.load(Ordering::Relaxed));
            let periodic = t.checkpoint_every > 0 && s.step % t.checkpoint_every == 0;
            if let Some(d) = dir {
                if periodic || interrupted || s.step == t.iters {
                    self.save(d)?;
                    obs.checkpoint(s.step);
                }
            }
            if interrupted && self.step < t.iters {
                return Err(Error::Interrupted { step: self.step });
            }
        }
        Ok(())
    }

    /// Writes the checkpoint `dir/model.safetensors` (atomically).
    pub fn save(&self, dir: &Path) -> Result<()> {
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
        };
        let mut meta = BTreeMap::new();
        meta.insert("format".into(), "diffflow".into());
        meta.insert("version".into(), env!("CARGO_PKG_VERSION").into());
        meta.insert("config".into(), self.cfg.to_toml()?);
        meta.insert(
            "state".into(),
            serde_json::to_string(&state).map_err(|e| Error::config(e.to_string()))?,
        );
        checkpoint::write(&dir.join(MODEL_FILE), &tensors, &meta)
    }

    /// Restores a run from `dir/model.safetensors` with its data (for `--resume`).
    pub fn resume(dir: &Path, data: TrainData) -> Result<Self> {
        let path = dir.join(MODEL_FILE);
        let (cfg, state, file) = read_run(&path)?;
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
        for (k, prefix) in ["drift", "score"].into_iter().enumerate() {
            let net: &dyn TimeNet = if k == 0 {
                self.flow.drift.as_ref()
            } else {
                self.flow.score.as_ref()
            };
            checkpoint::load_net(net, prefix, file, path)?;
            for (i, (name, var)) in net.vars().iter().enumerate() {
                let get = |key: String| -> Result<Tensor> {
                    let t = file.get(&key, path)?;
                    if t.dims() != var.dims() {
                        return Err(Error::checkpoint(
                            path,
                            format!(
                                "tensor '{key}' has shape {:?}, expected {:?}",
                                t.dims(),
                                var.dims()
                            ),
                        ));
                    }
                    Ok(t.to_dtype(var.dtype())?)
                };
                self.ema[k].shadow[i] = get(format!("ema.{prefix}.{name}"))?;
                self.adam[k].m[i] = get(format!("adam.m.{prefix}.{name}"))?;
                self.adam[k].v[i] = get(format!("adam.v.{prefix}.{name}"))?;
            }
            self.adam[k].step = state.adam_steps[k];
            self.ema[k].updates = state.ema_updates[k];
        }
        self.step = state.step;
        self.rng = Rng::from_state(&state.rng)?;
        self.data.standardizer = state.standardizer.clone();
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
}

fn read_run(path: &Path) -> Result<(RunConfig, TrainState, TensorFile)> {
    let file = checkpoint::read(path)?;
    if file.metadata.get("format").map(String::as_str) != Some("diffflow") {
        return Err(Error::checkpoint(
            path,
            "not a diffflow checkpoint (metadata 'format')",
        ));
    }
    let cfg = RunConfig::from_toml(file.meta("config", path)?)
        .map_err(|e| Error::checkpoint(path, format!("stored config: {e}")))?;
    let state: TrainState = serde_json::from_str(file.meta("state", path)?)
        .map_err(|e| Error::checkpoint(path, format!("stored state: {e}")))?;
    state
        .standardizer
        .validate()
        .map_err(|e| Error::checkpoint(path, e.to_string()))?;
    Ok((cfg, state, file))
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
}

/// Loads `dir/model.safetensors` with live or EMA weights (`None`: the run's default).
pub fn load_run(dir: &Path, weights: Option<Weights>) -> Result<LoadedRun> {
    let path: PathBuf = dir.join(MODEL_FILE);
    if !path.exists() {
        return Err(Error::checkpoint(
            &path,
            "no checkpoint here (is this a run folder written by `diffflow train`?)",
        ));
    }
    let (cfg, state, file) = read_run(&path)?;
    let flow = build_flow(&cfg.model, state.dim, &mut Rng::new(0))?;
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

    fn write(&mut self, rec: &LogRecord) -> Result<()> {
        let line = serde_json::to_string(rec).map_err(|e| Error::config(e.to_string()))?;
        writeln!(self.file, "{line}").map_err(|e| Error::io(&self.path, e))
    }
}

#[derive(Default)]
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

    fn record(&mut self, last: &StepStats) -> LogRecord {
        let c = self.count.max(1) as f64;
        let r = LogRecord {
            step: last.step,
            loss: self.loss / c,
            prior: self.prior / c,
            path: self.path / c,
            grad_norm: self.grad_norm / c,
            n: last.n,
            lr: last.lr,
        };
        *self = Accumulator::default();
        r
    }
}

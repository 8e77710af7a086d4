//! What training reports: the [`Observer`] of progress, the lines of `metrics.jsonl`
//! ([`LogRecord`], [`HeldOutRecord`], validations' [`crate::validation::ValRecord`]) and the
//! writer that keeps them consistent with the checkpoint.

use crate::adjoint::LossParts;
use crate::checkpoint;
use crate::config::Weights;
use crate::model::file::MetricSums;
use crate::model::METRICS_FILE;
use crate::validation::ValRecord;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What one iteration did.
#[derive(Clone, Debug, PartialEq)]
pub struct StepStats {
    /// Iterations completed (1 after the first).
    pub step: usize,
    /// Batch-mean loss in nats per sample, standardised units: the negative ELBO and its parts
    /// (trajectory losses), the ε loss (DDPM (L_s), as `loss` with zero parts) or the NLL
    /// (CNF, likewise).
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
    /// Mean loss (nats per sample, standardised units; see [`StepStats::loss`]).
    pub loss: f64,
    /// Mean `−log p_B(x_N)` (trajectory losses only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior: Option<f64>,
    /// Mean path term (trajectory losses only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<f64>,
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
pub(crate) struct MetricsWriter {
    file: std::fs::File,
    path: PathBuf,
}

impl MetricsWriter {
    pub(crate) fn open(path: &Path, step: usize) -> Result<Self> {
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
    pub(crate) fn write(&mut self, rec: &impl Serialize) -> Result<()> {
        let mut line = serde_json::to_string(rec).map_err(|e| Error::config(e.to_string()))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| Error::io(&self.path, e))
    }
}

impl MetricSums {
    pub(crate) fn add(&mut self, s: &StepStats) {
        self.count += 1;
        self.loss += s.loss.loss;
        self.prior += s.loss.prior;
        self.path += s.loss.path;
        self.grad_norm += s.grad_norm;
    }

    /// The means as a metrics line; the loss's parts only where the loss has them.
    pub(crate) fn record(&mut self, last: &StepStats, restarts: usize, parts: bool) -> LogRecord {
        let c = self.count.max(1) as f64;
        let r = LogRecord {
            step: last.step,
            loss: self.loss / c,
            prior: parts.then(|| self.prior / c),
            path: parts.then(|| self.path / c),
            grad_norm: self.grad_norm / c,
            n: last.n,
            lr: last.lr,
            restarts,
        };
        *self = MetricSums::default();
        r
    }
}

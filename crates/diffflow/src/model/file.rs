//! The run folder and its checkpoints: file names, and reading a checkpoint back with every
//! check (safetensors structure, content checksum, metadata, configuration, the model's
//! tensors). What a checkpoint holds beyond the model (optimiser moments, RNG state, metrics
//! sums) is read and checked by [`crate::train`].

use crate::checkpoint::{self, TensorFile};
use crate::config::RunConfig;
use crate::data::source::ColumnMap;
use crate::data::Standardizer;
use crate::flow::DiffFlow;
use crate::nn::TimeNet;
use crate::rng::{Rng, RngState};
use crate::validation::ValState;
use crate::{Error, Result};
use candle_core::DType;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The resolved configuration of a run (re-run it with `--config DIR/config.toml`).
pub const CONFIG_FILE: &str = "config.toml";
/// The last checkpoint.
pub const MODEL_FILE: &str = "model.safetensors";
/// One JSON line per logging interval, validation and held-out evaluation.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The checkpoint with the best validation metric (when validation is on).
pub const BEST_FILE: &str = "best.safetensors";

/// The part of a checkpoint's state that is not a tensor (JSON metadata `state`): the model's
/// transform and step, and the trainer's counters, generator state and model selection.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TrainState {
    pub step: usize,
    pub adam_steps: [u64; 2],
    pub ema_updates: [u64; 2],
    pub rng: RngState,
    pub standardizer: Standardizer,
    pub dim: usize,
    /// Sums since the last metrics line.
    #[serde(default)]
    pub metrics: MetricSums,
    #[serde(default = "one")]
    pub lr_scale: f64,
    #[serde(default)]
    pub restarts: usize,
    /// Model selection (absent until the first validation).
    #[serde(default, skip_serializing_if = "ValState::is_initial")]
    pub validation: ValState,
    /// File columns → model coordinates (data files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<ColumnMap>,
}

fn one() -> f64 {
    1.0
}

/// Sums of the training iterations since the last metrics line (saved, so that a resumed
/// run writes the same lines).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetricSums {
    pub count: usize,
    pub loss: f64,
    pub prior: f64,
    pub path: f64,
    pub grad_norm: f64,
}

/// A checkpoint read and checked: its configuration, its state and its tensors.
pub(crate) struct RunFile {
    pub cfg: RunConfig,
    pub state: TrainState,
    pub file: TensorFile,
}

/// Reads and checks the checkpoint `path` (see [`parse_run`]); errors name the file.
pub(crate) fn read_run(path: &Path) -> Result<RunFile> {
    if !path.exists() {
        return Err(Error::checkpoint(
            path,
            "no checkpoint here (is this a run folder written by `diffflow train`?)",
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_run(&bytes).map_err(|e| match e {
        Error::Checkpoint { msg, .. } => Error::checkpoint(path, msg),
        other => Error::checkpoint(path, other.to_string()),
    })
}

/// Checks a checkpoint's bytes: safetensors structure, content checksum, format, the stored
/// configuration, the model part of the state, and that the model it describes is of the
/// order of what the file holds (a hostile dimension must not make us allocate a huge net
/// before the shapes are compared). Errors carry an empty path (the caller adds it).
pub(crate) fn parse_run(bytes: &[u8]) -> Result<RunFile> {
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
    check_state(&state).map_err(|e| bad(format!("stored state: {e}")))?;
    let m = &state;
    let held: usize = file
        .tensors
        .iter()
        .filter(|(n, _)| !n.starts_with("ema.") && !n.starts_with("adam."))
        .map(|(_, t)| t.elem_count())
        .sum();
    let limit = 4 * held + (1 << 20);
    let needed = cfg.model.net_params(m.dim.min(limit));
    if m.dim > limit || needed > limit {
        return Err(bad(format!(
            "stored state: dimension {} needs {} parameters per net, far more than the file \
             holds ({held})",
            m.dim, needed
        )));
    }
    Ok(RunFile { cfg, state, file })
}

/// The state's own consistency: the standardisation and column map against the dimension,
/// the step counts of Adam and the EMA, the learning-rate scale, the generator's state and
/// the model selection.
fn check_state(s: &TrainState) -> std::result::Result<(), String> {
    s.standardizer.validate().map_err(|e| e.to_string())?;
    if s.standardizer.mean.len() != s.dim {
        return Err(format!(
            "standardisation has {} columns, dimension is {}",
            s.standardizer.mean.len(),
            s.dim
        ));
    }
    let step = s.step as u64;
    if s.adam_steps != [step, step] || s.ema_updates != [step, step] {
        return Err(format!(
            "step {} but Adam steps {:?} and EMA updates {:?}",
            s.step, s.adam_steps, s.ema_updates
        ));
    }
    if !(s.lr_scale.is_finite() && s.lr_scale > 0.0) {
        return Err(format!("learning-rate scale {} is not > 0", s.lr_scale));
    }
    Rng::from_state(&s.rng).map_err(|e| e.to_string())?;
    s.validation.validate(s.step).map_err(|e| e.to_string())?;
    if let Some(c) = &s.columns {
        c.validate(s.dim).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Checks that `file` holds exactly the tensors of a run of `flow`: live weights and
/// buffers, EMA weights and both Adam moments, each with the network's shape and dtype and
/// with finite values. Errors name the tensor.
pub(crate) fn check_tensors(flow: &DiffFlow, file: &TensorFile, path: &Path) -> Result<()> {
    let mut expected: BTreeMap<String, &candle_core::Var> = BTreeMap::new();
    for (net, prefix) in nets(flow) {
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

/// The two nets of a model with their checkpoint prefixes, drift first.
pub(crate) fn nets(flow: &DiffFlow) -> [(&dyn TimeNet, &'static str); 2] {
    [
        (flow.drift.as_ref(), "drift"),
        (flow.score.as_ref(), "score"),
    ]
}

/// The model of a checked run file, with the live or the EMA weights (buffers always from
/// the live tensors).
pub(crate) fn load_flow(run: &RunFile, ema: bool, path: &Path) -> Result<DiffFlow> {
    let flow = super::build(&run.cfg.model, run.state.dim, &mut Rng::new(0))?;
    check_tensors(&flow, &run.file, path)?;
    for (net, prefix) in nets(&flow) {
        checkpoint::load_net(net, prefix, &run.file, path)?;
        if ema {
            checkpoint::load_net_vars(net, &format!("ema.{prefix}"), &run.file, path)?;
        }
    }
    Ok(flow)
}

/// Whether every value of `t` is finite (a NaN or ±inf makes the f64 sum non-finite; f32
/// values cannot overflow an f64 sum).
pub(crate) fn all_finite(t: &candle_core::Tensor) -> Result<bool> {
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

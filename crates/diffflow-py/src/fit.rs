//! Training on arrays: the estimator's parameters as a run configuration (as `diffflow train
//! --data FILE` builds it from its flags), the arrays through the library's data pipeline,
//! and the library's trainer with the GIL released, progress reported to a Python callable
//! and Ctrl-C polled between iterations.
//!
//! The run folder is a complete CLI run: the arrays are saved in it as `.npy` files and its
//! configuration names them as its data file, so `diffflow eval`, `sample` and `train
//! --resume` work on it, and the trainer's data (prepared from the arrays in memory) are
//! those the CLI rebuilds from the files (the same pipeline, the same draws).

use crate::model::NativeModel;
use crate::{table, OrPyErr};
use diffflow::checkpoint::atomic_write;
use diffflow::config::{tabular_width, ModelKind, Preset, RunConfig, Weights};
use diffflow::data::source::{Dequantize, FileSource, TableSource};
use diffflow::data::tabular::save_npy;
use diffflow::data::{Table, TrainData};
use diffflow::model::{Model, CONFIG_FILE};
use diffflow::sde::{Diffusion, StepsSchedule};
use diffflow::train::{LogRecord, Observer, StepStats, Trainer};
use diffflow::validation::{ValMetric, ValRecord};
use pyo3::exceptions::{PyKeyboardInterrupt, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The training points, saved in the run folder.
pub const DATA_FILE: &str = "data.npy";
/// The validation points given to `fit`, saved in the run folder.
pub const VAL_FILE: &str = "val.npy";

/// The estimator's parameters (`DiffFlow.get_params()`, numbers checked and strings made by
/// the Python side). `None`: the preset's value.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub struct Params {
    model: String,
    preset: String,
    iters: Option<usize>,
    batch: Option<usize>,
    steps: Option<String>,
    g: Option<String>,
    lr: Option<f64>,
    width: Option<usize>,
    depth: Option<usize>,
    seed: u64,
    threads: Option<usize>,
    dequantize: String,
    val_fraction: f64,
    validate_every: Option<usize>,
    val_metric: Option<String>,
    patience: usize,
    weights: Option<String>,
}

/// The run configuration of `p` before the data are seen, and whether the width is still to
/// be chosen from their dimension (the tabular preset without `width`). `validation`: whether
/// there will be validation points (validation then runs every `validate_every`, by default
/// the preset's interval; without them it is off).
pub fn config(p: &Params, validation: bool) -> diffflow::Result<(RunConfig, bool)> {
    let preset = p.preset.parse::<Preset>()?;
    let mut c = RunConfig::preset(preset, "array").for_model(p.model.parse::<ModelKind>()?);
    let t = &mut c.train;
    if let Some(v) = p.iters {
        t.iters = v;
    }
    if let Some(v) = p.batch {
        t.batch = v;
    }
    if let Some(v) = &p.steps {
        t.steps = StepsSchedule::parse(v)?;
    }
    if let Some(v) = p.lr {
        t.lr = v;
        t.lr_drift = None;
        t.lr_score = None;
    }
    t.seed = p.seed;
    if let Some(v) = p.threads {
        t.threads = v;
    }
    let v = &mut t.validation;
    v.every = match p.validate_every {
        Some(k) => k,
        None if validation => v.every,
        None => 0,
    };
    if let Some(m) = &p.val_metric {
        v.metric = m.parse::<ValMetric>()?;
    }
    v.patience = p.patience;
    let m = &mut c.model;
    if let Some(g) = &p.g {
        m.g = Diffusion::parse(g, m.grid.t_max)?;
    }
    if let Some(v) = p.width {
        m.net.width = v;
    }
    if let Some(v) = p.depth {
        m.net.depth = v;
    }
    if let Some(w) = &p.weights {
        c.sample.weights = w.parse::<Weights>()?;
    }
    Ok((c, preset == Preset::Tabular && p.width.is_none()))
}

/// Saves `t` as `dir/name` and returns its absolute path.
fn save_table(dir: &Path, name: &str, t: &Table) -> diffflow::Result<PathBuf> {
    let path = dir.join(name);
    save_npy(&path, &t.data, t.rows, t.cols)?;
    std::fs::canonicalize(&path).map_err(|e| diffflow::Error::io(&path, e))
}

/// The configuration and data of a run on the arrays `x` (and `x_val`) in `dir`: the arrays
/// saved there and named as the run's data file, prepared by the library's pipeline, the
/// net sized to their dimension; `config.toml` written.
fn prepare_run(
    p: &Params,
    x: Table,
    x_val: Option<Table>,
    dir: &Path,
) -> diffflow::Result<(RunConfig, TrainData)> {
    let (mut cfg, auto_width) = config(p, x_val.is_some() || p.val_fraction > 0.0)?;
    std::fs::create_dir_all(dir).map_err(|e| diffflow::Error::io(dir, e))?;
    let mut file = FileSource::new(save_table(dir, DATA_FILE, &x)?);
    file.validation = x_val
        .as_ref()
        .map(|v| save_table(dir, VAL_FILE, v))
        .transpose()?;
    file.val_fraction = x_val.is_none().then_some(p.val_fraction);
    file.test_fraction = Some(0.0);
    file.dequantize = p.dequantize.parse::<Dequantize>()?;
    let tables = TableSource {
        data: x,
        validation: x_val,
        test: None,
        dequantize: file.dequantize,
        val_fraction: file.val_fraction,
        test_fraction: file.test_fraction,
    };
    let data = TrainData::from_tables(tables, "X", cfg.train.seed)?;
    cfg.data.file = Some(file);
    if auto_width {
        cfg.model.net.width = tabular_width(data.dim);
    }
    cfg.fit_to_data(data.dim, p.width.is_none());
    cfg.data.train_size = data.len();
    cfg.data.test_size = 0;
    cfg.validate()?;
    atomic_write(&dir.join(CONFIG_FILE), cfg.to_toml()?.as_bytes())?;
    Ok((cfg, data))
}

/// Reports each iteration to a Python callable and polls Python's signal handlers (Ctrl-C)
/// between iterations, taking the GIL for that moment only. An exception (KeyboardInterrupt
/// from the handler, or one raised by the callable) sets the trainer's stop flag and is kept.
struct PyObserver<'a> {
    callback: Option<Py<PyAny>>,
    stop: &'a AtomicBool,
    error: Option<PyErr>,
    total: usize,
    val: Option<(f64, bool)>,
}

impl PyObserver<'_> {
    fn report(&mut self, s: &StepStats) -> PyResult<()> {
        Python::attach(|py| {
            py.check_signals()?;
            let Some(cb) = &self.callback else {
                return Ok(());
            };
            let info = PyDict::new(py);
            info.set_item("step", s.step)?;
            info.set_item("total", self.total)?;
            info.set_item("loss", s.loss.loss)?;
            info.set_item("n", s.n)?;
            info.set_item("lr", s.lr)?;
            info.set_item("grad_norm", s.grad_norm)?;
            if let Some((val, best)) = self.val.take() {
                info.set_item("val", val)?;
                info.set_item("val_best", best)?;
            }
            cb.call1(py, (info,)).map(drop)
        })
    }
}

impl Observer for PyObserver<'_> {
    fn start(&mut self, _first: usize, total: usize) {
        self.total = total;
    }

    fn step(&mut self, s: &StepStats) {
        if self.error.is_some() {
            return;
        }
        if let Err(e) = self.report(s) {
            self.error = Some(e);
            self.stop.store(true, Ordering::SeqCst);
        }
    }

    fn log(&mut self, _record: &LogRecord) {}

    fn validation(&mut self, r: &ValRecord) {
        // Reported with the next iteration (or never, after the last one).
        self.val = Some((r.val, r.val_best));
    }
}

/// Trains a model on `x` (`x_val`: validation points) with the parameters `params` into the
/// run folder `run_dir`, calling `callback(info)` after every iteration (a dict: step,
/// total, loss, n, lr, grad_norm, and val, val_best after a validation). Returns the model
/// (the best checkpoint with validation, else the last) and whether training was
/// interrupted (Ctrl-C: it stops after the current iteration with a checkpoint; the model
/// is then the one trained so far). An exception raised by `callback` stops training too and
/// is raised again.
#[pyfunction]
#[pyo3(signature = (x, x_val, run_dir, params, callback=None))]
pub fn fit(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    x_val: Option<&Bound<'_, PyAny>>,
    run_dir: PathBuf,
    params: Params,
    callback: Option<Py<PyAny>>,
) -> PyResult<(NativeModel, bool)> {
    let x = table(x, "X")?;
    let x_val = x_val.map(|v| table(v, "X_val")).transpose()?;
    if let Some(v) = &x_val {
        if v.cols != x.cols {
            return Err(PyValueError::new_err(format!(
                "X_val has {} columns, X has {}",
                v.cols, x.cols
            )));
        }
    }
    let (cfg, data) = prepare_run(&params, x, x_val, &run_dir).py()?;
    let notes = data.notes.clone();
    let mut trainer = Trainer::new(cfg, data).py()?;
    let stop = AtomicBool::new(false);
    let mut obs = PyObserver {
        callback,
        stop: &stop,
        error: None,
        total: 0,
        val: None,
    };
    let result = py.detach(|| trainer.run(Some(&run_dir), &mut obs, Some(&stop)));
    let interrupted = match (result, obs.error) {
        (_, Some(e)) if !e.is_instance_of::<PyKeyboardInterrupt>(py) => return Err(e),
        (Ok(()), None) => false,
        (Ok(()), Some(_)) | (Err(diffflow::Error::Interrupted { .. }), _) => true,
        (Err(e), _) => return Err(crate::py_err(e)),
    };
    let model = Model::load(&run_dir, None, None).py()?;
    Ok((NativeModel::new(model, run_dir, notes), interrupted))
}

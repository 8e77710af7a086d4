//! A trained model for Python ([`NativeModel`]): log-densities by the probability-flow ODE,
//! the ELBO and samples, in the caller's units, with the settings and random streams of
//! `diffflow eval` and `diffflow sample` (the same seed gives the same numbers).

use crate::{array2, run_dir, table, OrPyErr};
use diffflow::config::{ModelKind, Weights};
use diffflow::data::source::Dequantize;
use diffflow::likelihood::{ElboOptions, NllOptions};
use diffflow::model::{column_notes, Checkpoint, Model, SampleGrid, Sampler};
use diffflow::ode::{Method, Tolerances};
use diffflow::rng::{Rng, Stream};
use diffflow::sample::SAMPLE_CHUNK;
use diffflow::sde::Diffusion;
use numpy::{PyArray1, PyArray2};
use pyo3::exceptions::{PyFileNotFoundError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;

/// Worker threads when none are asked for: all cores (results do not depend on it).
#[pyfunction]
pub fn default_threads() -> usize {
    diffflow::par::default_threads()
}

/// A trained model and the run folder it lives in.
#[pyclass(module = "diffflow._native", name = "Model", frozen)]
pub struct NativeModel {
    model: Model,
    dir: PathBuf,
    notes: Vec<String>,
}

impl NativeModel {
    pub fn new(model: Model, dir: PathBuf, mut notes: Vec<String>) -> Self {
        if let Some(map) = &model.columns {
            notes.extend(column_notes(map));
        }
        NativeModel { model, dir, notes }
    }

    /// The rows of `x` as points in the model's coordinates (the columns the model was
    /// trained on, or only the modelled ones), dequantised columns per `dequantize` with
    /// noise seeded by `seed`, as `diffflow eval --data` reads a file.
    fn points(&self, x: &Bound<'_, PyAny>, dequantize: &str, seed: u64) -> PyResult<Vec<f64>> {
        let t = table(x, "X")?;
        let deq = dequantize.parse::<Dequantize>().py()?;
        let mut notes = Vec::new();
        self.model
            .points_from_table(t, "X", None, deq, seed, &mut notes)
            .py()
    }

    fn seed(&self, seed: Option<u64>) -> u64 {
        seed.unwrap_or(self.model.cfg.train.seed)
    }
}

/// Loads the run folder `run_dir` written by `diffflow train` or `DiffFlow.save`: the
/// checkpoint `checkpoint` ("best", "last"; default: best when there is one) with the weights
/// `weights` ("ema", "live"; default: the run's).
#[pyfunction]
#[pyo3(signature = (run_dir, checkpoint=None, weights=None))]
pub fn load(
    run_dir: PathBuf,
    checkpoint: Option<&str>,
    weights: Option<&str>,
) -> PyResult<NativeModel> {
    if !run_dir.is_dir() {
        return Err(PyFileNotFoundError::new_err(format!(
            "{}: no such run folder",
            run_dir.display()
        )));
    }
    let which = checkpoint.map(str::parse::<Checkpoint>).transpose().py()?;
    let weights = weights.map(str::parse::<Weights>).transpose().py()?;
    let model = Model::load(&run_dir, which, weights).py()?;
    Ok(NativeModel::new(model, run_dir, Vec::new()))
}

#[pymethods]
impl NativeModel {
    /// Dimension of the model (modelled columns).
    #[getter]
    fn dim(&self) -> usize {
        self.model.dim()
    }

    /// Columns of the arrays it was trained on (constant ones included).
    #[getter]
    fn n_columns(&self) -> usize {
        self.model.columns.as_ref().map_or(self.dim(), |c| c.width)
    }

    /// The model kind: diffflow, ddpm-l, ddpm-ls or cnf.
    #[getter]
    fn kind(&self) -> &'static str {
        self.model.kind().key()
    }

    /// Iterations trained.
    #[getter]
    fn step(&self) -> usize {
        self.model.step
    }

    /// Trainable parameters of both nets.
    #[getter]
    fn n_params(&self) -> usize {
        self.model.num_params()
    }

    /// The run folder.
    #[getter]
    fn run_dir(&self) -> PathBuf {
        self.dir.clone()
    }

    /// The checkpoint file the model was loaded from.
    #[getter]
    fn checkpoint(&self) -> Option<PathBuf> {
        self.model.path.clone()
    }

    /// What the preprocessing did and what the densities are of (one line each).
    #[getter]
    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }

    /// The run's configuration as TOML (`config.toml`).
    fn config_toml(&self) -> PyResult<String> {
        self.model.cfg.to_toml().py()
    }

    /// The estimator parameters that the run's configuration determines.
    fn params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = &self.model.cfg;
        let t = &c.train;
        let d = PyDict::new(py);
        d.set_item("model", c.model.kind.key())?;
        d.set_item("iters", t.iters)?;
        d.set_item("batch", t.batch)?;
        d.set_item("steps", t.steps.to_string())?;
        match c.model.g {
            Diffusion::Constant { value } => d.set_item("g", value)?,
            Diffusion::Linear { start, end, .. } => {
                d.set_item("g", format!("linear:{start}:{end}"))?
            }
            g @ Diffusion::Vp { .. } => d.set_item("g", g.to_string())?,
        }
        d.set_item("lr", t.lr)?;
        d.set_item("width", c.model.net.width)?;
        d.set_item("depth", c.model.net.depth)?;
        d.set_item("seed", t.seed)?;
        d.set_item("validate_every", t.validation.every)?;
        d.set_item("val_metric", t.validation.metric.to_string())?;
        d.set_item("patience", t.validation.patience)?;
        d.set_item(
            "weights",
            match c.sample.weights {
                Weights::Ema => "ema",
                Weights::Live => "live",
            },
        )?;
        if let Some(f) = &c.data.file {
            d.set_item("dequantize", format!("{:?}", f.dequantize).to_lowercase())?;
            d.set_item("val_fraction", f.fractions().1)?;
        }
        Ok(d)
    }

    /// Log-density of each row of `x` in its own units (the standardisation's log-Jacobian
    /// included) by the probability-flow ODE: Dormand–Prince with tolerances `rtol`, `atol`,
    /// exact divergence, `chunk` points per solve; as `diffflow eval` computes its `nll`
    /// (`score_samples = -nll`, the same numbers for the same `chunk` and seed). Integer
    /// values in dequantised columns get `U[0, 1)` noise per `dequantize` (seeded by
    /// `seed`, default the run's). Shapes: x [n, columns] or [n, dim] -> [n].
    #[pyo3(signature = (x, threads, rtol=1e-5, atol=1e-5, chunk=256, seed=None, dequantize="auto"))]
    #[allow(clippy::too_many_arguments)]
    fn score_samples<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        threads: usize,
        rtol: f64,
        atol: f64,
        chunk: usize,
        seed: Option<u64>,
        dequantize: &str,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        let seed = self.seed(seed);
        let pts = self.points(x, dequantize, seed)?;
        let opts = NllOptions {
            tol: Tolerances {
                rtol,
                atol,
                ..Tolerances::default()
            },
            chunk: chunk.max(1),
            threads: threads.max(1),
            ..NllOptions::default()
        };
        let grid = self.model.cfg.model.grid;
        let t = [grid.t_min, grid.t_max];
        let nll = py
            .detach(|| {
                let mut rng = Rng::stream(seed, Stream::Eval);
                self.model.nll(&pts, &opts, Some(&t), &mut rng, &|_| {})
            })
            .py()?;
        Ok(PyArray1::from_vec(py, nll.nll.iter().map(|v| -v).collect()))
    }

    /// The evidence lower bound (13) of each row of `x`, a lower bound on its log-density
    /// (in expectation), averaged over `trajectories` forward trajectories on the run's
    /// fixed grid of `steps` steps (default its sampling N); as `diffflow eval` computes its
    /// `elbo` (`elbo = -elbo_cli` with the same seed and chunk). A CNF has none (an error).
    /// Shapes: x [n, columns] or [n, dim] -> [n].
    #[pyo3(signature = (x, threads, steps=None, trajectories=10, chunk=256, seed=None, dequantize="auto"))]
    #[allow(clippy::too_many_arguments)]
    fn elbo<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        threads: usize,
        steps: Option<usize>,
        trajectories: usize,
        chunk: usize,
        seed: Option<u64>,
        dequantize: &str,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        if steps == Some(0) || trajectories == 0 {
            return Err(PyValueError::new_err("steps and trajectories must be >= 1"));
        }
        let seed = self.seed(seed);
        let pts = self.points(x, dequantize, seed)?;
        let grid = self.model.elbo_steps(steps);
        let opts = ElboOptions {
            trajectories,
            chunk: chunk.max(1),
            threads: threads.max(1),
        };
        let neg = py
            .detach(|| {
                let mut rng = Rng::stream(seed, Stream::Eval);
                // `diffflow eval` solves the NLL first, which takes one draw of this stream.
                rng.next_u64();
                self.model.elbo(&pts, &grid, &opts, &mut rng, &|_| {})
            })
            .py()?;
        Ok(PyArray1::from_vec(py, neg.iter().map(|v| -v).collect()))
    }

    /// `n` samples with all the columns of the training arrays (constant ones filled in;
    /// dequantised ones rounded down with `quantize`), as `diffflow sample` draws them:
    /// SDE (16) with `lam` (default: the run's λ; 1 = backward SDE, 0 = probability flow)
    /// on the run's fixed grid of `steps` steps (default: its sampling N), or the
    /// probability-flow ODE with `solver` "rk4" or "dopri5"; seeded by `seed` (default the
    /// run's). Shapes: -> [n, columns].
    #[pyo3(signature = (n, threads, lam=None, steps=None, seed=None, solver="sde", quantize=false))]
    #[allow(clippy::too_many_arguments)]
    fn sample<'py>(
        &self,
        py: Python<'py>,
        n: usize,
        threads: usize,
        lam: Option<f64>,
        steps: Option<usize>,
        seed: Option<u64>,
        solver: &str,
        quantize: bool,
    ) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let m = &self.model;
        let n_steps = steps.unwrap_or(m.sample_n());
        let mut rng = Rng::stream(self.seed(seed), Stream::Sample);
        let grid = m.grid(n_steps, SampleGrid::Fixed, None, &mut rng).py()?;
        let sampler = match solver {
            "sde" => Sampler::Sde {
                lambda: lam.unwrap_or(m.cfg.sample.lambda),
                steps: grid,
                tweedie: false,
            },
            s => {
                let method = s.parse::<Method>().py()?;
                if lam.is_some_and(|l| l != 0.0) {
                    return Err(PyValueError::new_err(format!(
                        "solver '{s}' integrates the probability-flow ODE (lam = 0), got lam = {}",
                        lam.unwrap_or(0.0)
                    )));
                }
                Sampler::Ode {
                    method,
                    t: grid.t,
                    tol: Tolerances::default(),
                }
            }
        };
        let (rows, width) = py
            .detach(|| {
                let s = m.sample(n, &sampler, SAMPLE_CHUNK, threads.max(1), &mut rng)?;
                m.file_rows(&s.x, quantize)
            })
            .py()?;
        array2(py, rows, width)
    }

    /// Writes the run into the folder `path` (`force`: over a run already there) as
    /// `diffflow train` writes one: checkpoints, `config.toml`, `metrics.jsonl`, and the
    /// arrays it was trained on (their paths in the configuration point at the copies).
    #[pyo3(signature = (path, force=false))]
    fn save(&self, py: Python<'_>, path: PathBuf, force: bool) -> PyResult<()> {
        py.detach(|| run_dir::copy_run(&self.dir, &path, force))
            .py()
    }

    /// Whether the model kind samples with noise (all but the CNF).
    #[getter]
    fn is_diffusion(&self) -> bool {
        self.model.kind() != ModelKind::Cnf
    }
}

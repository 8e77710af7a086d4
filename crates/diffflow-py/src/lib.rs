//! `diffflow._native`: the Python package's face over the library. Arrays in and out, the
//! library's errors as Python exceptions, training with progress and Ctrl-C ([`fit`]), a
//! trained model that samples and evaluates ([`model::NativeModel`]), run folders
//! ([`run_dir`]). Numerics and preprocessing are the library's; the scikit-learn estimator is
//! in `python/diffflow/`.

mod fit;
mod model;
mod run_dir;

use diffflow::data::Table;
use numpy::{PyArray1, PyArray2, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;

/// The allocator of the CLI: with glibc's malloc candle's freed activation buffers are
/// unmapped and re-faulted every step (DESIGN.md section 3), and the package should run at
/// the CLI's speed.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The library's error as a Python exception: bad values and data are `ValueError`, files
/// `OSError`, an interruption `KeyboardInterrupt`, the rest (divergence, a solver that
/// failed, a bug) `RuntimeError`. The message is the library's one line.
pub(crate) fn py_err(e: diffflow::Error) -> PyErr {
    use diffflow::Error as E;
    let msg = e.to_string();
    match e {
        E::Config(_) | E::Data(_) | E::Checkpoint { .. } => PyValueError::new_err(msg),
        E::Io { .. } => PyOSError::new_err(msg),
        E::Interrupted { .. } => PyKeyboardInterrupt::new_err(msg),
        E::Tensor(_) | E::NonFinite { .. } | E::Ode(_) | E::WorkerPanic(_) => {
            PyRuntimeError::new_err(msg)
        }
    }
}

/// `Result<T, diffflow::Error>` → `PyResult<T>`.
pub(crate) trait OrPyErr<T> {
    fn py(self) -> PyResult<T>;
}

impl<T> OrPyErr<T> for diffflow::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(py_err)
    }
}

/// A 2-D float32 or float64 numpy array of any memory layout (C, Fortran, strided) as a
/// row-major table of finite values. Errors name the argument `name`: `TypeError` for
/// something that is not such an array, `ValueError` for another shape, no rows or columns,
/// or a NaN or infinity (its 0-based row and column).
pub(crate) fn table(x: &Bound<'_, PyAny>, name: &str) -> PyResult<Table> {
    let Ok(untyped) = x.cast::<PyUntypedArray>() else {
        return Err(PyTypeError::new_err(format!(
            "{name} must be a numpy array, got {}",
            x.get_type().name()?
        )));
    };
    if untyped.ndim() != 2 {
        return Err(PyValueError::new_err(format!(
            "{name} must be a 2-D array [n_samples, n_features], got shape {}{}",
            py_shape(untyped.shape()),
            if untyped.ndim() == 1 {
                " (reshape(-1, 1) for one feature, reshape(1, -1) for one sample)"
            } else {
                ""
            }
        )));
    }
    let (rows, cols) = (untyped.shape()[0], untyped.shape()[1]);
    let data: Vec<f64> = if let Ok(a) = x.cast::<PyArray2<f64>>() {
        a.readonly().as_array().iter().copied().collect()
    } else if let Ok(a) = x.cast::<PyArray2<f32>>() {
        a.readonly()
            .as_array()
            .iter()
            .map(|&v| f64::from(v))
            .collect()
    } else {
        return Err(PyTypeError::new_err(format!(
            "{name} must hold float32 or float64 values, got dtype {}",
            untyped.dtype()
        )));
    };
    if rows == 0 || cols == 0 {
        return Err(PyValueError::new_err(format!(
            "{name} is empty (shape ({rows}, {cols}))"
        )));
    }
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(PyValueError::new_err(format!(
            "{name} holds the non-finite value {} at row {}, column {} (0-based)",
            data[i],
            i / cols,
            i % cols
        )));
    }
    Ok(Table {
        data,
        rows,
        cols,
        names: None,
    })
}

/// A shape as Python writes it: `(10,)`, `(2, 3, 4)`.
fn py_shape(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    match dims.as_slice() {
        [one] => format!("({one},)"),
        _ => format!("({})", dims.join(", ")),
    }
}

/// Row-major values [rows, cols] as a new numpy array.
pub(crate) fn array2<'py>(
    py: Python<'py>,
    data: Vec<f64>,
    cols: usize,
) -> PyResult<Bound<'py, PyArray2<f64>>> {
    let rows = data.len() / cols.max(1);
    PyArray1::from_vec(py, data).reshape([rows, cols])
}

/// The native module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(fit::fit, m)?)?;
    m.add_function(wrap_pyfunction!(model::load, m)?)?;
    m.add_function(wrap_pyfunction!(model::default_threads, m)?)?;
    m.add_class::<model::NativeModel>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

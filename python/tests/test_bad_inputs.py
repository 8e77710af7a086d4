"""Bad input is a clear TypeError or ValueError, never a crash; any array layout and float
width give the same numbers."""

import numpy as np
import pytest

from conftest import gaussian
from diffflow import DiffFlow


@pytest.mark.parametrize(
    "bad, error, message",
    [
        (np.zeros(10), ValueError, r"2-D array.*got shape \(10,\).*reshape\(-1, 1\)"),
        (np.zeros((2, 3, 4)), ValueError, "2-D array"),
        (np.zeros((0, 2)), ValueError, r"X is empty \(shape \(0, 2\)\)"),
        (np.array([[1.0, 2.0], [np.nan, 0.0]]), ValueError, "non-finite value NaN at row 1, column 0"),
        (np.array([[1.0, np.inf]]), ValueError, "non-finite value inf at row 0, column 1"),
        (np.array([["a", "b"]]), TypeError, "real numbers, got dtype <U1"),
        (np.ones((3, 2), dtype=complex), TypeError, "complex128"),
        (np.array([[object()]]), TypeError, "object"),
    ],
)
def test_bad_arrays_are_named_errors(small_model, bad, error, message):
    with pytest.raises(error, match=message):
        small_model.score_samples(bad)
    with pytest.raises(error, match=message):
        DiffFlow(iters=1, progress=False).fit(bad)


def test_wrong_columns_and_unfitted_models(small_model):
    with pytest.raises(ValueError, match="3 columns, but the run was trained on 2 columns"):
        small_model.score_samples(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="X_val has 3 columns, X has 2"):
        DiffFlow(iters=1, progress=False).fit(gaussian(50, 0), np.zeros((5, 3)))
    with pytest.raises(RuntimeError, match="not fitted yet"):
        DiffFlow().sample(3)


@pytest.mark.parametrize(
    "params, error, message",
    [
        ({"model": "gan"}, ValueError, "model must be one of diffflow, ddpm-l, ddpm-ls, cnf"),
        ({"preset": "huge"}, ValueError, "unknown preset 'huge'"),
        ({"iters": -1}, ValueError, "iters must be >= 0"),
        ({"iters": 0}, ValueError, "train.iters must be >= 1"),
        ({"iters": 2.5}, TypeError, "iters must be an integer"),
        ({"steps": "5,x"}, ValueError, "steps '5,x'"),
        ({"g": "nonsense"}, ValueError, "g"),
        ({"lr": -1.0}, ValueError, "train.lr must be > 0"),
        ({"dequantize": "maybe"}, ValueError, "unknown dequantize 'maybe'"),
        ({"val_fraction": 1.5}, ValueError, r"val_fraction must be in \[0, 1\)"),
        ({"validate_every": 10}, ValueError, "needs validation points"),
        ({"model": "cnf", "val_metric": "elbo", "val_fraction": 0.2}, ValueError, "a CNF has no ELBO"),
    ],
)
def test_bad_parameters_are_named_errors(params, error, message):
    with pytest.raises(error, match=message):
        DiffFlow(progress=False, **params).fit(gaussian(100, 0))


def test_bad_arguments_of_the_methods(small_model, tmp_path):
    with pytest.raises(ValueError, match="number of samples must be >= 1"):
        small_model.sample(0)
    with pytest.raises(ValueError, match=r"lambda must be in \[0, 1\]"):
        small_model.sample(3, lam=2.0)
    with pytest.raises(ValueError, match="unknown ODE solver 'leapfrog'"):
        small_model.sample(3, solver="leapfrog")
    with pytest.raises(ValueError, match="unknown dequantize"):
        small_model.model_.score_samples(gaussian(3, 0), 1, dequantize="sometimes")
    with pytest.raises(ValueError, match="invalid parameter 'itres'"):
        DiffFlow().set_params(itres=3)
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        DiffFlow.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no checkpoint here"):
        DiffFlow.load(tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown checkpoint 'first'"):
        DiffFlow.load(tmp_path / "empty", checkpoint="first")


def test_layouts_and_float_widths_give_the_same_numbers(small_model):
    x = gaussian(40, 1)
    c = small_model.score_samples(x)
    assert np.array_equal(c, small_model.score_samples(np.asfortranarray(x)))
    wide = np.zeros((40, 4))
    wide[:, ::2] = x
    assert np.array_equal(c, small_model.score_samples(wide[:, ::2]))  # strided view
    assert np.array_equal(c, small_model.score_samples(x.tolist()))  # a list
    x32 = x.astype(np.float32)
    assert np.array_equal(
        small_model.score_samples(x32), small_model.score_samples(x32.astype(np.float64))
    )
    ints = np.round(x).astype(np.int64)
    assert np.array_equal(small_model.score_samples(ints), small_model.score_samples(ints * 1.0))

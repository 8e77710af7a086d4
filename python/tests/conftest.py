"""Shared fixtures: small data sets, the CLI binary, small fitted models."""

import os
import pathlib
import subprocess

import numpy as np
import pytest

from diffflow import DiffFlow

ROOT = pathlib.Path(__file__).resolve().parents[2]


def pytest_report_header(config):
    return f"diffflow CLI: {os.environ.get('DIFFFLOW_CLI', '(DIFFFLOW_CLI not set)')}"


@pytest.fixture(scope="session")
def cli():
    """The ``diffflow`` binary: $DIFFFLOW_CLI (it must exist), else a built one in target/."""
    given = os.environ.get("DIFFFLOW_CLI")
    if given:
        path = pathlib.Path(given)
        assert path.is_file(), f"DIFFFLOW_CLI={given} does not exist"
        return path
    for profile in ("debug", "release"):
        path = ROOT / "target" / profile / "diffflow"
        if path.is_file():
            return path
    pytest.skip("no diffflow binary: build it (cargo build -p diffflow-cli) or set DIFFFLOW_CLI")


def run_cli(cli, *args):
    """Runs the CLI; returns its stdout (a failure shows its stderr)."""
    r = subprocess.run([str(cli), *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, f"diffflow {' '.join(map(str, args))}: {r.stderr}"
    return r.stdout


# A correlated 2-D Gaussian with unequal scales (the standardisation's log-Jacobian and the
# correlation both matter): x = A z, z ~ N(0, I).
GAUSS_A = np.array([[3.0, 0.0], [0.8 * 0.5, 0.6 * 0.5]])
GAUSS_MEAN = np.array([1.0, -2.0])


def gaussian(n, seed):
    z = np.random.default_rng(seed).standard_normal((n, 2))
    return GAUSS_MEAN + z @ GAUSS_A.T


def gaussian_logpdf(x):
    cov = GAUSS_A @ GAUSS_A.T
    diff = x - GAUSS_MEAN
    sol = np.linalg.solve(cov, diff.T).T
    _, logdet = np.linalg.slogdet(cov)
    return -0.5 * np.sum(diff * sol, axis=1) - 0.5 * logdet - np.log(2 * np.pi)


def mixed_table(n, seed):
    """Three columns: continuous, constant 5, integers 0..3 (dropped / dequantised)."""
    rng = np.random.default_rng(seed)
    return np.column_stack(
        [rng.standard_normal(n) * 2 + 1, np.full(n, 5.0), rng.integers(0, 4, n)]
    ).astype(np.float64)


@pytest.fixture(scope="session")
def small_model():
    """A quickly trained DiffFlow on Gaussian data (not accurate; for interface tests)."""
    return DiffFlow(iters=30, seed=3, progress=False).fit(gaussian(400, 0))

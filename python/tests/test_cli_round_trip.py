"""The Python package and the ``diffflow`` CLI read and write the same run folders and give
the same numbers: a CLI run loaded in Python, and a Python run used by the CLI."""

import json

import numpy as np
import pytest

from conftest import gaussian, mixed_table, run_cli
from diffflow import DiffFlow


def cli_eval(cli, run, points, tmp_path, trajectories=0):
    """Per-point NLL (and negative ELBO) of ``points`` by ``diffflow eval``."""
    np.save(tmp_path / "points.npy", points)
    out = tmp_path / "per_point.npy"
    report = run_cli(
        cli, "eval", "--run", run, "--data", tmp_path / "points.npy", "--trajectories",
        trajectories, "--per-sample", out, "--json", "--threads", 2,
    )
    return np.load(out), json.loads(report)


def test_a_cli_run_loads_in_python_with_the_same_numbers(cli, tmp_path):
    x = mixed_table(300, 1)
    np.save(tmp_path / "x.npy", x)
    run = tmp_path / "cli-run"
    run_cli(cli, "train", "--data", tmp_path / "x.npy", "--iters", 30, "--validate-every", 10,
            "--seed", 4, "--out", run)
    est = DiffFlow.load(run)
    assert est.n_features_in_ == 3 and est.dim_ == 2 and est.get_params()["seed"] == 4
    # Log-densities: the CLI's per-point NLL, to the bit (same solver, chunks, seed and
    # dequantisation noise of the integer column).
    per_point, report = cli_eval(cli, run, x[:100], tmp_path, trajectories=10)
    assert np.array_equal(est.score_samples(x[:100]), -per_point[:, 0])
    assert report["nll"] == pytest.approx(-est.score(x[:100]), rel=1e-12)
    # The ELBO with the same seed: the same trajectories.
    assert np.array_equal(est.elbo(x[:100]), -per_point[:, 1])
    # Samples: the same bytes for the same seed, all columns (the constant one filled in).
    run_cli(cli, "sample", "--run", run, "--n", 300, "--seed", 9, "--out", tmp_path / "s.npy")
    ours = est.sample(300, seed=9)
    assert ours.shape == (300, 3)
    assert np.load(tmp_path / "s.npy").tobytes() == ours.tobytes()
    lam0 = est.sample(100, lam=0.0, steps=15, seed=2)
    run_cli(cli, "sample", "--run", run, "--n", 100, "--lambda", 0, "--steps", 15, "--seed", 2,
            "--out", tmp_path / "s0.npy")
    assert np.array_equal(np.load(tmp_path / "s0.npy"), lam0)


def test_a_python_run_is_a_complete_cli_run(cli, tmp_path):
    x = gaussian(400, 6)
    est = DiffFlow(iters=30, val_fraction=0.2, validate_every=10, seed=2, progress=False)
    est.fit(x)
    run = tmp_path / "py-run"
    est.save(run)
    points = gaussian(120, 7)
    per_point, _ = cli_eval(cli, run, points, tmp_path)
    assert np.array_equal(-per_point[:, 0], est.score_samples(points))
    run_cli(cli, "sample", "--run", run, "--n", 200, "--seed", 1, "--out", tmp_path / "s.npy")
    assert np.load(tmp_path / "s.npy").tobytes() == est.sample(200, seed=1).tobytes()
    # The run's own validation split is rebuilt from its saved arrays (the same pipeline).
    report = json.loads(run_cli(cli, "eval", "--run", run, "--split", "val", "--json",
                                "--trajectories", 0))
    assert report["n"] == 80
    # And it resumes: the CLI trains it on from its last checkpoint.
    run_cli(cli, "train", "--resume", run, "--iters", 40)
    assert DiffFlow.load(run, checkpoint="last").n_iter_ == 40

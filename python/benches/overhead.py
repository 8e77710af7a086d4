"""The package's overhead: ``DiffFlow.score_samples`` on 10,000 points against ``diffflow
eval`` on the same points of the same run (same solver, chunks, threads), timed alternately,
medians of ``--runs`` repeats, wall-clock and CPU seconds (user + system: this process for
the package, the child for the CLI; less sensitive to other load on a shared machine).
Prints one JSON object.

    python python/benches/overhead.py --cli target/release/diffflow --threads 2 --runs 3
"""

import argparse
import json
import pathlib
import resource
import subprocess
import tempfile
import time

import numpy as np

from diffflow import DiffFlow


def cpu(who):
    """User + system CPU seconds of ``who`` (RUSAGE_SELF or RUSAGE_CHILDREN)."""
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cli", required=True, help="the diffflow binary (same profile as the package)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--points", type=int, default=10_000)
    ap.add_argument("--iters", type=int, default=300, help="training iterations of the model")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    mix = np.array([[1.0, 0.0, 0.0, 0.0], [0.5, 1.0, 0.0, 0.0], [0.0, 0.3, 2.0, 0.0], [0.2, 0.0, 0.4, 0.5]])
    x = rng.standard_normal((4000, 4)) @ mix.T
    points = rng.standard_normal((args.points, 4)) @ mix.T
    with tempfile.TemporaryDirectory() as d:
        d = pathlib.Path(d)
        est = DiffFlow(iters=args.iters, seed=0, threads=args.threads, progress=False).fit(x)
        est.save(d / "run")
        np.save(d / "points.npy", points)
        cmd = [
            str(args.cli), "eval", "--run", str(d / "run"), "--data", str(d / "points.npy"),
            "--trajectories", "0", "--threads", str(args.threads), "--json",
            "--per-sample", str(d / "per_point.npy"),
        ]
        py, cli, cli_inner, py_cpu, cli_cpu = [], [], [], [], []
        for _ in range(args.runs):
            t0, c0 = time.perf_counter(), cpu(resource.RUSAGE_SELF)
            log_p = est.score_samples(points)
            py.append(time.perf_counter() - t0)
            py_cpu.append(cpu(resource.RUSAGE_SELF) - c0)
            t0, c0 = time.perf_counter(), cpu(resource.RUSAGE_CHILDREN)
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            cli.append(time.perf_counter() - t0)
            cli_cpu.append(cpu(resource.RUSAGE_CHILDREN) - c0)
            report = json.loads(out.stdout)
            cli_inner.append(report["seconds_nll"])
        same = bool(np.array_equal(-np.load(d / "per_point.npy")[:, 0], log_p))
    med = lambda v: float(np.median(v))  # noqa: E731
    print(json.dumps({
        "points": args.points, "dim": 4, "threads": args.threads, "runs": args.runs,
        "nfe": report["nfe"], "python_score_samples_s": med(py), "cli_eval_process_s": med(cli),
        "cli_eval_seconds_nll": med(cli_inner), "python_over_cli_process": med(py) / med(cli),
        "python_over_cli_nll": med(py) / med(cli_inner), "python_cpu_s": med(py_cpu),
        "cli_cpu_s": med(cli_cpu), "python_over_cli_cpu": med(py_cpu) / med(cli_cpu),
        "same_numbers_bitwise": same,
        "python_s_all": py, "cli_process_s_all": cli,
    }, indent=1))


if __name__ == "__main__":
    main()

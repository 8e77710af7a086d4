//! `diffflow tune` at toy size (iris, a few iterations): the trials of a plan, the table,
//! results and plots, resuming a study (finished trials are not run again), shards, bad
//! plans; and `bench-tabular` on one of the small scikit-learn sets.

use std::path::Path;
use std::process::Output;

mod common;
use common::{bin, ok};

const PLAN: &str = r#"
title = "toy study"
sets = ["iris"]
seeds = [0]
base = "iters=4 steps=2 batch=16 width=16 fourier=4"
checks = 2
val_points = 8
elbo_trajectories = 1
budget_iters = 2

[[factor]]
name = "learning rate"
values = ["lr=1e-3", "lr=5e-3"]
x = [1e-3, 5e-3]
base_x = 2e-3

[[factor]]
name = "model"
values = ["model=cnf steps=2 width=16"]
"#;

fn tune(plan: &Path, out: &Path, extra: &[&str]) -> Output {
    bin()
        .args(["tune", "--plan"])
        .arg(plan)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[test]
fn a_study_runs_reports_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let plan = tmp.path().join("plan.toml");
    std::fs::write(&plan, PLAN).unwrap();
    let out = tmp.path().join("study");
    // Two shards share the four trials (base, two rates, the CNF).
    let a = ok(tune(&plan, &out, &["--shard", "0/2"]));
    let b = ok(tune(&plan, &out, &["--shard", "1/2"]));
    assert_eq!(lines(&out.join("trials.0.jsonl")), 2);
    assert_eq!(lines(&out.join("trials.1.jsonl")), 2);
    let err = String::from_utf8_lossy(&a.stderr);
    assert!(err.contains("4 trials, 2 in shard 0/2, 0 done"), "{err}");
    let table = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert_eq!(String::from_utf8_lossy(&b.stdout), table);
    for want in [
        "# toy study",
        "## learning rate",
        "| base |",
        "| `lr=1e-3` |",
        "| `lr=5e-3` |",
        "| `model=cnf steps=2 width=16` |",
        "| `iters=4 steps=2 batch=16 width=16 fourier=4 lr=5e-3` | 0 |",
    ] {
        assert!(table.contains(want), "'{want}' in:\n{table}");
    }
    assert!(!table.contains("not run yet"), "{table}");
    // Markdown tables: the rows follow the header at once (a blank line ends a table).
    assert!(
        table.contains("|---|---|---|---|---|---|---|---|\n| base"),
        "{table}"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let recs = r.as_array().unwrap();
    assert_eq!(recs.len(), 4);
    for rec in recs {
        let checks = rec["outcome"]["checks"].as_array().unwrap();
        assert_eq!(checks.len(), 2, "{rec}");
        assert!(checks[1]["nll"].as_f64().unwrap().is_finite(), "{rec}");
        let cnf = rec["model"] == "cnf";
        // The budget of a baseline, the iterations of DiffFlow; an ELBO only for DiffFlow.
        assert_eq!(rec["outcome"]["iters"], if cnf { 2 } else { 4 });
        assert_eq!(checks[1]["elbo"].is_null(), cnf, "{rec}");
    }
    for plot in ["plot-learning-rate.png", "plot-model.png"] {
        assert!(std::fs::metadata(out.join(plot)).unwrap().len() > 1000);
    }
    // Started again: nothing left to run, nothing appended; the report is rebuilt.
    let again = ok(tune(&plan, &out, &[]));
    assert!(String::from_utf8_lossy(&again.stderr).contains("4 trials, 4 in shard 0/1, 4 done"));
    assert_eq!(lines(&out.join("trials.0.jsonl")), 2);
    assert_eq!(
        std::fs::read_to_string(out.join("table.md")).unwrap(),
        table
    );
    // The same seed gives the same numbers: a fresh study of the base alone agrees.
    let solo = tmp.path().join("solo");
    let base_only = PLAN.split("[[factor]]").next().unwrap();
    std::fs::write(&plan, base_only).unwrap();
    ok(tune(&plan, &solo, &[]));
    let first = |dir: &Path| -> serde_json::Value {
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap())
                .unwrap();
        // Everything but the CPU clock, which differs from run to run.
        let mut checks = r[0]["outcome"]["checks"].clone();
        for c in checks.as_array_mut().unwrap() {
            c.as_object_mut().unwrap().remove("cpu_seconds");
        }
        checks
    };
    assert_eq!(first(&solo), first(&out));
}

#[test]
fn bad_plans_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let plan = tmp.path().join("plan.toml");
    let out = tmp.path().join("study");
    let refused = |text: &str, want: &str| {
        std::fs::write(&plan, text).unwrap();
        let o = tune(&plan, &out, &[]);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "'{want}' in: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    };
    refused(
        &PLAN.replace("checks = 2", "checkz = 2"),
        "unknown field `checkz`",
    );
    refused(&PLAN.replace("lr=1e-3", "rate=1e-3"), "unknown key 'rate'");
    refused(
        &PLAN.replace("\"iris\"", "\"nope\""),
        "unknown data set 'nope'",
    );
    refused(
        &PLAN.replace("x = [1e-3, 5e-3]", "x = [1e-3]"),
        "2 values but 1 x positions",
    );
    refused(
        &PLAN.replace("budget_iters = 2", ""),
        "needs budget_cpu for iris or budget_iters",
    );
    std::fs::write(&plan, PLAN).unwrap();
    let o = tune(&plan, &out, &["--shard", "2/2"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("expected i/k with 0 <= i < k"));
}

#[test]
fn bench_tabular_runs_a_small_scikit_learn_set() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bench");
    let o = ok(bin()
        .args([
            "bench-tabular",
            "--sets",
            "wine",
            "--iters",
            "2",
            "--baseline-iters",
            "2",
            "--threads",
            "1",
            "--cnf",
            "lr=5e-3 steps=2",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap());
    let table = String::from_utf8_lossy(&o.stdout);
    for want in [
        "| wine | 13 | Gaussian (full covariance) |",
        "| wine | 13 | DiffFlow |",
        "| wine | 13 | DDPM (L_s) |",
        "| wine | 13 | CNF |",
        "107 / 36 / 35 train / validation / test rows",
        "dequantised 2 integer-valued column(s)",
    ] {
        assert!(table.contains(want), "'{want}' in:\n{table}");
    }
    // The CNF's own settings are the ones given, and the table says so.
    assert!(table.contains("CNF overrides `lr=5e-3 steps=2`"), "{table}");
    let bad = bin()
        .args([
            "bench-tabular",
            "--sets",
            "wine",
            "--cnf",
            "rate=1",
            "--out",
        ])
        .arg(tmp.path().join("bad"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown key 'rate'"));
}

//! `diffflow train --model KIND` for every model kind, end to end: a run folder, then
//! `sample` and `eval` on it, and the errors a kind cannot do without (a CNF's λ ≠ 0, Tweedie
//! step and ELBO; a DDPM on an interval whose end is far from its prior).

use std::path::Path;
use std::process::Output;

mod common;
use common::{bin, ok, text};

/// A one-line error with exit code 1 whose message contains `expect`.
fn refused(out: Output, expect: &str) {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(err.contains(expect), "expected '{expect}' in: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Trains `model` on moons for a few iterations into `dir`.
fn train(model: &str, dir: &Path, extra: &[&str]) -> Output {
    bin()
        .args(["train", "--model", model, "--dataset", "moons"])
        .args(["--iters", "6", "--batch", "64", "--steps", "3"])
        .args(["--width", "16", "--depth", "1", "--samples", "100"])
        .args(["--threads", "1", "--out"])
        .arg(dir)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn every_model_kind_trains_samples_and_evaluates_through_the_cli() {
    let root = tempfile::tempdir().unwrap();
    for model in ["diffflow", "ddpm-l", "ddpm-ls", "cnf"] {
        let dir = root.path().join(model);
        let out = ok(train(model, &dir, &[]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        for f in [
            "config.toml",
            "model.safetensors",
            "metrics.jsonl",
            "samples.png",
        ] {
            assert!(dir.join(f).exists(), "{model}: {f} missing; {stderr}");
        }
        let cfg = std::fs::read_to_string(dir.join("config.toml")).unwrap();
        if model != "diffflow" {
            assert!(cfg.contains(&format!("kind = \"{model}\"")), "{cfg}");
        }
        // The held-out line: an NLL for every kind, an ELBO for all but the CNF.
        let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        let last: serde_json::Value =
            serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
        assert!(last["test_nll"].as_f64().unwrap().is_finite(), "{last}");
        assert_eq!(
            last["test_elbo"].is_null(),
            model == "cnf",
            "{model}: {last}"
        );
        let samples = dir.join("x.csv");
        ok(bin()
            .args(["sample", "--run"])
            .arg(&dir)
            .args(["--n", "50", "--steps", "4", "--out"])
            .arg(&samples)
            .output()
            .unwrap());
        assert_eq!(
            std::fs::read_to_string(&samples).unwrap().lines().count(),
            51
        );
        let out = ok(bin()
            .args(["eval", "--run"])
            .arg(&dir)
            .args(["--points", "20", "--trajectories", "2", "--json"])
            .output()
            .unwrap());
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(r["nll"].as_f64().unwrap().is_finite(), "{model}: {r}");
        assert_eq!(r["elbo"].is_null(), model == "cnf", "{model}: {r}");
        assert_eq!(r["n"], 20);
    }
    // A CNF is deterministic: λ ≠ 0 and Tweedie are refused, the ODE solvers work.
    let cnf = root.path().join("cnf");
    let sample = |args: &[&str]| {
        bin()
            .args(["sample", "--run"])
            .arg(&cnf)
            .args(["--n", "10", "--out"])
            .arg(root.path().join("y.csv"))
            .args(args)
            .output()
            .unwrap()
    };
    refused(sample(&["--lambda", "1"]), "CNF is deterministic");
    refused(
        sample(&["--lambda", "0", "--tweedie"]),
        "CNF is deterministic",
    );
    ok(sample(&["--solver", "dopri5"]));
    // A DDPM whose interval ends far from its prior is refused, naming T.
    let ddpm = root.path().join("ddpm-short");
    refused(
        train("ddpm-ls", &ddpm, &["--t-max", "0.05"]),
        "model.grid.t_max = T = 0.05",
    );
    assert!(!ddpm.join("model.safetensors").exists());
    refused(
        train("gan", &root.path().join("gan"), &[]),
        "unknown model 'gan'",
    );
}

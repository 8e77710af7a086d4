//! `diffflow sample` and `diffflow eval` end to end on a tiny trained run: outputs in every
//! format, the JSON report, the held-out line of `metrics.jsonl`, and bad input (one-line
//! errors, no panic).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

mod common;
use common::{bin, ok};

/// A tiny run, trained once for all tests of this file.
fn run_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = bin()
            .args([
                "train",
                "--dataset",
                "moons",
                "--iters",
                "30",
                "--batch",
                "64",
                "--steps",
                "4",
                "--width",
                "16",
                "--depth",
                "1",
                "--samples",
                "200",
                "--threads",
                "1",
                "--out",
            ])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
    .path()
}

/// The command fails with exactly one line on stderr, `error: ...` containing `want`.
fn fails_with(out: Output, want: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(want), "expected '{want}' in: {err}");
}

fn tmp_file(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn train_writes_a_held_out_line() {
    let text = std::fs::read_to_string(run_dir().join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["step"], 30);
    for key in [
        "test_nll",
        "test_nll_stderr",
        "test_elbo",
        "test_bits_per_dim",
        "nfe",
    ] {
        assert!(last[key].as_f64().unwrap().is_finite(), "{key}: {last}");
    }
}

#[test]
fn sample_writes_csv_npy_and_png() {
    let dir = tempfile::tempdir().unwrap();
    for (ext, extra) in [
        ("csv", vec!["--lambda", "0.5", "--tweedie"]),
        ("npy", vec!["--solver", "dopri5"]),
        ("png", vec!["--grid", "uniform", "--steps", "7"]),
    ] {
        let path = dir.path().join(format!("s.{ext}"));
        ok(bin()
            .args(["sample", "--run"])
            .arg(run_dir())
            .args(["--n", "300", "--out"])
            .arg(&path)
            .args(extra)
            .output()
            .unwrap());
        assert!(path.exists(), "{ext}");
    }
    let csv = std::fs::read_to_string(dir.path().join("s.csv")).unwrap();
    assert_eq!(csv.lines().count(), 301, "header + 300 rows");
    let npy = std::fs::read(dir.path().join("s.npy")).unwrap();
    assert_eq!(&npy[..6], b"\x93NUMPY");
    assert!(String::from_utf8_lossy(&npy[..128]).contains("(300, 2)"));
    let png = std::fs::read(dir.path().join("s.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    // Same seed, same bytes.
    let again = dir.path().join("again.csv");
    ok(bin()
        .args(["sample", "--run"])
        .arg(run_dir())
        .args(["--n", "300", "--lambda", "0.5", "--tweedie", "--out"])
        .arg(&again)
        .output()
        .unwrap());
    assert_eq!(std::fs::read(&again).unwrap(), csv.as_bytes());
}

#[test]
fn eval_reports_json_on_files_and_datasets() {
    let dir = tempfile::tempdir().unwrap();
    let data = tmp_file(
        &dir,
        "pts.csv",
        "x,y\n0.1,0.2\n-0.5,0.3\n1.0,-0.2\n0.0,0.0\n",
    );
    let out = ok(bin()
        .args(["eval", "--run"])
        .arg(run_dir())
        .arg("--data")
        .arg(&data)
        .args(["--json", "--trajectories", "3", "--per-sample"])
        .arg(dir.path().join("per.csv"))
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let per = std::fs::read_to_string(dir.path().join("per.csv")).unwrap();
    assert!(per.starts_with("nll,elbo\n"), "{per}");
    let rows: Vec<Vec<f64>> = per
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|c| c.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 4);
    for key in [
        "nll",
        "nll_stderr",
        "nll_standardised",
        "elbo",
        "bits_per_dim",
        "nfe",
        "seconds",
    ] {
        assert!(v[key].as_f64().unwrap().is_finite(), "{key}: {v}");
    }
    assert_eq!(v["n"], 4);
    let mean_nll = rows.iter().map(|r| r[0]).sum::<f64>() / 4.0;
    assert!((mean_nll - v["nll"].as_f64().unwrap()).abs() < 1e-9);
    // bits/dim = nats / (d ln 2)
    let bpd = v["nll"].as_f64().unwrap() / (2.0 * std::f64::consts::LN_2);
    assert!((v["bits_per_dim"].as_f64().unwrap() - bpd).abs() < 1e-12);
    let out = ok(bin()
        .args(["eval", "--run"])
        .arg(run_dir())
        .args([
            "--dataset",
            "moons",
            "--n",
            "40",
            "--method",
            "hutchinson",
            "--probes",
            "2",
            "--solver",
            "rk4",
            "--steps",
            "20",
            "--trajectories",
            "0",
        ])
        .output()
        .unwrap());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("NLL") && text.contains("NFE"), "{text}");
}

#[test]
fn bad_input_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let eval = |data: &Path| {
        bin()
            .args(["eval", "--run"])
            .arg(run_dir())
            .arg("--data")
            .arg(data)
            .output()
            .unwrap()
    };
    fails_with(
        eval(&tmp_file(&dir, "three.csv", "1,2,3\n4,5,6\n")),
        "columns",
    );
    fails_with(eval(&tmp_file(&dir, "word.csv", "1,2\n3,abc\n")), "abc");
    fails_with(eval(&tmp_file(&dir, "nan.csv", "1,2\nnan,3\n")), "line 2");
    fails_with(eval(&tmp_file(&dir, "empty.csv", "")), "empty.csv");
    fails_with(eval(&dir.path().join("missing.csv")), "missing.csv");
    let empty_run = tempfile::tempdir().unwrap();
    fails_with(
        bin()
            .args(["eval", "--run"])
            .arg(empty_run.path())
            .output()
            .unwrap(),
        "model.safetensors",
    );
    fails_with(
        bin()
            .args(["sample", "--run"])
            .arg(empty_run.path())
            .args(["--out", "x.csv"])
            .output()
            .unwrap(),
        "model.safetensors",
    );
    let out = dir.path().join("s.txt");
    fails_with(
        bin()
            .args(["sample", "--run"])
            .arg(run_dir())
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap(),
        "extension",
    );
    fails_with(
        bin()
            .args(["sample", "--run"])
            .arg(run_dir())
            .args(["--lambda", "2", "--out"])
            .arg(dir.path().join("s.csv"))
            .output()
            .unwrap(),
        "lambda",
    );
    assert!(!dir.path().join("s.csv").exists());
}

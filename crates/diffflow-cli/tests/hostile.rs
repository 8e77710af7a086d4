//! Every command on hostile input: a corrupted or truncated checkpoint for `train --resume`,
//! `sample` and `eval`; bad configuration files; data files whose headers claim absurd
//! sizes. Each is a one-line error naming the file and the problem, never a panic or an
//! attempt to allocate what a header claims.

use std::path::Path;
use std::process::Output;

mod common;
use common::bin;

/// The command fails with one line on stderr, `error: ...` containing every `want`.
fn fails_with(label: &str, out: Output, want: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    let err = err
        .trim_end()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    println!("{label}: {err}");
    assert_eq!(out.status.code(), Some(1), "{label}: {err}");
    assert!(err.starts_with("error: "), "{label}: {err}");
    for w in want {
        assert!(err.contains(w), "{label}: expected '{w}' in: {err}");
    }
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

fn train_tiny(out: &Path) {
    let st = bin()
        .args([
            "train",
            "--dataset",
            "moons",
            "--iters",
            "6",
            "--batch",
            "32",
            "--steps",
            "3",
            "--width",
            "8",
            "--depth",
            "1",
            "--samples",
            "50",
            "--threads",
            "1",
            "--out",
        ])
        .arg(out)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
}

/// `train --resume`, `sample` and `eval` on the run folder `dir`.
fn every_command(dir: &Path) -> Vec<(&'static str, Output)> {
    let samples = dir.join("s.csv");
    vec![
        (
            "train --resume",
            bin().args(["train", "--resume"]).arg(dir).output().unwrap(),
        ),
        (
            "sample",
            bin()
                .args(["sample", "--run"])
                .arg(dir)
                .arg("--out")
                .arg(&samples)
                .output()
                .unwrap(),
        ),
        (
            "eval",
            bin().args(["eval", "--run"]).arg(dir).output().unwrap(),
        ),
    ]
}

#[test]
fn corrupted_checkpoints_are_refused_by_every_command() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    train_tiny(&good);
    let bytes = std::fs::read(good.join("model.safetensors")).unwrap();
    let copy_with = |name: &str, model: &[u8]| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["config.toml", "metrics.jsonl"] {
            std::fs::copy(good.join(f), dir.join(f)).unwrap();
        }
        std::fs::write(dir.join("model.safetensors"), model).unwrap();
        dir
    };
    let mut flipped = bytes.clone();
    let n = flipped.len();
    flipped[n - 3] ^= 0x04;
    let cases = [
        ("bit flip", copy_with("flip", &flipped), "checksum mismatch"),
        (
            "truncated",
            copy_with("cut", &bytes[..bytes.len() / 3]),
            "not a valid safetensors file",
        ),
        (
            "empty",
            copy_with("empty", &[]),
            "not a valid safetensors file",
        ),
    ];
    for (label, dir, want) in cases {
        for (cmd, out) in every_command(&dir) {
            fails_with(
                &format!("{cmd} on a {label} checkpoint"),
                out,
                &["model.safetensors", want],
            );
        }
        // Nothing was written into the folder.
        assert!(!dir.join("s.csv").exists());
        assert!(!dir.join("samples.png").exists());
        assert_eq!(
            std::fs::read(dir.join("metrics.jsonl")).unwrap(),
            std::fs::read(good.join("metrics.jsonl")).unwrap()
        );
    }
}

#[test]
fn bad_configs_and_absurd_data_headers_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    train_tiny(&good);
    let config = std::fs::read_to_string(good.join("config.toml")).unwrap();
    let train_with = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        bin()
            .args(["train", "--config"])
            .arg(&p)
            .arg("--out")
            .arg(tmp.path().join(format!("run-{name}")))
            .output()
            .unwrap()
    };
    fails_with(
        "config with an unknown key",
        train_with(
            "unknown.toml",
            &config.replace("[train]\n", "[train]\nmomentum = 0.9\n"),
        ),
        &["unknown.toml", "line", "unknown field `momentum`"],
    );
    fails_with(
        "config with an absurd size",
        train_with(
            "huge.toml",
            &config.replace("train_size = 100000", "train_size = 100000000000"),
        ),
        &["huge.toml", "data.train_size must be <= 100000000"],
    );
    fails_with(
        "config with a NaN learning rate",
        train_with("nan.toml", &config.replace("lr = 0.01", "lr = nan")),
        &["nan.toml", "train.lr must be > 0"],
    );
    fails_with(
        "config that is not TOML",
        train_with("garbage.toml", "\u{1}\u{2}[[[\n"),
        &["garbage.toml", "line 1"],
    );
    // A .npy header claiming 10^12 rows: refused before anything is allocated.
    let mut h =
        "{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000, 2), }".to_string();
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    npy.extend((h.len() as u16).to_le_bytes());
    npy.extend(h.as_bytes());
    npy.extend([0u8; 32]);
    let p = tmp.path().join("absurd.npy");
    std::fs::write(&p, npy).unwrap();
    fails_with(
        "eval --data on an .npy claiming 10^12 rows",
        bin()
            .args(["eval", "--run"])
            .arg(&good)
            .arg("--data")
            .arg(&p)
            .output()
            .unwrap(),
        &["absurd.npy"],
    );
}

/// `train` with bad arguments: one line naming the value, exit 1, nothing written.
#[test]
fn bad_training_arguments_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let blocker = tmp.path().join("a-file");
    std::fs::write(&blocker, b"not a folder").unwrap();
    let under_file = blocker.join("run");
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (vec!["--dataset", "nope"], &["unknown toy data set", "nope"]),
        (vec!["--steps", "0"], &["steps", "at least 1"]),
        (vec!["--lr", "-1"], &["lr", "> 0", "-1"]),
        (vec!["--beta", "0"], &["beta must be > 0", "0"]),
        (vec!["--beta", "-0.5"], &["beta must be > 0", "-0.5"]),
        (vec!["--batch", "0"], &["batch", ">= 1"]),
        (vec!["--g", "-1"], &["diffusion g", "g = -1"]),
        (vec!["--grid", "weird"], &["unknown grid", "weird"]),
        (
            vec!["--config", "/nonexistent/c.toml"],
            &["/nonexistent/c.toml"],
        ),
    ];
    for (args, want) in cases {
        let o = bin()
            .arg("train")
            .args(&args)
            .args(["--iters", "1", "--out"])
            .arg(&out)
            .output()
            .unwrap();
        fails_with(&args.join(" "), o, want);
        assert!(!out.exists(), "{args:?} left {}", out.display());
    }
    let o = bin()
        .args(["train", "--dataset", "moons", "--iters", "1", "--out"])
        .arg(&under_file)
        .output()
        .unwrap();
    fails_with("unwritable --out", o, &[&under_file.display().to_string()]);
}

//! The real `diffflow` binary under signals: SIGKILL at random moments never leaves a run
//! folder that cannot be loaded and resumed, and the resumed run ends byte-identical to an
//! uninterrupted one; Ctrl-C (SIGINT) and SIGTERM write a checkpoint and exit with 130.

use diffflow::config::{Preset, RunConfig};
use diffflow::model::{Checkpoint, Model};
use diffflow::nn::MlpConfig;
use diffflow::rng::Rng;
use diffflow::sde::StepsSchedule;
use diffflow::train::{TrainData, Trainer, METRICS_FILE, MODEL_FILE};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_diffflow");

/// A tiny run that takes about a second, with a checkpoint every 5 iterations.
fn write_config(path: &Path, iters: usize) {
    let mut c = RunConfig::preset(Preset::Quick, "olympic");
    c.data.train_size = 2000;
    c.data.test_size = 200;
    c.model.net = MlpConfig {
        width: 24,
        depth: 2,
        fourier: 8,
        ..MlpConfig::small()
    };
    c.train.iters = iters;
    c.train.batch = 64;
    c.train.steps = StepsSchedule::parse("4,6@150").unwrap();
    c.train.lr = 5e-3;
    c.train.lr_decay_every = 100;
    c.train.log_every = 10;
    c.train.checkpoint_every = 5;
    c.train.threads = 1;
    c.sample.n = 100;
    std::fs::write(path, c.to_toml().unwrap()).unwrap();
}

fn train(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("train").args(args).stdin(Stdio::null());
    cmd
}

fn spawn_quiet(args: &[&str]) -> Child {
    train(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_for(path: &Path, what: impl Fn(&Path) -> bool) {
    let t0 = Instant::now();
    while !what(path) {
        assert!(t0.elapsed() < Duration::from_secs(60), "timed out waiting");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn read(dir: &Path, f: &str) -> Vec<u8> {
    std::fs::read(dir.join(f)).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Resumes `run` up to `total` iterations and trains `config` uninterrupted for as long into
/// `reference`: both end with the same `metrics.jsonl` and checkpoint bytes.
fn assert_resumes_like_uninterrupted(run: &Path, config: &Path, reference: &Path, total: usize) {
    let total = total.to_string();
    for args in [
        ["--resume", s(run), "--iters", &total].as_slice(),
        &[
            "--config",
            s(config),
            "--iters",
            &total,
            "--out",
            s(reference),
        ],
    ] {
        let out = train(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {err}");
    }
    assert_eq!(read(run, METRICS_FILE), read(reference, METRICS_FILE));
    assert_eq!(read(run, MODEL_FILE), read(reference, MODEL_FILE));
}

#[test]
fn sigkill_at_random_moments_always_leaves_a_loadable_resumable_run() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("tiny.toml");
    // Far more iterations than the kills leave time for, whatever the machine's speed.
    write_config(&config, 1_000_000);
    let run = tmp.path().join("run");
    let mut rng = Rng::new(20240605);
    let mut child = spawn_quiet(&["--config", s(&config), "--out", s(&run)]);
    // A fresh run writes its step-0 checkpoint before the first iteration.
    wait_for(&run.join(MODEL_FILE), |p| p.exists());
    let (mut steps, mut mid_write) = (Vec::new(), 0);
    for kill in 1..=24 {
        std::thread::sleep(Duration::from_micros((rng.uniform() * 120_000.0) as u64));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Killed while writing a checkpoint: its temp file is left beside the intact one.
        let temp = std::fs::read_dir(&run).unwrap().any(|e| {
            let name = e.unwrap().file_name();
            name.to_string_lossy().starts_with(".model.safetensors.tmp")
        });
        mid_write += usize::from(temp);
        // The folder loads and resumes, whatever the moment of the kill.
        let loaded = Model::load(&run, Some(Checkpoint::Last), None)
            .unwrap_or_else(|e| panic!("kill {kill}: {e}"));
        let trainer = Trainer::resume_with(&run, |c| TrainData::toy(&c.data, c.train.seed))
            .unwrap_or_else(|e| panic!("kill {kill}: {e}"));
        assert_eq!(trainer.step, loaded.step);
        steps.push(loaded.step);
        if kill < 24 {
            child = spawn_quiet(&["--resume", s(&run)]);
        }
    }
    println!(
        "24 SIGKILLs ({mid_write} left a checkpoint temp file); checkpoint step after each: \
         {steps:?}"
    );
    assert!(steps.windows(2).all(|w| w[0] <= w[1]), "{steps:?}");
    // Finish 15 iterations past the last checkpoint: the run ends exactly as one of that
    // length that was never interrupted, with no temp file left.
    let reference = tmp.path().join("reference");
    assert_resumes_like_uninterrupted(&run, &config, &reference, steps[23] + 15);
    let mut names: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "config.toml",
            "metrics.jsonl",
            "model.safetensors",
            "samples.png"
        ]
    );
}

#[test]
fn sigint_and_sigterm_write_a_checkpoint_and_exit_130() {
    for signal in ["-INT", "-TERM"] {
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("tiny.toml");
        write_config(&config, 1_000_000);
        let run = tmp.path().join("run");
        let child = train(&["--config", s(&config), "--out", s(&run)])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Training is under way once the first metrics line is written.
        wait_for(&run.join(METRICS_FILE), |p| {
            std::fs::read(p).is_ok_and(|b| !b.is_empty())
        });
        // The shell's `kill` builtin: no dependency on a `kill` binary.
        let ok = Command::new("sh")
            .args(["-c", &format!("kill {signal} {}", child.id())])
            .status()
            .unwrap();
        assert!(ok.success());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(130), "{signal}: {stderr}");
        let step = Model::load(&run, Some(Checkpoint::Last), None)
            .unwrap()
            .step;
        assert!(step >= 10, "{signal}: checkpoint at {step}");
        assert!(
            stderr.contains(&format!("interrupted at step {step}"))
                && stderr.contains(&format!("diffflow train --resume {}", s(&run))),
            "{signal}: {stderr}"
        );
        // Resume for 12 more iterations; the result is byte-identical to a run of that
        // length that was never interrupted.
        let reference = tmp.path().join("reference");
        assert_resumes_like_uninterrupted(&run, &config, &reference, step + 12);
    }
}

#[test]
fn resume_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let out = train(&["--resume", s(tmp.path())]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{err}");
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("no checkpoint to resume from"), "{err}");
    // A run-defining flag with --resume.
    let out = train(&["--resume", s(tmp.path()), "--batch", "3"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{err}");
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("cannot be used with"), "{err}");
    // Fewer iterations than done.
    let config = tmp.path().join("tiny.toml");
    write_config(&config, 10);
    let run = tmp.path().join("run");
    assert!(train(&["--config", s(&config), "--out", s(&run)])
        .output()
        .unwrap()
        .status
        .success());
    let out = train(&["--resume", s(&run), "--iters", "5"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{err}");
    assert!(
        err.contains("below the 10 iterations already done"),
        "{err}"
    );
    // A divergence names the step and the quantity, and says how to continue.
    let out = train(&[
        "--config",
        s(&config),
        "--out",
        s(&tmp.path().join("nan")),
        "--lr",
        "1e30",
    ])
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{err}");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("non-finite") && err.contains("at step") && err.contains("--on-nan restart"),
        "{err}"
    );
}

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

/// Waits (at most 60 s) until `what(path)` holds; `why` names the condition.
fn wait_for(path: &Path, why: &str, what: impl Fn(&Path) -> bool) {
    let t0 = Instant::now();
    while !what(path) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "timed out waiting for {why} ({})",
            path.display()
        );
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

/// Whether a checkpoint temp file (`.model.safetensors.tmpPID`) is in `run`.
fn has_temp(run: &Path) -> bool {
    std::fs::read_dir(run).unwrap().any(|e| {
        let name = e.unwrap().file_name();
        name.to_string_lossy().starts_with(".model.safetensors.tmp")
    })
}

/// The inode of the checkpoint (each atomic write renames a new file over it).
fn checkpoint_inode(run: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(run.join(MODEL_FILE))
        .ok()
        .map(|m| m.ino())
}

/// SIGKILLs `child` in the middle of a checkpoint write: polls for its temp file
/// (`.model.safetensors.tmpPID`, one `stat` per poll), freezes the process (SIGSTOP, then
/// waits until it is stopped), and kills it if the temp file is still there, so the kill
/// lands between the file's creation and its rename; else lets it go on (SIGCONT) and waits
/// for the next write. Returns the number of writes seen but missed.
fn kill_mid_write(child: &mut Child, run: &Path) -> usize {
    let pid = child.id() as libc::pid_t;
    let temp = run.join(format!(".{MODEL_FILE}.tmp{pid}"));
    let t0 = Instant::now();
    let mut missed = 0;
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no checkpoint write caught in 60 s ({missed} missed)"
        );
        if !temp.exists() {
            continue;
        }
        // SAFETY: plain system calls on our own child, which is not reaped before
        // `child.wait()` (waitpid with WUNTRACED reports a stop without reaping).
        let mut status = 0;
        let stopped = unsafe {
            libc::kill(pid, libc::SIGSTOP) == 0
                && libc::waitpid(pid, &mut status, libc::WUNTRACED) == pid
        };
        assert!(
            stopped && libc::WIFSTOPPED(status),
            "training process did not stop (status {status})"
        );
        if temp.exists() {
            child.kill().unwrap();
            child.wait().unwrap();
            return missed;
        }
        missed += 1;
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    }
}

/// SIGKILL at random moments, each after training has progressed, and every fourth kill in
/// the middle of a checkpoint write. Why these moments: a kill right after a (re)start would
/// find nothing but the checkpoint the process started from, and a kill at a random moment
/// rarely lands inside a write (a few milliseconds out of each checkpoint interval, less on
/// a fast disk). So before each kill the test waits until the process has replaced the
/// checkpoint (a new inode; a resumed run writes its first checkpoint only after training
/// iterations), then waits a random 0-60 ms more (so the kills fall anywhere in the
/// iteration, logging and checkpoint cycle), or for every fourth kill catches a write in the
/// act (see [`kill_mid_write`]). Both properties then hold by construction, whatever the
/// machine's speed or load: the checkpoint step grows at every kill and at least six kills
/// leave a temp file beside an intact checkpoint.
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
    wait_for(&run.join(MODEL_FILE), "the step-0 checkpoint", |p| {
        p.exists()
    });
    let mut start_inode = checkpoint_inode(&run);
    let (mut steps, mut mid_write, mut missed) = (Vec::new(), 0, 0);
    for kill in 1..=24 {
        wait_for(&run, "a new checkpoint renamed over the old one", |r| {
            let ino = checkpoint_inode(r);
            ino.is_some() && ino != start_inode
        });
        if kill % 4 == 0 {
            missed += kill_mid_write(&mut child, &run);
            assert!(has_temp(&run), "kill {kill}");
        } else {
            std::thread::sleep(Duration::from_micros((rng.uniform() * 60_000.0) as u64));
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        }
        // Killed while writing a checkpoint: its temp file is left beside the intact one.
        mid_write += usize::from(has_temp(&run));
        // The folder loads and resumes, whatever the moment of the kill.
        let loaded = Model::load(&run, Some(Checkpoint::Last), None)
            .unwrap_or_else(|e| panic!("kill {kill}: {e}"));
        let trainer = Trainer::resume_with(&run, |c| TrainData::toy(&c.data, c.train.seed))
            .unwrap_or_else(|e| panic!("kill {kill}: {e}"));
        assert_eq!(trainer.step, loaded.step);
        steps.push(loaded.step);
        if kill < 24 {
            start_inode = checkpoint_inode(&run);
            child = spawn_quiet(&["--resume", s(&run)]);
        }
    }
    println!(
        "24 SIGKILLs ({mid_write} left a checkpoint temp file; {missed} writes finished before \
         the process stopped); checkpoint step after each: {steps:?}"
    );
    // Every kill came after progress, so the checkpoint step strictly grows from above 0.
    assert!(steps[0] > 0, "{steps:?}");
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
    assert!(mid_write >= 6, "{mid_write} kills landed mid-write");
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
        wait_for(&run.join(METRICS_FILE), "the first metrics line", |p| {
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

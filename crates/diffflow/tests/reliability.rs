//! Reliability of training runs: exact resume, the divergence guard, and hostile checkpoints.

use diffflow::checkpoint::{self, TensorFile};
use diffflow::config::{NanAction, Preset, RunConfig};
use diffflow::model::{Checkpoint, Model};
use diffflow::nn::MlpConfig;
use diffflow::sde::StepsSchedule;
use diffflow::train::{
    Observer, Restart, Silent, StepStats, TrainData, Trainer, METRICS_FILE, MODEL_FILE,
};
use diffflow::Error;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// A small run: progressive N (4 → 8 at 30) and a flexible grid, so that the resumed run
/// has to restore the RNG and the N schedule's position.
fn tiny() -> RunConfig {
    let mut c = RunConfig::preset(Preset::Quick, "olympic");
    c.data.train_size = 2000;
    c.data.test_size = 200;
    c.model.net = MlpConfig {
        width: 24,
        depth: 2,
        fourier: 8,
        ..MlpConfig::small()
    };
    c.train.iters = 60;
    c.train.batch = 64;
    c.train.steps = StepsSchedule::parse("4,8@30").unwrap();
    c.train.lr = 5e-3;
    c.train.lr_decay_every = 20;
    c.train.ema_start = 5;
    c.train.log_every = 10;
    c.train.checkpoint_every = 25;
    c.train.threads = 1;
    c.sample.n = 100;
    c
}

fn data(c: &RunConfig) -> TrainData {
    TrainData::toy(&c.data, c.train.seed).unwrap()
}

fn read(dir: &Path, f: &str) -> Vec<u8> {
    std::fs::read(dir.join(f)).unwrap()
}

/// Sets the stop flag when iteration `at` is done.
struct StopAt<'a> {
    at: usize,
    flag: &'a AtomicBool,
}
impl Observer for StopAt<'_> {
    fn step(&mut self, s: &StepStats) {
        if s.step == self.at {
            self.flag.store(true, Ordering::Relaxed);
        }
    }
}

#[test]
fn interrupted_and_resumed_run_is_byte_identical() {
    let full = tempfile::tempdir().unwrap();
    let cfg = tiny();
    Trainer::new(cfg.clone(), data(&cfg))
        .unwrap()
        .run(Some(full.path()), &mut Silent, None)
        .unwrap();
    // Interrupted mid logging interval (7, 33), at a periodic checkpoint (25), right after
    // the N schedule switches (31), and twice in a row (7 then 33).
    for stops in [vec![7], vec![25], vec![31], vec![7, 33]] {
        let dir = tempfile::tempdir().unwrap();
        let mut tr = Trainer::new(cfg.clone(), data(&cfg)).unwrap();
        for &k in &stops {
            let flag = AtomicBool::new(false);
            let err = tr
                .run(
                    Some(dir.path()),
                    &mut StopAt { at: k, flag: &flag },
                    Some(&flag),
                )
                .unwrap_err();
            assert!(
                matches!(err, Error::Interrupted { step } if step == k),
                "{err}"
            );
            assert_eq!(
                Model::load(dir.path(), Some(Checkpoint::Last), None)
                    .unwrap()
                    .step,
                k
            );
            // A fresh process: everything comes back from the folder.
            tr = Trainer::resume(dir.path(), data(&cfg)).unwrap();
            assert_eq!(tr.step, k);
        }
        tr.run(Some(dir.path()), &mut Silent, None).unwrap();
        assert_eq!(
            read(dir.path(), METRICS_FILE),
            read(full.path(), METRICS_FILE),
            "metrics after stops at {stops:?}"
        );
        assert_eq!(
            read(dir.path(), MODEL_FILE),
            read(full.path(), MODEL_FILE),
            "model after stops at {stops:?}"
        );
    }
    let lines = String::from_utf8(read(full.path(), METRICS_FILE)).unwrap();
    assert_eq!(lines.lines().count(), 6);
}

#[test]
fn raising_iters_on_resume_continues_exactly() {
    let cfg = tiny();
    let full = tempfile::tempdir().unwrap();
    Trainer::new(cfg.clone(), data(&cfg))
        .unwrap()
        .run(Some(full.path()), &mut Silent, None)
        .unwrap();
    // A complete 30-iteration run, trained on to 60: the same lines and final bytes as one
    // 60-iteration run (30 is a multiple of log_every, so no extra metrics line).
    let dir = tempfile::tempdir().unwrap();
    let mut short = cfg.clone();
    short.train.iters = 30;
    Trainer::new(short, data(&cfg))
        .unwrap()
        .run(Some(dir.path()), &mut Silent, None)
        .unwrap();
    let mut tr = Trainer::resume(dir.path(), data(&cfg)).unwrap();
    assert_eq!(tr.cfg.train.iters, 30, "iters stays as saved unless asked");
    tr.run(Some(dir.path()), &mut Silent, None).unwrap();
    assert_eq!(
        tr.step, 30,
        "a complete run does not train further by itself"
    );
    assert!(tr.set_iters(29).is_err());
    tr.set_iters(60).unwrap();
    tr.run(Some(dir.path()), &mut Silent, None).unwrap();
    assert_eq!(
        read(dir.path(), METRICS_FILE),
        read(full.path(), METRICS_FILE)
    );
    assert_eq!(read(dir.path(), MODEL_FILE), read(full.path(), MODEL_FILE));
}

#[test]
fn resume_with_other_data_is_refused() {
    let cfg = tiny();
    let dir = tempfile::tempdir().unwrap();
    let mut short = cfg.clone();
    short.train.iters = 5;
    Trainer::new(short, data(&cfg))
        .unwrap()
        .run(Some(dir.path()), &mut Silent, None)
        .unwrap();
    let mut other = cfg.clone();
    other.data.train_size = 1999;
    let err = Trainer::resume(dir.path(), data(&other))
        .err()
        .unwrap()
        .to_string();
    println!("resume with other data: {err}");
    assert!(err.contains("training data differ"), "{err}");
}

/// Records restarts.
#[derive(Default)]
struct Restarts(Vec<Restart>);
impl Observer for Restarts {
    fn restart(&mut self, r: &Restart) {
        self.0.push(r.clone());
    }
}

/// The tiny run with a learning rate that jumps by 1e12 at iteration 30: it diverges a few
/// iterations later, after the checkpoint of iteration 25.
fn diverging() -> RunConfig {
    let mut c = tiny();
    c.train.lr_decay = 1e12;
    c.train.lr_decay_every = 30;
    c
}

#[test]
fn divergence_stops_with_step_and_quantity_and_keeps_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = diverging();
    let mut tr = Trainer::new(cfg.clone(), data(&cfg)).unwrap();
    let err = tr.run(Some(dir.path()), &mut Silent, None).unwrap_err();
    println!("divergence: {err}");
    let Error::NonFinite { step, what } = &err else {
        panic!("expected NonFinite, got {err}");
    };
    assert!((31..40).contains(step), "{err}");
    assert!(
        what.starts_with("loss") || what.starts_with("gradient") || what.contains("after"),
        "{err}"
    );
    assert!(err.to_string().contains(&format!("at step {step}")));
    // The checkpoint on disk is the last good one (iteration 25), complete and finite.
    let run = Model::load(dir.path(), Some(Checkpoint::Last), None).unwrap();
    assert_eq!(run.step, 25);
    // And it is exactly the checkpoint a run without the jump writes at 25 (same bytes but
    // for the stored configuration: compare the tensors).
    let good = tempfile::tempdir().unwrap();
    let mut stop25 = cfg.clone();
    stop25.train.iters = 25;
    Trainer::new(stop25, data(&cfg))
        .unwrap()
        .run(Some(good.path()), &mut Silent, None)
        .unwrap();
    let a = checkpoint::read(&dir.path().join(MODEL_FILE)).unwrap();
    let b = checkpoint::read(&good.path().join(MODEL_FILE)).unwrap();
    assert_eq!(a.tensors.len(), b.tensors.len());
    for (name, t) in &a.tensors {
        let d = (t - &b.tensors[name]).unwrap().abs().unwrap();
        let max = d.flatten_all().unwrap().max(0).unwrap();
        assert_eq!(max.to_scalar::<f32>().unwrap(), 0.0, "{name}");
    }
    // The failed iteration changed nothing (the loss is checked before the update).
    assert_eq!(tr.step, step - 1);
    // A state with a NaN is never saved: the checkpoint on disk stays as it was.
    let before = read(dir.path(), MODEL_FILE);
    let (name, var) = &tr.flow.score.vars()[2];
    var.set(&(var.as_tensor() * f64::NAN).unwrap()).unwrap();
    let err = tr.save(dir.path()).unwrap_err().to_string();
    println!("save with NaN weights: {err}");
    assert!(err.contains(&format!("parameter score.{name}")), "{err}");
    assert!(err.contains("checkpoint not written"), "{err}");
    assert_eq!(read(dir.path(), MODEL_FILE), before);
}

#[test]
fn divergence_restart_goes_back_with_smaller_learning_rate() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = diverging();
    cfg.train.on_nan.action = NanAction::Restart;
    cfg.train.on_nan.lr_factor = 1e-12;
    cfg.train.on_nan.max_restarts = 2;
    let mut tr = Trainer::new(cfg.clone(), data(&cfg)).unwrap();
    let mut obs = Restarts::default();
    tr.run(Some(dir.path()), &mut obs, None).unwrap();
    assert_eq!(tr.step, 60);
    assert_eq!(tr.restarts(), 1);
    assert_eq!(obs.0.len(), 1);
    let r = &obs.0[0];
    println!("restart: {r:?}");
    assert_eq!((r.from_step, r.restarts, r.lr_scale), (25, 1, 1e-12));
    assert!((31..40).contains(&r.failed_step));
    // Reported in the metrics lines written after the restart, and in the checkpoint.
    let text = String::from_utf8(read(dir.path(), METRICS_FILE)).unwrap();
    let steps: Vec<u64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, [10, 20, 30, 40, 50, 60]);
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let restarted = v["step"].as_u64().unwrap() > 25;
        assert_eq!(
            v.get("restarts").and_then(|r| r.as_u64()),
            restarted.then_some(1),
            "{l}"
        );
        assert!(v["loss"].as_f64().unwrap().is_finite());
    }
    let resumed = Trainer::resume(dir.path(), data(&cfg)).unwrap();
    assert_eq!((resumed.restarts(), resumed.lr_scale()), (1, 1e-12));
    // Deterministic: the same run again gives the same bytes.
    let again = tempfile::tempdir().unwrap();
    Trainer::new(cfg.clone(), data(&cfg))
        .unwrap()
        .run(Some(again.path()), &mut Silent, None)
        .unwrap();
    assert_eq!(read(dir.path(), MODEL_FILE), read(again.path(), MODEL_FILE));
    assert_eq!(
        read(dir.path(), METRICS_FILE),
        read(again.path(), METRICS_FILE)
    );
}

#[test]
fn divergence_restart_gives_up_after_max_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = diverging();
    cfg.train.on_nan.action = NanAction::Restart;
    cfg.train.on_nan.lr_factor = 0.5; // far too little against a 1e12 jump
    cfg.train.on_nan.max_restarts = 2;
    let mut tr = Trainer::new(cfg.clone(), data(&cfg)).unwrap();
    let mut obs = Restarts::default();
    let err = tr.run(Some(dir.path()), &mut obs, None).unwrap_err();
    println!("gave up: {err}");
    assert!(matches!(err, Error::NonFinite { .. }), "{err}");
    assert!(err.to_string().contains("after 2 restarts"), "{err}");
    assert_eq!(obs.0.len(), 2);
    assert_eq!(obs.0[1].lr_scale, 0.25);
    assert_eq!(
        Model::load(dir.path(), Some(Checkpoint::Last), None)
            .unwrap()
            .step,
        25
    );
}

/// A finished tiny run's checkpoint: its tensors and metadata.
fn good_run() -> (tempfile::TempDir, TensorFile) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny();
    cfg.train.iters = 3;
    Trainer::new(cfg.clone(), data(&cfg))
        .unwrap()
        .run(Some(dir.path()), &mut Silent, None)
        .unwrap();
    let file = checkpoint::read(&dir.path().join(MODEL_FILE)).unwrap();
    (dir, file)
}

/// Writes `file` (with a valid checksum) into a fresh run folder and loads it back.
fn load_modified(file: &TensorFile) -> String {
    let dir = tempfile::tempdir().unwrap();
    checkpoint::write(&dir.path().join(MODEL_FILE), &file.tensors, &file.metadata).unwrap();
    let load = Model::load(dir.path(), Some(Checkpoint::Last), None)
        .err()
        .map(|e| e.to_string());
    let resume = Trainer::resume(dir.path(), data(&tiny()))
        .err()
        .map(|e| e.to_string());
    let err = load.expect("load_run must refuse it");
    let err2 = resume.expect("resume must refuse it");
    // Both report the same problem.
    assert_eq!(err, err2);
    err
}

fn load_bytes(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(MODEL_FILE), bytes).unwrap();
    let err = Model::load(dir.path(), Some(Checkpoint::Last), None)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains(MODEL_FILE), "names the file: {err}");
    err
}

#[test]
fn hostile_checkpoints_are_clear_errors() {
    let (dir, good) = good_run();
    let bytes = read(dir.path(), MODEL_FILE);
    let mut report = Vec::new();
    let mut check = |label: &str, err: String, expect: &str| {
        assert!(err.contains(expect), "{label}: {err}");
        assert!(!err.contains('\n'), "{label}: one line: {err}");
        report.push(format!("{label}: {err}"));
    };
    // Truncations, from empty to one byte short.
    for cut in [0, 7, 8, 100, bytes.len() / 2, bytes.len() - 1] {
        check(
            &format!("truncated to {cut} bytes"),
            load_bytes(&bytes[..cut]),
            "not a valid safetensors file",
        );
    }
    // Bit flips in the payload and in the metadata.
    let mut flipped = bytes.clone();
    let n = flipped.len();
    flipped[n - 5] ^= 0x10;
    check(
        "bit flip in a tensor",
        load_bytes(&flipped),
        "checksum mismatch",
    );
    let at = bytes.windows(6).position(|w| w == b"lr = 0").unwrap();
    let mut flipped = bytes.clone();
    flipped[at + 5] ^= 0x01;
    check(
        "bit flip in the stored config",
        load_bytes(&flipped),
        "checksum mismatch",
    );
    // Not a safetensors file at all.
    check(
        "a text file",
        load_bytes(b"lr = 0.01\n[train]\nbatch = 3\n"),
        "not a valid safetensors file",
    );
    let mut huge = bytes.clone();
    huge[..8].copy_from_slice(&(1u64 << 62).to_le_bytes());
    check(
        "header length 2^62",
        load_bytes(&huge),
        "not a valid safetensors file",
    );
    // Valid files (good checksum) whose content does not fit.
    let name = "drift.input_embed.weight";
    assert!(good.tensors.contains_key(name), "{:?}", good.tensors.keys());
    let mut f = copy(&good);
    f.tensors.remove("adam.v.score.layers.3.bias");
    check(
        "missing Adam moment",
        load_modified(&f),
        "missing tensor 'adam.v.score.layers.3.bias'",
    );
    let mut f = copy(&good);
    f.tensors
        .insert("drift.extra".into(), good.tensors[name].clone());
    check(
        "extra tensor",
        load_modified(&f),
        "unexpected tensor 'drift.extra'",
    );
    let mut f = copy(&good);
    let t = &good.tensors[name];
    f.tensors.insert(name.into(), t.narrow(0, 0, 3).unwrap());
    check("wrong shape", load_modified(&f), "has shape [3, 2]");
    let mut f = copy(&good);
    f.tensors
        .insert(name.into(), t.to_dtype(candle_core::DType::F64).unwrap());
    check(
        "wrong dtype (F64 in an f32 run)",
        load_modified(&f),
        "dtype F64",
    );
    let mut f = copy(&good);
    f.tensors
        .insert(name.into(), t.to_dtype(candle_core::DType::U8).unwrap());
    check("wrong dtype (U8)", load_modified(&f), "dtype U8");
    let mut f = copy(&good);
    let nan = (t * f64::NAN).unwrap();
    f.tensors.insert("ema.score.input_embed.weight".into(), nan);
    check(
        "NaN in the EMA weights",
        load_modified(&f),
        "'ema.score.input_embed.weight' holds NaN",
    );
    // Metadata.
    let mut f = copy(&good);
    f.metadata.remove("format");
    check("no format", load_modified(&f), "not a diffflow checkpoint");
    let mut f = copy(&good);
    f.metadata.remove("state");
    check("no state", load_modified(&f), "missing metadata 'state'");
    let mut f = copy(&good);
    let cfg = f.metadata["config"].replace("[train]", "[train]\nmomentum = 0.9");
    f.metadata.insert("config".into(), cfg);
    check(
        "unknown key in the stored config",
        load_modified(&f),
        "stored config",
    );
    let mut f = copy(&good);
    let cfg = f.metadata["config"].replace("width = 24", "width = 2000000000");
    f.metadata.insert("config".into(), cfg);
    check(
        "absurd width in the stored config",
        load_modified(&f),
        "model.net.width must be <=",
    );
    let mut f = copy(&good);
    let cfg = f.metadata["config"].replace("width = 24", "width = 60000");
    f.metadata.insert("config".into(), cfg);
    check(
        "width 60000 against a file of width 24 (must not allocate it)",
        load_modified(&f),
        "far more than the file holds",
    );
    let state = good.metadata["state"].clone();
    for (label, from, to, expect) in [
        (
            "absurd dimension",
            "\"dim\":2",
            "\"dim\":1000000000000",
            "dimension",
        ),
        (
            "dimension 3",
            "\"dim\":2",
            "\"dim\":3",
            "standardisation has 2 columns",
        ),
        (
            "step inconsistent",
            "\"step\":3",
            "\"step\":4",
            "step 4 but Adam steps",
        ),
        (
            "unknown state field",
            "\"dim\":2",
            "\"dim\":2,\"x\":1",
            "unknown field",
        ),
        (
            "bad RNG state",
            "\"key\":\"",
            "\"key\":\"zz",
            "malformed RNG state",
        ),
        (
            "negative lr scale",
            "\"lr_scale\":1.0",
            "\"lr_scale\":-1.0",
            "scale",
        ),
    ] {
        assert!(state.contains(from), "{from} in {state}");
        let mut f = copy(&good);
        f.metadata
            .insert("state".into(), state.replacen(from, to, 1));
        check(label, load_modified(&f), expect);
    }
    // A valid safetensors file written by another tool: no checksum.
    let dir2 = tempfile::tempdir().unwrap();
    let p = dir2.path().join(MODEL_FILE);
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::json!({"format": "diffflow"}),
    );
    header.insert(
        "x".into(),
        serde_json::json!({"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}),
    );
    let head = serde_json::to_vec(&header).unwrap();
    let mut raw = (head.len() as u64).to_le_bytes().to_vec();
    raw.extend(head);
    raw.extend(1f32.to_le_bytes());
    std::fs::write(&p, raw).unwrap();
    check(
        "no checksum",
        Model::load(dir2.path(), Some(Checkpoint::Last), None)
            .err()
            .unwrap()
            .to_string(),
        "no content checksum",
    );
    println!("{}", report.join("\n"));
}

fn copy(f: &TensorFile) -> TensorFile {
    TensorFile {
        tensors: f.tensors.clone(),
        metadata: f.metadata.clone(),
        verified: f.verified,
    }
}

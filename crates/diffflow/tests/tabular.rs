//! Runs on data files: the preprocessing seen by the trainer (per-batch dequantisation),
//! validation with the best checkpoint and early stopping, and exact resume with both.

use diffflow::checkpoint;
use diffflow::config::{Preset, RunConfig};
use diffflow::data::source::FileSource;
use diffflow::model::{Checkpoint, Model};
use diffflow::nn::MlpConfig;
use diffflow::rng::Rng;
use diffflow::sde::StepsSchedule;
use diffflow::train::{
    Observer, Silent, StepStats, TrainData, Trainer, BEST_FILE, METRICS_FILE, MODEL_FILE,
};
use diffflow::Error;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// A CSV of 120 rows: `a` continuous, `b` constant, `c` integers 0..=4 correlated with `a`,
/// `d` continuous, with a header.
fn write_csv(dir: &Path) -> PathBuf {
    let mut rng = Rng::new(11);
    let mut text = String::from("a,b,c,d\n");
    for _ in 0..120 {
        let a = rng.normal();
        let c = ((a + 2.0).clamp(0.0, 4.9)).floor();
        let d = 0.5 * a + 0.3 * rng.normal();
        text += &format!("{a},3,{c},{d}\n");
    }
    let p = dir.join("small.csv");
    std::fs::write(&p, text).unwrap();
    p
}

fn cfg(path: &Path) -> RunConfig {
    let mut c = RunConfig::preset(Preset::Tabular, "small");
    c.data.file = Some(FileSource::new(path));
    c.model.net = MlpConfig {
        width: 16,
        depth: 1,
        fourier: 4,
        ..MlpConfig::small()
    };
    let t = &mut c.train;
    t.iters = 40;
    t.batch = 32;
    t.steps = StepsSchedule::parse("3,5@20").unwrap();
    t.lr = 5e-3;
    t.log_every = 10;
    t.checkpoint_every = 15;
    t.threads = 1;
    t.validation.every = 10;
    c.sample.n = 10;
    c
}

fn data(c: &RunConfig) -> TrainData {
    c.training_data().unwrap()
}

fn read(dir: &Path, f: &str) -> Vec<u8> {
    std::fs::read(dir.join(f)).unwrap()
}

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

/// Runs `cfg` to the end in `dir`, interrupted after each of `stops` and resumed from the
/// folder each time.
fn run_with_stops(c: &RunConfig, dir: &Path, stops: &[usize]) -> Trainer {
    let mut tr = Trainer::new(c.clone(), data(c)).unwrap();
    for &k in stops {
        let flag = AtomicBool::new(false);
        let err = tr
            .run(Some(dir), &mut StopAt { at: k, flag: &flag }, Some(&flag))
            .unwrap_err();
        assert!(
            matches!(err, Error::Interrupted { step } if step == k),
            "{err}"
        );
        tr = Trainer::resume_with(dir, RunConfig::training_data).unwrap();
        assert_eq!(tr.step, k);
    }
    tr.run(Some(dir), &mut Silent, None).unwrap();
    tr
}

#[test]
fn dequantised_batches_are_the_integers_plus_fresh_uniform_noise() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(&write_csv(tmp.path()));
    let data = data(&c);
    let map = data.columns.clone().unwrap();
    assert_eq!(map.kept, vec![0, 2, 3]);
    assert_eq!(map.constants, vec![(1, 3.0)]);
    assert_eq!(map.dequantized, vec![1]);
    assert_eq!(data.dim, 3);
    let s = &data.standardizer;
    assert_eq!(data.dequantize, vec![0.0, 1.0 / s.std[1], 0.0]);
    let mut rng = Rng::new(4);
    let mut x = data.draw_batch(64, &mut rng);
    let mut again = data.draw_batch(64, &mut Rng::new(4));
    assert_eq!(x, again, "seeded");
    s.invert(&mut x);
    s.invert(&mut again);
    let mut train = data.train.clone();
    s.invert(&mut train);
    let rows: Vec<&[f64]> = train.chunks(3).collect();
    let mut fractions = Vec::new();
    for p in x.chunks(3) {
        // Integer part from the data, fraction in [0, 1); the other columns exactly a row.
        let k = p[1].floor();
        assert!((0.0..=4.0).contains(&k), "{p:?}");
        fractions.push(p[1] - k);
        assert!(
            rows.iter()
                .any(|r| (r[0] - p[0]).abs() < 1e-12 && (r[1] - k).abs() < 1e-9),
            "{p:?} is not a training row plus noise"
        );
    }
    assert!(fractions.iter().all(|u| (0.0..1.0).contains(u)));
    let mean = fractions.iter().sum::<f64>() / fractions.len() as f64;
    assert!((mean - 0.5).abs() < 0.15, "{mean}");
    // The next batch has fresh noise.
    let y = data.draw_batch(64, &mut rng);
    assert_ne!(&y[..], &data.draw_batch(64, &mut Rng::new(4))[..]);
}

#[test]
fn file_run_with_validation_resumes_byte_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(&write_csv(tmp.path()));
    let full = tempfile::tempdir().unwrap();
    let tr = run_with_stops(&c, full.path(), &[]);
    let vs = tr.validation_state().clone();
    assert!(vs.best.is_some());
    let metrics = String::from_utf8(read(full.path(), METRICS_FILE)).unwrap();
    let val_lines = metrics.lines().filter(|l| l.contains("val_metric")).count();
    assert_eq!(val_lines, 4, "validations at 10, 20, 30, 40:\n{metrics}");
    let best = Model::load(full.path(), Some(Checkpoint::Best), None).unwrap();
    assert_eq!(best.step, vs.best_step);
    assert_eq!(best.columns, tr.data.columns);
    // Stops inside a logging interval (7), at a validation (20), at a validation that is
    // also a periodic checkpoint (30), twice in a row (7 then 33).
    for stops in [vec![7], vec![20], vec![30], vec![7, 33]] {
        let dir = tempfile::tempdir().unwrap();
        run_with_stops(&c, dir.path(), &stops);
        for f in [METRICS_FILE, MODEL_FILE, BEST_FILE] {
            assert_eq!(
                read(dir.path(), f),
                read(full.path(), f),
                "{f} after stops at {stops:?}"
            );
        }
    }
    // The run's file is part of the run: other data are refused on resume.
    let mut c2 = c.clone();
    c2.train.seed = 1;
    let e = Trainer::resume(full.path(), data(&c2)).err().unwrap();
    assert!(e.to_string().contains("training data differ"), "{e}");
}

#[test]
fn early_stopping_ends_the_run_and_survives_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = cfg(&write_csv(tmp.path()));
    // Validation every 2 iterations with a large learning rate: noisy enough to miss
    // improving twice in a row well before 40 iterations (deterministic with the seed).
    c.train.validation.every = 2;
    c.train.validation.patience = 2;
    c.train.lr = 0.05;
    c.train.lr_decay_every = 0;
    let full = tempfile::tempdir().unwrap();
    let tr = run_with_stops(&c, full.path(), &[]);
    let vs = tr.validation_state().clone();
    assert!(vs.stopped, "{vs:?}");
    assert!(tr.step < 40 && tr.is_complete());
    assert_eq!(vs.since_best, 2);
    assert_eq!(
        Model::load(full.path(), Some(Checkpoint::Last), None)
            .unwrap()
            .step,
        tr.step
    );
    assert_eq!(
        Model::load(full.path(), Some(Checkpoint::Best), None)
            .unwrap()
            .step,
        vs.best_step
    );
    // Resuming a stopped run trains no further.
    let before = read(full.path(), MODEL_FILE);
    let mut again = Trainer::resume(full.path(), data(&c)).unwrap();
    assert!(again.is_complete());
    again.run(Some(full.path()), &mut Silent, None).unwrap();
    assert_eq!(again.step, tr.step);
    assert_eq!(read(full.path(), MODEL_FILE), before);
    // Interrupted before the stop, resumed: the same files.
    let dir = tempfile::tempdir().unwrap();
    run_with_stops(&c, dir.path(), &[3]);
    for f in [METRICS_FILE, MODEL_FILE, BEST_FILE] {
        assert_eq!(read(dir.path(), f), read(full.path(), f), "{f}");
    }
}

#[test]
fn validation_needs_validation_points_and_hostile_column_maps_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write_csv(tmp.path());
    let mut c = cfg(&path);
    c.data.file.as_mut().unwrap().val_fraction = Some(0.0);
    let e = Trainer::new(c.clone(), data(&c)).err().unwrap().to_string();
    assert!(e.contains("needs validation points"), "{e}");
    // A checkpoint whose column map does not fit the model.
    let c = cfg(&path);
    let dir = tempfile::tempdir().unwrap();
    let mut short = c.clone();
    short.train.iters = 2;
    Trainer::new(short.clone(), data(&short))
        .unwrap()
        .run(Some(dir.path()), &mut Silent, None)
        .unwrap();
    let mut file = checkpoint::read(&dir.path().join(MODEL_FILE)).unwrap();
    let state = file.metadata["state"].clone();
    assert!(state.contains("\"kept\":[0,2,3]"), "{state}");
    for (from, to, want) in [
        (
            "\"kept\":[0,2,3]",
            "\"kept\":[0,2]",
            "kept columns for a model of dimension 3",
        ),
        ("\"kept\":[0,2,3]", "\"kept\":[0,3,2]", "not increasing"),
        (
            "\"dequantized\":[1]",
            "\"dequantized\":[7]",
            "dequantised coordinates",
        ),
        ("\"width\":4", "\"width\":5", "do not make 5"),
    ] {
        file.metadata
            .insert("state".into(), state.replace(from, to));
        checkpoint::write(&dir.path().join(MODEL_FILE), &file.tensors, &file.metadata).unwrap();
        let e = Model::load(dir.path(), Some(Checkpoint::Last), None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains(want) && e.contains(MODEL_FILE),
            "{from} -> {to}: {e}"
        );
    }
}

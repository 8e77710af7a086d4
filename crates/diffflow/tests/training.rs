//! Training end to end on small configurations: the loss goes down, runs are reproducible
//! byte for byte, checkpoints load back.

use diffflow::config::{Precision, Preset, RunConfig, Weights};
use diffflow::model::{Checkpoint, Model};
use diffflow::nn::MlpConfig;
use diffflow::sde::StepsSchedule;
use diffflow::train::{Silent, TrainData, Trainer, METRICS_FILE, MODEL_FILE};

fn tiny(dataset: &str) -> RunConfig {
    let mut c = RunConfig::preset(Preset::Quick, dataset);
    c.data.train_size = 4000;
    c.data.test_size = 500;
    c.model.net = MlpConfig {
        width: 32,
        depth: 2,
        fourier: 16,
        ..MlpConfig::small()
    };
    c.train.iters = 60;
    c.train.batch = 128;
    c.train.steps = StepsSchedule::parse("4,8@30").unwrap();
    c.train.lr = 5e-3;
    c.train.log_every = 10;
    c.train.checkpoint_every = 25;
    c.train.threads = 2;
    c.sample.n = 200;
    c
}

#[test]
fn loss_decreases_on_rings() {
    let mut cfg = tiny("rings");
    cfg.train.iters = 200;
    cfg.train.lr = 1e-2;
    cfg.train.steps = StepsSchedule::constant(5);
    let data = TrainData::toy(&cfg.data, cfg.train.seed).unwrap();
    let mut tr = Trainer::new(cfg, data).unwrap();
    let mut losses = Vec::new();
    for _ in 0..200 {
        losses.push(tr.train_step().unwrap().loss.loss);
    }
    let first: f64 = losses[..20].iter().sum::<f64>() / 20.0;
    let last: f64 = losses[180..].iter().sum::<f64>() / 20.0;
    assert!(last < first - 0.3, "loss {first} -> {last}");
}

#[test]
fn same_seed_same_bytes_and_checkpoint_loads() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    for d in &dirs {
        let cfg = tiny("olympic");
        let data = TrainData::toy(&cfg.data, cfg.train.seed).unwrap();
        let mut tr = Trainer::new(cfg, data).unwrap();
        tr.run(Some(d.path()), &mut Silent, None).unwrap();
    }
    let read = |d: &tempfile::TempDir, f: &str| std::fs::read(d.path().join(f)).unwrap();
    assert_eq!(read(&dirs[0], METRICS_FILE), read(&dirs[1], METRICS_FILE));
    assert_eq!(read(&dirs[0], MODEL_FILE), read(&dirs[1], MODEL_FILE));
    let lines = String::from_utf8(read(&dirs[0], METRICS_FILE)).unwrap();
    assert_eq!(lines.lines().count(), 6);
    // A different seed gives different bytes.
    let other = tempfile::tempdir().unwrap();
    let mut cfg = tiny("olympic");
    cfg.train.seed = 1;
    let data = TrainData::toy(&cfg.data, cfg.train.seed).unwrap();
    Trainer::new(cfg, data)
        .unwrap()
        .run(Some(other.path()), &mut Silent, None)
        .unwrap();
    assert_ne!(read(&dirs[0], MODEL_FILE), read(&other, MODEL_FILE));
    // Loads back with either weights.
    for w in [Weights::Live, Weights::Ema] {
        let run = Model::load(dirs[0].path(), Some(Checkpoint::Last), Some(w)).unwrap();
        assert_eq!(run.step, 60);
        assert_eq!(run.flow.dim(), 2);
    }
}

#[test]
fn thread_count_does_not_change_results() {
    let mut a = tiny("rings");
    a.train.iters = 5;
    let mut b = a.clone();
    b.train.threads = 1;
    let run = |c: RunConfig| {
        let data = TrainData::toy(&c.data, c.train.seed).unwrap();
        let mut tr = Trainer::new(c, data).unwrap();
        (0..5)
            .map(|_| tr.train_step().unwrap().loss.loss)
            .collect::<Vec<_>>()
    };
    assert_eq!(run(a), run(b));
}

#[test]
fn f64_training_runs() {
    let mut c = tiny("moons");
    c.model.precision = Precision::F64;
    c.train.iters = 3;
    let data = TrainData::toy(&c.data, 3).unwrap();
    let mut tr = Trainer::new(c, data).unwrap();
    for _ in 0..3 {
        assert!(tr.train_step().unwrap().loss.loss.is_finite());
    }
}

#[test]
fn missing_checkpoint_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let err = Model::load(d.path(), Some(Checkpoint::Last), None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}

//! Trains the LeNet MNIST classifier shipped in `assets/lenet/` (see its README):
//!
//! ```text
//! cargo run --release -p diffflow --example train_lenet -- --data-dir DIR \
//!     [--out crates/diffflow/assets/lenet/lenet_mnist.safetensors] [--epochs 6] [--seed 0]
//! ```
//!
//! `DIR` holds MNIST's `train-*` files (and `t10k-*`; without them the repository's copy of
//! the test set is used). Adam (the project's), batch 64, learning rate 1e-3 × 0.3 every 2
//! epochs, fresh dequantisation noise per batch, on all 60,000 training images; the test
//! accuracy is printed after every epoch but never used to choose anything. One thread
//! (`RAYON_NUM_THREADS=1` is forced): the same seed writes the same bytes.

use candle_core::{DType, Device};
use diffflow::checkpoint;
use diffflow::classifier::lenet::{self, EpochOptions, LeNet, CLASSES};
use diffflow::classifier::{accuracy, Classifier};
use diffflow::data::images::{ImageSet, Split};
use diffflow::data::pixels::{to_model, Offset};
use diffflow::optim::{step_decay, Adam, AdamConfig};
use diffflow::rng::{Rng, Stream};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

struct Args {
    data_dir: PathBuf,
    out: PathBuf,
    epochs: usize,
    seed: u64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        data_dir: PathBuf::new(),
        out: Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/lenet/lenet_mnist.safetensors"),
        epochs: 6,
        seed: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--data-dir" => args.data_dir = value()?.into(),
            "--out" => args.out = value()?.into(),
            "--epochs" => args.epochs = value()?.parse()?,
            "--seed" => args.seed = value()?.parse()?,
            _ => anyhow::bail!(
                "unknown argument {flag} (expected --data-dir, --out, --epochs, --seed)"
            ),
        }
    }
    anyhow::ensure!(
        !args.data_dir.as_os_str().is_empty(),
        "--data-dir DIR (MNIST) is required"
    );
    Ok(args)
}

/// Batch 64; lr 1e-3, × 0.3 every 2 epochs.
const BATCH: usize = 64;
const LR: f64 = 1e-3;
const GAMMA: f64 = 0.3;
const EVERY: usize = 2;

fn main() -> anyhow::Result<()> {
    // One thread for candle's matrix products: a fixed seed gives fixed bytes.
    std::env::set_var("RAYON_NUM_THREADS", "1");
    let args = parse_args()?;
    let train = ImageSet::from_idx_folder(&args.data_dir, Split::Train)?;
    let test = ImageSet::from_idx_folder(&args.data_dir, Split::Test).or_else(|_| {
        ImageSet::from_idx_folder(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/mnist"),
            Split::Test,
        )
    })?;
    let test_x = to_model(&test.pixels, test.levels, Offset::Half);
    let test_y = test.labels.clone().unwrap_or_default();
    let device = Device::Cpu;
    let net = LeNet::new(
        DType::F32,
        &device,
        &mut Rng::stream(args.seed, Stream::Init),
    )?;
    let mut adam = Adam::new(net.vars(), AdamConfig::default())?;
    let mut rng = Rng::stream(args.seed, Stream::Train);
    println!(
        "LeNet, {} parameters; {} training images, {} test images; batch {BATCH}, lr {LR} x {GAMMA} every {EVERY} epochs",
        net.num_params(),
        train.len(),
        test.len()
    );
    let start = Instant::now();
    let mut classifier = Classifier::new(net);
    let mut acc = 0.0;
    for epoch in 0..args.epochs {
        let t = Instant::now();
        let opts = EpochOptions {
            batch: BATCH,
            lr: step_decay(LR, GAMMA, EVERY, epoch),
        };
        let loss = lenet::train_epoch(classifier.net(), &mut adam, &train, opts, &mut rng)?;
        let train_s = t.elapsed().as_secs_f64();
        acc = accuracy(&classifier.evaluate(&test_x, 1)?.probs, &test_y, CLASSES)?;
        println!(
            "epoch {}: lr {:.1e}, train loss {loss:.4}, test accuracy {:.2}% ({train_s:.1} s)",
            epoch + 1,
            opts.lr,
            100.0 * acc
        );
    }
    let train_total = start.elapsed().as_secs_f64();
    let meta: BTreeMap<String, String> = [
        ("format", "diffflow-lenet-1".to_string()),
        ("architecture", "conv5x5(1->6) relu maxpool2, conv5x5(6->16) relu maxpool2, fc 256->120 relu, fc 120->84 relu (features), fc 84->10".into()),
        ("input", "28x28 row-major, (x + 0.5)/128 - 1 for pixels x in 0..255 (training: (x + u)/128 - 1, u ~ U[0,1) per batch)".into()),
        ("training", format!("examples/train_lenet.rs --seed {} --epochs {}: Adam(0.9, 0.999, 1e-8), batch {BATCH}, lr {LR} x {GAMMA} every {EVERY} epochs, {} MNIST training images", args.seed, args.epochs, train.len())),
        ("test_accuracy", format!("{acc:.4}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    checkpoint::write(&args.out, &classifier.net().tensors(), &meta)?;
    // Read back through the checked loader and time the features of the test set.
    classifier = Classifier::load(&args.out, &device)?;
    let t = Instant::now();
    let out = classifier.evaluate(&test_x, 1)?;
    let feat_s = t.elapsed().as_secs_f64();
    let again = accuracy(&out.probs, &test_y, CLASSES)?;
    anyhow::ensure!(again == acc, "reloaded accuracy {again} differs from {acc}");
    println!(
        "wrote {}: test accuracy {:.2}%, training {train_total:.1} s, features of {} images {feat_s:.2} s ({:.0} images/s, 1 thread)",
        args.out.display(),
        100.0 * acc,
        test.len(),
        test.len() as f64 / feat_s
    );
    Ok(())
}

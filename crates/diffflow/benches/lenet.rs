//! The LeNet classifier (`cargo bench -p diffflow --bench lenet`): features and probabilities
//! of 500 MNIST-sized images (one forward chunk), and one training epoch of 640 images at
//! batch 64 (10 Adam steps), one thread. Elements are images. One forward is 0.563 MFLOP
//! per image (matrix products: conv1 0.173, conv2 0.307, fc 0.083), so GFLOP/s =
//! images/s × 5.63e-4.

use candle_core::{DType, Device};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use diffflow::classifier::lenet::{train_epoch, EpochOptions, LeNet, INPUT};
use diffflow::classifier::Classifier;
use diffflow::data::{ImageSet, ImageShape};
use diffflow::optim::{Adam, AdamConfig};
use diffflow::rng::Rng;

fn lenet(c: &mut Criterion) {
    std::env::set_var("RAYON_NUM_THREADS", "1");
    let mut rng = Rng::new(0);
    let n = 500;
    let x: Vec<f64> = (0..n * INPUT).map(|_| 2.0 * rng.uniform() - 1.0).collect();
    let net = LeNet::new(DType::F32, &Device::Cpu, &mut rng).unwrap();
    let classifier = Classifier::new(net);
    let mut g = c.benchmark_group("lenet");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(
        format!("features + probabilities, {n} images, 1 thread"),
        |b| b.iter(|| classifier.evaluate(&x, 1).unwrap()),
    );
    let m = 640;
    let pixels = (0..m * INPUT).map(|_| rng.below(256) as u8).collect();
    let labels = (0..m).map(|i| (i % 10) as u8).collect();
    let set = ImageSet::new(pixels, Some(labels), ImageShape::grey(28, 28), 256, "bench").unwrap();
    let net = classifier.net();
    let mut adam = Adam::new(net.vars(), AdamConfig::default()).unwrap();
    let opts = EpochOptions {
        batch: 64,
        lr: 1e-4,
    };
    g.throughput(Throughput::Elements(m as u64));
    g.bench_function(
        format!("training epoch, {m} images, batch 64, 1 thread"),
        |b| b.iter(|| train_epoch(net, &mut adam, &set, opts, &mut rng).unwrap()),
    );
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = lenet
}
criterion_main!(benches);

//! Images end to end: the shipped LeNet on the shipped MNIST test set (accuracy, the FID
//! floor, noise and blank images), bits/dim of a closed-form Gaussian "image" model through
//! the probability-flow ODE and the fixed standardiser, and `TrainData` on prepared images.

use candle_core::Device;
use diffflow::analytic::GaussianFlow;
use diffflow::classifier::lenet::{CLASSES, FEATURES, INPUT};
use diffflow::classifier::{accuracy, class_balance, Classifier};
use diffflow::data::images::{ImageSet, Split};
use diffflow::data::pixels::{
    self, bits_per_dim, pixel_standardizer, to_model, to_pixels, HeldOut, Offset,
};
use diffflow::gaussian::Gaussian;
use diffflow::likelihood::{pf_ode_nll, NllOptions};
use diffflow::metrics::frechet::{expected_frechet_floor, frechet_distance, FeatureStats};
use diffflow::ode::Tolerances;
use diffflow::rng::Rng;
use diffflow::train::TrainData;
use std::path::Path;

fn mnist_test() -> ImageSet {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/mnist");
    ImageSet::from_idx_folder(&dir, Split::Test).unwrap()
}

fn rows(x: &[f64], idx: &[usize], d: usize) -> Vec<f64> {
    idx.iter()
        .flat_map(|&i| x[i * d..(i + 1) * d].iter().copied())
        .collect()
}

#[test]
fn shipped_classifier_accuracy_fid_floor_noise_and_blank_images() {
    let set = mnist_test();
    assert_eq!(set.len(), 10_000);
    let labels = set.labels.clone().unwrap();
    let x = to_model(&set.pixels, set.levels, Offset::Half);
    let c = Classifier::builtin(&Device::Cpu).unwrap();
    let out = c.evaluate(&x, 2).unwrap();
    assert_eq!(
        (out.features.len(), out.probs.len()),
        (10_000 * FEATURES, 10_000 * CLASSES)
    );
    // Threads change nothing.
    let one = c.evaluate(&x[..600 * INPUT], 1).unwrap();
    assert_eq!(one.features[..], out.features[..600 * FEATURES]);

    // Accuracy: measured 99.02% on all 10,000 (assets/lenet/README.md); bound 98.5%.
    let acc = accuracy(&out.probs, &labels, CLASSES).unwrap();
    let balance = class_balance(&out.probs, CLASSES).unwrap();
    eprintln!("test accuracy {:.4}, class balance {balance:?}", acc);
    assert!(acc >= 0.985, "accuracy {acc}");
    // The test labels are nearly balanced (KL 0.0017 nats to uniform), and so are the
    // predictions; the classifier is sure of real digits.
    assert!(
        balance.kl_to_uniform < 0.005 && balance.mean_max_prob > 0.97,
        "{balance:?}"
    );

    // FID between random halves (n = 5000 each) against its floor: the bias of the estimator
    // for two samples of one distribution, which the Gaussian formula predicts from the
    // feature covariance (metrics::frechet::expected_frechet_floor): 0.91 here, measured 1.01.
    // The features are ReLU outputs, not Gaussian, so the bound allows a factor 2 either way
    // (for scale: MNIST's first and last 5000 test images, other writers, are 11.8 apart).
    let f = &out.features;
    let mut perm: Vec<usize> = (0..10_000).collect();
    let mut rng = Rng::new(7);
    for i in (1..perm.len()).rev() {
        perm.swap(i, rng.below(i + 1));
    }
    let (a, b) = (
        rows(f, &perm[..5000], FEATURES),
        rows(f, &perm[5000..], FEATURES),
    );
    let halves = frechet_distance(&a, &b, FEATURES).unwrap();
    let all = FeatureStats::fit(f, FEATURES, "test").unwrap();
    let floor = expected_frechet_floor(&all.cov, FEATURES, 5000, 5000).unwrap();
    // MNIST's first 5000 test images (NIST's cleaner writers) against the last 5000.
    let first_last =
        frechet_distance(&f[..5000 * FEATURES], &f[5000 * FEATURES..], FEATURES).unwrap();
    // Uniform noise in [−1, 1], and blank (all-background) images.
    let noise: Vec<f64> = (0..2000 * INPUT)
        .map(|_| 2.0 * rng.uniform() - 1.0)
        .collect();
    let noise_fid = c.fid(&noise, &x, 2).unwrap();
    let blank_fid = c
        .fid(&vec![-1.0 + 1.0 / 256.0; 100 * INPUT], &x, 1)
        .unwrap();
    eprintln!(
        "FID (LeNet): random halves {halves:.4} (Gaussian floor {floor:.4}), first vs last 5000 \
         {first_last:.4}, noise {noise_fid:.2}, blank {blank_fid:.2}"
    );
    assert!(
        halves > 0.5 * floor && halves < 2.0 * floor,
        "{halves} vs floor {floor}"
    );
    assert!(
        noise_fid > 100.0 * floor && blank_fid > 100.0 * floor,
        "{noise_fid}, {blank_fid}"
    );
    let noise_balance = class_balance(
        &c.evaluate(&noise[..500 * INPUT], 1).unwrap().probs,
        CLASSES,
    )
    .unwrap();
    let blank_balance = class_balance(
        &c.evaluate(&vec![-1.0; 10 * INPUT], 1).unwrap().probs,
        CLASSES,
    )
    .unwrap();
    eprintln!("noise {noise_balance:?}, blank {blank_balance:?}");
    // Identical images all get one class: the largest possible imbalance.
    assert!((blank_balance.kl_to_uniform - 10f64.ln()).abs() < 1e-12);
}

/// A 4-D Gaussian DiffFlow in closed form, seen as a 2x2 image: orthonormal basis H/2
/// (H the 4x4 Hadamard matrix), one expanding, two contracting and one neutral direction.
fn gaussian_image_model() -> GaussianFlow {
    let h = [
        1.0, 1.0, 1.0, 1.0, 1.0, -1.0, 1.0, -1.0, 1.0, 1.0, -1.0, -1.0, 1.0, -1.0, -1.0, 1.0,
    ]
    .map(|v| 0.5 * v);
    GaussianFlow::new(
        &h,
        &[2.0, -1.0, -0.5, 0.0],
        &[0.1, -0.2, 0.3, 0.0],
        0.6,
        0.01,
        0.6,
    )
    .unwrap()
}

#[test]
fn bits_per_dim_of_a_gaussian_image_model_is_its_pixel_space_density() {
    let m = gaussian_image_model();
    let (t0, t1) = m.span();
    let flow = m.flow().unwrap();
    let d = 4;
    let opts = NllOptions {
        tol: Tolerances {
            rtol: 1e-10,
            atol: 1e-10,
            ..Tolerances::default()
        },
        chunk: 16,
        ..NllOptions::default()
    };
    for levels in [256u32, 17] {
        let half = f64::from(levels) / 2.0;
        // Dequantised pixel points x + u in [0, L): random pixels, uniform noise.
        let mut rng = Rng::new(u64::from(levels));
        let pixels: Vec<u8> = (0..30 * d)
            .map(|_| rng.below(levels as usize) as u8)
            .collect();
        let y = to_model(&pixels, levels, Offset::Uniform(&mut Rng::new(1)));
        let mut noise = Rng::new(1);
        let p: Vec<f64> = pixels
            .iter()
            .map(|&x| f64::from(x) + noise.uniform())
            .collect();
        // The model in pixel space: y = p / (L/2) − 1 maps N(μ, Σ) to N((μ + 1) L/2, (L/2)² Σ).
        let mean: Vec<f64> = m.mean_at(t0).iter().map(|v| (v + 1.0) * half).collect();
        let cov: Vec<f64> = m.cov_at(t0).iter().map(|v| v * half * half).collect();
        let want = Gaussian::new(mean, &cov).unwrap().nll(&p);
        let nll = pf_ode_nll(&flow, &y, &[t0, t1], &opts, &mut Rng::new(0), &|_| {}).unwrap();
        let s = pixel_standardizer(levels, d);
        let mut worst: f64 = 0.0;
        for (i, &n_model) in nll.nll.iter().enumerate() {
            let bpd = bits_per_dim(n_model, d, levels);
            let closed = want[i] / (d as f64 * std::f64::consts::LN_2);
            worst = worst.max((bpd - closed).abs());
            // The same through the standardiser's Jacobian, and the +log2(L/2) offset.
            let via = diffflow::likelihood::bits_per_dim(n_model - s.log_abs_det(), d);
            assert!((bpd - via).abs() < 1e-12);
            let offset = bpd - n_model / (d as f64 * std::f64::consts::LN_2);
            assert!((offset - half.log2()).abs() < 1e-12, "{offset}");
        }
        eprintln!("L = {levels}: max |bits/dim - closed form| = {worst:.2e}");
        // Measured 4e-9 (the solver runs at rtol = atol = 1e-10).
        assert!(worst < 1e-6, "L = {levels}: {worst}");
        // A wrong Jacobian (say std 1 instead of L/2) would be off by log2(L/2) ≥ 3 bits.
        assert!(half.log2() > 3.0);
    }
}

#[test]
fn train_data_draws_dequantised_batches_of_prepared_images() {
    let digits = ImageSet::digits().unwrap();
    let held = HeldOut {
        val: 0.1,
        test: 0.1,
    };
    let p = pixels::prepare(&digits, None, held, &mut Rng::new(0)).unwrap();
    let d = p.dim();
    let data = TrainData {
        train: p.train.clone(),
        test: p.test.clone(),
        dim: d,
        standardizer: p.standardizer.clone(),
        val: p.val.clone(),
        dequantize: p.dequantize.clone(),
        columns: None,
        notes: p.notes.clone(),
    };
    let batch = data.draw_batch(200, &mut Rng::new(3));
    assert!(batch.iter().all(|v| (-1.0..1.0).contains(v)));
    // Each drawn row is a training image plus noise inside its pixels' cells.
    let train_px = to_pixels(&p.train, 17);
    for row in to_pixels(&batch, 17).chunks_exact(d) {
        assert!(train_px.chunks_exact(d).any(|t| t == row));
    }
    let fresh = batch
        .iter()
        .filter(|v| ((*v + 1.0) * 8.5).fract() != 0.0)
        .count();
    assert!(fresh > batch.len() - 5, "noise is added to every pixel");
    // Back in data units: pixels + u, inside [0, 17).
    let mut back = batch.clone();
    data.standardizer.invert(&mut back);
    assert!(back.iter().all(|v| (-1e-9..17.0).contains(v)));
}

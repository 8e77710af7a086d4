//! The project's MNIST classifier ([`LeNet`], trained by `examples/train_lenet.rs`, weights
//! shipped in `assets/lenet/` and embedded in the library) as a judge of image samples:
//!
//! - [`Classifier::evaluate`]: penultimate features `[n, 84]` and class probabilities
//!   `[n, 10]` of images `[n, 784]` in `[−1, 1]` (the model's units, see
//!   [`crate::data::pixels`]; real images enter through `to_model(…, Offset::Half)`);
//! - [`Classifier::fid`]: the "FID (LeNet features)", the Fréchet distance
//!   ([`crate::metrics::frechet`]) between the features of samples and of reference images.
//!   It is not comparable with Inception FIDs: other features, other scale;
//! - [`class_balance`]: how evenly the predicted labels cover the classes, and how sure the
//!   classifier is of them.

use crate::checkpoint::{self, TensorFile};
use crate::metrics::frechet::{frechet_distance_stats, FeatureStats};
pub mod lenet;

use crate::par::par_map;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, D};
use lenet::{LeNet, CLASSES, FEATURES, INPUT};
use std::path::Path;

/// The shipped weights (`assets/lenet/lenet_mnist.safetensors`; how they were made:
/// `assets/lenet/README.md`).
const WEIGHTS: &[u8] = include_bytes!("../../assets/lenet/lenet_mnist.safetensors");

/// Images per forward pass.
pub const CHUNK: usize = 500;

/// A LeNet classifier of 28x28 images in `[−1, 1]`.
pub struct Classifier {
    net: LeNet,
}

/// What the classifier says about a set of images.
#[derive(Clone, Debug, PartialEq)]
pub struct Outputs {
    /// Penultimate-layer features. Shapes: [n, 84].
    pub features: Vec<f64>,
    /// Class probabilities (softmax of the logits). Shapes: [n, 10].
    pub probs: Vec<f64>,
}

impl Classifier {
    /// A classifier around `net` (e.g. during training).
    pub fn new(net: LeNet) -> Self {
        Classifier { net }
    }

    /// The shipped classifier (embedded weights, checksum verified), f32 on `device`.
    pub fn builtin(device: &Device) -> Result<Self> {
        let path = Path::new("assets/lenet/lenet_mnist.safetensors (built in)");
        let file = checkpoint::from_bytes(WEIGHTS).map_err(|m| Error::checkpoint(path, m))?;
        Self::from_file(&file, path, device)
    }

    /// A classifier from a weights file written by `train_lenet` (tensors `lenet.*`, with
    /// the content checksum the library writes), f32 on `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::from_file(&checkpoint::read(path)?, path, device)
    }

    fn from_file(file: &TensorFile, path: &Path, device: &Device) -> Result<Self> {
        if !file.verified {
            return Err(Error::checkpoint(
                path,
                "no content checksum: not a weights file written by train_lenet",
            ));
        }
        Ok(Classifier {
            net: LeNet::from_file(file, path, DType::F32, device)?,
        })
    }

    /// The network.
    pub fn net(&self) -> &LeNet {
        &self.net
    }

    /// Features and class probabilities of `images` [n, 784] (finite values, meant to lie in
    /// `[−1, 1]`), in chunks of [`CHUNK`] images run on up to `threads` threads (results do
    /// not depend on `threads`; with more than one, set `RAYON_NUM_THREADS=1` so that candle's
    /// own pool does not compete).
    pub fn evaluate(&self, images: &[f64], threads: usize) -> Result<Outputs> {
        let n =
            crate::metrics::check(images, INPUT, "classifier images (28x28 = 784 pixels each)")?;
        let device = self.net.vars()[0].1.device().clone();
        let work = |c: usize| -> Result<(Vec<f64>, Vec<f64>)> {
            let (lo, hi) = (c * CHUNK, ((c + 1) * CHUNK).min(n));
            let x = Tensor::from_slice(&images[lo * INPUT..hi * INPUT], (hi - lo, INPUT), &device)?;
            let (f, z) = self.net.forward(&x.to_dtype(DType::F32)?)?;
            let p = z
                .broadcast_sub(&z.log_sum_exp(D::Minus1)?.unsqueeze(1)?)?
                .exp()?;
            let flat = |t: &Tensor| -> Result<Vec<f64>> {
                Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
            };
            Ok((flat(&f)?, flat(&p)?))
        };
        let parts = par_map(n.div_ceil(CHUNK), threads, &work)?;
        let mut out = Outputs {
            features: Vec::with_capacity(n * FEATURES),
            probs: Vec::with_capacity(n * CLASSES),
        };
        for (f, p) in parts {
            out.features.extend(f);
            out.probs.extend(p);
        }
        Ok(out)
    }

    /// Mean and covariance of the features of `images` [n ≥ 2, 784] (e.g. a reference set,
    /// computed once).
    pub fn feature_stats(&self, images: &[f64], threads: usize) -> Result<FeatureStats> {
        FeatureStats::fit(
            &self.evaluate(images, threads)?.features,
            FEATURES,
            "LeNet features",
        )
    }

    /// "FID (LeNet features)" of `samples` against `reference`, both [n, 784] in `[−1, 1]`.
    pub fn fid(&self, samples: &[f64], reference: &[f64], threads: usize) -> Result<f64> {
        frechet_distance_stats(
            &self.feature_stats(samples, threads)?,
            &self.feature_stats(reference, threads)?,
        )
    }
}

/// Class of highest probability of each row of `probs` [n, C] (first on ties).
pub fn predictions(probs: &[f64], classes: usize) -> Vec<usize> {
    probs
        .chunks_exact(classes.max(1))
        .map(|row| (0..row.len()).fold(0, |best, c| if row[c] > row[best] { c } else { best }))
        .collect()
}

/// Fraction of rows of `probs` [n, C] whose prediction is the label.
pub fn accuracy(probs: &[f64], labels: &[u8], classes: usize) -> Result<f64> {
    let pred = predictions(probs, classes);
    if pred.is_empty() || pred.len() != labels.len() {
        return Err(Error::data(format!(
            "accuracy: {} predictions for {} labels",
            pred.len(),
            labels.len()
        )));
    }
    let right = pred
        .iter()
        .zip(labels)
        .filter(|(p, &l)| **p == usize::from(l))
        .count();
    Ok(right as f64 / pred.len() as f64)
}

/// How evenly predicted classes cover the `C` classes, and how confident they are.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ClassBalance {
    /// Fraction of images predicted as each class, `[C]`.
    pub histogram: Vec<f64>,
    /// `KL(histogram ‖ uniform) = Σ_c h_c ln(C h_c)` in nats: 0 when every class is predicted
    /// equally often, `ln C` (2.30 for 10) when all images get one class. Digits of a
    /// balanced test set score about 0.
    pub kl_to_uniform: f64,
    /// Mean over images of the largest class probability: near 1 for images the classifier
    /// reads as clear digits, near `1/C` for ones it cannot place.
    pub mean_max_prob: f64,
}

/// The [`ClassBalance`] of the probabilities `probs` [n, C].
pub fn class_balance(probs: &[f64], classes: usize) -> Result<ClassBalance> {
    if classes == 0 || probs.is_empty() || probs.len() % classes != 0 {
        return Err(Error::data(format!(
            "class balance: need a non-empty [n, {classes}] array, got {} values",
            probs.len()
        )));
    }
    let n = probs.len() / classes;
    let mut counts = vec![0usize; classes];
    for c in predictions(probs, classes) {
        counts[c] += 1;
    }
    let histogram: Vec<f64> = counts.iter().map(|&k| k as f64 / n as f64).collect();
    let kl_to_uniform = histogram
        .iter()
        .filter(|&&h| h > 0.0)
        .map(|h| h * (classes as f64 * h).ln())
        .sum();
    let mean_max_prob = probs
        .chunks_exact(classes)
        .map(|r| r.iter().cloned().fold(f64::NEG_INFINITY, f64::max))
        .sum::<f64>()
        / n as f64;
    Ok(ClassBalance {
        histogram,
        kl_to_uniform,
        mean_max_prob,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_balance_known_answers() {
        // Two classes, four images: predictions 0, 0, 0, 1.
        let p = [0.9, 0.1, 0.6, 0.4, 0.5, 0.5, 0.2, 0.8];
        let b = class_balance(&p, 2).unwrap();
        assert_eq!(b.histogram, [0.75, 0.25]);
        let want = 0.75 * (1.5f64).ln() + 0.25 * (0.5f64).ln();
        assert!((b.kl_to_uniform - want).abs() < 1e-15);
        assert!((b.mean_max_prob - (0.9 + 0.6 + 0.5 + 0.8) / 4.0).abs() < 1e-15);
        // All one class: ln C.
        let one = class_balance(&[1.0, 0.0, 0.0, 1.0, 0.0, 0.0], 3).unwrap();
        assert!((one.kl_to_uniform - 3f64.ln()).abs() < 1e-15);
        assert!(class_balance(&p[..3], 2).is_err());
        assert_eq!(accuracy(&p, &[0, 1, 0, 1], 2).unwrap(), 0.75);
        assert!(accuracy(&p, &[0], 2).is_err());
    }

    #[test]
    fn bad_images_are_errors() {
        let c = Classifier::builtin(&Device::Cpu).unwrap();
        assert!(c
            .evaluate(&[0.0; 100], 1)
            .unwrap_err()
            .to_string()
            .contains("784"));
        let mut x = vec![0.0; 2 * INPUT];
        x[INPUT + 3] = f64::NAN;
        let e = c.evaluate(&x, 1).unwrap_err().to_string();
        assert!(e.contains("row 1, column 3"), "{e}");
        assert!(c.fid(&x[..INPUT], &x[..INPUT], 1).is_err());
        // A weights file without the library's checksum is refused.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.safetensors");
        std::fs::write(&p, b"nonsense").unwrap();
        let e = Classifier::load(&p, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("w.safetensors"), "{e}");
    }
}

//! A run's data: its configuration ([`DataConfig`]) and the prepared points ([`TrainData`]):
//! training pool, validation and held-out points in standardised units, with the transform
//! from data units and the dequantisation widths.

use super::image_source::ImageSource;
use super::pixels::PreparedImages;
use super::source::{self, ColumnMap, FileSource};
use super::{toy_2d, ImageShape, Standardizer};
use crate::rng::{Rng, Stream};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// The data set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Built-in 2-D data set name.
    pub dataset: String,
    /// Noise level of the data set (its own default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<f64>,
    /// Size of the generated training pool (a data file: its number of training rows,
    /// recorded by `diffflow train`).
    pub train_size: usize,
    /// Size of the held-out set (a data file: its number of test rows, recorded).
    pub test_size: usize,
    /// A data file instead of the built-in set (`dataset` is then only the run's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSource>,
    /// An image set instead of the built-in 2-D set (`dataset` is then only the run's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSource>,
}

impl DataConfig {
    /// Checks the data file or image source, at most one of them, and that U-Net nets
    /// (`unet`: their image shape) get images of their shape.
    pub fn validate_sources(&self, unet: Option<ImageShape>) -> Result<()> {
        if let Some(f) = &self.file {
            f.validate()?;
        }
        if let Some(img) = &self.image {
            img.validate()?;
        }
        match (&self.file, &self.image, unet) {
            (Some(_), Some(_), _) => Err(Error::config(
                "data.file and data.image: a run has one data source",
            )),
            (_, None, Some(s)) => Err(Error::config(format!(
                "model.unet: U-Net nets need image data of {s} (data.image, --dataset \
                 mnist|fashion-mnist|digits-images)"
            ))),
            (_, Some(img), Some(s)) if img.shape != s => Err(Error::config(format!(
                "model.unet is for {s} images, data.image ({}) holds {}",
                img.set, img.shape
            ))),
            _ => Ok(()),
        }
    }
}

/// Training and held-out points in standardised units, with the transform from data units.
#[derive(Clone, Debug)]
pub struct TrainData {
    /// Training pool, standardised. Shapes: [n_train, dim] row-major.
    pub train: Vec<f64>,
    /// Held-out points, standardised. Shapes: [n_test, dim].
    pub test: Vec<f64>,
    /// Data dimension.
    pub dim: usize,
    /// Data units → standardised units.
    pub standardizer: Standardizer,
    /// Validation points, standardised (empty: none). Shapes: [n_val, dim].
    pub val: Vec<f64>,
    /// Width of the dequantisation noise added to each coordinate of every training batch,
    /// in standardised units (`1/std` for a dequantised column, 0 otherwise; empty: none).
    /// Shapes: `[dim]` or `[0]`.
    pub dequantize: Vec<f64>,
    /// File columns → model coordinates (data files only).
    pub columns: Option<ColumnMap>,
    /// What the preprocessing did, one line each (data files only).
    pub notes: Vec<String>,
}

impl TrainData {
    /// Standardises `train` and `test` (data units, [n, dim]) with statistics of `train`.
    pub fn from_points(mut train: Vec<f64>, mut test: Vec<f64>, dim: usize) -> Result<Self> {
        let standardizer = Standardizer::fit(&train, dim)?;
        standardizer.apply(&mut train);
        standardizer.apply(&mut test);
        Ok(TrainData {
            train,
            test,
            dim,
            standardizer,
            val: Vec::new(),
            dequantize: Vec::new(),
            columns: None,
            notes: Vec::new(),
        })
    }

    /// The data of a run's data configuration and seed: its file source, else its built-in
    /// 2-D set.
    pub fn from_config(cfg: &DataConfig, seed: u64) -> Result<Self> {
        match (&cfg.file, &cfg.image) {
            (Some(src), _) => Self::from_file(src, seed),
            (None, Some(img)) => Ok(Self::from_images(
                img.prepare(&mut Rng::stream(seed, Stream::Data))?,
            )),
            (None, None) => Self::toy(cfg, seed),
        }
    }

    /// Prepared images (already in `[−1, 1]` units, with their fixed standardiser and
    /// dequantisation widths `2/L`).
    pub fn from_images(p: PreparedImages) -> Self {
        TrainData {
            dim: p.dim(),
            train: p.train,
            test: p.test,
            standardizer: p.standardizer,
            val: p.val,
            dequantize: p.dequantize,
            columns: None,
            notes: p.notes,
        }
    }

    /// A data file through the pipeline of [`crate::data::source`], with the split and the
    /// held-out dequantisation noise drawn from the seed's data stream.
    pub fn from_file(src: &FileSource, seed: u64) -> Result<Self> {
        let p = source::prepare(src, &mut Rng::stream(seed, Stream::Data))?;
        let s = p.standardizer;
        let (mut train, mut val, mut test) = (p.train, p.val, p.test);
        for x in [&mut train, &mut val, &mut test] {
            s.apply(x);
        }
        let dequantize = if p.columns.dequantized.is_empty() {
            Vec::new()
        } else {
            let mut w = vec![0.0; p.dim];
            for &k in &p.columns.dequantized {
                w[k] = 1.0 / s.std[k];
            }
            w
        };
        Ok(TrainData {
            train,
            test,
            dim: p.dim,
            standardizer: s,
            val,
            dequantize,
            columns: Some(p.columns),
            notes: p.notes,
        })
    }

    /// `b` training points drawn with replacement from `rng`, plus fresh dequantisation
    /// noise for the dequantised coordinates (drawn after the rows, row by row).
    /// Shapes: → [b, dim].
    pub fn draw_batch(&self, b: usize, rng: &mut Rng) -> Vec<f64> {
        let (d, rows) = (self.dim, self.len());
        let mut x0 = Vec::with_capacity(b * d);
        for _ in 0..b {
            let r = rng.below(rows);
            x0.extend_from_slice(&self.train[r * d..(r + 1) * d]);
        }
        if !self.dequantize.is_empty() {
            for row in x0.chunks_exact_mut(d) {
                for (x, &w) in row.iter_mut().zip(&self.dequantize) {
                    if w > 0.0 {
                        *x += w * rng.uniform();
                    }
                }
            }
        }
        x0
    }

    /// A built-in 2-D set: `train_size + test_size` points generated together from the seed's
    /// data stream (so both share the rescaling), shuffled, split, then standardised.
    pub fn toy(cfg: &DataConfig, seed: u64) -> Result<Self> {
        let mut rng = Rng::stream(seed, Stream::Data);
        let n = cfg.train_size + cfg.test_size;
        let mut all = toy_2d(&cfg.dataset, n, cfg.noise, &mut rng)?;
        shuffle_rows(&mut all, 2, &mut rng);
        let test = all.split_off(2 * cfg.train_size);
        Self::from_points(all, test, 2)
    }

    /// Number of training points.
    pub fn len(&self) -> usize {
        self.train.len() / self.dim
    }

    /// Whether there is no training point.
    pub fn is_empty(&self) -> bool {
        self.train.is_empty()
    }
}

/// Fisher–Yates shuffle of the rows of `x` [n, d].
pub fn shuffle_rows(x: &mut [f64], d: usize, rng: &mut Rng) {
    let n = x.len() / d;
    for i in (1..n).rev() {
        let j = rng.below(i + 1);
        if i != j {
            for k in 0..d {
                x.swap(i * d + k, j * d + k);
            }
        }
    }
}

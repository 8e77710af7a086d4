//! A run's data: its configuration ([`DataConfig`]) and the prepared points ([`TrainData`]):
//! training pool, validation and held-out points in standardised units, with the transform
//! from data units and the dequantisation widths.

use super::image_source::ImageSource;
use super::pixels::PreparedImages;
use super::source::{self, ColumnMap, FileSource, Prepared, TableSource};
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

    /// A data file through the pipeline of [`crate::data::pipeline`], with the split and the
    /// held-out dequantisation noise drawn from the seed's data stream.
    pub fn from_file(src: &FileSource, seed: u64) -> Result<Self> {
        let p = source::prepare(src, &mut Rng::stream(seed, Stream::Data))?;
        Ok(Self::from_prepared(p))
    }

    /// Tables in memory (e.g. arrays) through the same pipeline as a data file, with the same
    /// draws: a table saved to a file and read back with the same options gives the same
    /// data. `name` names the data in errors.
    pub fn from_tables(src: TableSource, name: &str, seed: u64) -> Result<Self> {
        let p = src.prepare(name, &mut Rng::stream(seed, Stream::Data))?;
        Ok(Self::from_prepared(p))
    }

    /// The prepared points, standardised, with the dequantisation widths in standardised
    /// units.
    fn from_prepared(p: Prepared) -> Self {
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
        TrainData {
            train,
            test,
            dim: p.dim,
            standardizer: s,
            val,
            dequantize,
            columns: Some(p.columns),
            notes: p.notes,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::tabular::{save_npy, Table};

    /// 40 rows: a continuous column, a constant one, an integer one.
    fn table() -> Table {
        let mut data = Vec::new();
        for i in 0..40 {
            data.extend([0.37 * i as f64 - 3.1, 2.5, (i % 5) as f64]);
        }
        Table {
            data,
            rows: 40,
            cols: 3,
            names: None,
        }
    }

    #[test]
    fn arrays_and_their_npy_file_give_the_same_data() {
        // The same table in memory and saved as .npy, with a validation table and a test
        // fraction: the same split, constants, dequantisation noise and standardisation.
        let dir = tempfile::tempdir().unwrap();
        let (main, val) = (table(), table().take_rows(&[3, 7, 11]));
        let (pm, pv) = (dir.path().join("x.npy"), dir.path().join("v.npy"));
        save_npy(&pm, &main.data, main.rows, main.cols).unwrap();
        save_npy(&pv, &val.data, val.rows, val.cols).unwrap();
        let mut file = FileSource::new(&pm);
        file.validation = Some(pv);
        file.test_fraction = Some(0.25);
        let a = TrainData::from_file(&file, 7).unwrap();
        let mut tables = TableSource::new(main);
        tables.validation = Some(val);
        tables.test_fraction = Some(0.25);
        let b = TrainData::from_tables(tables.clone(), "X", 7).unwrap();
        assert_eq!(
            (a.len(), a.val.len() / a.dim, a.test.len() / a.dim),
            (30, 3, 10)
        );
        assert_eq!((&a.train, &a.val, &a.test), (&b.train, &b.val, &b.test));
        assert_eq!((&a.standardizer, &a.columns), (&b.standardizer, &b.columns));
        assert_eq!(a.dequantize, b.dequantize);
        let map = b.columns.as_ref().unwrap();
        assert_eq!(
            (map.kept.clone(), map.constants.clone()),
            (vec![0, 2], vec![(1, 2.5)])
        );
        assert_eq!(map.dequantized, vec![1]);
        // Another seed, another split.
        let c = TrainData::from_tables(tables, "X", 8).unwrap();
        assert_ne!(c.test, b.test);
    }

    #[test]
    fn bad_tables_are_named_errors() {
        let nan = {
            let mut t = table();
            t.data[3 * 5 + 2] = f64::NAN;
            t
        };
        let narrow = Table {
            data: vec![0.0; 4],
            rows: 2,
            cols: 2,
            names: None,
        };
        let empty = Table {
            data: Vec::new(),
            rows: 0,
            cols: 3,
            names: None,
        };
        let with_val = |v: Table| TableSource {
            validation: Some(v),
            ..TableSource::new(table())
        };
        let cases = [
            (
                TableSource::new(nan.clone()),
                "X: non-finite value NaN at row 5, column 2",
            ),
            (
                with_val(nan),
                "the validation points: non-finite value NaN at row 5",
            ),
            (
                with_val(narrow),
                "the validation points have 2 columns, but X has 3",
            ),
            (
                TableSource::new(empty),
                "X: no points (0 rows of 3 columns)",
            ),
            (
                TableSource {
                    val_fraction: Some(0.6),
                    test_fraction: Some(0.4),
                    ..TableSource::new(table())
                },
                "val_fraction + test_fraction leave no training rows",
            ),
            (
                TableSource {
                    val_fraction: Some(0.2),
                    ..with_val(table())
                },
                "val_fraction = 0.2 but its points are given separately",
            ),
        ];
        for (src, want) in cases {
            let e = TrainData::from_tables(src, "X", 0).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }
}

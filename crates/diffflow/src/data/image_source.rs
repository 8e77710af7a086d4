//! An image set as the source of a run (`[data.image]` of a configuration): which set, its
//! folder, the held-out fractions, and the image shape and grey levels recorded so that
//! sampling and evaluation know them without reading the data.

use super::images::{ImageDataset, ImageShape};
use super::pixels::{self, HeldOut, PreparedImages};
use crate::rng::Rng;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// An image set as a run's data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSource {
    /// The set: `mnist`, `fashion-mnist` (from `dir`) or `digits-images` (built in).
    pub set: ImageDataset,
    /// The folder holding the set's IDX files (standard names, gzipped or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Fraction of the training pool held out for validation, in `[0, 1)`.
    pub val_fraction: f64,
    /// Fraction of the pool held out for testing (0 for sets with their own test file).
    pub test_fraction: f64,
    /// Shape of one image (checked against the data when they are read).
    pub shape: ImageShape,
    /// Grey levels `L` (checked likewise).
    pub levels: u32,
}

impl ImageSource {
    /// The set `set` read from `dir` (folder sets), with its own shape and levels; held out:
    /// for the digits 10% validation and 10% test, for the folder sets their test file and
    /// no validation.
    pub fn new(set: ImageDataset, dir: Option<PathBuf>) -> Self {
        let (val_fraction, test_fraction) = if set.needs_dir() {
            (0.0, 0.0)
        } else {
            (0.1, 0.1)
        };
        ImageSource {
            set,
            dir,
            val_fraction,
            test_fraction,
            shape: set.shape(),
            levels: set.levels(),
        }
    }

    /// Checks the fractions and that shape and levels are the set's; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::config(format!("data.image.{msg}")));
        for (name, v) in [
            ("val_fraction", self.val_fraction),
            ("test_fraction", self.test_fraction),
        ] {
            if !(0.0..1.0).contains(&v) {
                return bad(format!("{name} must be in [0, 1), got {v}"));
            }
        }
        if self.val_fraction + self.test_fraction >= 1.0 {
            return bad("val_fraction + test_fraction must be < 1".into());
        }
        if self.set.needs_dir() && self.test_fraction > 0.0 {
            return bad(format!(
                "test_fraction = {}: {} has its own test file (use 0)",
                self.test_fraction, self.set
            ));
        }
        if self.set.needs_dir() && self.dir.is_none() {
            return bad(format!(
                "dir: {} is read from a folder (--data-dir DIR)",
                self.set
            ));
        }
        if self.shape != self.set.shape() || self.levels != self.set.levels() {
            return bad(format!(
                "shape {} with {} levels: {} images are {} with {} levels",
                self.shape,
                self.levels,
                self.set,
                self.set.shape(),
                self.set.levels()
            ));
        }
        Ok(())
    }

    /// Reads the set and prepares it ([`pixels::prepare`]) with the split and the held-out
    /// noise drawn from `rng`. Errors name the file.
    pub fn prepare(&self, rng: &mut Rng) -> Result<PreparedImages> {
        self.validate()?;
        let (pool, test) = self.set.load(self.dir.as_deref())?;
        if (pool.shape, pool.levels) != (self.shape, self.levels) {
            return Err(Error::data(format!(
                "{}: images are {} with {} levels, the run records {} with {}",
                self.set, pool.shape, pool.levels, self.shape, self.levels
            )));
        }
        let held = HeldOut {
            val: self.val_fraction,
            test: self.test_fraction,
        };
        pixels::prepare(&pool, test.as_ref(), held, rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_source_prepares_and_bad_fields_are_named() {
        let src = ImageSource::new(ImageDataset::Digits, None);
        src.validate().unwrap();
        let p = src.prepare(&mut Rng::new(3)).unwrap();
        assert_eq!(p.dim(), 64);
        assert_eq!(p.levels, 17);
        let n = |x: &[f64]| x.len() / 64;
        assert_eq!(n(&p.train) + n(&p.val) + n(&p.test), 1797);
        assert!(n(&p.val) > 100 && n(&p.test) > 100);
        let mut bad = src.clone();
        bad.levels = 256;
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("17 levels"));
        let mut bad = src.clone();
        bad.test_fraction = 1.5;
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("data.image.test_fraction"));
        let mnist = ImageSource::new(ImageDataset::Mnist, None);
        assert!(mnist
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--data-dir"));
    }
}

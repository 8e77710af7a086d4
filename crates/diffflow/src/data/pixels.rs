//! Pixels in the model's units and back; a run's image data ([`prepare`]); bits per dimension.
//!
//! An image of `D = C*H*W` pixels `x ∈ {0, …, L−1}^D` (`L` levels) is modelled as the
//! continuous point `y = (x + u) / (L/2) − 1 ∈ [−1, 1)^D` with uniform dequantisation noise
//! `u ~ U[0, 1)^D`. The scaling is a FIXED [`Standardizer`], mean `L/2` and std `L/2` in
//! every pixel ([`pixel_standardizer`]), and the noise in standardised units is
//! `(2/L) · U[0, 1)` ([`dequantize_widths`]), so that [`crate::train::TrainData`] applies
//! unchanged: its training rows are `x / (L/2) − 1` and `draw_batch` adds fresh
//! `(2/L) · U[0, 1)` to every batch; held-out rows carry noise drawn once.
//!
//! Densities. The standardiser's log-Jacobian is `log |det dy/dx| = −D ln(L/2)`, so a model
//! NLL `n_y` (nats, `[−1, 1]` units) is the NLL of the dequantised pixels `x + u ∈ [0, L)^D`
//! `n_x = n_y − log_abs_det() = n_y + D ln(L/2)`, and in bits per dimension
//! `n_x / (D ln 2) = n_y / (D ln 2) + log2(L/2)` ([`bits_per_dim`]): +7 bits for 8-bit
//! pixels, `log2 8.5 ≈ 3.09` for the 17-level digits. With `u` uniform, `E_u[n_x]` bounds the
//! NLL of the discrete pixels `−log P(x) = −log ∫ p(x + u) du` from above (Jensen), which is
//! why dequantised bits/dim compare with published discrete ones.

use crate::data::images::{ImageSet, ImageShape};
use crate::data::preprocess;
use crate::data::tabular::Table;
use crate::data::Standardizer;
use crate::rng::Rng;
use crate::{Error, Result};

/// The fixed scaling of `L`-level pixels to `[−1, 1]`: mean `L/2`, std `L/2` in each of
/// `dim` pixels.
pub fn pixel_standardizer(levels: u32, dim: usize) -> Standardizer {
    let half = f64::from(levels) / 2.0;
    Standardizer {
        mean: vec![half; dim],
        std: vec![half; dim],
    }
}

/// Dequantisation widths in standardised units: `2/L` for each of `dim` pixels.
pub fn dequantize_widths(levels: u32, dim: usize) -> Vec<f64> {
    vec![2.0 / f64::from(levels); dim]
}

/// What is added to each pixel before scaling (see [`to_model`]).
pub enum Offset<'a> {
    /// Nothing: `x / (L/2) − 1`, the lower corner of the pixel's cell (training rows, whose
    /// noise `draw_batch` adds).
    Zero,
    /// `1/2`: the centre of the cell (deterministic inputs, e.g. for the classifier).
    Half,
    /// `u ~ U[0, 1)` drawn from the generator, pixel by pixel, row by row.
    Uniform(&'a mut Rng),
}

/// `L`-level pixels [n, D] to model units: `(x + offset) / (L/2) − 1` through
/// [`pixel_standardizer`]. Shapes: `pixels` [n, D] → [n, D].
pub fn to_model(pixels: &[u8], levels: u32, offset: Offset) -> Vec<f64> {
    let mut y: Vec<f64> = match offset {
        Offset::Zero => pixels.iter().map(|&p| f64::from(p)).collect(),
        Offset::Half => pixels.iter().map(|&p| f64::from(p) + 0.5).collect(),
        Offset::Uniform(rng) => pixels
            .iter()
            .map(|&p| f64::from(p) + rng.uniform())
            .collect(),
    };
    // One pixel per "column": the scaling is the same everywhere.
    pixel_standardizer(levels, 1).apply(&mut y);
    y
}

/// Tolerance, in pixel units, for the rounding of `(y + 1) L/2` at the lower edge of a cell
/// (the scaling by `L/2` is inexact unless `L` is a power of two: `3/8.5 · 8.5 < 3`).
const EDGE: f64 = 1e-9;

/// Model units back to pixels: `floor((y + 1) L/2 + 1e-9)`, clamped to `0..L` (NaN gives
/// 0). The inverse of [`to_model`] for every offset in `[0, 1 − 1e-9)`.
/// Shapes: [n, D] → [n, D].
pub fn to_pixels(y: &[f64], levels: u32) -> Vec<u8> {
    let half = f64::from(levels) / 2.0;
    let top = f64::from(levels - 1);
    y.iter()
        .map(|&v| ((v + 1.0) * half + EDGE).floor().clamp(0.0, top) as u8)
        .collect()
}

/// Bits per dimension of dequantised `levels`-level pixels from a model NLL in nats per
/// image in `[−1, 1]` units over `dim` pixels: `nats / (dim ln 2) + log2(L/2)`. Equal to
/// `likelihood::bits_per_dim(nats − s.log_abs_det(), dim)` for the fixed standardiser `s`
/// (module docs).
pub fn bits_per_dim(nats_model: f64, dim: usize, levels: u32) -> f64 {
    crate::likelihood::bits_per_dim(nats_model, dim) + (f64::from(levels) / 2.0).log2()
}

/// Held-out fractions of the training pool.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeldOut {
    /// Fraction for validation, in `[0, 1)`.
    pub val: f64,
    /// Fraction for the test split, in `[0, 1)`; must be 0 when the set has its own test file.
    pub test: f64,
}

/// A run's image data in model units: what [`crate::train::TrainData`] needs, plus labels.
#[derive(Clone, Debug)]
pub struct PreparedImages {
    /// Training rows `x / (L/2) − 1`, without noise. Shapes: [n_train, D].
    pub train: Vec<f64>,
    /// Validation rows, dequantised once. Shapes: [n_val, D].
    pub val: Vec<f64>,
    /// Test rows, dequantised once. Shapes: [n_test, D].
    pub test: Vec<f64>,
    /// Labels of the three splits, when the set has labels.
    pub labels: Option<[Vec<u8>; 3]>,
    /// The fixed scaling ([`pixel_standardizer`]).
    pub standardizer: Standardizer,
    /// `2/L` per pixel ([`dequantize_widths`]). Shapes: `[D]`.
    pub dequantize: Vec<f64>,
    /// Shape of one image.
    pub shape: ImageShape,
    /// Grey levels `L`.
    pub levels: u32,
    /// What was done, one line each.
    pub notes: Vec<String>,
}

impl PreparedImages {
    /// Pixels per image.
    pub fn dim(&self) -> usize {
        self.shape.dim()
    }
}

/// Splits `pool` into train / validation / test by a seeded shuffle (row counts as
/// [`preprocess::split`]), or into train / validation when `test_set` (the set's own test
/// file) is given, then scales to `[−1, 1]`, drawing the held-out noise from `rng` after the
/// shuffle (validation rows, then test rows). The same `rng` state gives the same bytes.
pub fn prepare(
    pool: &ImageSet,
    test_set: Option<&ImageSet>,
    held: HeldOut,
    rng: &mut Rng,
) -> Result<PreparedImages> {
    let HeldOut { val, test } = held;
    let ok = |f: f64| (0.0..1.0).contains(&f);
    if !ok(val) || !ok(test) || val + test >= 1.0 {
        return Err(Error::config(format!(
            "held-out fractions: validation {val} and test {test} must lie in [0, 1) and \
             leave training images (sum below 1)"
        )));
    }
    if let Some(t) = test_set {
        if test > 0.0 {
            return Err(Error::config(format!(
                "held-out test fraction {test}: this image set has its own test file (use 0)"
            )));
        }
        if (t.shape, t.levels) != (pool.shape, pool.levels) {
            return Err(Error::data(format!(
                "test images are {} with {} levels, training images {} with {}",
                t.shape, t.levels, pool.shape, pool.levels
            )));
        }
    }
    let n = pool.len();
    let index = Table {
        data: (0..n).map(|i| i as f64).collect(),
        rows: n,
        cols: 1,
        names: None,
    };
    let (tr, va, te) = preprocess::split(&index, (1.0 - val - test, val, test), rng)?;
    let rows = |t: &Table| t.data.iter().map(|&i| i as usize).collect::<Vec<_>>();
    let train = pool.take_rows(&rows(&tr));
    let valid = pool.take_rows(&rows(&va));
    let tests = match test_set {
        Some(t) => t.clone(),
        None => pool.take_rows(&rows(&te)),
    };
    let levels = pool.levels;
    let notes = vec![
        format!(
            "{} images of {} pixels ({}, {levels} levels): {} train, {} validation, {} test{}",
            n + test_set.map_or(0, |t| t.len()),
            pool.dim(),
            pool.shape,
            train.len(),
            valid.len(),
            tests.len(),
            if test_set.is_some() {
                " (its own test file)"
            } else {
                ""
            }
        ),
        format!(
            "pixels x -> (x + u) / {} - 1 in [-1, 1), u ~ U[0, 1): fresh per training batch, \
             drawn once for held-out images",
            f64::from(levels) / 2.0
        ),
    ];
    let val_rows = to_model(&valid.pixels, levels, Offset::Uniform(rng));
    let test_rows = to_model(&tests.pixels, levels, Offset::Uniform(rng));
    let labels = match (&train.labels, &valid.labels, &tests.labels) {
        (Some(a), Some(b), Some(c)) => Some([a.clone(), b.clone(), c.clone()]),
        _ => None,
    };
    Ok(PreparedImages {
        train: to_model(&train.pixels, levels, Offset::Zero),
        val: val_rows,
        test: test_rows,
        labels,
        standardizer: pixel_standardizer(levels, pool.dim()),
        dequantize: dequantize_widths(levels, pool.dim()),
        shape: pool.shape,
        levels,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: usize, levels: u32, rng: &mut Rng) -> ImageSet {
        let shape = ImageShape::grey(2, 3);
        let pixels = (0..n * 6)
            .map(|_| rng.below(levels as usize) as u8)
            .collect();
        let labels = (0..n).map(|i| (i % 10) as u8).collect();
        ImageSet::new(pixels, Some(labels), shape, levels, "t").unwrap()
    }

    #[test]
    fn scaling_and_dequantisation_round_trip() {
        let mut rng = Rng::new(1);
        for levels in [2u32, 17, 256] {
            let pixels: Vec<u8> = (0..levels).map(|p| p as u8).collect();
            let y0 = to_model(&pixels, levels, Offset::Zero);
            let yh = to_model(&pixels, levels, Offset::Half);
            let yu = to_model(&pixels, levels, Offset::Uniform(&mut rng));
            let (l, w) = (f64::from(levels), 2.0 / f64::from(levels));
            for (i, &p) in pixels.iter().enumerate() {
                // Hand values: lower corner, centre, inside the cell of width 2/L.
                let lo = 2.0 * f64::from(p) / l - 1.0;
                assert!((y0[i] - lo).abs() < 1e-15);
                assert!((yh[i] - (lo + w / 2.0)).abs() < 1e-15);
                assert!(yu[i] >= lo && yu[i] < lo + w, "{} not in its cell", yu[i]);
            }
            assert_eq!(y0[0], -1.0);
            assert!(yu.iter().all(|v| (-1.0..1.0).contains(v)));
            for y in [&y0, &yh, &yu] {
                assert_eq!(to_pixels(y, levels), pixels);
            }
            // Just below the top of a cell still maps back to its pixel; out of range clamps.
            let top: Vec<f64> = y0.iter().map(|v| v + w * (1.0 - 1e-7)).collect();
            assert_eq!(to_pixels(&top, levels), pixels);
            assert_eq!(
                to_pixels(&[-3.0, 7.0, f64::NAN], levels),
                [0, levels - 1, 0].map(|v| v as u8)
            );
            // The standardiser's inverse undoes the scaling exactly.
            let s = pixel_standardizer(levels, 1);
            let mut back = yh.clone();
            s.invert(&mut back);
            for (b, &p) in back.iter().zip(&pixels) {
                assert!((b - (f64::from(p) + 0.5)).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn bits_per_dim_offset_is_the_standardisers_jacobian() {
        for (levels, offset) in [(256u32, 7.0), (17, 8.5f64.log2()), (2, 0.0)] {
            let d = 784;
            let s = pixel_standardizer(levels, d);
            assert!((s.log_abs_det() + d as f64 * (f64::from(levels) / 2.0).ln()).abs() < 1e-9);
            let nats = 123.4;
            let via_jacobian = crate::likelihood::bits_per_dim(nats - s.log_abs_det(), d);
            let b = bits_per_dim(nats, d, levels);
            assert!((b - via_jacobian).abs() < 1e-12, "{b} vs {via_jacobian}");
            assert!((b - crate::likelihood::bits_per_dim(nats, d) - offset).abs() < 1e-12);
        }
    }

    #[test]
    fn prepare_splits_scales_and_repeats_bytes() {
        let pool = set(100, 17, &mut Rng::new(3));
        let held = HeldOut {
            val: 0.1,
            test: 0.2,
        };
        let p = prepare(&pool, None, held, &mut Rng::new(9)).unwrap();
        let d = pool.dim();
        assert_eq!(
            (p.train.len() / d, p.val.len() / d, p.test.len() / d),
            (70, 10, 20)
        );
        assert_eq!(p.standardizer, pixel_standardizer(17, d));
        assert_eq!(p.dequantize, vec![2.0 / 17.0; d]);
        // Every image lands in exactly one split, with its label: match them back by pixels.
        let [lt, lv, le] = p.labels.clone().unwrap();
        let mut seen = vec![0usize; pool.len()];
        for (rows, labels) in [(&p.train, &lt), (&p.val, &lv), (&p.test, &le)] {
            let px = to_pixels(rows, 17);
            for (k, img) in px.chunks_exact(d).enumerate() {
                let i = (0..pool.len())
                    .find(|&i| {
                        seen[i] == 0
                            && pool.image(i) == img
                            && pool.labels.as_ref().unwrap()[i] == labels[k]
                    })
                    .expect("an image of the pool");
                seen[i] += 1;
            }
        }
        assert!(seen.iter().all(|&c| c == 1));
        // Training rows carry no noise (draw_batch adds it); held-out rows do.
        let on_grid = |v: f64| {
            let x = (v + 1.0) * 8.5;
            (x - x.round()).abs() < 1e-12
        };
        assert!(p.train.iter().all(|&v| on_grid(v)));
        assert!(p.val.iter().chain(&p.test).filter(|&&v| on_grid(v)).count() < 3);
        // Same seed, same bytes; another seed, another split.
        let q = prepare(&pool, None, held, &mut Rng::new(9)).unwrap();
        let bytes = |x: &PreparedImages| {
            [&x.train, &x.val, &x.test]
                .iter()
                .flat_map(|v| v.iter().flat_map(|f| f.to_le_bytes()))
                .collect::<Vec<u8>>()
        };
        assert_eq!(bytes(&p), bytes(&q));
        assert_ne!(
            bytes(&p),
            bytes(&prepare(&pool, None, held, &mut Rng::new(10)).unwrap())
        );
    }

    #[test]
    fn prepare_with_a_test_file_and_bad_fractions() {
        let mut rng = Rng::new(4);
        let (pool, test) = (set(40, 256, &mut rng), set(7, 256, &mut rng));
        let held = HeldOut {
            val: 0.25,
            test: 0.0,
        };
        let p = prepare(&pool, Some(&test), held, &mut Rng::new(0)).unwrap();
        assert_eq!(
            (p.train.len() / 6, p.val.len() / 6, p.test.len() / 6),
            (30, 10, 7)
        );
        assert_eq!(to_pixels(&p.test, 256), test.pixels);
        assert_eq!(p.labels.unwrap()[2], *test.labels.as_ref().unwrap());
        assert!(p.notes[0].contains("its own test file"), "{:?}", p.notes);
        let err = |t: Option<&ImageSet>, val: f64, tf: f64| {
            prepare(&pool, t, HeldOut { val, test: tf }, &mut Rng::new(0))
                .unwrap_err()
                .to_string()
        };
        assert!(err(Some(&test), 0.1, 0.1).contains("its own test file"));
        assert!(err(None, 0.6, 0.4).contains("sum below 1"));
        assert!(err(None, -0.1, 0.1).contains("[0, 1)"));
        assert!(err(None, f64::NAN, 0.1).contains("[0, 1)"));
        let digits_like = set(7, 17, &mut rng);
        assert!(err(Some(&digits_like), 0.1, 0.0).contains("levels"));
    }
}

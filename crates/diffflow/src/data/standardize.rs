//! Per-column standardisation `y = (x - mean) / std`, fitted on training data and kept
//! with a model so that samples and densities can be mapped back to data units.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Affine per-column standardisation, `y = (x - mean) / std`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Standardizer {
    /// Column means, length `dim`.
    pub mean: Vec<f64>,
    /// Column population standard deviations (divided by n), length `dim`, all > 0.
    pub std: Vec<f64>,
}

impl Standardizer {
    /// Fit column means and population standard deviations.
    ///
    /// Shapes: `data` [n, d] row-major. Errors on empty data, `d == 0`, a length that is not
    /// a multiple of `d`, a non-finite value (names row and column) or a zero-std column.
    pub fn fit(data: &[f64], d: usize) -> Result<Self> {
        check_shape(data, d)?;
        let n = data.len() / d;
        let mut mean = vec![0.0; d];
        for (i, &x) in data.iter().enumerate() {
            if !x.is_finite() {
                let (row, col) = (i / d, i % d);
                return Err(Error::data(format!(
                    "standardisation: non-finite value {x} at row {row}, column {col}"
                )));
            }
            mean[i % d] += x;
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut var = vec![0.0; d];
        for (i, &x) in data.iter().enumerate() {
            let dx = x - mean[i % d];
            var[i % d] += dx * dx;
        }
        let mut std: Vec<f64> = var.iter().map(|v| (v / n as f64).sqrt()).collect();
        // A constant column can get a rounding-size std (its mean is inexact): make it 0.
        for (col, s) in std.iter_mut().enumerate() {
            if data.iter().skip(col).step_by(d).all(|&x| x == data[col]) {
                *s = 0.0;
            }
        }
        let s = Standardizer { mean, std };
        s.validate()?;
        Ok(s)
    }

    /// Check that means are finite and stds finite and positive (e.g. after deserialising).
    pub fn validate(&self) -> Result<()> {
        if self.mean.len() != self.std.len() || self.mean.is_empty() {
            return Err(Error::data(format!(
                "standardisation: {} means but {} stds (need the same, at least 1)",
                self.mean.len(),
                self.std.len()
            )));
        }
        for (col, (&m, &s)) in self.mean.iter().zip(&self.std).enumerate() {
            if !m.is_finite() || !s.is_finite() {
                return Err(Error::data(format!(
                    "standardisation: column {col} has non-finite mean {m} or std {s}"
                )));
            }
            if s <= 0.0 {
                return Err(Error::data(format!(
                    "standardisation: column {col} has zero standard deviation (constant column)"
                )));
            }
        }
        Ok(())
    }

    /// In place `x <- (x - mean) / std`. Shapes: `data` [n, dim] row-major.
    pub fn apply(&self, data: &mut [f64]) {
        self.for_each(data, |x, m, s| (x - m) / s);
    }

    /// In place `y <- y * std + mean`, the inverse of [`Standardizer::apply`].
    /// Shapes: `data` [n, dim] row-major.
    pub fn invert(&self, data: &mut [f64]) {
        self.for_each(data, |y, m, s| y * s + m);
    }

    /// `log |det dy/dx| = -sum ln std`, so `log p_x(x) = log p_y(y) + log_abs_det()`.
    pub fn log_abs_det(&self) -> f64 {
        -self.std.iter().map(|s| s.ln()).sum::<f64>()
    }

    /// Number of columns.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Apply `f(x, mean, std)` to every value by column (column = index mod dim).
    fn for_each(&self, data: &mut [f64], f: impl Fn(f64, f64, f64) -> f64) {
        let d = self.dim();
        if d == 0 {
            return;
        }
        for row in data.chunks_mut(d) {
            for ((x, &m), &s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *x = f(*x, m, s);
            }
        }
    }
}

/// Non-empty, `d > 0`, length a multiple of `d`.
fn check_shape(data: &[f64], d: usize) -> Result<()> {
    if d == 0 {
        return Err(Error::data(
            "standardisation: dimension d must be at least 1",
        ));
    }
    if data.is_empty() {
        return Err(Error::data("standardisation: no data (0 rows)"));
    }
    if data.len() % d != 0 {
        return Err(Error::data(format!(
            "standardisation: {} values is not a whole number of rows of {d} columns",
            data.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 4 rows x 2 columns with known moments: column 0 mean 2.5, var 1.25;
    /// column 1 mean 10, var 50.
    const DATA: [f64; 8] = [1.0, 0.0, 2.0, 10.0, 3.0, 20.0, 4.0, 10.0];

    #[test]
    fn fit_matches_hand_moments() {
        let s = Standardizer::fit(&DATA, 2).unwrap();
        assert_eq!(s.dim(), 2);
        assert!((s.mean[0] - 2.5).abs() < 1e-15 && (s.mean[1] - 10.0).abs() < 1e-15);
        assert!((s.std[0] - 1.25f64.sqrt()).abs() < 1e-15);
        assert!((s.std[1] - 50f64.sqrt()).abs() < 1e-14);
    }

    #[test]
    fn apply_gives_zero_mean_unit_std_and_invert_undoes_it() {
        let s = Standardizer::fit(&DATA, 2).unwrap();
        let mut y = DATA.to_vec();
        s.apply(&mut y);
        let t = Standardizer::fit(&y, 2).unwrap();
        for c in 0..2 {
            assert!(t.mean[c].abs() < 1e-12, "mean {c} = {}", t.mean[c]);
            assert!((t.std[c] - 1.0).abs() < 1e-12, "std {c} = {}", t.std[c]);
        }
        s.invert(&mut y);
        for (a, b) in y.iter().zip(DATA.iter()) {
            assert!((a - b).abs() < 1e-12);
        }
    }

    #[test]
    fn log_abs_det_is_minus_sum_log_std() {
        let s = Standardizer::fit(&DATA, 2).unwrap();
        // -ln(sqrt(1.25)) - ln(sqrt(50)) = -0.5 ln(62.5)
        let want = -0.5 * 62.5f64.ln();
        assert!((s.log_abs_det() - want).abs() < 1e-14);
        // Cross-check with a density: y = (x - m)/s for 1-D N(m, s^2) gives N(0, 1).
        let one = Standardizer {
            mean: vec![3.0],
            std: vec![2.0],
        };
        let x = 4.0;
        let log_px = -0.5 * ((x - 3.0) / 2.0f64).powi(2)
            - 0.5 * (2.0 * std::f64::consts::PI).ln()
            - 2.0f64.ln();
        let y = (x - 3.0) / 2.0;
        let log_py = -0.5 * y * y - 0.5 * (2.0 * std::f64::consts::PI).ln();
        assert!((log_px - (log_py + one.log_abs_det())).abs() < 1e-14);
    }

    #[test]
    fn bad_input_is_an_error() {
        let msg = |r: Result<Standardizer>| r.unwrap_err().to_string();
        assert!(msg(Standardizer::fit(&[], 2)).contains("no data"));
        assert!(msg(Standardizer::fit(&[1.0, 2.0, 3.0], 2)).contains("whole number"));
        assert!(msg(Standardizer::fit(&[1.0, 2.0], 0)).contains("at least 1"));
        let nan = msg(Standardizer::fit(&[1.0, 2.0, 3.0, f64::NAN], 2));
        assert!(nan.contains("row 1, column 1"), "{nan}");
        let inf = msg(Standardizer::fit(&[f64::INFINITY, 2.0, 3.0, 4.0], 2));
        assert!(inf.contains("row 0, column 0"), "{inf}");
        let flat = msg(Standardizer::fit(&[1.0, 0.1, 2.0, 0.1, 3.0, 0.1], 2));
        assert!(
            flat.contains("column 1 has zero standard deviation"),
            "{flat}"
        );
    }

    #[test]
    fn serde_round_trip_and_validate() {
        let s = Standardizer::fit(&DATA, 2).unwrap();
        let j = serde_json::to_string(&s).unwrap();
        let back: Standardizer = serde_json::from_str(&j).unwrap();
        assert_eq!(s, back);
        let bad = Standardizer {
            mean: vec![0.0],
            std: vec![0.0],
        };
        assert!(bad.validate().is_err());
        let mut v = vec![1.0, 2.0];
        let empty = Standardizer {
            mean: vec![],
            std: vec![],
        };
        empty.apply(&mut v); // no panic, no change
        assert_eq!(v, vec![1.0, 2.0]);
    }
}

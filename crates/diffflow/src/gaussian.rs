//! A full-covariance Gaussian density fitted by maximum likelihood: the closed-form baseline
//! of the tabular benchmarks (`−log N(x; μ, Σ)` through the Cholesky factor of `Σ`).

use crate::{Error, Result};

/// `N(μ, Σ)` with `Σ = L Lᵀ`.
#[derive(Clone, Debug, PartialEq)]
pub struct Gaussian {
    /// Mean `μ` `[d]`.
    pub mean: Vec<f64>,
    /// Lower-triangular Cholesky factor `L` of the covariance, [d, d] row-major.
    pub chol: Vec<f64>,
}

impl Gaussian {
    /// The Gaussian with `mean` `[d]` and covariance `cov` [d, d] (symmetric positive
    /// definite, else an error).
    pub fn new(mean: Vec<f64>, cov: &[f64]) -> Result<Self> {
        let d = mean.len();
        if d == 0 || cov.len() != d * d {
            return Err(Error::data(format!(
                "Gaussian: mean of length {d} needs a {d}x{d} covariance, got {} values",
                cov.len()
            )));
        }
        if mean.iter().chain(cov).any(|v| !v.is_finite()) {
            return Err(Error::data("Gaussian: non-finite mean or covariance"));
        }
        let chol = cholesky(cov, d)?;
        Ok(Gaussian { mean, chol })
    }

    /// Maximum-likelihood fit to `x` [n, d]: the sample mean and the covariance divided by n.
    /// Errors on an empty or ragged `x` or a singular covariance (e.g. a constant column).
    pub fn fit(x: &[f64], d: usize) -> Result<Self> {
        Self::fit_with_uniform_noise(x, d, &vec![0.0; d])
    }

    /// The fit to `x + u` [n, d] in expectation over independent `u_k ~ U[0, w_k)`
    /// (dequantisation noise of width `w` `[d]`, 0 for none): mean `+ w/2`, covariance
    /// `+ diag(w²/12)` (the cross terms vanish in expectation).
    pub fn fit_with_uniform_noise(x: &[f64], d: usize, w: &[f64]) -> Result<Self> {
        if d == 0 || x.is_empty() || x.len() % d != 0 || w.len() != d {
            return Err(Error::data(format!(
                "Gaussian fit: {} values, {} noise widths for dimension {d}",
                x.len(),
                w.len()
            )));
        }
        let n = (x.len() / d) as f64;
        let mut mean = vec![0.0; d];
        for row in x.chunks_exact(d) {
            for (m, v) in mean.iter_mut().zip(row) {
                *m += v;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut cov = vec![0.0; d * d];
        let mut c = vec![0.0; d];
        for row in x.chunks_exact(d) {
            for k in 0..d {
                c[k] = row[k] - mean[k];
            }
            for i in 0..d {
                for j in 0..=i {
                    cov[i * d + j] += c[i] * c[j];
                }
            }
        }
        for i in 0..d {
            for j in 0..=i {
                cov[i * d + j] /= n;
                cov[j * d + i] = cov[i * d + j];
            }
            cov[i * d + i] += w[i] * w[i] / 12.0;
            mean[i] += w[i] / 2.0;
        }
        Self::new(mean, &cov)
    }

    /// Dimension.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// `log det Σ = 2 Σ_i log L_ii`.
    pub fn log_det(&self) -> f64 {
        let d = self.dim();
        2.0 * (0..d).map(|i| self.chol[i * d + i].ln()).sum::<f64>()
    }

    /// `−log N(x; μ, Σ)` of each row, nats. Shapes: x [n, d] → [n].
    pub fn nll(&self, x: &[f64]) -> Vec<f64> {
        let d = self.dim();
        let konst = 0.5 * (d as f64 * (2.0 * std::f64::consts::PI).ln() + self.log_det());
        let mut z = vec![0.0; d];
        x.chunks_exact(d)
            .map(|row| {
                // Forward substitution: L z = x − μ.
                for i in 0..d {
                    let dot: f64 = self.chol[i * d..i * d + i]
                        .iter()
                        .zip(&z[..i])
                        .map(|(l, v)| l * v)
                        .sum();
                    z[i] = (row[i] - self.mean[i] - dot) / self.chol[i * d + i];
                }
                0.5 * z.iter().map(|v| v * v).sum::<f64>() + konst
            })
            .collect()
    }
}

/// Lower Cholesky factor of the symmetric `a` [d, d]; an error if it is not positive definite.
fn cholesky(a: &[f64], d: usize) -> Result<Vec<f64>> {
    let mut l = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let mut s = a[i * d + j];
            for k in 0..j {
                s -= l[i * d + k] * l[j * d + k];
            }
            if i == j {
                if s.is_nan() || s <= 0.0 {
                    return Err(Error::data(format!(
                        "Gaussian: the covariance is not positive definite (pivot {i} is {s:e}; \
                         a constant or collinear column?)"
                    )));
                }
                l[i * d + i] = s.sqrt();
            } else {
                l[i * d + j] = s / l[j * d + j];
            }
        }
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nll_matches_the_closed_form_in_2d() {
        // Σ = [[4, 1.2], [1.2, 1]], det = 2.56, Σ⁻¹ = [[1, -1.2], [-1.2, 4]] / 2.56.
        let g = Gaussian::new(vec![1.0, -2.0], &[4.0, 1.2, 1.2, 1.0]).unwrap();
        assert!((g.log_det() - 2.56f64.ln()).abs() < 1e-14);
        let x = [2.5, -1.0, 1.0, -2.0];
        let nll = g.nll(&x);
        let (a, b) = (1.5, 1.0);
        let quad = (a * a - 2.4 * a * b + 4.0 * b * b) / 2.56;
        let want = 0.5 * quad + (2.0 * std::f64::consts::PI).ln() + 0.5 * 2.56f64.ln();
        assert!((nll[0] - want).abs() < 1e-13, "{} vs {want}", nll[0]);
        let want0 = (2.0 * std::f64::consts::PI).ln() + 0.5 * 2.56f64.ln();
        assert!((nll[1] - want0).abs() < 1e-13);
    }

    #[test]
    fn fit_recovers_moments_and_uniform_noise_adds_its_own() {
        // Four points with mean (1, 0) and covariance [[0.5, 0.5], [0.5, 1]] (divided by n).
        let x = [0.0, -1.0, 2.0, 1.0, 1.0, 1.0, 1.0, -1.0];
        let g = Gaussian::fit(&x, 2).unwrap();
        assert_eq!(g.mean, vec![1.0, 0.0]);
        let l = &g.chol;
        let cov = [l[0] * l[0], l[0] * l[2], l[2] * l[2] + l[3] * l[3]];
        for (c, w) in cov.iter().zip([0.5, 0.5, 1.0]) {
            assert!((c - w).abs() < 1e-14, "{cov:?}");
        }
        let gq = Gaussian::fit_with_uniform_noise(&x, 2, &[1.0, 0.0]).unwrap();
        assert_eq!(gq.mean, vec![1.5, 0.0]);
        assert!((gq.chol[0] * gq.chol[0] - (0.5 + 1.0 / 12.0)).abs() < 1e-14);
        // The MLE fit is the best Gaussian on its own training data: any other mean or scale
        // gives a larger mean NLL.
        let mean = |g: &Gaussian| g.nll(&x).iter().sum::<f64>() / 4.0;
        let other = Gaussian::new(vec![1.1, 0.0], &[0.5, 0.5, 0.5, 1.0]).unwrap();
        let wider = Gaussian::new(vec![1.0, 0.0], &[0.6, 0.5, 0.5, 1.1]).unwrap();
        assert!(mean(&g) < mean(&other) && mean(&g) < mean(&wider));
        // Closed form at the MLE: mean NLL = d/2 (1 + ln 2π) + ½ log det Σ.
        let want = 1.0 + (2.0 * std::f64::consts::PI).ln() + 0.5 * g.log_det();
        assert!((mean(&g) - want).abs() < 1e-13);
    }

    #[test]
    fn singular_and_bad_input_are_errors() {
        let e = Gaussian::fit(&[1.0, 5.0, 2.0, 5.0, 3.0, 5.0], 2).unwrap_err();
        assert!(e.to_string().contains("not positive definite"), "{e}");
        assert!(Gaussian::fit(&[1.0, 2.0, 3.0], 2).is_err());
        assert!(Gaussian::new(vec![0.0], &[f64::NAN]).is_err());
    }
}

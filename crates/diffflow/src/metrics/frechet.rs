//! The Fréchet distance between two feature sets, each summarised by its mean and
//! covariance (the Fréchet / 2-Wasserstein distance of the two Gaussians; with Inception
//! features it is the FID, with LeNet features [`crate::classifier`]'s "FID (LeNet)"):
//!
//! `FD = ‖μ_1 − μ_2‖² + tr Σ_1 + tr Σ_2 − 2 tr (Σ_1^{1/2} Σ_2 Σ_1^{1/2})^{1/2}`.
//!
//! All in f64. `Σ_1^{1/2} Σ_2 Σ_1^{1/2}` is symmetric positive semi-definite, so both square
//! roots come from a symmetric eigendecomposition ([`sym_eigen`], cyclic Jacobi), with
//! rounding-size negative eigenvalues clamped to 0; no complex arithmetic is needed (the
//! usual `sqrtm(Σ_1 Σ_2)` has the same trace, since `Σ_1 Σ_2` is similar to that matrix).
//! Covariances divide by `n − 1`, like `numpy.cov`.

use crate::{Error, Result};

/// Mean and covariance of a feature set.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureStats {
    /// Mean `[d]`.
    pub mean: Vec<f64>,
    /// Covariance (divided by `n − 1`), [d, d] row-major.
    pub cov: Vec<f64>,
    /// Number of feature vectors.
    pub n: usize,
}

impl FeatureStats {
    /// Moments of `x` [n, d] (n ≥ 2, finite values).
    pub fn fit(x: &[f64], d: usize, what: &str) -> Result<Self> {
        let n = super::check(x, d, what)?;
        if n < 2 {
            return Err(Error::data(format!(
                "{what}: need at least 2 feature vectors, got 1"
            )));
        }
        let mut mean = vec![0.0; d];
        for row in x.chunks_exact(d) {
            mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut cov = vec![0.0; d * d];
        let mut c = vec![0.0; d];
        for row in x.chunks_exact(d) {
            c.iter_mut()
                .zip(row.iter().zip(&mean))
                .for_each(|(c, (v, m))| *c = v - m);
            for i in 0..d {
                let ci = c[i];
                for (acc, cj) in cov[i * d..i * d + i + 1].iter_mut().zip(&c) {
                    *acc += ci * cj;
                }
            }
        }
        for i in 0..d {
            for j in 0..=i {
                cov[i * d + j] /= (n - 1) as f64;
                cov[j * d + i] = cov[i * d + j];
            }
        }
        Ok(FeatureStats { mean, cov, n })
    }

    /// Feature dimension.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }
}

/// Fréchet distance between `x` [n, d] and `y` [m, d] (module docs).
pub fn frechet_distance(x: &[f64], y: &[f64], d: usize) -> Result<f64> {
    frechet_distance_stats(
        &FeatureStats::fit(x, d, "Fréchet distance, first set")?,
        &FeatureStats::fit(y, d, "Fréchet distance, second set")?,
    )
}

/// Fréchet distance between two summaries of the same dimension. Cost: two `d x d`
/// eigendecompositions, `O(d³)` each per Jacobi sweep.
pub fn frechet_distance_stats(a: &FeatureStats, b: &FeatureStats) -> Result<f64> {
    let d = a.dim();
    if b.dim() != d || a.cov.len() != d * d || b.cov.len() != d * d {
        return Err(Error::data(format!(
            "Fréchet distance: feature dimensions {} and {} differ (or a covariance is not d x d)",
            a.dim(),
            b.dim()
        )));
    }
    let mean2: f64 = a
        .mean
        .iter()
        .zip(&b.mean)
        .map(|(p, q)| (p - q) * (p - q))
        .sum();
    let trace = |m: &[f64]| (0..d).map(|i| m[i * d + i]).sum::<f64>();
    let root = sym_sqrt(&a.cov, d)?;
    let inner = matmul(&matmul(&root, &b.cov, d), &root, d);
    let (values, _) = sym_eigen(&symmetrised(&inner, d), d)?;
    let tr_cross: f64 = values.iter().map(|v| v.max(0.0).sqrt()).sum();
    Ok(mean2 + trace(&a.cov) + trace(&b.cov) - 2.0 * tr_cross)
}

/// Expected Fréchet distance between two independent samples of sizes `n1` and `n2` from one
/// Gaussian with covariance `cov` [d, d]: the estimator's bias, its floor. To first order in
/// `1/n`, with `λ` the eigenvalues of `cov`,
/// `tr Σ (1/n1 + 1/n2) + (1/(n1−1) + 1/(n2−1)) · ½ Σ_{i,j} λ_i λ_j (1 + δ_ij) / (λ_i + λ_j)`:
/// the mean term `E‖μ̂_1 − μ̂_2‖²`, plus the second-order (Bures) expansion of the
/// covariance terms around `Σ` with the Wishart variances `Var Ŝ_ij = (λ_i λ_j + δ_ij λ_i²)/(n−1)`
/// in the eigenbasis. For `d` equal eigenvalues `λ` and `n1 = n2 = n` it is about
/// `λ d (d + 5) / (2n)`. Non-Gaussian features have other fourth moments, so for them it is
/// a guide, not a bound.
pub fn expected_frechet_floor(cov: &[f64], d: usize, n1: usize, n2: usize) -> Result<f64> {
    if n1 < 2 || n2 < 2 {
        return Err(Error::config(
            "the Fréchet floor needs samples of at least 2",
        ));
    }
    let (lambda, _) = sym_eigen(cov, d)?;
    let lambda: Vec<f64> = lambda.iter().map(|v| v.max(0.0)).collect();
    let (n1, n2) = (n1 as f64, n2 as f64);
    let mut bures = 0.0;
    for (i, &li) in lambda.iter().enumerate() {
        for (j, &lj) in lambda.iter().enumerate() {
            if li + lj > 0.0 {
                let diag = if i == j { 2.0 } else { 1.0 };
                bures += 0.5 * li * lj * diag / (li + lj);
            }
        }
    }
    let trace: f64 = lambda.iter().sum();
    Ok(trace * (1.0 / n1 + 1.0 / n2) + (1.0 / (n1 - 1.0) + 1.0 / (n2 - 1.0)) * bures)
}

/// `(a + aᵀ)/2` [d, d]: removes the rounding asymmetry of a product meant to be symmetric.
fn symmetrised(a: &[f64], d: usize) -> Vec<f64> {
    let mut s = a.to_vec();
    for i in 0..d {
        for j in 0..i {
            let m = 0.5 * (a[i * d + j] + a[j * d + i]);
            s[i * d + j] = m;
            s[j * d + i] = m;
        }
    }
    s
}

/// `a b` for [d, d] row-major matrices.
fn matmul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut c = vec![0.0; d * d];
    for i in 0..d {
        for k in 0..d {
            let aik = a[i * d + k];
            if aik != 0.0 {
                for (cij, bkj) in c[i * d..(i + 1) * d].iter_mut().zip(&b[k * d..(k + 1) * d]) {
                    *cij += aik * bkj;
                }
            }
        }
    }
    c
}

/// Most Jacobi sweeps before giving up (convergence is quadratic: ~10 sweeps in practice).
const MAX_SWEEPS: usize = 100;

/// Eigen-decomposition `a = V diag(λ) Vᵀ` of the symmetric `a` [d, d] by the cyclic Jacobi
/// method: sweeps of plane rotations over every pair `(p, q)`, each zeroing `a_pq`, until the
/// off-diagonal Frobenius norm is below `1e-14` of the whole norm. Returns `λ` `[d]`
/// (ascending) and `V` [d, d] (column `k` the eigenvector of `λ_k`). Errors on a non-finite
/// or non-symmetric `a` (beyond rounding) or no convergence. Cost `O(d³)` per sweep.
pub fn sym_eigen(a: &[f64], d: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    if d == 0 || a.len() != d * d {
        return Err(Error::data(format!(
            "eigendecomposition: need a non-empty {d} x {d} matrix, got {} values",
            a.len()
        )));
    }
    if a.iter().any(|v| !v.is_finite()) {
        return Err(Error::data("eigendecomposition: non-finite matrix entry"));
    }
    let norm2: f64 = a.iter().map(|v| v * v).sum();
    let asym: f64 = (0..d)
        .flat_map(|i| (0..i).map(move |j| (i, j)))
        .map(|(i, j)| (a[i * d + j] - a[j * d + i]).powi(2))
        .sum();
    if asym > 1e-20 * norm2 {
        return Err(Error::data(
            "eigendecomposition: the matrix is not symmetric",
        ));
    }
    let mut m = symmetrised(a, d);
    let mut v = vec![0.0; d * d];
    (0..d).for_each(|i| v[i * d + i] = 1.0);
    let off = |m: &[f64]| -> f64 {
        (0..d)
            .flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| m[i * d + j] * m[i * d + j])
            .sum()
    };
    let mut converged = false;
    for _ in 0..MAX_SWEEPS {
        if off(&m) <= 1e-28 * norm2 {
            converged = true;
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = m[p * d + q];
                if apq == 0.0 {
                    continue;
                }
                // cot 2φ = (a_qq − a_pp) / (2 a_pq); t = tan φ, the smaller root.
                let theta = (m[q * d + q] - m[p * d + p]) / (2.0 * apq);
                let t = if theta.abs() > 1e150 {
                    0.5 / theta
                } else {
                    theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt())
                };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // m ← Jᵀ m J with J the rotation in the (p, q) plane; V ← V J.
                for k in 0..d {
                    let (kp, kq) = (m[k * d + p], m[k * d + q]);
                    m[k * d + p] = c * kp - s * kq;
                    m[k * d + q] = s * kp + c * kq;
                }
                for k in 0..d {
                    let (pk, qk) = (m[p * d + k], m[q * d + k]);
                    m[p * d + k] = c * pk - s * qk;
                    m[q * d + k] = s * pk + c * qk;
                }
                m[p * d + q] = 0.0;
                m[q * d + p] = 0.0;
                for k in 0..d {
                    let (kp, kq) = (v[k * d + p], v[k * d + q]);
                    v[k * d + p] = c * kp - s * kq;
                    v[k * d + q] = s * kp + c * kq;
                }
            }
        }
    }
    if !converged && off(&m) > 1e-28 * norm2 {
        return Err(Error::data(format!(
            "eigendecomposition: Jacobi did not converge in {MAX_SWEEPS} sweeps"
        )));
    }
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&i, &j| m[i * d + i].total_cmp(&m[j * d + j]));
    let values = order.iter().map(|&i| m[i * d + i]).collect();
    let mut vectors = vec![0.0; d * d];
    for (new, &old) in order.iter().enumerate() {
        for k in 0..d {
            vectors[k * d + new] = v[k * d + old];
        }
    }
    Ok((values, vectors))
}

/// The positive semi-definite square root `V diag(√max(λ, 0)) Vᵀ` of the symmetric `a`
/// [d, d] (negative eigenvalues, from rounding, count as 0).
pub fn sym_sqrt(a: &[f64], d: usize) -> Result<Vec<f64>> {
    let (values, v) = sym_eigen(a, d)?;
    let roots: Vec<f64> = values.iter().map(|l| l.max(0.0).sqrt()).collect();
    let mut out = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s: f64 = (0..d).map(|k| v[i * d + k] * roots[k] * v[j * d + k]).sum();
            out[i * d + j] = s;
            out[j * d + i] = s;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// A random symmetric positive definite [d, d]: `B Bᵀ + δ I`.
    fn spd(d: usize, delta: f64, rng: &mut Rng) -> Vec<f64> {
        let b = rng.normals(d * d);
        let mut a = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                a[i * d + j] = (0..d).map(|k| b[i * d + k] * b[j * d + k]).sum::<f64>();
            }
            a[i * d + i] += delta;
        }
        a
    }

    fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    /// Samples [n, d] of `N(mu, L Lᵀ)` with `l` a square factor.
    fn gaussian(n: usize, mu: &[f64], l: &[f64], rng: &mut Rng) -> Vec<f64> {
        let d = mu.len();
        let mut x = Vec::with_capacity(n * d);
        for _ in 0..n {
            let e = rng.normals(d);
            x.extend((0..d).map(|i| mu[i] + (0..d).map(|k| l[i * d + k] * e[k]).sum::<f64>()));
        }
        x
    }

    #[test]
    fn jacobi_reconstructs_and_is_orthonormal() {
        let mut rng = Rng::new(0);
        for d in [1, 2, 5, 20] {
            let a = spd(d, 0.0, &mut rng);
            let (l, v) = sym_eigen(&a, d).unwrap();
            assert!(l.windows(2).all(|w| w[0] <= w[1]), "ascending");
            let mut vdv = vec![0.0; d * d];
            let mut vtv = vec![0.0; d * d];
            for i in 0..d {
                for j in 0..d {
                    vdv[i * d + j] = (0..d).map(|k| v[i * d + k] * l[k] * v[j * d + k]).sum();
                    vtv[i * d + j] = (0..d).map(|k| v[k * d + i] * v[k * d + j]).sum();
                }
            }
            let scale = a.iter().map(|x| x.abs()).fold(0.0, f64::max);
            assert!(max_abs_diff(&vdv, &a) < 1e-12 * scale, "d = {d}");
            let eye: Vec<f64> = (0..d * d)
                .map(|k| if k % (d + 1) == 0 { 1.0 } else { 0.0 })
                .collect();
            assert!(max_abs_diff(&vtv, &eye) < 1e-12, "d = {d}");
            // The square root squares back.
            let r = sym_sqrt(&a, d).unwrap();
            assert!(
                max_abs_diff(&matmul(&r, &r, d), &a) < 1e-11 * scale,
                "d = {d}"
            );
        }
        // Hand case: [[2, 1], [1, 2]] has eigenvalues 1 and 3, vectors (1, ∓1)/√2.
        let (l, v) = sym_eigen(&[2.0, 1.0, 1.0, 2.0], 2).unwrap();
        assert!(
            (l[0] - 1.0).abs() < 1e-15 && (l[1] - 3.0).abs() < 1e-15,
            "{l:?}"
        );
        assert!((v[0].abs() - 0.5f64.sqrt()).abs() < 1e-15 && (v[0] + v[2]).abs() < 1e-15);
        // Diagonal input, repeated and zero eigenvalues.
        let (l, _) = sym_eigen(&[0.0, 0.0, 0.0, 0.0], 2).unwrap();
        assert_eq!(l, [0.0, 0.0]);
        assert!(
            sym_eigen(&[1.0, 2.0, 0.0, 1.0], 2).is_err(),
            "not symmetric"
        );
        assert!(sym_eigen(&[f64::NAN], 1).is_err());
        assert!(sym_eigen(&[1.0, 2.0], 2).is_err());
    }

    fn stats(mean: Vec<f64>, cov: Vec<f64>) -> FeatureStats {
        FeatureStats { mean, cov, n: 2 }
    }

    #[test]
    fn frechet_known_answers() {
        let mut rng = Rng::new(1);
        let d = 6;
        let s = spd(d, 0.1, &mut rng);
        let mu: Vec<f64> = rng.normals(d);
        // Equal Gaussians: 0 (to rounding, relative to tr Σ).
        let same =
            frechet_distance_stats(&stats(mu.clone(), s.clone()), &stats(mu.clone(), s.clone()))
                .unwrap();
        let tr: f64 = (0..d).map(|i| s[i * d + i]).sum();
        assert!(same.abs() < 1e-11 * tr, "{same}");
        // Shifted means: |μ1 − μ2|².
        let nu: Vec<f64> = mu.iter().map(|m| m + 0.3).collect();
        let shifted =
            frechet_distance_stats(&stats(mu.clone(), s.clone()), &stats(nu, s.clone())).unwrap();
        assert!((shifted - d as f64 * 0.09).abs() < 1e-10, "{shifted}");
        // Diagonal covariances: Σ (√a − √b)².
        let (a, b) = ([0.5, 2.0, 9.0, 1e-3], [4.0, 2.0, 1.0, 0.0]);
        let diag = |v: &[f64]| -> Vec<f64> {
            (0..16)
                .map(|k| if k % 5 == 0 { v[k / 5] } else { 0.0 })
                .collect()
        };
        let got = frechet_distance_stats(
            &stats(vec![0.0; 4], diag(&a)),
            &stats(vec![0.0; 4], diag(&b)),
        )
        .unwrap();
        let want: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x.sqrt() - y.sqrt()).powi(2))
            .sum();
        assert!((got - want).abs() < 1e-14, "{got} vs {want}");
        // Non-commuting 2x2 pair: tr (S1^½ S2 S1^½)^½ = √(tr(S1 S2) + 2 √(det S1 det S2)).
        let (s1, s2) = ([2.0, 0.7, 0.7, 1.0], [0.5, -0.3, -0.3, 3.0]);
        let tr12 = s1[0] * s2[0] + s1[1] * s2[2] + s1[2] * s2[1] + s1[3] * s2[3];
        let det = |m: &[f64; 4]| m[0] * m[3] - m[1] * m[2];
        let want = 3.0 + 3.5 - 2.0 * (tr12 + 2.0 * (det(&s1) * det(&s2)).sqrt()).sqrt();
        let got = frechet_distance_stats(
            &stats(vec![0.0; 2], s1.to_vec()),
            &stats(vec![0.0; 2], s2.to_vec()),
        )
        .unwrap();
        assert!((got - want).abs() < 1e-14, "{got} vs {want}");
        assert!(frechet_distance_stats(
            &stats(vec![0.0; 2], s1.to_vec()),
            &stats(vec![0.0], vec![1.0])
        )
        .is_err());
    }

    /// `sqrtm(S1 S2)` by the Denman–Beavers iteration on the (non-symmetric) product, with
    /// Gauss–Jordan inverses: the textbook route, independent of the eigendecomposition.
    fn trace_sqrt_product(s1: &[f64], s2: &[f64], d: usize) -> f64 {
        let inv = |a: &[f64]| -> Vec<f64> {
            let mut m = a.to_vec();
            let mut r: Vec<f64> = (0..d * d)
                .map(|k| if k % (d + 1) == 0 { 1.0 } else { 0.0 })
                .collect();
            for c in 0..d {
                let p = (c..d)
                    .max_by(|&i, &j| m[i * d + c].abs().total_cmp(&m[j * d + c].abs()))
                    .unwrap();
                for k in 0..d {
                    m.swap(c * d + k, p * d + k);
                    r.swap(c * d + k, p * d + k);
                }
                let piv = m[c * d + c];
                for k in 0..d {
                    m[c * d + k] /= piv;
                    r[c * d + k] /= piv;
                }
                for i in (0..d).filter(|&i| i != c) {
                    let f = m[i * d + c];
                    for k in 0..d {
                        m[i * d + k] -= f * m[c * d + k];
                        r[i * d + k] -= f * r[c * d + k];
                    }
                }
            }
            r
        };
        let mut y = matmul(s1, s2, d);
        let mut z: Vec<f64> = (0..d * d)
            .map(|k| if k % (d + 1) == 0 { 1.0 } else { 0.0 })
            .collect();
        for _ in 0..60 {
            let (yi, zi) = (inv(&y), inv(&z));
            y = y.iter().zip(&zi).map(|(a, b)| 0.5 * (a + b)).collect();
            z = z.iter().zip(&yi).map(|(a, b)| 0.5 * (a + b)).collect();
        }
        (0..d).map(|i| y[i * d + i]).sum()
    }

    #[test]
    fn frechet_of_a_random_non_commuting_pair_matches_sqrtm_of_the_product() {
        let mut rng = Rng::new(2);
        for d in [3, 8] {
            let (s1, s2) = (spd(d, 0.5, &mut rng), spd(d, 0.5, &mut rng));
            assert!(
                max_abs_diff(&matmul(&s1, &s2, d), &matmul(&s2, &s1, d)) > 0.1,
                "commute"
            );
            let (m1, m2) = (rng.normals(d), rng.normals(d));
            let tr = |m: &[f64]| (0..d).map(|i| m[i * d + i]).sum::<f64>();
            let mean2: f64 = m1.iter().zip(&m2).map(|(a, b)| (a - b).powi(2)).sum();
            let want = mean2 + tr(&s1) + tr(&s2) - 2.0 * trace_sqrt_product(&s1, &s2, d);
            let got = frechet_distance_stats(
                &stats(m1.clone(), s1.clone()),
                &stats(m2.clone(), s2.clone()),
            )
            .unwrap();
            assert!(
                (got - want).abs() < 1e-9 * want.abs().max(1.0),
                "d = {d}: {got} vs {want}"
            );
            // Symmetric in its arguments.
            let back = frechet_distance_stats(&stats(m2, s2), &stats(m1, s1)).unwrap();
            assert!((got - back).abs() < 1e-9 * got.abs().max(1.0));
        }
    }

    #[test]
    fn fit_matches_hand_moments_and_rejects_bad_input() {
        // Rows (0, 1), (2, 1), (4, 4): means (2, 2); cov/(n−1): var 4, 3; cross 3.
        let s = FeatureStats::fit(&[0.0, 1.0, 2.0, 1.0, 4.0, 4.0], 2, "t").unwrap();
        assert_eq!(s.mean, [2.0, 2.0]);
        assert_eq!(s.cov, [4.0, 3.0, 3.0, 3.0]);
        assert!(FeatureStats::fit(&[1.0, 2.0], 2, "t").is_err(), "one row");
        assert!(
            FeatureStats::fit(&[1.0, 2.0, 3.0], 2, "t").is_err(),
            "ragged"
        );
        let e = FeatureStats::fit(&[1.0, 2.0, f64::INFINITY, 0.0], 2, "set A").unwrap_err();
        assert!(
            e.to_string()
                .contains("set A: non-finite value at row 1, column 0"),
            "{e}"
        );
        assert!(frechet_distance(&[0.0, 1.0], &[0.0, 1.0, 2.0], 1).unwrap() > 0.0);
    }

    #[test]
    fn floor_formula_matches_the_mean_fd_of_gaussian_samples() {
        // Two samples of n from one Gaussian (d = 5, unequal eigenvalues), 400 repetitions:
        // the mean FD must match `expected_frechet_floor` to its standard error plus the
        // O(1/n²) terms the formula drops.
        let (d, n, reps) = (5, 400, 400);
        let mut rng = Rng::new(3);
        let l: Vec<f64> = {
            let mut l = rng.normals(d * d);
            (0..d).for_each(|i| l[i * d + i] += 2.0);
            l
        };
        let cov = matmul(
            &l,
            &{
                let mut t = vec![0.0; d * d];
                (0..d).for_each(|i| (0..d).for_each(|j| t[j * d + i] = l[i * d + j]));
                t
            },
            d,
        );
        let floor = expected_frechet_floor(&cov, d, n, n).unwrap();
        let mu = vec![0.5; d];
        let fds: Vec<f64> = (0..reps)
            .map(|_| {
                let (x, y) = (
                    gaussian(n, &mu, &l, &mut rng),
                    gaussian(n, &mu, &l, &mut rng),
                );
                frechet_distance(&x, &y, d).unwrap()
            })
            .collect();
        let mean = fds.iter().sum::<f64>() / reps as f64;
        let sd = (fds.iter().map(|f| (f - mean).powi(2)).sum::<f64>() / (reps - 1) as f64).sqrt();
        let se = sd / (reps as f64).sqrt();
        eprintln!("FD floor d = {d}, n = {n}: predicted {floor:.4}, measured {mean:.4} ± {se:.4}");
        assert!(
            (mean - floor).abs() < 4.0 * se + 0.02 * floor,
            "{mean} ± {se} vs {floor}"
        );
        // Equal eigenvalues: λ d (d + 5) / (2n) to first order.
        let eye: Vec<f64> = (0..d * d)
            .map(|k| if k % (d + 1) == 0 { 2.0 } else { 0.0 })
            .collect();
        let f = expected_frechet_floor(&eye, d, n, n).unwrap();
        let approx = 2.0 * (d * (d + 5)) as f64 / (2.0 * n as f64);
        assert!((f - approx).abs() < 0.01 * approx, "{f} vs {approx}");
    }
}

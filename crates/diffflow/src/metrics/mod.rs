//! Sample quality: distances between a set of samples and a set of data points, both
//! `[n, d]` row-major f64 (in whatever units the caller chooses; `diffflow compare` uses the
//! data's original units).
//!
//! - [`mmd2_unbiased`]: the unbiased (U-statistic) squared maximum mean discrepancy with the
//!   RBF kernel `k(x, y) = exp(−‖x − y‖² / (2h²))` at bandwidth `h`; its expectation is the
//!   population MMD², 0 iff the distributions agree, and the estimate can be negative.
//!   [`mmd2_biased`] is the V-statistic (≥ 0, exactly 0 for identical sets).
//! - [`sliced_w2`]: the sliced Wasserstein-2 distance
//!   `SW2 = sqrt(mean_k W2²(θ_kᵀ x, θ_kᵀ y))` over fixed seeded unit directions
//!   ([`projections`]); each 1-D `W2²` is between the empirical distributions, exact for
//!   any two sizes ([`w2_squared_1d`]).
//! - [`hist_kl`]: `KL(P ‖ Q)` of 2-D histograms on a fixed square grid plus one overflow bin
//!   for points outside it, each bin's count smoothed by a pseudo-count ([`HistGrid`]).
//! - [`frechet`]: the Fréchet distance between the Gaussians fitted to two feature sets
//!   ([`frechet_distance`]; the FID with a feature network, see [`crate::classifier`]).

pub mod frechet;

pub use frechet::{frechet_distance, frechet_distance_stats, FeatureStats};

use crate::rng::Rng;
use crate::{Error, Result};

/// Checks `x` [n, d]: non-empty, a whole number of rows, finite values; returns n.
pub(crate) fn check(x: &[f64], d: usize, what: &str) -> Result<usize> {
    if d == 0 || x.is_empty() || x.len() % d != 0 {
        return Err(Error::data(format!(
            "{what}: need a non-empty [n, {d}] array, got {} values",
            x.len()
        )));
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(Error::data(format!(
            "{what}: non-finite value at row {}, column {}",
            i / d,
            i % d
        )));
    }
    Ok(x.len() / d)
}

fn check_bandwidth(h: f64) -> Result<()> {
    if h.is_finite() && h > 0.0 {
        Ok(())
    } else {
        Err(Error::config(format!("MMD bandwidth must be > 0, got {h}")))
    }
}

/// `Σ_{i, j} k(a_i, b_j)`, skipping `i == j` when `skip_diag` (a and b the same set).
fn kernel_sum(a: &[f64], b: &[f64], d: usize, h: f64, skip_diag: bool) -> f64 {
    let c = -0.5 / (h * h);
    let mut total = 0.0;
    for (i, ai) in a.chunks_exact(d).enumerate() {
        let mut row = 0.0;
        for (j, bj) in b.chunks_exact(d).enumerate() {
            if skip_diag && i == j {
                continue;
            }
            let r2: f64 = ai.iter().zip(bj).map(|(p, q)| (p - q) * (p - q)).sum();
            row += (c * r2).exp();
        }
        total += row;
    }
    total
}

/// Unbiased MMD² between `x` [n, d] and `y` [m, d] (n, m ≥ 2) with the RBF kernel of
/// bandwidth `h`: `Σ_{i≠j} k(x_i, x_j)/(n(n−1)) + Σ_{i≠j} k(y_i, y_j)/(m(m−1))
/// − 2 Σ_{i,j} k(x_i, y_j)/(nm)`. Cost O((n + m)² d).
pub fn mmd2_unbiased(x: &[f64], y: &[f64], d: usize, h: f64) -> Result<f64> {
    let n = check(x, d, "MMD first set")? as f64;
    let m = check(y, d, "MMD second set")? as f64;
    check_bandwidth(h)?;
    if n < 2.0 || m < 2.0 {
        return Err(Error::data(
            "the unbiased MMD needs at least 2 points per set",
        ));
    }
    let kxx = kernel_sum(x, x, d, h, true) / (n * (n - 1.0));
    let kyy = kernel_sum(y, y, d, h, true) / (m * (m - 1.0));
    let kxy = kernel_sum(x, y, d, h, false) / (n * m);
    Ok(kxx + kyy - 2.0 * kxy)
}

/// Biased MMD² (V-statistic, all pairs including `i = j`): ≥ 0, and 0 for identical sets.
pub fn mmd2_biased(x: &[f64], y: &[f64], d: usize, h: f64) -> Result<f64> {
    let n = check(x, d, "MMD first set")? as f64;
    let m = check(y, d, "MMD second set")? as f64;
    check_bandwidth(h)?;
    let kxx = kernel_sum(x, x, d, h, false) / (n * n);
    let kyy = kernel_sum(y, y, d, h, false) / (m * m);
    let kxy = kernel_sum(x, y, d, h, false) / (n * m);
    Ok(kxx + kyy - 2.0 * kxy)
}

/// `count` unit directions in `R^d` (normalised standard normals from `Rng::new(seed)`),
/// row-major [count, d].
pub fn projections(d: usize, count: usize, seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(d * count);
    while out.len() < d * count {
        let v = rng.normals(d);
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        if norm > 1e-12 {
            out.extend(v.iter().map(|a| a / norm));
        }
    }
    out
}

/// `W2²` between the empirical distributions of the sorted samples `a` and `b` (any sizes):
/// `∫_0^1 (A⁻¹(u) − B⁻¹(u))² du` with the step quantile functions, summed exactly over the
/// merged breakpoints `i/n` and `j/m`.
pub fn w2_squared_1d(a: &[f64], b: &[f64]) -> f64 {
    let (n, m) = (a.len(), b.len());
    if n == 0 || m == 0 {
        return f64::NAN;
    }
    let (mut i, mut j) = (0usize, 0usize);
    let mut u = 0.0;
    let mut total = 0.0;
    while i < n && j < m {
        // Next breakpoint: min((i+1)/n, (j+1)/m), compared in integers.
        let (ai, bj) = ((i + 1) * m, (j + 1) * n);
        let next = if ai <= bj {
            (i + 1) as f64 / n as f64
        } else {
            (j + 1) as f64 / m as f64
        };
        let diff = a[i] - b[j];
        total += (next - u) * diff * diff;
        u = next;
        match ai.cmp(&bj) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                i += 1;
                j += 1;
            }
        }
    }
    total
}

/// Sliced Wasserstein-2 distance between `x` [n, d] and `y` [m, d] over the directions
/// `projections(d, count, seed)`: `sqrt(mean_k W2²(θ_kᵀ x, θ_kᵀ y))`.
pub fn sliced_w2(x: &[f64], y: &[f64], d: usize, count: usize, seed: u64) -> Result<f64> {
    check(x, d, "SW2 first set")?;
    check(y, d, "SW2 second set")?;
    if count == 0 {
        return Err(Error::config("SW2 needs at least one projection"));
    }
    let dirs = projections(d, count, seed);
    let project = |pts: &[f64], th: &[f64]| -> Vec<f64> {
        let mut p: Vec<f64> = pts
            .chunks_exact(d)
            .map(|r| r.iter().zip(th).map(|(a, b)| a * b).sum())
            .collect();
        p.sort_by(f64::total_cmp);
        p
    };
    let total: f64 = dirs
        .chunks_exact(d)
        .map(|th| w2_squared_1d(&project(x, th), &project(y, th)))
        .sum();
    Ok((total / count as f64).sqrt())
}

/// A fixed square histogram grid on `[lo, hi]²` with `bins × bins` cells plus one overflow
/// bin, and the pseudo-count added to every bin (both histograms) before normalising.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HistGrid {
    /// Lower edge of both axes.
    pub lo: f64,
    /// Upper edge of both axes.
    pub hi: f64,
    /// Cells per axis.
    pub bins: usize,
    /// Pseudo-count per bin (> 0 keeps the KL finite).
    pub pseudo: f64,
}

impl HistGrid {
    /// Number of bins including the overflow bin.
    pub fn len(&self) -> usize {
        self.bins * self.bins + 1
    }

    /// Always false (there is at least the overflow bin).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Bin of the point `(x, y)`: cells row-major by (x cell, y cell), `bins²` = overflow.
    pub fn bin(&self, x: f64, y: f64) -> usize {
        let w = (self.hi - self.lo) / self.bins as f64;
        let cell = |v: f64| -> Option<usize> {
            if v < self.lo || v > self.hi {
                return None;
            }
            Some((((v - self.lo) / w) as usize).min(self.bins - 1))
        };
        match (cell(x), cell(y)) {
            (Some(i), Some(j)) => i * self.bins + j,
            _ => self.bins * self.bins,
        }
    }

    /// Smoothed probabilities `(c_i + pseudo) / (n + K pseudo)` of the points [n, 2].
    pub fn probabilities(&self, pts: &[f64]) -> Vec<f64> {
        let k = self.len();
        let mut counts = vec![0.0; k];
        for p in pts.chunks_exact(2) {
            counts[self.bin(p[0], p[1])] += 1.0;
        }
        let total = (pts.len() / 2) as f64 + k as f64 * self.pseudo;
        counts.iter().map(|c| (c + self.pseudo) / total).collect()
    }

    fn validate(&self) -> Result<()> {
        if !(self.lo.is_finite() && self.hi.is_finite() && self.lo < self.hi)
            || self.bins == 0
            || !(self.pseudo.is_finite() && self.pseudo > 0.0)
        {
            return Err(Error::config(format!(
                "histogram grid needs lo < hi, bins >= 1 and pseudo > 0, got {self:?}"
            )));
        }
        Ok(())
    }
}

/// `KL(P ‖ Q) = Σ_i p_i ln(p_i / q_i)` of the smoothed histograms of `p` and `q` (both
/// [n, 2]) on `grid`, in nats.
pub fn hist_kl(p: &[f64], q: &[f64], grid: &HistGrid) -> Result<f64> {
    check(p, 2, "histogram KL first set")?;
    check(q, 2, "histogram KL second set")?;
    grid.validate()?;
    let (pp, qq) = (grid.probabilities(p), grid.probabilities(q));
    Ok(pp
        .iter()
        .zip(&qq)
        .map(|(a, b)| if *a > 0.0 { a * (a / b).ln() } else { 0.0 })
        .sum())
}

/// Settings of [`sample_metrics`].
#[derive(Clone, Debug, PartialEq)]
pub struct MetricOptions {
    /// MMD bandwidths.
    pub bandwidths: Vec<f64>,
    /// Points of each set used by the MMD (its cost is quadratic).
    pub mmd_points: usize,
    /// SW2 directions.
    pub projections: usize,
    /// Seed of the SW2 directions.
    pub seed: u64,
    /// Histogram grid (2-D only).
    pub grid: HistGrid,
}

impl Default for MetricOptions {
    /// Bandwidths 0.02 and 0.1, 2000 MMD points, 256 projections (seed 0), a 40 × 40 grid
    /// on `[−1, 1]²` with pseudo-count 0.1: suited to the 2-D toy sets (max |x| = 0.85).
    fn default() -> Self {
        MetricOptions {
            bandwidths: vec![0.02, 0.1],
            mmd_points: 2000,
            projections: 256,
            seed: 0,
            grid: HistGrid {
                lo: -1.0,
                hi: 1.0,
                bins: 40,
                pseudo: 0.1,
            },
        }
    }
}

/// The three distances between `samples` and `data`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SampleMetrics {
    /// Unbiased MMD² per bandwidth (same order as the options).
    pub mmd2: Vec<f64>,
    /// Sliced Wasserstein-2 distance.
    pub sw2: f64,
    /// `KL(data ‖ samples)` of the histograms (NaN unless d = 2).
    pub hist_kl: f64,
}

/// MMD² (first `mmd_points` rows of each), SW2 and the histogram KL `KL(data ‖ samples)`.
pub fn sample_metrics(
    samples: &[f64],
    data: &[f64],
    d: usize,
    opts: &MetricOptions,
) -> Result<SampleMetrics> {
    let cut = |x: &'_ [f64]| -> Vec<f64> { x[..x.len().min(opts.mmd_points * d)].to_vec() };
    let (xs, ys) = (cut(samples), cut(data));
    let mmd2 = opts
        .bandwidths
        .iter()
        .map(|&h| mmd2_unbiased(&xs, &ys, d, h))
        .collect::<Result<Vec<_>>>()?;
    let sw2 = sliced_w2(samples, data, d, opts.projections, opts.seed)?;
    let hist_kl = if d == 2 {
        hist_kl(data, samples, &opts.grid)?
    } else {
        f64::NAN
    };
    Ok(SampleMetrics { mmd2, sw2, hist_kl })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaussian(n: usize, d: usize, mean: &[f64], std: f64, rng: &mut Rng) -> Vec<f64> {
        let mut x = rng.normals(n * d);
        for row in x.chunks_exact_mut(d) {
            for (v, m) in row.iter_mut().zip(mean) {
                *v = m + std * *v;
            }
        }
        x
    }

    fn mean_stderr(v: &[f64]) -> (f64, f64) {
        let n = v.len() as f64;
        let m = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|a| (a - m).powi(2)).sum::<f64>() / (n - 1.0);
        (m, (var / n).sqrt())
    }

    #[test]
    fn mmd_hand_computed_and_identical_sets() {
        // x = {0, 1}, y = {0, 2}, h = 1: e^{-1/2} + e^{-2} − 2 (1 + e^{-2} + 2 e^{-1/2}) / 4
        // = (e^{-2} − 1) / 2.
        let got = mmd2_unbiased(&[0.0, 1.0], &[0.0, 2.0], 1, 1.0).unwrap();
        let want = ((-2.0f64).exp() - 1.0) / 2.0;
        assert!((got - want).abs() < 1e-15, "{got} vs {want}");
        let mut rng = Rng::new(0);
        let x = gaussian(50, 2, &[0.0, 0.0], 1.0, &mut rng);
        assert!(mmd2_biased(&x, &x, 2, 0.3).unwrap().abs() < 1e-14);
        // Unbiased on identical sets: 2S/(n(n−1)) − 2(S + n)/n², S = Σ_{i≠j} k.
        let s = kernel_sum(&x, &x, 2, 0.3, true);
        let n = 50.0;
        let want = 2.0 * s / (n * (n - 1.0)) - 2.0 * (s + n) / (n * n);
        assert!((mmd2_unbiased(&x, &x, 2, 0.3).unwrap() - want).abs() < 1e-13);
        assert!(mmd2_unbiased(&x, &x, 2, 0.0).is_err());
        assert!(mmd2_unbiased(&x[..2], &x, 2, 1.0).is_err());
    }

    #[test]
    fn mmd_is_unbiased_for_gaussians() {
        // N(0, s² I) vs N(μ, s² I) in d = 2: MMD² = 2 (h²/(h²+2s²)) (1 − exp(−|μ|²/(2(h²+2s²)))).
        let (s, h, d) = (0.5, 0.7, 2);
        let mu = [0.6, -0.3];
        let c = h * h + 2.0 * s * s;
        let mu2: f64 = mu.iter().map(|a| a * a).sum();
        let want = 2.0 * (h * h / c) * (1.0 - (-mu2 / (2.0 * c)).exp());
        let mut rng = Rng::new(11);
        let (mut alt, mut null, mut biased) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..12 {
            let x = gaussian(300, d, &[0.0, 0.0], s, &mut rng);
            let y = gaussian(300, d, &mu, s, &mut rng);
            let z = gaussian(300, d, &[0.0, 0.0], s, &mut rng);
            alt.push(mmd2_unbiased(&x, &y, d, h).unwrap());
            null.push(mmd2_unbiased(&x, &z, d, h).unwrap());
            biased.push(mmd2_biased(&x, &z, d, h).unwrap());
        }
        let (m, se) = mean_stderr(&alt);
        assert!((m - want).abs() < 4.0 * se, "{m} ± {se} vs {want}");
        let (m0, se0) = mean_stderr(&null);
        assert!(m0.abs() < 4.0 * se0, "null: {m0} ± {se0}");
        // The V-statistic is biased upward: E ≈ 2(1 − E k)/n > 0 under the null.
        let (mb, seb) = mean_stderr(&biased);
        assert!(mb > 4.0 * seb, "biased null: {mb} ± {seb}");
    }

    #[test]
    fn w2_1d_hand_computed() {
        // Quantiles of {0, 1} vs {0, 1, 2}: (0−1)² on [1/3, 1/2) and (1−2)² on [2/3, 1).
        let got = w2_squared_1d(&[0.0, 1.0], &[0.0, 1.0, 2.0]);
        assert!((got - 0.5).abs() < 1e-15, "{got}");
        assert_eq!(w2_squared_1d(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]), 0.0);
        // Equal sizes: mean of squared differences of order statistics.
        let got = w2_squared_1d(&[0.0, 1.0, 5.0], &[1.0, 1.0, 2.0]);
        assert!((got - (1.0 + 0.0 + 9.0) / 3.0).abs() < 1e-15);
    }

    #[test]
    fn sw2_of_a_translate_and_of_gaussians() {
        let mut rng = Rng::new(2);
        let x = gaussian(500, 2, &[0.0, 0.0], 1.0, &mut rng);
        assert_eq!(sliced_w2(&x, &x, 2, 64, 0).unwrap(), 0.0);
        // A translate by Δ: every projection is shifted by θᵀΔ, so SW2² = mean_k (θ_kᵀΔ)².
        let delta = [0.8, -0.5];
        let y: Vec<f64> = x
            .chunks_exact(2)
            .flat_map(|r| [r[0] + delta[0], r[1] + delta[1]])
            .collect();
        let dirs = projections(2, 64, 0);
        let want: f64 = dirs
            .chunks_exact(2)
            .map(|th| (th[0] * delta[0] + th[1] * delta[1]).powi(2))
            .sum::<f64>()
            / 64.0;
        let got = sliced_w2(&x, &y, 2, 64, 0).unwrap();
        assert!((got * got - want).abs() < 1e-12, "{got}² vs {want}");
        // N(0, I) vs N(Δ, s² I): W2²(θ) = (θᵀΔ)² + (1 − s)² for every direction θ.
        let s = 0.5;
        let a = gaussian(20000, 2, &[0.0, 0.0], 1.0, &mut rng);
        let b = gaussian(20000, 2, &delta, s, &mut rng);
        let got = sliced_w2(&a, &b, 2, 100, 1).unwrap();
        let dirs = projections(2, 100, 1);
        let want: f64 = dirs
            .chunks_exact(2)
            .map(|th| (th[0] * delta[0] + th[1] * delta[1]).powi(2) + (1.0 - s).powi(2))
            .sum::<f64>()
            / 100.0;
        assert!(
            (got - want.sqrt()).abs() < 0.02 * want.sqrt(),
            "{got} vs {}",
            want.sqrt()
        );
        // … and over uniform directions its mean is |Δ|²/2 + (1 − s)².
        assert!((want - (0.89 / 2.0 + 0.25)).abs() < 0.1);
    }

    #[test]
    fn histogram_kl_known_answers() {
        let grid = HistGrid {
            lo: -1.0,
            hi: 1.0,
            bins: 2,
            pseudo: 0.5,
        };
        let mut rng = Rng::new(4);
        let x: Vec<f64> = (0..400).map(|_| 2.0 * rng.uniform() - 1.0).collect();
        assert_eq!(hist_kl(&x, &x, &grid).unwrap(), 0.0);
        // P: 2 points in cell (0, 0); Q: 2 points outside the grid (overflow bin).
        // K = 5 bins, total = 2 + 5·0.5 = 4.5: p = (2.5, .5, .5, .5, .5)/4.5,
        // q = (.5, .5, .5, .5, 2.5)/4.5: KL = (2.5 ln 5 + 0.5 ln(1/5))/4.5 = 2 ln 5 / 4.5.
        let p = [-0.5, -0.5, -0.9, -0.1];
        let q = [3.0, 0.0, 0.0, -7.0];
        let got = hist_kl(&p, &q, &grid).unwrap();
        let want = 2.0 * 5.0f64.ln() / 4.5;
        assert!((got - want).abs() < 1e-15, "{got} vs {want}");
        assert_eq!(grid.bin(1.0, 1.0), 3);
        assert_eq!(grid.bin(1.0001, 0.0), 4);
        assert!(hist_kl(
            &p,
            &q,
            &HistGrid {
                pseudo: 0.0,
                ..grid
            }
        )
        .is_err());
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(sliced_w2(&[1.0, f64::NAN], &[0.0, 0.0], 2, 4, 0).is_err());
        assert!(sliced_w2(&[1.0, 2.0, 3.0], &[0.0, 0.0], 2, 4, 0).is_err());
        assert!(mmd2_biased(&[], &[0.0], 1, 1.0).is_err());
    }
}

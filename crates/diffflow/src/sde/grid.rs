//! Time grids `0 < t_0 < t_1 < … < t_N = T`, uniform in `t^β` (the official reading of the
//! paper's `(i/N)^β T`).

use crate::rng::Rng;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Fixed grid (`L_β`) or a fresh random grid per batch (`L̂_β`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GridKind {
    /// `t_i = (t_min^β + (i/N)(T^β − t_min^β))^{1/β}`.
    #[default]
    Fixed,
    /// Endpoints fixed; inner point `i` uniform (in `t^β`) in cell `i−1` of the `N−1`-cell
    /// grid between the endpoints, drawn afresh for every batch.
    Flexible,
}

impl std::str::FromStr for GridKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fixed" => Ok(GridKind::Fixed),
            "flexible" => Ok(GridKind::Flexible),
            _ => Err(Error::config(format!(
                "unknown grid '{s}' (expected fixed or flexible)"
            ))),
        }
    }
}

/// The time interval and the exponent of the grid.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridSpec {
    /// First time point `t_0 > 0`.
    pub t_min: f64,
    /// Last time point `T`.
    pub t_max: f64,
    /// Exponent β (> 0; 0.9 in the paper).
    pub beta: f64,
}

impl Default for GridSpec {
    fn default() -> Self {
        GridSpec {
            t_min: 0.001,
            t_max: 0.05,
            beta: 0.9,
        }
    }
}

impl GridSpec {
    /// Checks `0 ≤ t_min < t_max` and `β > 0`, all finite.
    pub fn validate(&self) -> Result<()> {
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(Error::config(format!(
                "beta must be > 0, got {}",
                self.beta
            )));
        }
        if !(self.t_min.is_finite() && self.t_max.is_finite())
            || self.t_min < 0.0
            || self.t_min >= self.t_max
        {
            return Err(Error::config(format!(
                "need 0 <= t_min < t_max, got t_min = {}, t_max = {}",
                self.t_min, self.t_max
            )));
        }
        Ok(())
    }

    fn warp(&self) -> (f64, f64) {
        (self.t_min.powf(self.beta), self.t_max.powf(self.beta))
    }
}

/// The fixed grid: `N + 1` points.
pub fn fixed_grid(spec: &GridSpec, n: usize) -> Vec<f64> {
    let (a, b) = spec.warp();
    let inv = 1.0 / spec.beta;
    let mut t: Vec<f64> = (0..=n)
        .map(|i| (a + (b - a) * i as f64 / n as f64).powf(inv))
        .collect();
    // Endpoints exactly as given (the power can be off by an ulp).
    t[0] = spec.t_min;
    t[n] = spec.t_max;
    t
}

/// A flexible grid: `N + 1` points with random inner points (one uniform draw each).
pub fn flexible_grid(spec: &GridSpec, n: usize, rng: &mut Rng) -> Vec<f64> {
    if n < 2 {
        return fixed_grid(spec, n);
    }
    let (a, b) = spec.warp();
    let inv = 1.0 / spec.beta;
    let cell = (b - a) / (n - 1) as f64;
    let mut t = Vec::with_capacity(n + 1);
    t.push(spec.t_min);
    for i in 1..n {
        let lo = a + cell * (i - 1) as f64;
        t.push((lo + rng.uniform() * cell).powf(inv));
    }
    t.push(spec.t_max);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_grid_closed_form() {
        let spec = GridSpec::default();
        let t = fixed_grid(&spec, 4);
        assert_eq!(t.len(), 5);
        for (i, &ti) in t.iter().enumerate() {
            let a: f64 = 0.001f64.powf(0.9);
            let b: f64 = 0.05f64.powf(0.9);
            let want = (a + (b - a) * i as f64 / 4.0).powf(1.0 / 0.9);
            assert!((ti - want).abs() < 1e-15, "{i}: {ti} vs {want}");
        }
        // β < 1: steps grow toward T.
        let dt: Vec<f64> = t.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(dt.windows(2).all(|w| w[1] > w[0]));
    }

    #[test]
    fn beta_one_is_uniform() {
        let spec = GridSpec {
            t_min: 0.0,
            t_max: 1.0,
            beta: 1.0,
        };
        let t = fixed_grid(&spec, 4);
        assert_eq!(t, vec![0.0, 0.25, 0.5, 0.75, 1.0]);
    }

    #[test]
    fn flexible_grid_points_lie_in_their_cells() {
        let spec = GridSpec::default();
        let mut rng = Rng::new(0);
        let n = 6;
        let (a, b) = (spec.t_min.powf(0.9), spec.t_max.powf(0.9));
        let cell = (b - a) / (n - 1) as f64;
        for _ in 0..50 {
            let t = flexible_grid(&spec, n, &mut rng);
            assert_eq!(t.len(), n + 1);
            assert_eq!(t[0], spec.t_min);
            assert_eq!(t[n], spec.t_max);
            for (i, ti) in t.iter().enumerate().take(n).skip(1) {
                let u = ti.powf(0.9);
                assert!(u >= a + cell * (i - 1) as f64 - 1e-15);
                assert!(u <= a + cell * i as f64 + 1e-15);
            }
            assert!(t.windows(2).all(|w| w[1] >= w[0]));
        }
    }

    #[test]
    fn validation() {
        assert!(GridSpec {
            beta: 0.0,
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(GridSpec {
            beta: -1.0,
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(GridSpec {
            t_min: 0.1,
            t_max: 0.05,
            beta: 0.9
        }
        .validate()
        .is_err());
        assert!(GridSpec::default().validate().is_ok());
    }
}

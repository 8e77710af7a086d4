//! Diffusion coefficient `g(t)` and the progressive schedule of the number of steps `N`.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// The diffusion coefficient `g(t)` of the forward SDE (8).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Diffusion {
    /// `g(t) = value`.
    Constant { value: f64 },
    /// `g(t)` linear in `t` from `start` at `t = 0` to `end` at `t = t_end` (monotone).
    Linear { start: f64, end: f64, t_end: f64 },
    /// The variance-preserving SDE of DDPM (Song et al. 2021): `g(t) = sqrt(β(t))` with
    /// `β(t) = beta_min + t (beta_max − beta_min)` (its drift `−β(t) x / 2` is
    /// [`crate::baselines::ddpm::VpDrift`]).
    Vp { beta_min: f64, beta_max: f64 },
}

impl Default for Diffusion {
    fn default() -> Self {
        Diffusion::Constant { value: 0.2 }
    }
}

/// The form [`Diffusion::parse`] reads (a linear `g` with its end time `t_end`).
impl std::fmt::Display for Diffusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Diffusion::Constant { value } => write!(f, "{value}"),
            Diffusion::Linear { start, end, t_end } => {
                write!(f, "linear:{start}:{end} (at t = {t_end})")
            }
            Diffusion::Vp { beta_min, beta_max } => write!(f, "vp:{beta_min}:{beta_max}"),
        }
    }
}

impl Diffusion {
    /// `g(t)`.
    pub fn at(&self, t: f64) -> f64 {
        match *self {
            Diffusion::Constant { value } => value,
            Diffusion::Linear { start, end, t_end } => start + (end - start) * (t / t_end),
            Diffusion::Vp { beta_min, beta_max } => (beta_min + t * (beta_max - beta_min)).sqrt(),
        }
    }

    /// The standard VP schedule of Song et al.: `β(t) = 0.1 + 19.9 t` on `[ε, 1]`.
    pub fn vp_default() -> Self {
        Diffusion::Vp {
            beta_min: 0.1,
            beta_max: 20.0,
        }
    }

    /// `g` at every grid point.
    pub fn on_grid(&self, t: &[f64]) -> Vec<f64> {
        t.iter().map(|&ti| self.at(ti)).collect()
    }

    /// Checks that `g > 0` on `[0, t_max]`.
    pub fn validate(&self, t_max: f64) -> Result<()> {
        let ok = |g: f64| g.is_finite() && g > 0.0;
        let valid = match *self {
            Diffusion::Constant { value } => ok(value),
            Diffusion::Linear { start, end, t_end } => {
                ok(start) && ok(self.at(t_max)) && ok(end) && t_end.is_finite() && t_end > 0.0
            }
            Diffusion::Vp { beta_min, beta_max } => {
                ok(beta_min) && ok(beta_max) && ok(self.at(t_max))
            }
        };
        if valid {
            Ok(())
        } else {
            Err(Error::config(format!(
                "diffusion g must be finite and > 0 on [0, T], got g = {self}"
            )))
        }
    }

    /// Parses `0.2` (constant), `linear:0.1:1.0` (from 0.1 at t = 0 to 1.0 at t = T), `vp`
    /// (the VP SDE with β from 0.1 to 20) or `vp:BETA_MIN:BETA_MAX`.
    pub fn parse(s: &str, t_max: f64) -> Result<Self> {
        let num = |v: &str| {
            v.trim()
                .parse::<f64>()
                .map_err(|_| Error::config(format!("bad number '{v}' in diffusion '{s}'")))
        };
        let g = if s == "vp" {
            Diffusion::vp_default()
        } else if let Some(rest) = s.strip_prefix("vp:") {
            let parts: Vec<&str> = rest.split(':').collect();
            if parts.len() != 2 {
                return Err(Error::config(format!(
                    "diffusion '{s}': expected vp:BETA_MIN:BETA_MAX"
                )));
            }
            Diffusion::Vp {
                beta_min: num(parts[0])?,
                beta_max: num(parts[1])?,
            }
        } else if let Some(rest) = s.strip_prefix("linear:") {
            let parts: Vec<&str> = rest.split(':').collect();
            if parts.len() != 2 {
                return Err(Error::config(format!(
                    "diffusion '{s}': expected linear:START:END"
                )));
            }
            Diffusion::Linear {
                start: num(parts[0])?,
                end: num(parts[1])?,
                t_end: t_max,
            }
        } else {
            Diffusion::Constant { value: num(s)? }
        };
        g.validate(t_max)?;
        Ok(g)
    }
}

/// Number of steps `N` as a function of the training iteration (progressive training).
///
/// Stored as `(first iteration, N)` pairs in increasing order of iteration; the first pair
/// starts at iteration 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StepsSchedule {
    stages: Vec<(usize, usize)>,
}

impl StepsSchedule {
    /// A constant `N`.
    pub fn constant(n: usize) -> Self {
        StepsSchedule {
            stages: vec![(0, n)],
        }
    }

    /// `N` at iteration `iter` (0-based).
    pub fn at(&self, iter: usize) -> usize {
        self.stages
            .iter()
            .rev()
            .find(|(start, _)| *start <= iter)
            .map(|s| s.1)
            .unwrap_or(self.stages[0].1)
    }

    /// The largest `N` of the schedule (the one used for sampling by default).
    pub fn max(&self) -> usize {
        self.stages.iter().map(|s| s.1).max().unwrap_or(1)
    }

    /// The last `N` of the schedule.
    pub fn last(&self) -> usize {
        self.stages.last().map(|s| s.1).unwrap_or(1)
    }

    /// The stages `(first iteration, N)`.
    pub fn stages(&self) -> &[(usize, usize)] {
        &self.stages
    }

    /// Parses `30` (constant) or `5,10@500,20@1000` (N = 5 from iteration 0, 10 from 500, …).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::config(format!("steps '{s}': {why}"));
        let mut stages = Vec::new();
        for (k, part) in s.split(',').enumerate() {
            let part = part.trim();
            let (n, start) = match part.split_once('@') {
                Some((n, at)) => (
                    n.trim(),
                    at.trim()
                        .parse::<usize>()
                        .map_err(|_| bad("expected N@ITERATION with integers"))?,
                ),
                None if k == 0 => (part, 0),
                None => return Err(bad("every stage after the first needs @ITERATION")),
            };
            let n: usize = n.parse().map_err(|_| bad("N must be a positive integer"))?;
            if n == 0 {
                return Err(bad("N must be at least 1"));
            }
            stages.push((start, n));
        }
        if stages.is_empty() || stages[0].0 != 0 {
            return Err(bad("the first stage must start at iteration 0"));
        }
        if stages.windows(2).any(|w| w[1].0 <= w[0].0) {
            return Err(bad("stage iterations must increase"));
        }
        Ok(StepsSchedule { stages })
    }
}

impl std::fmt::Display for StepsSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (k, (start, n)) in self.stages.iter().enumerate() {
            if k == 0 {
                write!(f, "{n}")?;
            } else {
                write!(f, ",{n}@{start}")?;
            }
        }
        Ok(())
    }
}

impl TryFrom<String> for StepsSchedule {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        StepsSchedule::parse(&s)
    }
}

impl From<StepsSchedule> for String {
    fn from(s: StepsSchedule) -> String {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progressive_schedule() {
        let s = StepsSchedule::parse("5, 10@500,30@2000").unwrap();
        assert_eq!(s.at(0), 5);
        assert_eq!(s.at(499), 5);
        assert_eq!(s.at(500), 10);
        assert_eq!(s.at(1999), 10);
        assert_eq!(s.at(5000), 30);
        assert_eq!(s.max(), 30);
        assert_eq!(s.to_string(), "5,10@500,30@2000");
        assert_eq!(StepsSchedule::parse(&s.to_string()).unwrap(), s);
        assert_eq!(StepsSchedule::parse("30").unwrap().at(100), 30);
    }

    #[test]
    fn bad_schedules() {
        for bad in [
            "0",
            "",
            "x",
            "5,10",
            "5,10@0",
            "5,10@500,20@400",
            "-3",
            "5,0@10",
        ] {
            assert!(StepsSchedule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn diffusion_schedules() {
        let g = Diffusion::parse("0.2", 0.05).unwrap();
        assert_eq!(g.at(0.01), 0.2);
        let l = Diffusion::parse("linear:0.1:1.0", 0.05).unwrap();
        assert!((l.at(0.0) - 0.1).abs() < 1e-15);
        assert!((l.at(0.05) - 1.0).abs() < 1e-15);
        assert!((l.at(0.025) - 0.55).abs() < 1e-15);
        let vp = Diffusion::parse("vp", 1.0).unwrap();
        assert_eq!(vp, Diffusion::vp_default());
        assert!((vp.at(0.5) - (0.1f64 + 0.5 * 19.9).sqrt()).abs() < 1e-15);
        assert_eq!(
            Diffusion::parse("vp:0.2:10", 1.0).unwrap(),
            Diffusion::Vp {
                beta_min: 0.2,
                beta_max: 10.0
            }
        );
        for bad in [
            "0",
            "-1",
            "nan",
            "linear:0.1",
            "linear:-1:1",
            "abc",
            "vp:1",
            "vp:0:20",
            "vp:0.1:-2",
        ] {
            assert!(Diffusion::parse(bad, 0.05).is_err(), "{bad}");
        }
    }
}

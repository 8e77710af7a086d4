//! Explicit Runge–Kutta solvers for `dy/dt = F(t, y)` on a flat state `y ∈ R^n`: fixed-step
//! Euler and RK4, adaptive Dormand–Prince 5(4). The methods are Butcher tableaus (data); one
//! stepping routine runs them all.
//!
//! The adaptive error norm is the largest, over blocks of `block` consecutive entries (one
//! block per sample when the state is laid out row by row), of the RMS of
//! `err_j / (atol + rtol · max(|y_j|, |y_new_j|))`; a step is accepted when it is ≤ 1. With
//! `block = n` it is the usual RMS norm.

use crate::{Error, Result};

/// An explicit Runge–Kutta method as its Butcher tableau.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tableau {
    /// Name, for messages.
    pub name: &'static str,
    /// Order of the propagated solution.
    pub order: u32,
    /// Nodes `c_i` (stage times `t + c_i h`).
    pub c: &'static [f64],
    /// Lower-triangular coefficients: `a[i]` has `i` entries (stage `i` uses stages `0..i`).
    pub a: &'static [&'static [f64]],
    /// Weights `b_i` of the propagated solution.
    pub b: &'static [f64],
    /// Error weights `b_i − b̂_i` of the embedded solution (empty: no error estimate).
    pub e: &'static [f64],
    /// First stage of the next step = last stage of this one ("first same as last").
    pub fsal: bool,
}

impl Tableau {
    /// Number of stages.
    pub fn stages(&self) -> usize {
        self.c.len()
    }

    /// Stages a fixed step needs: up to the last one with a nonzero weight.
    fn used_stages(&self) -> usize {
        self.b.iter().rposition(|&b| b != 0.0).map_or(0, |i| i + 1)
    }
}

/// Forward Euler (order 1).
pub const EULER: Tableau = Tableau {
    name: "euler",
    order: 1,
    c: &[0.0],
    a: &[&[]],
    b: &[1.0],
    e: &[],
    fsal: false,
};

/// The classical Runge–Kutta method (order 4).
pub const RK4: Tableau = Tableau {
    name: "rk4",
    order: 4,
    c: &[0.0, 0.5, 0.5, 1.0],
    a: &[&[], &[0.5], &[0.0, 0.5], &[0.0, 0.0, 1.0]],
    b: &[1.0 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0],
    e: &[],
    fsal: false,
};

/// Dormand–Prince 5(4) (Dormand & Prince 1980; Hairer, Nørsett & Wanner, Table II.5.2):
/// order 5 propagated, order 4 embedded, seven stages with FSAL.
pub const DOPRI5: Tableau = Tableau {
    name: "dopri5",
    order: 5,
    c: &[0.0, 1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0, 1.0],
    a: &[
        &[],
        &[1.0 / 5.0],
        &[3.0 / 40.0, 9.0 / 40.0],
        &[44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0],
        &[
            19372.0 / 6561.0,
            -25360.0 / 2187.0,
            64448.0 / 6561.0,
            -212.0 / 729.0,
        ],
        &[
            9017.0 / 3168.0,
            -355.0 / 33.0,
            46732.0 / 5247.0,
            49.0 / 176.0,
            -5103.0 / 18656.0,
        ],
        &[
            35.0 / 384.0,
            0.0,
            500.0 / 1113.0,
            125.0 / 192.0,
            -2187.0 / 6784.0,
            11.0 / 84.0,
        ],
    ],
    b: &[
        35.0 / 384.0,
        0.0,
        500.0 / 1113.0,
        125.0 / 192.0,
        -2187.0 / 6784.0,
        11.0 / 84.0,
        0.0,
    ],
    e: &[
        71.0 / 57600.0,
        0.0,
        -71.0 / 16695.0,
        71.0 / 1920.0,
        -17253.0 / 339200.0,
        22.0 / 525.0,
        -1.0 / 40.0,
    ],
    fsal: true,
};

/// The solvers offered: a closed set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Method {
    /// Fixed-step forward Euler.
    Euler,
    /// Fixed-step classical RK4.
    Rk4,
    /// Adaptive Dormand–Prince 5(4).
    #[default]
    Dopri5,
}

impl Method {
    /// The method's tableau.
    pub fn tableau(self) -> &'static Tableau {
        match self {
            Method::Euler => &EULER,
            Method::Rk4 => &RK4,
            Method::Dopri5 => &DOPRI5,
        }
    }

    /// Whether the method chooses its own steps.
    pub fn is_adaptive(self) -> bool {
        !self.tableau().e.is_empty()
    }

    /// Its name (`euler`, `rk4`, `dopri5`).
    pub fn name(self) -> &'static str {
        self.tableau().name
    }
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "euler" => Ok(Method::Euler),
            "rk4" => Ok(Method::Rk4),
            "dopri5" => Ok(Method::Dopri5),
            _ => Err(Error::config(format!(
                "unknown ODE solver '{s}' (expected euler, rk4 or dopri5)"
            ))),
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Step-size control of the adaptive solver.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerances {
    /// Relative tolerance.
    pub rtol: f64,
    /// Absolute tolerance.
    pub atol: f64,
    /// Smallest step allowed (absolute time); a step rejected at this size is an error.
    pub h_min: f64,
    /// First step (absolute); chosen automatically (Hairer's rule) when `None`.
    pub h_init: Option<f64>,
    /// Most steps (accepted + rejected) before giving up.
    pub max_steps: usize,
}

impl Default for Tolerances {
    fn default() -> Self {
        Tolerances {
            rtol: 1e-5,
            atol: 1e-5,
            h_min: 0.0,
            h_init: None,
            max_steps: 10_000,
        }
    }
}

impl Tolerances {
    /// Checks that tolerances are positive and finite.
    pub fn validate(&self) -> Result<()> {
        let ok = |v: f64| v.is_finite() && v > 0.0;
        if !ok(self.rtol) || !ok(self.atol) {
            return Err(Error::config(format!(
                "ODE tolerances must be > 0, got rtol = {}, atol = {}",
                self.rtol, self.atol
            )));
        }
        if !(self.h_min.is_finite() && self.h_min >= 0.0) || self.h_init.is_some_and(|h| !ok(h)) {
            return Err(Error::config(format!(
                "ODE step sizes must be finite and positive, got h_min = {}, h_init = {:?}",
                self.h_min, self.h_init
            )));
        }
        if self.max_steps == 0 {
            return Err(Error::config("ODE max_steps must be >= 1"));
        }
        Ok(())
    }
}

/// What a solve cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Number of evaluations of `F`.
    pub nfe: usize,
    /// Accepted steps.
    pub accepted: usize,
    /// Rejected steps.
    pub rejected: usize,
}

/// Integrates along the given time points (increasing or decreasing), one step of `tab` per
/// interval, updating `y` in place. Shapes: `y` `[n]`; `rhs(t, y, dy)` writes `F(t, y)` to `dy`.
pub fn integrate_fixed<F>(tab: &Tableau, rhs: &mut F, y: &mut [f64], ts: &[f64]) -> Result<Stats>
where
    F: FnMut(f64, &[f64], &mut [f64]) -> Result<()>,
{
    let stages = tab.used_stages();
    let mut k = vec![vec![0.0; y.len()]; stages];
    let mut tmp = vec![0.0; y.len()];
    let mut stats = Stats::default();
    for w in ts.windows(2) {
        let (t, h) = (w[0], w[1] - w[0]);
        for i in 0..stages {
            stage_input(tab, i, y, h, &k, &mut tmp);
            rhs(t + tab.c[i] * h, &tmp, &mut k[i])?;
            stats.nfe += 1;
        }
        for (j, yj) in y.iter_mut().enumerate() {
            let mut s = 0.0;
            for (bi, ki) in tab.b.iter().zip(&k) {
                s += bi * ki[j];
            }
            *yj += h * s;
        }
        stats.accepted += 1;
        check_finite(y, w[1], tab)?;
    }
    Ok(stats)
}

/// `tmp = y + h Σ_{j<i} a[i][j] k_j`.
fn stage_input(tab: &Tableau, i: usize, y: &[f64], h: f64, k: &[Vec<f64>], tmp: &mut [f64]) {
    tmp.copy_from_slice(y);
    for (aij, kj) in tab.a[i].iter().zip(k) {
        if *aij != 0.0 {
            let c = h * aij;
            for (t, v) in tmp.iter_mut().zip(kj) {
                *t += c * v;
            }
        }
    }
}

fn check_finite(y: &[f64], t: f64, tab: &Tableau) -> Result<()> {
    if y.iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(Error::Ode(format!(
            "{}: the state became non-finite at t = {t}",
            tab.name
        )))
    }
}

/// The error norm of the module docs: max over blocks of the scaled RMS.
fn error_norm(err: &[f64], y: &[f64], y_new: &[f64], tol: &Tolerances, block: usize) -> f64 {
    let block = block.clamp(1, err.len().max(1));
    let mut worst: f64 = 0.0;
    for ((e, a), b) in err
        .chunks(block)
        .zip(y.chunks(block))
        .zip(y_new.chunks(block))
    {
        let mut s = 0.0;
        for ((ej, aj), bj) in e.iter().zip(a).zip(b) {
            let sc = tol.atol + tol.rtol * aj.abs().max(bj.abs());
            let r = ej / sc;
            s += r * r;
        }
        let rms = (s / e.len() as f64).sqrt();
        if rms.is_nan() {
            return f64::INFINITY;
        }
        worst = worst.max(rms);
    }
    worst
}

/// Integrates from `t0` to `t1` (either direction) with the adaptive method `tab`, updating
/// `y` in place. `block` groups the state for the error norm (see the module docs).
/// Errors: no error estimate in `tab`, a rejected step at `h_min`, a step too small to change
/// `t`, more than `max_steps` steps, or a non-finite state.
pub fn integrate_adaptive<F>(
    tab: &Tableau,
    rhs: &mut F,
    y: &mut [f64],
    t0: f64,
    t1: f64,
    tol: &Tolerances,
    block: usize,
) -> Result<Stats>
where
    F: FnMut(f64, &[f64], &mut [f64]) -> Result<()>,
{
    tol.validate()?;
    if tab.e.len() != tab.stages() {
        return Err(Error::config(format!(
            "{} has no error estimate: it cannot choose its steps",
            tab.name
        )));
    }
    let mut stats = Stats::default();
    if t0 == t1 || y.is_empty() {
        return Ok(stats);
    }
    let n = y.len();
    let s = tab.stages();
    let dir = (t1 - t0).signum();
    let span = (t1 - t0).abs();
    let mut k = vec![vec![0.0; n]; s];
    let mut tmp = vec![0.0; n];
    let mut y_new = vec![0.0; n];
    let mut err = vec![0.0; n];
    rhs(t0, y, &mut k[0])?;
    stats.nfe += 1;
    let mut h = match tol.h_init {
        Some(h) => h.min(span),
        None => {
            let (h, extra) = initial_step(tab, rhs, y, &k[0], t0, dir, span, tol, block)?;
            stats.nfe += extra;
            h
        }
    };
    // Exponent of the step-size controller: 1 / (min(p, p̂) + 1) with p̂ = p − 1.
    let expo = 1.0 / tab.order as f64;
    let mut t = t0;
    loop {
        if stats.accepted + stats.rejected >= tol.max_steps {
            return Err(Error::Ode(format!(
                "{}: more than {} steps between t = {t0} and t = {t1} (stopped at t = {t}); \
                 loosen rtol/atol or raise the step limit",
                tab.name, tol.max_steps
            )));
        }
        let remaining = (t1 - t).abs();
        let last = h >= remaining;
        if last {
            h = remaining;
        }
        let hs = dir * h;
        if t + hs == t {
            return Err(Error::Ode(format!(
                "{}: step size {h:e} too small to advance from t = {t}",
                tab.name
            )));
        }
        for i in 1..s {
            stage_input(tab, i, y, hs, &k, &mut tmp);
            rhs(t + tab.c[i] * hs, &tmp, &mut k[i])?;
            stats.nfe += 1;
        }
        for j in 0..n {
            let (mut sb, mut se) = (0.0, 0.0);
            for ((bi, ei), ki) in tab.b.iter().zip(tab.e).zip(&k) {
                sb += bi * ki[j];
                se += ei * ki[j];
            }
            y_new[j] = y[j] + hs * sb;
            err[j] = hs * se;
        }
        let e = error_norm(&err, y, &y_new, tol, block);
        if e <= 1.0 {
            stats.accepted += 1;
            t = if last { t1 } else { t + hs };
            y.copy_from_slice(&y_new);
            check_finite(y, t, tab)?;
            if last {
                return Ok(stats);
            }
            if tab.fsal {
                k.swap(0, s - 1);
            } else {
                rhs(t, y, &mut k[0])?;
                stats.nfe += 1;
            }
            let factor = if e == 0.0 {
                10.0
            } else {
                (0.9 * e.powf(-expo)).clamp(0.2, 10.0)
            };
            h *= factor;
        } else {
            stats.rejected += 1;
            if h <= tol.h_min {
                return Err(Error::Ode(format!(
                    "{}: step rejected at the minimum step size {:e} at t = {t} \
                     (error norm {e:.3e})",
                    tab.name, tol.h_min
                )));
            }
            let factor = if e.is_finite() {
                (0.9 * e.powf(-expo)).clamp(0.2, 1.0)
            } else {
                0.2
            };
            h = (h * factor).max(tol.h_min);
        }
    }
}

/// Hairer, Nørsett & Wanner's starting step (II.4): one extra evaluation of `F`.
#[allow(clippy::too_many_arguments)]
fn initial_step<F>(
    tab: &Tableau,
    rhs: &mut F,
    y0: &[f64],
    f0: &[f64],
    t0: f64,
    dir: f64,
    span: f64,
    tol: &Tolerances,
    block: usize,
) -> Result<(f64, usize)>
where
    F: FnMut(f64, &[f64], &mut [f64]) -> Result<()>,
{
    let zeros = vec![0.0; y0.len()];
    let d0 = error_norm(y0, y0, &zeros, tol, block);
    let d1 = error_norm(f0, y0, &zeros, tol, block);
    let h0 = if d0 < 1e-5 || d1 < 1e-5 {
        1e-6 * span
    } else {
        (0.01 * d0 / d1).min(span)
    };
    let y1: Vec<f64> = y0.iter().zip(f0).map(|(y, f)| y + dir * h0 * f).collect();
    let mut f1 = vec![0.0; y0.len()];
    rhs(t0 + dir * h0, &y1, &mut f1)?;
    let diff: Vec<f64> = f1.iter().zip(f0).map(|(a, b)| (a - b) / h0).collect();
    let d2 = error_norm(&diff, y0, &zeros, tol, block);
    let m = d1.max(d2);
    let h1 = if m <= 1e-15 || !m.is_finite() {
        (h0 * 1e-3).max(1e-6 * span)
    } else {
        (0.01 / m).powf(1.0 / (tab.order as f64 + 1.0))
    };
    Ok(((100.0 * h0).min(h1).min(span).max(tol.h_min), 1))
}

/// Integrates with `method`: Euler and RK4 step along `ts`; Dormand–Prince goes adaptively
/// from `ts[0]` to the last point (the points between are not used).
pub fn solve<F>(
    method: Method,
    rhs: &mut F,
    y: &mut [f64],
    ts: &[f64],
    tol: &Tolerances,
    block: usize,
) -> Result<Stats>
where
    F: FnMut(f64, &[f64], &mut [f64]) -> Result<()>,
{
    if ts.len() < 2 {
        return Err(Error::config("an ODE solve needs at least two time points"));
    }
    let tab = method.tableau();
    if method.is_adaptive() {
        integrate_adaptive(tab, rhs, y, ts[0], ts[ts.len() - 1], tol, block)
    } else {
        integrate_fixed(tab, rhs, y, ts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `y' = M y` with `M = [[−0.5, 2], [−2, −0.5]]`: `y(t) = e^{−t/2} R(−2t) y(0)`.
    fn linear(_t: f64, y: &[f64], dy: &mut [f64]) -> Result<()> {
        dy[0] = -0.5 * y[0] + 2.0 * y[1];
        dy[1] = -2.0 * y[0] - 0.5 * y[1];
        Ok(())
    }

    fn exact(t: f64, y0: [f64; 2]) -> [f64; 2] {
        let (s, c) = (2.0 * t).sin_cos();
        let d = (-0.5 * t).exp();
        [d * (c * y0[0] + s * y0[1]), d * (-s * y0[0] + c * y0[1])]
    }

    fn grid(t0: f64, t1: f64, n: usize) -> Vec<f64> {
        (0..=n)
            .map(|i| t0 + (t1 - t0) * i as f64 / n as f64)
            .collect()
    }

    fn fixed_error(tab: &Tableau, n: usize, t0: f64, t1: f64) -> f64 {
        let y0 = [1.0, 0.5];
        let mut y = y0.to_vec();
        // Start from the exact state at t0 so that backward solves check the same thing.
        let start = exact(t0, y0);
        y.copy_from_slice(&start);
        integrate_fixed(tab, &mut linear, &mut y, &grid(t0, t1, n)).unwrap();
        let want = exact(t1, y0);
        ((y[0] - want[0]).powi(2) + (y[1] - want[1]).powi(2)).sqrt()
    }

    /// Error ratio when halving the step, for step counts `n` and `2n`.
    fn ratio(tab: &Tableau, n: usize) -> f64 {
        fixed_error(tab, n, 0.0, 2.0) / fixed_error(tab, 2 * n, 0.0, 2.0)
    }

    #[test]
    fn euler_is_first_order() {
        let r = ratio(&EULER, 400);
        eprintln!("Euler error ratio (400 -> 800 steps): {r:.3}");
        assert!((r - 2.0).abs() < 0.05, "Euler error ratio {r}");
    }

    #[test]
    fn rk4_is_fourth_order_both_directions() {
        let r = ratio(&RK4, 40);
        eprintln!("RK4 error ratio (40 -> 80 steps): {r:.3}");
        assert!((r - 16.0).abs() < 0.5, "RK4 error ratio {r}");
        let back = fixed_error(&RK4, 40, 2.0, 0.0) / fixed_error(&RK4, 80, 2.0, 0.0);
        assert!((back - 16.0).abs() < 0.5, "RK4 backward ratio {back}");
    }

    #[test]
    fn dopri5_weights_are_fifth_order_and_embedded_fourth() {
        let r5 = ratio(&DOPRI5, 40);
        assert!((r5 - 32.0).abs() < 2.0, "DOPRI5 error ratio {r5}");
        // The embedded solution b̂ = b − e must be of order 4.
        let b_hat: Vec<f64> = DOPRI5.b.iter().zip(DOPRI5.e).map(|(b, e)| b - e).collect();
        let embedded = Tableau {
            name: "dopri5-embedded",
            order: 4,
            b: Box::leak(b_hat.into_boxed_slice()),
            e: &[],
            ..DOPRI5
        };
        let r4 = ratio(&embedded, 40);
        eprintln!("DOPRI5 error ratio (40 -> 80 steps): {r5:.3}, embedded 4th order: {r4:.3}");
        assert!((r4 - 16.0).abs() < 1.5, "embedded error ratio {r4}");
    }

    #[test]
    fn tableaus_are_consistent() {
        for tab in [&EULER, &RK4, &DOPRI5] {
            assert_eq!(tab.a.len(), tab.stages());
            for (i, row) in tab.a.iter().enumerate() {
                assert_eq!(row.len(), i);
                // c_i = Σ_j a_ij (row-sum condition)
                assert!(
                    (row.iter().sum::<f64>() - tab.c[i]).abs() < 1e-15,
                    "{}",
                    tab.name
                );
            }
            assert!((tab.b.iter().sum::<f64>() - 1.0).abs() < 1e-15);
        }
        assert!(DOPRI5.e.iter().sum::<f64>().abs() < 1e-15);
        // FSAL: the last row of a equals b.
        assert_eq!(DOPRI5.a[6], &DOPRI5.b[..6]);
    }

    #[test]
    fn dopri5_reaches_tolerance_and_reports_nfe() {
        let y0 = [1.0, 0.5];
        let want = exact(2.0, y0);
        let mut prev_nfe = 0;
        for tol in [1e-4, 1e-6, 1e-8, 1e-10] {
            let mut y = y0.to_vec();
            let opts = Tolerances {
                rtol: tol,
                atol: tol,
                ..Tolerances::default()
            };
            let st = solve(Method::Dopri5, &mut linear, &mut y, &[0.0, 2.0], &opts, 2).unwrap();
            let err = ((y[0] - want[0]).powi(2) + (y[1] - want[1]).powi(2)).sqrt();
            // Local error control: the global error is a small multiple of the tolerance.
            eprintln!("dopri5 tol {tol:.0e}: error {err:.2e}, NFE {}", st.nfe);
            assert!(err < 10.0 * tol, "tol {tol}: error {err}");
            assert!(
                st.nfe > prev_nfe,
                "tighter tolerance must cost more: {st:?}"
            );
            // FSAL: 6 evaluations per step, plus the first and Hairer's initial-step probe.
            assert_eq!(st.nfe, 6 * (st.accepted + st.rejected) + 2);
            prev_nfe = st.nfe;
        }
        // Backward in time.
        let mut y = want.to_vec();
        let opts = Tolerances {
            rtol: 1e-9,
            atol: 1e-9,
            ..Tolerances::default()
        };
        solve(Method::Dopri5, &mut linear, &mut y, &[2.0, 0.0], &opts, 2).unwrap();
        assert!((y[0] - y0[0]).abs() < 1e-8 && (y[1] - y0[1]).abs() < 1e-8);
    }

    #[test]
    fn blow_up_is_an_error_not_a_hang() {
        // y' = y², y(0) = 1: y = 1/(1 − t) blows up at t = 1.
        let mut rhs = |_t: f64, y: &[f64], dy: &mut [f64]| {
            dy[0] = y[0] * y[0];
            Ok(())
        };
        let mut y = vec![1.0];
        let opts = Tolerances {
            h_min: 1e-9,
            ..Tolerances::default()
        };
        let err = integrate_adaptive(&DOPRI5, &mut rhs, &mut y, 0.0, 2.0, &opts, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("dopri5"), "{err}");
        let opts = Tolerances {
            max_steps: 20,
            ..Tolerances::default()
        };
        let mut y = vec![1.0];
        let err = integrate_adaptive(&DOPRI5, &mut rhs, &mut y, 0.0, 2.0, &opts, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than 20 steps"), "{err}");
        // A right-hand side that turns NaN past t = 1.
        let mut nan = |t: f64, _y: &[f64], dy: &mut [f64]| {
            dy[0] = if t > 1.0 { f64::NAN } else { 1.0 };
            Ok(())
        };
        let mut y = vec![1.0];
        let err = integrate_fixed(&RK4, &mut nan, &mut y, &grid(0.0, 2.0, 4))
            .unwrap_err()
            .to_string();
        assert!(err.contains("non-finite"), "{err}");
        let mut y = vec![1.0];
        let err = integrate_adaptive(
            &DOPRI5,
            &mut nan,
            &mut y,
            0.0,
            2.0,
            &Tolerances::default(),
            1,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("too small") || err.contains("minimum"),
            "{err}"
        );
    }

    #[test]
    fn block_norm_is_the_worst_block() {
        let tol = Tolerances {
            rtol: 0.0,
            atol: 1.0,
            ..Tolerances::default()
        };
        let err = [3.0, 4.0, 0.0, 0.0];
        let z = [0.0; 4];
        // blocks of 2: sqrt((9 + 16)/2) and 0
        let want = (12.5f64).sqrt();
        assert!((error_norm(&err, &z, &z, &tol, 2) - want).abs() < 1e-15);
        assert!((error_norm(&err, &z, &z, &tol, 4) - (25.0f64 / 4.0).sqrt()).abs() < 1e-15);
    }
}

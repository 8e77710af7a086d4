//! Likelihood of a DiffFlow model: the negative log-likelihood by the probability-flow ODE
//! (paper 4.2), and the negative ELBO (13) averaged over several forward trajectories.
//!
//! Probability flow: `dx/dt = v(x, t) = f(x, t) − ½ g(t)² s(x, t)` (λ = 0 in (16)) carries
//! the data at `t_0` to the prior `N(0, I)` at `T`, and
//! `−log p_0(x_0) = −log N(x_T; 0, I) − ∫_{t_0}^{T} ∇·v(x_t, t) dt`. The state of one solve
//! is, per row, `x` `[d]` followed by the divergence integral(s); the nets are evaluated by
//! their graph-free engines and the divergence comes from vector-Jacobian products:
//! - exact: `∇·v = Σ_k e_kᵀ (∂v/∂x)ᵀ e_k`, `d` pullbacks of one kept evaluation per net;
//! - Hutchinson: `εᵀ (∂v/∂x)ᵀ ε` for probes `ε` (Gaussian or Rademacher) drawn once and kept
//!   for the whole solve; with several probes each has its own integral and the NLL is their
//!   mean.
//!
//! All values are nats per sample in the model's (standardised) units; callers add the
//! standardisation's log-Jacobian to get data units.
//!
//! Rows are split into pieces of `chunk` rows, each an independent solve whose random draws
//! come from its own stream (derived from one draw of the caller's generator and the piece's
//! index), so results depend on `chunk` but not on `threads`.

use crate::flow::{neg_elbo, DiffFlow, Steps};
use crate::ode::{self, Method, Stats, Tolerances};
use crate::par::par_map;
use crate::rng::Rng;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::cmp::Ordering::Greater;

/// Distribution of Hutchinson probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Probe {
    /// Standard normal entries.
    Gaussian,
    /// ±1 entries with equal probability (lower variance).
    #[default]
    Rademacher,
}

impl std::str::FromStr for Probe {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "gaussian" => Ok(Probe::Gaussian),
            "rademacher" => Ok(Probe::Rademacher),
            _ => Err(Error::config(format!(
                "unknown probe '{s}' (expected gaussian or rademacher)"
            ))),
        }
    }
}

/// How `∇·v` is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Divergence {
    /// `d` vector-Jacobian products per net and evaluation.
    #[default]
    Exact,
    /// Hutchinson's estimator with `probes` probes, fixed for the whole solve.
    Hutchinson { probes: usize, probe: Probe },
}

/// Options of [`pf_ode_nll`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NllOptions {
    /// Exact or Hutchinson divergence.
    pub divergence: Divergence,
    /// ODE solver.
    pub method: Method,
    /// Tolerances of the adaptive solver.
    pub tol: Tolerances,
    /// Rows per solve.
    pub chunk: usize,
    /// Solves run at once.
    pub threads: usize,
}

impl Default for NllOptions {
    fn default() -> Self {
        NllOptions {
            divergence: Divergence::Exact,
            method: Method::Dopri5,
            tol: Tolerances::default(),
            chunk: 256,
            threads: 1,
        }
    }
}

/// Result of [`pf_ode_nll`].
#[derive(Clone, Debug, PartialEq)]
pub struct Nll {
    /// Per-sample NLL, nats (mean over probes). Shapes: `[n]`.
    pub nll: Vec<f64>,
    /// Per-sample, per-probe NLL (exact: one column). Shapes: [n, probes].
    pub per_probe: Vec<f64>,
    /// Number of columns of `per_probe`.
    pub probes: usize,
    /// The latent points `x_T`. Shapes: [n, d].
    pub z: Vec<f64>,
    /// Solver costs of each solve (piece of rows), in order.
    pub stats: Vec<Stats>,
}

impl Nll {
    /// Mean number of velocity evaluations per solve.
    pub fn mean_nfe(&self) -> f64 {
        if self.stats.is_empty() {
            return 0.0;
        }
        self.stats.iter().map(|s| s.nfe as f64).sum::<f64>() / self.stats.len() as f64
    }
}

/// Mean and standard error of per-sample values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// Mean.
    pub mean: f64,
    /// Standard error of the mean: sample standard deviation (n − 1) / √n (0 for n < 2).
    pub stderr: f64,
    /// Number of values.
    pub n: usize,
}

/// Mean and standard error of `values`.
pub fn summarize(values: &[f64]) -> Summary {
    let n = values.len();
    if n == 0 {
        return Summary {
            mean: f64::NAN,
            stderr: f64::NAN,
            n,
        };
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let stderr = if n < 2 {
        0.0
    } else {
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        (var / n as f64).sqrt()
    };
    Summary { mean, stderr, n }
}

/// Nats per sample → bits per dimension: `/(d ln 2)`.
pub fn bits_per_dim(nats: f64, d: usize) -> f64 {
    nats / (d as f64 * std::f64::consts::LN_2)
}

/// Checks `x` [n, d]: a whole number of finite rows, n ≥ 1.
fn check_points(x: &[f64], d: usize) -> Result<usize> {
    if d == 0 || x.is_empty() || x.len() % d != 0 {
        return Err(Error::data(format!(
            "need a non-empty [n, {d}] array of points, got {} values",
            x.len()
        )));
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(Error::data(format!(
            "non-finite value {} at row {}, column {}",
            x[i],
            i / d,
            i % d
        )));
    }
    Ok(x.len() / d)
}

fn to_f64(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

/// Negative log-likelihood of the points `x` [n, d] (standardised units) by the
/// probability-flow ODE from `t[0]` to the last point of `t` (increasing; Euler and RK4 step
/// along it, Dormand–Prince uses only its ends). `progress` is called with the number of
/// rows finished after each solve.
pub fn pf_ode_nll(
    flow: &DiffFlow,
    x: &[f64],
    t: &[f64],
    opts: &NllOptions,
    rng: &mut Rng,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Nll> {
    let d = flow.dim();
    let n = check_points(x, d)?;
    if t.len() < 2
        || t.windows(2)
            .any(|w| w[1].partial_cmp(&w[0]) != Some(Greater))
    {
        return Err(Error::config("the likelihood needs increasing time points"));
    }
    opts.tol.validate()?;
    let probes = match opts.divergence {
        Divergence::Exact => 1,
        Divergence::Hutchinson { probes, .. } => {
            if probes == 0 {
                return Err(Error::config("Hutchinson needs at least one probe"));
            }
            probes
        }
    };
    let chunk = opts.chunk.max(1);
    let pieces = n.div_ceil(chunk);
    let base = rng.next_u64();
    let work = |c: usize| -> Result<(Vec<f64>, Vec<f64>, Stats)> {
        let (lo, hi) = (c * chunk, ((c + 1) * chunk).min(n));
        let mut rng = Rng::substream(base, c as u64);
        let r = nll_piece(flow, &x[lo * d..hi * d], t, opts, probes, &mut rng)?;
        progress(hi - lo);
        Ok(r)
    };
    let parts = par_map(pieces, opts.threads, &work)?;
    let mut out = Nll {
        nll: Vec::with_capacity(n),
        per_probe: Vec::with_capacity(n * probes),
        probes,
        z: Vec::with_capacity(n * d),
        stats: Vec::with_capacity(pieces),
    };
    for (per_probe, z, stats) in parts {
        for row in per_probe.chunks_exact(probes) {
            out.nll.push(row.iter().sum::<f64>() / probes as f64);
        }
        out.per_probe.extend(per_probe);
        out.z.extend(z);
        out.stats.push(stats);
    }
    Ok(out)
}

/// One solve over `x` [b, d]: per-probe NLL [b, probes], latents [b, d], costs.
fn nll_piece(
    flow: &DiffFlow,
    x: &[f64],
    t: &[f64],
    opts: &NllOptions,
    probes: usize,
    rng: &mut Rng,
) -> Result<(Vec<f64>, Vec<f64>, Stats)> {
    let d = flow.dim();
    let b = x.len() / d;
    let dtype = flow.dtype();
    let dev = Device::Cpu;
    // Cotangent groups: the divergence estimate of group k is Σ_{ε in group} εᵀ (∂v/∂x)ᵀ ε.
    let groups: Vec<Vec<(Tensor, Vec<f64>)>> = match opts.divergence {
        Divergence::Exact => vec![(0..d)
            .map(|k| {
                let e: Vec<f64> = (0..b * d)
                    .map(|i| if i % d == k { 1.0 } else { 0.0 })
                    .collect();
                Ok((Tensor::from_slice(&e, (b, d), &dev)?.to_dtype(dtype)?, e))
            })
            .collect::<Result<_>>()?],
        Divergence::Hutchinson { probe, .. } => (0..probes)
            .map(|_| {
                let e: Vec<f64> = match probe {
                    Probe::Gaussian => rng.normals(b * d),
                    Probe::Rademacher => (0..b * d)
                        .map(|_| if rng.uniform() < 0.5 { -1.0 } else { 1.0 })
                        .collect(),
                };
                Ok(vec![(
                    Tensor::from_slice(&e, (b, d), &dev)?.to_dtype(dtype)?,
                    e,
                )])
            })
            .collect::<Result<_>>()?,
    };
    let w = d + probes;
    let mut y = vec![0.0; b * w];
    for (row, xr) in y.chunks_exact_mut(w).zip(x.chunks_exact(d)) {
        row[..d].copy_from_slice(xr);
    }
    let mut fe = flow.drift.engine()?;
    let mut se = flow.score.engine()?;
    let mut xbuf = vec![0.0; b * d];
    let mut rhs = |t: f64, y: &[f64], dy: &mut [f64]| -> Result<()> {
        for (xr, row) in xbuf.chunks_exact_mut(d).zip(y.chunks_exact(w)) {
            xr.copy_from_slice(&row[..d]);
        }
        let xt = Tensor::from_slice(&xbuf, (b, d), &dev)?.to_dtype(dtype)?;
        let f = fe.eval_keep(&xt, t)?;
        let s = se.eval_keep(&xt, t)?;
        let c = 0.5 * flow.diffusion.at(t).powi(2);
        let v = to_f64(&(f - s.affine(c, 0.0)?)?)?;
        for (row, vr) in dy.chunks_exact_mut(w).zip(v.chunks_exact(d)) {
            row[..d].copy_from_slice(vr);
            row[d..].fill(0.0);
        }
        for (k, group) in groups.iter().enumerate() {
            for (cot, e) in group {
                let jf = to_f64(&fe.pullback(cot, false)?)?;
                let js = to_f64(&se.pullback(cot, false)?)?;
                for (r, row) in dy.chunks_exact_mut(w).enumerate() {
                    let mut acc = 0.0;
                    for j in r * d..(r + 1) * d {
                        if e[j] != 0.0 {
                            acc += e[j] * (jf[j] - c * js[j]);
                        }
                    }
                    row[d + k] += acc;
                }
            }
        }
        Ok(())
    };
    let stats = ode::solve(opts.method, &mut rhs, &mut y, t, &opts.tol, w)?;
    let mut z = Vec::with_capacity(b * d);
    let mut per_probe = Vec::with_capacity(b * probes);
    for row in y.chunks_exact(w) {
        let zr = &row[..d];
        let prior: f64 =
            0.5 * zr.iter().map(|v| v * v).sum::<f64>() + d as f64 * crate::flow::HALF_LN_2PI;
        per_probe.extend(row[d..].iter().map(|l| prior - l));
        z.extend_from_slice(zr);
    }
    Ok((per_probe, z, stats))
}

/// Options of [`neg_elbo_mc`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElboOptions {
    /// Forward trajectories per point.
    pub trajectories: usize,
    /// Points per piece (each piece holds `chunk × trajectories` rows).
    pub chunk: usize,
    /// Pieces run at once.
    pub threads: usize,
}

impl Default for ElboOptions {
    fn default() -> Self {
        ElboOptions {
            trajectories: 10,
            chunk: 256,
            threads: 1,
        }
    }
}

/// The negative ELBO (13) of each point of `x` [n, d] (standardised units) on the grid
/// `steps`, averaged over `trajectories` forward trajectories with fresh noise: `[n]`, nats.
/// Unbiased for the expected negative ELBO, an upper bound on `−log p_B(x)` of the discrete
/// backward model. `progress` is called with the number of points finished after each piece.
pub fn neg_elbo_mc(
    flow: &DiffFlow,
    x: &[f64],
    steps: &Steps,
    opts: &ElboOptions,
    rng: &mut Rng,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Vec<f64>> {
    let d = flow.dim();
    let n = check_points(x, d)?;
    let k = opts.trajectories;
    if k == 0 {
        return Err(Error::config(
            "the ELBO needs at least one trajectory per point",
        ));
    }
    let chunk = opts.chunk.max(1);
    let pieces = n.div_ceil(chunk);
    let base = rng.next_u64();
    let dtype = flow.dtype();
    let work = |c: usize| -> Result<Vec<f64>> {
        let (lo, hi) = (c * chunk, ((c + 1) * chunk).min(n));
        let b = hi - lo;
        let mut rng = Rng::substream(base, c as u64);
        // Row p·K + j: point p, trajectory j.
        let mut rep = Vec::with_capacity(b * k * d);
        for row in x[lo * d..hi * d].chunks_exact(d) {
            for _ in 0..k {
                rep.extend_from_slice(row);
            }
        }
        let x0 = Tensor::from_vec(rep, (b * k, d), &Device::Cpu)?.to_dtype(dtype)?;
        let noise = Tensor::from_vec(
            rng.normals(steps.n() * b * k * d),
            (steps.n(), b * k, d),
            &Device::Cpu,
        )?
        .to_dtype(dtype)?;
        let per_traj = neg_elbo(flow, &x0, steps, &noise)?;
        progress(b);
        Ok(per_traj
            .chunks_exact(k)
            .map(|r| r.iter().sum::<f64>() / k as f64)
            .collect())
    };
    Ok(par_map(pieces, opts.threads, &work)?.concat())
}

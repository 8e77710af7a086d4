//! Sampling with the marginal-equivalent SDE (16), integrated from `t_N = T` down to `t_0`:
//! `dx = [f − ((1+λ²)/2) g² s] dt + λ g dw`. λ = 1 is the backward SDE (9), λ = 0 the
//! probability-flow ODE (Euler steps).

use crate::flow::{DiffFlow, Steps};
use crate::rng::Rng;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};

mod fused;

/// Rows sampled at once by default (one piece of [`sample_sde`]'s loop).
pub const SAMPLE_CHUNK: usize = 5000;

/// One Euler–Maruyama step of (16) from `x_{i+1}` to `x_i`:
/// `x_i = x_{i+1} − [f − ((1+λ²)/2) g_{i+1}² s] Δt_i + λ g_{i+1} √Δt_i η_i`.
/// Shapes: all [B, d]; `eta` is ignored when λ = 0.
pub fn reverse_step(
    x: &Tensor,
    f: &Tensor,
    s: &Tensor,
    eta: Option<&Tensor>,
    dt: f64,
    g: f64,
    lambda: f64,
) -> Result<Tensor> {
    let c = 0.5 * (1.0 + lambda * lambda) * g * g;
    let drift = (f - s.affine(c, 0.0)?)?;
    let mut next = (x - drift.affine(dt, 0.0)?)?;
    if lambda != 0.0 {
        let eta = eta.ok_or_else(|| Error::config("stochastic sampler needs noise"))?;
        next = (next + eta.affine(lambda * g * dt.sqrt(), 0.0)?)?;
    }
    Ok(next)
}

/// The whole reverse trajectory `x_0 … x_N` from `z` = `x_N` [B, d]; `noise` [N, B, d] with
/// `noise[i]` producing `x_i` (needed when λ ≠ 0). Returns N + 1 states, index = time index.
pub fn reverse_trajectory(
    flow: &DiffFlow,
    z: &Tensor,
    steps: &Steps,
    lambda: f64,
    noise: Option<&Tensor>,
) -> Result<Vec<Tensor>> {
    reverse_trajectory_threads(flow, z, steps, lambda, noise, 1)
}

/// Rows per piece of the reverse pass of nets other than two MLPs: the pieces are fixed, so
/// the states do not depend on the number of threads.
const GENERIC_TILE: usize = 64;

/// [`reverse_trajectory`] with `threads` workers: two MLPs run on the fused engine over row
/// tiles, other nets (the U-Net) through [`crate::nn::TimeNet::engine`] over pieces of
/// [`GENERIC_TILE`] rows; either way the result does not depend on `threads`.
pub fn reverse_trajectory_threads(
    flow: &DiffFlow,
    z: &Tensor,
    steps: &Steps,
    lambda: f64,
    noise: Option<&Tensor>,
    threads: usize,
) -> Result<Vec<Tensor>> {
    if !(0.0..=1.0).contains(&lambda) {
        return Err(Error::config(format!(
            "lambda must be in [0, 1], got {lambda}"
        )));
    }
    if let (Some(f), Some(s)) = (flow.drift.as_mlp(), flow.score.as_mlp()) {
        match (f.dtype(), s.dtype()) {
            (DType::F32, DType::F32) => {
                return fused::reverse::<f32>(f, s, z, steps, lambda, noise, threads)
            }
            (DType::F64, DType::F64) => {
                return fused::reverse::<f64>(f, s, z, steps, lambda, noise, threads)
            }
            _ => {}
        }
    }
    let b = z.dim(0)?;
    if b <= GENERIC_TILE {
        return reverse_generic(flow, z, steps, lambda, noise);
    }
    let piece = |k: usize| -> Result<Vec<Tensor>> {
        let lo = k * GENERIC_TILE;
        let len = GENERIC_TILE.min(b - lo);
        let e = match noise {
            Some(e) => Some(e.narrow(1, lo, len)?.contiguous()?),
            None => None,
        };
        reverse_generic(flow, &z.narrow(0, lo, len)?, steps, lambda, e.as_ref())
    };
    let pieces = crate::par::par_map(b.div_ceil(GENERIC_TILE), threads, &piece)?;
    (0..=steps.n())
        .map(|i| {
            let at: Vec<&Tensor> = pieces.iter().map(|p| &p[i]).collect();
            Ok(Tensor::cat(&at, 0)?)
        })
        .collect()
}

/// The reverse trajectory on one thread through the nets' engines (shapes as
/// [`reverse_trajectory`]).
fn reverse_generic(
    flow: &DiffFlow,
    z: &Tensor,
    steps: &Steps,
    lambda: f64,
    noise: Option<&Tensor>,
) -> Result<Vec<Tensor>> {
    let n = steps.n();
    let mut fe = flow.drift.engine()?;
    let mut se = flow.score.engine()?;
    let mut states = vec![z.clone(); n + 1];
    for i in (0..n).rev() {
        let x = &states[i + 1];
        let f = fe.eval(x, steps.t[i + 1])?;
        let s = se.eval(x, steps.t[i + 1])?;
        let eta = match noise {
            Some(e) => Some(e.get(i)?),
            None => None,
        };
        states[i] = reverse_step(x, &f, &s, eta.as_ref(), steps.dt(i), steps.g[i + 1], lambda)?;
    }
    Ok(states)
}

/// `n` samples `x_0` [n, d]: prior draw `z ~ N(0, I)`, then the noises for `i = N−1 … 0`, all
/// from `rng`; the batch is processed in pieces of at most `chunk` rows.
pub fn sample(
    flow: &DiffFlow,
    n: usize,
    steps: &Steps,
    lambda: f64,
    chunk: usize,
    rng: &mut Rng,
) -> Result<Tensor> {
    sample_sde(flow, n, steps, lambda, false, chunk, 1, rng)
}

/// [`sample`] with `threads` workers (see [`reverse_trajectory_threads`]); the samples do not
/// depend on `threads`.
pub fn sample_threads(
    flow: &DiffFlow,
    n: usize,
    steps: &Steps,
    lambda: f64,
    chunk: usize,
    rng: &mut Rng,
    threads: usize,
) -> Result<Tensor> {
    sample_sde(flow, n, steps, lambda, false, chunk, threads, rng)
}

/// Tweedie's denoising step (paper 4.3), taken instead of the sampler's last step
/// `x_1 → x_0`. The forward step (11) from `t_0` adds `N(0, σ² I)`, `σ² = g_0² Δt_0`, to
/// `y = x_0 + f(x_0, t_0) Δt_0`; Tweedie's formula `E[y | x_1] = x_1 + σ² ∇log p_{t_1}(x_1)`
/// with the score for `∇log p`, and the drift undone to first order, give
/// `x̂_0 = x_1 − f(x_1, t_1) Δt_0 + g_0² Δt_0 s(x_1, t_1)`.
/// For λ = 1 and constant `g` this is the Euler–Maruyama step (12) without its noise.
/// Shapes: `x1`, `f1`, `s1` [B, d] → [B, d].
pub fn tweedie_step(x1: &Tensor, f1: &Tensor, s1: &Tensor, dt0: f64, g0: f64) -> Result<Tensor> {
    let mean = (f1 - s1.affine(g0 * g0, 0.0)?)?;
    Ok((x1 - mean.affine(dt0, 0.0)?)?)
}

/// The sampler's noises for one piece of `b` rows, in the order of [`sample`]: the prior
/// draw `z` [b, d], then `noise` [N, b, d] for `i = N−1 … 0` (none when λ = 0).
fn draw(
    rng: &mut Rng,
    b: usize,
    d: usize,
    n_steps: usize,
    lambda: f64,
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Option<Tensor>)> {
    let z = Tensor::from_vec(rng.normals(b * d), (b, d), device)?.to_dtype(dtype)?;
    if lambda == 0.0 {
        return Ok((z, None));
    }
    let mut per_step = vec![Vec::new(); n_steps];
    for i in (0..n_steps).rev() {
        per_step[i] = rng.normals(b * d);
    }
    let flat: Vec<f64> = per_step.into_iter().flatten().collect();
    let noise = Tensor::from_vec(flat, (n_steps, b, d), device)?.to_dtype(dtype)?;
    Ok((z, Some(noise)))
}

/// `n` samples `x_0` [n, d] (f64) of SDE (16) with parameter `lambda` on the grid `steps`
/// (chosen freely at sampling time), the last step optionally replaced by
/// [`tweedie_step`]. Draws the same numbers from `rng` as [`sample`] (with or without the
/// Tweedie step, whose last noise is drawn and unused), so without it the result equals
/// [`sample`]'s. Rows are processed in pieces of at most `chunk`, each on `threads` workers
/// (see [`reverse_trajectory_threads`]; the samples do not depend on `threads`).
#[allow(clippy::too_many_arguments)]
pub fn sample_sde(
    flow: &DiffFlow,
    n: usize,
    steps: &Steps,
    lambda: f64,
    tweedie: bool,
    chunk: usize,
    threads: usize,
    rng: &mut Rng,
) -> Result<Tensor> {
    if !(0.0..=1.0).contains(&lambda) {
        return Err(Error::config(format!(
            "lambda must be in [0, 1], got {lambda}"
        )));
    }
    let (d, dtype, k) = (flow.dim(), flow.dtype(), steps.n());
    let device = flow.device();
    let mut out = Vec::new();
    let mut done = 0;
    while done < n {
        let b = chunk.max(1).min(n - done);
        let (z, noise) = draw(rng, b, d, k, lambda, dtype, &device)?;
        let reverse = |st: &Steps, z: &Tensor, e: Option<&Tensor>| -> Result<Tensor> {
            Ok(reverse_trajectory_threads(flow, z, st, lambda, e, threads)?.swap_remove(0))
        };
        let x0 = if !tweedie {
            reverse(steps, &z, noise.as_ref())?
        } else {
            // Steps N … 2 as usual, down to x_1; then the Tweedie step to t_0.
            let x1 = if k >= 2 {
                let upper = Steps::from_parts(steps.t[1..].to_vec(), steps.g[1..].to_vec())?;
                let upper_noise = match &noise {
                    Some(e) => Some(e.narrow(0, 1, k - 1)?),
                    None => None,
                };
                reverse(&upper, &z, upper_noise.as_ref())?
            } else {
                z
            };
            let f1 = flow.drift.engine()?.eval(&x1, steps.t[1])?;
            let s1 = flow.score.engine()?.eval(&x1, steps.t[1])?;
            tweedie_step(&x1, &f1, &s1, steps.dt(0), steps.g[0])?
        };
        out.push(x0.to_dtype(DType::F64)?);
        done += b;
    }
    Ok(Tensor::cat(&out, 0)?)
}

/// Probability-flow velocity `v = f − ½ g² s` (λ = 0 in (16)). Shapes: [B, d] → [B, d].
pub fn pf_velocity(f: &Tensor, s: &Tensor, g: f64) -> Result<Tensor> {
    Ok((f - s.affine(0.5 * g * g, 0.0)?)?)
}

/// `n` samples [n, d] (f64) by integrating the probability-flow ODE from the prior at
/// `t = T` down to `t_0` with an ODE solver: Euler or RK4 along the grid `t` (increasing,
/// stepped from its end), Dormand–Prince adaptively between its ends. The state is f64 (the
/// nets run in their own precision). Draws the prior like [`sample`] with λ = 0; rows in
/// pieces of at most `chunk`, each its own solve, `threads` solves at once (the priors are
/// drawn first, in piece order, so the samples do not depend on `threads`). Returns the
/// samples and the solver's costs per piece.
#[allow(clippy::too_many_arguments)]
pub fn sample_ode(
    flow: &DiffFlow,
    n: usize,
    t: &[f64],
    method: crate::ode::Method,
    tol: &crate::ode::Tolerances,
    chunk: usize,
    threads: usize,
    rng: &mut Rng,
) -> Result<(Tensor, Vec<crate::ode::Stats>)> {
    let (d, dtype, device) = (flow.dim(), flow.dtype(), flow.device());
    let ts: Vec<f64> = t.iter().rev().copied().collect();
    let chunk = chunk.max(1);
    let pieces: Vec<Vec<f64>> = (0..n.div_ceil(chunk))
        .map(|p| rng.normals(chunk.min(n - p * chunk) * d))
        .collect();
    let solve = |p: usize| -> Result<(Vec<f64>, crate::ode::Stats)> {
        let mut y = pieces[p].clone();
        let b = y.len() / d;
        let mut fe = flow.drift.engine()?;
        let mut se = flow.score.engine()?;
        let mut rhs = |t: f64, y: &[f64], dy: &mut [f64]| -> Result<()> {
            let x = Tensor::from_slice(y, (b, d), &device)?.to_dtype(dtype)?;
            let f = fe.eval(&x, t)?;
            let s = se.eval(&x, t)?;
            let v = pf_velocity(&f, &s, flow.diffusion.at(t))?;
            let v = v.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
            dy.copy_from_slice(&v);
            Ok(())
        };
        let stats = crate::ode::solve(method, &mut rhs, &mut y, &ts, tol, d)?;
        Ok((y, stats))
    };
    let solved = crate::par::par_map(pieces.len(), threads, &solve)?;
    let mut out = Vec::with_capacity(n * d);
    let mut stats = Vec::with_capacity(solved.len());
    for (y, s) in solved {
        out.extend_from_slice(&y);
        stats.push(s);
    }
    Ok((Tensor::from_vec(out, (n, d), &device)?, stats))
}

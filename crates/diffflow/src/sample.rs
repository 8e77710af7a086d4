//! Sampling with the marginal-equivalent SDE (16), integrated from `t_N = T` down to `t_0`:
//! `dx = [f − ((1+λ²)/2) g² s] dt + λ g dw`. λ = 1 is the backward SDE (9), λ = 0 the
//! probability-flow ODE (Euler steps).

use crate::flow::{DiffFlow, Steps};
use crate::rng::Rng;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};

mod fused;

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

/// [`reverse_trajectory`] with `threads` workers (two MLPs: the fused engine over row tiles,
/// the result does not depend on `threads`; other nets: one thread through
/// [`crate::nn::TimeNet::engine`]).
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
    sample_threads(flow, n, steps, lambda, chunk, rng, 1)
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
    let d = flow.dim();
    let dtype = flow.dtype();
    let mut out = Vec::new();
    let mut done = 0;
    while done < n {
        let b = chunk.max(1).min(n - done);
        let z = Tensor::from_vec(rng.normals(b * d), (b, d), &Device::Cpu)?.to_dtype(dtype)?;
        let noise = if lambda != 0.0 {
            let k = steps.n();
            let mut per_step = vec![Vec::new(); k];
            for i in (0..k).rev() {
                per_step[i] = rng.normals(b * d);
            }
            let flat: Vec<f64> = per_step.into_iter().flatten().collect();
            Some(Tensor::from_vec(flat, (k, b, d), &Device::Cpu)?.to_dtype(dtype)?)
        } else {
            None
        };
        let states = reverse_trajectory_threads(flow, &z, steps, lambda, noise.as_ref(), threads)?;
        out.push(states[0].to_dtype(DType::F64)?);
        done += b;
    }
    Ok(Tensor::cat(&out, 0)?)
}

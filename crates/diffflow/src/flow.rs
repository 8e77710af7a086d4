//! The DiffFlow model: a learnable forward SDE (8) with drift `f` and a backward SDE (9) with
//! score `s`, discretised as in (11)–(14).

use crate::nn::{Engine, TimeNet};
use crate::sde::Diffusion;
use crate::{Error, Result};
use candle_core::{DType, Tensor};

/// `(d/2) log(2π)` per dimension: `0.5 ln 2π`.
pub const HALF_LN_2PI: f64 = 0.918_938_533_204_672_8;

/// A discretisation: time points `t_0 < … < t_N` and `g_i = g(t_i)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Steps {
    /// Time points, N + 1 of them.
    pub t: Vec<f64>,
    /// Diffusion at each time point.
    pub g: Vec<f64>,
}

impl Steps {
    /// Time points `t` with the diffusion evaluated on them.
    pub fn new(t: Vec<f64>, diffusion: &Diffusion) -> Self {
        let g = diffusion.on_grid(&t);
        Steps { t, g }
    }

    /// Time points and diffusion values as given (e.g. read from a reference file).
    pub fn from_parts(t: Vec<f64>, g: Vec<f64>) -> Result<Self> {
        if t.len() < 2 || t.len() != g.len() {
            return Err(Error::config(format!(
                "need N + 1 >= 2 time points and as many g values, got {} and {}",
                t.len(),
                g.len()
            )));
        }
        let increasing = t.windows(2).all(|w| w[1] > w[0]);
        if !increasing || !g.iter().all(|g| *g > 0.0) {
            return Err(Error::config("time points must increase and g must be > 0"));
        }
        Ok(Steps { t, g })
    }

    /// Number of steps N.
    pub fn n(&self) -> usize {
        self.t.len() - 1
    }

    /// `Δt_i = t_{i+1} − t_i`.
    pub fn dt(&self, i: usize) -> f64 {
        self.t[i + 1] - self.t[i]
    }
}

/// Drift and score networks with the diffusion coefficient.
pub struct DiffFlow {
    /// Forward drift `f(x, t)`.
    pub drift: Box<dyn TimeNet>,
    /// Score `s(x, t)`.
    pub score: Box<dyn TimeNet>,
    /// Diffusion coefficient `g(t)`.
    pub diffusion: Diffusion,
}

impl DiffFlow {
    /// Data dimension `d`.
    pub fn dim(&self) -> usize {
        self.drift.dim()
    }

    /// Element type of the parameters (that of the first drift or score parameter, else of
    /// the first buffer, else f32).
    pub fn dtype(&self) -> DType {
        self.drift
            .vars()
            .iter()
            .chain(self.score.vars())
            .chain(self.drift.buffers())
            .chain(self.score.buffers())
            .next()
            .map(|(_, v)| v.dtype())
            .unwrap_or(DType::F32)
    }

    /// The device of the parameters (that of the first drift or score parameter or buffer,
    /// else the CPU).
    pub fn device(&self) -> candle_core::Device {
        self.drift
            .vars()
            .iter()
            .chain(self.score.vars())
            .chain(self.drift.buffers())
            .chain(self.score.buffers())
            .next()
            .map(|(_, v)| v.device().clone())
            .unwrap_or(candle_core::Device::Cpu)
    }

    /// Total number of trainable parameters.
    pub fn num_params(&self) -> usize {
        self.drift.num_params() + self.score.num_params()
    }
}

/// Forward step (11): `x_{i+1} = x_i + f(x_i, t_i) Δt_i + g_i √Δt_i δF_i`.
/// Shapes: all [B, d].
pub fn forward_step(x: &Tensor, f: &Tensor, eps: &Tensor, dt: f64, g: f64) -> Result<Tensor> {
    Ok(((x + f.affine(dt, 0.0)?)? + eps.affine(g * dt.sqrt(), 0.0)?)?)
}

/// Backward noise (14) along a forward trajectory:
/// `δB_i = (x_i − x_{i+1} + [f(x_{i+1}) − g_{i+1}² s(x_{i+1})] Δt_i) / (g_{i+1} √Δt_i)`.
/// Shapes: all [B, d].
pub fn backward_noise(
    x_prev: &Tensor,
    x_next: &Tensor,
    f_next: &Tensor,
    s_next: &Tensor,
    dt: f64,
    g_next: f64,
) -> Result<Tensor> {
    let drift = (f_next - s_next.affine(g_next * g_next, 0.0)?)?;
    let num = ((x_prev - x_next)? + drift.affine(dt, 0.0)?)?;
    Ok(num.affine(1.0 / (g_next * dt.sqrt()), 0.0)?)
}

/// The forward trajectory `x_0 … x_N` (11) from `x0` [B, d] and noises `noise` [N, B, d],
/// evaluated without a graph.
pub fn forward_trajectory(
    drift: &mut dyn Engine,
    x0: &Tensor,
    steps: &Steps,
    noise: &Tensor,
) -> Result<Vec<Tensor>> {
    check_noise(x0, steps, noise)?;
    let mut states = Vec::with_capacity(steps.n() + 1);
    states.push(x0.clone());
    for i in 0..steps.n() {
        let x = &states[i];
        let f = drift.eval(x, steps.t[i])?;
        let next = forward_step(x, &f, &noise.get(i)?, steps.dt(i), steps.g[i])?;
        states.push(next);
    }
    Ok(states)
}

pub(crate) fn check_noise(x0: &Tensor, steps: &Steps, noise: &Tensor) -> Result<()> {
    let (b, d) = x0.dims2()?;
    if noise.dims() != [steps.n(), b, d] {
        return Err(Error::data(format!(
            "noise has shape {:?}, expected [{}, {b}, {d}]",
            noise.dims(),
            steps.n()
        )));
    }
    Ok(())
}

/// Per-sample `−log N(x; 0, I) = ½‖x‖² + (d/2) log 2π`. Shapes: `x` [B, d] → [B].
pub fn prior_nll(x: &Tensor) -> Result<Tensor> {
    let d = x.dim(1)? as f64;
    Ok(x.sqr()?.sum(1)?.affine(0.5, d * HALF_LN_2PI)?)
}

/// Per-sample `½‖x‖²` summed over the last dimension. Shapes: [B, d] → [B].
pub fn half_sq_norm(x: &Tensor) -> Result<Tensor> {
    Ok(x.sqr()?.sum(1)?.affine(0.5, 0.0)?)
}

/// `Σ_i d·log(g_{i+1}/g_i)`: the ELBO's diffusion term (zero for constant `g`).
pub fn log_g_ratio_sum(steps: &Steps, d: usize) -> f64 {
    (0..steps.n())
        .map(|i| d as f64 * (steps.g[i + 1] / steps.g[i]).ln())
        .sum()
}

/// The negative ELBO (13) per sample along the trajectories of `x0` [B, d] with noises
/// `noise` [N, B, d], in nats: `−log p_B(x_N) + Σ_i [½‖δB_i‖² − ½‖δF_i‖² + d log(g_{i+1}/g_i)]`.
/// Returns [B] (f64).
pub fn neg_elbo(flow: &DiffFlow, x0: &Tensor, steps: &Steps, noise: &Tensor) -> Result<Vec<f64>> {
    let mut fe = flow.drift.engine()?;
    let mut se = flow.score.engine()?;
    let states = forward_trajectory(fe.as_mut(), x0, steps, noise)?;
    let n = steps.n();
    let mut total = prior_nll(&states[n])?.to_dtype(DType::F64)?;
    for i in 0..n {
        let f = fe.eval(&states[i + 1], steps.t[i + 1])?;
        let s = se.eval(&states[i + 1], steps.t[i + 1])?;
        let db = backward_noise(
            &states[i],
            &states[i + 1],
            &f,
            &s,
            steps.dt(i),
            steps.g[i + 1],
        )?;
        let term = (half_sq_norm(&db)? - half_sq_norm(&noise.get(i)?)?)?;
        total = (total + term.to_dtype(DType::F64)?)?;
    }
    let c = log_g_ratio_sum(steps, flow.dim());
    Ok(total.affine(1.0, c)?.to_vec1::<f64>()?)
}

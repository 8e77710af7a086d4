//! Gradient of the trajectory loss (15) by the stochastic adjoint (Algorithm 2), and the same
//! gradient by naive backprop through the unrolled steps (for tests and `--grad naive`).
//!
//! The loss per sample is the negative ELBO
//! `½‖x_N‖² + (d/2) log 2π + Σ_i [½‖δB_i‖² − ½‖δF_i‖² + d log(g_{i+1}/g_i)]`,
//! averaged over the batch; only `x_N` and the `δB_i` depend on θ.
//!
//! The adjoint sweeps the nodes `j = N … 0` once. At node `j` it evaluates `f(x_j, t_j)` and
//! `s(x_j, t_j)` keeping their activations, forms `δB_{j−1}`, and pulls back in one VJP per
//! net both the cotangent of `½‖δB_{j−1}‖²` and that of the step map
//! `x_{j+1} = x_j + f(x_j, t_j) Δt_j + …` (whose adjoint `a_{j+1} = dL/dx_{j+1}` is already
//! complete). Each net is thus evaluated once per node, plus the graph-free forward pass:
//! about 7N network passes per iteration. Memory: the N + 1 states plus one node's
//! activations.

use crate::flow::{
    backward_noise, check_noise, forward_trajectory, half_sq_norm, log_g_ratio_sum, prior_nll,
    DiffFlow, Steps,
};
use crate::nn::{Engine, TimeNet};
use crate::{Error, Result};
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

mod fused;
pub(crate) use fused::tiles_of;
pub use fused::{cached_nodes, tiles, TAPE_CACHE_BYTES, TILE_ROWS};

/// How the gradient is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GradMethod {
    /// Stochastic adjoint (Algorithm 2): memory flat in N.
    #[default]
    Adjoint,
    /// Backprop through the unrolled graph: memory grows with N.
    Naive,
}

impl std::str::FromStr for GradMethod {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "adjoint" => Ok(GradMethod::Adjoint),
            "naive" => Ok(GradMethod::Naive),
            _ => Err(Error::config(format!(
                "unknown gradient method '{s}' (expected adjoint or naive)"
            ))),
        }
    }
}

/// Batch means of the loss and its two parts, in nats per sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LossParts {
    /// Negative ELBO: `prior + path`.
    pub loss: f64,
    /// `−log p_B(x_N)`.
    pub prior: f64,
    /// `Σ_i [½‖δB_i‖² − ½‖δF_i‖² + d log(g_{i+1}/g_i)]`.
    pub path: f64,
}

/// Loss value and the gradients of its batch mean, in `vars()` order of each net.
#[derive(Debug)]
pub struct Gradient {
    /// Batch means.
    pub loss: LossParts,
    /// d loss / d drift parameters.
    pub drift: Vec<Tensor>,
    /// d loss / d score parameters.
    pub score: Vec<Tensor>,
}

impl Gradient {
    fn add(self, other: Gradient) -> Result<Gradient> {
        let sum = |a: Vec<Tensor>, b: Vec<Tensor>| -> Result<Vec<Tensor>> {
            a.into_iter().zip(b).map(|(x, y)| Ok((x + y)?)).collect()
        };
        Ok(Gradient {
            loss: LossParts {
                loss: self.loss.loss + other.loss.loss,
                prior: self.loss.prior + other.loss.prior,
                path: self.loss.path + other.loss.path,
            },
            drift: sum(self.drift, other.drift)?,
            score: sum(self.score, other.score)?,
        })
    }
}

fn sum_f64(x: &Tensor) -> Result<f64> {
    Ok(x.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?)
}

/// Adjoint gradient of `weight · Σ_rows loss` for one chunk of rows, with the given engines.
/// Shapes: `x0` [B, d], `noise` [N, B, d].
pub fn adjoint_chunk(
    fe: &mut dyn Engine,
    se: &mut dyn Engine,
    x0: &Tensor,
    steps: &Steps,
    noise: &Tensor,
    weight: f64,
) -> Result<Gradient> {
    let n = steps.n();
    let states = forward_trajectory(fe, x0, steps, noise)?;
    let d = x0.dim(1)?;
    let prior = weight * sum_f64(&prior_nll(&states[n])?)?;
    let mut path = 0.0;
    // a = dL/dx_{j+1} (complete) and u = weight · δB_j / (g_{j+1} √Δt_j) from the node above.
    let mut a_next: Option<Tensor> = None;
    let mut u_next: Option<Tensor> = None;
    for j in (0..=n).rev() {
        let x = &states[j];
        let f = fe.eval_keep(x, steps.t[j])?;
        // Contributions of ½‖δB_{j−1}‖² (j ≥ 1).
        let mut a_direct: Option<Tensor> = None;
        let mut cot_f: Option<Tensor> = None;
        let mut cot_s: Option<Tensor> = None;
        let mut u_here = None;
        if j >= 1 {
            let s = se.eval_keep(x, steps.t[j])?;
            let dt = steps.dt(j - 1);
            let g = steps.g[j];
            let db = backward_noise(&states[j - 1], x, &f, &s, dt, g)?;
            path += weight * sum_f64(&(half_sq_norm(&db)? - half_sq_norm(&noise.get(j - 1)?)?)?)?;
            let u = db.affine(weight / (g * dt.sqrt()), 0.0)?;
            cot_f = Some(u.affine(dt, 0.0)?);
            cot_s = Some(u.affine(-g * g * dt, 0.0)?);
            a_direct = Some(u.neg()?);
            u_here = Some(u);
        }
        if j == n {
            let an = states[n].affine(weight, 0.0)?;
            a_direct = Some(match a_direct {
                Some(a) => (a + an)?,
                None => an,
            });
        } else {
            // The step map x_{j+1} = x_j + f(x_j) Δt_j + … and the direct x_j-dependence of
            // ½‖δB_j‖².
            let a1 = a_next.take().expect("adjoint of the node above");
            let u1 = u_next.take().expect("backward noise of the node above");
            let via_f = a1.affine(steps.dt(j), 0.0)?;
            cot_f = Some(match cot_f {
                Some(c) => (c + via_f)?,
                None => via_f,
            });
            let direct = (a1 + u1)?;
            a_direct = Some(match a_direct {
                Some(a) => (a + direct)?,
                None => direct,
            });
        }
        let mut a = a_direct.expect("every node has a direct term");
        if let Some(c) = cot_f {
            a = (a + fe.pullback(&c, true)?)?;
        }
        if let Some(c) = cot_s {
            a = (a + se.pullback(&c, true)?)?;
        }
        a_next = Some(a);
        u_next = u_here;
    }
    let path = path + weight * x0.dim(0)? as f64 * log_g_ratio_sum(steps, d);
    Ok(Gradient {
        loss: LossParts {
            loss: prior + path,
            prior,
            path,
        },
        drift: fe.take_grads()?,
        score: se.take_grads()?,
    })
}

/// Gradient of the batch-mean loss by the stochastic adjoint. The batch is split into
/// `chunks` contiguous pieces of rows (for two [`crate::nn::Mlp`]s, each further cut into
/// tiles of at most [`TILE_ROWS`] rows) whose gradients are summed in order, so the result
/// does not depend on `threads` (the number of pieces computed at once).
/// Shapes: `x0` [B, d], `noise` [N, B, d].
pub fn adjoint_gradient(
    flow: &DiffFlow,
    x0: &Tensor,
    steps: &Steps,
    noise: &Tensor,
    chunks: usize,
    threads: usize,
) -> Result<Gradient> {
    check_noise(x0, steps, noise)?;
    if x0.dim(0)? == 0 {
        return Err(Error::data("empty batch"));
    }
    if let (Some(f), Some(s)) = (flow.drift.as_mlp(), flow.score.as_mlp()) {
        match (f.dtype(), s.dtype()) {
            (DType::F32, DType::F32) => {
                return fused::gradient::<f32>(f, s, x0, steps, noise, chunks, threads)
            }
            (DType::F64, DType::F64) => {
                return fused::gradient::<f64>(f, s, x0, steps, noise, chunks, threads)
            }
            _ => {}
        }
    }
    engine_adjoint_gradient(flow, x0, steps, noise, chunks, threads)
}

/// [`adjoint_gradient`] for any nets, through [`TimeNet::engine`] and tensor operations
/// ([`adjoint_chunk`] per chunk): the reference for the fused path.
/// Shapes: `x0` [B, d], `noise` [N, B, d].
pub fn engine_adjoint_gradient(
    flow: &DiffFlow,
    x0: &Tensor,
    steps: &Steps,
    noise: &Tensor,
    chunks: usize,
    threads: usize,
) -> Result<Gradient> {
    check_noise(x0, steps, noise)?;
    let b = x0.dim(0)?;
    if b == 0 {
        return Err(Error::data("empty batch"));
    }
    let weight = 1.0 / b as f64;
    let chunks = chunks.clamp(1, b);
    let bounds: Vec<(usize, usize)> = (0..chunks)
        .map(|c| (c * b / chunks, (c + 1) * b / chunks))
        .collect();
    let run = |(lo, hi): (usize, usize)| -> Result<Gradient> {
        let mut fe = flow.drift.engine()?;
        let mut se = flow.score.engine()?;
        let x = x0.narrow(0, lo, hi - lo)?;
        let e = noise.narrow(1, lo, hi - lo)?;
        adjoint_chunk(fe.as_mut(), se.as_mut(), &x, steps, &e, weight)
    };
    let parts = crate::par::par_map(chunks, threads, &|c| run(bounds[c]))?;
    let mut it = parts.into_iter();
    let mut total = it.next().ok_or_else(|| Error::data("empty batch"))?;
    for p in it {
        total = total.add(p)?;
    }
    Ok(total)
}

/// The same gradient by backprop through the unrolled graph of all N steps (candle autograd
/// over [`TimeNet::forward`]). Shapes: `x0` [B, d], `noise` [N, B, d].
pub fn naive_gradient(
    flow: &DiffFlow,
    x0: &Tensor,
    steps: &Steps,
    noise: &Tensor,
) -> Result<Gradient> {
    check_noise(x0, steps, noise)?;
    let b = x0.dim(0)? as f64;
    let d = x0.dim(1)?;
    let n = steps.n();
    let mut x = x0.detach();
    let mut path_sum: Option<Tensor> = None;
    for i in 0..n {
        let (dt, eps) = (steps.dt(i), noise.get(i)?);
        let f = flow.drift.forward(&x, steps.t[i])?;
        let next = crate::flow::forward_step(&x, &f, &eps, dt, steps.g[i])?;
        let f1 = flow.drift.forward(&next, steps.t[i + 1])?;
        let s1 = flow.score.forward(&next, steps.t[i + 1])?;
        let db = backward_noise(&x, &next, &f1, &s1, dt, steps.g[i + 1])?;
        let term = (half_sq_norm(&db)? - half_sq_norm(&eps)?)?.sum_all()?;
        path_sum = Some(match path_sum {
            Some(p) => (p + term)?,
            None => term,
        });
        x = next;
    }
    let prior_sum = prior_nll(&x)?.sum_all()?;
    let total = match path_sum {
        Some(p) => (prior_sum.clone() + p)?,
        None => prior_sum.clone(),
    };
    let loss = total.affine(1.0 / b, 0.0)?;
    let grads = loss.backward()?;
    let collect = |net: &dyn TimeNet| -> Result<Vec<Tensor>> {
        net.vars()
            .iter()
            .map(|(_, v): &(String, Var)| match grads.get(v.as_tensor()) {
                Some(g) => Ok(g.clone()),
                None => Ok(v.as_tensor().zeros_like()?),
            })
            .collect()
    };
    let prior = sum_f64(&prior_sum)? / b;
    let lg = log_g_ratio_sum(steps, d);
    let value = sum_f64(&loss)? + lg;
    Ok(Gradient {
        loss: LossParts {
            loss: value,
            prior,
            path: value - prior,
        },
        drift: collect(flow.drift.as_ref())?,
        score: collect(flow.score.as_ref())?,
    })
}

/// Gradient by the chosen method (`chunks`/`threads` apply to the adjoint).
pub fn gradient(
    flow: &DiffFlow,
    x0: &Tensor,
    steps: &Steps,
    noise: &Tensor,
    method: GradMethod,
    chunks: usize,
    threads: usize,
) -> Result<Gradient> {
    match method {
        GradMethod::Adjoint => adjoint_gradient(flow, x0, steps, noise, chunks, threads),
        GradMethod::Naive => naive_gradient(flow, x0, steps, noise),
    }
}

/// Matrix-multiply FLOPs of one gradient of the batch-mean loss with two [`crate::nn::Mlp`]s
/// of architecture `cfg` (see [`crate::nn::mlp_forward_flops`]), batch `batch`, N = `n`.
/// Adjoint: `N` graph-free drift passes for the trajectory, then at each node `j = N … 0` one
/// kept drift pass (except at the `cached` nodes whose forward-pass activations were kept,
/// see [`cached_nodes`]) and a drift pullback, and for `j ≥ 1` one kept score pass and a
/// score pullback. Naive backprop: `3N` forward passes (`f(x_i)`, `f(x_{i+1})`,
/// `s(x_{i+1})`) and their `3N` pullbacks.
pub fn matmul_flops(
    method: GradMethod,
    cfg: &crate::nn::MlpConfig,
    d: usize,
    batch: usize,
    n: usize,
    cached: usize,
) -> u64 {
    use crate::nn::{mlp_forward_flops, mlp_pullback_flops};
    let fwd = mlp_forward_flops(cfg, d, batch);
    let back = mlp_pullback_flops(cfg, d, batch, true);
    let n = n as u64;
    match method {
        GradMethod::Adjoint => (3 * n + 1 - (cached as u64).min(n)) * fwd + (2 * n + 1) * back,
        GradMethod::Naive => 3 * n * (fwd + back),
    }
}

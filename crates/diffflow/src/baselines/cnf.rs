//! An FFJORD-style continuous normalizing flow (Grathwohl et al. 2019): `dx = v(x, t) dt`
//! with the Fourier MLP `v`, carrying the data at `t_0` to `N(0, I)` at `T`, trained by
//! maximum likelihood `−log p(x_0) = −log N(x_T; 0, I) − ∫_{t_0}^{T} ∇·v(x_t, t) dt`.
//!
//! The ODE and the divergence integral are solved by fixed-step RK4 on a grid, built from
//! differentiable candle ops so that candle's autograd backpropagates through the solver
//! ("discretise then optimise"). The divergence needs `∂v/∂x`, and candle has no
//! second-order gradients, so it comes from the hand-written forward-mode JVP
//! [`Mlp::forward_jvp`]: exactly `Σ_k e_kᵀ J e_k` (d tangents; for small d) or Hutchinson's
//! `εᵀ J ε` with Rademacher probes drawn per batch and held fixed through the solve.
//!
//! As a [`DiffFlow`] the CNF is drift = `v`, score = [`ZeroField`], any `g`: the
//! probability-flow velocity `f − ½ g² s` is then `v`, so the library's samplers (λ = 0) and
//! [`crate::likelihood::pf_ode_nll`] evaluate it unchanged (theorem 1's `g → 0` limit).

use super::sum_grads;
use crate::flow::prior_nll;
use crate::nn::{Engine, Mlp, TimeNet};
use crate::par::par_map;
use crate::rng::Rng;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

/// The zero vector field (the CNF's score): no parameters, zero output and zero VJPs.
pub struct ZeroField {
    dim: usize,
}

impl ZeroField {
    /// For data dimension `dim`.
    pub fn new(dim: usize) -> Self {
        ZeroField { dim }
    }
}

impl TimeNet for ZeroField {
    fn dim(&self) -> usize {
        self.dim
    }

    fn vars(&self) -> &[(String, Var)] {
        &[]
    }

    fn forward(&self, x: &Tensor, _t: f64) -> Result<Tensor> {
        Ok(x.zeros_like()?)
    }

    fn engine(&self) -> Result<Box<dyn Engine + '_>> {
        Ok(Box::new(ZeroEngine))
    }
}

struct ZeroEngine;

impl Engine for ZeroEngine {
    fn eval(&mut self, x: &Tensor, _t: f64) -> Result<Tensor> {
        Ok(x.zeros_like()?)
    }

    fn eval_keep(&mut self, x: &Tensor, _t: f64) -> Result<Tensor> {
        Ok(x.zeros_like()?)
    }

    fn pullback(&mut self, cot: &Tensor, _params: bool) -> Result<Tensor> {
        Ok(cot.zeros_like()?)
    }

    fn take_grads(&mut self) -> Result<Vec<Tensor>> {
        Ok(Vec::new())
    }
}

/// How the CNF's training divergence is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trace {
    /// `Σ_k e_kᵀ J e_k`: d JVPs per evaluation (fine for small d).
    #[default]
    Exact,
    /// `εᵀ J ε` with one Rademacher probe per row, fixed for the whole solve.
    Hutchinson,
}

/// Velocity and divergence `(v, ∇·v)` of `net` at `(x, t)` as candle ops, by the JVP.
/// `probe` = the Hutchinson probe, or `None` for the exact divergence.
/// Shapes: `x` `[B, d]` → (`v` `[B, d]`, `div` `[B]`).
pub fn velocity_divergence(
    net: &Mlp,
    x: &Tensor,
    t: f64,
    probe: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let (b, d) = x.dims2()?;
    match probe {
        Some(eps) => {
            let (v, jv) = net.forward_jvp(x, t, std::slice::from_ref(eps))?;
            let div = (eps * &jv[0])?.sum(1)?;
            Ok((v, div))
        }
        None => {
            let basis: Vec<Tensor> = (0..d)
                .map(|k| {
                    let e: Vec<f64> = (0..b * d)
                        .map(|i| if i % d == k { 1.0 } else { 0.0 })
                        .collect();
                    Ok(Tensor::from_vec(e, (b, d), x.device())?.to_dtype(x.dtype())?)
                })
                .collect::<Result<_>>()?;
            let (v, jv) = net.forward_jvp(x, t, &basis)?;
            let mut div: Option<Tensor> = None;
            for (e, j) in basis.iter().zip(&jv) {
                let term = (e * j)?.sum(1)?;
                div = Some(match div {
                    Some(acc) => (acc + term)?,
                    None => term,
                });
            }
            Ok((v, div.expect("d >= 1")))
        }
    }
}

/// Per-row NLL of `x0` under the CNF, integrating `d[x, ℓ]/dt = [v, ∇·v]` by RK4 along the
/// increasing grid `ts` (from `ts[0]` to its end), as a differentiable candle graph:
/// `−log p(x_0) = ½‖x_T‖² + (d/2) log 2π − ℓ_T`. Returns (NLL `[B]`, `x_T` `[B, d]`).
/// Shapes: `x0` [B, d], `probe` [B, d].
pub fn cnf_nll(
    net: &Mlp,
    x0: &Tensor,
    ts: &[f64],
    probe: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    if ts.len() < 2 || ts.windows(2).any(|w| w[1] <= w[0]) {
        return Err(Error::config("the CNF needs increasing time points"));
    }
    let b = x0.dim(0)?;
    let mut x = x0.clone();
    let mut ell = Tensor::zeros(b, x0.dtype(), x0.device())?;
    let f = |x: &Tensor, t: f64| velocity_divergence(net, x, t, probe);
    for w in ts.windows(2) {
        let (t, h) = (w[0], w[1] - w[0]);
        let (k1, l1) = f(&x, t)?;
        let (k2, l2) = f(&(&x + k1.affine(0.5 * h, 0.0)?)?, t + 0.5 * h)?;
        let (k3, l3) = f(&(&x + k2.affine(0.5 * h, 0.0)?)?, t + 0.5 * h)?;
        let (k4, l4) = f(&(&x + k3.affine(h, 0.0)?)?, t + h)?;
        let dx = (((k1 + k4)? + (k2 + k3)?.affine(2.0, 0.0)?)?).affine(h / 6.0, 0.0)?;
        let dl = (((l1 + l4)? + (l2 + l3)?.affine(2.0, 0.0)?)?).affine(h / 6.0, 0.0)?;
        x = (x + dx)?;
        ell = (ell + dl)?;
    }
    let nll = (prior_nll(&x)? - ell)?;
    Ok((nll, x))
}

impl std::str::FromStr for Trace {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "exact" => Ok(Trace::Exact),
            "hutchinson" => Ok(Trace::Hutchinson),
            _ => Err(Error::config(format!(
                "unknown trace '{s}' (expected exact or hutchinson)"
            ))),
        }
    }
}

/// Rademacher probes [b, d] of `dtype` on `device`.
pub(crate) fn rademacher(
    b: usize,
    d: usize,
    dtype: DType,
    device: &Device,
    rng: &mut Rng,
) -> Result<Tensor> {
    let v: Vec<f64> = (0..b * d)
        .map(|_| if rng.uniform() < 0.5 { -1.0 } else { 1.0 })
        .collect();
    Ok(Tensor::from_vec(v, (b, d), device)?.to_dtype(dtype)?)
}

/// Mean NLL of the batch `x0` and its gradient w.r.t. `net`'s parameters, by backprop
/// through [`cnf_nll`]. The rows are split into `chunks` contiguous pieces (each its own
/// graph), computed `threads` at a time and summed in order (the result does not depend on
/// `threads`). Shapes: `x0` [B, d], `probe` [B, d].
pub fn cnf_gradient(
    net: &Mlp,
    x0: &Tensor,
    ts: &[f64],
    probe: Option<&Tensor>,
    chunks: usize,
    threads: usize,
) -> Result<(f64, Vec<Tensor>)> {
    let b = x0.dim(0)?;
    if b == 0 {
        return Err(Error::data("empty batch"));
    }
    let chunks = chunks.clamp(1, b);
    let work = |c: usize| -> Result<(f64, Vec<Tensor>)> {
        let (lo, hi) = (c * b / chunks, (c + 1) * b / chunks);
        let x = x0.narrow(0, lo, hi - lo)?;
        let p = match probe {
            Some(p) => Some(p.narrow(0, lo, hi - lo)?),
            None => None,
        };
        let (nll, _) = cnf_nll(net, &x, ts, p.as_ref())?;
        let loss = nll.sum_all()?.affine(1.0 / b as f64, 0.0)?;
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let store = loss.backward()?;
        let grads = net
            .vars()
            .iter()
            .map(|(_, v)| match store.get(v.as_tensor()) {
                Some(g) => Ok(g.clone()),
                None => Ok(v.as_tensor().zeros_like()?),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((value, grads))
    };
    let parts = par_map(chunks, threads, &work)?;
    let loss = parts.iter().map(|p| p.0).sum();
    Ok((loss, sum_grads(parts.into_iter().map(|p| p.1).collect())?))
}

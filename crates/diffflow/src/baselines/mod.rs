//! Baselines on the same networks, samplers and likelihood code as DiffFlow (paper 3.4, 4.1),
//! as the mathematics of their models and losses (the training loop is
//! [`crate::train::Trainer`] for every model kind):
//!
//! - [`ddpm`]: the VP SDE with its drift frozen (`f = −β(t) x / 2`), trained either by
//!   DiffFlow's own trajectory loss ("DDPM (L)") or by the ε-prediction loss on the
//!   closed-form marginals ("DDPM (L_s)", [`ddpm::eps_loss_gradient`]);
//! - [`cnf`]: an FFJORD-style continuous normalizing flow `dx = v(x, t) dt` trained by maximum
//!   likelihood through a fixed-step RK4 solver ([`cnf::cnf_gradient`]).
//!
//! Each baseline is a [`crate::flow::DiffFlow`] (drift, score, g), so sampling
//! ([`crate::sample`]) and the probability-flow likelihood ([`crate::likelihood`]) apply
//! unchanged.

pub mod cnf;
pub mod ddpm;

use crate::{Error, Result};
use candle_core::Tensor;

/// Element-wise sum of per-piece gradient lists, in piece order.
pub(crate) fn sum_grads(parts: Vec<Vec<Tensor>>) -> Result<Vec<Tensor>> {
    let mut it = parts.into_iter();
    let mut total = it
        .next()
        .ok_or_else(|| Error::config("no gradient pieces"))?;
    for p in it {
        for (a, b) in total.iter_mut().zip(p) {
            *a = (&*a + b)?;
        }
    }
    Ok(total)
}

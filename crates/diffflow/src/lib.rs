//! Diffusion Normalizing Flow (DiffFlow; Zhang & Chen, NeurIPS 2021).
//!
//! Two neural SDEs, a learnable forward drift `f` and a score `s`, trained jointly by
//! minimising the KL divergence between forward and backward trajectory distributions
//! (eq. 15) with a memory-saving stochastic adjoint (Algorithm 2). See `DESIGN.md`.

pub mod adjoint;
pub mod analytic;
pub mod baselines;
pub mod checkpoint;
pub mod classifier;
pub mod config;
pub mod data;
pub mod error;
pub mod flow;
pub mod gaussian;
pub mod likelihood;
pub mod metrics;
pub mod nn;
pub mod ode;
pub mod optim;
mod par;
pub mod rng;
pub mod sample;
pub mod sde;
pub mod train;
pub mod validation;

pub use error::{Error, Result};

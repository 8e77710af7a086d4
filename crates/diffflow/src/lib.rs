//! Diffusion Normalizing Flow (DiffFlow; Zhang & Chen, NeurIPS 2021).
//!
//! Two neural SDEs, a learnable forward drift `f` and a score `s`, trained jointly by
//! minimising the KL divergence between forward and backward trajectory distributions
//! (eq. 15) with a memory-saving stochastic adjoint (Algorithm 2); DDPM and an FFJORD-style
//! CNF as baselines on the same code.
//!
//! The modules, from the bottom up:
//!
//! | module | what it is for |
//! |---|---|
//! | [`error`], [`rng`], [`par`] | the one error type; the seeded generator every random draw comes from; the one worker pool |
//! | [`sde`] | time grids (fixed and flexible `β` grids), `g(t)` schedules, progressive N |
//! | [`nn`] | the [`nn::TimeNet`] trait (a net of `(x, t)`); the Fourier MLP and the DDPM-style U-Net, each with a fused CPU engine; the LeNet classifier net |
//! | [`flow`] | [`DiffFlow`] (drift, score, g): the discretised forward/backward steps (11)–(14), the ELBO (13) |
//! | [`adjoint`] | the gradient of the trajectory loss (15): stochastic adjoint and naive backprop |
//! | [`ode`], [`sample`], [`likelihood`] | ODE solvers; SDE (16) and ODE samplers, Tweedie; probability-flow NLL and ELBO |
//! | [`baselines`] | the mathematics of DDPM (VP SDE, ε loss) and the CNF (divergence, NLL through RK4) |
//! | [`optim`], [`checkpoint`] | Adam, clipping, EMA; safetensors files written atomically and read with checks |
//! | [`data`] | 2-D sets, image densities, tabular files and their preprocessing, a run's data ([`TrainData`]) |
//! | [`config`] | the run configuration ([`RunConfig`]), model kinds ([`ModelKind`]), presets |
//! | [`validation`] | the validation metric, best checkpoint, early stopping |
//! | [`model`] | the model interface: [`Model`] samples and evaluates any kind in data units; run folders |
//! | [`train`] | [`Trainer`]: one training loop for every kind, checkpoints and resume, budgets |
//! | [`tune`] | the tuning study's trials: a configuration with overrides, measured on validation points |
//! | [`analytic`], [`gaussian`], [`metrics`], [`classifier`] | a closed-form Gaussian DiffFlow; a Gaussian baseline; sample-quality metrics (MMD, sliced W2, Fréchet); the shipped MNIST LeNet for "FID (LeNet features)" |

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
pub mod model;
pub mod nn;
pub mod ode;
pub mod optim;
pub mod par;
pub mod rng;
pub mod sample;
pub mod sde;
pub mod train;
pub mod tune;
pub mod validation;

pub use config::{ModelKind, Preset, RunConfig};
pub use data::TrainData;
pub use error::{Error, Result};
pub use flow::DiffFlow;
pub use model::Model;
pub use train::Trainer;

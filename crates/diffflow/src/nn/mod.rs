//! Networks of `(x, t)`: the [`TimeNet`] trait, the Fourier-feature MLP of the paper's 2-D
//! experiments, the U-Net of its image experiments, and the engines that evaluate them.
//!
//! A [`TimeNet`] has two faces. [`TimeNet::forward`] is built from candle operations, so that
//! candle's autograd can differentiate through it (used by naive backprop and by tests).
//! [`TimeNet::engine`] returns an [`Engine`]: a snapshot of the weights that evaluates the net
//! without a graph and pulls cotangents back explicitly (vector-Jacobian products), which is
//! what the stochastic adjoint needs. The MLP and the U-Net have fused CPU engines; any other
//! net gets [`AutogradEngine`], built on `forward`.

mod act;
mod flops;
mod gemm;
mod kernel;
mod mlp;
mod rows;
mod unet;

pub use act::{fast, Activation, Real};
pub use flops::{gemm_gflops, mlp_forward_flops, mlp_pullback_flops};
#[cfg(test)]
pub(crate) use gemm::FLOPS;
pub use kernel::{MlpEngine, Scratch, Tape, TimeFeatures};
pub use mlp::{Mlp, MlpConfig, ParamKnob};
pub use rows::drain_into;
pub use unet::{
    unet_forward_flops, unet_gemms, unet_pullback_flops, UNet, UNetConfig, UNetEngine, UNetGemms,
    UNetScratch, UNetTape, DEFAULT_TIME_SCALE,
};

use crate::Result;
use candle_core::{Tensor, Var};

/// A vector field `R^d × R → R^d` with trainable parameters: the drift `f` or the score `s`.
pub trait TimeNet: Send + Sync {
    /// Data dimension `d` (input and output).
    fn dim(&self) -> usize;

    /// Trainable parameters with their names, in a fixed order.
    fn vars(&self) -> &[(String, Var)];

    /// Saved but not trained tensors (e.g. fixed Fourier frequencies), with their names.
    fn buffers(&self) -> &[(String, Var)] {
        &[]
    }

    /// Differentiable forward pass built from candle ops.
    /// Shapes: `x` [B, d], one time `t` for the whole batch → [B, d].
    fn forward(&self, x: &Tensor, t: f64) -> Result<Tensor>;

    /// A graph-free evaluator with explicit vector-Jacobian products, holding a snapshot of the
    /// current weights (create a new one after the weights change).
    fn engine(&self) -> Result<Box<dyn Engine + '_>> {
        Ok(Box::new(AutogradEngine::new(self)))
    }

    /// The net as an [`Mlp`], when it is one: the adjoint and the sampler then run on the
    /// slice-level [`MlpEngine`] instead of [`TimeNet::engine`].
    fn as_mlp(&self) -> Option<&Mlp> {
        None
    }

    /// Sets the seed of the dropout masks for the coming evaluations (the trainer sets a fresh
    /// one per iteration; `None` = evaluation mode, no dropout). Masks are a function of the
    /// seed, `t`, the layer and the element, so re-evaluating a step reproduces it exactly.
    /// Engines take the seed when they are created. Nets without dropout ignore it.
    fn set_dropout_seed(&self, _seed: Option<u64>) {}

    /// Number of trainable scalars.
    fn num_params(&self) -> usize {
        self.vars().iter().map(|(_, v)| v.elem_count()).sum()
    }
}

/// Evaluates a net and pulls cotangents back through one kept evaluation.
pub trait Engine: Send {
    /// `net(x, t)` without keeping anything. Shapes: `x` [B, d] → [B, d].
    fn eval(&mut self, x: &Tensor, t: f64) -> Result<Tensor>;

    /// `net(x, t)`, keeping what [`Engine::pullback`] needs (replaces any earlier kept
    /// evaluation).
    fn eval_keep(&mut self, x: &Tensor, t: f64) -> Result<Tensor>;

    /// For the kept evaluation `y = net(x, t)` and a cotangent `cot` [B, d]: returns
    /// `(∂y/∂x)ᵀ cot` [B, d], and when `params` is set adds `(∂y/∂θ)ᵀ cot` to the
    /// parameter gradients held by the engine.
    fn pullback(&mut self, cot: &Tensor, params: bool) -> Result<Tensor>;

    /// The accumulated parameter gradients in [`TimeNet::vars`] order (then reset to zero).
    fn take_grads(&mut self) -> Result<Vec<Tensor>>;
}

/// An [`Engine`] for any [`TimeNet`], through candle's autograd on [`TimeNet::forward`].
pub struct AutogradEngine<'a, N: ?Sized> {
    net: &'a N,
    kept: Option<(Var, Tensor)>,
    grads: Vec<Option<Tensor>>,
}

impl<'a, N: TimeNet + ?Sized> AutogradEngine<'a, N> {
    /// Engine over `net`'s current weights.
    pub fn new(net: &'a N) -> Self {
        AutogradEngine {
            net,
            kept: None,
            grads: vec![None; net.vars().len()],
        }
    }
}

impl<N: TimeNet + ?Sized> Engine for AutogradEngine<'_, N> {
    fn eval(&mut self, x: &Tensor, t: f64) -> Result<Tensor> {
        Ok(self.net.forward(&x.detach(), t)?.detach())
    }

    fn eval_keep(&mut self, x: &Tensor, t: f64) -> Result<Tensor> {
        let xv = Var::from_tensor(&x.detach())?;
        let y = self.net.forward(xv.as_tensor(), t)?;
        let out = y.detach();
        self.kept = Some((xv, y));
        Ok(out)
    }

    fn pullback(&mut self, cot: &Tensor, params: bool) -> Result<Tensor> {
        let (xv, y) = self
            .kept
            .as_ref()
            .ok_or_else(|| crate::Error::config("pullback without a kept evaluation"))?;
        let grads = (y * cot.detach())?.sum_all()?.backward()?;
        if params {
            for (acc, (_, v)) in self.grads.iter_mut().zip(self.net.vars()) {
                if let Some(g) = grads.get(v.as_tensor()) {
                    *acc = Some(match acc.take() {
                        Some(a) => (a + g)?,
                        None => g.clone(),
                    });
                }
            }
        }
        Ok(match grads.get(xv.as_tensor()) {
            Some(g) => g.clone(),
            None => xv.as_tensor().zeros_like()?,
        })
    }

    fn take_grads(&mut self) -> Result<Vec<Tensor>> {
        self.grads
            .iter_mut()
            .zip(self.net.vars())
            .map(|(g, (_, v))| match g.take() {
                Some(g) => Ok(g),
                None => Ok(v.as_tensor().zeros_like()?),
            })
            .collect()
    }
}

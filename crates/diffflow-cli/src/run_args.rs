//! The options that name a trained model, shared by `diffflow sample` and `diffflow eval`.

use anyhow::Result;
use clap::Args;
use diffflow::config::Weights;
use diffflow::model::{Checkpoint, Model};
use std::path::PathBuf;

/// A run folder, one of its checkpoints and the weights to use.
#[derive(Args)]
pub struct RunArgs {
    /// Run folder written by `diffflow train`.
    #[arg(long)]
    pub run: PathBuf,
    /// Which checkpoint: best (best.safetensors, the best validation value; the default when
    /// the run has one) or last (model.safetensors).
    #[arg(long, value_name = "best|last")]
    pub checkpoint: Option<String>,
    /// Weights: ema or live (default: the run's sampling weights).
    #[arg(long, value_name = "ema|live")]
    pub weights: Option<String>,
}

impl RunArgs {
    /// The model these options name.
    pub fn load(&self) -> Result<Model> {
        let weights = self
            .weights
            .as_deref()
            .map(str::parse::<Weights>)
            .transpose()?;
        let which = self
            .checkpoint
            .as_deref()
            .map(str::parse::<Checkpoint>)
            .transpose()?;
        Ok(Model::load(&self.run, which, weights)?)
    }
}

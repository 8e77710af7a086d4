//! The training state in a checkpoint: writing it (atomically, never with a NaN), reading
//! it back with every check, and resuming a run exactly where it stopped.
//!
//! A checkpoint holds the tensors `drift.*`, `score.*` (live weights and buffers),
//! `ema.{drift,score}.*` and `adam.{m,v}.{drift,score}.*`, and in its metadata the format,
//! the version, the configuration (TOML) and the training state (JSON; its format and checks
//! are [`crate::model::file`]'s, shared with [`crate::model::Model::load`]).

use super::Trainer;
use crate::checkpoint::{self, TensorFile};
use crate::config::RunConfig;
use crate::data::TrainData;
use crate::model::file::{check_tensors, nets, read_run, TrainState};
use crate::model::{build, MODEL_FILE};
use crate::rng::Rng;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// Every check [`Trainer::resume`] makes on a checkpoint's bytes, without a file (for the
/// fuzz targets).
#[doc(hidden)]
pub fn parse_run_bytes(bytes: &[u8]) -> Result<()> {
    let run = crate::model::file::parse_run(bytes)?;
    let flow = build(&run.cfg.model, run.state.dim, &mut Rng::new(0))?;
    check_tensors(&flow, &run.file, Path::new(""))
}

impl Trainer {
    /// Writes the checkpoint `dir/model.safetensors` atomically (temp file, fsync, rename:
    /// the previous checkpoint stays complete until the new one replaces it). Refuses to
    /// write a state with a NaN or infinity ([`Error::NonFinite`]).
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.save_file(&dir.join(MODEL_FILE))
    }

    /// [`Trainer::save`] to the file `path` (e.g. the best checkpoint).
    pub fn save_file(&self, path: &Path) -> Result<()> {
        if let Some(what) = self.non_finite_state()? {
            return Err(Error::NonFinite {
                step: self.step,
                what: format!("{what} (checkpoint not written)"),
            });
        }
        let mut tensors = BTreeMap::new();
        for (k, (net, prefix)) in nets(&self.flow).into_iter().enumerate() {
            tensors.extend(checkpoint::net_tensors(net, prefix));
            for (i, (name, _)) in net.vars().iter().enumerate() {
                tensors.insert(
                    format!("ema.{prefix}.{name}"),
                    self.ema[k].shadow[i].clone(),
                );
                tensors.insert(format!("adam.m.{prefix}.{name}"), self.adam[k].m[i].clone());
                tensors.insert(format!("adam.v.{prefix}.{name}"), self.adam[k].v[i].clone());
            }
        }
        let state = TrainState {
            step: self.step,
            adam_steps: [self.adam[0].step, self.adam[1].step],
            ema_updates: [self.ema[0].updates, self.ema[1].updates],
            rng: self.rng.state(),
            standardizer: self.data.standardizer.clone(),
            dim: self.data.dim,
            metrics: self.acc.clone(),
            lr_scale: self.lr_scale,
            restarts: self.restarts,
            validation: self.val.clone(),
            columns: self.data.columns.clone(),
        };
        let mut meta = BTreeMap::new();
        meta.insert("format".into(), "diffflow".into());
        meta.insert("version".into(), env!("CARGO_PKG_VERSION").into());
        meta.insert("config".into(), self.cfg.to_toml()?);
        meta.insert(
            "state".into(),
            serde_json::to_string(&state).map_err(|e| Error::config(e.to_string()))?,
        );
        checkpoint::write(path, &tensors, &meta)
    }

    /// Restores a run from `dir/model.safetensors` (for `--resume`): weights, EMA, Adam
    /// moments, step, RNG state, metrics sums and restart count, so that the resumed run
    /// continues exactly as the uninterrupted one would. `data` must be the run's data,
    /// regenerated from its configuration (checked through the standardisation, which must
    /// agree to the bit).
    pub fn resume(dir: &Path, data: TrainData) -> Result<Self> {
        Self::resume_with(dir, |_| Ok(data))
    }

    /// [`Trainer::resume`] with the data built from the run's configuration by `make_data`.
    pub fn resume_with(
        dir: &Path,
        make_data: impl FnOnce(&RunConfig) -> Result<TrainData>,
    ) -> Result<Self> {
        let path = dir.join(MODEL_FILE);
        if !path.exists() {
            return Err(Error::checkpoint(
                &path,
                "no checkpoint to resume from (is this a run folder written by `diffflow train`?)",
            ));
        }
        let run = read_run(&path)?;
        let state = &run.state;
        let data = make_data(&run.cfg)?;
        if data.standardizer != state.standardizer || data.columns != state.columns {
            return Err(Error::checkpoint(
                &path,
                "the training data differ from the run's (their standardisation does not match \
                 the checkpoint's): resume needs the same data set, seed and sizes",
            ));
        }
        let mut tr = Trainer::new(run.cfg.clone(), data)?;
        tr.restore(state, &run.file, &path)?;
        Ok(tr)
    }

    /// Loads the checkpoint `path` (already read as `state` and `file`) into this trainer.
    pub(super) fn restore(
        &mut self,
        state: &TrainState,
        file: &TensorFile,
        path: &Path,
    ) -> Result<()> {
        if state.dim != self.data.dim {
            return Err(Error::checkpoint(
                path,
                format!(
                    "model has dimension {}, data has {}",
                    state.dim, self.data.dim
                ),
            ));
        }
        check_tensors(&self.flow, file, path)?;
        for (k, (net, prefix)) in nets(&self.flow).into_iter().enumerate() {
            checkpoint::load_net(net, prefix, file, path)?;
            for (i, (name, _)) in net.vars().iter().enumerate() {
                let get = |key: String| file.get(&key, path).cloned();
                self.ema[k].shadow[i] = get(format!("ema.{prefix}.{name}"))?;
                self.adam[k].m[i] = get(format!("adam.m.{prefix}.{name}"))?;
                self.adam[k].v[i] = get(format!("adam.v.{prefix}.{name}"))?;
            }
            self.adam[k].step = state.adam_steps[k];
            self.ema[k].updates = state.ema_updates[k];
        }
        self.step = state.step;
        self.rng = Rng::from_state(&state.rng)
            .map_err(|e| Error::checkpoint(path, format!("stored state: {e}")))?;
        self.data.standardizer = state.standardizer.clone();
        self.acc = state.metrics.clone();
        self.lr_scale = state.lr_scale;
        self.restarts = state.restarts;
        self.val = state.validation.clone();
        Ok(())
    }
}

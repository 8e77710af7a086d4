//! Copying a run folder (`DiffFlow.save`): a run trained by `fit` lives in a temporary
//! folder with its arrays; its copy must be a run of its own, so the data files inside the
//! folder are copied too and every configuration (`config.toml` and the one in each
//! checkpoint's metadata, which the CLI reads on resume) is pointed at the copies. Data files
//! outside the folder (a CLI run on the user's file) are left where they are.

use diffflow::checkpoint::{self, atomic_write};
use diffflow::config::RunConfig;
use diffflow::model::{BEST_FILE, CONFIG_FILE, METRICS_FILE, MODEL_FILE};
use diffflow::{Error, Result};
use std::path::{Path, PathBuf};

/// `path` inside `from` → the same name inside `to`, copying the file; others unchanged.
fn moved(path: &Path, from: &Path, to: &Path) -> Result<PathBuf> {
    let Ok(rel) = path.strip_prefix(from) else {
        return Ok(path.to_path_buf());
    };
    let dst = to.join(rel);
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    atomic_write(&dst, &bytes)?;
    std::fs::canonicalize(&dst).map_err(|e| Error::io(&dst, e))
}

/// `cfg` with its data files inside `from` copied to `to` and named there.
fn repoint(mut cfg: RunConfig, from: &Path, to: &Path) -> Result<RunConfig> {
    if let Some(f) = cfg.data.file.as_mut() {
        f.path = moved(&f.path, from, to)?;
        for p in [&mut f.validation, &mut f.test].into_iter().flatten() {
            *p = moved(p, from, to)?;
        }
    }
    Ok(cfg)
}

/// Copies the run in `src` to `dst` (see the module docs). Refuses to overwrite a run in
/// `dst` unless `force`; copying a folder onto itself does nothing.
pub fn copy_run(src: &Path, dst: &Path, force: bool) -> Result<()> {
    let canon = |p: &Path| std::fs::canonicalize(p).map_err(|e| Error::io(p, e));
    let from = canon(src)?;
    if dst.exists() && canon(dst)? == from {
        return Ok(());
    }
    if dst.join(MODEL_FILE).exists() && !force {
        return Err(Error::config(format!(
            "{} already holds a run (save(..., force=True) overwrites it)",
            dst.display()
        )));
    }
    std::fs::create_dir_all(dst).map_err(|e| Error::io(dst, e))?;
    let to = canon(dst)?;
    for name in [MODEL_FILE, BEST_FILE] {
        let path = from.join(name);
        if !path.exists() {
            continue;
        }
        let mut file = checkpoint::read(&path)?;
        let text = file.meta("config", &path)?;
        let cfg =
            RunConfig::from_toml(text).map_err(|e| Error::checkpoint(&path, e.to_string()))?;
        let cfg = repoint(cfg, &from, &to)?;
        file.metadata.insert("config".into(), cfg.to_toml()?);
        checkpoint::write(&to.join(name), &file.tensors, &file.metadata)?;
    }
    let config = from.join(CONFIG_FILE);
    if config.exists() {
        let text = std::fs::read_to_string(&config).map_err(|e| Error::io(&config, e))?;
        let cfg = repoint(RunConfig::from_toml(&text)?, &from, &to)?;
        atomic_write(&to.join(CONFIG_FILE), cfg.to_toml()?.as_bytes())?;
    }
    let metrics = from.join(METRICS_FILE);
    if metrics.exists() {
        let bytes = std::fs::read(&metrics).map_err(|e| Error::io(&metrics, e))?;
        atomic_write(&to.join(METRICS_FILE), &bytes)?;
    }
    Ok(())
}

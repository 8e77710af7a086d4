//! `diffflow train`.

use crate::plot::{self, Panel, Style};
use crate::progress::TrainProgress;
use anyhow::{bail, Context, Result};
use clap::Args;
use diffflow::adjoint::GradMethod;
use diffflow::baselines::cnf::Trace;
use diffflow::checkpoint::atomic_write;
use diffflow::config::{ModelKind, NanAction, Precision, Preset, RunConfig, Weights};
use diffflow::data::source::{Dequantize, FileSource};
use diffflow::data::{ImageDataset, ImageSource};
use diffflow::model::{Model, BEST_FILE, CONFIG_FILE, MODEL_FILE};
use diffflow::rng::{Rng, Stream};
use diffflow::sde::{Diffusion, GridKind, StepsSchedule};
use diffflow::train::Trainer;
use diffflow::validation::ValMetric;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Exit code of a run stopped by Ctrl-C (SIGINT) or SIGTERM after writing its checkpoint:
/// 128 + SIGINT, as shells report an interrupted program.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Flags that define a run: they cannot be changed when resuming one.
const RUN_FLAGS: &[&str] = &[
    "model",
    "dataset",
    "data_dir",
    "preset",
    "config",
    "out",
    "force",
    "batch",
    "steps",
    "beta",
    "grid",
    "g",
    "t_max",
    "lr",
    "seed",
    "noise",
    "grad",
    "precision",
    "width",
    "depth",
    "weights",
    "samples",
    "eps_groups",
    "cnf_trace",
    "checkpoint_every",
    "data",
    "columns",
    "delimiter",
    "header",
    "no_header",
    "dequantize",
    "val_data",
    "test_data",
    "val_fraction",
    "test_fraction",
    "validate_every",
    "val_metric",
    "val_points",
    "patience",
];

#[derive(Args)]
#[command(allow_negative_numbers = true)]
#[command(
    after_help = "Ctrl-C (or SIGTERM) stops after the current iteration, writes a \
checkpoint and exits with code 130; `diffflow train --resume DIR` continues the run exactly \
(same metrics lines and final checkpoint bytes as an uninterrupted run). A second Ctrl-C \
quits at once (the last checkpoint is intact: checkpoints are replaced atomically)."
)]
pub struct TrainArgs {
    /// Continue the run in DIR from its last checkpoint (weights, EMA, Adam moments, step,
    /// RNG state); its data are regenerated from its configuration. Only --iters (to train
    /// longer), --threads and the --on-nan options may be given with it.
    #[arg(long, value_name = "DIR", conflicts_with_all = RUN_FLAGS)]
    resume: Option<PathBuf>,
    /// On a NaN or infinity in the loss, gradients or state: stop (keeping the last good
    /// checkpoint), or restart from that checkpoint with a smaller learning rate.
    #[arg(long, value_name = "stop|restart")]
    on_nan: Option<String>,
    /// Learning-rate factor applied at each --on-nan restart, in (0, 1) (default 0.5).
    #[arg(long)]
    nan_lr_factor: Option<f64>,
    /// Most --on-nan restarts before giving up (default 3).
    #[arg(long)]
    nan_max_restarts: Option<usize>,
    /// Iterations between checkpoints (0: only at the end).
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// The model: diffflow (learned drift and score, the trajectory loss), ddpm-l (the VP
    /// SDE's frozen drift and an epsilon-net, trained by the same trajectory loss), ddpm-ls
    /// (the same model trained by the epsilon loss) or cnf (an FFJORD-style continuous
    /// normalizing flow trained by maximum likelihood). The baselines get the settings they
    /// need (DDPM: the VP SDE on [0.001, 1]; CNF: the ODE on [0, 1], 6 RK4 steps, a quarter
    /// of the batch) and one net with the parameters of DiffFlow's two; flags override them.
    #[arg(long, value_name = "KIND", default_value = "diffflow")]
    model: String,
    /// Built-in 2-D data set (default rings): olympic, rings, tree, sierpinski,
    /// sierpinski_hard, 2spirals, checkerboard, 8gaussians, moons, pinwheel, swissroll; or an
    /// image set: mnist, fashion-mnist (from --data-dir; implies --preset mnist) or
    /// digits-images (the built-in 8x8 digits; implies --preset digits-images). With
    /// --config, replaces the file's data set.
    #[arg(long)]
    dataset: Option<String>,
    /// Folder of the image set's IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte,
    /// t10k-…, each optionally .gz); nothing is downloaded.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Train on a data file instead of a built-in set: .csv, .tsv, .txt or .npy (f32/f64/int,
    /// C order), optionally .gz; one point per row. Constant columns are dropped, integer
    /// columns dequantised (see --dequantize), the rest standardised with statistics of the
    /// training split. Implies --preset tabular unless --preset or --config is given.
    #[arg(long, value_name = "FILE", conflicts_with = "dataset")]
    data: Option<PathBuf>,
    /// Columns of the data file to use, 0-based: "0-63" or "0,2,5-9" (default: all).
    #[arg(long, value_name = "SPEC")]
    columns: Option<String>,
    /// Delimiter of a text data file: "," ";" tab space "|" ":" (default: detected).
    #[arg(long)]
    delimiter: Option<String>,
    /// The first line of a text data file holds column names (default: detected).
    #[arg(long, conflicts_with = "no_header")]
    header: bool,
    /// The first line of a text data file is data (default: detected).
    #[arg(long)]
    no_header: bool,
    /// Dequantise integer-valued columns with U[0, 1) noise: auto (those of the training
    /// split, if any), on (an error if none), off.
    #[arg(long, value_name = "auto|on|off")]
    dequantize: Option<String>,
    /// Validation points from this file (same columns) instead of a split of the data file.
    #[arg(long, value_name = "FILE")]
    val_data: Option<PathBuf>,
    /// Test points from this file (same columns) instead of a split of the data file.
    #[arg(long, value_name = "FILE")]
    test_data: Option<PathBuf>,
    /// Fraction of the data file held out for validation when there is no --val-data
    /// (default 0.1; 0: none). The split is seeded by --seed.
    #[arg(long)]
    val_fraction: Option<f64>,
    /// Fraction of the data file held out for testing when there is no --test-data
    /// (default 0.1; 0: none).
    #[arg(long)]
    test_fraction: Option<f64>,
    /// Validate every K iterations and at the end, keeping the best model in
    /// best.safetensors (0: off; tabular preset: 100).
    #[arg(long, value_name = "K")]
    validate_every: Option<usize>,
    /// Validation metric: elbo (negative ELBO, cheap) or nll (probability flow; the tabular
    /// preset's, on its first 1000 validation points). Default: the preset's.
    #[arg(long)]
    val_metric: Option<String>,
    /// Validation points used (default 0: all).
    #[arg(long)]
    val_points: Option<usize>,
    /// Stop training after P validations without improvement (default 0: never).
    #[arg(long, value_name = "P")]
    patience: Option<usize>,
    /// Start from a named configuration: quick (minutes on 2 cores; the default), paper-2d
    /// (the authors' 2-D setup), tabular (data files; the default with --data), mnist
    /// (U-Nets on MNIST, CPU-sized; needs --data-dir) or digits-images (tiny U-Nets on the
    /// built-in 8x8 digits, seconds).
    #[arg(long)]
    preset: Option<String>,
    /// Read the whole configuration from a TOML file (as written to config.toml); flags
    /// given as well override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output folder (default runs/DATASET).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Overwrite a run already in the output folder.
    #[arg(long)]
    force: bool,
    /// Training iterations.
    #[arg(long)]
    iters: Option<usize>,
    /// Batch size.
    #[arg(long)]
    batch: Option<usize>,
    /// Number of steps N: "30", or progressive "5,10@500,30@2000" (N@iteration).
    #[arg(long)]
    steps: Option<String>,
    /// Grid exponent beta (> 0).
    #[arg(long)]
    beta: Option<f64>,
    /// Time grid: fixed (L_beta) or flexible (random inner points per batch).
    #[arg(long)]
    grid: Option<String>,
    /// Diffusion g(t): a constant ("0.2"); "linear:START:END" (linear in t from START at
    /// t = 0 to END at t = T); "vp" (the VP SDE of DDPM, g = sqrt(beta(t)) with beta from 0.1
    /// to 20 over [0, 1]); or "vp:BETA_MIN:BETA_MAX".
    #[arg(long)]
    g: Option<String>,
    /// Final time T.
    #[arg(long)]
    t_max: Option<f64>,
    /// Learning rate (both nets).
    #[arg(long)]
    lr: Option<f64>,
    /// Seed of everything random.
    #[arg(long)]
    seed: Option<u64>,
    /// Data-set noise level (e.g. the rings' radial std).
    #[arg(long)]
    noise: Option<f64>,
    /// Gradient: adjoint (memory flat in N) or naive (backprop through all steps).
    #[arg(long)]
    grad: Option<String>,
    /// Precision: f32 or f64.
    #[arg(long)]
    precision: Option<String>,
    /// Hidden width of both nets.
    #[arg(long)]
    width: Option<usize>,
    /// Number of hidden layers of both nets.
    #[arg(long)]
    depth: Option<usize>,
    /// Worker threads (results do not depend on it).
    #[arg(long)]
    threads: Option<usize>,
    /// Weights used for sampling and evaluation: ema or live.
    #[arg(long, alias = "sample-weights")]
    weights: Option<String>,
    /// Number of samples drawn for samples.png.
    #[arg(long)]
    samples: Option<usize>,
    /// DDPM (L_s): time groups per batch of the epsilon loss (default 10).
    #[arg(long)]
    eps_groups: Option<usize>,
    /// CNF: divergence of the training solve, exact or hutchinson (default: exact up to 8
    /// dimensions, hutchinson above).
    #[arg(long, value_name = "exact|hutchinson")]
    cnf_trace: Option<String>,
}

impl TrainArgs {
    /// The run's configuration, and whether the width is still to be chosen from the data's
    /// dimension (the tabular preset without --width or --config). A baseline's net is sized
    /// to DiffFlow's once the data are read (see [`start`]).
    fn config(&self) -> Result<(RunConfig, bool)> {
        let image_set = self
            .dataset
            .as_deref()
            .and_then(|d| d.parse::<ImageDataset>().ok());
        let preset = match (&self.preset, &self.data, image_set) {
            (Some(p), _, _) => p.parse::<Preset>()?,
            (None, Some(_), _) => Preset::Tabular,
            (None, None, Some(ImageDataset::Digits)) => Preset::DigitsImages,
            (None, None, Some(_)) => Preset::Mnist,
            (None, None, None) => Preset::Quick,
        };
        let dataset = self.dataset.as_deref().unwrap_or(match preset {
            Preset::Mnist => "mnist",
            Preset::DigitsImages => "digits-images",
            _ => "rings",
        });
        let image_set = image_set.or_else(|| dataset.parse::<ImageDataset>().ok());
        let mut c = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read config {}", p.display()))?;
                RunConfig::from_toml(&text).with_context(|| format!("config {}", p.display()))?
            }
            None => RunConfig::preset(preset, dataset).for_model(self.model.parse::<ModelKind>()?),
        };
        if self.config.is_some() && self.model != "diffflow" {
            bail!("--model with --config: the model kind is the file's (model.kind)");
        }
        if let Some(path) = &self.data {
            // Absolute, so that the run resumes and evaluates from any folder.
            let abs = std::fs::canonicalize(path)
                .with_context(|| format!("cannot read --data {}", path.display()))?;
            c.data.dataset = data_name(&abs);
            c.data.file = Some(FileSource::new(abs));
        } else if self.config.is_none() || self.dataset.is_some() {
            c.data.dataset = dataset.to_string();
            c.data.file = None;
            c.data.image = match image_set {
                Some(set) if c.data.image.as_ref().is_some_and(|i| i.set == set) => c.data.image,
                Some(set) => Some(ImageSource::new(set, None)),
                None => None,
            };
        }
        if let Some(dir) = &self.data_dir {
            let Some(img) = c.data.image.as_mut() else {
                bail!("--data-dir is the folder of an image set: give --dataset mnist or fashion-mnist");
            };
            if !img.set.needs_dir() {
                bail!("--data-dir: {} is built in and takes no folder", img.set);
            }
            // Absolute, so that the run resumes and evaluates from any folder.
            img.dir = Some(
                std::fs::canonicalize(dir)
                    .with_context(|| format!("cannot read --data-dir {}", dir.display()))?,
            );
        }
        self.apply_file_flags(&mut c)?;
        let v = &mut c.train.validation;
        if let Some(k) = self.validate_every {
            v.every = k;
        }
        if let Some(m) = &self.val_metric {
            v.metric = m.parse::<ValMetric>()?;
        }
        if let Some(n) = self.val_points {
            v.points = n;
        }
        if let Some(p) = self.patience {
            v.patience = p;
        }
        let t = &mut c.train;
        if let Some(v) = self.iters {
            t.iters = v;
            if preset == Preset::Mnist && self.config.is_none() && self.steps.is_none() {
                t.steps = diffflow::config::progressive(v);
            }
        }
        if let Some(v) = self.batch {
            t.batch = v;
        }
        if let Some(v) = &self.steps {
            t.steps = StepsSchedule::parse(v)?;
        }
        if let Some(v) = &self.grid {
            t.grid = v.parse::<GridKind>()?;
        }
        if let Some(v) = self.lr {
            t.lr = v;
            t.lr_drift = None;
            t.lr_score = None;
        }
        if let Some(v) = self.seed {
            t.seed = v;
        }
        if let Some(v) = &self.grad {
            t.grad = v.parse::<GradMethod>()?;
        }
        let m = &mut c.model;
        if let Some(v) = self.beta {
            m.grid.beta = v;
        }
        if let Some(v) = self.t_max {
            m.grid.t_max = v;
        }
        if let Some(v) = &self.g {
            m.g = Diffusion::parse(v, m.grid.t_max)?;
        }
        if let Some(v) = &self.precision {
            m.precision = match v.as_str() {
                "f32" => Precision::F32,
                "f64" => Precision::F64,
                _ => bail!("unknown precision '{v}' (expected f32 or f64)"),
            };
        }
        if m.unet.is_some() && (self.width.is_some() || self.depth.is_some()) {
            bail!("--width and --depth size MLPs; this run's nets are U-Nets (model.unet in a --config)");
        }
        if let Some(v) = self.width {
            m.net.width = v;
        }
        if let Some(v) = self.depth {
            m.net.depth = v;
        }
        if let Some(v) = self.noise {
            c.data.noise = Some(v);
        }
        if let Some(v) = &self.weights {
            c.sample.weights = v.parse::<Weights>()?;
        }
        if let Some(v) = self.eps_groups {
            c.train.eps_groups = v;
        }
        if let Some(v) = &self.cnf_trace {
            c.train.cnf_trace = v.parse::<Trace>()?;
        }
        if let Some(v) = self.samples {
            c.sample.n = v;
        }
        if let Some(v) = self.checkpoint_every {
            c.train.checkpoint_every = v;
        }
        self.apply_operational(&mut c)?;
        let auto_width = self.config.is_none() && self.width.is_none();
        Ok((c, auto_width && preset == Preset::Tabular))
    }

    /// The options of the data file (--columns … --test-fraction); they need a data file.
    fn apply_file_flags(&self, c: &mut RunConfig) -> Result<()> {
        let given = self.columns.is_some()
            || self.delimiter.is_some()
            || self.header
            || self.no_header
            || self.dequantize.is_some()
            || self.val_data.is_some()
            || self.test_data.is_some()
            || self.val_fraction.is_some()
            || self.test_fraction.is_some();
        let Some(f) = c.data.file.as_mut() else {
            if given {
                bail!(
                    "--columns, --delimiter, --header, --dequantize, --val-data, --test-data and \
                     the fractions need --data FILE (or a config with [data.file])"
                );
            }
            return Ok(());
        };
        if let Some(v) = &self.columns {
            f.columns = Some(v.clone());
        }
        if let Some(v) = &self.delimiter {
            f.delimiter = Some(match v.as_str() {
                "tab" | "\\t" => '\t',
                "space" => ' ',
                s if s.chars().count() == 1 => s.chars().next().unwrap_or(','),
                s => bail!("--delimiter '{s}': give one character, tab or space"),
            });
        }
        if self.header {
            f.header = Some(true);
        }
        if self.no_header {
            f.header = Some(false);
        }
        if let Some(v) = &self.dequantize {
            f.dequantize = v.parse::<Dequantize>()?;
        }
        let abs = |p: &PathBuf, what: &str| {
            std::fs::canonicalize(p).with_context(|| format!("cannot read {what} {}", p.display()))
        };
        if let Some(p) = &self.val_data {
            f.validation = Some(abs(p, "--val-data")?);
            f.val_fraction = None;
        }
        if let Some(p) = &self.test_data {
            f.test = Some(abs(p, "--test-data")?);
            f.test_fraction = None;
        }
        if let Some(v) = self.val_fraction {
            f.val_fraction = Some(v);
        }
        if let Some(v) = self.test_fraction {
            f.test_fraction = Some(v);
        }
        Ok(())
    }

    /// Flags that may also change on resume: threads and the divergence policy.
    fn apply_operational(&self, c: &mut RunConfig) -> Result<()> {
        if let Some(v) = self.threads {
            c.train.threads = v;
        }
        if let Some(v) = &self.on_nan {
            c.train.on_nan.action = v.parse::<NanAction>()?;
        }
        if let Some(v) = self.nan_lr_factor {
            c.train.on_nan.lr_factor = v;
        }
        if let Some(v) = self.nan_max_restarts {
            c.train.on_nan.max_restarts = v;
        }
        Ok(())
    }
}

/// Creates the output folder and checks that it is writable.
fn prepare_out(dir: &Path, force: bool) -> Result<()> {
    if dir.join(MODEL_FILE).exists() && !force {
        bail!(
            "{} already holds a run (use --force to overwrite it, or another --out)",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create output folder {}", dir.display()))?;
    let probe = dir.join(".diffflow-write-test");
    std::fs::write(&probe, b"")
        .with_context(|| format!("output folder {} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

pub fn run(args: TrainArgs) -> Result<()> {
    let (mut trainer, out) = match &args.resume {
        Some(dir) => resume(&args, dir)?,
        None => start(&args)?,
    };
    let cfg = trainer.cfg.clone();
    for note in &trainer.data.notes {
        eprintln!("data: {note}");
    }
    eprintln!(
        "training {} on {} ({} points, d = {}): {} parameters, {} iterations, batch {}, N = {}{}",
        cfg.model.kind,
        cfg.data.dataset,
        trainer.data.len(),
        trainer.data.dim,
        trainer.flow.num_params(),
        cfg.train.iters,
        cfg.train.batch,
        cfg.train.steps,
        if trainer.step > 0 {
            format!(", resuming at iteration {}", trainer.step)
        } else {
            String::new()
        }
    );
    let stop = install_stop_handler()?;
    let first = trainer.step;
    let mut progress = TrainProgress::new();
    let result = trainer.run(Some(&out), &mut progress, Some(&stop));
    progress.finish();
    match result {
        Err(e @ diffflow::Error::Interrupted { .. }) => {
            eprintln!(
                "{e}: checkpoint saved in {}. Resume with: diffflow train --resume {}",
                out.display(),
                out.display()
            );
            return Err(e.into());
        }
        Err(e @ diffflow::Error::NonFinite { .. }) => {
            return Err(
                match Model::load(&out, Some(diffflow::model::Checkpoint::Last), None) {
                    Ok(run) => anyhow::anyhow!(
                        "{e}; the last good checkpoint (iteration {}) is in {}: continue from it \
                     with a smaller learning rate by `diffflow train --resume {} --on-nan \
                     restart` (see --nan-lr-factor)",
                        run.step,
                        out.display(),
                        out.display()
                    ),
                    Err(_) => e.into(),
                },
            );
        }
        other => other?,
    }
    let secs = progress.elapsed();
    let vs = trainer.validation_state().clone();
    if let Some(best) = vs.best {
        eprintln!(
            "{}best validation {} {:.4} nats (standardised units) at iteration {}: {}",
            if vs.stopped {
                format!(
                    "stopped early at iteration {}: no improvement in {} validations; ",
                    trainer.step, cfg.train.validation.patience
                )
            } else {
                String::new()
            },
            cfg.train.validation.metric,
            best,
            vs.best_step,
            out.join(BEST_FILE).display()
        );
    }
    eprintln!(
        "trained {} iterations in {:.1} s ({:.2} it/s){}",
        trainer.step - first,
        secs,
        (trainer.step - first) as f64 / secs.max(1e-9),
        match trainer.restarts() {
            0 => String::new(),
            r => format!(
                "; {r} divergence restart(s), learning rate x {:.3e}",
                trainer.lr_scale()
            ),
        }
    );
    // Ctrl-C during the final pictures and evaluation stops them too; the model is saved,
    // and resuming the complete run writes them.
    let stopped = || -> Result<()> {
        if stop.load(Ordering::SeqCst) {
            eprintln!(
                "interrupted after training: the model is saved in {}; `diffflow train \
                 --resume {}` writes samples.png and the held-out evaluation",
                out.display(),
                out.display()
            );
            return Err(diffflow::Error::Interrupted { step: trainer.step }.into());
        }
        Ok(())
    };
    stopped()?;
    write_samples(&trainer, &out)?;
    stopped()?;
    // A resumed run that was complete may already have its held-out line.
    if !has_held_out(&out, trainer.step) {
        write_held_out(&trainer, &out)?;
    }
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// Whether `metrics.jsonl` in `out` already holds the held-out evaluation of `step`.
fn has_held_out(out: &Path, step: usize) -> bool {
    let Ok(text) = std::fs::read_to_string(out.join(diffflow::train::METRICS_FILE)) else {
        return false;
    };
    text.lines().any(|l| {
        serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
            v.get("test_nll").is_some()
                && v.get("step").and_then(|s| s.as_u64()) == Some(step as u64)
        })
    })
}

/// The name of a data file: its file name without `.gz` and the format's extension.
fn data_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    match name.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem.to_string(),
        _ => name.to_string(),
    }
}

/// A fresh run: configuration from the flags, a new output folder.
fn start(args: &TrainArgs) -> Result<(Trainer, PathBuf)> {
    let (mut cfg, tabular_width) = args.config()?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&cfg.data.dataset));
    let data = cfg.training_data()?;
    if tabular_width {
        cfg.model.net.width = diffflow::config::tabular_width(data.dim);
    }
    cfg.fit_to_data(data.dim, args.config.is_none() && args.width.is_none());
    if let Some(v) = &args.cnf_trace {
        cfg.train.cnf_trace = v.parse::<Trace>()?;
    }
    if cfg.data.file.is_some() || cfg.data.image.is_some() {
        // Recorded for people reading config.toml.
        cfg.data.train_size = data.len();
        cfg.data.test_size = data.test.len() / data.dim;
    }
    cfg.validate()?;
    prepare_out(&out, args.force)?;
    atomic_write(&out.join(CONFIG_FILE), cfg.to_toml()?.as_bytes())?;
    Ok((Trainer::new(cfg, data)?, out))
}

/// A resumed run: everything from the checkpoint in `dir`, the data regenerated from its
/// configuration; only --iters, --threads and the --on-nan options may change.
fn resume(args: &TrainArgs, dir: &Path) -> Result<(Trainer, PathBuf)> {
    let mut trainer = Trainer::resume_with(dir, RunConfig::training_data)
        .with_context(|| format!("cannot resume the run in {}", dir.display()))?;
    let before = trainer.cfg.clone();
    let mut cfg = before.clone();
    args.apply_operational(&mut cfg)?;
    cfg.validate()?;
    trainer.cfg = cfg;
    if let Some(iters) = args.iters {
        trainer.set_iters(iters)?;
    }
    if trainer.cfg != before {
        atomic_write(&dir.join(CONFIG_FILE), trainer.cfg.to_toml()?.as_bytes())?;
    }
    if trainer.validation_state().stopped {
        eprintln!(
            "the run in {} stopped early at iteration {} (validation patience)",
            dir.display(),
            trainer.step
        );
    } else if trainer.step >= trainer.cfg.train.iters {
        eprintln!(
            "the run in {} is complete ({} iterations); give --iters to train longer",
            dir.display(),
            trainer.step
        );
    }
    Ok((trainer, dir.to_path_buf()))
}

/// Ctrl-C and SIGTERM set the returned flag: training stops after the current iteration with
/// a checkpoint. A second signal quits at once.
fn install_stop_handler() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\nstopped without a new checkpoint (the last one is intact)");
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        }
        eprintln!("\nstopping after this iteration to write a checkpoint (Ctrl-C again: quit now)");
    })
    .context("cannot install the Ctrl-C handler")?;
    Ok(stop)
}

/// Held-out points evaluated at the end of training (image runs: 200, as each costs an ODE
/// solve through two U-Nets; `diffflow eval` measures more).
const HELD_OUT_POINTS: usize = 2000;
const HELD_OUT_IMAGES: usize = 200;

/// Probability-flow NLL and (not for a CNF) negative ELBO of (up to 2000) held-out points
/// with the sampling weights of the best checkpoint (with validation) or the final model,
/// appended to `metrics.jsonl`.
fn write_held_out(trainer: &Trainer, out: &Path) -> Result<()> {
    let points = match trainer.cfg.data.image {
        Some(_) => HELD_OUT_IMAGES,
        None => HELD_OUT_POINTS,
    };
    let n = (trainer.data.test.len() / trainer.data.dim.max(1)).min(points);
    let bars = crate::progress::EvalBars::new(n);
    let Some((rec, ev)) = trainer.evaluate_held_out(out, points, &|phase, k| bars.inc(phase, k))?
    else {
        return Ok(());
    };
    bars.finish();
    let elbo = match ev.elbo {
        Some(e) => format!(", negative ELBO {:.4} ± {:.4} nats", e.mean, e.stderr),
        None => String::new(),
    };
    eprintln!(
        "held-out ({} points{}): NLL {:.4} ± {:.4} nats in data units ({:.4} bits/dim; {:.4} \
         standardised){elbo}, NFE {:.0}, {:.1} s",
        rec.test_points,
        match rec.model_step {
            Some(s) => format!(", best checkpoint of iteration {s}"),
            None => String::new(),
        },
        rec.test_nll,
        rec.test_nll_stderr,
        rec.test_bits_per_dim,
        rec.test_nll_standardised,
        ev.nfe,
        ev.seconds_nll + ev.seconds_elbo
    );
    Ok(())
}

/// Draws `cfg.sample.n` points with the run's sampler on the worker threads and writes
/// `samples.png`: data (held-out points) beside samples, in data units.
fn write_samples(trainer: &Trainer, out: &Path) -> Result<()> {
    let cfg = &trainer.cfg;
    let model = trainer.model(None)?;
    let mut rng = Rng::stream(cfg.train.seed, Stream::Sample);
    let samples = model
        .sample(
            cfg.sample.n,
            &model.default_sampler(),
            diffflow::sample::SAMPLE_CHUNK,
            cfg.train.threads,
            &mut rng,
        )?
        .x;
    if model.image().is_some() {
        return crate::images::write_run_pictures(trainer, &model, &samples, out);
    }
    let d = trainer.data.dim;
    let mut data = if trainer.data.test.is_empty() {
        trainer.data.train[..trainer.data.train.len().min(d * cfg.sample.n)].to_vec()
    } else {
        trainer.data.test.clone()
    };
    trainer.data.standardizer.invert(&mut data);
    // Higher-dimensional data: the first two modelled columns.
    let (data, samples, what) = if d == 2 {
        (data, samples, String::new())
    } else {
        let cols = match &trainer.data.columns {
            Some(c) => (c.kept[0], c.kept[1.min(d - 1)]),
            None => (0, 1.min(d - 1)),
        };
        let two = |x: &[f64]| -> Vec<f64> {
            x.chunks_exact(d)
                .flat_map(|r| [r[0], r[1.min(d - 1)]])
                .collect()
        };
        (
            two(&data),
            two(&samples),
            format!(", columns {} and {}", cols.0, cols.1),
        )
    };
    let panels = [
        Panel {
            title: format!("data ({} points)", data.len() / 2),
            points: &data,
            labels: None,
            style: Style::Histogram,
        },
        Panel {
            title: format!(
                "{} samples ({}, N = {}, lambda = {})",
                cfg.model.kind,
                samples.len() / 2,
                model.sample_n(),
                cfg.sample.lambda
            ),
            points: &samples,
            labels: None,
            style: Style::Histogram,
        },
    ];
    let title = format!("{}: {} iterations{what}", cfg.data.dataset, trainer.step);
    plot::panels_row(&out.join("samples.png"), &title, &panels, None)?;
    Ok(())
}

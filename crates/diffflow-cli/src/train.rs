//! `diffflow train`.

use crate::plot::{self, Panel, Style};
use crate::progress::TrainProgress;
use anyhow::{bail, Context, Result};
use clap::Args;
use diffflow::adjoint::GradMethod;
use diffflow::checkpoint::atomic_write;
use diffflow::config::{NanAction, Precision, Preset, RunConfig, Weights};
use diffflow::flow::Steps;
use diffflow::likelihood::{ElboOptions, NllOptions};
use diffflow::rng::{Rng, Stream};
use diffflow::sde::{fixed_grid, Diffusion, GridKind, StepsSchedule};
use diffflow::train::{append_metrics, HeldOutRecord, TrainData, Trainer, CONFIG_FILE, MODEL_FILE};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Exit code of a run stopped by Ctrl-C (SIGINT) or SIGTERM after writing its checkpoint:
/// 128 + SIGINT, as shells report an interrupted program.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Flags that define a run: they cannot be changed when resuming one.
const RUN_FLAGS: [&str; 21] = [
    "dataset",
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
    "sample_weights",
    "samples",
    "checkpoint_every",
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
    /// Built-in 2-D data set: olympic, rings, tree, sierpinski, sierpinski_hard, 2spirals,
    /// checkerboard, 8gaussians, moons, pinwheel, swissroll.
    #[arg(long, default_value = "rings")]
    dataset: String,
    /// Start from a named configuration: quick (minutes on 2 cores) or paper-2d (the
    /// authors' 2-D setup).
    #[arg(long, default_value = "quick")]
    preset: String,
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
    /// Diffusion g: a constant ("0.2") or "linear:START:END".
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
    /// Weights used for sampling: ema or live.
    #[arg(long)]
    sample_weights: Option<String>,
    /// Number of samples drawn for samples.png.
    #[arg(long)]
    samples: Option<usize>,
}

impl TrainArgs {
    fn config(&self) -> Result<RunConfig> {
        let mut c = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read config {}", p.display()))?;
                RunConfig::from_toml(&text).with_context(|| format!("config {}", p.display()))?
            }
            None => RunConfig::preset(self.preset.parse::<Preset>()?, &self.dataset),
        };
        if self.config.is_none() || self.dataset != "rings" {
            c.data.dataset = self.dataset.clone();
        }
        let t = &mut c.train;
        if let Some(v) = self.iters {
            t.iters = v;
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
        if let Some(v) = self.width {
            m.net.width = v;
        }
        if let Some(v) = self.depth {
            m.net.depth = v;
        }
        if let Some(v) = self.noise {
            c.data.noise = Some(v);
        }
        if let Some(v) = &self.sample_weights {
            c.sample.weights = v.parse::<Weights>()?;
        }
        if let Some(v) = self.samples {
            c.sample.n = v;
        }
        if let Some(v) = self.checkpoint_every {
            c.train.checkpoint_every = v;
        }
        self.apply_operational(&mut c)?;
        c.validate()?;
        Ok(c)
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
    eprintln!(
        "training DiffFlow on {} ({} points, d = {}): {} parameters, {} iterations, batch {}, N = {}{}",
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
            return Err(match diffflow::train::load_run(&out, None) {
                Ok(run) => anyhow::anyhow!(
                    "{e}; the last good checkpoint (iteration {}) is in {}: continue from it \
                     with a smaller learning rate by `diffflow train --resume {} --on-nan \
                     restart` (see --nan-lr-factor)",
                    run.step,
                    out.display(),
                    out.display()
                ),
                Err(_) => e.into(),
            });
        }
        other => other?,
    }
    let secs = progress.elapsed();
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

/// A fresh run: configuration from the flags, a new output folder.
fn start(args: &TrainArgs) -> Result<(Trainer, PathBuf)> {
    let cfg = args.config()?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&cfg.data.dataset));
    let data = build_data(&cfg)?;
    prepare_out(&out, args.force)?;
    atomic_write(&out.join(CONFIG_FILE), cfg.to_toml()?.as_bytes())?;
    Ok((Trainer::new(cfg, data)?, out))
}

/// The training data of a configuration: a fresh run and a resumed one must build them the
/// same way (resume checks them against the checkpoint's standardisation).
fn build_data(cfg: &RunConfig) -> diffflow::Result<TrainData> {
    TrainData::toy(&cfg.data, cfg.train.seed)
}

/// A resumed run: everything from the checkpoint in `dir`, the data regenerated from its
/// configuration; only --iters, --threads and the --on-nan options may change.
fn resume(args: &TrainArgs, dir: &Path) -> Result<(Trainer, PathBuf)> {
    let mut trainer = Trainer::resume_with(dir, build_data)
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
    if trainer.step >= trainer.cfg.train.iters {
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

/// Held-out points evaluated at the end of training.
const HELD_OUT_POINTS: usize = 2000;

/// Probability-flow NLL and negative ELBO of (up to 2000) held-out points with the sampling
/// weights, appended to `metrics.jsonl` as a [`HeldOutRecord`].
fn write_held_out(trainer: &Trainer, out: &Path) -> Result<()> {
    let d = trainer.data.dim;
    let n = (trainer.data.test.len() / d).min(HELD_OUT_POINTS);
    if n == 0 {
        return Ok(());
    }
    let cfg = &trainer.cfg;
    let flow = trainer.sampling_flow(cfg.sample.weights)?;
    let threads = cfg.train.threads;
    let settings = crate::eval::Settings {
        nll: NllOptions {
            threads,
            ..NllOptions::default()
        },
        t: vec![cfg.model.grid.t_min, cfg.model.grid.t_max],
        elbo: Some((
            crate::eval::elbo_steps(cfg, &flow, None),
            ElboOptions {
                threads,
                ..ElboOptions::default()
            },
        )),
        seed: cfg.train.seed,
        progress: true,
    };
    let x = &trainer.data.test[..n * d];
    let r = crate::eval::evaluate(&flow, &trainer.data.standardizer, x, &settings)?;
    let rec = HeldOutRecord {
        step: trainer.step,
        test_nll: r.nll,
        test_nll_stderr: r.nll_stderr,
        test_nll_standardised: r.nll_standardised,
        test_bits_per_dim: r.bits_per_dim,
        test_elbo: r.elbo.unwrap_or(f64::NAN),
        test_elbo_stderr: r.elbo_stderr.unwrap_or(f64::NAN),
        test_elbo_standardised: r.elbo_standardised.unwrap_or(f64::NAN),
        test_points: n,
        nfe: r.nfe,
        weights: cfg.sample.weights,
    };
    append_metrics(out, &rec)?;
    eprintln!(
        "held-out ({n} points): NLL {:.4} ± {:.4} nats ({:.4} bits/dim), negative ELBO {:.4} ± \
         {:.4} nats, NFE {:.0}, {:.1} s",
        rec.test_nll,
        rec.test_nll_stderr,
        rec.test_bits_per_dim,
        rec.test_elbo,
        rec.test_elbo_stderr,
        r.nfe,
        r.seconds
    );
    Ok(())
}

/// Draws `cfg.sample.n` points with the configured sampler and writes `samples.png`: data
/// (held-out points) beside samples, in data units.
fn write_samples(trainer: &Trainer, out: &Path) -> Result<()> {
    let cfg = &trainer.cfg;
    let flow = trainer.sampling_flow(cfg.sample.weights)?;
    let n_steps = cfg.sample.steps.unwrap_or(cfg.train.steps.last());
    let steps = Steps::new(fixed_grid(&cfg.model.grid, n_steps), &flow.diffusion);
    let mut rng = Rng::stream(cfg.train.seed, Stream::Sample);
    let x = diffflow::sample::sample(
        &flow,
        cfg.sample.n,
        &steps,
        cfg.sample.lambda,
        5000,
        &mut rng,
    )?;
    let mut samples = x.flatten_all()?.to_vec1::<f64>()?;
    trainer.data.standardizer.invert(&mut samples);
    let mut data = if trainer.data.test.is_empty() {
        trainer.data.train[..trainer.data.train.len().min(2 * cfg.sample.n)].to_vec()
    } else {
        trainer.data.test.clone()
    };
    trainer.data.standardizer.invert(&mut data);
    let panels = [
        Panel {
            title: format!("data ({} points)", data.len() / 2),
            points: &data,
            labels: None,
            style: Style::Histogram,
        },
        Panel {
            title: format!(
                "DiffFlow samples ({}, N = {n_steps}, lambda = {})",
                samples.len() / 2,
                cfg.sample.lambda
            ),
            points: &samples,
            labels: None,
            style: Style::Histogram,
        },
    ];
    let title = format!("{}: {} iterations", cfg.data.dataset, trainer.step);
    plot::panels_row(&out.join("samples.png"), &title, &panels, None)?;
    Ok(())
}

//! `diffflow train`.

use crate::plot::{self, Panel, Style};
use crate::progress::TrainProgress;
use anyhow::{bail, Context, Result};
use clap::Args;
use diffflow::adjoint::GradMethod;
use diffflow::checkpoint::atomic_write;
use diffflow::config::{Precision, Preset, RunConfig, Weights};
use diffflow::flow::Steps;
use diffflow::likelihood::{ElboOptions, NllOptions};
use diffflow::rng::{Rng, Stream};
use diffflow::sde::{fixed_grid, Diffusion, GridKind, StepsSchedule};
use diffflow::train::{append_metrics, HeldOutRecord, TrainData, Trainer, CONFIG_FILE, MODEL_FILE};
use std::path::{Path, PathBuf};

#[derive(Args)]
#[command(allow_negative_numbers = true)]
pub struct TrainArgs {
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
        if let Some(v) = self.threads {
            t.threads = v;
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
        c.validate()?;
        Ok(c)
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
    let cfg = args.config()?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&cfg.data.dataset));
    let data = TrainData::toy(&cfg.data, cfg.train.seed)?;
    prepare_out(&out, args.force)?;
    atomic_write(&out.join(CONFIG_FILE), cfg.to_toml()?.as_bytes())?;
    let mut trainer = Trainer::new(cfg.clone(), data)?;
    eprintln!(
        "training DiffFlow on {} ({} points, d = {}): {} parameters, {} iterations, batch {}, N = {}",
        cfg.data.dataset,
        trainer.data.len(),
        trainer.data.dim,
        trainer.flow.num_params(),
        cfg.train.iters,
        cfg.train.batch,
        cfg.train.steps
    );
    let mut progress = TrainProgress::new();
    let result = trainer.run(Some(&out), &mut progress, None);
    progress.finish();
    result?;
    let secs = progress.elapsed();
    eprintln!(
        "trained {} iterations in {:.1} s ({:.2} it/s)",
        trainer.step,
        secs,
        trainer.step as f64 / secs.max(1e-9)
    );
    write_samples(&trainer, &out)?;
    write_held_out(&trainer, &out)?;
    eprintln!("wrote {}", out.display());
    Ok(())
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

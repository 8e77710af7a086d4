//! `diffflow compare-images`: DiffFlow against DDPM (L_s) on an image set, each on U-Nets
//! with matched parameter counts (the DDPM's one net has the parameters of DiffFlow's two)
//! and a matched budget; writes both sample grids, bits/dim (negative ELBO and
//! probability-flow NLL), the FID of LeNet features, and FID against the sampling N (the
//! Tables 4-5 analogue) as `report.md` and `results.json`.

use crate::images;
use anyhow::{bail, Context, Result};
use clap::Args;
use diffflow::config::{ModelKind, Preset, RunConfig, Weights};
use diffflow::data::{ImageDataset, ImageSource, TrainData};
use diffflow::likelihood::NllOptions;
use diffflow::model::{Model, SampleGrid, Sampler};
use diffflow::rng::{Rng, Stream};
use diffflow::train::budget::{fit_budget, Budget, BudgetPlan};
use diffflow::train::Trainer;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Args)]
pub struct CompareImagesArgs {
    /// Image set: digits-images (built in, tiny U-Nets), mnist or fashion-mnist (--data-dir).
    #[arg(long, default_value = "digits-images")]
    dataset: String,
    /// Folder of the IDX files of mnist / fashion-mnist.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Matched budget: training iterations per model (default: the preset's).
    #[arg(long, conflicts_with = "cpu_seconds")]
    iters: Option<usize>,
    /// Matched budget: CPU seconds of training per model (all threads; Linux).
    #[arg(long)]
    cpu_seconds: Option<f64>,
    /// Batch size of both models (default: the preset's).
    #[arg(long)]
    batch: Option<usize>,
    /// DiffFlow's learning rate (default: the preset's, the authors' 2e-4; a short CPU budget
    /// may want more).
    #[arg(long, value_name = "LR")]
    diffflow_lr: Option<f64>,
    /// DDPM (L_s)'s learning rate (default: the preset's).
    #[arg(long, value_name = "LR")]
    ddpm_lr: Option<f64>,
    /// Test images for bits/dim.
    #[arg(long, default_value_t = 100)]
    points: usize,
    /// Samples per FID (28x28 sets only).
    #[arg(long, default_value_t = 1000)]
    fid_samples: usize,
    /// Sampling N of the FID table.
    #[arg(long, default_value = "5,10,20,50,100")]
    ns: String,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Seed of everything random.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Worker threads.
    #[arg(long)]
    threads: Option<usize>,
}

/// One model's results.
#[derive(Serialize)]
struct ModelResult {
    model: String,
    params: usize,
    iters: usize,
    train_seconds: f64,
    train_cpu_seconds: f64,
    test_images: usize,
    bits_per_dim_ode: f64,
    bits_per_dim_ode_stderr: f64,
    bits_per_dim_elbo: f64,
    bits_per_dim_elbo_stderr: f64,
    /// The run's sampler: N, grid, Tweedie.
    sampler: String,
    fid_lenet: Option<f64>,
    class_kl_to_uniform: Option<f64>,
    /// (N, FID) with the run's sampler at each N.
    fid_by_n: Vec<(usize, f64)>,
}

#[derive(Serialize)]
struct Results {
    dataset: String,
    budget: String,
    seed: u64,
    threads: usize,
    fid_samples: usize,
    models: Vec<ModelResult>,
}

/// The configuration of `kind`: the image preset of the set, the baseline's net matched to
/// DiffFlow's two, the flags' budget, batch, seed and threads.
fn config(args: &CompareImagesArgs, set: ImageDataset, kind: ModelKind) -> Result<RunConfig> {
    let preset = if set == ImageDataset::Digits {
        Preset::DigitsImages
    } else {
        Preset::Mnist
    };
    let mut c = RunConfig::preset(preset, set.name()).for_model(kind);
    if let Some(dir) = &args.data_dir {
        let dir = std::fs::canonicalize(dir)
            .with_context(|| format!("cannot read --data-dir {}", dir.display()))?;
        c.data.image = Some(ImageSource {
            dir: Some(dir),
            ..ImageSource::new(set, None)
        });
    }
    c.fit_to_data(set.shape().dim(), true);
    if let Some(b) = args.batch {
        c.train.batch = b;
    }
    let lr = match kind {
        ModelKind::DiffFlow => args.diffflow_lr,
        _ => args.ddpm_lr,
    };
    if let Some(lr) = lr {
        c.train.lr = lr;
    }
    c.train.seed = args.seed;
    c.train.threads = threads(args);
    c.train.lr_decay_every = 0;
    c.sample.weights = Weights::Ema;
    c.validate()?;
    Ok(c)
}

fn threads(args: &CompareImagesArgs) -> usize {
    args.threads
        .unwrap_or_else(diffflow::par::default_threads)
        .max(1)
}

/// DiffFlow's N stages over the budget (from its preset's progressive schedule); the DDPM's
/// ε loss has no N.
fn stages(c: &RunConfig) -> Vec<(f64, usize)> {
    if c.model.kind != ModelKind::DiffFlow {
        return Vec::new();
    }
    let iters = c.train.iters as f64;
    c.train
        .steps
        .stages()
        .iter()
        .map(|&(at, n)| (at as f64 / iters, n))
        .collect()
}

pub fn run(args: CompareImagesArgs) -> Result<()> {
    let set = args.dataset.parse::<ImageDataset>()?;
    let ns: Vec<usize> = args
        .ns
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("--ns '{}': expected numbers like 5,10,20", args.ns))?;
    if ns.is_empty() || ns.contains(&0) || args.points == 0 {
        bail!("--ns needs steps >= 1 and --points >= 1");
    }
    let kinds = [ModelKind::DiffFlow, ModelKind::DdpmLs];
    let cfgs = kinds
        .iter()
        .map(|&k| config(&args, set, k))
        .collect::<Result<Vec<_>>>()?;
    let data = cfgs[0].training_data()?;
    let budget = match (args.iters, args.cpu_seconds) {
        (_, Some(s)) => Budget::CpuSeconds(s),
        (Some(i), None) => Budget::Iters(i),
        (None, None) => Budget::Iters(cfgs[0].train.iters),
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let mut results = Vec::new();
    for cfg in cfgs {
        eprintln!("{}: training under {budget}", cfg.model.kind);
        let dir = args.out.join(cfg.model.kind.key());
        let (model, iters, secs, cpu) = train(&cfg, &data, budget, &dir)?;
        results.push(evaluate(&args, &model, &data, &ns, (iters, secs, cpu))?);
    }
    let r = Results {
        dataset: set.name().into(),
        budget: budget.to_string(),
        seed: args.seed,
        threads: threads(&args),
        fid_samples: args.fid_samples,
        models: results,
    };
    let json = serde_json::to_string_pretty(&r)?;
    diffflow::checkpoint::atomic_write(&args.out.join("results.json"), json.as_bytes())?;
    let md = markdown(&r, &ns);
    diffflow::checkpoint::atomic_write(&args.out.join("report.md"), md.as_bytes())?;
    print!("{md}");
    Ok(())
}

/// Trains `cfg` under `budget` with its preset's learning rate (no decay) and N stages and
/// saves the trained state as the run folder `dir` (for `diffflow sample` / `eval` later).
fn train(
    cfg: &RunConfig,
    data: &TrainData,
    budget: Budget,
    dir: &std::path::Path,
) -> Result<(Model, usize, f64, f64)> {
    let plan = BudgetPlan {
        budget,
        lr_decay: 1.0,
        lr_decays: 0,
        stages: stages(cfg),
        validations: 0,
    };
    let mut tr = Trainer::new(cfg.clone(), data.clone())?;
    let mut tenth = 0;
    let run = fit_budget(
        &mut tr,
        &plan,
        cfg.train.lr,
        &[],
        &NllOptions::default(),
        &mut |_, p| {
            if (p.fraction * 10.0) as usize > tenth {
                tenth = (p.fraction * 10.0) as usize;
                eprintln!(
                    "  {:>3.0}%: iteration {}, {:.1} s, loss {:.2}",
                    100.0 * p.fraction,
                    p.iters,
                    p.seconds,
                    p.loss
                );
            }
            Ok(true)
        },
        &mut |_| {},
    )?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    tr.save(dir)?;
    let model = tr.model(Some(Weights::Ema))?;
    Ok((model, run.iters, run.seconds, run.cpu_seconds))
}

/// Bits/dim, the sample grid and the FIDs of one trained model.
fn evaluate(
    args: &CompareImagesArgs,
    model: &Model,
    data: &TrainData,
    ns: &[usize],
    (iters, secs, cpu): (usize, f64, f64),
) -> Result<ModelResult> {
    let (shape, _) = images::image_of(model, "compare-images")?;
    let d = data.dim;
    let threads = threads(args);
    let mut test = data.test.clone();
    test.truncate(args.points.min(test.len() / d) * d);
    data.standardizer.invert(&mut test);
    let ev = model.evaluate(&test, &model.default_eval(threads), &|_, _| {})?;
    let bits = |nats: f64| nats / (d as f64 * std::f64::consts::LN_2);
    let elbo = ev.elbo.context("a diffusion model has an ELBO")?;
    let key = model.kind().key();
    let mut rng = Rng::stream(args.seed, Stream::Sample);
    let n_grid = images::GRID;
    let grid_x = model
        .sample(n_grid, &model.default_sampler(), n_grid, threads, &mut rng)?
        .x;
    let title = format!(
        "{} ({} parameters, {iters} iterations)",
        model.kind(),
        model.num_params()
    );
    images::write_grid(
        model,
        &grid_x,
        &args.out.join(format!("{key}-samples.png")),
        &title,
    )?;
    let tweedie = model.cfg.sample.tweedie;
    let sampler_at = |n: usize, rng: &mut Rng| -> Result<Sampler> {
        Ok(Sampler::Sde {
            lambda: model.cfg.sample.lambda,
            steps: model.grid(n, SampleGrid::Fixed, None, rng)?,
            tweedie,
        })
    };
    let (mut fid, mut kl, mut fid_by_n) = (None, None, Vec::new());
    if images::judged(shape) && args.fid_samples > 0 {
        let mut reference = data.test.clone();
        data.standardizer.invert(&mut reference);
        let chunk = diffflow::sample::SAMPLE_CHUNK;
        for &n in ns {
            let mut rng = Rng::stream(args.seed, Stream::Sample);
            let sampler = sampler_at(n, &mut rng)?;
            let x = model
                .sample(args.fid_samples, &sampler, chunk, threads, &mut rng)?
                .x;
            let q = images::quality(model, &x, &reference, threads)?;
            eprintln!("{}: N = {n}: FID (LeNet) {:.3}", model.kind(), q.fid_lenet);
            if n == model.sample_n() {
                fid = Some(q.fid_lenet);
                kl = Some(q.balance.kl_to_uniform);
            }
            fid_by_n.push((n, q.fid_lenet));
        }
        if fid.is_none() {
            let x = model
                .sample(
                    args.fid_samples,
                    &model.default_sampler(),
                    chunk,
                    threads,
                    &mut rng,
                )?
                .x;
            let q = images::quality(model, &x, &reference, threads)?;
            fid = Some(q.fid_lenet);
            kl = Some(q.balance.kl_to_uniform);
        }
    }
    Ok(ModelResult {
        model: model.kind().name().into(),
        params: model.num_params(),
        iters,
        train_seconds: secs,
        train_cpu_seconds: cpu,
        test_images: ev.n,
        bits_per_dim_ode: ev.bits_per_dim,
        bits_per_dim_ode_stderr: bits(ev.nll.stderr),
        bits_per_dim_elbo: ev.elbo_bits_per_dim.unwrap_or(f64::NAN),
        bits_per_dim_elbo_stderr: bits(elbo.stderr),
        sampler: format!(
            "SDE lambda = {}, N = {}, grid t^{} on [{}, {}]{}",
            model.cfg.sample.lambda,
            model.sample_n(),
            model.cfg.model.grid.beta,
            model.cfg.model.grid.t_min,
            model.cfg.model.grid.t_max,
            if tweedie { ", Tweedie last step" } else { "" }
        ),
        fid_lenet: fid,
        class_kl_to_uniform: kl,
        fid_by_n,
    })
}

fn markdown(r: &Results, ns: &[usize]) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "# compare-images: {} ({})\n", r.dataset, r.budget);
    let _ = writeln!(
        o,
        "Seed {}, {} threads. Bits/dim of dequantised pixels on the test images (mean ± \
         standard error; probability flow by dopri5 with one Rademacher probe per image).\n",
        r.seed, r.threads
    );
    let _ = writeln!(
        o,
        "| model | parameters | iterations | train s (CPU s) | test images | bits/dim ODE | bits/dim ELBO | FID (LeNet) | class KL | sampler |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|");
    let opt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.3}"));
    for m in &r.models {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {:.0} ({:.0}) | {} | {:.3} ± {:.3} | {:.3} ± {:.3} | {} | {} | {} |",
            m.model,
            m.params,
            m.iters,
            m.train_seconds,
            m.train_cpu_seconds,
            m.test_images,
            m.bits_per_dim_ode,
            m.bits_per_dim_ode_stderr,
            m.bits_per_dim_elbo,
            m.bits_per_dim_elbo_stderr,
            opt(m.fid_lenet),
            opt(m.class_kl_to_uniform),
            m.sampler
        );
    }
    if r.models.iter().any(|m| !m.fid_by_n.is_empty()) {
        let _ = writeln!(
            o,
            "\nFID (LeNet features) of {} samples against the test images by sampling N \
             (each model's own grid and final step):\n",
            r.fid_samples
        );
        let head: Vec<String> = ns.iter().map(|n| format!("N = {n}")).collect();
        let _ = writeln!(o, "| model | {} |", head.join(" | "));
        let _ = writeln!(o, "|---|{}", "---|".repeat(ns.len()));
        for m in &r.models {
            let cells: Vec<String> = m.fid_by_n.iter().map(|(_, f)| format!("{f:.3}")).collect();
            let _ = writeln!(o, "| {} | {} |", m.model, cells.join(" | "));
        }
    } else {
        let _ = writeln!(o, "\nNo FID: the LeNet judge reads 28x28 grey images only.");
    }
    o
}

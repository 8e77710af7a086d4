//! `diffflow sample`: draw points from a trained model with SDE (16) or the probability-flow
//! ODE, and write them as .csv, .npy or a .png picture.

use crate::plot::{self, Panel, Style};
use anyhow::{bail, Context, Result};
use clap::Args;
use diffflow::data::tabular::{self, Table};
use diffflow::model::{SampleGrid, Sampler};
use diffflow::ode::{Method, Tolerances};
use diffflow::rng::{Rng, Stream};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args)]
#[command(allow_negative_numbers = true)]
pub struct SampleArgs {
    #[command(flatten)]
    model: crate::run_args::RunArgs,
    /// Runs on a data file: round the dequantised columns down to whole numbers, like the
    /// data before dequantisation (samples are otherwise of the dequantised density).
    #[arg(long)]
    quantize: bool,
    /// Number of samples.
    #[arg(long, alias = "samples", default_value_t = 10_000)]
    n: usize,
    /// Output file: .csv, .npy or .png (2-D: histogram and scatter), by its extension. A run
    /// on a data file writes all the columns it was trained on (constant ones filled in),
    /// with the file's column names in a .csv.
    #[arg(long)]
    out: PathBuf,
    /// λ of SDE (16) in [0, 1]: 1 = backward SDE, 0 = probability-flow ODE (default: the
    /// run's).
    #[arg(long)]
    lambda: Option<f64>,
    /// Number of sampling steps N (default: the run's sampling N).
    #[arg(long)]
    steps: Option<usize>,
    /// Time grid: fixed (the run's beta), uniform (beta = 1) or flexible (random inner
    /// points, drawn once).
    #[arg(long, default_value = "fixed")]
    grid: String,
    /// Grid exponent beta (overrides --grid's).
    #[arg(long)]
    beta: Option<f64>,
    /// Replace the last step by Tweedie's denoising step (the default of runs whose
    /// configuration says so, e.g. the image presets).
    #[arg(long, conflicts_with = "no_tweedie")]
    tweedie: bool,
    /// No Tweedie step, even where the run's configuration has one.
    #[arg(long)]
    no_tweedie: bool,
    /// Integrator: sde (Euler–Maruyama of SDE(λ)), or rk4 / dopri5 on the probability-flow
    /// ODE (λ = 0).
    #[arg(long, default_value = "sde")]
    solver: String,
    /// Tolerances of dopri5.
    #[arg(long, default_value_t = 1e-5)]
    rtol: f64,
    #[arg(long, default_value_t = 1e-5)]
    atol: f64,
    /// Seed (default: the run's).
    #[arg(long)]
    seed: Option<u64>,
    /// Rows processed at once (one ODE solve per piece; results depend on it, not on
    /// --threads).
    #[arg(long, default_value_t = diffflow::sample::SAMPLE_CHUNK)]
    chunk: usize,
    /// Worker threads (default: all cores; results do not depend on it).
    #[arg(long)]
    threads: Option<usize>,
}

/// The output format, from the file's extension.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Format {
    Csv,
    Npy,
    Png,
}

fn format_of(path: &Path) -> Result<Format> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("csv") => Ok(Format::Csv),
        Some("npy") => Ok(Format::Npy),
        Some("png") => Ok(Format::Png),
        _ => bail!(
            "--out {}: unknown extension (expected .csv, .npy or .png)",
            path.display()
        ),
    }
}

pub fn run(args: SampleArgs) -> Result<()> {
    let format = format_of(&args.out)?;
    if args.n == 0 {
        bail!("--n must be >= 1");
    }
    let model = args.model.load()?;
    if args.quantize
        && model
            .columns
            .as_ref()
            .is_none_or(|c| c.dequantized.is_empty())
    {
        bail!("--quantize: the run has no dequantised columns");
    }
    let cfg = &model.cfg;
    let d = model.dim();
    if format == Format::Png && d != 2 && model.image().is_none() {
        bail!(
            "--out {}: a picture needs 2-D samples or an image run, the model has dimension \
             {d} (use .csv or .npy)",
            args.out.display()
        );
    }
    let lambda = args.lambda.unwrap_or(cfg.sample.lambda);
    let n_steps = args.steps.unwrap_or(model.sample_n());
    if n_steps == 0 {
        bail!("--steps must be >= 1");
    }
    let layout = args.grid.parse::<SampleGrid>()?;
    let seed = args.seed.unwrap_or(cfg.train.seed);
    let mut rng = Rng::stream(seed, Stream::Sample);
    let steps = model.grid(n_steps, layout, args.beta, &mut rng)?;
    let (sampler, how) = match args.solver.as_str() {
        "sde" => {
            let tweedie = args.tweedie || (cfg.sample.tweedie && !args.no_tweedie);
            let how = format!(
                "SDE lambda = {lambda}, N = {n_steps}{}",
                if tweedie { ", Tweedie last step" } else { "" }
            );
            let sampler = Sampler::Sde {
                lambda,
                steps,
                tweedie,
            };
            (sampler, how)
        }
        s => {
            let method = s.parse::<Method>().map_err(|_| {
                anyhow::anyhow!("unknown --solver '{s}' (expected sde, rk4 or dopri5)")
            })?;
            if args.lambda.is_some_and(|l| l != 0.0) || args.tweedie {
                bail!("--solver {s} integrates the probability-flow ODE: it takes no --lambda or --tweedie");
            }
            let tol = Tolerances {
                rtol: args.rtol,
                atol: args.atol,
                ..Tolerances::default()
            };
            let how = if method.is_adaptive() {
                format!("probability-flow ODE, {method}")
            } else {
                format!("probability-flow ODE, {method}, N = {n_steps}")
            };
            let sampler = Sampler::Ode {
                method,
                t: steps.t,
                tol,
            };
            (sampler, how)
        }
    };
    let threads = args
        .threads
        .unwrap_or_else(diffflow::par::default_threads)
        .max(1);
    let started = Instant::now();
    let samples = model.sample(args.n, &sampler, args.chunk, threads, &mut rng)?;
    let secs = started.elapsed().as_secs_f64();
    let how = match (&sampler, samples.stats.iter().map(|s| s.nfe).sum::<usize>()) {
        (Sampler::Ode { method, .. }, nfe) if method.is_adaptive() => {
            format!("{how}, {nfe} evaluations in all")
        }
        _ => how,
    };
    if format == Format::Png && model.image().is_some() {
        let title = format!("{} samples ({how})", model.kind());
        crate::images::write_grid(&model, &samples.x, &args.out, &title)
            .with_context(|| format!("cannot write {}", args.out.display()))?;
        eprintln!(
            "{} samples ({} in the grid) in {secs:.2} s ({how}) -> {}",
            args.n,
            args.n.min(crate::images::GRID),
            args.out.display()
        );
        return Ok(());
    }
    let (data, width) = model.file_rows(&samples.x, args.quantize)?;
    let names = model.columns.as_ref().and_then(|c| c.names.clone());
    write(&args.out, format, &data, width, names, &how)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!(
        "{} samples (d = {d}) in {secs:.2} s ({:.0} samples/s; {how}) -> {}",
        args.n,
        args.n as f64 / secs.max(1e-9),
        args.out.display()
    );
    Ok(())
}

fn write(
    path: &Path,
    format: Format,
    data: &[f64],
    d: usize,
    names: Option<Vec<String>>,
    how: &str,
) -> Result<()> {
    let rows = data.len() / d;
    match format {
        Format::Csv => {
            let table = Table {
                data: data.to_vec(),
                rows,
                cols: d,
                names: Some(names.unwrap_or_else(|| (0..d).map(|i| format!("x{i}")).collect())),
            };
            tabular::save_csv(path, &table)?;
        }
        Format::Npy => tabular::save_npy(path, data, rows, d)?,
        Format::Png => {
            let panels = [
                Panel {
                    title: "density".into(),
                    points: data,
                    labels: None,
                    style: Style::Histogram,
                },
                Panel {
                    title: "points".into(),
                    points: &data[..data.len().min(2 * 5000)],
                    labels: None,
                    style: Style::Scatter,
                },
            ];
            plot::panels_row(path, &format!("{rows} samples ({how})"), &panels, None)?;
        }
    }
    Ok(())
}

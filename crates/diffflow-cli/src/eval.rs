//! `diffflow eval`: probability-flow NLL and negative ELBO of a trained model on data, and the
//! held-out evaluation written at the end of `diffflow train`.

use anyhow::{bail, Context, Result};
use clap::Args;
use diffflow::config::{RunConfig, Weights};
use diffflow::data::tabular::{self, LoadOptions};
use diffflow::data::{toy_2d, Standardizer};
use diffflow::flow::{DiffFlow, Steps};
use diffflow::likelihood::{
    bits_per_dim, neg_elbo_mc, pf_ode_nll, summarize, Divergence, ElboOptions, NllOptions, Probe,
};
use diffflow::ode::{Method, Tolerances};
use diffflow::rng::{Rng, Stream};
use diffflow::sde::fixed_grid;
use diffflow::train::{load_run, TrainData};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args)]
pub struct EvalArgs {
    /// Run folder written by `diffflow train`.
    #[arg(long)]
    run: PathBuf,
    /// Points to evaluate, in data units: a .csv/.tsv/.txt or .npy file (optionally .gz), one
    /// point per row. Default: the run's held-out points.
    #[arg(long, conflicts_with = "dataset")]
    data: Option<PathBuf>,
    /// Fresh points of a built-in 2-D data set instead (drawn with --seed).
    #[arg(long)]
    dataset: Option<String>,
    /// Number of points (default: 5000 for --dataset and the held-out points, all rows of a
    /// --data file).
    #[arg(long)]
    n: Option<usize>,
    /// Divergence of the probability-flow ODE: exact or hutchinson.
    #[arg(long, default_value = "exact")]
    method: String,
    /// Hutchinson probes per point (kept fixed through the solve, results averaged).
    #[arg(long, default_value_t = 1)]
    probes: usize,
    /// Hutchinson probe distribution: rademacher or gaussian.
    #[arg(long, default_value = "rademacher")]
    probe: String,
    /// ODE solver: dopri5 (adaptive), rk4 or euler (fixed steps on the run's grid).
    #[arg(long, default_value = "dopri5")]
    solver: String,
    /// Steps of the fixed-step solvers.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// Relative tolerance of dopri5.
    #[arg(long, default_value_t = 1e-5)]
    rtol: f64,
    /// Absolute tolerance of dopri5.
    #[arg(long, default_value_t = 1e-5)]
    atol: f64,
    /// Smallest dopri5 step.
    #[arg(long, default_value_t = 0.0)]
    h_min: f64,
    /// Most dopri5 steps per solve.
    #[arg(long, default_value_t = 10_000)]
    max_steps: usize,
    /// Forward trajectories per point for the negative ELBO (0: skip it).
    #[arg(long, default_value_t = 10)]
    trajectories: usize,
    /// Steps N of the ELBO's grid (default: the run's sampling N).
    #[arg(long)]
    elbo_steps: Option<usize>,
    /// Weights: ema or live (default: the run's sampling weights).
    #[arg(long)]
    weights: Option<String>,
    /// Seed of the probes, ELBO noise and --dataset points (default: the run's seed).
    #[arg(long)]
    seed: Option<u64>,
    /// Points per ODE solve / ELBO piece (results depend on it, not on --threads).
    #[arg(long, default_value_t = 256)]
    chunk: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Also write each point's NLL (and negative ELBO) in nats, data units, to this .csv or
    /// .npy file (columns nll, elbo).
    #[arg(long)]
    per_sample: Option<PathBuf>,
}

/// How to evaluate (shared by `diffflow eval` and the end of `diffflow train`).
pub struct Settings {
    pub nll: NllOptions,
    /// Time points of the NLL solve (fixed-step solvers step along them).
    pub t: Vec<f64>,
    /// ELBO grid and options; `None` skips the ELBO.
    pub elbo: Option<(Steps, ElboOptions)>,
    pub seed: u64,
    pub progress: bool,
}

/// What `diffflow eval --json` prints: nats per sample in the data's original units unless
/// named `_standardised`.
#[derive(Serialize)]
pub struct Report {
    pub nll: f64,
    pub nll_stderr: f64,
    pub nll_standardised: f64,
    pub bits_per_dim: f64,
    pub elbo: Option<f64>,
    pub elbo_stderr: Option<f64>,
    pub elbo_standardised: Option<f64>,
    pub elbo_bits_per_dim: Option<f64>,
    /// Mean of (negative ELBO − NLL) over the points, and its standard error.
    pub elbo_gap: Option<f64>,
    pub elbo_gap_stderr: Option<f64>,
    /// Mean velocity evaluations per ODE solve (one solve per chunk of points).
    pub nfe: f64,
    pub nfe_max: usize,
    pub solves: usize,
    pub seconds: f64,
    pub seconds_nll: f64,
    pub seconds_elbo: f64,
    pub n: usize,
    pub dim: usize,
    pub divergence: String,
    pub solver: String,
    /// Tolerances (dopri5) or the number of steps (fixed-step solvers).
    pub rtol: Option<f64>,
    pub atol: Option<f64>,
    pub ode_steps: Option<usize>,
    pub elbo_steps: Option<usize>,
    pub elbo_trajectories: Option<usize>,
    pub weights: Option<Weights>,
    pub step: Option<usize>,
    pub data: String,
    /// Per-point NLL and negative ELBO, data units (for --per-sample).
    #[serde(skip)]
    pub per_sample: Vec<[f64; 2]>,
}

fn bar(len: usize, msg: &str, show: bool) -> ProgressBar {
    let pb = if show && std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:5} {bar:30.cyan/blue} {pos}/{len} points, {elapsed} (ETA {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

/// NLL (and ELBO) of `x` [n, d] given in standardised units; the report converts to data
/// units with `std` (`NLL_data = NLL_std − log|det|` of the standardisation).
pub fn evaluate(flow: &DiffFlow, std: &Standardizer, x: &[f64], s: &Settings) -> Result<Report> {
    let d = flow.dim();
    let n = x.len() / d;
    let shift = -std.log_abs_det();
    let started = Instant::now();
    let pb = bar(n, "NLL", s.progress);
    let inc = |k: usize| pb.inc(k as u64);
    let mut rng = Rng::stream(s.seed, Stream::Eval);
    let nll = pf_ode_nll(flow, x, &s.t, &s.nll, &mut rng, &inc)?;
    pb.finish_and_clear();
    let seconds_nll = started.elapsed().as_secs_f64();
    let ns = summarize(&nll.nll);
    let adaptive = s.nll.method.is_adaptive();
    let mut report = Report {
        nll: ns.mean + shift,
        nll_stderr: ns.stderr,
        nll_standardised: ns.mean,
        bits_per_dim: bits_per_dim(ns.mean + shift, d),
        elbo: None,
        elbo_stderr: None,
        elbo_standardised: None,
        elbo_bits_per_dim: None,
        elbo_gap: None,
        elbo_gap_stderr: None,
        nfe: nll.mean_nfe(),
        nfe_max: nll.stats.iter().map(|s| s.nfe).max().unwrap_or(0),
        solves: nll.stats.len(),
        seconds: 0.0,
        seconds_nll,
        seconds_elbo: 0.0,
        n,
        dim: d,
        divergence: match s.nll.divergence {
            Divergence::Exact => "exact".into(),
            Divergence::Hutchinson { probes, probe } => {
                format!("hutchinson ({probes} {probe:?} probes)").to_lowercase()
            }
        },
        solver: s.nll.method.to_string(),
        rtol: adaptive.then_some(s.nll.tol.rtol),
        atol: adaptive.then_some(s.nll.tol.atol),
        ode_steps: (!adaptive).then(|| s.t.len() - 1),
        elbo_steps: None,
        elbo_trajectories: None,
        weights: None,
        step: None,
        data: String::new(),
        per_sample: nll.nll.iter().map(|v| [v + shift, f64::NAN]).collect(),
    };
    if let Some((steps, opts)) = &s.elbo {
        let t = Instant::now();
        let pb = bar(n, "ELBO", s.progress);
        let inc = |k: usize| pb.inc(k as u64);
        let elbo = neg_elbo_mc(flow, x, steps, opts, &mut rng, &inc)?;
        pb.finish_and_clear();
        let es = summarize(&elbo);
        let gap: Vec<f64> = elbo.iter().zip(&nll.nll).map(|(a, b)| a - b).collect();
        let gs = summarize(&gap);
        for (row, e) in report.per_sample.iter_mut().zip(&elbo) {
            row[1] = e + shift;
        }
        report.elbo = Some(es.mean + shift);
        report.elbo_stderr = Some(es.stderr);
        report.elbo_standardised = Some(es.mean);
        report.elbo_bits_per_dim = Some(bits_per_dim(es.mean + shift, d));
        report.elbo_gap = Some(gs.mean);
        report.elbo_gap_stderr = Some(gs.stderr);
        report.elbo_steps = Some(steps.n());
        report.elbo_trajectories = Some(opts.trajectories);
        report.seconds_elbo = t.elapsed().as_secs_f64();
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Default ELBO grid of a run: its sampling N on the fixed grid.
pub fn elbo_steps(cfg: &RunConfig, flow: &DiffFlow, n: Option<usize>) -> Steps {
    let n = n.unwrap_or(cfg.sample.steps.unwrap_or(cfg.train.steps.last()));
    Steps::new(fixed_grid(&cfg.model.grid, n), &flow.diffusion)
}

pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Points from a file in data units, checked against the model's dimension.
fn load_points(path: &Path, dim: usize, n: Option<usize>) -> Result<Vec<f64>> {
    let table = tabular::load(path, &LoadOptions::default())
        .with_context(|| format!("cannot read --data {}", path.display()))?;
    if table.rows == 0 {
        bail!("--data {}: no rows", path.display());
    }
    if table.cols != dim {
        bail!(
            "--data {}: {} columns, but the model has dimension {dim}",
            path.display(),
            table.cols
        );
    }
    if let Some(i) = table.data.iter().position(|v| !v.is_finite()) {
        bail!(
            "--data {}: non-finite value {} at row {}, column {}",
            path.display(),
            table.data[i],
            i / dim + 1,
            i % dim + 1
        );
    }
    let rows = n.unwrap_or(table.rows).min(table.rows);
    let mut data = table.data;
    data.truncate(rows * dim);
    Ok(data)
}

pub fn run(args: EvalArgs) -> Result<()> {
    let weights = args
        .weights
        .as_deref()
        .map(str::parse::<Weights>)
        .transpose()?;
    let run = load_run(&args.run, weights)?;
    let cfg = &run.cfg;
    let d = run.flow.dim();
    let seed = args.seed.unwrap_or(cfg.train.seed);
    let (mut x, what) = match (&args.data, &args.dataset) {
        (Some(path), _) => (load_points(path, d, args.n)?, path.display().to_string()),
        (None, Some(name)) => {
            if d != 2 {
                bail!("--dataset gives 2-D points, but the model has dimension {d}");
            }
            let n = args.n.unwrap_or(5000);
            let noise = if *name == cfg.data.dataset {
                cfg.data.noise
            } else {
                None
            };
            let mut rng = Rng::stream(seed, Stream::Eval);
            let pts = toy_2d(name, n, noise, &mut rng)?;
            (pts, format!("{name} ({n} fresh points, seed {seed})"))
        }
        (None, None) => {
            let data = TrainData::toy(&cfg.data, cfg.train.seed)
                .context("cannot rebuild the run's held-out points")?;
            let mut test = data.test;
            if test.is_empty() {
                bail!("the run has no held-out points (test_size = 0): give --data or --dataset");
            }
            // Held-out points are standardised already: back to data units.
            data.standardizer.invert(&mut test);
            let n = args.n.unwrap_or(5000).min(test.len() / d);
            test.truncate(n * d);
            (
                test,
                format!("{} held-out points of {}", n, cfg.data.dataset),
            )
        }
    };
    run.standardizer.apply(&mut x);
    let divergence = match args.method.as_str() {
        "exact" => Divergence::Exact,
        "hutchinson" => Divergence::Hutchinson {
            probes: args.probes,
            probe: args.probe.parse::<Probe>()?,
        },
        m => bail!("unknown --method '{m}' (expected exact or hutchinson)"),
    };
    let method = args.solver.parse::<Method>()?;
    if args.steps == 0 {
        bail!("--steps must be >= 1");
    }
    let spec = cfg.model.grid;
    let t = if method.is_adaptive() {
        vec![spec.t_min, spec.t_max]
    } else {
        fixed_grid(&spec, args.steps)
    };
    let threads = args.threads.unwrap_or_else(default_threads).max(1);
    let settings = Settings {
        nll: NllOptions {
            divergence,
            method,
            tol: Tolerances {
                rtol: args.rtol,
                atol: args.atol,
                h_min: args.h_min,
                h_init: None,
                max_steps: args.max_steps,
            },
            chunk: args.chunk.max(1),
            threads,
        },
        t,
        elbo: (args.trajectories > 0).then(|| {
            (
                elbo_steps(cfg, &run.flow, args.elbo_steps),
                ElboOptions {
                    trajectories: args.trajectories,
                    chunk: args.chunk.max(1),
                    threads,
                },
            )
        }),
        seed,
        progress: !args.json,
    };
    if args.elbo_steps == Some(0) {
        bail!("--elbo-steps must be >= 1");
    }
    let mut report = evaluate(&run.flow, &run.standardizer, &x, &settings)?;
    report.weights = Some(weights.unwrap_or(cfg.sample.weights));
    report.step = Some(run.step);
    report.data = what;
    if let Some(path) = &args.per_sample {
        write_per_sample(path, &report)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let text = if args.json {
        format!("{}\n", serde_json::to_string_pretty(&report)?)
    } else {
        format_report(&report)
    };
    write_stdout(&text)
}

/// Per-point values: columns nll and (when computed) elbo.
fn write_per_sample(path: &Path, r: &Report) -> Result<()> {
    let cols = if r.elbo.is_some() { 2 } else { 1 };
    let data: Vec<f64> = r
        .per_sample
        .iter()
        .flat_map(|row| row[..cols].to_vec())
        .collect();
    let rows = r.per_sample.len();
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => tabular::save_csv(
            path,
            &tabular::Table {
                data,
                rows,
                cols,
                names: Some(
                    ["nll", "elbo"][..cols]
                        .iter()
                        .map(|s| s.to_string())
                        .collect(),
                ),
            },
        )?,
        Some("npy") => tabular::save_npy(path, &data, rows, cols)?,
        _ => bail!("unknown extension (expected .csv or .npy)"),
    }
    Ok(())
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn write_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}

fn format_report(r: &Report) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{} (d = {}), model at step {}, {} weights",
        r.data,
        r.dim,
        r.step.unwrap_or(0),
        r.weights.map_or("?", |w| match w {
            Weights::Ema => "ema",
            Weights::Live => "live",
        })
    );
    let _ = writeln!(
        o,
        "NLL (probability flow)  {:.4} ± {:.4} nats  ({:.4} bits/dim; {:.4} nats standardised)",
        r.nll, r.nll_stderr, r.bits_per_dim, r.nll_standardised
    );
    if let (Some(e), Some(se), Some(es), Some(bpd)) = (
        r.elbo,
        r.elbo_stderr,
        r.elbo_standardised,
        r.elbo_bits_per_dim,
    ) {
        let _ = writeln!(
            o,
            "negative ELBO (13)      {e:.4} ± {se:.4} nats  ({bpd:.4} bits/dim; {es:.4} nats \
             standardised; N = {}, {} trajectories per point)",
            r.elbo_steps.unwrap_or(0),
            r.elbo_trajectories.unwrap_or(0)
        );
        if let (Some(g), Some(gs)) = (r.elbo_gap, r.elbo_gap_stderr) {
            let _ = writeln!(o, "ELBO − NLL              {g:.4} ± {gs:.4} nats");
        }
    }
    let control = match (r.rtol, r.atol, r.ode_steps) {
        (Some(rt), Some(at), _) => format!("rtol {rt:.0e}, atol {at:.0e}"),
        (_, _, Some(k)) => format!("{k} steps"),
        _ => String::new(),
    };
    let _ = writeln!(
        o,
        "NFE {:.1} per solve (max {}, {} solves; {}, {control}; {} divergence)",
        r.nfe, r.nfe_max, r.solves, r.solver, r.divergence
    );
    let _ = writeln!(
        o,
        "time {:.2} s (NLL {:.2} s, ELBO {:.2} s)",
        r.seconds, r.seconds_nll, r.seconds_elbo
    );
    o
}

//! `diffflow eval`: probability-flow NLL and negative ELBO of a trained model on data, and the
//! held-out evaluation written at the end of `diffflow train`.

use anyhow::{bail, Context, Result};
use clap::Args;
use diffflow::config::{RunConfig, Weights};
use diffflow::data::source::{ColumnMap, Dequantize};
use diffflow::data::tabular::{self, LoadOptions, Table};
use diffflow::data::{toy_2d, Standardizer};
use diffflow::flow::{DiffFlow, Steps};
use diffflow::likelihood::{
    bits_per_dim, neg_elbo_mc, pf_ode_nll, summarize, Divergence, ElboOptions, NllOptions, Probe,
};
use diffflow::ode::{Method, Tolerances};
use diffflow::rng::{Rng, Stream};
use diffflow::sde::fixed_grid;
use diffflow::train::{load_run_file, LoadedRun, TrainData, BEST_FILE, MODEL_FILE};
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
    /// Which checkpoint: best (best.safetensors, the best validation value; the default when
    /// the run has one) or last (model.safetensors).
    #[arg(long, value_name = "best|last")]
    checkpoint: Option<String>,
    /// Points to evaluate, in data units: a .csv/.tsv/.txt or .npy file (optionally .gz), one
    /// point per row. For a run trained on a data file: the same columns as that file (its
    /// column selection and the dropping of constant columns are applied), or only the
    /// modelled columns (e.g. a file written by `diffflow sample`). Default: the run's
    /// held-out points (see --split).
    #[arg(long, conflicts_with_all = ["dataset", "split"])]
    data: Option<PathBuf>,
    /// The run's held-out points to evaluate: test or val (runs on a data file).
    #[arg(long, value_name = "test|val")]
    split: Option<String>,
    /// Dequantise the run's dequantised columns of a --data file with U[0, 1) noise (seeded by
    /// --seed): auto (when all their values are whole numbers), on, off.
    #[arg(long, value_name = "auto|on|off", default_value = "auto")]
    dequantize: String,
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
    /// The checkpoint file evaluated.
    pub checkpoint: String,
    /// `log |det|` of the standardisation: `nll = nll_standardised − log_abs_det`.
    pub log_abs_det: f64,
    /// What the numbers mean beyond the obvious (dequantisation, dropped columns).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
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
        checkpoint: String::new(),
        log_abs_det: -shift,
        notes: Vec::new(),
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

/// Loads the run in `dir`: its best checkpoint (`Some("best")`, or by default when there is
/// one) or its last (`Some("last")`).
pub fn load_model(dir: &Path, which: Option<&str>, weights: Option<Weights>) -> Result<LoadedRun> {
    let file = match which {
        Some("best") => {
            if !dir.join(BEST_FILE).exists() {
                bail!(
                    "{} has no {BEST_FILE} (it is written when training validates: \
                     --validate-every)",
                    dir.display()
                );
            }
            BEST_FILE
        }
        Some("last") => MODEL_FILE,
        Some(other) => bail!("unknown --checkpoint '{other}' (expected best or last)"),
        None if dir.join(BEST_FILE).exists() => BEST_FILE,
        None => MODEL_FILE,
    };
    Ok(load_run_file(dir, file, weights)?)
}

/// What the NLL of a run on a data file means, for people.
pub fn column_notes(map: &ColumnMap) -> Vec<String> {
    let mut notes = Vec::new();
    if !map.dequantized.is_empty() {
        notes.push(format!(
            "density of the DEQUANTISED data x + u, u ~ U[0, 1) on {} integer-valued column(s): \
             E_u[-log p(x + u)] >= -log P(x), so nll estimates an upper bound on the NLL of the \
             discrete values",
            map.dequantized.len()
        ));
    }
    if !map.constants.is_empty() {
        notes.push(format!(
            "density of the {} modelled columns; {} column(s) constant in training were dropped",
            map.dim(),
            map.constants.len()
        ));
    }
    notes
}

/// Points from a file in data units, in the model's coordinates: a run on a data file reads
/// it like its training file (column selection, then its [`ColumnMap`]) and dequantises per
/// `deq`; other runs take the file's columns as they are.
fn load_points(
    path: &Path,
    run: &LoadedRun,
    n: Option<usize>,
    deq: Dequantize,
    seed: u64,
    notes: &mut Vec<String>,
) -> Result<Vec<f64>> {
    let dim = run.flow.dim();
    let ctx = || format!("cannot read --data {}", path.display());
    let (table, map) = match (&run.columns, &run.cfg.data.file) {
        (Some(map), Some(src)) => {
            let opts = src.load_options()?;
            let fits = |t: &Table| t.cols == map.width || t.cols == dim;
            let table = match tabular::load(path, &opts) {
                Ok(t) if fits(&t) => t,
                first => {
                    // Perhaps a file of the selected or modelled columns only.
                    let plain = LoadOptions {
                        delimiter: opts.delimiter,
                        ..LoadOptions::default()
                    };
                    match tabular::load(path, &plain) {
                        Ok(t) if fits(&t) => t,
                        // Readable, of another width: the column map's error says which fit.
                        Ok(t) if first.is_err() => t,
                        _ => first.with_context(ctx)?,
                    }
                }
            };
            (table, Some(map))
        }
        _ => (
            tabular::load(path, &LoadOptions::default()).with_context(ctx)?,
            None,
        ),
    };
    if table.rows == 0 {
        bail!("--data {}: no rows", path.display());
    }
    if let Some(i) = table.data.iter().position(|v| !v.is_finite()) {
        bail!(
            "--data {}: non-finite value {} at row {}, column {}",
            path.display(),
            table.data[i],
            i / table.cols + 1,
            i % table.cols + 1
        );
    }
    let rows = n.unwrap_or(table.rows).min(table.rows);
    let table = table.take_rows(&(0..rows).collect::<Vec<_>>());
    let Some(map) = map else {
        if table.cols != dim {
            bail!(
                "--data {}: {} columns, but the model has dimension {dim}",
                path.display(),
                table.cols
            );
        }
        return Ok(table.data);
    };
    let (mut x, off) = map
        .reduce(&table)
        .with_context(|| format!("--data {}", path.display()))?;
    if off > 0 {
        notes.push(format!(
            "{off} of {rows} points differ from the training constant in a dropped column: \
             they have density 0 in the full space (their NLL is that of the modelled columns)"
        ));
    }
    let cols = &map.dequantized;
    if !cols.is_empty() {
        let integer = x
            .chunks_exact(dim)
            .all(|r| cols.iter().all(|&k| r[k].fract() == 0.0));
        let add = match deq {
            Dequantize::On => true,
            Dequantize::Off => false,
            Dequantize::Auto => integer,
        };
        if add {
            let mut rng = Rng::stream(seed, Stream::Data);
            for r in x.chunks_exact_mut(dim) {
                for &k in cols {
                    r[k] += rng.uniform();
                }
            }
            notes.push(format!(
                "added U[0, 1) noise to the {} dequantised column(s) of --data (seed {seed})",
                cols.len()
            ));
        } else {
            notes.push(format!(
                "--data used as it is in the {} dequantised column(s){}",
                cols.len(),
                if integer {
                    " (integers: --dequantize off; the density there is that of cell corners)"
                } else {
                    " (not whole numbers: taken as already dequantised)"
                }
            ));
        }
    }
    Ok(x)
}

pub fn run(args: EvalArgs) -> Result<()> {
    let weights = args
        .weights
        .as_deref()
        .map(str::parse::<Weights>)
        .transpose()?;
    let run = load_model(&args.run, args.checkpoint.as_deref(), weights)?;
    let cfg = &run.cfg;
    let d = run.flow.dim();
    let seed = args.seed.unwrap_or(cfg.train.seed);
    let deq = args.dequantize.parse::<Dequantize>()?;
    let mut notes = run.columns.as_ref().map(column_notes).unwrap_or_default();
    if args.split.is_some() && cfg.data.file.is_none() {
        bail!("--split needs a run trained on a data file (built-in sets have test points only)");
    }
    let (mut x, what) = match (&args.data, &args.dataset) {
        (Some(path), _) => (
            load_points(path, &run, args.n, deq, seed, &mut notes)?,
            path.display().to_string(),
        ),
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
            let data =
                TrainData::from_config(cfg).context("cannot rebuild the run's held-out points")?;
            let split = args.split.as_deref().unwrap_or("test");
            let mut test = match split {
                "test" => data.test,
                "val" => data.val,
                s => bail!("unknown --split '{s}' (expected test or val)"),
            };
            if test.is_empty() {
                bail!("the run has no {split} points: give --data or --dataset");
            }
            // Held-out points are standardised already: back to data units.
            data.standardizer.invert(&mut test);
            let n = args.n.unwrap_or(5000).min(test.len() / d);
            test.truncate(n * d);
            let name = match (cfg.data.file.is_some(), split) {
                (false, _) => "held-out points",
                (true, "val") => "validation split",
                (true, _) => "test split",
            };
            (test, format!("{} {name} of {}", n, cfg.data.dataset))
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
    report.checkpoint = run
        .path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    report.notes = notes;
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
        "{} (d = {}), model at step {} ({}), {} weights",
        r.data,
        r.dim,
        r.step.unwrap_or(0),
        r.checkpoint,
        r.weights.map_or("?", |w| match w {
            Weights::Ema => "ema",
            Weights::Live => "live",
        })
    );
    let _ = writeln!(
        o,
        "nll               {:.4} ± {:.4} nats  NLL (probability flow) in the ORIGINAL data \
         units ({:.4} bits/dim)",
        r.nll, r.nll_stderr, r.bits_per_dim
    );
    let _ = writeln!(
        o,
        "nll_standardised  {:.4} ± {:.4} nats  the same in the model's standardised units \
         (nll = nll_standardised - log|det| of the standardisation, log|det| = {:.4})",
        r.nll_standardised, r.nll_stderr, r.log_abs_det
    );
    if let (Some(e), Some(se), Some(es), Some(bpd)) = (
        r.elbo,
        r.elbo_stderr,
        r.elbo_standardised,
        r.elbo_bits_per_dim,
    ) {
        let _ = writeln!(
            o,
            "elbo              {e:.4} ± {se:.4} nats  negative ELBO (13), original units \
             ({bpd:.4} bits/dim; {es:.4} standardised; N = {}, {} trajectories per point)",
            r.elbo_steps.unwrap_or(0),
            r.elbo_trajectories.unwrap_or(0)
        );
        if let (Some(g), Some(gs)) = (r.elbo_gap, r.elbo_gap_stderr) {
            let _ = writeln!(o, "elbo - nll        {g:.4} ± {gs:.4} nats");
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
    for n in &r.notes {
        let _ = writeln!(o, "note: {n}");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use diffflow::analytic::GaussianFlow;
    use diffflow::gaussian::Gaussian;

    /// The NLL in original units includes the standardisation's log-Jacobian: a closed-form
    /// Gaussian DiffFlow (standardised units) evaluated through `evaluate` on points in
    /// original units, with a standardisation far from the identity, gives the closed-form
    /// NLL of the Gaussian it implies in original units, `N(m + S mu, S Sigma S)`.
    #[test]
    fn nll_in_original_units_includes_the_standardisation() {
        let (t0, t1) = (0.01, 0.6);
        let model =
            GaussianFlow::spatial((0.7, -0.4), [2.0, -1.0, 0.0], [0.5, -0.3, 1.2], 0.6, t0, t1)
                .unwrap();
        let flow = model.flow().unwrap();
        let (mu, sigma) = (model.mean_at(t0), model.cov_at(t0));
        let std = Standardizer {
            mean: vec![10.0, -3.0, 0.5],
            std: vec![0.2, 7.0, 1.5],
        };
        assert!(
            std.log_abs_det().abs() > 0.7,
            "a non-trivial standardisation"
        );
        // Points in standardised units drawn from the model, then mapped to original units.
        let gy = Gaussian::new(mu.clone(), &sigma).unwrap();
        let mut rng = Rng::new(5);
        let n = 24;
        let mut y = Vec::with_capacity(3 * n);
        for _ in 0..n {
            let e = rng.normals(3);
            for (i, m) in mu.iter().enumerate() {
                y.push(m + (0..=i).map(|k| gy.chol[i * 3 + k] * e[k]).sum::<f64>());
            }
        }
        let mut x = y.clone();
        std.invert(&mut x);
        // The closed form in original units, computed without the standardisation's Jacobian.
        let mean_x: Vec<f64> = (0..3).map(|i| std.mean[i] + std.std[i] * mu[i]).collect();
        let cov_x: Vec<f64> = (0..9)
            .map(|k| std.std[k / 3] * sigma[k] * std.std[k % 3])
            .collect();
        let want = Gaussian::new(mean_x, &cov_x).unwrap().nll(&x);
        let want_std = gy.nll(&y);
        // The eval path: standardise the points, then `evaluate`.
        let mut xs = x.clone();
        std.apply(&mut xs);
        let settings = Settings {
            nll: NllOptions {
                tol: Tolerances {
                    rtol: 1e-10,
                    atol: 1e-10,
                    ..Tolerances::default()
                },
                chunk: 8,
                ..NllOptions::default()
            },
            t: vec![t0, t1],
            elbo: None,
            seed: 0,
            progress: false,
        };
        let r = evaluate(&flow, &std, &xs, &settings).unwrap();
        for (i, (got, w)) in r.per_sample.iter().zip(&want).enumerate() {
            assert!((got[0] - w).abs() < 1e-4, "point {i}: {} vs {w}", got[0]);
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        assert!(
            (r.nll - mean(&want)).abs() < 1e-4,
            "{} vs {}",
            r.nll,
            mean(&want)
        );
        assert!((r.nll_standardised - mean(&want_std)).abs() < 1e-4);
        assert!((r.nll - r.nll_standardised + std.log_abs_det()).abs() < 1e-12);
        assert!(
            (r.log_abs_det - std.log_abs_det()).abs() < 1e-15,
            "the report names the shift"
        );
    }
}

//! `diffflow eval`: probability-flow NLL and negative ELBO of a trained model on data, and the
//! held-out evaluation written at the end of `diffflow train`.

use anyhow::{bail, Context, Result};
use clap::Args;
use diffflow::config::Weights;
use diffflow::data::source::Dequantize;
use diffflow::data::tabular;
use diffflow::data::toy_2d;
use diffflow::likelihood::{Divergence, ElboOptions, NllOptions, Probe};
use diffflow::model::{column_notes, EvalOptions, Evaluation};
use diffflow::ode::{Method, Tolerances};
use diffflow::rng::{Rng, Stream};
use diffflow::sde::fixed_grid;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: crate::run_args::RunArgs,
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
    /// Number of points evaluated (default: 5000 for --dataset and the held-out points, 200
    /// test images of an image run, all rows of a --data file).
    #[arg(long, alias = "n")]
    points: Option<usize>,
    /// Divergence of the probability-flow ODE: exact or hutchinson (default: exact;
    /// hutchinson for image runs).
    #[arg(long)]
    method: Option<String>,
    /// Image runs of 28x28 grey images: samples drawn (with the run's sampler) for the FID
    /// of LeNet features against the run's test images and the class balance (0: skip).
    #[arg(long, default_value_t = 1000)]
    fid_samples: usize,
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
    /// Seed of the probes, ELBO noise and --dataset points (default: the run's seed).
    #[arg(long)]
    seed: Option<u64>,
    /// Points per ODE solve / ELBO piece (results depend on it, not on --threads).
    #[arg(long, default_value_t = 256)]
    chunk: usize,
    /// Worker threads (default: all cores; results do not depend on it).
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageReport>,
    /// Per-point NLL and negative ELBO, data units (for --per-sample).
    #[serde(skip)]
    pub per_sample: Vec<[f64; 2]>,
}

impl Report {
    /// The report of an evaluation.
    fn of(ev: &Evaluation, opts: &EvalOptions) -> Self {
        let adaptive = opts.nll.method.is_adaptive();
        Report {
            nll: ev.nll.mean,
            nll_stderr: ev.nll.stderr,
            nll_standardised: ev.nll_standardised,
            bits_per_dim: ev.bits_per_dim,
            elbo: ev.elbo.map(|e| e.mean),
            elbo_stderr: ev.elbo.map(|e| e.stderr),
            elbo_standardised: ev.elbo_standardised,
            elbo_bits_per_dim: ev.elbo_bits_per_dim,
            elbo_gap: ev.elbo_gap.map(|g| g.mean),
            elbo_gap_stderr: ev.elbo_gap.map(|g| g.stderr),
            nfe: ev.nfe,
            nfe_max: ev.nfe_max,
            solves: ev.solves,
            seconds: ev.seconds_nll + ev.seconds_elbo,
            seconds_nll: ev.seconds_nll,
            seconds_elbo: ev.seconds_elbo,
            n: ev.n,
            dim: ev.dim,
            divergence: match opts.nll.divergence {
                Divergence::Exact => "exact".into(),
                Divergence::Hutchinson { probes, probe } => {
                    format!("hutchinson ({probes} {probe:?} probes)").to_lowercase()
                }
            },
            solver: opts.nll.method.to_string(),
            rtol: adaptive.then_some(opts.nll.tol.rtol),
            atol: adaptive.then_some(opts.nll.tol.atol),
            ode_steps: (!adaptive).then(|| opts.t.len() - 1),
            elbo_steps: opts.elbo.as_ref().map(|(s, _)| s.n()),
            elbo_trajectories: opts.elbo.as_ref().map(|(_, o)| o.trajectories),
            weights: None,
            step: None,
            data: String::new(),
            checkpoint: String::new(),
            log_abs_det: ev.log_abs_det,
            notes: Vec::new(),
            image: None,
            per_sample: ev.per_point.clone(),
        }
    }
}

pub fn run(args: EvalArgs) -> Result<()> {
    let model = args.model.load()?;
    let cfg = &model.cfg;
    let d = model.dim();
    let seed = args.seed.unwrap_or(cfg.train.seed);
    let deq = args.dequantize.parse::<Dequantize>()?;
    let mut notes = model.columns.as_ref().map(column_notes).unwrap_or_default();
    if args.split.is_some() && cfg.data.file.is_none() && cfg.data.image.is_none() {
        bail!("--split needs a run trained on a data file (built-in sets have test points only)");
    }
    let (x, what) = match (&args.data, &args.dataset) {
        (Some(path), _) => (
            model
                .points_from_file(path, args.points, deq, seed, &mut notes)
                .with_context(|| format!("--data {}", path.display()))?,
            path.display().to_string(),
        ),
        (None, Some(name)) => {
            if d != 2 {
                bail!("--dataset gives 2-D points, but the model has dimension {d}");
            }
            let n = args.points.unwrap_or(5000);
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
            let split = args.split.as_deref().unwrap_or("test");
            let val = match split {
                "test" => false,
                "val" => true,
                s => bail!("unknown --split '{s}' (expected test or val)"),
            };
            let mut x = model
                .held_out(val)
                .context("cannot rebuild the run's held-out points")?;
            if x.is_empty() {
                bail!("the run has no {split} points: give --data or --dataset");
            }
            // Images: each point is an ODE solve through two U-Nets.
            let default = if model.image().is_some() { 200 } else { 5000 };
            let n = args.points.unwrap_or(default).min(x.len() / d);
            x.truncate(n * d);
            let split_data = cfg.data.file.is_some() || cfg.data.image.is_some();
            let name = match (split_data, val) {
                (false, _) => "held-out points",
                (true, true) => "validation split",
                (true, false) => "test split",
            };
            (x, format!("{} {name} of {}", n, cfg.data.dataset))
        }
    };
    let default_method = if model.image().is_some() {
        "hutchinson"
    } else {
        "exact"
    };
    let divergence = match args.method.as_deref().unwrap_or(default_method) {
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
    if args.elbo_steps == Some(0) {
        bail!("--elbo-steps must be >= 1");
    }
    let spec = cfg.model.grid;
    let t = if method.is_adaptive() {
        vec![spec.t_min, spec.t_max]
    } else {
        fixed_grid(&spec, args.steps)
    };
    let threads = args
        .threads
        .unwrap_or_else(diffflow::par::default_threads)
        .max(1);
    let elbo = args.trajectories > 0 && model.kind().is_diffusion();
    if args.trajectories > 0 && !elbo {
        notes.push("a CNF has no ELBO: only its NLL is reported".into());
    }
    let opts = EvalOptions {
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
        elbo: elbo.then(|| {
            (
                model.elbo_steps(args.elbo_steps),
                ElboOptions {
                    trajectories: args.trajectories,
                    chunk: args.chunk.max(1),
                    threads,
                },
            )
        }),
        seed,
    };
    let bars = crate::progress::EvalBars::with(x.len() / d, !args.json);
    let ev = model.evaluate(&x, &opts, &|phase, k| bars.inc(phase, k))?;
    bars.finish();
    let mut report = Report::of(&ev, &opts);
    report.weights = Some(model.weights);
    report.step = Some(model.step);
    report.data = what;
    report.checkpoint = model
        .path
        .as_deref()
        .and_then(Path::file_name)
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    report.notes = notes;
    if let Some((shape, levels)) = model.image() {
        let bits = |nats: f64| nats / (d as f64 * std::f64::consts::LN_2);
        report.image = Some(ImageReport {
            shape: shape.to_string(),
            levels,
            bits_per_dim_stderr: bits(report.nll_stderr),
            elbo_bits_per_dim_stderr: report.elbo_stderr.map(bits),
            quality: None,
        });
        if args.fid_samples > 0 && crate::images::judged(shape) {
            let reference = model.held_out(false)?;
            let mut rng = Rng::stream(seed, Stream::Sample);
            let x = model
                .sample(
                    args.fid_samples,
                    &model.default_sampler(),
                    diffflow::sample::SAMPLE_CHUNK,
                    threads,
                    &mut rng,
                )?
                .x;
            let q = crate::images::quality(&model, &x, &reference, threads)?;
            if let Some(img) = report.image.as_mut() {
                img.quality = Some(q);
            }
        }
    }
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

/// What `eval` adds for an image run: the standard errors in bits/dim and, for 28x28 grey
/// images, the LeNet judge's view of samples.
#[derive(Serialize)]
pub struct ImageReport {
    pub shape: String,
    pub levels: u32,
    pub bits_per_dim_stderr: f64,
    pub elbo_bits_per_dim_stderr: Option<f64>,
    pub quality: Option<crate::images::Quality>,
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
    if let Some(img) = &r.image {
        let _ = writeln!(
            o,
            "images {} ({} levels), {} test images: bits/dim {:.4} ± {:.4} (probability flow){}",
            img.shape,
            img.levels,
            r.n,
            r.bits_per_dim,
            img.bits_per_dim_stderr,
            match (r.elbo_bits_per_dim, img.elbo_bits_per_dim_stderr) {
                (Some(b), Some(se)) => format!(", {b:.4} ± {se:.4} (negative ELBO)"),
                _ => String::new(),
            }
        );
        if let Some(q) = &img.quality {
            let _ = writeln!(
                o,
                "FID (LeNet features) {:.3} of {} samples against {} test images; predicted \
                 classes KL to uniform {:.4} nats, mean max probability {:.3}",
                q.fid_lenet,
                q.samples,
                q.reference,
                q.balance.kl_to_uniform,
                q.balance.mean_max_prob
            );
        }
    }
    for n in &r.notes {
        let _ = writeln!(o, "note: {n}");
    }
    o
}

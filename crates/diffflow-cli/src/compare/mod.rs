//! `diffflow compare`: DiffFlow against DDPM (trained with DiffFlow's trajectory loss and
//! with the ε loss) and an FFJORD-style CNF on the 2-D sets, at matched parameter counts and
//! budgets; writes Figures 4 and 5, the steps table (Tables 4–5 analogue), the progressive
//! training and λ measurements, `report.md` and `results.json`.

mod evaluate;
mod models;
mod report;

use crate::plot::{self, Panel, Style};
use anyhow::{bail, Context, Result};
use clap::Args;
use diffflow::config::ModelKind;
use diffflow::config::Weights;
use diffflow::data::{toy_2d, toy_components, TOY_DATASETS};
use diffflow::flow::{neg_elbo, Steps};
use diffflow::metrics::{sample_metrics, HistGrid, MetricOptions, SampleMetrics};
use diffflow::rng::{Rng, Stream};
use diffflow::sde::fixed_grid;
use diffflow::train::budget::BudgetProgress;
use diffflow::train::budget::{process_cpu_seconds, Budget};
use diffflow::train::{TrainData, Trainer};
use evaluate::{EvalPlan, ModelReport};
use models::Hyper;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args)]
#[command(allow_negative_numbers = true)]
pub struct CompareArgs {
    /// Comma-separated built-in 2-D data sets.
    #[arg(
        long,
        default_value = "rings,olympic,tree,sierpinski,checkerboard,2spirals"
    )]
    datasets: String,
    /// Matched budget: training iterations per model (same batch for all).
    #[arg(long, conflicts_with = "seconds")]
    budget: Option<usize>,
    /// Matched budget: wall-clock seconds of training per model.
    #[arg(long, conflicts_with = "cpu_seconds")]
    seconds: Option<f64>,
    /// Matched budget: CPU seconds of training per model (all threads; unlike --seconds,
    /// not shortened by other processes sharing the cores; Linux).
    #[arg(long)]
    cpu_seconds: Option<f64>,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Comma-separated models: diffflow, ddpm-l, ddpm-ls, cnf.
    #[arg(long, default_value = "diffflow,ddpm-l,ddpm-ls,cnf")]
    models: String,
    /// A reduced run (minutes on 2 cores): tiny budgets and evaluation sizes.
    #[arg(long)]
    quick: bool,
    /// Seed of everything random.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Worker threads.
    #[arg(long)]
    threads: Option<usize>,
    /// Batch size of DiffFlow and the DDPMs (default 1000; quick 128).
    #[arg(long)]
    batch: Option<usize>,
    /// Batch size of the CNF, whose iterations cost several times more (default: a quarter
    /// of the batch).
    #[arg(long)]
    cnf_batch: Option<usize>,
    /// Budget of each of the two runs of the progressive-training measurement (same unit
    /// as the main budget; 0 skips it). Default: the main budget.
    #[arg(long)]
    progressive_budget: Option<f64>,
    /// Learning rates (Adam, ×0.95 fifteen times over the budget).
    #[arg(long, default_value_t = 1e-2)]
    lr_diffflow: f64,
    #[arg(long, default_value_t = 1e-2)]
    lr_ddpm_l: f64,
    #[arg(long, default_value_t = 3e-3)]
    lr_eps: f64,
    #[arg(long, default_value_t = 1e-2)]
    lr_cnf: f64,
    /// RK4 steps of the CNF's training solve.
    #[arg(long, default_value_t = 6)]
    cnf_steps: usize,
    /// ε of the DDPMs' VP SDE on [ε, 1] (DiffFlow's t_min is 0.001).
    #[arg(long, default_value_t = 1e-3)]
    ddpm_t_min: f64,
    /// Time groups per batch of the ε loss (our nets take one time per batch).
    #[arg(long, default_value_t = 10)]
    groups: usize,
    /// Held-out points for the NLL and ELBO (default 1000; quick 100).
    #[arg(long)]
    eval_points: Option<usize>,
    /// Samples for the main table and Figure 5 (default 10000; quick 1000).
    #[arg(long)]
    samples: Option<usize>,
}

/// Everything `results.json` holds.
#[derive(Serialize)]
pub struct Results {
    pub command: String,
    pub budget: String,
    pub quick: bool,
    pub seed: u64,
    pub threads: usize,
    pub batch: usize,
    pub cnf_batch: usize,
    pub lr: [(String, f64); 4],
    pub groups: usize,
    pub cnf_steps: usize,
    pub train_n: (usize, usize),
    pub ddpm_t_min: f64,
    pub sample_n: usize,
    pub elbo_n: usize,
    pub nll_points: usize,
    pub samples: usize,
    pub sweep_samples: usize,
    pub bandwidths: Vec<f64>,
    pub mmd_points: usize,
    pub projections: usize,
    pub hist: (f64, f64, usize, f64),
    pub datasets: Vec<DatasetReport>,
    pub progressive: Option<report::Progressive>,
    pub total_seconds: f64,
}

#[derive(Serialize)]
pub struct DatasetReport {
    pub name: String,
    /// A second fresh data set against the first: the metrics' noise floor.
    pub reference: SampleMetrics,
    pub models: Vec<ModelReport>,
}

fn parse_datasets(s: &str) -> Result<Vec<String>> {
    let names: Vec<String> = s
        .split(',')
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    if names.is_empty() {
        bail!("--datasets: no data set named");
    }
    for n in &names {
        if !TOY_DATASETS.contains(&n.as_str()) {
            bail!(
                "--datasets: unknown data set '{n}' (expected some of {})",
                TOY_DATASETS.join(", ")
            );
        }
    }
    Ok(names)
}

/// Named sample sets (data units) of one row of Figure 5.
type SamplePanels = Vec<(String, Vec<f64>)>;

fn log(msg: &str) {
    eprintln!("{msg}");
}

pub fn run(args: CompareArgs) -> Result<()> {
    let started = Instant::now();
    // candle's CPU matmuls (the CNF's graph) use their own thread pool unless told not to;
    // we parallelise over pieces of the batch instead.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    let datasets = parse_datasets(&args.datasets)?;
    let mut which = Vec::new();
    for m in args
        .models
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        match m.parse::<ModelKind>() {
            Ok(w) if !which.contains(&w) => which.push(w),
            Ok(_) => {}
            Err(_) => {
                bail!("--models: unknown model '{m}' (expected diffflow, ddpm-l, ddpm-ls or cnf)")
            }
        }
    }
    if which.is_empty() {
        bail!("--models: no model named");
    }
    let q = args.quick;
    let positive = |s: f64, name: &str| -> Result<f64> {
        if s.is_finite() && s > 0.0 {
            Ok(s)
        } else {
            bail!("{name} must be > 0, got {s}")
        }
    };
    let budget = match (args.budget, args.seconds, args.cpu_seconds) {
        (Some(0), _, _) => bail!("--budget must be >= 1"),
        (Some(i), _, _) => Budget::Iters(i),
        (None, Some(s), _) => Budget::Seconds(positive(s, "--seconds")?),
        (None, None, Some(s)) => {
            process_cpu_seconds()?;
            Budget::CpuSeconds(positive(s, "--cpu-seconds")?)
        }
        (None, None, None) if q => Budget::Iters(12),
        (None, None, None) => Budget::Seconds(120.0),
    };
    let threads = args
        .threads
        .unwrap_or_else(diffflow::par::default_threads)
        .max(1);
    let batch = args.batch.unwrap_or(if q { 128 } else { 1000 });
    let h = Hyper {
        batch,
        cnf_batch: args.cnf_batch.unwrap_or(batch.div_ceil(4)),
        train_size: if q { 4000 } else { 100_000 },
        test_size: if q { 400 } else { 10_000 },
        seed: args.seed,
        threads,
        lr_diffflow: args.lr_diffflow,
        lr_ddpm_l: args.lr_ddpm_l,
        lr_eps: args.lr_eps,
        lr_cnf: args.lr_cnf,
        groups: if q { args.groups.min(4) } else { args.groups },
        cnf_steps: if q {
            args.cnf_steps.min(3)
        } else {
            args.cnf_steps
        },
        train_n: if q { (4, 6) } else { (10, 20) },
        params: 94_000,
        ddpm_t_min: args.ddpm_t_min,
    };
    if !(h.ddpm_t_min > 0.0 && h.ddpm_t_min < 1.0) {
        bail!("--ddpm-t-min must be in (0, 1), got {}", h.ddpm_t_min);
    }
    if h.batch == 0 || h.cnf_batch == 0 || h.groups == 0 || h.groups > h.batch || h.cnf_steps == 0 {
        bail!("need batch and cnf-batch >= 1, 1 <= groups <= batch and cnf-steps >= 1");
    }
    let plan = EvalPlan {
        nll_points: args.eval_points.unwrap_or(if q { 60 } else { 1000 }),
        rtol: if q { 1e-3 } else { 1e-5 },
        atol: if q { 1e-3 } else { 1e-5 },
        elbo_trajectories: if q { 1 } else { 4 },
        elbo_n: if q { 10 } else { 100 },
        samples: args.samples.unwrap_or(if q { 600 } else { 10_000 }),
        sample_n: if q { 10 } else { 100 },
        sweep_ns: if q {
            vec![2, 5, 10]
        } else {
            vec![5, 10, 20, 50, 100]
        },
        sweep_samples: if q { 300 } else { 5000 },
        lambdas: vec![0.0, 0.5, 1.0],
        lambda_samples: if q { 300 } else { 5000 },
        metrics: MetricOptions {
            mmd_points: if q { 300 } else { 2000 },
            projections: if q { 32 } else { 256 },
            grid: HistGrid {
                lo: -1.0,
                hi: 1.0,
                bins: 40,
                pseudo: 0.1,
            },
            ..MetricOptions::default()
        },
        threads,
        seed: args.seed,
    };
    if plan.nll_points == 0 || plan.samples < 2 {
        bail!("need --eval-points >= 1 and --samples >= 2");
    }
    let out = &args.out;
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create output folder {}", out.display()))?;
    let probe = out.join(".diffflow-write-test");
    std::fs::write(&probe, b"")
        .with_context(|| format!("output folder {} is not writable", out.display()))?;
    let _ = std::fs::remove_file(probe);

    let counts: Vec<(ModelKind, usize)> = ModelKind::ALL
        .iter()
        .map(|&w| {
            let c = models::config(w, "rings", &h);
            let per_net = c.model.net.num_params(2);
            (
                w,
                if w == ModelKind::DiffFlow {
                    2 * per_net
                } else {
                    per_net
                },
            )
        })
        .collect();
    log(&format!(
        "diffflow compare: {} on {}; batch {} (CNF {}), {} thread(s)",
        budget,
        datasets.join(", "),
        h.batch,
        h.cnf_batch,
        threads
    ));
    log(&format!(
        "parameters: {}",
        counts
            .iter()
            .map(|(w, n)| format!("{} {n}", w.name()))
            .collect::<Vec<_>>()
            .join(", ")
    ));

    let mut reports = Vec::new();
    let mut fig5: Vec<(String, SamplePanels)> = Vec::new();
    let mut fig4: Vec<report::Trajectories> = Vec::new();
    for (k, ds) in datasets.iter().enumerate() {
        let cfg0 = models::config(ModelKind::DiffFlow, ds, &h);
        let data = TrainData::toy(&cfg0.data, h.seed)?;
        let std = data.standardizer.clone();
        // Held-out points in data units.
        let mut test = data.test.clone();
        std.invert(&mut test);
        let fresh = toy_2d(
            ds,
            plan.samples,
            None,
            &mut Rng::substream(h.seed, 1000 + k as u64),
        )?;
        let fresh2 = toy_2d(
            ds,
            plan.samples,
            None,
            &mut Rng::substream(h.seed, 2000 + k as u64),
        )?;
        let reference = sample_metrics(&fresh2, &fresh, 2, &plan.metrics)?;
        let mut trained = Vec::new();
        let mut model_reports = Vec::new();
        let mut panels = vec![("data".to_string(), fresh.clone())];
        for &w in &which {
            let t = models::train(w, ds, &data, budget, &h, None, &mut progress(ds, w))?;
            log(&format!(
                "[{ds}] {}: {} parameters, {} iterations in {:.1} s ({:.1} CPU-s), final training loss {:.4}",
                w.name(),
                t.params,
                t.iters,
                t.seconds,
                t.cpu_seconds,
                t.final_loss
            ));
            let r = evaluate::evaluate(&t, &test, &fresh, &plan, &log)?;
            log(&format!(
                "  {}: MMD² {:?}, SW2 {:.4}, hist KL {:.4}",
                w.name(),
                r.metrics.mmd2,
                r.metrics.sw2,
                r.metrics.hist_kl
            ));
            panels.push((
                w.name().to_string(),
                evaluate::draw(&t, plan.samples, plan.sample_n, 1.0, h.seed, threads)?,
            ));
            model_reports.push(r);
            trained.push(t);
        }
        if let Some(labels) = toy_components(ds, 1500) {
            if fig4.len() < 2 {
                let mut x0 = toy_2d(ds, 1500, None, &mut Rng::substream(h.seed, 3000 + k as u64))?;
                std.apply(&mut x0);
                let mut rows = Vec::new();
                for t in &trained {
                    if t.kind == ModelKind::DdpmL {
                        continue; // the same fixed forward process as DDPM (L_s)
                    }
                    let name = if t.kind == ModelKind::DdpmLs {
                        "DDPM".to_string()
                    } else {
                        t.kind.name().to_string()
                    };
                    rows.push((name, evaluate::forward_snapshots(t, &x0, h.seed)?));
                }
                fig4.push(report::Trajectories {
                    dataset: ds.clone(),
                    labels,
                    rows,
                });
            }
        }
        fig5.push((ds.clone(), panels));
        reports.push(DatasetReport {
            name: ds.clone(),
            reference,
            models: model_reports,
        });
        // Figures and report so far (a long run leaves something useful at every stage).
        write_figures(out, &fig5, &fig4, &reports)?;
    }

    let progressive = match args.progressive_budget {
        Some(b) if b <= 0.0 => None,
        _ if !which.contains(&ModelKind::DiffFlow) => None,
        pb => {
            let b = match (budget, pb) {
                (Budget::Iters(_), Some(b)) => Budget::Iters(b.round().max(1.0) as usize),
                (Budget::Seconds(_), Some(b)) => Budget::Seconds(b),
                (Budget::CpuSeconds(_), Some(b)) => Budget::CpuSeconds(b),
                (main, None) => main,
            };
            Some(progressive_measurement(&datasets[0], b, &h, q)?)
        }
    };
    if let Some(p) = &progressive {
        let series: Vec<(String, Vec<(f64, f64)>)> = p
            .runs
            .iter()
            .map(|r| {
                (
                    format!("{} (N = {})", r.label, r.schedule),
                    r.curve.iter().map(|c| (c.seconds, c.val_loss)).collect(),
                )
            })
            .collect();
        plot::line_chart(
            &out.join("progressive.png"),
            &format!(
                "{}: held-out negative ELBO (N = {}) while training",
                p.dataset, p.val_n
            ),
            if matches!(budget, Budget::CpuSeconds(_)) {
                "training CPU seconds"
            } else {
                "training seconds"
            },
            "negative ELBO (nats, standardised)",
            &series,
            false,
        )?;
    }
    let results = Results {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        budget: budget.to_string(),
        quick: q,
        seed: h.seed,
        threads,
        batch: h.batch,
        cnf_batch: h.cnf_batch,
        lr: [
            ("DiffFlow".into(), h.lr_diffflow),
            ("DDPM (L)".into(), h.lr_ddpm_l),
            ("DDPM (L_s)".into(), h.lr_eps),
            ("CNF".into(), h.lr_cnf),
        ],
        groups: h.groups,
        cnf_steps: h.cnf_steps,
        train_n: h.train_n,
        ddpm_t_min: h.ddpm_t_min,
        sample_n: plan.sample_n,
        elbo_n: plan.elbo_n,
        nll_points: plan.nll_points,
        samples: plan.samples,
        sweep_samples: plan.sweep_samples,
        bandwidths: plan.metrics.bandwidths.clone(),
        mmd_points: plan.metrics.mmd_points,
        projections: plan.metrics.projections,
        hist: (
            plan.metrics.grid.lo,
            plan.metrics.grid.hi,
            plan.metrics.grid.bins,
            plan.metrics.grid.pseudo,
        ),
        datasets: reports,
        progressive,
        total_seconds: started.elapsed().as_secs_f64(),
    };
    write_figures(out, &fig5, &fig4, &results.datasets)?;
    report::write(out, &results, &plan)?;
    log(&format!(
        "wrote {} (report.md, results.json, figure4.png, figure5.png, steps.png{}) in {:.0} s",
        out.display(),
        if results.progressive.is_some() {
            ", progressive.png"
        } else {
            ""
        },
        results.total_seconds
    ));
    Ok(())
}

/// A progress callback: one line per 10% of the budget.
fn progress<'a>(
    ds: &'a str,
    w: ModelKind,
) -> impl FnMut(&Trainer, BudgetProgress) -> diffflow::Result<bool> + 'a {
    let mut next = 0.1;
    move |_, p| {
        if p.fraction >= next {
            log(&format!(
                "[{ds}] {}: {:.0}% ({} iterations, {:.0} s)",
                w.name(),
                (p.fraction * 100.0).min(100.0),
                p.iters,
                p.seconds
            ));
            while next <= p.fraction {
                next += 0.1;
            }
        }
        Ok(true)
    }
}

/// Figure 5 (samples), Figure 4 (forward trajectories) and steps.png.
fn write_figures(
    out: &Path,
    fig5: &[(String, SamplePanels)],
    fig4: &[report::Trajectories],
    reports: &[DatasetReport],
) -> Result<()> {
    if !fig5.is_empty() {
        let cols: Vec<String> = fig5[0].1.iter().map(|(n, _)| n.clone()).collect();
        let rows: Vec<String> = fig5.iter().map(|(d, _)| d.clone()).collect();
        let cells: Vec<Vec<Panel>> = fig5
            .iter()
            .map(|(_, panels)| {
                panels
                    .iter()
                    .map(|(_, pts)| Panel {
                        title: String::new(),
                        points: pts,
                        labels: None,
                        style: Style::Histogram,
                    })
                    .collect()
            })
            .collect();
        plot::panel_grid(
            &out.join("figure5.png"),
            "Figure 5: samples (2-D histograms, data units)",
            &rows,
            &cols,
            &cells,
            Some([-1.0, 1.0, -1.0, 1.0]),
        )?;
    }
    if !fig4.is_empty() {
        let mut rows = Vec::new();
        let mut cells = Vec::new();
        for tr in fig4 {
            for (name, snaps) in &tr.rows {
                rows.push(format!("{name} · {}", tr.dataset));
                cells.push(
                    snaps
                        .iter()
                        .map(|pts| Panel {
                            title: String::new(),
                            points: pts,
                            labels: Some(&tr.labels),
                            style: Style::Scatter,
                        })
                        .collect::<Vec<_>>(),
                );
            }
        }
        let cols: Vec<String> = ["t = 0", "t ≈ T/3", "t ≈ 2T/3", "t = T"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        plot::panel_grid(
            &out.join("figure4.png"),
            "Figure 4: forward trajectories (standardised units), coloured by mode",
            &rows,
            &cols,
            &cells,
            Some([-4.0, 4.0, -4.0, 4.0]),
        )?;
    }
    report::steps_chart(&out.join("steps.png"), reports)?;
    Ok(())
}

/// Progressive training against a fixed large N (paper 3.3): DiffFlow on `dataset` twice
/// under the same budget, N = 5 → 10 → 20 → 30 (at 0, 1/8, 1/4, 1/2 of the budget) and
/// N = 30 throughout, both on the flexible grid; the held-out negative ELBO at N = 30
/// (fixed grid, fixed noise, EMA weights) is measured 20 times during each run.
fn progressive_measurement(
    dataset: &str,
    budget: Budget,
    h: &Hyper,
    quick: bool,
) -> Result<report::Progressive> {
    let (val_n, val_points) = if quick { (6, 50) } else { (30, 1000) };
    let stages_prog = if quick {
        vec![(0.0, 2), (0.25, 4), (0.5, 6)]
    } else {
        vec![(0.0, 5), (0.125, 10), (0.25, 20), (0.5, 30)]
    };
    let cfg = models::config(ModelKind::DiffFlow, dataset, h);
    let data = TrainData::toy(&cfg.data, h.seed)?;
    let n = (data.test.len() / 2).min(val_points);
    let dtype = cfg.model.precision.dtype();
    let dev = candle_core::Device::Cpu;
    let x0 = candle_core::Tensor::from_slice(&data.test[..2 * n], (n, 2), &dev)?.to_dtype(dtype)?;
    let mut rng = Rng::stream(h.seed, Stream::Eval);
    let noise = candle_core::Tensor::from_vec(rng.normals(val_n * n * 2), (val_n, n, 2), &dev)?
        .to_dtype(dtype)?;
    let mut runs = Vec::new();
    for (label, st) in [
        ("progressive", stages_prog.clone()),
        ("fixed", vec![(0.0, val_n)]),
    ] {
        let schedule = st
            .iter()
            .map(|(_, n)| n.to_string())
            .collect::<Vec<_>>()
            .join("→");
        let mut curve: Vec<report::CurvePoint> = Vec::new();
        let mut next = 0.05;
        let mut every = |tr: &Trainer, p: BudgetProgress| -> diffflow::Result<bool> {
            let (frac, secs) = (p.fraction, p.seconds);
            if frac >= next || frac >= 1.0 {
                let flow = tr.sampling_flow(Weights::Ema)?;
                let steps = Steps::new(fixed_grid(&cfg.model.grid, val_n), &flow.diffusion);
                let v = neg_elbo(&flow, &x0, &steps, &noise)?;
                let val = v.iter().sum::<f64>() / v.len() as f64;
                curve.push(report::CurvePoint {
                    seconds: secs,
                    iters: p.iters,
                    val_loss: val,
                });
                while next <= frac {
                    next += 0.05;
                }
            }
            Ok(true)
        };
        let t = models::train(
            ModelKind::DiffFlow,
            dataset,
            &data,
            budget,
            h,
            Some(st),
            &mut every,
        )?;
        log(&format!(
            "[{dataset}] progressive measurement, {label} (N = {schedule}): {} iterations in {:.1} s, final held-out negative ELBO {:.4}",
            t.iters,
            t.seconds,
            curve.last().map(|c| c.val_loss).unwrap_or(f64::NAN)
        ));
        runs.push(report::ProgressiveRun {
            label: label.to_string(),
            schedule,
            iters: t.iters,
            seconds: t.seconds,
            cpu_seconds: t.cpu_seconds,
            curve,
        });
    }
    Ok(report::Progressive::new(dataset, val_n, n, runs))
}

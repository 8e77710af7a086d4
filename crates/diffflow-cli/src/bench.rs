//! `diffflow bench`: in one run, the speed of training (seconds per iteration and the GEMM
//! throughput it reaches), the machine's own GEMM rate on the same kernels and thread count,
//! the speed of sampling and the peak resident memory.

use anyhow::{bail, Context, Result};
use clap::Args;
use diffflow::adjoint::{cached_nodes, matmul_flops, tiles, GradMethod};
use diffflow::config::{tabular_width, Preset, RunConfig};
use diffflow::flow::Steps;
use diffflow::nn::gemm_gflops;
use diffflow::rng::{Rng, Stream};
use diffflow::sde::{fixed_grid, StepsSchedule};
use diffflow::train::{TrainData, Trainer};
use diffflow::validation::{measure, ValMetric, ValidationConfig};
use serde::Serialize;
use std::time::Instant;

#[derive(Args)]
pub struct BenchArgs {
    /// Configuration: paper-2d (the authors' 2-D setup), quick, or tabular (with a data set
    /// of bench-tabular as --dataset and the preset's width for its d).
    #[arg(long, default_value = "paper-2d")]
    preset: String,
    /// Built-in 2-D data set, or with --preset tabular one of bench-tabular's sets
    /// (miniboone, digits, ...).
    #[arg(long, default_value = "olympic")]
    dataset: String,
    /// Validation points whose probability-flow NLL is timed (Dormand-Prince 1e-5, exact
    /// divergence, the trained weights; 0: skip it). Tabular sets only.
    #[arg(long, default_value_t = 0)]
    nll_points: usize,
    /// Worker threads for training and sampling (and for the GEMM probe); default: all
    /// cores.
    #[arg(long)]
    threads: Option<usize>,
    /// Timed training iterations.
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Untimed iterations first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Batch size (default: the preset's).
    #[arg(long)]
    batch: Option<usize>,
    /// Number of steps N for training (default: the preset's first N).
    #[arg(long)]
    steps: Option<usize>,
    /// Pieces the batch is split into (default: the preset's).
    #[arg(long)]
    chunks: Option<usize>,
    /// Gradient: adjoint or naive.
    #[arg(long)]
    grad: Option<String>,
    /// Points drawn by the sampling benchmark (0: skip it).
    #[arg(long, default_value_t = 10_000)]
    samples: usize,
    /// Number of steps N of the sampler.
    #[arg(long, default_value_t = 30)]
    sample_steps: usize,
    /// Seconds of each GEMM probe (one after every timed iteration).
    #[arg(long, default_value_t = 0.3)]
    gemm_seconds: f64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// The JSON report.
#[derive(Serialize)]
struct Report {
    preset: String,
    dataset: String,
    cpu: String,
    threads: usize,
    chunks: usize,
    batch: usize,
    n: usize,
    grad: String,
    params: usize,
    iters: usize,
    warmup: usize,
    /// Median seconds per training iteration.
    s_per_iter: f64,
    s_per_iter_min: f64,
    s_per_iter_max: f64,
    /// Every timed iteration, in order.
    s_per_iter_all: Vec<f64>,
    /// Median CPU seconds (user + system, all threads) per iteration: on a loaded machine a
    /// better guide than the wall time to what idle cores would take.
    cpu_s_per_iter: f64,
    /// Matrix-multiply GFLOP of one iteration, counted from the shapes.
    gflop_per_iter: f64,
    /// `gflop_per_iter / s_per_iter`.
    gflops: f64,
    /// The GEMM shape of the probe `[m, k]·[k, n]`.
    gemm_shape: [usize; 3],
    /// Median of the probes' GFLOP/s (`threads` instances at once).
    gemm_gflops: f64,
    gemm_gflops_all: Vec<f64>,
    /// `gflops / gemm_gflops`.
    gemm_ratio: f64,
    sample_points: usize,
    sample_n: usize,
    /// Median seconds to draw `sample_points` points (0 when skipped).
    sample_seconds: f64,
    sample_seconds_all: Vec<f64>,
    /// Points of the timed NLL evaluation (0: skipped).
    nll_points: usize,
    /// Wall seconds of that evaluation.
    nll_seconds: f64,
    /// Its CPU seconds (all threads).
    nll_cpu_seconds: f64,
    /// Peak resident memory of the whole run (VmHWM).
    peak_rss_mb: f64,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => 0.5 * (s[n / 2 - 1] + s[n / 2]),
    }
}

/// Peak resident set size in MB (VmHWM of /proc/self/status), NaN where unavailable.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// CPU seconds (user + system) used so far by all threads of the process.
fn cpu_seconds() -> f64 {
    diffflow::train::budget::process_cpu_seconds().unwrap_or(f64::NAN)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

fn config(args: &BenchArgs) -> Result<RunConfig> {
    let mut c = RunConfig::preset(args.preset.parse::<Preset>()?, &args.dataset);
    // The data only has to exist: a small pool keeps the set-up short.
    c.data.train_size = c.data.train_size.min(50_000);
    c.data.test_size = 1;
    let t = &mut c.train;
    t.iters = args.warmup + args.iters;
    t.threads = args
        .threads
        .unwrap_or_else(diffflow::par::default_threads)
        .max(1);
    if let Some(v) = args.batch {
        t.batch = v;
    }
    if let Some(v) = args.chunks {
        t.chunks = v;
    }
    let first_n = t.steps.at(0);
    t.steps = StepsSchedule::constant(args.steps.unwrap_or(first_n));
    if let Some(v) = &args.grad {
        t.grad = v.parse::<GradMethod>()?;
    }
    c.validate()?;
    Ok(c)
}

/// The training data: a built-in 2-D set, or with the tabular preset a set of bench-tabular
/// (seeded split) with the preset's width for its dimension.
fn bench_data(mut cfg: RunConfig, args: &BenchArgs) -> Result<(RunConfig, TrainData)> {
    if args.preset != "tabular" {
        if args.nll_points > 0 {
            bail!("--nll-points needs --preset tabular");
        }
        let data = TrainData::toy(&cfg.data, cfg.train.seed)?;
        return Ok((cfg, data));
    }
    let set = crate::bench_tabular::sets(&crate::bench_tabular::assets(), &args.dataset)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("--dataset: no data set named"))?;
    let data = TrainData::from_file(&set.source, cfg.train.seed)
        .with_context(|| format!("cannot prepare {}", set.name))?;
    cfg.model.net.width = tabular_width(data.dim);
    cfg.validate()?;
    Ok((cfg, data))
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.iters == 0 {
        bail!("--iters must be >= 1");
    }
    if !(args.gemm_seconds > 0.0 && args.gemm_seconds.is_finite()) {
        bail!("--gemm-seconds must be > 0");
    }
    let cfg = config(&args)?;
    let t = cfg.train.clone();
    let n = t.steps.at(0);
    let (cfg, data) = bench_data(cfg, &args)?;
    let d = data.dim;
    let val = data.val.clone();
    let mut trainer = Trainer::new(cfg.clone(), data)?;
    // The GEMM of the hidden layers as training runs it: one tile's rows.
    let rows = tiles(t.batch, t.chunks)
        .iter()
        .map(|(lo, hi)| hi - lo)
        .max()
        .unwrap_or(1);
    let h = cfg.model.net.width;
    let gemm_shape = [rows, h, h];
    if !args.json {
        eprintln!(
            "bench: {} on {}, batch {}, N = {n}, {} parameters, {} gradient, {} thread(s), {} chunk(s); {}",
            args.preset,
            args.dataset,
            t.batch,
            trainer.flow.num_params(),
            match t.grad {
                GradMethod::Adjoint => "adjoint",
                GradMethod::Naive => "naive",
            },
            t.threads,
            t.chunks,
            cpu_model()
        );
    }
    for _ in 0..args.warmup {
        trainer.train_step()?;
    }
    let mut times = Vec::with_capacity(args.iters);
    let mut gemm = Vec::with_capacity(args.iters);
    let mut cpu = Vec::with_capacity(args.iters);
    for _ in 0..args.iters {
        let (t0, c0) = (Instant::now(), cpu_seconds());
        trainer.train_step()?;
        times.push(t0.elapsed().as_secs_f64());
        cpu.push(cpu_seconds() - c0);
        // Interleaved with the iterations, so that both see the same load on the machine.
        gemm.push(gemm_gflops(rows, h, h, t.threads, args.gemm_seconds));
    }
    let s_per_iter = median(&times);
    let net = &cfg.model.net;
    let elem = cfg.model.precision.dtype().size_in_bytes();
    let cached = cached_nodes(net.width, net.depth, d, elem, t.batch, t.chunks, n);
    let flops = matmul_flops(t.grad, net, d, t.batch, n, cached) as f64 / 1e9;
    let gflops = flops / s_per_iter;
    let gemm_rate = median(&gemm);

    let mut sample_times = Vec::new();
    if args.samples > 0 {
        let flow = trainer.sampling_flow(cfg.sample.weights)?;
        let steps = Steps::new(
            fixed_grid(&cfg.model.grid, args.sample_steps),
            &flow.diffusion,
        );
        for rep in 0..3 {
            let mut rng = Rng::stream(t.seed + rep, Stream::Sample);
            let t0 = Instant::now();
            let x = diffflow::sample::sample_threads(
                &flow,
                args.samples,
                &steps,
                cfg.sample.lambda,
                args.samples,
                &mut rng,
                t.threads,
            )?;
            sample_times.push(t0.elapsed().as_secs_f64());
            std::hint::black_box(x);
        }
    }
    let (mut nll_seconds, mut nll_cpu_seconds) = (0.0, 0.0);
    let nll_points = args.nll_points.min(val.len() / d);
    if nll_points > 0 {
        let flow = trainer.sampling_flow(cfg.sample.weights)?;
        let v = ValidationConfig {
            metric: ValMetric::Nll,
            ..ValidationConfig::default()
        };
        let (t0, c0) = (Instant::now(), cpu_seconds());
        let s = measure(
            &flow,
            &val[..nll_points * d],
            &v,
            &cfg.model.grid,
            n,
            t.seed,
            t.threads,
        )?;
        nll_seconds = t0.elapsed().as_secs_f64();
        nll_cpu_seconds = cpu_seconds() - c0;
        std::hint::black_box(s);
    }
    let report = Report {
        preset: args.preset.clone(),
        dataset: args.dataset.clone(),
        cpu: cpu_model(),
        threads: t.threads,
        chunks: t.chunks,
        batch: t.batch,
        n,
        grad: match t.grad {
            GradMethod::Adjoint => "adjoint".into(),
            GradMethod::Naive => "naive".into(),
        },
        params: trainer.flow.num_params(),
        iters: args.iters,
        warmup: args.warmup,
        s_per_iter,
        s_per_iter_min: times.iter().copied().fold(f64::INFINITY, f64::min),
        s_per_iter_max: times.iter().copied().fold(0.0, f64::max),
        s_per_iter_all: times,
        cpu_s_per_iter: median(&cpu),
        gflop_per_iter: flops,
        gflops,
        gemm_shape,
        gemm_gflops: gemm_rate,
        gemm_gflops_all: gemm,
        gemm_ratio: gflops / gemm_rate,
        sample_points: args.samples,
        sample_n: args.sample_steps,
        sample_seconds: if sample_times.is_empty() {
            0.0
        } else {
            median(&sample_times)
        },
        sample_seconds_all: sample_times,
        nll_points,
        nll_seconds,
        nll_cpu_seconds,
        peak_rss_mb: peak_rss_mb(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_text(&report);
    }
    Ok(())
}

fn print_text(r: &Report) {
    println!(
        "training  {:.3} s/iter (median of {}; min {:.3}, max {:.3}; after {} warm-up)",
        r.s_per_iter, r.iters, r.s_per_iter_min, r.s_per_iter_max, r.warmup
    );
    println!(
        "          {:.3} CPU-s/iter (user + system, all threads)",
        r.cpu_s_per_iter
    );
    println!(
        "          {:.1} GFLOP of matrix products per iteration: {:.1} GFLOP/s",
        r.gflop_per_iter, r.gflops
    );
    println!(
        "GEMM      [{}, {}]·[{}, {}] f32, {} instance(s) at once: {:.1} GFLOP/s (median of {})",
        r.gemm_shape[0],
        r.gemm_shape[2],
        r.gemm_shape[2],
        r.gemm_shape[1],
        r.threads,
        r.gemm_gflops,
        r.gemm_gflops_all.len()
    );
    println!(
        "          training reaches {:.0}% of it",
        100.0 * r.gemm_ratio
    );
    if r.sample_points > 0 {
        println!(
            "sampling  {} points, N = {}: {:.3} s (median of {})",
            r.sample_points,
            r.sample_n,
            r.sample_seconds,
            r.sample_seconds_all.len()
        );
    }
    if r.nll_points > 0 {
        println!(
            "NLL       {} validation points: {:.2} s ({:.2} CPU-s)",
            r.nll_points, r.nll_seconds, r.nll_cpu_seconds
        );
    }
    println!("memory    peak RSS {:.0} MB", r.peak_rss_mb);
}

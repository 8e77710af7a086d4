//! Speed of the U-Net (`cargo bench -p diffflow --bench unet`; a plain report, not criterion):
//! the `mnist_cpu` net in f32 at batch `UNET_BATCH` (default 64), each figure the best and
//! the median of `UNET_REPS` (default 5) timed runs after one warm-up:
//! - the engine's forward and forward + pullback (input cotangent and parameter gradients)
//!   on one thread, in s/batch, images/s and GFLOP/s, against the time the same GEMM calls
//!   take at the machine's own rate on their shapes ([`gemm_gflops`], one thread);
//! - the same net through candle (`forward`, then `backward()` of `Σ y ⊙ cot`), one thread;
//! - one DiffFlow gradient (two such nets, N = `UNET_N` (10), stochastic adjoint over
//!   [`engine_adjoint_gradient`]) on 1 and 2 threads;
//! - the peak resident memory of each part, and the machine's load (it is shared).
//!
//! `UNET_PARTS` (default `engine,candle,adjoint`) selects the parts; `UNET_CH` (default 16)
//! sets the base width `ch` of the net (to see how the engine scales with width).

use candle_core::{DType, Device, Tensor};
use diffflow::adjoint::engine_adjoint_gradient;
use diffflow::flow::{DiffFlow, Steps};
use diffflow::nn::{
    gemm_gflops, unet_forward_flops, unet_gemms, unet_pullback_flops, TimeNet, UNet, UNetConfig,
    UNetEngine, UNetScratch, UNetTape,
};
use diffflow::rng::Rng;
use diffflow::sde::{fixed_grid, Diffusion, GridSpec};
use std::collections::BTreeMap;
use std::time::Instant;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Peak resident memory in MB since the last [`reset_peak`] (VmHWM).
fn peak_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Seconds this thread has run on a CPU (`/proc/thread-self/schedstat`): unlike the wall
/// clock, it does not count the time other processes of the shared machine hold the core.
fn thread_cpu() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |ns| ns * 1e-9)
}

/// Seconds of CPU time of the whole process (user + system, all threads).
fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, r)| r.split_whitespace().collect());
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(u), Some(s)) => (u + s) / 100.0,
        _ => f64::NAN,
    }
}

/// Timings of `reps` runs after one warm-up: best and median wall seconds, and the best
/// on-CPU seconds of the calling thread (or of the process, with `process`).
struct Timing {
    best: f64,
    median: f64,
    cpu: f64,
}

fn time(reps: usize, process: bool, mut f: impl FnMut()) -> Timing {
    let cpu = if process { process_cpu } else { thread_cpu };
    f();
    let mut wall = Vec::new();
    let mut on_cpu = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let (t0, c0) = (Instant::now(), cpu());
        f();
        wall.push(t0.elapsed().as_secs_f64());
        on_cpu = on_cpu.min(cpu() - c0);
    }
    wall.sort_by(f64::total_cmp);
    Timing {
        best: wall[0],
        median: wall[wall.len() / 2],
        cpu: on_cpu,
    }
}

/// A net with every parameter random (weights N(0, 1/fan_in), biases N(0, 0.01)).
fn random_net(cfg: &UNetConfig, rng: &mut Rng) -> UNet {
    let net = UNet::new(cfg, DType::F32, &Device::Cpu, rng).unwrap();
    for (_, v) in net.vars() {
        let fan_in: usize = v.dims()[1..].iter().product::<usize>().max(1);
        let z: Vec<f64> = rng.normals(v.elem_count());
        let s = if v.dims().len() > 1 {
            1.0 / (fan_in as f64).sqrt()
        } else {
            0.1
        };
        let vals: Vec<f32> = z.iter().map(|a| (a * s) as f32).collect();
        v.set(&Tensor::from_vec(vals, v.dims(), &Device::Cpu).unwrap())
            .unwrap();
    }
    net
}

/// Seconds the GEMM calls `shapes` take at the machine's one-thread rate on each shape:
/// [`gemm_gflops`] (one thread: it runs on this one) corrected from wall to on-CPU time, the
/// best of 5 short measurements per shape.
fn gemm_bound(
    shapes: &[(usize, usize, usize)],
    rates: &mut BTreeMap<(usize, usize, usize), f64>,
) -> f64 {
    shapes
        .iter()
        .map(|&(m, n, k)| {
            let r = *rates.entry((m, n, k)).or_insert_with(|| {
                (0..5)
                    .map(|_| {
                        let (t0, c0) = (Instant::now(), thread_cpu());
                        let r = gemm_gflops(m, n, k, 1, 0.02);
                        r * t0.elapsed().as_secs_f64() / (thread_cpu() - c0)
                    })
                    .fold(0.0, f64::max)
            });
            2.0 * (m * n * k) as f64 / (r * 1e9)
        })
        .sum()
}

fn main() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // candle's CPU ops on one thread, like the engine
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    let (batch, reps, n) = (
        env("UNET_BATCH", 64),
        env("UNET_REPS", 5),
        env("UNET_N", 10),
    );
    let parts = std::env::var("UNET_PARTS").unwrap_or_else(|_| "engine,candle,adjoint".into());
    let cfg = UNetConfig {
        ch: env("UNET_CH", UNetConfig::mnist_cpu().ch),
        ..UNetConfig::mnist_cpu()
    };
    let d = cfg.dim();
    let mut rng = Rng::new(0);
    let net = random_net(&cfg, &mut rng);
    println!(
        "U-Net mnist_cpu (ch = {}): {} parameters, batch {batch}, f32; load average at start {}",
        cfg.ch,
        net.num_params(),
        load()
    );
    let x: Vec<f32> = rng.normals(batch * d).iter().map(|v| *v as f32).collect();
    let cot: Vec<f32> = rng.normals(batch * d).iter().map(|v| *v as f32).collect();
    let fwd_flops = unet_forward_flops(&cfg, batch) as f64;
    let back_flops = unet_pullback_flops(&cfg, batch, true) as f64;
    println!(
        "FLOPs per batch: forward {:.2} G, pullback {:.2} G",
        fwd_flops / 1e9,
        back_flops / 1e9
    );

    if parts.contains("engine") {
        engine(&cfg, &net, &x, &cot, reps);
    }
    if parts.contains("candle") {
        candle(&net, &x, &cot, reps);
    }
    if parts.contains("adjoint") {
        adjoint(&cfg, &x, n, reps, &mut rng);
    }
    println!("load average at end {}", load());
}

/// The engine on one thread, against the GEMM-bound time of its calls.
fn engine(cfg: &UNetConfig, net: &UNet, x: &[f32], cot: &[f32], reps: usize) {
    let batch = x.len() / cfg.dim();
    let fwd_flops = unet_forward_flops(cfg, batch) as f64;
    let back_flops = unet_pullback_flops(cfg, batch, true) as f64;
    reset_peak();
    let e = UNetEngine::<f32>::new(net).unwrap();
    let (mut tape, mut scratch) = (UNetTape::default(), UNetScratch::default());
    let mut y = vec![0.0f32; x.len()];
    let mut dx = vec![0.0f32; x.len()];
    let mut grads = e.zero_grads();
    let f = time(reps, false, || {
        e.forward(0.01, x, &mut y, &mut tape, &mut scratch)
    });
    let fb = time(reps, false, || {
        e.forward(0.01, x, &mut y, &mut tape, &mut scratch);
        e.backward(&tape, cot, &mut dx, Some(&mut grads), &mut scratch);
    });
    let engine_mb = peak_mb();
    let shapes = unet_gemms(cfg, batch, 4);
    let mut rates = BTreeMap::new();
    let g_f = gemm_bound(&shapes.forward, &mut rates);
    let g_b = gemm_bound(&shapes.input, &mut rates) + gemm_bound(&shapes.weights, &mut rates);
    let report = |what: &str, t: &Timing, flops: f64, bound: f64| {
        println!(
            "engine {what}: wall best {:.4} s, median {:.4} s per batch ({:.0} images/s); \
             on CPU {:.4} s = {:.1} GFLOP/s; the same GEMMs at the machine's rate on their \
             shapes: {bound:.4} s on CPU ({:.1} GFLOP/s) -> {:.0}% of GEMM speed",
            t.best,
            t.median,
            batch as f64 / t.best,
            t.cpu,
            flops / t.cpu / 1e9,
            flops / bound / 1e9,
            100.0 * bound / t.cpu
        )
    };
    report("forward", &f, fwd_flops, g_f);
    report("forward+backward", &fb, fwd_flops + back_flops, g_f + g_b);
    println!("engine peak RSS: {engine_mb:.0} MB (whole process)");
    let big = gemm_gflops(256, 256, 256, 1, 0.3);
    println!("reference: f32 GEMM 256x256x256 on one thread {big:.1} GFLOP/s");
}

/// The same net through candle's ops and autograd.
fn candle(net: &UNet, x: &[f32], cot: &[f32], reps: usize) {
    let d = net.dim();
    let batch = x.len() / d;
    let fwd_flops = unet_forward_flops(net.config(), batch) as f64;
    let back_flops = unet_pullback_flops(net.config(), batch, true) as f64;
    reset_peak();
    let xt = Tensor::from_vec(x.to_vec(), (batch, d), &Device::Cpu).unwrap();
    let ct = Tensor::from_vec(cot.to_vec(), (batch, d), &Device::Cpu).unwrap();
    let cf = time(reps.min(3), true, || {
        net.forward(&xt, 0.01).unwrap();
    });
    let cfb = time(reps.min(3), true, || {
        let y = net.forward(&xt, 0.01).unwrap();
        (y * &ct).unwrap().sum_all().unwrap().backward().unwrap();
    });
    for (what, t, flops) in [
        ("forward", cf, fwd_flops),
        ("forward+backward", cfb, fwd_flops + back_flops),
    ] {
        println!(
            "candle {what}: wall best {:.4} s, median {:.4} s per batch; process CPU {:.3} s \
             = {:.1} GFLOP/s",
            t.best,
            t.median,
            t.cpu,
            flops / t.cpu / 1e9
        );
    }
    println!("candle peak RSS: {:.0} MB", peak_mb());
}

/// One DiffFlow gradient with two nets on 1 and 2 threads.
fn adjoint(cfg: &UNetConfig, x: &[f32], n: usize, reps: usize, rng: &mut Rng) {
    let d = cfg.dim();
    let batch = x.len() / d;
    let fwd_flops = unet_forward_flops(cfg, batch) as f64;
    let back_flops = unet_pullback_flops(cfg, batch, true) as f64;
    let flow = DiffFlow {
        drift: Box::new(random_net(cfg, rng)),
        score: Box::new(random_net(cfg, rng)),
        diffusion: Diffusion::Constant { value: 1.0 },
    };
    let steps = Steps::new(fixed_grid(&GridSpec::default(), n), &flow.diffusion);
    let x0 = Tensor::from_vec(x.to_vec(), (batch, d), &Device::Cpu).unwrap();
    let noise: Vec<f32> = rng
        .normals(n * batch * d)
        .iter()
        .map(|v| *v as f32)
        .collect();
    let noise = Tensor::from_vec(noise, (n, batch, d), &Device::Cpu).unwrap();
    let passes = (3 * n + 1) as f64 * fwd_flops + (2 * n + 1) as f64 * back_flops;
    for threads in [1, 2] {
        reset_peak();
        let t = time(reps.min(2), true, || {
            engine_adjoint_gradient(&flow, &x0, &steps, &noise, threads, threads).unwrap();
        });
        println!(
            "DiffFlow gradient, batch {batch}, N = {n}, {threads} thread(s): wall best {:.2} s, \
             median {:.2} s per iteration; process CPU {:.2} s ({:.1} GFLOP/s per CPU-second \
             over {:.0} GFLOP); peak RSS {:.0} MB",
            t.best,
            t.median,
            t.cpu,
            passes / t.cpu / 1e9,
            passes / 1e9,
            peak_mb()
        );
    }
}

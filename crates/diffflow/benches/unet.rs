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

use candle_core::{DType, Device, Tensor};
use diffflow::adjoint::engine_adjoint_gradient;
use diffflow::flow::{DiffFlow, Steps};
use diffflow::nn::{
    gemm_gflops, unet_forward_flops, unet_gemms, unet_pullback_flops, TimeNet, UNet,
    UNetConfig, UNetEngine, UNetScratch, UNetTape,
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

/// Best and median seconds of `reps` runs of `f` after one warm-up.
fn time(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut t: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    (t[0], t[t.len() / 2])
}

/// A net with every parameter random (weights N(0, 1/fan_in), biases N(0, 0.01)).
fn random_net(cfg: &UNetConfig, rng: &mut Rng) -> UNet {
    let net = UNet::new(cfg, DType::F32, &Device::Cpu, rng).unwrap();
    for (_, v) in net.vars() {
        let fan_in: usize = v.dims()[1..].iter().product::<usize>().max(1);
        let z: Vec<f64> = rng.normals(v.elem_count());
        let s = if v.dims().len() > 1 { 1.0 / (fan_in as f64).sqrt() } else { 0.1 };
        let vals: Vec<f32> = z.iter().map(|a| (a * s) as f32).collect();
        v.set(&Tensor::from_vec(vals, v.dims(), &Device::Cpu).unwrap())
            .unwrap();
    }
    net
}

/// Seconds the GEMM calls `shapes` take at the machine's one-thread rate on each shape.
fn gemm_bound(shapes: &[(usize, usize, usize)], rates: &mut BTreeMap<(usize, usize, usize), f64>) -> f64 {
    shapes
        .iter()
        .map(|&(m, n, k)| {
            let r = *rates
                .entry((m, n, k))
                .or_insert_with(|| gemm_gflops(m, n, k, 1, 0.05));
            2.0 * (m * n * k) as f64 / (r * 1e9)
        })
        .sum()
}

fn main() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // candle's CPU ops on one thread, like the engine
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    let (batch, reps, n) = (env("UNET_BATCH", 64), env("UNET_REPS", 5), env("UNET_N", 10));
    let cfg = UNetConfig::mnist_cpu();
    let d = cfg.dim();
    let mut rng = Rng::new(0);
    let net = random_net(&cfg, &mut rng);
    println!(
        "U-Net mnist_cpu: {} parameters, batch {batch}, f32; load average at start {}",
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

    // Engine, one thread.
    reset_peak();
    let e = UNetEngine::<f32>::new(&net).unwrap();
    let (mut tape, mut scratch) = (UNetTape::default(), UNetScratch::default());
    let mut y = vec![0.0f32; x.len()];
    let mut dx = vec![0.0f32; x.len()];
    let mut grads = e.zero_grads();
    let f = time(reps, || e.forward(0.01, &x, &mut y, &mut tape, &mut scratch));
    let fb = time(reps, || {
        e.forward(0.01, &x, &mut y, &mut tape, &mut scratch);
        e.backward(&tape, &cot, &mut dx, Some(&mut grads), &mut scratch);
    });
    let engine_mb = peak_mb();
    let shapes = unet_gemms(&cfg, batch, 4);
    let mut rates = BTreeMap::new();
    let g_f = gemm_bound(&shapes.forward, &mut rates);
    let g_b = gemm_bound(&shapes.input, &mut rates) + gemm_bound(&shapes.weights, &mut rates);
    let report = |what: &str, (best, med): (f64, f64), flops: f64, bound: f64| {
        println!(
            "engine {what}: best {best:.4} s, median {med:.4} s per batch ({:.0} images/s), \
             {:.1} GFLOP/s; the same GEMMs at the machine's rate: {bound:.4} s ({:.1} GFLOP/s) \
             -> {:.0}% of GEMM speed",
            batch as f64 / best,
            flops / best / 1e9,
            flops / bound / 1e9,
            100.0 * bound / best
        )
    };
    report("forward", f, fwd_flops, g_f);
    report("forward+backward", fb, fwd_flops + back_flops, g_f + g_b);
    println!("engine peak RSS: {engine_mb:.0} MB (whole process)");
    let big = gemm_gflops(256, 256, 256, 1, 0.3);
    println!("reference: f32 GEMM 256x256x256 on one thread {big:.1} GFLOP/s");

    // candle, one thread.
    reset_peak();
    let xt = Tensor::from_vec(x.clone(), (batch, d), &Device::Cpu).unwrap();
    let ct = Tensor::from_vec(cot.clone(), (batch, d), &Device::Cpu).unwrap();
    let cf = time(reps.min(3), || {
        net.forward(&xt, 0.01).unwrap();
    });
    let cfb = time(reps.min(3), || {
        let y = net.forward(&xt, 0.01).unwrap();
        (y * &ct).unwrap().sum_all().unwrap().backward().unwrap();
    });
    for (what, (best, med), flops) in [
        ("forward", cf, fwd_flops),
        ("forward+backward", cfb, fwd_flops + back_flops),
    ] {
        println!(
            "candle {what}: best {best:.4} s, median {med:.4} s per batch, {:.1} GFLOP/s",
            flops / best / 1e9
        );
    }
    println!("candle peak RSS: {:.0} MB", peak_mb());

    // One DiffFlow gradient with two nets.
    let flow = DiffFlow {
        drift: Box::new(random_net(&cfg, &mut rng)),
        score: Box::new(random_net(&cfg, &mut rng)),
        diffusion: Diffusion::Constant { value: 1.0 },
    };
    let steps = Steps::new(fixed_grid(&GridSpec::default(), n), &flow.diffusion);
    let x0 = Tensor::from_vec(x.clone(), (batch, d), &Device::Cpu).unwrap();
    let noise: Vec<f32> = rng.normals(n * batch * d).iter().map(|v| *v as f32).collect();
    let noise = Tensor::from_vec(noise, (n, batch, d), &Device::Cpu).unwrap();
    let passes = (3 * n + 1) as f64 * fwd_flops + (2 * n + 1) as f64 * back_flops;
    for threads in [1, 2] {
        reset_peak();
        let (best, med) = time(reps.min(2), || {
            engine_adjoint_gradient(&flow, &x0, &steps, &noise, threads, threads).unwrap();
        });
        println!(
            "DiffFlow gradient, batch {batch}, N = {n}, {threads} thread(s): best {best:.2} s, \
             median {med:.2} s per iteration ({:.1} GFLOP/s over {:.0} GFLOP), peak RSS {:.0} MB",
            passes / best / 1e9,
            passes / 1e9,
            peak_mb()
        );
    }
    println!("load average at end {}", load());
}

//! Cost model of the [`MlpEngine`](super::MlpEngine): matrix-multiply FLOPs of its passes,
//! counted from the shapes, and a probe of the machine's GEMM rate on the same `gemm` kernels
//! (so that a measured training speed can be put against what the hardware does).

use super::gemm::matmul;
use super::MlpConfig;
use std::time::Instant;

/// FLOPs (2 per multiply-add) of the matrix products of one forward pass over `rows` rows:
/// input layer `[rows, d]·[d, H]`, `depth` hidden layers `[rows, H]·[H, H]`, output layer
/// `[rows, H]·[H, d]`. The time path (`[2K]→[H]→[H]`, independent of `rows`) is not counted.
pub fn mlp_forward_flops(cfg: &MlpConfig, d: usize, rows: usize) -> u64 {
    let (h, depth) = (cfg.width as u64, cfg.depth as u64);
    let (d, rows) = (d as u64, rows as u64);
    2 * rows * (d * h + depth * h * h + h * d)
}

/// FLOPs of one pullback over `rows` rows: the cotangent through every layer (output
/// `[rows, d]·[d, H]`, hidden `[rows, H]·[H, H]`, input `[rows, H]·[H, d]`), and with `params`
/// the weight gradients (`[·, rows]·[rows, ·]` of the same sizes), i.e. twice as much.
pub fn mlp_pullback_flops(cfg: &MlpConfig, d: usize, rows: usize, params: bool) -> u64 {
    let once = mlp_forward_flops(cfg, d, rows);
    if params {
        2 * once
    } else {
        once
    }
}

/// The rate in GFLOP/s of `C[m, n] = A[m, k]·B[k, n]` (f32, row-major, the engine's own GEMM
/// call) with `threads` independent instances running at once, one per thread, each for
/// about `seconds` after one warm-up call. Total FLOPs of all threads over the wall time.
pub fn gemm_gflops(m: usize, n: usize, k: usize, threads: usize, seconds: f64) -> f64 {
    let threads = threads.max(1);
    let flops_per_call = 2.0 * (m * n * k) as f64;
    let worker = || -> (f64, f64) {
        // Inputs with varied values (no denormals, no zeros).
        let a: Vec<f32> = (0..m * k).map(|i| 0.5 + (i % 7) as f32 * 0.01).collect();
        let b: Vec<f32> = (0..k * n).map(|i| 0.25 - (i % 5) as f32 * 0.01).collect();
        let mut c = vec![0.0f32; m * n];
        let call = |c: &mut [f32]| matmul(c, m, n, k, &a, (k, 1), &b, (n, 1), false);
        call(&mut c);
        let t0 = Instant::now();
        let mut calls = 0u64;
        loop {
            call(&mut c);
            calls += 1;
            let s = t0.elapsed().as_secs_f64();
            if s >= seconds {
                std::hint::black_box(&c);
                return (calls as f64 * flops_per_call, s);
            }
        }
    };
    let t0 = Instant::now();
    let total = std::sync::Mutex::new(0.0);
    let run = crate::par::run_workers(threads, &|| {
        let flops = worker().0;
        if let Ok(mut t) = total.lock() {
            *t += flops;
        }
    });
    let total = if run.is_ok() {
        total.into_inner().unwrap_or(0.0)
    } else {
        0.0
    };
    total / t0.elapsed().as_secs_f64() / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flop_counts_match_a_hand_count() {
        // d = 2, H = 3, one hidden layer, 5 rows:
        // forward = 2·5·(2·3 + 3·3 + 3·2) = 210; pullback = 210 (cotangent) + 210 (weights).
        let cfg = MlpConfig {
            width: 3,
            depth: 1,
            fourier: 4,
            ..MlpConfig::paper_2d()
        };
        assert_eq!(mlp_forward_flops(&cfg, 2, 5), 210);
        assert_eq!(mlp_pullback_flops(&cfg, 2, 5, false), 210);
        assert_eq!(mlp_pullback_flops(&cfg, 2, 5, true), 420);
        // The paper's net, batch 5000: 2·5000·(256 + 3·16384 + 256) = 496.64 MFLOP.
        assert_eq!(
            mlp_forward_flops(&MlpConfig::paper_2d(), 2, 5000),
            496_640_000
        );
    }

    #[test]
    fn gemm_probe_returns_a_rate() {
        let r = gemm_gflops(16, 16, 16, 2, 0.001);
        assert!(r.is_finite() && r > 0.0, "{r}");
    }
}

#[cfg(test)]
mod shape_timing {
    use super::matmul;
    use std::time::Instant;

    /// Rates of the three GEMM shapes of one layer (run with `--ignored --nocapture`).
    #[test]
    #[ignore]
    fn time_layer_gemms() {
        let (r, h) = (125usize, 128usize);
        let a: Vec<f32> = (0..r * h).map(|i| (i % 7) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..h * h).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut out = vec![0.0f32; r * h];
        let mut gw = vec![0.0f32; h * h];
        let reps = 20000;
        for round in 0..3 {
            let t0 = Instant::now();
            for _ in 0..reps {
                matmul(&mut out, r, h, h, &a, (h, 1), &w, (1, h), false);
            }
            let fwd = 2.0 * (r * h * h * reps) as f64 / t0.elapsed().as_secs_f64() / 1e9;
            let t0 = Instant::now();
            for _ in 0..reps {
                matmul(&mut out, r, h, h, &a, (h, 1), &w, (h, 1), false);
            }
            let dx = 2.0 * (r * h * h * reps) as f64 / t0.elapsed().as_secs_f64() / 1e9;
            let t0 = Instant::now();
            for _ in 0..reps {
                matmul(&mut gw, h, h, r, &a, (1, h), &out, (h, 1), true);
            }
            let dw = 2.0 * (r * h * h * reps) as f64 / t0.elapsed().as_secs_f64() / 1e9;
            let t0 = Instant::now();
            for _ in 0..reps {
                // forward with the weight stored transposed (`wt[j, i] = W[i, j]`)
                matmul(&mut out, r, h, h, &a, (h, 1), &w, (h, 1), false);
            }
            let fwd_t = 2.0 * (r * h * h * reps) as f64 / t0.elapsed().as_secs_f64() / 1e9;
            println!(
                "round {round} (lhs threshold {}): forward {fwd:.1}, forward (W stored transposed) {fwd_t:.1}, dx {dx:.1}, dW {dw:.1} GFLOP/s",
                gemm::get_lhs_packing_threshold_single_thread()
            );
            if round == 0 {
                gemm::set_lhs_packing_threshold_single_thread(256);
            }
        }
    }
}

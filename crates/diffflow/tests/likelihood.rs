//! Likelihoods with known answers: the closed-form Gaussian DiffFlow (`diffflow::analytic`),
//! whose probability-flow ODE maps `N(mu, Sigma)` exactly onto the prior; and a briefly trained
//! 2-D model, whose negative ELBO must lie above its probability-flow NLL.

mod common;

use diffflow::analytic::GaussianFlow;
use diffflow::config::{Preset, RunConfig};
use diffflow::flow::Steps;
use diffflow::likelihood::{
    neg_elbo_mc, pf_ode_nll, summarize, Divergence, ElboOptions, NllOptions, Probe,
};
use diffflow::nn::MlpConfig;
use diffflow::ode::{Method, Tolerances};
use diffflow::rng::Rng;
use diffflow::sde::{fixed_grid, GridSpec, StepsSchedule};
use diffflow::train::{TrainData, Trainer};

fn no_progress(_: usize) {}

/// A 3-D model: rotated basis, one expanding, one contracting and one neutral direction.
fn model_3d() -> GaussianFlow {
    GaussianFlow::spatial(
        (0.7, -0.4),
        [2.0, -1.0, 0.0],
        [0.5, -0.3, 1.2],
        0.6,
        0.01,
        0.6,
    )
    .unwrap()
}

fn model_2d() -> GaussianFlow {
    GaussianFlow::planar(0.6, [3.0, -1.0], [0.7, -0.4], 0.5, 0.01, 0.5).unwrap()
}

/// `n` draws of the model's data distribution `N(mu, Sigma)` (Cholesky of Sigma), plus a few
/// points far in the tails.
fn data_points(m: &GaussianFlow, n: usize, seed: u64) -> Vec<f64> {
    let d = m.dim();
    let (t0, _) = m.span();
    let mu = m.mean_at(t0);
    let l = cholesky(&m.cov_at(t0), d);
    let mut rng = Rng::new(seed);
    let mut x = Vec::with_capacity(n * d);
    for r in 0..n {
        let e = rng.normals(d);
        let scale = if r % 10 == 9 { 3.0 } else { 1.0 };
        for i in 0..d {
            x.push(mu[i] + scale * (0..=i).map(|k| l[i * d + k] * e[k]).sum::<f64>());
        }
    }
    x
}

fn cholesky(a: &[f64], d: usize) -> Vec<f64> {
    let mut l = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * d + k] * l[j * d + k]).sum();
            l[i * d + j] = if i == j {
                (a[i * d + i] - s).sqrt()
            } else {
                (a[i * d + j] - s) / l[j * d + j]
            };
        }
    }
    l
}

fn tight() -> NllOptions {
    NllOptions {
        tol: Tolerances {
            rtol: 1e-10,
            atol: 1e-10,
            ..Tolerances::default()
        },
        chunk: 16,
        ..NllOptions::default()
    }
}

#[test]
fn pf_ode_nll_equals_the_closed_form_gaussian_nll() {
    for m in [model_2d(), model_3d()] {
        let flow = m.flow().unwrap();
        let (t0, t1) = m.span();
        let x = data_points(&m, 40, 1);
        let want: Vec<f64> = m.log_density(&x, t0).iter().map(|l| -l).collect();
        let got = pf_ode_nll(
            &flow,
            &x,
            &[t0, t1],
            &tight(),
            &mut Rng::new(0),
            &no_progress,
        )
        .unwrap();
        let worst = got
            .nll
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, common::nan_max);
        eprintln!(
            "d = {}: max |NLL - closed form| = {worst:.2e} nats, NFE per solve {:.0}",
            m.dim(),
            got.mean_nfe()
        );
        assert!(worst < 1e-4, "d = {}: {worst}", m.dim());
        // The latents are the points pushed to T, distributed as the prior: check one.
        assert_eq!(got.z.len(), x.len());
    }
}

#[test]
fn fixed_step_rk4_converges_at_fourth_order_on_the_nll() {
    let m = model_2d();
    let flow = m.flow().unwrap();
    let (t0, t1) = m.span();
    let x = data_points(&m, 10, 2);
    let want: Vec<f64> = m.log_density(&x, t0).iter().map(|l| -l).collect();
    let err = |steps: usize| {
        let opts = NllOptions {
            method: Method::Rk4,
            ..tight()
        };
        let t: Vec<f64> = (0..=steps)
            .map(|i| t0 + (t1 - t0) * i as f64 / steps as f64)
            .collect();
        let got = pf_ode_nll(&flow, &x, &t, &opts, &mut Rng::new(0), &no_progress).unwrap();
        got.nll
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, common::nan_max)
    };
    let (e1, e2) = (err(20), err(40));
    eprintln!(
        "RK4 NLL error: {e1:.3e} (20 steps), {e2:.3e} (40 steps), ratio {:.2}",
        e1 / e2
    );
    assert!((e1 / e2 - 16.0).abs() < 2.0, "ratio {}", e1 / e2);
}

#[test]
fn hutchinson_agrees_with_exact_within_its_standard_error() {
    let m = model_2d();
    let flow = m.flow().unwrap();
    let (t0, t1) = m.span();
    let x = data_points(&m, 6, 3);
    let exact = pf_ode_nll(
        &flow,
        &x,
        &[t0, t1],
        &tight(),
        &mut Rng::new(0),
        &no_progress,
    )
    .unwrap();
    for probe in [Probe::Rademacher, Probe::Gaussian] {
        let probes = 400;
        let opts = NllOptions {
            divergence: Divergence::Hutchinson { probes, probe },
            ..tight()
        };
        let h = pf_ode_nll(&flow, &x, &[t0, t1], &opts, &mut Rng::new(5), &no_progress).unwrap();
        assert_eq!(h.probes, probes);
        for (r, row) in h.per_probe.chunks_exact(probes).enumerate() {
            let s = summarize(row);
            assert!((s.mean - h.nll[r]).abs() < 1e-12);
            // The probes really vary (the Jacobian is not diagonal in these coordinates).
            assert!(s.stderr > 1e-4, "{probe:?}: stderr {}", s.stderr);
            let z = (s.mean - exact.nll[r]) / s.stderr;
            assert!(
                z.abs() < 4.0,
                "{probe:?} row {r}: {} vs exact {} (stderr {}, z = {z:.2})",
                s.mean,
                exact.nll[r],
                s.stderr
            );
        }
        let s = summarize(&h.per_probe[..probes]);
        eprintln!(
            "{probe:?}: row 0 Hutchinson {:.5} +- {:.5} (400 probes), exact {:.5}",
            s.mean, s.stderr, exact.nll[0]
        );
    }
}

#[test]
fn results_do_not_depend_on_the_number_of_threads() {
    let m = model_2d();
    let flow = m.flow().unwrap();
    let (t0, t1) = m.span();
    let x = data_points(&m, 50, 4);
    let run = |threads: usize| {
        let opts = NllOptions {
            divergence: Divergence::Hutchinson {
                probes: 2,
                probe: Probe::Gaussian,
            },
            chunk: 7,
            threads,
            ..NllOptions::default()
        };
        let nll = pf_ode_nll(&flow, &x, &[t0, t1], &opts, &mut Rng::new(9), &no_progress)
            .unwrap()
            .nll;
        let steps = Steps::new(fixed_grid(&grid(&m), 10), &flow.diffusion);
        let eopts = ElboOptions {
            trajectories: 3,
            chunk: 7,
            threads,
        };
        let elbo = neg_elbo_mc(&flow, &x, &steps, &eopts, &mut Rng::new(9), &no_progress).unwrap();
        (nll, elbo)
    };
    assert_eq!(run(1), run(3));
}

fn grid(m: &GaussianFlow) -> GridSpec {
    let (t0, t1) = m.span();
    GridSpec {
        t_min: t0,
        t_max: t1,
        beta: 1.0,
    }
}

#[test]
fn elbo_of_the_exact_model_converges_to_the_nll() {
    // With the exact score and prior, forward and backward path measures agree in continuous
    // time, so the negative ELBO of every trajectory tends to −log p(x) as N grows; the
    // discretisation error is first order (its sign differs from point to point: tail points
    // get too much density), so the RMS over points of the gap must shrink about 4x per 4x N.
    let m = model_2d();
    let flow = m.flow().unwrap();
    let (t0, _) = m.span();
    let x = data_points(&m, 30, 6);
    let want: Vec<f64> = m.log_density(&x, t0).iter().map(|l| -l).collect();
    let rms_gap = |n: usize| {
        let steps = Steps::new(fixed_grid(&grid(&m), n), &flow.diffusion);
        let opts = ElboOptions {
            trajectories: 200,
            ..ElboOptions::default()
        };
        let elbo = neg_elbo_mc(&flow, &x, &steps, &opts, &mut Rng::new(1), &no_progress).unwrap();
        let sq: f64 = elbo.iter().zip(&want).map(|(a, b)| (a - b).powi(2)).sum();
        (sq / want.len() as f64).sqrt()
    };
    let gaps: Vec<f64> = [50, 200, 800].iter().map(|&n| rms_gap(n)).collect();
    eprintln!(
        "RMS of (neg ELBO - NLL) over points: {:.4} (N = 50), {:.4} (N = 200), {:.4} (N = 800)",
        gaps[0], gaps[1], gaps[2]
    );
    assert!(
        gaps[1] < gaps[0] / 3.0 && gaps[2] < gaps[1] / 3.0,
        "{gaps:?}"
    );
    assert!(gaps[2] < 0.02, "{gaps:?}");
}

#[test]
fn elbo_lies_above_the_pf_ode_nll_on_a_trained_model() {
    let mut cfg = RunConfig::preset(Preset::Quick, "8gaussians");
    cfg.data.train_size = 4000;
    cfg.data.test_size = 300;
    cfg.model.net = MlpConfig {
        width: 32,
        depth: 2,
        fourier: 16,
        ..MlpConfig::small()
    };
    cfg.train.iters = 150;
    cfg.train.batch = 128;
    cfg.train.steps = StepsSchedule::constant(8);
    cfg.train.lr = 1e-2;
    cfg.train.threads = 1;
    let data = TrainData::toy(&cfg.data, cfg.train.seed).unwrap();
    let mut tr = Trainer::new(cfg.clone(), data).unwrap();
    for _ in 0..cfg.train.iters {
        tr.train_step().unwrap();
    }
    let flow = &tr.flow;
    let spec = cfg.model.grid;
    let x = &tr.data.test;
    let nll = pf_ode_nll(
        flow,
        x,
        &[spec.t_min, spec.t_max],
        &NllOptions::default(),
        &mut Rng::new(0),
        &no_progress,
    )
    .unwrap();
    let steps = Steps::new(fixed_grid(&spec, 8), &flow.diffusion);
    let elbo = neg_elbo_mc(
        flow,
        x,
        &steps,
        &ElboOptions {
            trajectories: 8,
            ..ElboOptions::default()
        },
        &mut Rng::new(0),
        &no_progress,
    )
    .unwrap();
    let (n, e) = (summarize(&nll.nll), summarize(&elbo));
    let gap: Vec<f64> = elbo.iter().zip(&nll.nll).map(|(a, b)| a - b).collect();
    let g = summarize(&gap);
    eprintln!(
        "trained 8gaussians (standardised units): PF-ODE NLL {:.4} +- {:.4}, neg ELBO {:.4} +- \
         {:.4}, gap {:.4} +- {:.4}, NFE {:.0}",
        n.mean,
        n.stderr,
        e.mean,
        e.stderr,
        g.mean,
        g.stderr,
        nll.mean_nfe()
    );
    assert!(g.mean > 4.0 * g.stderr, "gap {g:?}");
}

#[test]
fn bad_inputs_are_errors() {
    let m = model_2d();
    let flow = m.flow().unwrap();
    let (t0, t1) = m.span();
    let opts = NllOptions::default();
    let mut rng = Rng::new(0);
    let nan = [0.0, f64::NAN];
    let err = pf_ode_nll(&flow, &nan, &[t0, t1], &opts, &mut rng, &no_progress)
        .unwrap_err()
        .to_string();
    assert!(err.contains("row 0, column 1"), "{err}");
    assert!(pf_ode_nll(
        &flow,
        &[1.0, 2.0, 3.0],
        &[t0, t1],
        &opts,
        &mut rng,
        &no_progress
    )
    .is_err());
    assert!(pf_ode_nll(&flow, &[], &[t0, t1], &opts, &mut rng, &no_progress).is_err());
    assert!(pf_ode_nll(&flow, &[0.0, 0.0], &[t1, t0], &opts, &mut rng, &no_progress).is_err());
    let h0 = NllOptions {
        divergence: Divergence::Hutchinson {
            probes: 0,
            probe: Probe::Gaussian,
        },
        ..opts
    };
    assert!(pf_ode_nll(&flow, &[0.0, 0.0], &[t0, t1], &h0, &mut rng, &no_progress).is_err());
    let steps = Steps::new(fixed_grid(&grid(&m), 4), &flow.diffusion);
    let e0 = ElboOptions {
        trajectories: 0,
        ..ElboOptions::default()
    };
    assert!(neg_elbo_mc(&flow, &[0.0, 0.0], &steps, &e0, &mut rng, &no_progress).is_err());
}

#[test]
fn held_out_record_survives_a_resume_and_later_lines_do_not() {
    use diffflow::config::Weights;
    use diffflow::train::{append_metrics, HeldOutRecord, Silent, METRICS_FILE};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = RunConfig::preset(Preset::Quick, "moons");
    cfg.data.train_size = 500;
    cfg.data.test_size = 50;
    cfg.model.net = MlpConfig {
        width: 8,
        depth: 1,
        fourier: 4,
        ..MlpConfig::small()
    };
    cfg.train.iters = 20;
    cfg.train.batch = 16;
    cfg.train.steps = StepsSchedule::constant(3);
    cfg.train.log_every = 10;
    cfg.train.checkpoint_every = 0;
    cfg.train.threads = 1;
    let data = TrainData::toy(&cfg.data, 0).unwrap();
    let mut tr = Trainer::new(cfg.clone(), data.clone()).unwrap();
    tr.run(Some(dir.path()), &mut Silent, None).unwrap();
    let rec = |step| HeldOutRecord {
        step,
        test_nll: 1.0,
        test_nll_stderr: 0.1,
        test_nll_standardised: 2.0,
        test_bits_per_dim: 0.7,
        test_elbo: 1.5,
        test_elbo_stderr: 0.1,
        test_elbo_standardised: 2.5,
        test_points: 50,
        nfe: 30.0,
        weights: Weights::Ema,
        model_step: None,
    };
    append_metrics(dir.path(), &rec(20)).unwrap();
    // A stale line from beyond the checkpoint (as an interrupted run would leave).
    append_metrics(dir.path(), &rec(25)).unwrap();
    // Resume from the step-20 checkpoint and train to 30.
    let mut more = Trainer::resume(dir.path(), data).unwrap();
    more.cfg.train.iters = 30;
    more.run(Some(dir.path()), &mut Silent, None).unwrap();
    let text = std::fs::read_to_string(dir.path().join(METRICS_FILE)).unwrap();
    let steps: Vec<(u64, bool)> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v.get("test_nll").is_some())
        })
        .collect();
    assert_eq!(
        steps,
        vec![(10, false), (20, false), (20, true), (30, false)],
        "{text}"
    );
}

#[test]
fn exact_divergence_through_the_mlp_engine_matches_finite_differences() {
    // The NLL of a random f64 MLP flow by RK4 with the exact divergence (several pullbacks of
    // one kept evaluation) against the same RK4 with the divergence by central differences.
    use candle_core::{DType, Device, Tensor};
    use diffflow::flow::DiffFlow;
    use diffflow::nn::Mlp;
    use diffflow::sde::Diffusion;
    let cfg = MlpConfig {
        width: 16,
        depth: 2,
        fourier: 8,
        ..MlpConfig::small()
    };
    let mut rng = Rng::new(3);
    let flow = DiffFlow {
        drift: Box::new(Mlp::new(2, &cfg, DType::F64, &mut rng).unwrap()),
        score: Box::new(Mlp::new(2, &cfg, DType::F64, &mut rng).unwrap()),
        diffusion: Diffusion::Constant { value: 0.7 },
    };
    let x = rng.normals(10);
    let (t0, t1, k) = (0.001, 0.05, 20);
    let t: Vec<f64> = (0..=k)
        .map(|i| t0 + (t1 - t0) * i as f64 / k as f64)
        .collect();
    let opts = NllOptions {
        method: Method::Rk4,
        ..NllOptions::default()
    };
    let got = pf_ode_nll(&flow, &x, &t, &opts, &mut Rng::new(0), &no_progress).unwrap();
    let (mut fe, mut se) = (flow.drift.engine().unwrap(), flow.score.engine().unwrap());
    let mut v = |t: f64, p: [f64; 2]| -> [f64; 2] {
        let xt = Tensor::from_slice(&p, (1, 2), &Device::Cpu).unwrap();
        let f = fe.eval(&xt, t).unwrap().to_vec2::<f64>().unwrap();
        let s = se.eval(&xt, t).unwrap().to_vec2::<f64>().unwrap();
        let c = 0.5 * 0.7f64.powi(2);
        [f[0][0] - c * s[0][0], f[0][1] - c * s[0][1]]
    };
    // [x, y, ℓ] with ℓ' = ∇·v by central differences.
    let mut rhs = |t: f64, y: [f64; 3]| -> [f64; 3] {
        let h = 1e-5;
        let mut div = 0.0;
        for j in 0..2 {
            let (mut a, mut b) = ([y[0], y[1]], [y[0], y[1]]);
            a[j] += h;
            b[j] -= h;
            div += (v(t, a)[j] - v(t, b)[j]) / (2.0 * h);
        }
        let w = v(t, [y[0], y[1]]);
        [w[0], w[1], div]
    };
    let mut worst: f64 = 0.0;
    for (r, p) in x.chunks_exact(2).enumerate() {
        let mut y = [p[0], p[1], 0.0];
        for w in t.windows(2) {
            let (s, h) = (w[0], w[1] - w[0]);
            let add = |a: [f64; 3], b: [f64; 3], c: f64| {
                [a[0] + c * b[0], a[1] + c * b[1], a[2] + c * b[2]]
            };
            let k1 = rhs(s, y);
            let k2 = rhs(s + h / 2.0, add(y, k1, h / 2.0));
            let k3 = rhs(s + h / 2.0, add(y, k2, h / 2.0));
            let k4 = rhs(s + h, add(y, k3, h));
            for i in 0..3 {
                y[i] += h / 6.0 * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i]);
            }
        }
        let prior = 0.5 * (y[0] * y[0] + y[1] * y[1]) + 2.0 * diffflow::flow::HALF_LN_2PI;
        let want = prior - y[2];
        worst = worst.max((got.nll[r] - want).abs());
    }
    eprintln!("MLP flow: exact-divergence NLL vs finite differences, max difference {worst:.2e}");
    assert!(worst < 1e-6, "{worst}");
}

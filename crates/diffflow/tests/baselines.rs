//! The baselines (DDPM on the VP SDE, FFJORD-style CNF) against known answers, in f64.

use candle_core::{DType, Device, Tensor, Var};
use diffflow::adjoint::{adjoint_gradient, naive_gradient};
use diffflow::baselines::cnf::{cnf_gradient, cnf_nll, velocity_divergence, ZeroField};
use diffflow::baselines::ddpm::{eps_loss_gradient, group_times, EpsScore, VpDrift, VpSchedule};
use diffflow::config::{ModelKind, Precision, Preset, RunConfig, Weights};
use diffflow::flow::{forward_trajectory, DiffFlow, Steps};
use diffflow::likelihood::{pf_ode_nll, NllOptions};
use diffflow::model::{Checkpoint, Model};
use diffflow::nn::{Activation, Mlp, MlpConfig, TimeNet};
use diffflow::ode::Method;
use diffflow::rng::Rng;
use diffflow::sde::{fixed_grid, Diffusion, GridSpec, StepsSchedule};
use diffflow::train::{Silent, TrainData, Trainer};

fn small(act: Activation) -> MlpConfig {
    MlpConfig {
        width: 12,
        depth: 2,
        fourier: 6,
        freq_min: 0.1,
        freq_max: 5.0,
        activation: act,
    }
}

fn tensor(v: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn vec2(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

fn vp() -> VpSchedule {
    VpSchedule {
        beta_min: 0.1,
        beta_max: 20.0,
    }
}

#[test]
fn cnf_jvp_equals_finite_differences() {
    // J u by central differences of the forward pass, for every activation (f64).
    let h = 1e-6;
    for (k, act) in [
        Activation::Gelu,
        Activation::Silu,
        Activation::Tanh,
        Activation::Relu,
    ]
    .into_iter()
    .enumerate()
    {
        let mut rng = Rng::new(40 + k as u64);
        let net = Mlp::new(3, &small(act), DType::F64, &mut rng).unwrap();
        let b = 5;
        let x = tensor(rng.normals(b * 3), &[b, 3]);
        let us: Vec<Tensor> = (0..2)
            .map(|_| tensor(rng.normals(b * 3), &[b, 3]))
            .collect();
        let t = 0.37;
        let (y, jus) = net.forward_jvp(&x, t, &us).unwrap();
        let plain = net.forward(&x, t).unwrap();
        assert_eq!(
            vec2(&y),
            vec2(&plain),
            "{act:?}: primal differs from forward"
        );
        for (u, ju) in us.iter().zip(&jus) {
            let xp = (&x + u.affine(h, 0.0).unwrap()).unwrap();
            let xm = (&x - u.affine(h, 0.0).unwrap()).unwrap();
            let fd = ((net.forward(&xp, t).unwrap() - net.forward(&xm, t).unwrap()).unwrap())
                .affine(0.5 / h, 0.0)
                .unwrap();
            let (a, b) = (vec2(ju), vec2(&fd));
            let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let err = a
                .iter()
                .zip(&b)
                .fold(0.0f64, |m, (p, q)| m.max((p - q).abs()));
            assert!(scale > 1e-3, "{act:?}: trivial Jacobian");
            // ReLU's kinks can sit within h of a pre-activation only with probability ~0.
            assert!(
                err < 1e-7 * scale.max(1.0),
                "{act:?}: JVP err {err} (scale {scale})"
            );
        }
    }
}

#[test]
fn cnf_divergence_exact_and_hutchinson() {
    let mut rng = Rng::new(7);
    let net = Mlp::new(2, &small(Activation::Gelu), DType::F64, &mut rng).unwrap();
    // Exact divergence = trace of the finite-difference Jacobian.
    let x = tensor(vec![0.3, -0.7], &[1, 2]);
    let (_, div) = velocity_divergence(&net, &x, 0.2, None).unwrap();
    let h = 1e-6;
    let mut tr = 0.0;
    for k in 0..2 {
        let mut e = vec![0.0; 2];
        e[k] = h;
        let xp = (&x + tensor(e.clone(), &[1, 2])).unwrap();
        let xm = (&x - tensor(e, &[1, 2])).unwrap();
        let fp = vec2(&net.forward(&xp, 0.2).unwrap());
        let fm = vec2(&net.forward(&xm, 0.2).unwrap());
        tr += (fp[k] - fm[k]) / (2.0 * h);
    }
    let got = vec2(&div)[0];
    assert!((got - tr).abs() < 1e-7 * tr.abs().max(1.0), "{got} vs {tr}");
    // Hutchinson with Rademacher probes: unbiased; its mean over many probes of the same
    // point is within 4 standard errors of the exact value.
    let n = 4000;
    let xs = tensor([0.3, -0.7].repeat(n), &[n, 2]);
    let probes: Vec<f64> = (0..2 * n)
        .map(|_| if rng.uniform() < 0.5 { -1.0 } else { 1.0 })
        .collect();
    let (_, hd) = velocity_divergence(&net, &xs, 0.2, Some(&tensor(probes, &[n, 2]))).unwrap();
    let v = vec2(&hd);
    let mean = v.iter().sum::<f64>() / n as f64;
    let sd = (v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    assert!(sd > 0.0);
    assert!(
        (mean - tr).abs() < 4.0 * sd / (n as f64).sqrt(),
        "{mean} vs {tr}"
    );
}

/// The CNF as a DiffFlow (drift = v, score = 0).
fn cnf_as_flow(net_seed: u64, g: f64) -> (Mlp, DiffFlow) {
    let cfg = small(Activation::Gelu);
    let net = Mlp::new(2, &cfg, DType::F64, &mut Rng::new(net_seed)).unwrap();
    let copy = Mlp::new(2, &cfg, DType::F64, &mut Rng::new(net_seed)).unwrap();
    let flow = DiffFlow {
        drift: Box::new(copy),
        score: Box::new(ZeroField::new(2)),
        diffusion: Diffusion::Constant { value: g },
    };
    (net, flow)
}

#[test]
fn cnf_training_nll_equals_the_probability_flow_nll() {
    // The RK4 graph of the training loss (velocity and JVP divergence as candle ops) and the
    // library's PF-ODE NLL (engine evaluations, VJP divergence, RK4 on the same grid) agree:
    // the probability-flow velocity f − ½ g² s of the CNF is v, whatever g.
    let mut rng = Rng::new(3);
    let b = 6;
    let x: Vec<f64> = rng.normals(b * 2);
    let ts: Vec<f64> = (0..=8).map(|i| i as f64 / 8.0).collect();
    let (net, _) = cnf_as_flow(21, 0.2);
    let (nll, z) = cnf_nll(&net, &tensor(x.clone(), &[b, 2]), &ts, None).unwrap();
    for g in [0.2, 3.0] {
        let (_, flow) = cnf_as_flow(21, g);
        let opts = NllOptions {
            method: Method::Rk4,
            ..NllOptions::default()
        };
        let lib = pf_ode_nll(&flow, &x, &ts, &opts, &mut Rng::new(0), &|_| {}).unwrap();
        for (a, b) in vec2(&nll).iter().zip(&lib.nll) {
            assert!(
                (a - b).abs() < 1e-12 * b.abs().max(1.0),
                "g = {g}: {a} vs {b}"
            );
        }
        for (a, b) in vec2(&z).iter().zip(&lib.z) {
            assert!((a - b).abs() < 1e-12, "g = {g}: latent {a} vs {b}");
        }
    }
}

#[test]
fn cnf_hutchinson_nll_averages_to_the_exact_nll() {
    // In 2-D the four Rademacher probes (±1, ±1) average εᵀJε to tr J exactly, and the
    // probes do not change the path of x, so the mean of the four Hutchinson NLLs through
    // RK4 equals the exact-divergence NLL.
    let mut rng = Rng::new(31);
    let (net, _) = cnf_as_flow(9, 0.2);
    let ts: Vec<f64> = (0..=5).map(|i| i as f64 / 5.0).collect();
    let x: Vec<f64> = rng.normals(2 * 3);
    let signs = [[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]];
    let mut rows = Vec::new();
    let mut probes = Vec::new();
    for p in x.chunks_exact(2) {
        for s in &signs {
            rows.extend_from_slice(p);
            probes.extend_from_slice(s);
        }
    }
    let (exact, _) = cnf_nll(&net, &tensor(x.clone(), &[3, 2]), &ts, None).unwrap();
    let (hutch, _) = cnf_nll(
        &net,
        &tensor(rows, &[12, 2]),
        &ts,
        Some(&tensor(probes, &[12, 2])),
    )
    .unwrap();
    let h = vec2(&hutch);
    for (i, e) in vec2(&exact).iter().enumerate() {
        let mean = h[4 * i..4 * i + 4].iter().sum::<f64>() / 4.0;
        assert!((mean - e).abs() < 1e-12 * e.abs().max(1.0), "{mean} vs {e}");
        // Each single probe differs (the estimator has variance).
        assert!(h[4 * i..4 * i + 4].iter().any(|v| (v - e).abs() > 1e-6));
    }
}

#[test]
fn cnf_gradient_through_rk4_equals_finite_differences() {
    let mut rng = Rng::new(8);
    let b = 4;
    let x = tensor(rng.normals(b * 2), &[b, 2]);
    let ts: Vec<f64> = (0..=4).map(|i| i as f64 / 4.0).collect();
    let (net, _) = cnf_as_flow(5, 0.2);
    let (loss, grads) = cnf_gradient(&net, &x, &ts, None, 1, 1).unwrap();
    let (loss2, grads2) = cnf_gradient(&net, &x, &ts, None, 2, 2).unwrap();
    assert!((loss - loss2).abs() < 1e-12);
    let loss_at = |net: &Mlp| -> f64 {
        let (nll, _) = cnf_nll(net, &x, &ts, None).unwrap();
        vec2(&nll).iter().sum::<f64>() / b as f64
    };
    assert!((loss_at(&net) - loss).abs() < 1e-12);
    let h = 1e-6;
    let mut checked = 0;
    for (vi, (name, var)) in net.vars().iter().enumerate() {
        let values = vec2(var.as_tensor());
        let shape = var.dims().to_vec();
        let g = vec2(&grads[vi]);
        let g2 = vec2(&grads2[vi]);
        // Two entries of every parameter tensor.
        for &j in &[0, values.len() - 1] {
            let set = |delta: f64| {
                let mut v = values.clone();
                v[j] += delta;
                var.set(&tensor(v, &shape)).unwrap();
            };
            set(h);
            let up = loss_at(&net);
            set(-h);
            let down = loss_at(&net);
            set(0.0);
            let fd = (up - down) / (2.0 * h);
            assert!(
                (fd - g[j]).abs() < 1e-6 * fd.abs().max(1e-2),
                "{name}[{j}]: autograd {} vs finite differences {fd}",
                g[j]
            );
            assert!((g[j] - g2[j]).abs() < 1e-12 * g[j].abs().max(1.0));
            checked += 1;
        }
    }
    assert!(checked >= 2 * net.vars().len());
}

#[test]
fn ddpm_closed_form_marginals_match_the_simulated_forward_sde() {
    // Euler–Maruyama with 1000 steps on [0, t] through the library's forward trajectory
    // (frozen VP drift, g = sqrt(β)): mean α_t x_0 and variance σ_t² per coordinate, within
    // 4.5 standard errors (the Euler bias, O(Δt), is far smaller).
    let s = vp();
    let n_paths = 20000;
    let x0 = [1.5, -0.8];
    let mut rng = Rng::new(12);
    let drift = VpDrift::new(2, s);
    let g = Diffusion::Vp {
        beta_min: 0.1,
        beta_max: 20.0,
    };
    for t_end in [0.05, 0.3, 1.0] {
        let n = 1000;
        let ts: Vec<f64> = (0..=n).map(|i| t_end * i as f64 / n as f64).collect();
        let steps = Steps::new(ts, &g);
        let x = tensor(x0.repeat(n_paths), &[n_paths, 2]);
        let noise = tensor(rng.normals(n * n_paths * 2), &[n, n_paths, 2]);
        let mut engine = drift.engine().unwrap();
        let states = forward_trajectory(engine.as_mut(), &x, &steps, &noise).unwrap();
        let xt = vec2(&states[n]);
        let (alpha, sigma) = (s.alpha(t_end), s.sigma(t_end));
        for (k, x0k) in x0.iter().enumerate() {
            let col: Vec<f64> = xt.iter().skip(k).step_by(2).copied().collect();
            let m = col.iter().sum::<f64>() / n_paths as f64;
            let v = col.iter().map(|a| (a - m).powi(2)).sum::<f64>() / (n_paths - 1) as f64;
            let se_m = sigma / (n_paths as f64).sqrt();
            let se_v = sigma * sigma * (2.0 / (n_paths - 1) as f64).sqrt();
            assert!(
                (m - alpha * x0k).abs() < 4.5 * se_m,
                "t = {t_end}, coord {k}: mean {m} vs {}",
                alpha * x0k
            );
            assert!(
                (v - sigma * sigma).abs() < 4.5 * se_v,
                "t = {t_end}, coord {k}: variance {v} vs {}",
                sigma * sigma
            );
        }
    }
}

fn ddpm_flow(seed: u64) -> DiffFlow {
    let mut rng = Rng::new(seed);
    DiffFlow {
        drift: Box::new(VpDrift::new(2, vp())),
        score: Box::new(EpsScore::new(
            Box::new(Mlp::new(2, &small(Activation::Gelu), DType::F64, &mut rng).unwrap()),
            vp(),
        )),
        diffusion: Diffusion::vp_default(),
    }
}

#[test]
fn ddpm_l_adjoint_equals_naive_backprop() {
    // DDPM (L): DiffFlow's trajectory loss with the drift frozen to the VP drift.
    let flow = ddpm_flow(17);
    let spec = GridSpec {
        t_min: 1e-3,
        t_max: 1.0,
        beta: 0.9,
    };
    for n in [1usize, 4, 9] {
        let steps = Steps::new(fixed_grid(&spec, n), &flow.diffusion);
        let mut rng = Rng::new(n as u64);
        let b = 7;
        let x0 = tensor(rng.normals(b * 2), &[b, 2]);
        let noise = tensor(rng.normals(n * b * 2), &[n, b, 2]);
        let adj = adjoint_gradient(&flow, &x0, &steps, &noise, 2, 1).unwrap();
        let nai = naive_gradient(&flow, &x0, &steps, &noise).unwrap();
        assert!(adj.drift.is_empty() && nai.drift.is_empty());
        assert_eq!(adj.score.len(), flow.score.vars().len());
        let mut worst = 0.0f64;
        let mut biggest = 0.0f64;
        for (a, b) in adj.score.iter().zip(&nai.score) {
            let (a, b) = (vec2(a), vec2(b));
            let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let err = a
                .iter()
                .zip(&b)
                .fold(0.0f64, |m, (p, q)| m.max((p - q).abs()));
            worst = worst.max(if scale > 0.0 { err / scale } else { err });
            biggest = biggest.max(scale);
        }
        assert!(worst < 1e-6, "N = {n}: rel err {worst}");
        assert!(biggest > 1e-6, "N = {n}: zero gradient");
        assert!(
            (adj.loss.loss - nai.loss.loss).abs() < 1e-10 * nai.loss.loss.abs().max(1.0),
            "N = {n}: loss {} vs {}",
            adj.loss.loss,
            nai.loss.loss
        );
    }
}

/// The exact score of the VP marginals of N(0, v I) data: `−x / (α_t² v + σ_t²)`.
struct GaussScore {
    v: f64,
}

impl TimeNet for GaussScore {
    fn dim(&self) -> usize {
        2
    }
    fn vars(&self) -> &[(String, Var)] {
        &[]
    }
    fn forward(&self, x: &Tensor, t: f64) -> diffflow::Result<Tensor> {
        let s = vp();
        let p = s.alpha(t).powi(2) * self.v + s.sigma(t).powi(2);
        Ok(x.affine(-1.0 / p, 0.0)?)
    }
}

#[test]
fn eps_loss_of_the_exact_score_has_its_closed_form() {
    // For data N(0, v I) and the exact score, E‖σ_t s(x_t) + ε‖² = d α_t² v / (α_t² v + σ_t²).
    let v: f64 = 0.3;
    let (b, g) = (40000, 8);
    let mut rng = Rng::new(23);
    let x0 = tensor(
        rng.normals(b * 2).iter().map(|a| a * v.sqrt()).collect(),
        &[b, 2],
    );
    let eps = tensor(rng.normals(b * 2), &[b, 2]);
    let times = group_times(g, 1e-3, 1.0, &mut rng);
    let (loss, grads) = eps_loss_gradient(&GaussScore { v }, &vp(), &x0, &eps, &times, 2).unwrap();
    assert!(grads.is_empty());
    let s = vp();
    let want: f64 = times
        .iter()
        .map(|&t| {
            let a2v = s.alpha(t).powi(2) * v;
            2.0 * a2v / (a2v + s.sigma(t).powi(2))
        })
        .sum::<f64>()
        / g as f64;
    // Per-row loss = c χ²₂-like with variance ≤ 2 c² · 2; stderr over 40000 rows ≈ 0.01.
    assert!((loss - want).abs() < 0.03, "{loss} vs {want}");
    // A wrong score (scaled by 2) has a larger loss.
    let (worse, _) =
        eps_loss_gradient(&GaussScore { v: v * 4.0 }, &vp(), &x0, &eps, &times, 1).unwrap();
    assert!(worse > loss + 0.05, "{worse} vs {loss}");
}

fn tiny_config(kind: ModelKind) -> RunConfig {
    let mut cfg = RunConfig::preset(Preset::Quick, "rings");
    cfg.model.kind = kind;
    cfg.model.precision = Precision::F64;
    cfg.model.net = small(Activation::Gelu);
    cfg.model.g = Diffusion::vp_default();
    cfg.model.grid = GridSpec {
        t_min: 1e-3,
        t_max: 1.0,
        beta: 1.0,
    };
    cfg.data.train_size = 500;
    cfg.data.test_size = 100;
    cfg.train.iters = 3;
    cfg.train.batch = 32;
    cfg.train.steps = StepsSchedule::constant(4);
    cfg.train.threads = 1;
    cfg.train.checkpoint_every = 0;
    cfg
}

#[test]
fn every_kind_trains_saves_loads_samples_and_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    for kind in ModelKind::ALL {
        let mut cfg = tiny_config(kind);
        if kind == ModelKind::DiffFlow {
            cfg.model.g = Diffusion::Constant { value: 0.5 };
        }
        if kind == ModelKind::Cnf {
            cfg.sample.lambda = 0.0;
            cfg.train.steps = StepsSchedule::constant(2);
        }
        cfg.train.eps_groups = 4;
        let text = cfg.to_toml().unwrap();
        assert!(
            text.contains(&format!("kind = \"{}\"", kind.key())) || kind == ModelKind::DiffFlow
        );
        assert_eq!(RunConfig::from_toml(&text).unwrap(), cfg);
        let data = TrainData::toy(&cfg.data, 0).unwrap();
        let mut tr = Trainer::new(cfg.clone(), data.clone()).unwrap();
        let run_dir = dir.path().join(kind.key());
        std::fs::create_dir_all(&run_dir).unwrap();
        tr.run(Some(&run_dir), &mut Silent, None).unwrap();
        assert_eq!(tr.step, 3, "{kind}");
        // Saved and loaded back: the same nets.
        let m = Model::load(&run_dir, Some(Checkpoint::Last), Some(Weights::Live)).unwrap();
        assert_eq!(m.kind(), kind);
        let x = tensor(vec![0.1, 0.2, -0.3, 0.4], &[2, 2]);
        for (a, b) in [
            (m.flow.drift.as_ref(), tr.flow.drift.as_ref()),
            (m.flow.score.as_ref(), tr.flow.score.as_ref()),
        ] {
            assert_eq!(
                vec2(&a.forward(&x, 0.5).unwrap()),
                vec2(&b.forward(&x, 0.5).unwrap())
            );
        }
        // Sampled and evaluated in data units, the same way for every kind.
        let mut rng = Rng::new(1);
        let s = m.sample(7, &m.default_sampler(), 4, 2, &mut rng).unwrap();
        assert_eq!(s.x.len(), 14);
        let held = m.held_out(false).unwrap();
        let opts = m.default_eval(1);
        assert_eq!(opts.elbo.is_some(), kind != ModelKind::Cnf);
        let ev = m.evaluate(&held[..2 * 5], &opts, &|_, _| {}).unwrap();
        assert!(ev.nll.mean.is_finite() && ev.n == 5, "{kind}: {ev:?}");
        let sde = |lambda: f64, tweedie: bool| diffflow::model::Sampler::Sde {
            lambda,
            steps: m.elbo_steps(Some(3)),
            tweedie,
        };
        if kind == ModelKind::Cnf {
            // A CNF has no noise: λ ≠ 0, Tweedie and the ELBO are refused, not computed.
            for (l, tw) in [(1.0, false), (0.5, false), (0.0, true)] {
                let e = m
                    .sample(3, &sde(l, tw), 4, 1, &mut rng)
                    .unwrap_err()
                    .to_string();
                assert!(e.contains("CNF is deterministic"), "{e}");
            }
            assert!(m.sample(3, &sde(0.0, false), 4, 1, &mut rng).is_ok());
            let e = m
                .elbo(
                    &held[..2],
                    &m.elbo_steps(None),
                    &Default::default(),
                    &mut rng,
                    &|_| {},
                )
                .unwrap_err()
                .to_string();
            assert!(e.contains("CNF has no ELBO"), "{e}");
            let mut bad = cfg.clone();
            bad.sample.lambda = 1.0;
            assert!(bad
                .validate()
                .unwrap_err()
                .to_string()
                .contains("sample.lambda"));
        } else {
            assert!(m.sample(3, &sde(0.5, true), 4, 1, &mut rng).is_ok());
            let e = m.elbo(
                &held[..2],
                &m.elbo_steps(None),
                &Default::default(),
                &mut rng,
                &|_| {},
            );
            assert!(e.unwrap()[0].is_finite());
        }
    }
    // A DDPM needs the VP diffusion and an interval whose end is near the prior.
    let mut bad = tiny_config(ModelKind::DdpmLs);
    bad.model.g = Diffusion::Constant { value: 0.2 };
    let err = bad.validate().unwrap_err().to_string();
    assert!(err.contains("vp"), "{err}");
    let mut bad = tiny_config(ModelKind::DdpmL);
    bad.model.grid.t_max = 0.05;
    let err = bad.validate().unwrap_err().to_string();
    assert!(err.contains("T = 0.05") && err.contains("alpha_T"), "{err}");
    let mut bad = tiny_config(ModelKind::DdpmLs);
    bad.train.eps_groups = 0;
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("eps_groups"));
    // Configurations written before the DDPM kinds split ("ddpm") read as DDPM (L); those
    // written before the model kind existed as DiffFlow.
    let text = tiny_config(ModelKind::DdpmL)
        .to_toml()
        .unwrap()
        .replace("kind = \"ddpm-l\"", "kind = \"ddpm\"");
    assert_eq!(
        RunConfig::from_toml(&text).unwrap().model.kind,
        ModelKind::DdpmL
    );
    let old = RunConfig::preset(Preset::Quick, "rings").to_toml().unwrap();
    assert!(!old.contains("kind = \"diffflow\""));
    assert_eq!(
        RunConfig::from_toml(&old).unwrap().model.kind,
        ModelKind::DiffFlow
    );
}

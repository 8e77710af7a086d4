//! The stochastic adjoint against naive backprop and finite differences, in f64.

mod common;

use candle_core::{DType, Device, Tensor};
use diffflow::adjoint::{adjoint_gradient, naive_gradient, Gradient};
use diffflow::flow::{DiffFlow, Steps};
use diffflow::nn::{Activation, AutogradEngine, Engine, Mlp, MlpConfig, TimeNet};
use diffflow::rng::Rng;
use diffflow::sde::{fixed_grid, flexible_grid, Diffusion, GridSpec};

fn small_cfg(act: Activation) -> MlpConfig {
    MlpConfig {
        width: 16,
        depth: 2,
        fourier: 8,
        freq_min: 0.1,
        freq_max: 100.0,
        activation: act,
    }
}

fn flow(seed: u64, act: Activation, g: Diffusion) -> DiffFlow {
    let mut rng = Rng::new(seed);
    let cfg = small_cfg(act);
    DiffFlow {
        drift: Box::new(Mlp::new(2, &cfg, DType::F64, &mut rng).unwrap()),
        score: Box::new(Mlp::new(2, &cfg, DType::F64, &mut rng).unwrap()),
        diffusion: g,
    }
}

fn tensor(v: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn inputs(rng: &mut Rng, n: usize, b: usize) -> (Tensor, Tensor) {
    let x0 = tensor(rng.normals(b * 2), &[b, 2]);
    let noise = tensor(rng.normals(n * b * 2), &[n, b, 2]);
    (x0, noise)
}

/// max over tensors of max|a − b| / max|b|.
fn rel_err(a: &[Tensor], b: &[Tensor]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let diff = (x - y).unwrap().abs().unwrap().max_all().unwrap();
            let scale = y.abs().unwrap().max_all().unwrap();
            let (d, s) = (
                diff.to_scalar::<f64>().unwrap(),
                scale.to_scalar::<f64>().unwrap(),
            );
            if s == 0.0 {
                d
            } else {
                d / s
            }
        })
        .fold(0.0, common::nan_max)
}

fn compare(a: &Gradient, b: &Gradient) -> f64 {
    rel_err(&a.drift, &b.drift).max(rel_err(&a.score, &b.score))
}

#[test]
fn adjoint_equals_naive_backprop() {
    let spec = GridSpec::default();
    for (k, &n) in [1usize, 3, 10].iter().enumerate() {
        for flexible in [false, true] {
            let g = Diffusion::Constant { value: 0.2 };
            let fl = flow(10 + k as u64, Activation::Gelu, g);
            let mut rng = Rng::new(100 + n as u64);
            let t = if flexible {
                flexible_grid(&spec, n, &mut rng)
            } else {
                fixed_grid(&spec, n)
            };
            let steps = Steps::new(t, &fl.diffusion);
            let (x0, noise) = inputs(&mut rng, n, 7);
            let adj = adjoint_gradient(&fl, &x0, &steps, &noise, 1, 1).unwrap();
            let nai = naive_gradient(&fl, &x0, &steps, &noise).unwrap();
            let err = compare(&adj, &nai);
            assert!(err < 1e-6, "N = {n}, flexible = {flexible}: rel err {err}");
            assert!(
                (adj.loss.loss - nai.loss.loss).abs() < 1e-12 * nai.loss.loss.abs().max(1.0),
                "loss {} vs {}",
                adj.loss.loss,
                nai.loss.loss
            );
            // Not trivially zero.
            assert!(adj.drift.iter().any(|g| g
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
                > 1e-6));
        }
    }
}

#[test]
fn adjoint_with_other_activations_and_varying_g() {
    let spec = GridSpec::default();
    let g = Diffusion::Linear {
        start: 0.1,
        end: 0.6,
        t_end: spec.t_max,
    };
    for act in [Activation::Silu, Activation::Tanh] {
        let fl = flow(3, act, g);
        let mut rng = Rng::new(5);
        let steps = Steps::new(fixed_grid(&spec, 4), &fl.diffusion);
        let (x0, noise) = inputs(&mut rng, 4, 5);
        let adj = adjoint_gradient(&fl, &x0, &steps, &noise, 1, 1).unwrap();
        let nai = naive_gradient(&fl, &x0, &steps, &noise).unwrap();
        assert!(compare(&adj, &nai) < 1e-6, "{act:?}");
        assert!((adj.loss.loss - nai.loss.loss).abs() < 1e-10);
    }
}

#[test]
fn chunked_and_threaded_adjoint_agree() {
    let spec = GridSpec::default();
    let fl = flow(1, Activation::Gelu, Diffusion::default());
    let mut rng = Rng::new(9);
    let steps = Steps::new(fixed_grid(&spec, 5), &fl.diffusion);
    let (x0, noise) = inputs(&mut rng, 5, 11);
    let one = adjoint_gradient(&fl, &x0, &steps, &noise, 1, 1).unwrap();
    let three = adjoint_gradient(&fl, &x0, &steps, &noise, 3, 1).unwrap();
    let threaded = adjoint_gradient(&fl, &x0, &steps, &noise, 3, 2).unwrap();
    assert!(compare(&one, &three) < 1e-12);
    // Same chunks: identical bytes whatever the number of threads.
    for (a, b) in three.drift.iter().zip(&threaded.drift) {
        assert_eq!(
            a.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f64>().unwrap()
        );
    }
    assert_eq!(three.loss, threaded.loss);
}

/// Perturbs element `k` of parameter `p` of `net` by `h`.
fn nudge(net: &dyn TimeNet, p: usize, k: usize, h: f64) {
    let var = &net.vars()[p].1;
    let mut v = var
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    v[k] += h;
    var.set(&tensor(v, var.dims())).unwrap();
}

#[test]
fn adjoint_equals_central_finite_differences() {
    let spec = GridSpec::default();
    let fl = flow(21, Activation::Gelu, Diffusion::default());
    let mut rng = Rng::new(22);
    let n = 3;
    let steps = Steps::new(flexible_grid(&spec, n, &mut rng), &fl.diffusion);
    let (x0, noise) = inputs(&mut rng, n, 6);
    let adj = adjoint_gradient(&fl, &x0, &steps, &noise, 1, 1).unwrap();
    let loss = |fl: &DiffFlow| {
        let v = diffflow::flow::neg_elbo(fl, &x0, &steps, &noise).unwrap();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let base = loss(&fl);
    assert!((base - adj.loss.loss).abs() < 1e-12);
    let h = 1e-6;
    // (net, parameter index, element): phase, input weight, a hidden weight, output bias.
    let picks = [
        (0usize, 0usize, 3usize),
        (0, 1, 5),
        (0, 7, 20),
        (1, 10, 1),
        (1, 3, 17),
        (1, 0, 2),
    ];
    for &(which, p, k) in &picks {
        let net: &dyn TimeNet = if which == 0 {
            fl.drift.as_ref()
        } else {
            fl.score.as_ref()
        };
        nudge(net, p, k, h);
        let up = loss(&fl);
        nudge(net, p, k, -2.0 * h);
        let down = loss(&fl);
        nudge(net, p, k, h);
        let fd = (up - down) / (2.0 * h);
        let grads = if which == 0 { &adj.drift } else { &adj.score };
        let g = grads[p].flatten_all().unwrap().to_vec1::<f64>().unwrap()[k];
        assert!(
            (fd - g).abs() < 1e-6 * (1.0 + g.abs()),
            "net {which} param {p}[{k}]: finite difference {fd} vs adjoint {g}"
        );
    }
}

#[test]
fn fused_engine_equals_autograd_engine() {
    // d = 3: the thin input and output layers; d = 43: those layers on the GEMM.
    for (dtype, d) in [
        (DType::F64, 3),
        (DType::F32, 3),
        (DType::F64, 43),
        (DType::F32, 43),
    ] {
        let mut rng = Rng::new(4);
        let mlp = Mlp::new(d, &small_cfg(Activation::Gelu), dtype, &mut rng).unwrap();
        let x = tensor(rng.normals(9 * d), &[9, d]).to_dtype(dtype).unwrap();
        let cot = tensor(rng.normals(9 * d), &[9, d]).to_dtype(dtype).unwrap();
        let mut fused = mlp.engine().unwrap();
        let mut auto = AutogradEngine::new(&mlp);
        let t = 0.0123;
        let y1 = fused.eval_keep(&x, t).unwrap();
        let y0 = fused.eval(&x, t).unwrap(); // must not disturb the kept evaluation
        let y2 = auto.eval_keep(&x, t).unwrap();
        let tol = if dtype == DType::F64 { 1e-13 } else { 2e-5 };
        let to64 = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        assert!(rel_err(&[to64(&y1)], &[to64(&y2)]) < tol);
        assert!(rel_err(&[to64(&y0)], &[to64(&y2)]) < tol);
        let dx1 = fused.pullback(&cot, true).unwrap();
        let dx2 = auto.pullback(&cot, true).unwrap();
        assert!(rel_err(&[to64(&dx1)], &[to64(&dx2)]) < tol);
        let g1: Vec<Tensor> = fused.take_grads().unwrap().iter().map(to64).collect();
        let g2: Vec<Tensor> = auto.take_grads().unwrap().iter().map(to64).collect();
        let err = rel_err(&g1, &g2);
        assert!(err < tol * 10.0, "{dtype:?}: {err}");
    }
}

#[test]
fn paper_network_has_99714_parameters() {
    let mut rng = Rng::new(0);
    let mlp = Mlp::new(2, &MlpConfig::paper_2d(), DType::F32, &mut rng).unwrap();
    assert_eq!(mlp.num_params(), 99_714);
    assert_eq!(MlpConfig::paper_2d().num_params(2), 99_714);
}

//! The loss (15) and negative ELBO (13) with a time-varying `g` on a flexible grid, against an
//! independent computation from the discretised path densities, and the gradient of the
//! GENERIC stochastic adjoint (nets that are not the fused MLP, evaluated through
//! `TimeNet::engine` = `AutogradEngine`, the path a U-Net takes) against naive backprop and
//! central finite differences of that independent loss.
//!
//! A time-varying `g` and a random grid make every `g_i` / `g_{i+1}`, `t_i` / `t_{i+1}` and
//! `Δt_i` / `Δt_{i−1}` mix-up change the numbers (a constant `g` or a uniform grid hides them).

mod common;

use candle_core::{DType, Device, Tensor, Var};
use diffflow::adjoint::{adjoint_gradient, engine_adjoint_gradient, naive_gradient, Gradient};
use diffflow::flow::{neg_elbo, DiffFlow, Steps};
use diffflow::likelihood::{neg_elbo_mc, ElboOptions};
use diffflow::nn::{Activation, Mlp, MlpConfig, TimeNet};
use diffflow::rng::Rng;
use diffflow::sde::{flexible_grid, Diffusion, GridSpec};

/// An MLP hidden behind a net that is not one: `as_mlp()` is None and `engine()` is the
/// default `AutogradEngine` over `forward`, so the adjoint and the ELBO take the generic path.
struct Generic(Mlp);

impl TimeNet for Generic {
    fn dim(&self) -> usize {
        self.0.dim()
    }
    fn vars(&self) -> &[(String, Var)] {
        self.0.vars()
    }
    fn buffers(&self) -> &[(String, Var)] {
        self.0.buffers()
    }
    fn forward(&self, x: &Tensor, t: f64) -> diffflow::Result<Tensor> {
        self.0.forward(x, t)
    }
}

const D: usize = 2;

fn mlp(rng: &mut Rng) -> Mlp {
    let cfg = MlpConfig {
        width: 16,
        depth: 2,
        fourier: 8,
        freq_min: 0.1,
        freq_max: 100.0,
        activation: Activation::Gelu,
    };
    Mlp::new(D, &cfg, DType::F64, rng).unwrap()
}

/// `g` from 0.2 at t = 0 to 1.0 at T: ratio 4.6 over the grid, so `Σ d log(g_{i+1}/g_i)`
/// = 3.1 nats and each `g_{i+1}/g_i` is far from 1.
fn diffusion(spec: &GridSpec) -> Diffusion {
    Diffusion::Linear {
        start: 0.2,
        end: 1.0,
        t_end: spec.t_max,
    }
}

/// Drift and score as [`Generic`] nets (`generic`) or as plain MLPs (the fused engines).
fn flow(seed: u64, generic: bool) -> DiffFlow {
    let mut rng = Rng::new(seed);
    let (f, s) = (mlp(&mut rng), mlp(&mut rng));
    let spec = GridSpec::default();
    let (drift, score): (Box<dyn TimeNet>, Box<dyn TimeNet>) = if generic {
        (Box::new(Generic(f)), Box::new(Generic(s)))
    } else {
        (Box::new(f), Box::new(s))
    };
    DiffFlow {
        drift,
        score,
        diffusion: diffusion(&spec),
    }
}

fn tensor(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_slice(v, shape, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

/// `net(x, t)` for the rows of `x` [B, d] through the net's definition (`forward`).
fn eval(net: &dyn TimeNet, x: &[f64], t: f64) -> Vec<f64> {
    values(&net.forward(&tensor(x, &[x.len() / D, D]), t).unwrap())
}

/// `log N(y; m, v I)` in `D` dimensions, the normalising constant written out.
fn log_normal(y: &[f64], m: &[f64], v: f64) -> f64 {
    let sq: f64 = y.iter().zip(m).map(|(a, b)| (a - b).powi(2)).sum();
    -0.5 * sq / v - 0.5 * D as f64 * (2.0 * std::f64::consts::PI * v).ln()
}

/// Independent negative ELBO of each trajectory of `x0` [B, d] with noises `noise` [N, B, d]:
/// the trajectory by the forward step (11), then
/// `−log N(x_N; 0, I) − Σ_i log N(x_i; x_{i+1} − (f − g_{i+1}² s)(x_{i+1}, t_{i+1}) Δt_i,
/// g_{i+1}² Δt_i I) + Σ_i log N(x_{i+1}; x_i + f(x_i, t_i) Δt_i, g_i² Δt_i I)`, i.e. the log
/// ratio of the forward path density given `x_0` to the backward model's joint density.
fn reference_neg_elbo(flow: &DiffFlow, x0: &[f64], steps: &Steps, noise: &[f64]) -> Vec<f64> {
    let (b, n) = (x0.len() / D, steps.n());
    let (t, g) = (&steps.t, &steps.g);
    let mut states = vec![x0.to_vec()];
    for i in 0..n {
        let dt = t[i + 1] - t[i];
        let f = eval(flow.drift.as_ref(), &states[i], t[i]);
        let eps = &noise[i * b * D..(i + 1) * b * D];
        let next: Vec<f64> = (0..b * D)
            .map(|k| states[i][k] + f[k] * dt + g[i] * dt.sqrt() * eps[k])
            .collect();
        states.push(next);
    }
    let row = |v: &[f64], r: usize| v[r * D..(r + 1) * D].to_vec();
    let zero = [0.0; D];
    let mut out: Vec<f64> = (0..b)
        .map(|r| -log_normal(&row(&states[n], r), &zero, 1.0))
        .collect();
    for i in 0..n {
        let dt = t[i + 1] - t[i];
        let f0 = eval(flow.drift.as_ref(), &states[i], t[i]);
        let f1 = eval(flow.drift.as_ref(), &states[i + 1], t[i + 1]);
        let s1 = eval(flow.score.as_ref(), &states[i + 1], t[i + 1]);
        for (r, o) in out.iter_mut().enumerate() {
            let (x, y) = (row(&states[i], r), row(&states[i + 1], r));
            let fwd: Vec<f64> = (0..D).map(|k| x[k] + f0[r * D + k] * dt).collect();
            let bwd: Vec<f64> = (0..D)
                .map(|k| y[k] - (f1[r * D + k] - g[i + 1].powi(2) * s1[r * D + k]) * dt)
                .collect();
            *o += log_normal(&y, &fwd, g[i].powi(2) * dt)
                - log_normal(&x, &bwd, g[i + 1].powi(2) * dt);
        }
    }
    out
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// max |a − b|; the values must be finite (a NaN would compare as no difference).
fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    assert!(
        a.iter().chain(b).all(|v| v.is_finite()),
        "non-finite values: {a:?} vs {b:?}"
    );
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, common::nan_max)
}

/// A flexible grid of `n` steps, `g` on it, `x0` [b, d] and noises [n, b, d].
fn problem(flow: &DiffFlow, n: usize, b: usize, seed: u64) -> (Steps, Vec<f64>, Vec<f64>) {
    let mut rng = Rng::new(seed);
    let t = flexible_grid(&GridSpec::default(), n, &mut rng);
    let steps = Steps::new(t, &flow.diffusion);
    let x0 = rng.normals(b * D);
    let noise = rng.normals(n * b * D);
    (steps, x0, noise)
}

#[test]
fn neg_elbo_with_varying_g_is_the_log_ratio_of_the_path_densities() {
    for generic in [true, false] {
        let fl = flow(3, generic);
        let (n, b) = (6, 5);
        let (steps, x0, noise) = problem(&fl, n, b, 4);
        // The grid is not uniform and g changes along it: mix-ups are visible.
        let dt: Vec<f64> = (0..n).map(|i| steps.dt(i)).collect();
        assert!(dt.iter().any(|&h| (h / dt[0] - 1.0).abs() > 0.1), "{dt:?}");
        assert!(
            D as f64 * (steps.g[n] / steps.g[0]).ln() > 3.0,
            "{:?}",
            steps.g
        );
        let want = reference_neg_elbo(&fl, &x0, &steps, &noise);
        let got = neg_elbo(
            &fl,
            &tensor(&x0, &[b, D]),
            &steps,
            &tensor(&noise, &[n, b, D]),
        )
        .unwrap();
        let err = max_abs_diff(&got, &want);
        eprintln!("generic = {generic}: neg ELBO per trajectory {want:.4?}, max |error| {err:.1e}");
        assert!(err < 1e-9, "generic = {generic}: {got:?} vs {want:?}");

        // The Monte Carlo over trajectories: points in pieces of `chunk`, piece c drawing its
        // noises [N, chunk·K, d] (row p·K + j: point p, trajectory j) from
        // Rng::substream(base, c), base being one draw of the caller's generator.
        let (points, k, chunk) = (3, 4, 2);
        let x = Rng::new(5).normals(points * D);
        let opts = ElboOptions {
            trajectories: k,
            chunk,
            threads: 1,
        };
        let got = neg_elbo_mc(&fl, &x, &steps, &opts, &mut Rng::new(6), &|_| {}).unwrap();
        let base = Rng::new(6).next_u64();
        let mut want = Vec::new();
        for c in 0..points.div_ceil(chunk) {
            let rows: Vec<f64> = x[c * chunk * D..((c + 1) * chunk).min(points) * D].to_vec();
            let p = rows.len() / D;
            let rep: Vec<f64> = rows
                .chunks_exact(D)
                .flat_map(|r| std::iter::repeat_n(r, k).flatten().copied())
                .collect();
            let noise = Rng::substream(base, c as u64).normals(n * p * k * D);
            let per_traj = reference_neg_elbo(&fl, &rep, &steps, &noise);
            want.extend(per_traj.chunks_exact(k).map(mean));
        }
        let err = max_abs_diff(&got, &want);
        assert!(err < 1e-9, "generic = {generic}: {got:?} vs {want:?}");
    }
}

/// Perturbs element `k` of parameter `p` of `net` by `h`.
fn nudge(net: &dyn TimeNet, p: usize, k: usize, h: f64) {
    let var = &net.vars()[p].1;
    let mut v = values(var.as_tensor());
    v[k] += h;
    var.set(&tensor(&v, var.dims())).unwrap();
}

/// max over tensors of max|a − b| / max|b|.
fn rel_err(a: &[Tensor], b: &[Tensor]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let (x, y) = (values(x), values(y));
            let scale = y.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            max_abs_diff(&x, &y) / scale.max(1e-300)
        })
        .fold(0.0, common::nan_max)
}

fn same(a: &Gradient, b: &Gradient) -> bool {
    let bytes = |v: &[Tensor]| v.iter().map(values).collect::<Vec<_>>();
    a.loss == b.loss && bytes(&a.drift) == bytes(&b.drift) && bytes(&a.score) == bytes(&b.score)
}

#[test]
fn generic_adjoint_with_varying_g_matches_naive_backprop_and_finite_differences() {
    let fl = flow(11, true);
    let (n, b) = (5, 6);
    let (steps, x0v, noisev) = problem(&fl, n, b, 12);
    let (x0, noise) = (tensor(&x0v, &[b, D]), tensor(&noisev, &[n, b, D]));
    // Two chunks: the per-chunk gradients are summed.
    let adj = engine_adjoint_gradient(&fl, &x0, &steps, &noise, 2, 1).unwrap();
    // Nets that are not MLPs: the dispatcher takes this same path.
    assert!(same(
        &adj,
        &adjoint_gradient(&fl, &x0, &steps, &noise, 2, 1).unwrap()
    ));
    let nai = naive_gradient(&fl, &x0, &steps, &noise).unwrap();
    let (ed, es) = (
        rel_err(&adj.drift, &nai.drift),
        rel_err(&adj.score, &nai.score),
    );
    eprintln!("adjoint vs naive backprop: rel err drift {ed:.1e}, score {es:.1e}");
    assert!(ed < 1e-6 && es < 1e-6, "drift {ed}, score {es}");

    // The loss value against the path densities.
    let loss = |fl: &DiffFlow| mean(&reference_neg_elbo(fl, &x0v, &steps, &noisev));
    let want = loss(&fl);
    for (what, v) in [("adjoint", adj.loss.loss), ("naive", nai.loss.loss)] {
        assert!(
            (v - want).abs() < 1e-10 * want.abs().max(1.0),
            "{what} loss {v} vs path densities {want}"
        );
    }
    assert!((adj.loss.prior + adj.loss.path - adj.loss.loss).abs() < 1e-12);

    // Central differences of the independent loss at the largest gradient entry of the time
    // phase, the input and time-embedding weights, a hidden weight and the output weights
    // and biases of both nets. Rounding error of the quotient: about 1e-16 x loss / h.
    let h = 1e-6;
    let mut picks = Vec::new();
    for which in [0usize, 1] {
        let grads = if which == 0 { &adj.drift } else { &adj.score };
        for p in [0usize, 1, 3, 7, 11, 12] {
            let v = values(&grads[p]);
            let k = (0..v.len())
                .max_by(|&i, &j| v[i].abs().total_cmp(&v[j].abs()))
                .unwrap();
            picks.push((which, p, k));
        }
    }
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
        let g = values(&grads[p])[k];
        eprintln!("net {which} param {p}[{k}]: adjoint {g:.6e}, finite difference {fd:.6e}");
        assert!(
            g.abs() > 1e-4,
            "net {which} param {p}[{k}]: gradient {g} too small to test"
        );
        assert!(
            (fd - g).abs() < 1e-4 * g.abs(),
            "net {which} param {p}[{k}]: finite difference {fd} vs adjoint {g}"
        );
    }
}

//! Samplers on the closed-form Gaussian DiffFlow (`diffflow::analytic`), whose reverse
//! processes map the prior exactly onto `N(mu, Sigma)`: SDE(lambda) for lambda in {0, 0.5, 1},
//! the probability-flow ODE with RK4 and Dormand–Prince, and the Tweedie last step.

mod common;

use candle_core::{Device, Tensor};
use diffflow::analytic::{Field, GaussianFlow};
use diffflow::flow::Steps;
use diffflow::ode::{Method, Tolerances};
use diffflow::rng::Rng;
use diffflow::sample::{sample, sample_ode, sample_sde, tweedie_step};
use diffflow::sde::{fixed_grid, GridSpec};

fn model() -> GaussianFlow {
    GaussianFlow::planar(0.6, [1.0, -1.0], [0.7, -0.4], 0.8, 0.01, 0.5).unwrap()
}

fn uniform_steps(m: &GaussianFlow, n: usize) -> Steps {
    let (t0, t1) = m.span();
    let spec = GridSpec {
        t_min: t0,
        t_max: t1,
        beta: 1.0,
    };
    Steps::new(fixed_grid(&spec, n), &m.flow().unwrap().diffusion)
}

fn rows(x: &Tensor) -> Vec<f64> {
    x.flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

/// Sample mean [d] and covariance [d, d] (divided by n − 1) of `x` [n, d].
fn moments(x: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let n = x.len() / d;
    let mut mean = vec![0.0; d];
    for r in x.chunks_exact(d) {
        for i in 0..d {
            mean[i] += r[i] / n as f64;
        }
    }
    let mut cov = vec![0.0; d * d];
    for r in x.chunks_exact(d) {
        for i in 0..d {
            for j in 0..d {
                cov[i * d + j] += (r[i] - mean[i]) * (r[j] - mean[j]) / (n - 1) as f64;
            }
        }
    }
    (mean, cov)
}

/// Asserts that the sample moments of `x` [n, d] match `N(mu, sigma)` within 4 standard
/// errors: `sqrt(S_ii / n)` for the mean, `sqrt((S_ii S_jj + S_ij²) / n)` for the covariance.
fn assert_moments(x: &[f64], mu: &[f64], sigma: &[f64], what: &str) {
    let d = mu.len();
    let n = (x.len() / d) as f64;
    let (m, c) = moments(x, d);
    for i in 0..d {
        let se = (sigma[i * d + i] / n).sqrt();
        assert!(
            (m[i] - mu[i]).abs() < 4.0 * se,
            "{what}: mean[{i}] {} vs {} (se {se:.2e})",
            m[i],
            mu[i]
        );
        for j in 0..d {
            let s = sigma[i * d + j];
            let se = ((sigma[i * d + i] * sigma[j * d + j] + s * s) / n).sqrt();
            assert!(
                (c[i * d + j] - s).abs() < 4.0 * se,
                "{what}: cov[{i},{j}] {} vs {s} (se {se:.2e})",
                c[i * d + j]
            );
        }
    }
    eprintln!("{what}: mean {m:.4?} (target {mu:.4?}), cov {c:.4?} (target {sigma:.4?})");
}

#[test]
fn sde_samples_match_the_target_for_lambda_0_half_1() {
    let m = model();
    let flow = m.flow().unwrap();
    let (t0, _) = m.span();
    // Euler–Maruyama bias is O(Δt): with 1000 steps it is far below the sampling error.
    let steps = uniform_steps(&m, 1000);
    for lambda in [0.0, 0.5, 1.0] {
        let x = sample_sde(
            &flow,
            20_000,
            &steps,
            lambda,
            false,
            2000,
            1,
            &mut Rng::new(3),
        )
        .unwrap();
        assert_moments(
            &rows(&x),
            &m.mean_at(t0),
            &m.cov_at(t0),
            &format!("lambda = {lambda}"),
        );
    }
}

#[test]
fn ode_samplers_match_the_target() {
    let m = model();
    let flow = m.flow().unwrap();
    let (t0, t1) = m.span();
    let t: Vec<f64> = (0..=40).map(|i| t0 + (t1 - t0) * i as f64 / 40.0).collect();
    let tol = Tolerances {
        rtol: 1e-8,
        atol: 1e-8,
        ..Tolerances::default()
    };
    let (rk4, _) = sample_ode(
        &flow,
        20_000,
        &t,
        Method::Rk4,
        &tol,
        5000,
        1,
        &mut Rng::new(4),
    )
    .unwrap();
    assert_moments(&rows(&rk4), &m.mean_at(t0), &m.cov_at(t0), "rk4");
    let (dp, stats) = sample_ode(
        &flow,
        20_000,
        &t,
        Method::Dopri5,
        &tol,
        5000,
        1,
        &mut Rng::new(4),
    )
    .unwrap();
    assert_moments(&rows(&dp), &m.mean_at(t0), &m.cov_at(t0), "dopri5");
    assert_eq!(stats.len(), 4);
    // Same prior draws, same deterministic map: RK4 (40 steps) and dopri5 agree pointwise.
    let diff = rows(&rk4)
        .iter()
        .zip(rows(&dp))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, common::nan_max);
    eprintln!(
        "rk4 vs dopri5 max difference {diff:.2e}, dopri5 NFE {}",
        stats[0].nfe
    );
    assert!(diff < 1e-6, "{diff}");
}

#[test]
fn sample_sde_without_tweedie_is_sample() {
    let m = model();
    let flow = m.flow().unwrap();
    let steps = uniform_steps(&m, 7);
    for lambda in [0.0, 0.3, 1.0] {
        let a = sample(&flow, 50, &steps, lambda, 16, &mut Rng::new(1)).unwrap();
        let b = sample_sde(&flow, 50, &steps, lambda, false, 16, 1, &mut Rng::new(1)).unwrap();
        assert_eq!(rows(&a), rows(&b));
    }
}

#[test]
fn tweedie_step_removes_exactly_the_last_noise() {
    // For lambda = 1 and constant g the Tweedie step is the last Euler–Maruyama step without
    // its noise: with the same draws, x0(EM) − x0(Tweedie) = g sqrt(Δt_0) η_0, η_0 being the
    // last block of normals drawn; so the sample variance drops by g² Δt_0 per coordinate.
    let m = model();
    let flow = m.flow().unwrap();
    let (n, k, d) = (20_000, 5, 2);
    let steps = uniform_steps(&m, k);
    let em = rows(&sample_sde(&flow, n, &steps, 1.0, false, n, 1, &mut Rng::new(8)).unwrap());
    let tw = rows(&sample_sde(&flow, n, &steps, 1.0, true, n, 1, &mut Rng::new(8)).unwrap());
    let mut rng = Rng::new(8);
    for _ in 0..k {
        rng.normals(n * d); // z, then the noises of steps N−1 … 1
    }
    let eta0 = rng.normals(n * d);
    let scale = m.g() * steps.dt(0).sqrt();
    let worst = em
        .iter()
        .zip(&tw)
        .zip(&eta0)
        .map(|((a, b), e)| (a - b - scale * e).abs())
        .fold(0.0, common::nan_max);
    assert!(worst < 1e-12, "{worst}");
    let (_, c_em) = moments(&em, d);
    let (_, c_tw) = moments(&tw, d);
    let drop = scale * scale;
    for i in 0..d {
        // S(a + b) − S(a) = S(b) + 2 S(a, b) for independent a, b: standard error
        // sqrt(2 Var(b)² / n + 4 Var(a) Var(b) / n).
        let se = ((2.0 * drop * drop + 4.0 * c_tw[i * d + i] * drop) / n as f64).sqrt();
        let got = c_em[i * d + i] - c_tw[i * d + i];
        eprintln!("variance drop [{i}]: {got:.5} (g² Δt_0 = {drop:.5}, se {se:.5})");
        assert!((got - drop).abs() < 4.0 * se, "{got} vs {drop}");
    }
}

/// 2 x 2 matrices, row-major.
type M2 = [f64; 4];

fn mul(a: &M2, b: &M2) -> M2 {
    [
        a[0] * b[0] + a[1] * b[2],
        a[0] * b[1] + a[1] * b[3],
        a[2] * b[0] + a[3] * b[2],
        a[2] * b[1] + a[3] * b[3],
    ]
}

fn transpose(a: &M2) -> M2 {
    [a[0], a[2], a[1], a[3]]
}

fn inverse(a: &M2) -> M2 {
    let det = a[0] * a[3] - a[1] * a[2];
    [a[3] / det, -a[1] / det, -a[2] / det, a[0] / det]
}

fn apply(a: &M2, v: &[f64]) -> [f64; 2] {
    [a[0] * v[0] + a[1] * v[1], a[2] * v[0] + a[3] * v[1]]
}

/// The posterior mean of the data point given the first forward step (11) of the Gaussian
/// model, in closed form. With `x_0 ~ N(μ, Σ)` (the data), `f(x) = A x + b` and
/// `x_1 = M x_0 + b h + g √h ε`, `M = I + A h`, the pair is jointly Gaussian:
/// `x_1 ~ N(M μ + b h, S)`, `S = M Σ Mᵀ + g² h I`, `Cov(x_0, x_1) = Σ Mᵀ`, so
/// `E[x_0 | x_1] = K x_1 + c` with `K = Σ Mᵀ S⁻¹`, `c = μ − K (M μ + b h)`, and over `x_1`
/// it has mean `μ` and covariance `K S Kᵀ`. Returns `(K, c, S)`.
fn posterior_mean(m: &GaussianFlow, h: f64) -> (M2, [f64; 2], M2) {
    let (t0, _) = m.span();
    let (mu, sigma) = (m.mean_at(t0), m.cov_at(t0));
    let sigma: M2 = sigma.try_into().unwrap();
    let (a, b) = m.coefficients(Field::Drift, t0);
    let mm: M2 = [1.0 + a[0] * h, a[1] * h, a[2] * h, 1.0 + a[3] * h];
    let q = m.g() * m.g() * h;
    let mut s = mul(&mul(&mm, &sigma), &transpose(&mm));
    s[0] += q;
    s[3] += q;
    let k = mul(&mul(&sigma, &transpose(&mm)), &inverse(&s));
    let mean1 = apply(&mm, &mu);
    let kx = apply(&k, &[mean1[0] + b[0] * h, mean1[1] + b[1] * h]);
    (k, [mu[0] - kx[0], mu[1] - kx[1]], s)
}

#[test]
fn tweedie_step_is_the_posterior_mean_to_second_order_in_dt() {
    // Tweedie's formula gives E[y | x_1] = x_1 + g² h ∇log p̃_1(x_1) exactly for
    // y = x_0 + f(x_0) h; the step uses the model's score s(., t_1) for ∇log p̃_1 (they
    // differ by O(h²)) and undoes the drift to first order (x_0 = y − f(y) h + O(h²)), so
    // x̂_0 − E[x_0 | x_1] = O(h²), while the correction E[x_0 | x_1] − x_1 itself is O(h).
    // An error of first order (a factor on g² h, a missing drift or score term, Δt or t
    // of the wrong step) leaves an O(h) difference and fails both checks.
    let m = model();
    let flow = m.flow().unwrap();
    let (t0, _) = m.span();
    let points = 200;
    let e = Rng::new(2).normals(points * 2);
    let ((a, b), mu) = (m.coefficients(Field::Drift, t0), m.mean_at(t0));
    let mut errs = Vec::new();
    for h in [0.02, 0.01, 0.005, 0.0025] {
        let (k, c, s) = posterior_mean(&m, h);
        // Points spread like x_1: x_1 = E[x_1] + chol(S) e.
        let mean1 = [
            mu[0] + (a[0] * mu[0] + a[1] * mu[1] + b[0]) * h,
            mu[1] + (a[2] * mu[0] + a[3] * mu[1] + b[1]) * h,
        ];
        let l0 = s[0].sqrt();
        let l1 = s[2] / l0;
        let l2 = (s[3] - l1 * l1).sqrt();
        let x1: Vec<f64> = e
            .chunks_exact(2)
            .flat_map(|r| [mean1[0] + l0 * r[0], mean1[1] + l1 * r[0] + l2 * r[1]])
            .collect();
        let x1t = Tensor::from_vec(x1.clone(), (points, 2), &Device::Cpu).unwrap();
        let t1 = t0 + h;
        let f1 = flow.drift.engine().unwrap().eval(&x1t, t1).unwrap();
        let s1 = flow.score.engine().unwrap().eval(&x1t, t1).unwrap();
        let got = rows(&tweedie_step(&x1t, &f1, &s1, h, m.g()).unwrap());
        assert!(
            got.iter().all(|v| v.is_finite()),
            "h = {h}: non-finite output"
        );
        let (mut err, mut corr) = (0.0f64, 0.0f64);
        for (x, y) in x1.chunks_exact(2).zip(got.chunks_exact(2)) {
            let kx = apply(&k, x);
            for i in 0..2 {
                let want = kx[i] + c[i];
                err = err.max((y[i] - want).abs());
                corr = corr.max((want - x[i]).abs());
            }
        }
        eprintln!("h = {h}: max |x̂0 − E[x0|x1]| = {err:.3e}, max |E[x0|x1] − x1| = {corr:.3e}");
        assert!(
            err < 0.05 * corr,
            "h = {h}: error {err} vs correction {corr}"
        );
        errs.push(err);
    }
    for w in errs.windows(2) {
        let ratio = w[0] / w[1];
        assert!(
            (3.3..4.7).contains(&ratio),
            "halving h divides the error by {ratio}, expected 4 (second order): {errs:?}"
        );
    }
}

#[test]
fn sample_sde_with_tweedie_has_the_law_of_the_posterior_mean() {
    // The backward SDE down to x_1 ~ p_{t_1}, then the Tweedie step: the output must have
    // the law of E[x_0 | x_1], N(μ, K S Kᵀ), not the data's N(μ, Σ) (which the last
    // Euler–Maruyama step gives) nor that of x_1. A large first step h = Δt_0 = 0.02 makes
    // the difference large (the variance along the first basis direction drops by 6.5%, 11
    // standard errors here); its O(h²) part (0.3%) and the Euler–Maruyama bias of the 300
    // steps above (0.2%) are well inside the 4 standard errors allowed. Moments are checked
    // in the model's basis (angle 0.6), where the covariance is diagonal.
    let m = model();
    let flow = m.flow().unwrap();
    let (t0, t_end) = m.span();
    let h = 0.02;
    let t1 = t0 + h;
    let mut t = vec![t0];
    t.extend((0..=300).map(|i| t1 + (t_end - t1) * i as f64 / 300.0));
    let steps = Steps::new(t, &flow.diffusion);
    let n = 60_000;
    let x = rows(&sample_sde(&flow, n, &steps, 1.0, true, 5000, 2, &mut Rng::new(13)).unwrap());
    let (sn, cs) = 0.6f64.sin_cos();
    let basis: M2 = [cs, -sn, sn, cs];
    let to_basis = |v: &[f64]| apply(&transpose(&basis), v);
    let y: Vec<f64> = x.chunks_exact(2).flat_map(to_basis).collect();
    let in_basis = |c: &[f64]| -> Vec<f64> {
        let c: M2 = c.try_into().unwrap();
        mul(&mul(&transpose(&basis), &c), &basis).to_vec()
    };
    let (k, _, s) = posterior_mean(&m, h);
    let want = in_basis(&mul(&mul(&k, &s), &transpose(&k)));
    let mu = to_basis(&m.mean_at(t0));
    // The test can tell the posterior mean from the data and from x_1.
    let se0 = want[0] * (2.0 / n as f64).sqrt();
    for (what, other) in [("data", m.cov_at(t0)), ("x_1", m.cov_at(t1))] {
        let other = in_basis(&other);
        assert!(
            (other[0] - want[0]).abs() > 8.0 * se0,
            "{what}: {} vs {}",
            other[0],
            want[0]
        );
    }
    assert_moments(&y, &mu, &want, "Tweedie (model basis)");
}

#[test]
fn lambda_out_of_range_is_an_error() {
    let m = model();
    let flow = m.flow().unwrap();
    let steps = uniform_steps(&m, 3);
    for lambda in [-0.1, 1.5, f64::NAN] {
        assert!(sample_sde(&flow, 4, &steps, lambda, false, 4, 1, &mut Rng::new(0)).is_err());
    }
}

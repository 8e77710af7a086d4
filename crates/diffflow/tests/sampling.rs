//! Samplers on the closed-form Gaussian DiffFlow (`diffflow::analytic`), whose reverse
//! processes map the prior exactly onto `N(mu, Sigma)`: SDE(lambda) for lambda in {0, 0.5, 1},
//! the probability-flow ODE with RK4 and Dormand–Prince, and the Tweedie last step.

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
        .fold(0.0, f64::max);
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
        .fold(0.0, f64::max);
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

#[test]
fn tweedie_step_is_the_closed_form_denoiser_on_the_gaussian_model() {
    // x1 ~ p_{t_1} = N(m1, P1) exactly; x̂0 = x1 − f(x1) Δt + g² Δt s(x1) = L x1 + c with
    // L = I − A Δt − g² Δt P1⁻¹, so Cov(x̂0) = L P1 Lᵀ (in the basis: (1 − α_i Δt − g²Δt/p_i)² p_i).
    let m = model();
    let flow = m.flow().unwrap();
    let steps = uniform_steps(&m, 5);
    let (t1, dt, g) = (steps.t[1], steps.dt(0), m.g());
    let (mu1, p1) = (m.mean_at(t1), m.cov_at(t1));
    let d = 2;
    let n = 100_000;
    let l = {
        // Cholesky of P1
        let a = p1[0].sqrt();
        let b = p1[2] / a;
        [a, 0.0, b, (p1[3] - b * b).sqrt()]
    };
    let mut rng = Rng::new(2);
    let e = rng.normals(n * d);
    let x1: Vec<f64> = e
        .chunks_exact(d)
        .flat_map(|r| [mu1[0] + l[0] * r[0], mu1[1] + l[2] * r[0] + l[3] * r[1]])
        .collect();
    let x1t = Tensor::from_vec(x1, (n, d), &Device::Cpu).unwrap();
    let f1 = flow.drift.engine().unwrap().eval(&x1t, t1).unwrap();
    let s1 = flow.score.engine().unwrap().eval(&x1t, t1).unwrap();
    let out = rows(&tweedie_step(&x1t, &f1, &s1, dt, g).unwrap());
    // The closed form.
    let (a, _) = m.coefficients(Field::Drift, t1);
    let (sm, _) = m.coefficients(Field::Score, t1); // = −P1⁻¹
    let mut lmat = [0.0; 4];
    for i in 0..d {
        for j in 0..d {
            let id = if i == j { 1.0 } else { 0.0 };
            lmat[i * d + j] = id - a[i * d + j] * dt + g * g * dt * sm[i * d + j];
        }
    }
    let mut want = [0.0; 4];
    for i in 0..d {
        for j in 0..d {
            want[i * d + j] = (0..d)
                .flat_map(|k| (0..d).map(move |q| (k, q)))
                .map(|(k, q)| lmat[i * d + k] * p1[k * d + q] * lmat[j * d + q])
                .sum();
        }
    }
    let (_, c) = moments(&out, d);
    for i in 0..d {
        for j in 0..d {
            let se =
                ((want[i * d + i] * want[j * d + j] + want[i * d + j].powi(2)) / n as f64).sqrt();
            assert!(
                (c[i * d + j] - want[i * d + j]).abs() < 4.0 * se,
                "cov[{i},{j}] {} vs L P1 Lᵀ {}",
                c[i * d + j],
                want[i * d + j]
            );
        }
    }
    // The Euler–Maruyama step (lambda = 1) from the same x1 has covariance L P1 Lᵀ + g² Δt I.
    eprintln!(
        "Tweedie: Cov(x1) {p1:.4?} -> Cov(x0) {c:.4?} (closed form L P1 Lᵀ {want:.4?}; the \
         EM step adds g² Δt = {:.4} on the diagonal)",
        g * g * dt
    );
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

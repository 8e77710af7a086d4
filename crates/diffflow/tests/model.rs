//! The model interface in data units: the standardisation's log-Jacobian in the NLL, the
//! samples' units, and the errors a model kind cannot do without.

use diffflow::analytic::GaussianFlow;
use diffflow::config::{Preset, RunConfig, Weights};
use diffflow::data::Standardizer;
use diffflow::gaussian::Gaussian;
use diffflow::likelihood::NllOptions;
use diffflow::model::{EvalOptions, Model, Sampler};
use diffflow::ode::Tolerances;
use diffflow::rng::Rng;
use diffflow::sde::GridSpec;
use diffflow::validation::ValState;

/// The closed-form Gaussian DiffFlow on [t0, t1] as a `Model` with the standardisation `std`.
fn gaussian_model(t0: f64, t1: f64, std: Standardizer) -> (GaussianFlow, Model) {
    let g = GaussianFlow::spatial((0.7, -0.4), [2.0, -1.0, 0.0], [0.5, -0.3, 1.2], 0.6, t0, t1)
        .unwrap();
    let mut cfg = RunConfig::preset(Preset::Quick, "gaussian");
    cfg.model.grid = GridSpec {
        t_min: t0,
        t_max: t1,
        beta: 1.0,
    };
    let model = Model {
        cfg,
        flow: g.flow().unwrap(),
        standardizer: std,
        columns: None,
        step: 0,
        validation: ValState::default(),
        weights: Weights::Live,
        path: None,
    };
    (g, model)
}

fn non_trivial_std() -> Standardizer {
    Standardizer {
        mean: vec![10.0, -3.0, 0.5],
        std: vec![0.2, 7.0, 1.5],
    }
}

/// The NLL in data units includes the standardisation's log-Jacobian: the closed-form
/// Gaussian DiffFlow (standardised units) evaluated by `Model::evaluate` on points in data
/// units, with a standardisation far from the identity, gives the closed-form NLL of the
/// Gaussian it implies in data units, `N(m + S mu, S Sigma S)`.
#[test]
fn nll_in_data_units_includes_the_standardisation() {
    let (t0, t1) = (0.01, 0.6);
    let std = non_trivial_std();
    assert!(
        std.log_abs_det().abs() > 0.7,
        "a non-trivial standardisation"
    );
    let (g, model) = gaussian_model(t0, t1, std.clone());
    let (mu, sigma) = (g.mean_at(t0), g.cov_at(t0));
    // Points in standardised units drawn from the model, then mapped to data units.
    let gy = Gaussian::new(mu.clone(), &sigma).unwrap();
    let mut rng = Rng::new(5);
    let n = 24;
    let mut y = Vec::with_capacity(3 * n);
    for _ in 0..n {
        let e = rng.normals(3);
        for (i, m) in mu.iter().enumerate() {
            y.push(m + (0..=i).map(|k| gy.chol[i * 3 + k] * e[k]).sum::<f64>());
        }
    }
    let mut x = y.clone();
    std.invert(&mut x);
    // The closed form in data units, computed without the standardisation's Jacobian.
    let mean_x: Vec<f64> = (0..3).map(|i| std.mean[i] + std.std[i] * mu[i]).collect();
    let cov_x: Vec<f64> = (0..9)
        .map(|k| std.std[k / 3] * sigma[k] * std.std[k % 3])
        .collect();
    let want = Gaussian::new(mean_x, &cov_x).unwrap().nll(&x);
    let want_std = gy.nll(&y);
    let opts = EvalOptions {
        nll: NllOptions {
            tol: Tolerances {
                rtol: 1e-10,
                atol: 1e-10,
                ..Tolerances::default()
            },
            chunk: 8,
            ..NllOptions::default()
        },
        t: vec![t0, t1],
        elbo: None,
        seed: 0,
    };
    let r = model.evaluate(&x, &opts, &|_, _| {}).unwrap();
    for (i, (got, w)) in r.per_point.iter().zip(&want).enumerate() {
        assert!((got[0] - w).abs() < 1e-4, "point {i}: {} vs {w}", got[0]);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        (r.nll.mean - mean(&want)).abs() < 1e-4,
        "{} vs {}",
        r.nll.mean,
        mean(&want)
    );
    assert!((r.nll_standardised - mean(&want_std)).abs() < 1e-4);
    assert!((r.nll.mean - r.nll_standardised + std.log_abs_det()).abs() < 1e-12);
    assert_eq!(
        r.log_abs_det,
        std.log_abs_det(),
        "the report names the shift"
    );
    // `Model::nll` gives the same per-point values.
    let direct = model
        .nll(&x, &opts.nll, Some(&opts.t), &mut Rng::new(0), &|_| {})
        .unwrap();
    for (a, b) in direct.nll.iter().zip(&r.per_point) {
        assert_eq!(*a, b[0]);
    }
}

/// Samples come out in data units: the exact model's samples have the data-unit mean and
/// covariance `m + S mu`, `S Sigma S` (within sampling error), and points of the wrong width
/// are an error.
#[test]
fn samples_are_in_data_units_and_bad_points_are_errors() {
    let (t0, t1) = (0.01, 0.6);
    let std = non_trivial_std();
    let (g, model) = gaussian_model(t0, t1, std.clone());
    let mu = g.mean_at(t0);
    let sampler = Sampler::Sde {
        lambda: 0.0,
        steps: model.elbo_steps(Some(200)),
        tweedie: false,
    };
    let n = 4000;
    let s = model
        .sample(n, &sampler, 1000, 2, &mut Rng::new(3))
        .unwrap();
    for (i, mu_i) in mu.iter().enumerate() {
        let m = s.x.iter().skip(i).step_by(3).sum::<f64>() / n as f64;
        let want = std.mean[i] + std.std[i] * mu_i;
        // Standard error of the mean: S_ii sqrt(Sigma_ii / n) ≤ 7 · 1.2 / 63.
        assert!((m - want).abs() < 0.6, "coordinate {i}: {m} vs {want}");
    }
    let e = model
        .nll(
            &[1.0, 2.0],
            &NllOptions::default(),
            None,
            &mut Rng::new(0),
            &|_| {},
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("[n, 3]"), "{e}");
    let e = model
        .sample(0, &sampler, 10, 1, &mut Rng::new(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("samples must be >= 1"), "{e}");
    let bad = Sampler::Sde {
        lambda: 1.5,
        steps: model.elbo_steps(Some(4)),
        tweedie: false,
    };
    let e = model
        .sample(3, &bad, 10, 1, &mut Rng::new(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("lambda must be in [0, 1]"), "{e}");
}

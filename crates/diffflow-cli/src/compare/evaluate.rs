//! Evaluation of a trained model: held-out NLL and ELBO, samples and their distances to
//! fresh data, sample quality against the number of steps N and against λ, and forward
//! trajectories (Figure 4).

use super::models::Trained;
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use diffflow::data::Standardizer;
use diffflow::flow::{forward_trajectory, Steps};
use diffflow::likelihood::{ElboOptions, NllOptions};
use diffflow::metrics::{sample_metrics, MetricOptions, SampleMetrics};
use diffflow::ode::{self, Method, Tolerances};
use diffflow::rng::{Rng, Stream};
use diffflow::sample::{sample_ode, sample_sde};
use diffflow::sde::fixed_grid;
use serde::Serialize;
use std::time::Instant;

/// How much evaluation to do.
#[derive(Clone, Debug)]
pub struct EvalPlan {
    /// Held-out points for the NLL and the ELBO.
    pub nll_points: usize,
    /// Tolerances of the Dormand–Prince solve of the NLL.
    pub rtol: f64,
    pub atol: f64,
    /// ELBO: trajectories per point and N.
    pub elbo_trajectories: usize,
    pub elbo_n: usize,
    /// Samples for the main table and Figure 5, with N sampling steps.
    pub samples: usize,
    pub sample_n: usize,
    /// Steps sweep (Tables 4–5 analogue).
    pub sweep_ns: Vec<usize>,
    pub sweep_samples: usize,
    /// λ sweep.
    pub lambdas: Vec<f64>,
    pub lambda_samples: usize,
    pub metrics: MetricOptions,
    pub threads: usize,
    pub seed: u64,
}

/// Everything measured on one model.
#[derive(Clone, Debug, Serialize)]
pub struct ModelReport {
    pub model: String,
    pub key: String,
    pub params: usize,
    pub iters: usize,
    pub train_seconds: f64,
    /// CPU seconds of training (0 unless the budget was CPU time).
    pub train_cpu_seconds: f64,
    /// The model's own training loss at the end (mean of the last 10% of iterations).
    pub final_train_loss: f64,
    /// Held-out probability-flow NLL, nats per point, data units, and its standard error.
    pub nll: f64,
    pub nll_stderr: f64,
    pub nll_nfe: f64,
    pub nll_seconds: f64,
    /// Held-out negative ELBO (none for the CNF).
    pub elbo: Option<f64>,
    pub elbo_stderr: Option<f64>,
    /// Main samples against fresh data.
    pub metrics: SampleMetrics,
    pub sample_seconds: f64,
    /// (N, metrics) of the steps sweep (diffusion models only).
    pub steps: Vec<(usize, SampleMetrics)>,
    /// (λ, metrics) of the λ sweep (diffusion models only).
    pub lambdas: Vec<(f64, SampleMetrics)>,
}

/// `n` samples of `m` in data units: SDE(λ) with `steps` steps on the model's fixed grid,
/// or, for the CNF, RK4 on the probability-flow ODE (= `dx = v dt`) along the same grid.
pub fn draw(
    m: &Trained,
    std: &Standardizer,
    n: usize,
    steps: usize,
    lambda: f64,
    seed: u64,
) -> Result<Vec<f64>> {
    let grid = fixed_grid(&m.cfg.model.grid, steps);
    let mut rng = Rng::stream(seed, Stream::Sample);
    let x = if m.which.is_diffusion() {
        let st = Steps::new(grid, &m.flow.diffusion);
        sample_sde(&m.flow, n, &st, lambda, false, 2500, &mut rng)?
    } else {
        sample_ode(
            &m.flow,
            n,
            &grid,
            Method::Rk4,
            &Tolerances::default(),
            2500,
            &mut rng,
        )?
        .0
    };
    let mut v = x.flatten_all()?.to_vec1::<f64>()?;
    std.invert(&mut v);
    Ok(v)
}

/// Evaluates `m`: NLL/ELBO on `test` (standardised), samples against `fresh` (data units).
pub fn evaluate(
    m: &Trained,
    std: &Standardizer,
    test: &[f64],
    fresh: &[f64],
    plan: &EvalPlan,
    log: &dyn Fn(&str),
) -> Result<ModelReport> {
    let d = 2;
    let n = (test.len() / d).min(plan.nll_points);
    let grid = &m.cfg.model.grid;
    let elbo = if m.which.is_diffusion() {
        Some((
            Steps::new(fixed_grid(grid, plan.elbo_n), &m.flow.diffusion),
            ElboOptions {
                trajectories: plan.elbo_trajectories,
                chunk: 256,
                threads: plan.threads,
            },
        ))
    } else {
        None
    };
    let settings = crate::eval::Settings {
        nll: NllOptions {
            threads: plan.threads,
            tol: Tolerances {
                rtol: plan.rtol,
                atol: plan.atol,
                ..Tolerances::default()
            },
            ..NllOptions::default()
        },
        t: vec![grid.t_min, grid.t_max],
        elbo,
        seed: plan.seed,
        progress: false,
    };
    let r = crate::eval::evaluate(&m.flow, std, &test[..n * d], &settings)?;
    log(&format!(
        "  {}: NLL {:.3} ± {:.3} nats (NFE {:.0}, {:.1} s){}",
        m.which.name(),
        r.nll,
        r.nll_stderr,
        r.nfe,
        r.seconds_nll,
        match r.elbo {
            Some(e) => format!(", negative ELBO {e:.3} ({:.1} s)", r.seconds_elbo),
            None => String::new(),
        }
    ));
    let t0 = Instant::now();
    let x = draw(m, std, plan.samples, plan.sample_n, 1.0, plan.seed)?;
    let sample_seconds = t0.elapsed().as_secs_f64();
    let metrics = sample_metrics(&x, fresh, d, &plan.metrics)?;
    let mut steps = Vec::new();
    let mut lambdas = Vec::new();
    if m.which.is_diffusion() {
        for &ns in &plan.sweep_ns {
            let x = draw(m, std, plan.sweep_samples, ns, 1.0, plan.seed)?;
            steps.push((ns, sample_metrics(&x, fresh, d, &plan.metrics)?));
        }
        for &l in &plan.lambdas {
            let x = draw(m, std, plan.lambda_samples, plan.sample_n, l, plan.seed)?;
            lambdas.push((l, sample_metrics(&x, fresh, d, &plan.metrics)?));
        }
    }
    Ok(ModelReport {
        model: m.which.name().to_string(),
        key: m.which.key().to_string(),
        params: m.params,
        iters: m.iters,
        train_seconds: m.seconds,
        train_cpu_seconds: m.cpu_seconds,
        final_train_loss: m.final_loss,
        nll: r.nll,
        nll_stderr: r.nll_stderr,
        nll_nfe: r.nfe,
        nll_seconds: r.seconds_nll,
        elbo: r.elbo,
        elbo_stderr: r.elbo_stderr,
        metrics,
        sample_seconds,
        steps,
        lambdas,
    })
}

/// The forward process of `m` from `x0` [n, 2] (standardised) on a uniform 30-step grid of
/// its interval: the states at `t_min`, `T/3`, `2T/3`, `T` (approximately: grid points 0, 10,
/// 20, 30), standardised units. DiffFlow and DDPM: the forward SDE (11); CNF: RK4 on
/// `dx = v dt`.
pub fn forward_snapshots(m: &Trained, x0: &[f64], seed: u64) -> Result<Vec<Vec<f64>>> {
    let g = &m.cfg.model.grid;
    let k = 30;
    let ts: Vec<f64> = (0..=k)
        .map(|i| g.t_min + (g.t_max - g.t_min) * i as f64 / k as f64)
        .collect();
    let n = x0.len() / 2;
    let dtype = m.flow.dtype();
    if m.which.is_diffusion() {
        let steps = Steps::new(ts, &m.flow.diffusion);
        let mut rng = Rng::stream(seed, Stream::Eval);
        let x = Tensor::from_slice(x0, (n, 2), &Device::Cpu)?.to_dtype(dtype)?;
        let noise =
            Tensor::from_vec(rng.normals(k * n * 2), (k, n, 2), &Device::Cpu)?.to_dtype(dtype)?;
        let mut drift = m.flow.drift.engine()?;
        let states = forward_trajectory(drift.as_mut(), &x, &steps, &noise)?;
        [0, 10, 20, 30]
            .iter()
            .map(|&i| {
                Ok(states[i]
                    .to_dtype(DType::F64)?
                    .flatten_all()?
                    .to_vec1::<f64>()?)
            })
            .collect()
    } else {
        let mut engine = m.flow.drift.engine()?;
        let mut rhs = |t: f64, y: &[f64], dy: &mut [f64]| -> diffflow::Result<()> {
            let x = Tensor::from_slice(y, (n, 2), &Device::Cpu)?.to_dtype(dtype)?;
            let v = engine.eval(&x, t)?.to_dtype(DType::F64)?.flatten_all()?;
            dy.copy_from_slice(&v.to_vec1::<f64>()?);
            Ok(())
        };
        let mut y = x0.to_vec();
        let mut out = vec![y.clone()];
        for seg in 0..3 {
            let part = &ts[seg * 10..=(seg + 1) * 10];
            ode::solve(
                Method::Rk4,
                &mut rhs,
                &mut y,
                part,
                &Tolerances::default(),
                2,
            )?;
            out.push(y.clone());
        }
        Ok(out)
    }
}

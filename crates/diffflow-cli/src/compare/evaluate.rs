//! Evaluation of a trained model: held-out NLL and ELBO, samples and their distances to
//! fresh data, sample quality against the number of steps N and against λ, and forward
//! trajectories (Figure 4).

use super::models::Trained;
use anyhow::Result;
use candle_core::{DType, Tensor};
use diffflow::flow::{forward_trajectory, Steps};
use diffflow::likelihood::{ElboOptions, NllOptions};
use diffflow::metrics::{sample_metrics, MetricOptions, SampleMetrics};
use diffflow::model::{EvalOptions, Sampler};
use diffflow::ode::{self, Method, Tolerances};
use diffflow::rng::{Rng, Stream};
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

/// Rows per sampling piece.
const CHUNK: usize = 2500;

/// `n` samples of `m` in data units: SDE(λ) with `steps` steps on the model's fixed grid,
/// or, for the CNF, RK4 on the probability-flow ODE (= `dx = v dt`) along the same grid.
pub fn draw(
    m: &Trained,
    n: usize,
    steps: usize,
    lambda: f64,
    seed: u64,
    threads: usize,
) -> Result<Vec<f64>> {
    let model = &m.model;
    let grid = fixed_grid(&model.cfg.model.grid, steps);
    let mut rng = Rng::stream(seed, Stream::Sample);
    let sampler = if m.kind.is_diffusion() {
        Sampler::Sde {
            lambda,
            steps: Steps::new(grid, &model.flow.diffusion),
            tweedie: false,
        }
    } else {
        Sampler::Ode {
            method: Method::Rk4,
            t: grid,
            tol: Tolerances::default(),
        }
    };
    Ok(model.sample(n, &sampler, CHUNK, threads, &mut rng)?.x)
}

/// Evaluates `m`: NLL/ELBO on `test` (data units), samples against `fresh` (data units).
pub fn evaluate(
    m: &Trained,
    test: &[f64],
    fresh: &[f64],
    plan: &EvalPlan,
    log: &dyn Fn(&str),
) -> Result<ModelReport> {
    let d = 2;
    let n = (test.len() / d).min(plan.nll_points);
    let model = &m.model;
    let grid = &model.cfg.model.grid;
    let elbo = m.kind.is_diffusion().then(|| {
        (
            Steps::new(fixed_grid(grid, plan.elbo_n), &model.flow.diffusion),
            ElboOptions {
                trajectories: plan.elbo_trajectories,
                chunk: 256,
                threads: plan.threads,
            },
        )
    });
    let opts = EvalOptions {
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
    };
    let r = model.evaluate(&test[..n * d], &opts, &|_, _| {})?;
    log(&format!(
        "  {}: NLL {:.3} ± {:.3} nats (NFE {:.0}, {:.1} s){}",
        m.kind.name(),
        r.nll.mean,
        r.nll.stderr,
        r.nfe,
        r.seconds_nll,
        match r.elbo {
            Some(e) => format!(", negative ELBO {:.3} ({:.1} s)", e.mean, r.seconds_elbo),
            None => String::new(),
        }
    ));
    let t0 = Instant::now();
    let x = draw(m, plan.samples, plan.sample_n, 1.0, plan.seed, plan.threads)?;
    let sample_seconds = t0.elapsed().as_secs_f64();
    let metrics = sample_metrics(&x, fresh, d, &plan.metrics)?;
    let mut steps = Vec::new();
    let mut lambdas = Vec::new();
    if m.kind.is_diffusion() {
        for &ns in &plan.sweep_ns {
            let x = draw(m, plan.sweep_samples, ns, 1.0, plan.seed, plan.threads)?;
            steps.push((ns, sample_metrics(&x, fresh, d, &plan.metrics)?));
        }
        for &l in &plan.lambdas {
            let x = draw(
                m,
                plan.lambda_samples,
                plan.sample_n,
                l,
                plan.seed,
                plan.threads,
            )?;
            lambdas.push((l, sample_metrics(&x, fresh, d, &plan.metrics)?));
        }
    }
    Ok(ModelReport {
        model: m.kind.name().to_string(),
        key: m.kind.key().to_string(),
        params: m.params,
        iters: m.iters,
        train_seconds: m.seconds,
        train_cpu_seconds: m.cpu_seconds,
        final_train_loss: m.final_loss,
        nll: r.nll.mean,
        nll_stderr: r.nll.stderr,
        nll_nfe: r.nfe,
        nll_seconds: r.seconds_nll,
        elbo: r.elbo.map(|e| e.mean),
        elbo_stderr: r.elbo.map(|e| e.stderr),
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
    let flow = &m.model.flow;
    let g = &m.model.cfg.model.grid;
    let device = flow.device();
    let k = 30;
    let ts: Vec<f64> = (0..=k)
        .map(|i| g.t_min + (g.t_max - g.t_min) * i as f64 / k as f64)
        .collect();
    let n = x0.len() / 2;
    let dtype = flow.dtype();
    if m.kind.is_diffusion() {
        let steps = Steps::new(ts, &flow.diffusion);
        let mut rng = Rng::stream(seed, Stream::Eval);
        let x = Tensor::from_slice(x0, (n, 2), &device)?.to_dtype(dtype)?;
        let noise =
            Tensor::from_vec(rng.normals(k * n * 2), (k, n, 2), &device)?.to_dtype(dtype)?;
        let mut drift = flow.drift.engine()?;
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
        let mut engine = flow.drift.engine()?;
        let mut rhs = |t: f64, y: &[f64], dy: &mut [f64]| -> diffflow::Result<()> {
            let x = Tensor::from_slice(y, (n, 2), &device)?.to_dtype(dtype)?;
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

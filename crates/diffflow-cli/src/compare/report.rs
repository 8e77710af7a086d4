//! `report.md`, `results.json` and `steps.png` of `diffflow compare`.

use super::evaluate::EvalPlan;
use super::{DatasetReport, Results};
use crate::plot;
use anyhow::{Context, Result};
use diffflow::checkpoint::atomic_write;
use diffflow::metrics::SampleMetrics;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// Forward snapshots of one labelled data set (Figure 4).
pub struct Trajectories {
    pub dataset: String,
    pub labels: Vec<usize>,
    /// (model, 4 snapshots [n, 2]).
    pub rows: Vec<(String, Vec<Vec<f64>>)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CurvePoint {
    pub seconds: f64,
    pub iters: usize,
    pub val_loss: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProgressiveRun {
    pub label: String,
    pub schedule: String,
    pub iters: usize,
    /// Wall seconds of training.
    pub seconds: f64,
    /// CPU seconds of training (0 unless the budget was CPU time).
    pub cpu_seconds: f64,
    /// Measurements; their `seconds` are on the budget's clock (CPU seconds under a CPU-time
    /// budget, wall seconds otherwise).
    pub curve: Vec<CurvePoint>,
}

/// The progressive-training measurement and its summary.
#[derive(Clone, Debug, Serialize)]
pub struct Progressive {
    pub dataset: String,
    pub val_n: usize,
    pub val_points: usize,
    pub runs: Vec<ProgressiveRun>,
    /// The worse of the two runs' final validation losses (mean of their last 3 values).
    pub target: f64,
    /// Training seconds (on the budget's clock) each run took to first reach `target`
    /// (None: never).
    pub time_to_target: Vec<Option<f64>>,
    /// time(fixed) / time(progressive).
    pub speedup: Option<f64>,
}

impl Progressive {
    pub fn new(dataset: &str, val_n: usize, val_points: usize, runs: Vec<ProgressiveRun>) -> Self {
        let last3 = |r: &ProgressiveRun| {
            let k = r.curve.len().min(3);
            if k == 0 {
                return f64::NAN;
            }
            r.curve[r.curve.len() - k..]
                .iter()
                .map(|c| c.val_loss)
                .sum::<f64>()
                / k as f64
        };
        let target = runs.iter().map(last3).fold(f64::NEG_INFINITY, f64::max);
        let time_to_target: Vec<Option<f64>> = runs
            .iter()
            .map(|r| {
                r.curve
                    .iter()
                    .find(|c| c.val_loss <= target)
                    .map(|c| c.seconds)
            })
            .collect();
        let speedup = match (time_to_target.first(), time_to_target.get(1)) {
            (Some(Some(p)), Some(Some(f))) if *p > 0.0 => Some(f / p),
            _ => None,
        };
        Progressive {
            dataset: dataset.to_string(),
            val_n,
            val_points,
            runs,
            target,
            time_to_target,
            speedup,
        }
    }
}

fn f(v: f64, digits: usize) -> String {
    if v.is_finite() {
        format!("{v:.digits$}")
    } else {
        "–".to_string()
    }
}

/// MMD² in units of 1e-3.
fn mmd(v: f64) -> String {
    f(v * 1e3, 2)
}

fn metric_cells(m: &SampleMetrics) -> String {
    let mut s = String::new();
    for v in &m.mmd2 {
        let _ = write!(s, " {} |", mmd(*v));
    }
    let _ = write!(s, " {} | {} |", f(m.sw2, 4), f(m.hist_kl, 4));
    s
}

/// Geometric mean over data sets of `metric(N) / metric(N_max)` per model (diffusion
/// models only): the Table 5 analogue.
fn degeneracy(
    reports: &[DatasetReport],
    key: &str,
    pick: fn(&SampleMetrics) -> f64,
) -> Vec<(usize, f64)> {
    let mut by_n: Vec<(usize, Vec<f64>)> = Vec::new();
    for ds in reports {
        if let Some(m) = ds.models.iter().find(|m| m.key == key) {
            let Some((_, last)) = m.steps.last() else {
                continue;
            };
            let base = pick(last);
            for (n, met) in &m.steps {
                let r = pick(met) / base;
                if !(r.is_finite() && r > 0.0) {
                    continue;
                }
                match by_n.iter_mut().find(|(k, _)| k == n) {
                    Some((_, v)) => v.push(r),
                    None => by_n.push((*n, vec![r])),
                }
            }
        }
    }
    by_n.into_iter()
        .map(|(n, v)| {
            (
                n,
                (v.iter().map(|r| r.ln()).sum::<f64>() / v.len() as f64).exp(),
            )
        })
        .collect()
}

/// The models swept over N and λ (the diffusions; the CNF is sampled by its ODE).
fn swept() -> impl Iterator<Item = (&'static str, &'static str)> {
    diffflow::config::ModelKind::ALL
        .into_iter()
        .filter(|k| k.is_diffusion())
        .map(|k| (k.key(), k.name()))
}

/// steps.png: geometric mean over the data sets of SW2(N)/SW2(N_max), per model.
pub fn steps_chart(path: &Path, reports: &[DatasetReport]) -> Result<()> {
    let series: Vec<(String, Vec<(f64, f64)>)> = swept()
        .map(|(key, name)| {
            (
                name.to_string(),
                degeneracy(reports, key, |m| m.sw2)
                    .into_iter()
                    .map(|(n, r)| (n as f64, r))
                    .collect(),
            )
        })
        .collect();
    plot::line_chart(
        path,
        "SW2(N) / SW2(N max), geometric mean over data sets",
        "sampling steps N",
        "SW2 ratio",
        &series,
        true,
    )
}

/// Writes `report.md` and `results.json`.
pub fn write(out: &Path, r: &Results, plan: &EvalPlan) -> Result<()> {
    let json = serde_json::to_string_pretty(r).context("cannot encode results.json")?;
    atomic_write(&out.join("results.json"), json.as_bytes())?;
    atomic_write(&out.join("report.md"), markdown(r, plan).as_bytes())?;
    Ok(())
}

fn markdown(r: &Results, plan: &EvalPlan) -> String {
    let mut s = String::new();
    let bw: Vec<String> = r.bandwidths.iter().map(|b| b.to_string()).collect();
    let _ = writeln!(
        s,
        "# DiffFlow against DDPM and a CNF on 2-D data{}\n",
        if r.quick { " (--quick)" } else { "" }
    );
    let _ = writeln!(s, "Command: `{}`  ", r.command);
    let _ = writeln!(
        s,
        "Budget: {}; batch {} (CNF {}); seed {}; {} thread(s); total wall time {:.0} s.\n",
        r.budget, r.batch, r.cnf_batch, r.seed, r.threads, r.total_seconds
    );
    let _ = writeln!(s, "## Setup\n");
    let _ = writeln!(
        s,
        "- **DiffFlow**: learned drift and score, two Fourier MLPs (width 96, 3 hidden layers, 48 \
         frequencies), g = 0.2, t in [0.001, 0.05], flexible grid (beta = 0.9), trajectory loss \
         with N = {} for the first third of the budget then N = {}.",
        r.train_n.0, r.train_n.1
    );
    let _ = writeln!(
        s,
        "- **DDPM (L)**: VP SDE (beta from 0.1 to 20 on t in [{}, 1]), drift frozen to \
         −beta(t) x/2, one ε-network (width 128, 3 hidden layers, Fourier frequencies scaled to \
         T = 1) with score −ε/σ_t; DiffFlow's trajectory loss on the same N schedule and grid rule.",
        r.ddpm_t_min
    );
    let _ = writeln!(
        s,
        "- **DDPM (L_s)**: the same model trained by the ε loss on the closed-form marginals, \
         {} time groups per batch (stratified times; our nets take one time per batch).",
        r.groups
    );
    let _ = writeln!(
        s,
        "- **CNF**: dx = v(x, t) dt on t in [0, 1] with the same one-net MLP, maximum likelihood \
         through {} RK4 steps, exact divergence by a hand-written forward-mode JVP, backprop \
         through the solver.",
        r.cnf_steps
    );
    let lrs: Vec<String> = r.lr.iter().map(|(n, v)| format!("{n} {v}")).collect();
    let _ = writeln!(
        s,
        "- All: Adam, learning rates {} (×0.95 fifteen times over the budget), clip 1.0, \
         EMA 0.999 (evaluated with the EMA weights).",
        lrs.join(", ")
    );
    let _ = writeln!(
        s,
        "- NLL: probability-flow ODE from t_min to T (Dormand–Prince, rtol {:e}, atol {:e}, exact \
         divergence) on {} held-out points, nats per point in data units (± standard error). \
         Negative ELBO (13) on the same points at N = {} (fixed grid), {} trajectories per point \
         (none for the CNF).",
        plan.rtol, plan.atol, r.nll_points, r.elbo_n, plan.elbo_trajectories
    );
    let _ = writeln!(
        s,
        "- Samples: {} per model, SDE(λ = 1) with N = {} on each model's fixed grid (CNF: RK4 \
         with N = {} on its ODE), compared with {} fresh data points (data units): unbiased \
         MMD² (RBF kernel, bandwidths h = {} in data units, first {} points of each set; shown \
         ×1e3), sliced W2 ({} seeded directions) and KL(data ‖ samples) of {}×{} histograms on \
         [{}, {}]² plus an overflow bin (pseudo-count {} per bin). The row 'fresh data' is a \
         second fresh data set: the metrics' noise floor.",
        r.samples,
        r.sample_n,
        r.sample_n,
        r.samples,
        bw.join(", "),
        r.mmd_points,
        r.projections,
        r.hist.2,
        r.hist.2,
        r.hist.0,
        r.hist.1,
        r.hist.3
    );
    let mmd_head: String = r
        .bandwidths
        .iter()
        .map(|b| format!(" MMD² h={b} (e-3) |"))
        .collect();
    let mmd_sep: String = r.bandwidths.iter().map(|_| "---:|").collect();
    for ds in &r.datasets {
        let _ = writeln!(s, "\n## {}\n", ds.name);
        let _ = writeln!(
            s,
            "| model | params | iters | train s | NLL (nats) | neg. ELBO (nats) |{mmd_head} SW2 | hist KL |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|{mmd_sep}---:|---:|");
        for m in &ds.models {
            let elbo = match (m.elbo, m.elbo_stderr) {
                (Some(e), Some(se)) => format!("{} ± {}", f(e, 3), f(se, 3)),
                _ => "–".to_string(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} ± {} | {} |{}",
                m.model,
                m.params,
                m.iters,
                if m.train_cpu_seconds > 0.0 {
                    format!("{:.0} ({:.0} CPU)", m.train_seconds, m.train_cpu_seconds)
                } else {
                    format!("{:.1}", m.train_seconds)
                },
                f(m.nll, 3),
                f(m.nll_stderr, 3),
                elbo,
                metric_cells(&m.metrics)
            );
        }
        let _ = writeln!(s, "| fresh data | | | | | |{}", metric_cells(&ds.reference));
        // Steps sweep.
        let _ = writeln!(s, "\nSample quality against the number of sampling steps N (SDE, λ = 1; {} samples; ratio = value / value at N = {}):\n", plan.sweep_samples, plan.sweep_ns.last().copied().unwrap_or(0));
        let _ = writeln!(
            s,
            "| N | model |{mmd_head} SW2 | hist KL | SW2 ratio | KL ratio |"
        );
        let _ = writeln!(s, "|---:|---|{mmd_sep}---:|---:|---:|---:|");
        for &n in &plan.sweep_ns {
            for m in ds.models.iter().filter(|m| !m.steps.is_empty()) {
                let Some((_, met)) = m.steps.iter().find(|(k, _)| *k == n) else {
                    continue;
                };
                let base = &m.steps.last().expect("non-empty").1;
                let _ = writeln!(
                    s,
                    "| {n} | {} |{} {} | {} |",
                    m.model,
                    metric_cells(met),
                    f(met.sw2 / base.sw2, 2),
                    f(met.hist_kl / base.hist_kl, 2)
                );
            }
        }
        // λ sweep.
        let _ = writeln!(
            s,
            "\nSampler λ (N = {}, {} samples):\n",
            r.sample_n, plan.lambda_samples
        );
        let _ = writeln!(s, "| λ | model |{mmd_head} SW2 | hist KL |");
        let _ = writeln!(s, "|---:|---|{mmd_sep}---:|---:|");
        for &l in &plan.lambdas {
            for m in ds.models.iter().filter(|m| !m.lambdas.is_empty()) {
                if let Some((_, met)) = m.lambdas.iter().find(|(k, _)| *k == l) {
                    let _ = writeln!(s, "| {l} | {} |{}", m.model, metric_cells(met));
                }
            }
        }
    }
    // Degeneracy summary over data sets.
    let _ = writeln!(s, "\n## Degeneracy over all data sets (Table 5 analogue)\n");
    let _ = writeln!(
        s,
        "Geometric mean over the data sets of metric(N) / metric(N = {}).\n",
        plan.sweep_ns.last().copied().unwrap_or(0)
    );
    let _ = writeln!(s, "| N | DiffFlow SW2 | DDPM (L) SW2 | DDPM (L_s) SW2 | DiffFlow KL | DDPM (L) KL | DDPM (L_s) KL |");
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|");
    let sw: Vec<Vec<(usize, f64)>> = swept()
        .map(|(k, _)| degeneracy(&r.datasets, k, |m| m.sw2))
        .collect();
    let kl: Vec<Vec<(usize, f64)>> = swept()
        .map(|(k, _)| degeneracy(&r.datasets, k, |m| m.hist_kl))
        .collect();
    for &n in &plan.sweep_ns {
        let cell = |v: &Vec<(usize, f64)>| {
            v.iter()
                .find(|(k, _)| *k == n)
                .map(|x| f(x.1, 2))
                .unwrap_or_else(|| "–".into())
        };
        let _ = writeln!(
            s,
            "| {n} | {} | {} | {} | {} | {} | {} |",
            cell(&sw[0]),
            cell(&sw[1]),
            cell(&sw[2]),
            cell(&kl[0]),
            cell(&kl[1]),
            cell(&kl[2])
        );
    }
    if let Some(p) = &r.progressive {
        let _ = writeln!(
            s,
            "\n## Progressive training against a fixed large N ({})\n",
            p.dataset
        );
        let _ = writeln!(
            s,
            "DiffFlow trained twice with the same budget; held-out negative ELBO at N = {} (fixed \
             grid, fixed noise, {} points, EMA weights) measured 20 times during training. Target = \
             the worse of the two final values (mean of the last three measurements) = {} nats.\n",
            p.val_n, p.val_points, f(p.target, 4)
        );
        let cpu = p.runs.iter().any(|r| r.cpu_seconds > 0.0);
        let clock = if cpu { "CPU s" } else { "s" };
        let _ = writeln!(
            s,
            "| run | N schedule | iterations | wall s | CPU s | final val. loss | {clock} to target |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|");
        for (run, t) in p.runs.iter().zip(&p.time_to_target) {
            let cpu_s = if cpu {
                format!("{:.0}", run.cpu_seconds)
            } else {
                "–".to_string()
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.0} | {cpu_s} | {} | {} |",
                run.label,
                run.schedule,
                run.iters,
                run.seconds,
                f(run.curve.last().map(|c| c.val_loss).unwrap_or(f64::NAN), 4),
                t.map(|v| format!("{v:.0}"))
                    .unwrap_or_else(|| "never".into())
            );
        }
        let _ = writeln!(
            s,
            "\nSpeed-up of progressive training (time of fixed N / time of progressive to the \
             target, {clock}): {}.",
            p.speedup
                .map(|v| format!("{v:.2}×"))
                .unwrap_or_else(|| "–".into())
        );
    }
    let _ = writeln!(s, "\n## Files\n");
    let _ = writeln!(s, "- `figure5.png`: rows = data sets; columns = fresh data, DiffFlow, DDPM (L), DDPM (L_s), CNF samples (2-D histograms, data units, [-1, 1]²).");
    let _ = writeln!(s, "- `figure4.png`: forward processes of DiffFlow, DDPM (the VP SDE, the same for both DDPMs) and the CNF at t = t_min, ≈T/3, ≈2T/3, T (standardised units), points coloured by the mode they started from.");
    let _ = writeln!(
        s,
        "- `steps.png`: SW2(N)/SW2(N max) per model, geometric mean over data sets."
    );
    if r.progressive.is_some() {
        let _ = writeln!(s, "- `progressive.png`: held-out negative ELBO against training seconds, progressive and fixed N.");
    }
    let _ = writeln!(s, "- `results.json`: every number above.");
    s
}

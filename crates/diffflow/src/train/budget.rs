//! Training under a matched budget: iterations, wall-clock seconds or CPU seconds, with the
//! learning rate decayed and N stepped by the fraction of the budget used, and (optionally)
//! model selection by the validation NLL at fixed fractions of it. This is how the
//! comparisons (`diffflow compare`, `bench-tabular`) give every model the same budget.

use super::Trainer;
use crate::config::Weights;
use crate::flow::DiffFlow;
use crate::likelihood::{pf_ode_nll, summarize, NllOptions};
use crate::rng::{Rng, Stream};
use crate::{Error, Result};
use std::time::Instant;

/// A matched budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// Training iterations.
    Iters(usize),
    /// Wall-clock seconds of training.
    Seconds(f64),
    /// CPU seconds of training (all threads of the process; less sensitive than wall time to
    /// other processes sharing the machine). Linux only.
    CpuSeconds(f64),
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Budget::Iters(i) => write!(f, "{i} iterations per model"),
            Budget::Seconds(s) => write!(f, "{s} s of training per model"),
            Budget::CpuSeconds(s) => write!(f, "{s} CPU-seconds of training per model"),
        }
    }
}

/// CPU time (user + system) of this process, all threads, in seconds (`getrusage`; Unix).
pub fn process_cpu_seconds() -> Result<f64> {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Err(Error::config(format!(
            "cannot read the process's CPU time: {}",
            std::io::Error::last_os_error()
        )));
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    Ok(tv(ru.ru_utime) + tv(ru.ru_stime))
}

/// How a budgeted run schedules itself over the fraction `f` of its budget used.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetPlan {
    /// The budget.
    pub budget: Budget,
    /// The learning rate is `lr · lr_decay^floor(lr_decays · f)` (at most `lr_decays` decays).
    pub lr_decay: f64,
    /// Number of decays over the whole budget.
    pub lr_decays: usize,
    /// N from each fraction on: `(fraction, N)` in increasing order (empty: the run's own N).
    pub stages: Vec<(f64, usize)>,
    /// Validations of the NLL at the fractions `k / validations`, `k = 1 …` (0: none); their
    /// time is not counted in the budget. The best model by validation NLL is kept.
    pub validations: usize,
}

/// Where a budgeted run is, for the caller's progress display after each iteration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetProgress {
    /// Iterations done.
    pub iters: usize,
    /// The fraction of the budget used.
    pub fraction: f64,
    /// Training seconds so far (CPU seconds under a CPU budget, else wall).
    pub seconds: f64,
    /// The iteration's loss.
    pub loss: f64,
}

/// A validation of a budgeted run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetValidation {
    /// Iterations done.
    pub iters: usize,
    /// Training seconds so far (as [`BudgetProgress::seconds`]).
    pub seconds: f64,
    /// Mean validation NLL, standardised units.
    pub nll: f64,
    /// Whether it is the best so far.
    pub best: bool,
}

/// What a budgeted run did.
pub struct BudgetRun {
    /// Iterations trained.
    pub iters: usize,
    /// Wall-clock seconds of training (validations not counted).
    pub seconds: f64,
    /// CPU seconds of training (0 unless the budget is in CPU seconds or validations were
    /// asked for; validations not counted).
    pub cpu_seconds: f64,
    /// Mean training loss over the last 10% of the iterations.
    pub final_loss: f64,
    /// With validations: the best validated model (EMA weights), its validation NLL and the
    /// iteration it was taken at.
    pub best: Option<(DiffFlow, f64, usize)>,
}

/// Trains `tr` under `plan` from its current state, with the base learning rate `lr` (the
/// run's own decay should be off: `lr_decay_every = 0`). Before each iteration the learning
/// rate and N are set from the fraction of the budget used; training stops when the budget
/// is used, or when `every` (called after each iteration) returns false. Validations use the
/// EMA weights on the standardised validation points `val` with the probability-flow NLL
/// (`nll` options, the run's interval, its seed's evaluation stream each time), reported to
/// `on_validation`.
pub fn fit_budget(
    tr: &mut Trainer,
    plan: &BudgetPlan,
    lr: f64,
    val: &[f64],
    nll: &NllOptions,
    every: &mut dyn FnMut(&Trainer, BudgetProgress) -> Result<bool>,
    on_validation: &mut dyn FnMut(BudgetValidation),
) -> Result<BudgetRun> {
    if plan.validations > 0 && val.is_empty() {
        return Err(Error::config("budgeted validations need validation points"));
    }
    let cpu_clock = matches!(plan.budget, Budget::CpuSeconds(_)) || plan.validations > 0;
    let cpu_now = || -> Result<f64> {
        if cpu_clock {
            process_cpu_seconds()
        } else {
            Ok(0.0)
        }
    };
    let fraction = |iters: usize, wall: f64, cpu: f64| match plan.budget {
        Budget::Iters(i) => iters as f64 / i as f64,
        Budget::Seconds(s) => wall / s,
        Budget::CpuSeconds(s) => cpu / s,
    };
    let clock = |wall: f64, cpu: f64| match plan.budget {
        Budget::CpuSeconds(_) => cpu,
        _ => wall,
    };
    let (mut wall, mut cpu, mut iters) = (0.0, 0.0, 0usize);
    let (mut losses, mut done_vals) = (Vec::new(), 0usize);
    let mut best: Option<(DiffFlow, f64, usize)> = None;
    loop {
        let frac = fraction(iters, wall, cpu);
        if frac >= 1.0 {
            break;
        }
        let k = (plan.lr_decays as f64 * frac.min(1.0)).floor() as i32;
        let n = plan
            .stages
            .iter()
            .rev()
            .find(|(f, _)| *f <= frac)
            .map(|s| s.1);
        tr.set_schedule(lr * plan.lr_decay.powi(k), n);
        let (w0, c0) = (Instant::now(), cpu_now()?);
        let loss = tr.train_step()?.loss.loss;
        wall += w0.elapsed().as_secs_f64();
        cpu += cpu_now()? - c0;
        iters += 1;
        losses.push(loss);
        let frac = fraction(iters, wall, cpu);
        if plan.validations > 0 {
            let due = ((frac * plan.validations as f64).floor() as usize).min(plan.validations);
            if due > done_vals {
                done_vals = due;
                let flow = tr.sampling_flow(Weights::Ema)?;
                let v = validation_nll(tr, &flow, val, nll)?;
                let improved = best.as_ref().is_none_or(|b| v < b.1);
                on_validation(BudgetValidation {
                    iters,
                    seconds: clock(wall, cpu),
                    nll: v,
                    best: improved,
                });
                if improved {
                    best = Some((flow, v, iters));
                }
            }
        }
        let progress = BudgetProgress {
            iters,
            fraction: frac,
            seconds: clock(wall, cpu),
            loss,
        };
        if !every(tr, progress)? {
            break;
        }
    }
    let tail = (losses.len() / 10).max(1).min(losses.len());
    let final_loss = if losses.is_empty() {
        f64::NAN
    } else {
        losses[losses.len() - tail..].iter().sum::<f64>() / tail as f64
    };
    Ok(BudgetRun {
        iters,
        seconds: wall,
        cpu_seconds: cpu,
        final_loss,
        best,
    })
}

/// Mean probability-flow NLL of `val` (standardised) under `flow` on the run's interval.
fn validation_nll(tr: &Trainer, flow: &DiffFlow, val: &[f64], opts: &NllOptions) -> Result<f64> {
    let mut rng = Rng::stream(tr.cfg.train.seed, Stream::Eval);
    let g = tr.cfg.model.grid;
    let nll = pf_ode_nll(flow, val, &[g.t_min, g.t_max], opts, &mut rng, &|_| {})?;
    let v = summarize(&nll.nll).mean;
    if !v.is_finite() {
        return Err(Error::NonFinite {
            step: tr.step,
            what: format!("validation NLL ({v})"),
        });
    }
    Ok(v)
}

//! The tuning study (`diffflow tune`): a trial is a configuration, written as a base and
//! `key=value` overrides ([`apply_overrides`]), trained on a data set and measured on its
//! VALIDATION points only (never the test split): the probability-flow NLL and, for the
//! diffusions, the negative ELBO of the sampling weights at evenly spaced checks during
//! training, with the CPU time the training took ([`run_trial`]).
//!
//! DiffFlow trials train with the run's own schedule (progressive N, step decay of the
//! learning rate), exactly as `diffflow train` would; baseline trials train under a budget
//! ([`crate::train::budget::fit_budget`], learning rate decayed ×0.9 ten times over it), as
//! `bench-tabular` trains them. A trial is a deterministic function of its configuration and
//! seed (same bytes whatever the number of threads), so the study is reproducible.

use crate::config::{tabular_width, ModelKind, RunConfig, Weights};
use crate::data::TrainData;
use crate::likelihood::{NllOptions, Summary};
use crate::nn::ParamKnob;
use crate::sde::{Diffusion, StepsSchedule};
use crate::train::budget::{fit_budget, process_cpu_seconds, Budget, BudgetPlan};
use crate::train::Trainer;
use crate::validation::{measure, ValMetric, ValidationConfig};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// The override keys [`apply_override`] knows, with what each sets (for help texts).
pub const KEYS: &[(&str, &str)] = &[
    ("model", "diffflow | ddpm-ls | ddpm-l | cnf: the kind's settings (RunConfig::for_model); give it first"),
    ("g", "diffusion g(t): 0.2, linear:START:END (at T) or vp[:BMIN:BMAX]; give it after t_max"),
    ("t_max", "final time T; t_min and the Fourier frequencies are rescaled with it (same c*t range)"),
    ("t_min", "first time point t_0"),
    ("beta", "grid exponent beta"),
    ("grid", "fixed | flexible"),
    ("steps", "N: 20, or progressive 5,10@1000,20@2000 (N@iteration)"),
    ("length", "factor on iters, the steps' stage iterations and lr_decay_every (same schedule shape)"),
    ("iters", "training iterations"),
    ("batch", "batch size"),
    ("lr", "learning rate of both nets"),
    ("lr_decay", "learning-rate factor per decay"),
    ("lr_decay_every", "iterations between decays (0: none)"),
    ("ema", "EMA decay"),
    ("weights", "ema | live: the weights measured (and sampled)"),
    ("clip", "gradient-norm clip (0: off)"),
    ("width", "hidden width"),
    ("width_per_d", "hidden width F*d rounded up to a multiple of 32, in [64, 1024]"),
    ("depth", "hidden H->H layers after the input layer"),
    ("fourier", "Fourier frequencies of the time features"),
    ("activation", "gelu | silu | tanh | relu"),
    ("params", "baselines: one net of F times DiffFlow's two nets' parameters (width matched)"),
    ("eps_groups", "DDPM (L_s): time groups per batch"),
    ("cnf_trace", "CNF training divergence: exact | hutchinson"),
];

/// One `key=value` override.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    /// The key (one of [`KEYS`]).
    pub key: String,
    /// Its value, as written.
    pub value: String,
}

impl std::fmt::Display for Override {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

/// Parses whitespace-separated `key=value` overrides (`"g=1 t_max=0.25"`; empty: none).
pub fn parse_overrides(spec: &str) -> Result<Vec<Override>> {
    spec.split_whitespace()
        .map(|item| {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| Error::config(format!("override '{item}': expected key=value")))?;
            if !KEYS.iter().any(|(k, _)| *k == key) {
                let known: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
                return Err(Error::config(format!(
                    "override '{item}': unknown key '{key}' (known: {})",
                    known.join(", ")
                )));
            }
            Ok(Override {
                key: key.into(),
                value: value.into(),
            })
        })
        .collect()
}

/// `F·d` rounded up to a multiple of 32, in `[64, 1024]` (the `width_per_d` override).
pub fn width_per_d(factor: f64, d: usize) -> usize {
    let w = (factor * d as f64 / 32.0).ceil().max(0.0) as usize * 32;
    w.clamp(64, 1024)
}

/// The configuration of a trial: `base` (a DiffFlow configuration whose width is already
/// chosen for the data, e.g. the tabular preset with [`tabular_width`]) with the overrides
/// applied in order, for data of dimension `d`. A baseline (`model=...`) gets one net with
/// `params` (default 1) times the parameters of the two nets of `base`, by its width, after
/// the other overrides (so `depth=3` keeps the parameter count); an explicit `width` or
/// `width_per_d` turns the matching off. The result is validated.
pub fn trial_config(base: &RunConfig, d: usize, overrides: &[Override]) -> Result<RunConfig> {
    let mut cfg = base.clone();
    let target = 2 * base.model.net.num_params(d);
    let mut params = 1.0;
    let mut explicit_width = false;
    for o in overrides {
        match o.key.as_str() {
            "params" => params = number(o)?,
            "width" | "width_per_d" => {
                explicit_width = true;
                apply_override(&mut cfg, d, o)?;
            }
            _ => apply_override(&mut cfg, d, o)?,
        }
    }
    if cfg.model.kind != ModelKind::DiffFlow {
        if !explicit_width {
            let want = (target as f64 * params).round() as usize;
            cfg.model.net = cfg.model.net.matched(d, want, ParamKnob::Width);
        }
        cfg.fit_to_data(d, false);
        // The budget decays the learning rate (see `run_trial`).
        cfg.train.lr_decay_every = 0;
    }
    cfg.train.validation = ValidationConfig::default();
    cfg.validate()
        .map_err(|e| Error::config(format!("trial {}: {e}", join(overrides))))?;
    Ok(cfg)
}

/// Overrides written back as one string.
pub fn join(overrides: &[Override]) -> String {
    let parts: Vec<String> = overrides.iter().map(Override::to_string).collect();
    parts.join(" ")
}

fn number(o: &Override) -> Result<f64> {
    o.value
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| Error::config(format!("override {o}: expected a number")))
}

fn count(o: &Override) -> Result<usize> {
    o.value
        .parse::<usize>()
        .map_err(|_| Error::config(format!("override {o}: expected a whole number")))
}

/// Applies one override to `cfg` (data of dimension `d`); see [`KEYS`]. Errors name the
/// override.
pub fn apply_override(cfg: &mut RunConfig, d: usize, o: &Override) -> Result<()> {
    set(cfg, d, o).map_err(|e| match e {
        Error::Config(msg) if !msg.starts_with("override") => {
            Error::config(format!("override {o}: {msg}"))
        }
        e => e,
    })
}

fn set(cfg: &mut RunConfig, d: usize, o: &Override) -> Result<()> {
    let v = o.value.as_str();
    let positive = || -> Result<f64> {
        let x = number(o)?;
        if x > 0.0 {
            Ok(x)
        } else {
            Err(Error::config(format!("override {o}: must be > 0")))
        }
    };
    match o.key.as_str() {
        "model" => *cfg = cfg.clone().for_model(v.parse::<ModelKind>()?),
        "g" => cfg.model.g = Diffusion::parse(v, cfg.model.grid.t_max)?,
        "t_max" => {
            let (m, new) = (&mut cfg.model, positive()?);
            let old = m.grid.t_max;
            m.grid.t_min *= new / old;
            m.grid.t_max = new;
            m.net = m.net.rescale_time(old, new);
            if let Diffusion::Linear { t_end, .. } = &mut m.g {
                *t_end = new;
            }
        }
        "t_min" => cfg.model.grid.t_min = number(o)?,
        "beta" => cfg.model.grid.beta = number(o)?,
        "grid" => cfg.train.grid = v.parse()?,
        "steps" => cfg.train.steps = StepsSchedule::parse(v)?,
        "length" => {
            let f = positive()?;
            let t = &mut cfg.train;
            let scale = |i: usize| ((i as f64) * f).round() as usize;
            t.iters = scale(t.iters).max(1);
            t.lr_decay_every = scale(t.lr_decay_every);
            let stages: Vec<String> = t
                .steps
                .stages()
                .iter()
                .map(|&(at, n)| match at {
                    0 => n.to_string(),
                    _ => format!("{n}@{}", scale(at).max(1)),
                })
                .collect();
            t.steps = StepsSchedule::parse(&stages.join(","))?;
        }
        "iters" => cfg.train.iters = count(o)?,
        "batch" => cfg.train.batch = count(o)?,
        "lr" => {
            let t = &mut cfg.train;
            t.lr = number(o)?;
            t.lr_drift = None;
            t.lr_score = None;
        }
        "lr_decay" => cfg.train.lr_decay = number(o)?,
        "lr_decay_every" => cfg.train.lr_decay_every = count(o)?,
        "ema" => cfg.train.ema_decay = number(o)?,
        "weights" => cfg.sample.weights = v.parse::<Weights>()?,
        "clip" => cfg.train.clip = number(o)?,
        "width" => cfg.model.net.width = count(o)?,
        "width_per_d" => cfg.model.net.width = width_per_d(positive()?, d),
        "depth" => cfg.model.net.depth = count(o)?,
        "fourier" => cfg.model.net.fourier = count(o)?,
        "activation" => cfg.model.net.activation = v.parse()?,
        "eps_groups" => cfg.train.eps_groups = count(o)?,
        "cnf_trace" => cfg.train.cnf_trace = v.parse()?,
        "params" => {
            return Err(Error::config(format!(
                "override {o}: only in a trial (trial_config)"
            )))
        }
        other => return Err(Error::config(format!("unknown override key '{other}'"))),
    }
    Ok(())
}

/// How a trial is measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrialOptions {
    /// Checks over the run, at iterations `k·iters/checks` (DiffFlow) or at the fractions
    /// `k/checks` of the budget (baselines), `k = 1 …`.
    pub checks: usize,
    /// Validation points measured: the first `val_points` (0: all).
    pub val_points: usize,
    /// Forward trajectories per point of the negative ELBO (0: no ELBO); diffusions only.
    pub elbo_trajectories: usize,
    /// The budget of a baseline (DiffFlow trials train `train.iters` iterations).
    pub budget: Option<Budget>,
    /// Worker threads (results do not depend on it).
    pub threads: usize,
}

/// One check of a trial: the validation figures of the sampling weights, nats per point in
/// the data's units.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// Iterations trained.
    pub iters: usize,
    /// CPU seconds of training so far (checks not counted).
    pub cpu_seconds: f64,
    /// Probability-flow NLL (Dormand–Prince 1e-5, exact divergence).
    #[serde(with = "nan_as_null")]
    pub nll: f64,
    /// Its standard error over the points (NaN where not measured).
    #[serde(with = "nan_as_null")]
    pub nll_stderr: f64,
    /// Negative ELBO on the fixed grid of the last training N (NaN: not measured).
    #[serde(with = "nan_as_null")]
    pub elbo: f64,
    /// Its standard error over the points.
    #[serde(with = "nan_as_null")]
    pub elbo_stderr: f64,
}

/// A figure that may be NaN ("not measured") as JSON: `null` both ways (JSON has no NaN, and
/// serde_json writes NaN as `null` but cannot read it back into an `f64`).
mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

/// What a trial did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrialOutcome {
    /// Trainable parameters (all nets).
    pub params: usize,
    /// Iterations trained.
    pub iters: usize,
    /// CPU seconds of training (checks not counted).
    pub cpu_seconds: f64,
    /// Wall seconds of training and checks.
    pub seconds: f64,
    /// Validation points measured.
    pub val_points: usize,
    /// The checks, in order.
    pub checks: Vec<Check>,
    /// Why training stopped early (a NaN, ...), if it did; the checks before it are kept.
    pub error: Option<String>,
}

impl TrialOutcome {
    /// The check with the lowest validation NLL (model selection by the NLL).
    pub fn best(&self) -> Option<&Check> {
        self.checks
            .iter()
            .filter(|c| c.nll.is_finite())
            .min_by(|a, b| a.nll.total_cmp(&b.nll))
    }
}

/// Trains `cfg` (from [`trial_config`]) on `data` and measures it on the first
/// `opts.val_points` validation points at `opts.checks` checks; `on_check` sees each check.
/// A divergence (NaN) ends the trial with its error recorded, not an `Err`.
pub fn run_trial(
    cfg: RunConfig,
    data: TrainData,
    opts: &TrialOptions,
    on_check: &mut dyn FnMut(&Check),
) -> Result<TrialOutcome> {
    let d = data.dim;
    let rows = data.val.len() / d;
    if rows == 0 {
        return Err(Error::config("a trial needs validation points"));
    }
    let n_val = if opts.val_points == 0 {
        rows
    } else {
        opts.val_points.min(rows)
    };
    let val = data.val[..n_val * d].to_vec();
    let shift = -data.standardizer.log_abs_det();
    let started = Instant::now();
    let mut tr = Trainer::new(cfg, data)?;
    let mut out = TrialOutcome {
        params: tr.flow.num_params(),
        iters: 0,
        cpu_seconds: 0.0,
        seconds: 0.0,
        val_points: n_val,
        checks: Vec::new(),
        error: None,
    };
    let checks = opts.checks.max(1);
    let result = match (tr.cfg.model.kind, opts.budget) {
        (ModelKind::DiffFlow, _) | (_, None) => {
            let iters = tr.cfg.train.iters;
            let mut cpu = 0.0;
            let mut next = 1;
            let mut run = || -> Result<()> {
                while tr.step < iters {
                    let c0 = process_cpu_seconds()?;
                    tr.train_step()?;
                    cpu += process_cpu_seconds()? - c0;
                    out.iters = tr.step;
                    out.cpu_seconds = cpu;
                    if tr.step * checks >= next * iters {
                        next += 1;
                        let c = check(&tr, &val, shift, opts, cpu)?;
                        on_check(&c);
                        out.checks.push(c);
                    }
                }
                Ok(())
            };
            run()
        }
        (_, Some(budget)) => {
            let plan = BudgetPlan {
                budget,
                lr_decay: 0.9,
                lr_decays: 10,
                stages: Vec::new(),
                validations: checks,
            };
            let nll = NllOptions {
                threads: opts.threads,
                ..NllOptions::default()
            };
            let lr = tr.cfg.train.lr;
            let mut seen = Vec::new();
            let r = fit_budget(
                &mut tr,
                &plan,
                lr,
                &val,
                &nll,
                &mut |_, _| Ok(true),
                &mut |v| seen.push(v),
            );
            for v in seen {
                let c = Check {
                    iters: v.iters,
                    cpu_seconds: v.seconds,
                    nll: v.nll + shift,
                    nll_stderr: f64::NAN,
                    elbo: f64::NAN,
                    elbo_stderr: f64::NAN,
                };
                on_check(&c);
                out.checks.push(c);
            }
            r.map(|run| {
                out.iters = run.iters;
                out.cpu_seconds = run.cpu_seconds;
            })
        }
    };
    out.seconds = started.elapsed().as_secs_f64();
    match result {
        Ok(()) => Ok(out),
        Err(e @ Error::NonFinite { .. }) => {
            out.error = Some(e.to_string());
            Ok(out)
        }
        Err(e) => Err(e),
    }
}

/// The validation NLL (and ELBO) of the trainer's sampling weights, data units.
fn check(tr: &Trainer, val: &[f64], shift: f64, opts: &TrialOptions, cpu: f64) -> Result<Check> {
    let c = &tr.cfg;
    let flow = tr.sampling_flow(c.sample.weights)?;
    let n = c.sample.steps.unwrap_or(c.train.steps.last());
    let v = |metric, trajectories| ValidationConfig {
        metric,
        trajectories,
        ..ValidationConfig::default()
    };
    let at = |metric, k| -> Result<Summary> {
        measure(
            &flow,
            val,
            &v(metric, k),
            &c.model.grid,
            n,
            c.train.seed,
            opts.threads,
        )
    };
    let nll = at(ValMetric::Nll, 1)?;
    let elbo = if opts.elbo_trajectories > 0 && c.model.kind.is_diffusion() {
        Some(at(ValMetric::Elbo, opts.elbo_trajectories)?)
    } else {
        None
    };
    Ok(Check {
        iters: tr.step,
        cpu_seconds: cpu,
        nll: nll.mean + shift,
        nll_stderr: nll.stderr,
        elbo: elbo.map_or(f64::NAN, |e| e.mean + shift),
        elbo_stderr: elbo.map_or(f64::NAN, |e| e.stderr),
    })
}

/// The tabular preset for data of dimension `d`: [`RunConfig::preset`] with the width of
/// [`tabular_width`] (the base of the study's trials).
pub fn tabular_base(dataset: &str, d: usize) -> RunConfig {
    let mut c = RunConfig::preset(crate::config::Preset::Tabular, dataset);
    c.model.net.width = tabular_width(d);
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn ov(spec: &str) -> Vec<Override> {
        parse_overrides(spec).unwrap()
    }

    /// Correlated 3-d Gaussian points, standardised, with a validation split.
    fn data(n: usize) -> TrainData {
        let mut rng = Rng::new(7);
        let mut pts = |n: usize| -> Vec<f64> {
            (0..n)
                .flat_map(|_| {
                    let (a, b, c) = (rng.normal(), rng.normal(), rng.normal());
                    [a, 0.8 * a + 0.6 * b, 2.0 + 0.5 * c]
                })
                .collect()
        };
        let (train, val) = (pts(n), pts(16));
        let mut d = TrainData::from_points(train, Vec::new(), 3).unwrap();
        let mut v = val;
        d.standardizer.apply(&mut v);
        d.val = v;
        d
    }

    fn tiny_base() -> RunConfig {
        let mut c = tabular_base("toy", 3);
        c.model.net.width = 16;
        c.model.net.fourier = 4;
        c.train.batch = 16;
        c.train.iters = 6;
        c.train.steps = StepsSchedule::constant(3);
        c.train.threads = 1;
        c
    }

    #[test]
    fn overrides_set_what_they_name() {
        let base = tabular_base("x", 43);
        let c = trial_config(
            &base,
            43,
            &ov("t_max=0.25 g=1 beta=0.7 grid=fixed width_per_d=6 depth=3 lr=5e-3 batch=512 ema=0.999 weights=live"),
        )
        .unwrap();
        assert_eq!(c.model.g, Diffusion::Constant { value: 1.0 });
        assert_eq!(c.model.grid.t_max, 0.25);
        // t_min and the frequencies move with T (x5): the same c*t range.
        assert!((c.model.grid.t_min - 0.005).abs() < 1e-15);
        assert!((c.model.net.freq_max - base.model.net.freq_max / 5.0).abs() < 1e-12);
        assert_eq!(c.model.grid.beta, 0.7);
        assert_eq!(c.train.grid, crate::sde::GridKind::Fixed);
        // ceil(6 * 43 / 32) * 32 = 288.
        assert_eq!(c.model.net.width, 288);
        assert_eq!(c.model.net.depth, 3);
        assert_eq!((c.train.lr, c.train.batch), (5e-3, 512));
        assert_eq!(c.train.ema_decay, 0.999);
        assert_eq!(c.sample.weights, Weights::Live);
        // The base is untouched, and no override gives the base back.
        assert_eq!(trial_config(&base, 43, &[]).unwrap(), {
            let mut b = base.clone();
            b.train.validation = ValidationConfig::default();
            b
        });
        assert_eq!(width_per_d(1.0, 4), 64);
        assert_eq!(width_per_d(100.0, 61), 1024);
    }

    #[test]
    fn a_check_with_unmeasured_figures_reads_back() {
        // A baseline's check has no ELBO and no per-point s.e. (NaN): a finished trial must
        // read back from its JSON line, or a resumed study runs it again.
        let c = Check {
            iters: 3,
            cpu_seconds: 1.5,
            nll: 2.25,
            nll_stderr: f64::NAN,
            elbo: f64::NAN,
            elbo_stderr: f64::INFINITY,
        };
        let text = serde_json::to_string(&c).unwrap();
        assert!(text.contains("\"elbo\":null"), "{text}");
        let back: Check = serde_json::from_str(&text).unwrap();
        assert_eq!((back.iters, back.cpu_seconds, back.nll), (3, 1.5, 2.25));
        assert!(back.nll_stderr.is_nan() && back.elbo.is_nan() && back.elbo_stderr.is_nan());
    }

    #[test]
    fn length_stretches_the_whole_schedule() {
        let base = tabular_base("x", 10);
        let c = trial_config(&base, 10, &ov("length=0.5")).unwrap();
        assert_eq!(c.train.iters, base.train.iters / 2);
        assert_eq!(c.train.lr_decay_every, base.train.lr_decay_every / 2);
        let want: Vec<(usize, usize)> = base
            .train
            .steps
            .stages()
            .iter()
            .map(|&(at, n)| (at / 2, n))
            .collect();
        assert_eq!(c.train.steps.stages(), &want[..]);
    }

    #[test]
    fn bad_overrides_are_one_line_errors_naming_them() {
        let err = |spec: &str| -> String {
            let base = tabular_base("x", 5);
            let e = parse_overrides(spec)
                .and_then(|o| trial_config(&base, 5, &o))
                .unwrap_err()
                .to_string();
            assert!(!e.contains('\n'), "{e}");
            e
        };
        let e = err("gee=1");
        assert!(
            e.contains("unknown key 'gee'") && e.contains("width_per_d"),
            "{e}"
        );
        assert!(err("lr").contains("expected key=value"));
        assert!(err("lr=fast").contains("override lr=fast: expected a number"));
        assert!(err("batch=-2").contains("override batch=-2: expected a whole number"));
        assert!(err("g=-1").contains("override g=-1"));
        assert!(err("model=gan").contains("override model=gan"));
        assert!(err("grid=wavy").contains("override grid=wavy"));
        assert!(err("t_max=0").contains("override t_max=0: must be > 0"));
        // Values that parse but make an invalid configuration name the trial.
        assert!(err("ema=1.5").contains("trial ema=1.5"));
    }

    #[test]
    fn a_baseline_gets_diffflows_parameter_count() {
        let base = tabular_base("x", 43);
        let target = (2 * base.model.net.num_params(43)) as f64;
        let params = |spec: &str| {
            let c = trial_config(&base, 43, &ov(spec)).unwrap();
            (c.model.net.num_params(43) as f64, c)
        };
        for spec in ["model=cnf", "model=cnf depth=3", "model=ddpm-ls lr=1e-3"] {
            let (p, c) = params(spec);
            assert!((p / target - 1.0).abs() < 0.02, "{spec}: {p} vs {target}");
            assert_eq!(c.train.lr_decay_every, 0, "the budget decays the rate");
        }
        let (p, c) = params("model=cnf params=0.25");
        assert!((p / (0.25 * target) - 1.0).abs() < 0.05, "{p}");
        assert_eq!(c.train.cnf_trace, crate::baselines::cnf::Trace::Hutchinson);
        let (_, c) = params("model=cnf width=64");
        assert_eq!(c.model.net.width, 64);
        assert_eq!(c.model.kind, ModelKind::Cnf);
        // The CNF's settings from for_model: [0, 1], 6 RK4 steps, a quarter batch.
        assert_eq!((c.model.grid.t_max, c.train.steps.last()), (1.0, 6));
        assert_eq!(c.train.batch, 64);
    }

    #[test]
    fn a_trial_is_deterministic_whatever_the_threads() {
        let run = |threads: usize| {
            let mut cfg = trial_config(&tiny_base(), 3, &[]).unwrap();
            cfg.train.threads = threads;
            let opts = TrialOptions {
                checks: 2,
                val_points: 10,
                elbo_trajectories: 2,
                budget: None,
                threads,
            };
            let mut seen = 0;
            let o = run_trial(cfg, data(64), &opts, &mut |_| seen += 1).unwrap();
            assert_eq!(seen, 2);
            o
        };
        let (a, b) = (run(1), run(2));
        assert_eq!(a.checks.iter().map(|c| c.iters).collect::<Vec<_>>(), [3, 6]);
        assert_eq!((a.iters, a.val_points, a.error.clone()), (6, 10, None));
        for (x, y) in a.checks.iter().zip(&b.checks) {
            assert_eq!(x.nll.to_bits(), y.nll.to_bits());
            assert_eq!(x.elbo.to_bits(), y.elbo.to_bits());
            assert!(x.nll.is_finite() && x.elbo.is_finite() && x.nll_stderr > 0.0);
        }
        assert!(a.cpu_seconds > 0.0 && a.checks[1].cpu_seconds >= a.checks[0].cpu_seconds);
        assert_eq!(
            a.best().unwrap().nll,
            a.checks.iter().map(|c| c.nll).fold(f64::INFINITY, f64::min)
        );
    }

    #[test]
    fn a_trial_is_measured_in_data_units() {
        // The validation NLL of a trial equals the model's NLL of the validation points in
        // data units, evaluated from scratch.
        let cfg = trial_config(&tiny_base(), 3, &[]).unwrap();
        let d = data(64);
        let opts = TrialOptions {
            checks: 1,
            val_points: 0,
            elbo_trajectories: 0,
            budget: None,
            threads: 1,
        };
        let o = run_trial(cfg.clone(), d.clone(), &opts, &mut |_| {}).unwrap();
        let mut tr = Trainer::new(cfg.clone(), d.clone()).unwrap();
        for _ in 0..cfg.train.iters {
            tr.train_step().unwrap();
        }
        let model = tr.model(None).unwrap();
        let mut x = d.val.clone();
        d.standardizer.invert(&mut x);
        let ev = model
            .evaluate(
                &x,
                &{
                    let mut e = model.default_eval(1);
                    e.elbo = None;
                    e
                },
                &|_, _| {},
            )
            .unwrap();
        assert!(
            (o.checks[0].nll - ev.nll.mean).abs() < 1e-9,
            "{} vs {}",
            o.checks[0].nll,
            ev.nll.mean
        );
        assert!(o.checks[0].elbo.is_nan(), "no ELBO asked for");
    }

    #[test]
    fn a_baseline_trial_trains_its_budget_and_a_divergence_is_kept() {
        let base = tiny_base();
        let cfg = trial_config(&base, 3, &ov("model=cnf steps=2")).unwrap();
        let opts = TrialOptions {
            checks: 2,
            val_points: 8,
            elbo_trajectories: 2,
            budget: Some(Budget::Iters(4)),
            threads: 1,
        };
        let o = run_trial(cfg, data(64), &opts, &mut |_| {}).unwrap();
        assert_eq!(o.iters, 4);
        assert_eq!(o.checks.iter().map(|c| c.iters).collect::<Vec<_>>(), [2, 4]);
        assert!(o
            .checks
            .iter()
            .all(|c| c.nll.is_finite() && c.elbo.is_nan()));
        // A learning rate that blows the weights up: the trial ends with its error, not Err.
        let cfg = trial_config(&base, 3, &ov("lr=1e30 clip=0 iters=6")).unwrap();
        let opts = TrialOptions {
            budget: None,
            ..opts
        };
        let o = run_trial(cfg, data(64), &opts, &mut |_| {}).unwrap();
        let e = o.error.expect("diverged");
        assert!(
            e.contains("non-finite") || e.contains("NaN") || e.contains("inf"),
            "{e}"
        );
        assert!(o.iters < 6);
    }
}

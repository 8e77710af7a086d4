//! `diffflow tune`: the tuning study of the tabular preset (issue 14), run from a plan file.
//!
//! A plan (TOML) names the data sets, the training seeds, a base (overrides on the tabular
//! preset, see `diffflow::tune::KEYS`) and factors, each a list of values (overrides). Every
//! factor is varied one at a time around the base; the base is run once per set and seed.
//! Each trial trains on the set's training split and is measured on its VALIDATION split
//! (the test split is never read): validation NLL at evenly spaced checks, the best check
//! (model selection by the validation NLL), the negative ELBO, CPU time.
//!
//! The data split is always the one of seed 0 (the benchmark's), so that trials of
//! different training seeds are measured on the same validation points. Finished trials are
//! appended to `trials.<shard>.jsonl` as they end: an interrupted study started again skips
//! them, and several processes (`--shard 0/2`, `--shard 1/2`) can share one study. At the
//! end (or with `--report`) the trials of every shard make `table.md`, `results.json` and one
//! `plot-<factor>.png` per factor (validation NLL against the factor's values).

use crate::bench_tabular::{sets, Set};
use crate::plot;
use anyhow::{bail, Context, Result};
use clap::Args;
use diffflow::checkpoint::atomic_write;
use diffflow::config::{ModelKind, RunConfig};
use diffflow::data::TrainData;
use diffflow::train::budget::Budget;
use diffflow::tune::{
    parse_overrides, run_trial, tabular_base, trial_config, Check, TrialOptions, TrialOutcome,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct TuneArgs {
    /// The study plan (TOML): title, sets, seeds, base, checks, val_points,
    /// elbo_trajectories, budget_cpu / budget_iters (baselines), [[factor]] name, values, x.
    #[arg(long)]
    plan: PathBuf,
    /// Output folder: trials.*.jsonl, table.md, results.json, plot-*.png, plan.toml.
    #[arg(long)]
    out: PathBuf,
    /// Run only the trials i, i + k, i + 2k, ... of the plan ("i/k").
    #[arg(long, default_value = "0/1")]
    shard: String,
    /// Worker threads of each trial (results do not depend on it).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Folder of the data files (default: the repository's crates/diffflow/assets/tabular).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Only write the report from the trials already in --out.
    #[arg(long)]
    report: bool,
    /// List the trials (and which are done) without running them.
    #[arg(long)]
    dry_run: bool,
}

/// The plan file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Plan {
    /// Title of the report.
    title: String,
    /// Data sets (bench-tabular's names).
    sets: Vec<String>,
    /// Training seeds (the data split is always seed 0's).
    #[serde(default = "default_seeds")]
    seeds: Vec<u64>,
    /// Overrides of every trial, applied before the factor's.
    #[serde(default)]
    base: String,
    /// Checks over each run.
    #[serde(default = "default_checks")]
    checks: usize,
    /// Validation points measured (0: all).
    #[serde(default)]
    val_points: usize,
    /// Trajectories per point of the negative ELBO (0: none).
    #[serde(default)]
    elbo_trajectories: usize,
    /// Budget of the baselines' trials in CPU seconds, per data set.
    #[serde(default)]
    budget_cpu: BTreeMap<String, f64>,
    /// Budget of the baselines' trials in iterations (instead of CPU seconds).
    #[serde(default)]
    budget_iters: Option<usize>,
    /// The factors.
    #[serde(default, rename = "factor")]
    factors: Vec<Factor>,
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}

fn default_checks() -> usize {
    4
}

/// One factor: values varied one at a time around the base.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Factor {
    /// Name (also of the plot file).
    name: String,
    /// Values: overrides each.
    values: Vec<String>,
    /// Numeric positions of the values on the plot's x axis (default 1, 2, ...).
    #[serde(default)]
    x: Vec<f64>,
    /// Position of the base on it (default 0).
    #[serde(default)]
    base_x: Option<f64>,
    /// What the base is for this factor, as shown (e.g. "g=0.2").
    #[serde(default)]
    base_label: Option<String>,
    /// Data sets of this factor (default: the plan's).
    #[serde(default)]
    sets: Vec<String>,
    /// Seeds of this factor (default: the plan's).
    #[serde(default)]
    seeds: Vec<u64>,
}

impl Factor {
    fn sets<'a>(&'a self, plan: &'a Plan) -> &'a [String] {
        if self.sets.is_empty() {
            &plan.sets
        } else {
            &self.sets
        }
    }

    fn seeds<'a>(&'a self, plan: &'a Plan) -> &'a [u64] {
        if self.seeds.is_empty() {
            &plan.seeds
        } else {
            &self.seeds
        }
    }

    /// The x position of value `i`, or of the base (`None`).
    fn x_of(&self, i: Option<usize>) -> f64 {
        match i {
            None => self.base_x.unwrap_or(0.0),
            Some(i) => self.x.get(i).copied().unwrap_or((i + 1) as f64),
        }
    }
}

/// One trial of the plan.
#[derive(Clone, Debug, PartialEq)]
struct TrialSpec {
    set: String,
    seed: u64,
    /// The factor's overrides (empty: the base).
    value: String,
}

impl TrialSpec {
    fn overrides(&self, plan: &Plan) -> String {
        format!("{} {}", plan.base, self.value).trim().to_string()
    }

    /// What identifies the trial's result.
    fn key(&self, plan: &Plan) -> String {
        format!(
            "{}|seed={}|{}|checks={}|val={}|elbo={}|budget={}",
            self.set,
            self.seed,
            self.overrides(plan),
            plan.checks,
            plan.val_points,
            plan.elbo_trajectories,
            budget_of(plan, &self.set).map_or("-".into(), |b| b.to_string())
        )
    }
}

fn budget_of(plan: &Plan, set: &str) -> Option<Budget> {
    match (plan.budget_iters, plan.budget_cpu.get(set)) {
        (Some(i), _) => Some(Budget::Iters(i)),
        (None, Some(&s)) => Some(Budget::CpuSeconds(s)),
        _ => None,
    }
}

/// The trials of the plan, in order, without repeats (the base once per set and seed).
fn trials(plan: &Plan) -> Vec<TrialSpec> {
    let mut out: Vec<TrialSpec> = Vec::new();
    let mut push = |t: TrialSpec| {
        if !out.contains(&t) {
            out.push(t);
        }
    };
    for set in &plan.sets {
        for &seed in &plan.seeds {
            push(TrialSpec {
                set: set.clone(),
                seed,
                value: String::new(),
            });
        }
    }
    for f in &plan.factors {
        for set in f.sets(plan) {
            for &seed in f.seeds(plan) {
                push(TrialSpec {
                    set: set.clone(),
                    seed,
                    value: String::new(),
                });
                for v in &f.values {
                    push(TrialSpec {
                        set: set.clone(),
                        seed,
                        value: v.trim().to_string(),
                    });
                }
            }
        }
    }
    out
}

/// A finished trial, one line of `trials.*.jsonl`.
#[derive(Clone, Debug, Deserialize, Serialize)]
struct Record {
    key: String,
    set: String,
    seed: u64,
    overrides: String,
    model: String,
    outcome: TrialOutcome,
    /// Load average when the trial ended (CPU times are inflated on a busy machine).
    load_average: String,
}

fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let parsed = s
        .split_once('/')
        .and_then(|(i, k)| Some((i.trim().parse().ok()?, k.trim().parse().ok()?)));
    match parsed {
        Some((i, k)) if k >= 1 && i < k => Ok((i, k)),
        _ => bail!("--shard '{s}': expected i/k with 0 <= i < k"),
    }
}

fn read_plan(path: &Path) -> Result<Plan> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let plan: Plan = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message().trim()))?;
    if plan.sets.is_empty() || plan.seeds.is_empty() {
        bail!("{}: the plan needs sets and seeds", path.display());
    }
    for f in &plan.factors {
        if !f.x.is_empty() && f.x.len() != f.values.len() {
            bail!(
                "{}: factor '{}' has {} values but {} x positions",
                path.display(),
                f.name,
                f.values.len(),
                f.x.len()
            );
        }
    }
    Ok(plan)
}

/// The records in every `trials.*.jsonl` of `out`, by key (later lines win).
fn read_records(out: &Path) -> Result<BTreeMap<String, Record>> {
    let mut recs = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(out) else {
        return Ok(recs);
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with("trials.") && n.ends_with(".jsonl")
            })
        })
        .collect();
    files.sort();
    for f in files {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("cannot read {}", f.display()))?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            // A line cut by a crash is skipped (its trial runs again).
            match serde_json::from_str::<Record>(line) {
                Ok(r) => {
                    recs.insert(r.key.clone(), r);
                }
                Err(e) => eprintln!("{} line {}: skipped ({e})", f.display(), i + 1),
            }
        }
    }
    Ok(recs)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

pub fn run(args: TuneArgs) -> Result<()> {
    let plan = read_plan(&args.plan)?;
    let (shard, shards) = parse_shard(&args.shard)?;
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(crate::bench_tabular::assets);
    let all = trials(&plan);
    // Check every trial's data set and overrides before training anything.
    let names: Vec<String> = all.iter().map(|t| t.set.clone()).collect();
    let mut uniq = names.clone();
    uniq.dedup();
    uniq.sort();
    uniq.dedup();
    let known: BTreeMap<String, Set> = sets(&dir, &uniq.join(","))?
        .into_iter()
        .map(|s| (s.name.to_string(), s))
        .collect();
    // The data of every set (split of seed 0), and every trial's configuration checked.
    let mut cache: BTreeMap<String, TrainData> = BTreeMap::new();
    for t in &all {
        if !cache.contains_key(&t.set) {
            let data = TrainData::from_file(&known[&t.set].source, 0)
                .with_context(|| format!("cannot prepare {}", t.set))?;
            cache.insert(t.set.clone(), data);
        }
        trial_setup(&plan, t, &cache[&t.set], args.threads)?;
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    atomic_write(
        &args.out.join("plan.toml"),
        toml::to_string(&plan)?.as_bytes(),
    )?;
    let done = read_records(&args.out)?;
    if !args.report {
        let mine: Vec<&TrialSpec> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| i % shards == shard)
            .map(|(_, t)| t)
            .collect();
        eprintln!(
            "{}: {} trials, {} in shard {shard}/{shards}, {} done",
            plan.title,
            all.len(),
            mine.len(),
            mine.iter()
                .filter(|t| done.contains_key(&t.key(&plan)))
                .count()
        );
        let log = args.out.join(format!("trials.{shard}.jsonl"));
        for (k, t) in mine.iter().enumerate() {
            let key = t.key(&plan);
            let label = format!(
                "[{}/{}] {} seed {}: {}",
                k + 1,
                mine.len(),
                t.set,
                t.seed,
                if t.value.is_empty() { "base" } else { &t.value }
            );
            if done.contains_key(&key) {
                eprintln!("{label}: done");
                continue;
            }
            if args.dry_run {
                eprintln!("{label}: to run ({})", t.overrides(&plan));
                continue;
            }
            let data = cache[&t.set].clone();
            let rec = run_one(&plan, t, &key, data, args.threads, &label)?;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .with_context(|| format!("cannot open {}", log.display()))?;
            writeln!(f, "{}", serde_json::to_string(&rec)?)
                .with_context(|| format!("cannot write {}", log.display()))?;
        }
    }
    if args.dry_run {
        return Ok(());
    }
    let done = read_records(&args.out)?;
    let report = report(&plan, &done);
    atomic_write(&args.out.join("table.md"), report.table.as_bytes())?;
    let results: Vec<&Record> = all.iter().filter_map(|t| done.get(&t.key(&plan))).collect();
    atomic_write(
        &args.out.join("results.json"),
        format!("{}\n", serde_json::to_string_pretty(&results)?).as_bytes(),
    )?;
    for (file, title, x_label, series) in &report.plots {
        plot::line_chart(
            &args.out.join(file),
            title,
            x_label,
            "validation NLL minus the base's (nats, best check)",
            series,
            false,
        )?;
    }
    print!("{}", report.table);
    eprintln!(
        "wrote {} ({} of {} trials done)",
        args.out.join("table.md").display(),
        results.len(),
        all.len()
    );
    Ok(())
}

/// The configuration of a trial (seed, threads, overrides on the tabular preset for the
/// set's dimension) and its budget (baselines); errors name the trial.
fn trial_setup(
    plan: &Plan,
    t: &TrialSpec,
    data: &TrainData,
    threads: usize,
) -> Result<(RunConfig, Option<Budget>)> {
    let label = format!("trial '{}' on {}", t.overrides(plan), t.set);
    let overrides = parse_overrides(&t.overrides(plan)).with_context(|| label.clone())?;
    let mut base = tabular_base(&t.set, data.dim);
    base.train.seed = t.seed;
    base.train.threads = threads;
    let cfg = trial_config(&base, data.dim, &overrides).with_context(|| label.clone())?;
    let budget = budget_of(plan, &t.set);
    if cfg.model.kind != ModelKind::DiffFlow && budget.is_none() {
        bail!(
            "{label}: a {} trial needs budget_cpu for {} or budget_iters in the plan",
            cfg.model.kind.name(),
            t.set
        );
    }
    Ok((cfg, budget))
}

/// Trains and measures one trial.
fn run_one(
    plan: &Plan,
    t: &TrialSpec,
    key: &str,
    data: TrainData,
    threads: usize,
    label: &str,
) -> Result<Record> {
    let (cfg, budget) = trial_setup(plan, t, &data, threads)?;
    let kind = cfg.model.kind;
    eprintln!(
        "{label}: {}, batch {}, N {}, width {}, depth {}",
        match (kind, budget) {
            (ModelKind::DiffFlow, _) | (_, None) => format!("{} iterations", cfg.train.iters),
            (_, Some(b)) => format!("budget {b}"),
        },
        cfg.train.batch,
        cfg.train.steps,
        cfg.model.net.width,
        cfg.model.net.depth
    );
    let opts = TrialOptions {
        checks: plan.checks,
        val_points: plan.val_points,
        elbo_trajectories: plan.elbo_trajectories,
        budget,
        threads,
    };
    let outcome = run_trial(cfg, data, &opts, &mut |c: &Check| {
        eprintln!(
            "    iteration {:>6} ({:>6.0} CPU s): validation NLL {:.3} ± {:.3}{}",
            c.iters,
            c.cpu_seconds,
            c.nll,
            c.nll_stderr,
            if c.elbo.is_finite() {
                format!(", negative ELBO {:.3}", c.elbo)
            } else {
                String::new()
            }
        )
    })?;
    if let Some(e) = &outcome.error {
        eprintln!("    stopped: {e}");
    }
    Ok(Record {
        key: key.to_string(),
        set: t.set.clone(),
        seed: t.seed,
        overrides: t.overrides(plan),
        model: kind.key().to_string(),
        outcome,
        load_average: load_average(),
    })
}

/// A plot: file, title, x label, series.
type PlotSpec = (String, String, String, Vec<(String, Vec<(f64, f64)>)>);

struct Report {
    table: String,
    plots: Vec<PlotSpec>,
}

/// The trials of `value` on `set` over `seeds` that are done.
fn cells<'a>(
    plan: &Plan,
    done: &'a BTreeMap<String, Record>,
    set: &str,
    seeds: &[u64],
    value: &str,
) -> Vec<&'a Record> {
    seeds
        .iter()
        .filter_map(|&seed| {
            let t = TrialSpec {
                set: set.into(),
                seed,
                value: value.into(),
            };
            done.get(&t.key(plan))
        })
        .collect()
}

fn best_nll(r: &Record) -> f64 {
    r.outcome.best().map_or(f64::NAN, |c| c.nll)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Mean and standard error over seeds (NaN s.e. for one seed).
fn mean_se(v: &[f64]) -> (f64, f64) {
    let m = mean(v);
    if v.len() < 2 {
        return (m, f64::NAN);
    }
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
    (m, (var / v.len() as f64).sqrt())
}

fn fmt_pm(m: f64, se: f64) -> String {
    if se.is_finite() {
        format!("{m:.2} ± {se:.2}")
    } else if m.is_finite() {
        format!("{m:.2}")
    } else {
        "-".into()
    }
}

/// One table row for the trials `recs` of a value, against the base trials `base`.
fn row(label: &str, recs: &[&Record], base: &[&Record]) -> String {
    if recs.is_empty() {
        return format!("| {label} | not run yet | | | | | | |\n");
    }
    let best: Vec<f64> = recs.iter().map(|r| best_nll(r)).collect();
    let (m, se) = mean_se(&best);
    // The best check's standard error over the points (first seed).
    let point_se = recs[0].outcome.best().map_or(f64::NAN, |c| c.nll_stderr);
    let diffs: Vec<f64> = recs
        .iter()
        .filter_map(|r| {
            let b = base.iter().find(|b| b.seed == r.seed)?;
            Some(best_nll(r) - best_nll(b))
        })
        .collect();
    let (dm, dse) = if diffs.is_empty() {
        (f64::NAN, f64::NAN)
    } else {
        mean_se(&diffs)
    };
    let first = recs[0];
    let o = &first.outcome;
    let best_at = o.best().map_or("-".into(), |c| c.iters.to_string());
    let last = o.checks.last();
    let gap = last
        .filter(|c| c.elbo.is_finite())
        .map_or("-".into(), |c| format!("{:.2}", c.elbo - c.nll));
    let cpu: Vec<f64> = recs.iter().map(|r| r.outcome.cpu_seconds).collect();
    let note = o
        .error
        .as_deref()
        .map_or(String::new(), |e| format!(" ({e})"));
    format!(
        "| {label} | {} (± {:.2} over points){} | {} | {best_at} of {} | {} | {gap} | {:.0} | {}{note} |\n",
        fmt_pm(m, se),
        point_se,
        if recs.len() > 1 {
            format!(", {} seeds", recs.len())
        } else {
            String::new()
        },
        fmt_pm(dm, dse),
        o.iters,
        last.map_or("-".into(), |c| format!("{:.2}", c.nll)),
        mean(&cpu),
        o.params,
    )
}

fn report(plan: &Plan, done: &BTreeMap<String, Record>) -> Report {
    use std::fmt::Write as _;
    let mut t = String::new();
    let _ = writeln!(t, "# {}\n", plan.title);
    let _ = writeln!(
        t,
        "Every trial: the tabular preset (width `tabular_width(d)`) with the base overrides `{}`, \
         then the factor's; trained on the set's training split and measured on its \
         VALIDATION split ({} points; the test split is never read): probability-flow NLL \
         (Dormand-Prince 1e-5, exact divergence) of the EMA weights, nats per point in data \
         units, at {} checks; \"best\" = the check with the lowest validation NLL. Training \
         seeds {:?} (data split of seed 0).\n",
        plan.base,
        if plan.val_points == 0 {
            "all".to_string()
        } else {
            format!("the first {}", plan.val_points)
        },
        plan.checks,
        plan.seeds
    );
    let header = "| value | best validation NLL | minus the base's | best at iteration | last check's NLL | last ELBO minus NLL | training CPU s | parameters |\n|---|---|---|---|---|---|---|---|\n";
    let mut plots = Vec::new();
    for f in &plan.factors {
        let _ = writeln!(t, "## {}\n", f.name);
        let mut series = Vec::new();
        for set in f.sets(plan) {
            let seeds = f.seeds(plan);
            let base = cells(plan, done, set, seeds, "");
            let _ = write!(t, "{set}:\n\n{header}");
            let base_label = format!(
                "base{}",
                f.base_label
                    .as_ref()
                    .map_or(String::new(), |l| format!(" ({l})"))
            );
            t.push_str(&row(&base_label, &base, &base));
            let base_mean = mean(&base.iter().map(|r| best_nll(r)).collect::<Vec<_>>());
            let mut pts = vec![(f.x_of(None), 0.0)];
            for (i, v) in f.values.iter().enumerate() {
                let recs = cells(plan, done, set, seeds, v.trim());
                t.push_str(&row(&format!("`{}`", v.trim()), &recs, &base));
                if !recs.is_empty() {
                    let m = mean(&recs.iter().map(|r| best_nll(r)).collect::<Vec<_>>());
                    pts.push((f.x_of(Some(i)), m - base_mean));
                }
            }
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            series.push((set.clone(), pts));
            t.push('\n');
        }
        let slug: String = f
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let labels: Vec<String> = std::iter::once(format!(
            "{} = {}",
            f.x_of(None),
            f.base_label.as_deref().unwrap_or("base")
        ))
        .chain(
            f.values
                .iter()
                .enumerate()
                .map(|(i, v)| format!("{} = {}", f.x_of(Some(i)), v.trim())),
        )
        .collect();
        let x_label = if f.x.is_empty() {
            labels.join("; ")
        } else {
            f.name.clone()
        };
        plots.push((
            format!("plot-{slug}.png"),
            format!("{}: {}", plan.title, f.name),
            x_label,
            series,
        ));
    }
    // Every trial of the plan, best first, per set.
    let _ = writeln!(t, "## All trials, best first\n");
    for set in &plan.sets {
        let mut recs: Vec<&Record> = done
            .values()
            .filter(|r| &r.set == set && trials(plan).iter().any(|s| s.key(plan) == r.key))
            .collect();
        recs.sort_by(|a, b| best_nll(a).total_cmp(&best_nll(b)));
        let _ = writeln!(
            t,
            "{set}:\n\n| overrides | seed | best validation NLL | best at | CPU s |\n|---|---|---|---|---|"
        );
        for r in recs {
            let _ = writeln!(
                t,
                "| `{}` | {} | {:.3} | {} | {:.0} |",
                r.overrides,
                r.seed,
                best_nll(r),
                r.outcome.best().map_or(0, |c| c.iters),
                r.outcome.cpu_seconds
            );
        }
        t.push('\n');
    }
    Report { table: t, plots }
}

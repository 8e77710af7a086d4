//! `diffflow`: train, sample and evaluate Diffusion Normalizing Flow models.

mod bench;
mod bench_tabular;
mod compare;
mod compare_images;
mod eval;
mod images;
mod plot;
mod progress;
mod run_args;
mod sample;
mod train;
mod tune;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Diffusion Normalizing Flow (Zhang & Chen, NeurIPS 2021): train, sample, evaluate.
#[derive(Parser)]
#[command(name = "diffflow", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a DiffFlow model on a built-in 2-D data set or a data file (--data).
    Train(Box<train::TrainArgs>),
    /// Draw samples from a trained model (SDE(lambda) or probability-flow ODE).
    Sample(sample::SampleArgs),
    /// Likelihood of data under a trained model: probability-flow NLL and negative ELBO.
    Eval(eval::EvalArgs),
    /// The tabular table: DiffFlow, baselines and a Gaussian on MINIBOONE, digits and four
    /// small scikit-learn sets.
    BenchTabular(bench_tabular::BenchTabularArgs),
    /// The tuning study of the tabular preset: trials from a plan, measured on validation data.
    Tune(tune::TuneArgs),
    /// DiffFlow against DDPM and a CNF on the 2-D sets (Figures 4-5, NLL and sample quality).
    Compare(compare::CompareArgs),
    /// DiffFlow against DDPM (L_s) on images: U-Nets at matched parameters and budget,
    /// sample grids, bits/dim, FID (LeNet features) and FID against the sampling N.
    CompareImages(compare_images::CompareImagesArgs),
    /// Measure training and sampling speed, GEMM throughput and peak memory.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => train::run(*args),
        Command::Sample(args) => sample::run(args),
        Command::Eval(args) => eval::run(args),
        Command::BenchTabular(args) => bench_tabular::run(args),
        Command::Tune(args) => tune::run(args),
        Command::Compare(args) => compare::run(args),
        Command::CompareImages(args) => compare_images::run(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The message (with how to resume) is already printed.
        Err(e) if matches!(e.downcast_ref(), Some(diffflow::Error::Interrupted { .. })) => {
            ExitCode::from(train::EXIT_INTERRUPTED)
        }
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !parts.last().is_some_and(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ").replace('\n', " ")
}

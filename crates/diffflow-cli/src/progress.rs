//! Progress reporting for training: an indicatif bar on a terminal, periodic lines otherwise.

use diffflow::model::Phase;
use diffflow::train::{LogRecord, Observer, Restart, StepStats};
use diffflow::validation::ValRecord;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Instant;

/// ` N k` for a loss on a time grid of k steps; nothing for the ε loss (N = 0).
fn steps_label(n: usize) -> String {
    if n > 0 {
        format!(" N {n} ")
    } else {
        String::new()
    }
}

/// Shows iteration, loss, N, it/s and ETA.
pub struct TrainProgress {
    bar: ProgressBar,
    tty: bool,
    started: Instant,
    first: usize,
    total: usize,
    smoothed: Option<f64>,
    next_line: usize,
}

impl TrainProgress {
    pub fn new() -> Self {
        let tty = std::io::stderr().is_terminal();
        let bar = if tty {
            ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30.cyan/blue} {pos}/{len} {msg} {per_sec} ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        TrainProgress {
            bar,
            tty,
            started: Instant::now(),
            first: 0,
            total: 0,
            smoothed: None,
            next_line: 0,
        }
    }

    /// Seconds since training started.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Iterations per second so far.
    pub fn rate(&self, step: usize) -> f64 {
        (step - self.first) as f64 / self.elapsed().max(1e-9)
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Observer for TrainProgress {
    fn start(&mut self, first: usize, total: usize) {
        self.first = first;
        self.total = total;
        self.started = Instant::now();
        self.bar.set_length(total as u64);
        self.bar.set_position(first as u64);
        self.next_line = first + (total / 10).max(1);
    }

    fn step(&mut self, s: &StepStats) {
        let l = s.loss.loss;
        let sm = match self.smoothed {
            Some(v) => 0.95 * v + 0.05 * l,
            None => l,
        };
        self.smoothed = Some(sm);
        self.bar.set_position(s.step as u64);
        self.bar
            .set_message(format!("loss {sm:.4}{}", steps_label(s.n)));
    }

    fn restart(&mut self, r: &Restart) {
        self.bar.suspend(|| {
            eprintln!(
                "non-finite {} at iteration {}: back to the checkpoint of iteration {} with \
                 learning rate x {:.3e} (restart {})",
                r.what, r.failed_step, r.from_step, r.lr_scale, r.restarts
            )
        });
        self.bar.set_position(r.from_step as u64);
    }

    fn validation(&mut self, r: &ValRecord) {
        let line = format!(
            "step {:>6}  validation {} {:.4} ± {:.4} nats ({:.4} standardised, {} points){}",
            r.step,
            r.val_metric,
            r.val,
            r.val_stderr,
            r.val_standardised,
            r.val_points,
            if r.val_best {
                "  best so far".to_string()
            } else {
                format!("  (best at step {})", r.best_step)
            }
        );
        self.bar.suspend(|| eprintln!("{line}"));
    }

    fn log(&mut self, r: &LogRecord) {
        if !self.tty && (r.step >= self.next_line || r.step == self.total) {
            self.next_line = r.step + (self.total / 10).max(1);
            eprintln!(
                "step {:>6}/{}  loss {:.4} {} lr {:.2e}  {:.2} it/s",
                r.step,
                self.total,
                r.loss,
                steps_label(r.n),
                r.lr,
                self.rate(r.step)
            );
        }
    }
}

/// A bar of `len` points for one evaluation phase (hidden off a terminal or when `show` is
/// false).
fn points_bar(len: usize, msg: &str, show: bool) -> ProgressBar {
    let pb = if show && std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:5} {bar:30.cyan/blue} {pos}/{len} points, {elapsed} (ETA {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

/// Progress of an evaluation of `n` points: one bar for the NLL, then one for the ELBO.
pub struct EvalBars {
    nll: ProgressBar,
    elbo: ProgressBar,
}

impl EvalBars {
    /// Bars shown on a terminal.
    pub fn new(n: usize) -> Self {
        Self::with(n, true)
    }

    /// Bars shown on a terminal when `show`.
    pub fn with(n: usize, show: bool) -> Self {
        EvalBars {
            nll: points_bar(n, "NLL", show),
            elbo: points_bar(n, "ELBO", show),
        }
    }

    /// `k` more points of `phase` done (the NLL bar is cleared when the ELBO starts).
    pub fn inc(&self, phase: Phase, k: usize) {
        match phase {
            Phase::Nll => self.nll.inc(k as u64),
            Phase::Elbo => {
                if !self.nll.is_finished() {
                    self.nll.finish_and_clear();
                }
                self.elbo.inc(k as u64)
            }
        }
    }

    /// Clears both bars.
    pub fn finish(&self) {
        self.nll.finish_and_clear();
        self.elbo.finish_and_clear();
    }
}

//! Progress reporting for training: an indicatif bar on a terminal, periodic lines otherwise.

use diffflow::train::{LogRecord, Observer, Restart, StepStats};
use diffflow::validation::ValRecord;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Instant;

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
        self.bar.set_message(format!("loss {sm:.4} N {}", s.n));
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
                "step {:>6}/{}  loss {:.4}  N {}  lr {:.2e}  {:.2} it/s",
                r.step,
                self.total,
                r.loss,
                r.n,
                r.lr,
                self.rate(r.step)
            );
        }
    }
}

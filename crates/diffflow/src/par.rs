//! The library's one worker pool: scoped threads taking work items from a shared counter,
//! results in a fixed order, and a worker's panic reported as [`Error::WorkerPanic`].
//!
//! Every parallel loop of the library (gradient pieces and tiles, sampling tiles, likelihood
//! solves, the baselines' pieces) runs on [`run_workers`] or [`par_map`] on top of it, so that
//! a slow core delays only its own items and results never depend on the number of threads.

use crate::{Error, Result};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Worker threads used when none are asked for: the machine's available parallelism.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The text of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// Runs `worker` on `threads` threads at once (the calling thread is one of them) and waits
/// for all; `worker` is expected to take its items from a shared counter. A panic in any
/// worker is returned as [`Error::WorkerPanic`] with its message (the other workers finish).
pub(crate) fn run_workers(threads: usize, worker: &(dyn Fn() + Sync)) -> Result<()> {
    let threads = threads.max(1);
    let caught = |r: std::thread::Result<()>| -> Result<()> {
        r.map_err(|p| Error::WorkerPanic(panic_message(p.as_ref())))
    };
    if threads == 1 {
        return caught(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
            worker,
        )));
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = (1..threads).map(|_| scope.spawn(worker)).collect();
        let mine = caught(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
            worker,
        )));
        let mut first = mine;
        for h in handles {
            let r = caught(h.join());
            if first.is_ok() {
                first = r;
            }
        }
        first
    })
}

/// Runs `work(c)` for `c in 0..n` on up to `threads` threads taking indices from a shared
/// counter; results in index order, so sums over them do not depend on `threads`. The first
/// error stops the queue and is returned; a panic is [`Error::WorkerPanic`].
pub(crate) fn par_map<O: Send>(
    n: usize,
    threads: usize,
    work: &(dyn Fn(usize) -> Result<O> + Sync),
) -> Result<Vec<O>> {
    let threads = threads.clamp(1, n.max(1));
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let slots: Mutex<Vec<Option<Result<O>>>> = Mutex::new((0..n).map(|_| None).collect());
    run_workers(threads, &|| loop {
        if failed.load(Ordering::Relaxed) {
            break;
        }
        let c = next.fetch_add(1, Ordering::Relaxed);
        if c >= n {
            break;
        }
        let r = work(c);
        if r.is_err() {
            failed.store(true, Ordering::Relaxed);
        }
        if let Ok(mut s) = slots.lock() {
            s[c] = Some(r);
        }
    })?;
    let slots = slots
        .into_inner()
        .map_err(|_| Error::WorkerPanic("a worker panicked holding the results".into()))?;
    let mut out = Vec::with_capacity(n);
    let mut skipped = false;
    for s in slots {
        match s {
            Some(r) => out.push(r?),
            None => skipped = true,
        }
    }
    if skipped {
        // Only reached when an item was skipped after an error that the loop returned.
        return Err(Error::config("work stopped by an earlier error"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_in_order_for_any_thread_count() {
        let want: Vec<usize> = (0..37).map(|i| i * i).collect();
        for threads in [1, 2, 5, 64] {
            let got = par_map(37, threads, &|i| Ok(i * i)).unwrap();
            assert_eq!(got, want, "{threads} threads");
        }
        assert!(par_map(0, 3, &|i| Ok(i)).unwrap().is_empty());
    }

    #[test]
    fn the_first_error_is_returned() {
        for threads in [1, 3] {
            let r = par_map(20, threads, &|i| {
                if i == 7 {
                    Err(Error::data("item 7 is bad"))
                } else {
                    Ok(i)
                }
            });
            assert!(r.unwrap_err().to_string().contains("item 7 is bad"));
        }
    }

    #[test]
    fn a_worker_panic_is_an_error_with_its_message() {
        for threads in [1, 2] {
            let r = par_map(8, threads, &|i| {
                if i == 3 {
                    panic!("boom at item {i}");
                }
                Ok(i)
            });
            let e = r.unwrap_err();
            assert!(matches!(e, Error::WorkerPanic(_)), "{e}");
            assert!(e.to_string().contains("boom at item 3"), "{e}");
        }
    }
}

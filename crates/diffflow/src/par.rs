//! Data-parallel work on scoped threads with results in a fixed order.

use crate::{Error, Result};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Runs `work(c)` for `c in 0..n` on up to `threads` scoped threads taking indices from a
/// shared queue (a slow thread delays only its own pieces); results in index order, so sums
/// over them do not depend on `threads`. The first error stops the queue.
pub(crate) fn par_map<O: Send>(
    n: usize,
    threads: usize,
    work: &(dyn Fn(usize) -> Result<O> + Sync),
) -> Result<Vec<O>> {
    let threads = threads.clamp(1, n.max(1));
    if threads == 1 {
        return (0..n).map(work).collect();
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let slots: Mutex<Vec<Option<Result<O>>>> = Mutex::new((0..n).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
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
                slots
                    .lock()
                    .expect("no worker panics while holding the lock")[c] = Some(r);
            });
        }
    });
    let slots = slots
        .into_inner()
        .map_err(|_| Error::config("worker panicked"))?;
    let mut out = Vec::with_capacity(n);
    for s in slots {
        match s {
            Some(r) => out.push(r?),
            // Skipped after an earlier error, which the loop has returned by now.
            None => return Err(Error::config("evaluation stopped by an earlier error")),
        }
    }
    Ok(out)
}

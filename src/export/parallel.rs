//! Minimal data parallelism on scoped threads (no extra dependency): the host-side symmetric
//! work (decrypt + SHA-256 per block) is spread over the machine's cores.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Number of worker threads to use by default: the machine's parallelism.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// `items.iter().map(f)` on up to `threads` threads, results in input order.
pub fn map<T: Sync, R: Send>(items: &[T], threads: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = threads.max(1).min(items.len());
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items.len() {
                    break;
                }
                let r = f(&items[i]);
                results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .map(|r| r.expect("every index processed"))
        .collect()
}

/// [`map`] where a panic while processing one item (a bug, or input no check foresaw) becomes
/// that item's `Err(message)` instead of taking the worker thread and the command down: callers
/// report it as a per-entry problem and go on with the rest.
pub fn try_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<Result<R, String>> {
    map(items, threads, |item| catch_item_panic(|| f(item)))
}

/// Runs the work of one item; a panic becomes `Err` with the per-entry message callers report.
pub(crate) fn catch_item_panic<R>(work: impl FnOnce() -> R) -> Result<R, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).map_err(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        format!("internal error while checking this item (please report): {what}")
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_order() {
        let v: Vec<u32> = (0..100).collect();
        assert_eq!(
            super::map(&v, 4, |x| x * 2),
            (0..100).map(|x| x * 2).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_panicking_item_is_an_error_and_the_others_complete() {
        let v: Vec<u32> = (0..50).collect();
        let out = super::try_map(&v, 4, |x| {
            assert!(*x != 7, "item seven");
            x + 1
        });
        assert_eq!(out.iter().filter(|r| r.is_ok()).count(), 49);
        assert!(out[7].as_ref().unwrap_err().contains("item seven"));
        assert_eq!(out[8], Ok(9));
    }
}

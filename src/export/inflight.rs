//! Single flight: concurrent requests for the same key wait for the one computation in flight
//! instead of repeating it. The FUSE mount issues several reads inside one 512 KiB block at once
//! (kernel read-ahead, several request threads) and its read-ahead asks for blocks the reader is
//! about to need: without this, each of them decrypted and hashed the same block (the sequential
//! read measured 1.6–2.5× the baseline's CPU per byte, docs/performance.md).

use std::collections::HashMap;
use std::hash::Hash;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

struct Slot<V> {
    value: Mutex<Option<V>>,
    ready: Condvar,
}

/// See the module documentation.
pub(super) struct SingleFlight<K, V> {
    pending: Mutex<HashMap<K, Arc<Slot<V>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<K: Eq + Hash + Clone, V: Clone> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight {
            pending: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> SingleFlight<K, V> {
    /// Runs `compute` for `key`, or, when a computation for `key` is already running, waits for
    /// it and returns a clone of its result. If `compute` panics, the waiters get `on_panic()`
    /// and the panic continues in the caller. No lock is held while `compute` runs.
    pub(super) fn run(
        &self,
        key: K,
        compute: impl FnOnce() -> V,
        on_panic: impl FnOnce() -> V,
    ) -> V {
        let (slot, leader) = {
            let mut pending = lock(&self.pending);
            match pending.get(&key) {
                Some(s) => (s.clone(), false),
                None => {
                    let s = Arc::new(Slot {
                        value: Mutex::new(None),
                        ready: Condvar::new(),
                    });
                    pending.insert(key.clone(), s.clone());
                    (s, true)
                }
            }
        };
        if !leader {
            let mut value = lock(&slot.value);
            while value.is_none() {
                value = slot.ready.wait(value).unwrap_or_else(|p| p.into_inner());
            }
            return value.clone().expect("set before notify");
        }
        let result = catch_unwind(AssertUnwindSafe(compute));
        let shared = match &result {
            Ok(v) => v.clone(),
            Err(_) => on_panic(),
        };
        *lock(&slot.value) = Some(shared);
        slot.ready.notify_all();
        lock(&self.pending).remove(&key);
        match result {
            Ok(v) => v,
            Err(p) => resume_unwind(p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SingleFlight;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Barrier;
    use std::time::Duration;

    #[test]
    fn concurrent_requests_share_one_computation() {
        let flight = SingleFlight::<u32, u64>::default();
        let runs = AtomicUsize::new(0);
        let barrier = Barrier::new(8);
        let results: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        flight.run(
                            7,
                            || {
                                runs.fetch_add(1, Ordering::SeqCst);
                                std::thread::sleep(Duration::from_millis(200));
                                42
                            },
                            || 0,
                        )
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results, vec![42; 8]);
        // All 8 arrive within the 200 ms of the first computation: exactly one runs.
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Finished keys are forgotten: a later request computes again.
        assert_eq!(flight.run(7, || 43, || 0), 43);
    }

    #[test]
    fn a_panicking_computation_releases_the_waiters() {
        let flight = SingleFlight::<u32, Result<u8, String>>::default();
        let barrier = Barrier::new(2);
        std::thread::scope(|s| {
            let leader = s.spawn(|| {
                flight.run(
                    1,
                    || {
                        barrier.wait();
                        std::thread::sleep(Duration::from_millis(100));
                        panic!("decrypt failed")
                    },
                    || Err("aborted".into()),
                )
            });
            barrier.wait();
            let waiter = flight.run(1, || Ok(9), || Err("unused".into()));
            // Either it joined the failing flight, or it came after and computed its own.
            assert!(waiter == Err("aborted".into()) || waiter == Ok(9));
            assert!(leader.join().is_err());
        });
    }
}

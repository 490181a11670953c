//! A small fixed pool of worker threads for the CPU-heavy part of writing (block generation,
//! SHA-256, secretbox, manifest compression and signing). The SQLite connection stays on the
//! caller's thread; results come back on one channel, tagged by the caller.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

type Task<T> = Box<dyn FnOnce() -> T + Send + 'static>;

pub struct Pool<T: Send + 'static> {
    jobs: Option<Sender<Task<T>>>,
    results: Receiver<T>,
    workers: Vec<JoinHandle<()>>,
    in_flight: usize,
    max_in_flight: usize,
}

impl<T: Send + 'static> Pool<T> {
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        let (job_tx, job_rx) = channel::<Task<T>>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (res_tx, results) = channel::<T>();
        let workers = (0..threads)
            .map(|i| {
                let job_rx = Arc::clone(&job_rx);
                let res_tx = res_tx.clone();
                std::thread::Builder::new()
                    .name(format!("export-writer-{i}"))
                    .spawn(move || loop {
                        // The lock is held only while waiting for the next task.
                        let task = match job_rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok(task) = task else { return };
                        if res_tx.send(task()).is_err() {
                            return;
                        }
                    })
                    .expect("spawning a writer thread")
            })
            .collect();
        Pool {
            jobs: Some(job_tx),
            results,
            workers,
            in_flight: 0,
            // Enough to keep every worker busy while the caller inserts, small enough to bound
            // memory (a block task holds about two blocks).
            max_in_flight: threads * 4,
        }
    }

    /// Queues a task. If too many are in flight, first returns one finished result to `sink`.
    pub fn submit(&mut self, task: impl FnOnce() -> T + Send + 'static, sink: &mut impl FnMut(T)) {
        while self.in_flight >= self.max_in_flight {
            let r = self.recv();
            sink(r);
        }
        self.jobs
            .as_ref()
            .expect("pool is open")
            .send(Box::new(task))
            .expect("writer threads alive");
        self.in_flight += 1;
    }

    fn recv(&mut self) -> T {
        let r = self
            .results
            .recv()
            .expect("a writer thread panicked while holding a task");
        self.in_flight -= 1;
        r
    }

    /// Waits for every queued task, handing each result to `sink`.
    pub fn drain(&mut self, sink: &mut impl FnMut(T)) {
        while self.in_flight > 0 {
            let r = self.recv();
            sink(r);
        }
    }
}

impl<T: Send + 'static> Drop for Pool<T> {
    fn drop(&mut self) {
        self.jobs.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

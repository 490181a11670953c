//! Read-ahead: a few worker threads decrypt the next blocks of a file being read sequentially,
//! so that they are in the reader's block cache when the kernel asks for them.

use std::collections::HashSet;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use crate::export::Realm;
use crate::parsec::device::Id;
use crate::parsec::manifest::BlockAccess;

/// Requests beyond this many queued blocks are dropped (read-ahead is only a hint).
const QUEUE: usize = 64;

pub struct Prefetcher {
    tx: Mutex<Option<SyncSender<BlockAccess>>>,
    pending: Arc<Mutex<HashSet<Id>>>,
}

impl Prefetcher {
    pub fn new(realm: Arc<Realm>, threads: usize) -> Self {
        let (tx, rx) = sync_channel::<BlockAccess>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let pending: Arc<Mutex<HashSet<Id>>> = Arc::default();
        for i in 0..threads {
            let rx = rx.clone();
            let realm = realm.clone();
            let pending = pending.clone();
            let _ = std::thread::Builder::new()
                .name(format!("readahead-{i}"))
                .spawn(move || loop {
                    let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok(block) = next else { return };
                    // Errors are reported when the block is actually read.
                    let _ = realm.read_block(&block);
                    pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&block.id);
                });
        }
        Prefetcher {
            tx: Mutex::new(Some(tx)),
            pending,
        }
    }

    /// Queues blocks not already queued; never blocks the caller.
    pub fn request(&self, blocks: &[BlockAccess]) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = tx.as_ref() else { return };
        for b in blocks {
            if !self
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(b.id)
            {
                continue;
            }
            match tx.try_send(*b) {
                Ok(()) => {}
                Err(TrySendError::Full(b)) | Err(TrySendError::Disconnected(b)) => {
                    self.pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&b.id);
                    return;
                }
            }
        }
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        // Closing the channel stops the workers once the queue is drained.
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

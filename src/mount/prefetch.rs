//! Work ahead of the consumer, on background threads, into the reader's bounded caches:
//! [`Prefetcher`] decrypts the next blocks of a file being read sequentially, [`ListAhead`]
//! loads the children of the subfolders of a folder just listed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::export::{ChildEntry, Realm};
use crate::parsec::device::Id;
use crate::parsec::manifest::{BlockAccess, Manifest};
use crate::parsec::DateTime;

/// Requests beyond this many queued blocks are dropped (read-ahead is only a hint).
const QUEUE: usize = 64;

pub(super) struct Prefetcher {
    tx: Mutex<Option<SyncSender<BlockAccess>>>,
    pending: Arc<Mutex<HashSet<Id>>>,
}

impl Prefetcher {
    pub(super) fn new(realm: Arc<Realm>, threads: usize) -> Self {
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
    pub(super) fn request(&self, blocks: &[BlockAccess]) {
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

/// Most folders whose children were loaded ahead and not listed yet.
const AHEAD_FOLDERS: usize = 256;
/// Most weight (see [`weight`]) of the children loaded ahead and not listed yet: a few MiB,
/// far below the reader's manifest cache (32 MiB), so what was loaded ahead is still cached
/// when it is listed (and a few huge manifests cannot pile up outside it).
const AHEAD_ENTRIES: usize = 32768;
/// Listings whose subfolders wait to be loaded ahead (deeper listings first).
const CURSORS: usize = 64;
/// A listing waits at most this long for a worker loading the same folder (then loads it
/// itself; the reader shares each manifest load between them).
const WAIT_FOR_WORKER: Duration = Duration::from_secs(2);
/// A consumer that lists nothing loaded ahead for this long is not walking the tree (a single
/// `ls`): the work ahead is abandoned until the next listing.
const STALL: Duration = Duration::from_secs(1);

/// What one loaded child holds, in units of about a hundred bytes: one for the entry, one per
/// block of a file or child of a folder.
fn weight(children: &[ChildEntry]) -> usize {
    children
        .iter()
        .map(|c| {
            1 + match c.version.manifest().map(|m| &**m) {
                Some(Manifest::File(f)) => f.blocks.len(),
                Some(Manifest::Folder(f)) => f.children.len(),
                None => 0,
            }
        })
        .sum()
}

/// The subfolders of one listed folder, to load ahead in listing order.
struct Cursor {
    t: DateTime,
    folders: VecDeque<Arc<Manifest>>,
}

/// The children of one folder, loaded ahead.
struct Ahead {
    /// Counted against [`AHEAD_ENTRIES`].
    count: usize,
    /// `None` while a worker loads them.
    children: Option<Vec<ChildEntry>>,
}

#[derive(Default)]
struct AheadState {
    /// Most recent listing last: a depth-first walker (`ls -R`, `find`) lists the subfolders of
    /// the folder it just listed next.
    cursors: Vec<Cursor>,
    /// Folders whose children are loaded (or being loaded) and not listed yet.
    loaded: HashMap<(Id, DateTime), Ahead>,
    loaded_entries: usize,
    closed: bool,
    /// Folders loaded ahead, and listings that found their folder loaded ahead (`-vv`).
    stats: ListAheadStats,
}

/// Counters of [`ListAhead`] since the mount.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct ListAheadStats {
    pub loaded: u64,
    pub hits: u64,
}

/// List-ahead: when a folder is listed, a few workers load (decrypt and verify, into the
/// reader's manifest cache) the children of its subfolders, in listing order, so that a
/// recursive listing finds them ready, and takes them as loaded. Bounded: at most
/// [`AHEAD_FOLDERS`] folders and [`AHEAD_ENTRIES`] of weight loaded ahead of the consumer; each
/// manifest is still checked once (the reader's cache and single-flight loads).
pub(super) struct ListAhead {
    state: Arc<(Mutex<AheadState>, Condvar)>,
}

impl ListAhead {
    pub(super) fn new(realm: Arc<Realm>, threads: usize) -> Self {
        let state: Arc<(Mutex<AheadState>, Condvar)> = Arc::default();
        for i in 0..threads {
            let state = state.clone();
            let realm = realm.clone();
            let _ = std::thread::Builder::new()
                .name(format!("listahead-{i}"))
                .spawn(move || list_ahead_worker(&realm, &state));
        }
        ListAhead { state }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AheadState> {
        self.state.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `folder` at `t` is being listed: its children as loaded ahead (what
    /// [`Realm::children_at`] returns), waiting for a worker that is loading them right now;
    /// `None` if they were not loaded ahead (or failed: the caller loads them and reports why).
    pub(super) fn listed(&self, folder: &Id, t: DateTime) -> Option<Vec<ChildEntry>> {
        let key = (*folder, t);
        let wake = &self.state.1;
        let mut s = self.lock();
        let deadline = Instant::now() + WAIT_FOR_WORKER;
        while s.loaded.get(&key).is_some_and(|a| a.children.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            s = wake
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        // A walker that overtook the workers: what it passed needs no loading any more.
        for cursor in s.cursors.iter_mut().rev().filter(|c| c.t == t) {
            let pos = cursor.folders.iter().position(|m| m.header().id == *folder);
            if let Some(pos) = pos {
                cursor.folders.drain(..=pos);
                break;
            }
        }
        let ahead = s.loaded.remove(&key)?;
        s.loaded_entries -= ahead.count;
        if ahead.children.is_some() {
            s.stats.hits += 1;
        }
        drop(s);
        wake.notify_all();
        ahead.children
    }

    /// A folder at `t` was listed with these readable subfolders: load their children ahead.
    pub(super) fn request(&self, t: DateTime, subfolders: Vec<Arc<Manifest>>) {
        if subfolders.is_empty() {
            return;
        }
        let mut s = self.lock();
        if s.cursors.len() >= CURSORS {
            s.cursors.remove(0);
        }
        s.cursors.push(Cursor {
            t,
            folders: subfolders.into(),
        });
        self.state.1.notify_all();
    }
}

impl ListAhead {
    pub(super) fn stats(&self) -> ListAheadStats {
        self.lock().stats
    }
}

impl Drop for ListAhead {
    fn drop(&mut self) {
        self.lock().closed = true;
        self.state.1.notify_all();
    }
}

fn list_ahead_worker(realm: &Realm, state: &(Mutex<AheadState>, Condvar)) {
    let (lock, wake) = state;
    let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if s.closed {
            return;
        }
        let full = s.loaded.len() >= AHEAD_FOLDERS || s.loaded_entries >= AHEAD_ENTRIES;
        if s.cursors.is_empty() || full {
            let (guard, timeout) = wake
                .wait_timeout(s, STALL)
                .unwrap_or_else(|p| p.into_inner());
            s = guard;
            if timeout.timed_out() && !s.loaded.is_empty() {
                // Nobody lists what was loaded: stop walking ahead (it stays cached).
                s.cursors.clear();
                s.loaded.clear();
                s.loaded_entries = 0;
            }
            continue;
        }
        let Some(cursor) = s.cursors.last_mut() else {
            continue;
        };
        let t = cursor.t;
        let Some(folder) = cursor.folders.pop_front() else {
            s.cursors.pop();
            continue;
        };
        let Manifest::Folder(f) = &*folder else {
            continue;
        };
        let key = (f.header.id, t);
        if s.loaded.contains_key(&key) {
            continue;
        }
        s.loaded.insert(
            key,
            Ahead {
                count: f.children.len(),
                children: None,
            },
        );
        s.loaded_entries += f.children.len();
        s.stats.loaded += 1;
        drop(s);
        // Errors (and panics) are not kept: the listing loads the folder again and reports them.
        let children = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            realm.children_at_with_threads(f, t, 1)
        }))
        .ok()
        .and_then(Result::ok);
        s = lock.lock().unwrap_or_else(|p| p.into_inner());
        match children {
            Some(c) => {
                let w = weight(&c);
                let state = &mut *s;
                if let Some(a) = state.loaded.get_mut(&key) {
                    let reserved = std::mem::replace(&mut a.count, w);
                    a.children = Some(c);
                    state.loaded_entries = state.loaded_entries - reserved + w;
                }
            }
            None => {
                if let Some(a) = s.loaded.remove(&key) {
                    s.loaded_entries -= a.count;
                }
            }
        }
        wake.notify_all();
    }
}

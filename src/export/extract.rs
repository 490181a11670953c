//! `extract`: writes the tree as it was at T, atomically, with both cores decrypting blocks, and
//! the data of the chain-of-custody record.

use std::fs::{self, File};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use sha2::{Digest, Sha256};

use super::reader::{split_path, EntryVersion, Realm, VersionContent};
use super::walk::{join, Walk, WalkStep, MAX_DEPTH};
use super::{parallel, ExportError};
use crate::crypto::symmetric::Plaintext;
use crate::parsec::manifest::{FileManifest, Manifest};
use crate::parsec::DateTime;

/// Options of [`extract`].
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// Time of interest.
    pub at: DateTime,
    /// Sub-tree to extract (`/` = everything).
    pub path: String,
    /// Worker threads decrypting blocks.
    pub threads: usize,
    /// Set (e.g. by a SIGINT handler) to stop: the temporary tree is removed, nothing is left.
    pub cancel: Option<&'static AtomicBool>,
    /// Mode of created files (before the umask): [`PRIVATE_FILE_MODE`] unless widened.
    pub file_mode: u32,
    /// Mode of created folders (before the umask): [`PRIVATE_DIR_MODE`] unless widened.
    pub dir_mode: u32,
}

/// Extracted files are readable by their owner only (evidence hygiene).
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// Extracted folders are open to their owner only.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

impl ExtractOptions {
    /// The tree (or sub-tree `path`) at `at`, on all cores, private modes, not cancellable.
    pub fn new(at: DateTime, path: &str) -> Self {
        ExtractOptions {
            at,
            path: path.to_string(),
            threads: parallel::default_threads(),
            cancel: None,
            file_mode: PRIVATE_FILE_MODE,
            dir_mode: PRIVATE_DIR_MODE,
        }
    }

    fn cancelled(&self) -> bool {
        self.cancel.is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

/// One file written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExtractedFile {
    /// Path inside the extracted tree, starting with `/`.
    pub path: String,
    pub size: u64,
    pub sha256: String,
    #[serde(serialize_with = "super::ser_id")]
    pub vlob_id: [u8; 16],
    pub version: u32,
    pub updated: DateTime,
    pub author: String,
}

/// An entry that exists at T but was not extracted.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UnreadableEntry {
    pub path: String,
    /// `file`, `folder`, or `unknown` (manifest unreadable).
    pub kind: &'static str,
    #[serde(serialize_with = "super::ser_id")]
    pub vlob_id: [u8; 16],
    pub version: u32,
    /// Key indexes this service lacks for this entry (empty for integrity failures).
    pub needed_key_indexes: Vec<u64>,
    pub reason: String,
}

/// The outcome of [`extract`].
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExtractReport {
    pub folders: Vec<String>,
    pub files: Vec<ExtractedFile>,
    pub unreadable: Vec<UnreadableEntry>,
    pub bytes: u64,
}

/// Progress callbacks (a progress bar on a TTY, nothing otherwise).
pub trait Progress: Sync {
    fn start(&self, _total_bytes: u64) {}
    fn advance(&self, _bytes: u64) {}
    /// The extraction found `bytes` more to write (the total grows as the walk goes).
    fn grow(&self, _bytes: u64) {}
    fn finish(&self) {}
}

/// No progress display.
pub struct NoProgress;
impl Progress for NoProgress {}

/// Receives the outcome of [`extract_to`] entry by entry, in walk order (depth first, children
/// in name order), as it completes: nothing of the tree is kept in memory by the extraction.
pub trait ExtractSink: Send {
    fn folder(&mut self, path: &str) -> Result<(), ExportError>;
    fn file(&mut self, file: ExtractedFile) -> Result<(), ExportError>;
    fn unreadable(&mut self, entry: UnreadableEntry) -> Result<(), ExportError>;
}

/// Counts of an extraction (what [`extract_to`] returns).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExtractCounts {
    pub folders: u64,
    pub files: u64,
    pub unreadable: u64,
    /// Bytes of the files extracted.
    pub bytes: u64,
}

impl ExtractSink for ExtractReport {
    fn folder(&mut self, path: &str) -> Result<(), ExportError> {
        self.folders.push(path.to_string());
        Ok(())
    }
    fn file(&mut self, file: ExtractedFile) -> Result<(), ExportError> {
        self.bytes += file.size;
        self.files.push(file);
        Ok(())
    }
    fn unreadable(&mut self, entry: UnreadableEntry) -> Result<(), ExportError> {
        self.unreadable.push(entry);
        Ok(())
    }
}

fn unreadable_entry(path: &str, v: &EntryVersion) -> UnreadableEntry {
    let (needed, reason) = match &v.content {
        VersionContent::Unreadable { key_index, .. } => {
            (vec![*key_index], v.problem().unwrap_or_default())
        }
        _ => (vec![], v.problem().unwrap_or_default()),
    };
    UnreadableEntry {
        path: path.to_string(),
        kind: "unknown",
        vlob_id: v.meta.vlob_id,
        version: v.meta.version,
        needed_key_indexes: needed,
        reason,
    }
}

/// Why a readable file cannot be extracted with this service's keys (its blocks need key
/// indexes this service lacks), or `None`.
fn missing_keys(realm: &Realm, path: &str, v: &EntryVersion) -> Option<UnreadableEntry> {
    let file = v.file().expect("file manifest");
    let mut missing: Vec<u64> = Vec::new();
    // The block's key index is in the `block` table; a missing key is detected up front so that
    // the report names the key index without trying to decrypt.
    for b in &file.blocks {
        if let Some(k) = realm.block_key_index(&b.id) {
            if !realm.has_key(k) && !missing.contains(&k) {
                missing.push(k);
            }
        }
    }
    if missing.is_empty() {
        return None;
    }
    missing.sort_unstable();
    let reason = if missing.iter().all(|k| realm.key_unusable(*k).is_none()) {
        format!(
            "file content uses realm key index(es) {missing:?}, which this sequester service \
             was never given"
        )
    } else {
        let why: Vec<String> = missing
            .iter()
            .map(|k| match realm.key_unusable(*k) {
                Some(why) => format!(
                    "{k}: its keys-bundle access for this sequester service is present but \
                     unusable (damaged or forged: {why})"
                ),
                None => format!("{k}: never given to this sequester service"),
            })
            .collect();
        format!(
            "file content uses realm key index(es) {missing:?}; {}",
            why.join("; ")
        )
    };
    Some(UnreadableEntry {
        path: path.to_string(),
        kind: "file",
        vlob_id: v.meta.vlob_id,
        version: v.meta.version,
        needed_key_indexes: missing,
        reason,
    })
}

/// Entries whose path under the temporary directory would exceed PATH_MAX are reported instead
/// of failing the whole extraction (deep trees of long names are legal in Parsec). Their
/// descendants have longer paths, so they are reported too.
fn overlong_path(
    path: &str,
    limit: usize,
    kind: &'static str,
    v: &EntryVersion,
) -> Option<UnreadableEntry> {
    (path.len() > limit).then(|| UnreadableEntry {
        reason: format!(
            "its path is {} bytes long: too long to write here (PATH_MAX {}); read it with \
             `export cat` or the mount",
            path.len(),
            libc::PATH_MAX
        ),
        path: path.to_string(),
        kind,
        vlob_id: v.meta.vlob_id,
        version: v.meta.version,
        needed_key_indexes: vec![],
    })
}

/// Feeds `n` zero bytes (holes, tail) to a hasher.
fn hash_zeros(hasher: &mut Sha256, mut n: u64) {
    const ZEROS: [u8; 8192] = [0; 8192];
    while n > 0 {
        let take = n.min(ZEROS.len() as u64) as usize;
        hasher.update(&ZEROS[..take]);
        n -= take as u64;
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> ExportError {
    ExportError::Io(format!("{what} {}: {e}", path.display()))
}

/// Temporary sibling of `dest` (same filesystem, so the final rename is atomic).
fn temp_sibling(dest: &Path) -> Result<PathBuf, ExportError> {
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .ok_or_else(|| ExportError::Io(format!("{}: not a valid destination", dest.display())))?;
    let temp = parent.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    Ok(temp)
}

/// Removes the temporary tree unless disarmed.
struct TempGuard(Option<PathBuf>);
impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_dir_all(p);
        }
    }
}

/// Writes the tree at `options.at` to `dest` (which must not exist): built in a temporary
/// sibling directory, renamed at the end. Files whose blocks fail verification are left out and
/// reported. The whole report is kept in memory (files and unreadable entries sorted by path):
/// for library callers and tests; the CLI streams with [`extract_to`].
pub fn extract(
    realm: &Realm,
    dest: &Path,
    options: &ExtractOptions,
    progress: &dyn Progress,
) -> Result<ExtractReport, ExportError> {
    let mut report = ExtractReport::default();
    extract_to(realm, dest, options, progress, &mut report)?;
    report.folders.sort();
    report.files.sort_by(|a, b| a.path.cmp(&b.path));
    report.unreadable.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(report)
}

/// One outcome, delivered to the sink in walk order.
enum Outcome {
    /// A folder created at `local`, `depth` levels below the start; `updated` is its mtime.
    Folder {
        path: String,
        depth: usize,
        local: PathBuf,
        updated: DateTime,
    },
    /// A file written, `depth` levels below the start.
    File(ExtractedFile, usize),
    Unreadable(UnreadableEntry),
}

/// Delivers outcomes to the sink in the order they were issued (workers finish out of order),
/// holding at most [`Ordered::window`] of them: the walk waits when it is that far ahead.
struct Ordered<'s> {
    sink: &'s mut (dyn ExtractSink + 's),
    issued: u64,
    next: u64,
    pending: std::collections::BTreeMap<u64, Outcome>,
    counts: ExtractCounts,
    error: Option<ExportError>,
    /// Folders delivered whose subtree may still be incomplete: (depth, local path, mtime).
    /// An outcome at depth d, delivered, means every earlier entry is finished (files written
    /// and closed, failed ones removed), so the folders at depth >= d are complete: their mtime
    /// is set then, once, and nothing in them changes afterwards. Bounded by the walk's depth.
    open: Vec<(usize, PathBuf, DateTime)>,
}

impl Ordered<'_> {
    /// Sets the mtime of the open folders at depth >= `depth` (all of them for 0).
    fn close_folders(&mut self, depth: usize) -> Result<(), ExportError> {
        while self.open.last().is_some_and(|(d, ..)| *d >= depth) {
            let (_, dir, t) = self.open.pop().expect("checked");
            set_mtime(&dir, t)?;
        }
        Ok(())
    }
}

struct Delivery<'s> {
    state: Mutex<Ordered<'s>>,
    room: Condvar,
    window: u64,
}

impl<'s> Delivery<'s> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ordered<'s>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A sequence number for the next outcome, once fewer than `window` are in flight.
    fn issue(&self, stop: &AtomicBool) -> u64 {
        let mut s = self.lock();
        while s.issued - s.next >= self.window && !stop.load(Ordering::Relaxed) {
            s = self
                .room
                .wait_timeout(s, std::time::Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        s.issued += 1;
        s.issued - 1
    }

    fn deliver(&self, seq: u64, outcome: Outcome, stop: &AtomicBool) {
        let mut s = self.lock();
        s.pending.insert(seq, outcome);
        loop {
            let next = s.next;
            let Some(o) = s.pending.remove(&next) else {
                break;
            };
            s.next += 1;
            if s.error.is_some() {
                continue;
            }
            let r = match o {
                Outcome::Folder {
                    path,
                    depth,
                    local,
                    updated,
                } => s.close_folders(depth).and_then(|_| {
                    s.open.push((depth, local, updated));
                    s.counts.folders += 1;
                    s.sink.folder(&path)
                }),
                Outcome::File(f, depth) => s.close_folders(depth).and_then(|_| {
                    s.counts.files += 1;
                    s.counts.bytes += f.size;
                    s.sink.file(f)
                }),
                Outcome::Unreadable(u) => {
                    s.counts.unreadable += 1;
                    s.sink.unreadable(u)
                }
            };
            if let Err(e) = r {
                s.error = Some(e);
                stop.store(true, Ordering::Relaxed);
            }
        }
        drop(s);
        self.room.notify_all();
    }
}

/// A file being written: its blocks go to the workers in runs of up to [`RUN_BLOCKS`].
struct FileTask {
    seq: u64,
    path: String,
    local: PathBuf,
    /// Folder levels below the start (for the folders' mtimes, see [`Ordered::open`]).
    depth: usize,
    version: EntryVersion,
    /// The one handle of the file, created by the worker of a one-run file (with the missing
    /// key check), by the walk for a file of several runs; written through, re-dated through
    /// (futimens), closed when the last run is done. At most the delivery window of files is in
    /// flight, so the open handles are bounded whatever the tree holds.
    handle: OnceLock<File>,
    runs_left: AtomicUsize,
    failed: Mutex<Option<String>>,
    /// Set instead of creating the file when its blocks need keys this service lacks.
    missing: Mutex<Option<UnreadableEntry>>,
    /// SHA-256 of the file's content, fed run after run in file order as runs complete
    /// (never by reading the file back); `None` once a run failed or was skipped.
    hash: Mutex<HashState>,
    /// Signalled when [`HashState::next_run`] moves.
    hash_turn: Condvar,
}

struct HashState {
    next_run: usize,
    /// Bytes of the file hashed so far (holes before a block are hashed as zeros).
    position: u64,
    hasher: Option<Sha256>,
}

struct Run {
    task: Arc<FileTask>,
    /// Index of this run in the file (runs are hashed in this order).
    index: usize,
    blocks: std::ops::Range<usize>,
}

/// Blocks per unit of parallel work: big files are split across workers, small files stay whole.
const RUN_BLOCKS: usize = 8;

/// Shared state of one extraction.
struct Pipeline<'a, 's> {
    realm: &'a Realm,
    options: &'a ExtractOptions,
    progress: &'a dyn Progress,
    delivery: Delivery<'s>,
    stop: AtomicBool,
    io_failure: Mutex<Option<ExportError>>,
}

impl Pipeline<'_, '_> {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.options.cancelled()
    }

    fn fail(&self, e: ExportError) {
        let mut f = self.io_failure.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(e);
        }
        self.stop.store(true, Ordering::Relaxed);
    }

    fn emit(&self, outcome: Outcome) {
        let seq = self.delivery.issue(&self.stop);
        self.delivery.deliver(seq, outcome, &self.stop);
    }

    /// Decrypts and writes one run of blocks, hashes it in turn; the last run of a file
    /// finishes it.
    fn run(&self, run: Run) {
        let task = &run.task;
        let mut blocks = Vec::new();
        if !self.stopped() {
            if let Err(message) = parallel::catch_item_panic(|| self.write_run(&run, &mut blocks)) {
                *task.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
            }
        }
        self.hash_in_turn(&run, blocks);
        if task.runs_left.fetch_sub(1, Ordering::AcqRel) == 1 && !self.stopped() {
            if let Err(e) = self.finish_file(task) {
                self.fail(e);
            }
        }
    }

    /// Feeds this run's blocks to the file's hasher once the runs before it have been (always
    /// taking its turn, even after a failure, so that the later runs never wait forever). Runs
    /// leave the queue in file order and the earlier ones never wait on later ones, so the wait
    /// is bounded by one run's work.
    fn hash_in_turn(&self, run: &Run, blocks: Vec<Plaintext>) {
        let task = &run.task;
        let file = task.version.file().expect("planned files are readable");
        let mut state = task.hash.lock().unwrap_or_else(|p| p.into_inner());
        while state.next_run != run.index {
            state = task
                .hash_turn
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
        let complete = blocks.len() == run.blocks.len()
            && task
                .failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_none();
        if !complete {
            state.hasher = None;
        }
        let HashState {
            position, hasher, ..
        } = &mut *state;
        if let Some(h) = hasher.as_mut() {
            for (b, data) in file.blocks[run.blocks.clone()].iter().zip(&blocks) {
                hash_zeros(h, b.offset - *position);
                h.update(&data[..]);
                *position = b.offset + b.size;
            }
            if run.blocks.end == file.blocks.len() {
                hash_zeros(h, file.size - *position);
                *position = file.size;
            }
        }
        state.next_run += 1;
        drop(state);
        task.hash_turn.notify_all();
    }

    /// Decrypts and writes the blocks of one run, keeping them in `blocks` for the hash. The
    /// first run of a one-run file checks its keys and creates the file.
    fn write_run(&self, run: &Run, blocks: &mut Vec<Plaintext>) {
        let task = &run.task;
        let file = task.version.file().expect("planned files are readable");
        let handle = match task.handle.get() {
            Some(h) => h,
            None => {
                if let Some(u) = missing_keys(self.realm, &task.path, &task.version) {
                    *task.failed.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(MISSING_KEYS.into());
                    *task.missing.lock().unwrap_or_else(|p| p.into_inner()) = Some(u);
                    return;
                }
                match self.create_file(&task.local, file) {
                    Ok(h) => task.handle.get_or_init(|| h),
                    Err(e) => return self.fail(e),
                }
            }
        };
        for b in &file.blocks[run.blocks.clone()] {
            if self.stopped()
                || task
                    .failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_some()
            {
                return;
            }
            match self.realm.decrypt_block(b) {
                Ok(data) => {
                    if let Err(e) = handle.write_all_at(&data, b.offset) {
                        return self.fail(io_err("cannot write", &task.local, e));
                    }
                    self.progress.advance(b.size);
                    blocks.push(data);
                }
                Err(e) => {
                    *task.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                    return;
                }
            }
        }
    }

    /// Creates a file (never over an existing one) with the extraction's mode, sized when its
    /// blocks do not reach its end (a tail of zeros).
    fn create_file(&self, path: &Path, file: &FileManifest) -> Result<File, ExportError> {
        let f = File::options()
            .write(true)
            .create_new(true)
            .mode(self.options.file_mode)
            .open(path)
            .map_err(|e| io_err("cannot create", path, e))?;
        let end = file.blocks.last().map_or(0, |b| b.offset + b.size);
        if end < file.size {
            f.set_len(file.size)
                .map_err(|e| io_err("cannot size", path, e))?;
        }
        Ok(f)
    }

    /// Sets the mtime of a written file through its handle, or removes a file whose blocks
    /// failed verification; then delivers its outcome.
    fn finish_file(&self, task: &FileTask) -> Result<(), ExportError> {
        let v = &task.version;
        let failed = task.failed.lock().unwrap_or_else(|p| p.into_inner()).take();
        let missing = task
            .missing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let outcome = if let Some(u) = missing {
            Outcome::Unreadable(u)
        } else if let Some(reason) = failed {
            if task.handle.get().is_some() {
                fs::remove_file(&task.local)
                    .map_err(|e| io_err("cannot remove", &task.local, e))?;
            }
            Outcome::Unreadable(UnreadableEntry {
                path: task.path.clone(),
                kind: "file",
                vlob_id: v.meta.vlob_id,
                version: v.meta.version,
                needed_key_indexes: vec![],
                reason: format!("integrity error: {reason}"),
            })
        } else {
            let file = v.file().expect("file");
            let state = task.hash.lock().unwrap_or_else(|p| p.into_inner());
            let sha256 = match (&state.hasher, task.handle.get()) {
                (Some(h), Some(handle)) => {
                    handle
                        .set_modified(to_system_time(file.header.updated))
                        .map_err(|e| io_err("cannot set mtime of", &task.local, e))?;
                    hex::encode(h.clone().finalize())
                }
                // Every run completed without failure, so both are set; a bug otherwise.
                _ => {
                    return Err(ExportError::Io(format!(
                        "{}: internal error: file finished without its hash",
                        task.path
                    )))
                }
            };
            drop(state);
            Outcome::File(
                ExtractedFile {
                    path: task.path.clone(),
                    size: file.size,
                    sha256,
                    vlob_id: v.meta.vlob_id,
                    version: v.meta.version,
                    updated: file.header.updated,
                    author: self.realm.describe_author(&v.meta.author),
                },
                task.depth,
            )
        };
        self.delivery.deliver(task.seq, outcome, &self.stop);
        Ok(())
    }
}

/// Placeholder failure of a file whose blocks need keys this service lacks (its
/// [`UnreadableEntry`] is delivered instead).
const MISSING_KEYS: &str = "missing realm keys";

fn set_mtime(path: &Path, t: DateTime) -> Result<(), ExportError> {
    let f = File::open(path).map_err(|e| io_err("cannot open", path, e))?;
    f.set_modified(to_system_time(t))
        .map_err(|e| io_err("cannot set mtime of", path, e))
}

/// [`extract`] that hands each outcome to `sink` as it completes, in walk order, and keeps
/// nothing per entry: memory is bounded by the walk (its stack of folders and the children of
/// the folders on it), the window of files in flight and the workers' blocks, whatever the
/// number of entries. Folders are created as the walk reaches them while a pool of
/// `options.threads` workers creates, decrypts, verifies, writes, hashes and re-dates the files
/// behind it; a folder's mtime is set when its subtree is done (in walk order, see
/// `Ordered::open`).
pub fn extract_to(
    realm: &Realm,
    dest: &Path,
    options: &ExtractOptions,
    progress: &dyn Progress,
    sink: &mut (dyn ExtractSink + '_),
) -> Result<ExtractCounts, ExportError> {
    if dest.symlink_metadata().is_ok() {
        return Err(ExportError::Io(format!(
            "{} already exists; choose a new destination",
            dest.display()
        )));
    }
    let start = realm.resolve(&options.path, options.at)?;
    let base_name = split_path(&options.path)?.last().map(|s| s.to_string());
    let start_folder = match (&start.content, start.manifest().map(|m| &**m)) {
        (VersionContent::Readable(_), Some(Manifest::File(_))) => None,
        (VersionContent::Readable(_), Some(Manifest::Folder(f))) => Some(f.header.updated),
        _ => {
            return Err(ExportError::Unreadable {
                path: if options.path.is_empty() {
                    "/".into()
                } else {
                    options.path.clone()
                },
                reason: start.problem().unwrap_or_default(),
            })
        }
    };
    let temp = temp_sibling(dest)?;
    let limit = (libc::PATH_MAX as usize).saturating_sub(temp.as_os_str().len() + 2);
    let _ = fs::remove_dir_all(&temp);
    // Evidence is private by default: created with the requested modes (umask still applies),
    // never chmod-ed after, so no window where it is readable by others.
    let mut dirs = fs::DirBuilder::new();
    dirs.recursive(true).mode(options.dir_mode);
    dirs.create(&temp)
        .map_err(|e| io_err("cannot create", &temp, e))?;
    let mut guard = TempGuard(Some(temp.clone()));
    let local = |p: &str| temp.join(p.trim_start_matches('/'));
    let threads = options.threads.max(1);
    let pipeline = Pipeline {
        realm,
        options,
        progress,
        delivery: Delivery {
            state: Mutex::new(Ordered {
                sink,
                issued: 0,
                next: 0,
                pending: Default::default(),
                counts: ExtractCounts::default(),
                error: None,
                open: Vec::new(),
            }),
            room: Condvar::new(),
            window: 64 * threads as u64 + 64,
        },
        stop: AtomicBool::new(false),
        io_failure: Mutex::new(None),
    };
    progress.start(0);
    let (runs, queue) = std::sync::mpsc::sync_channel::<Run>(4 * threads);
    let queue = Mutex::new(queue);
    let walked: Result<(), ExportError> = std::thread::scope(|scope| {
        for _ in 0..threads {
            let (pipeline, queue) = (&pipeline, &queue);
            scope.spawn(move || loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
                match next {
                    Ok(run) => pipeline.run(run),
                    Err(_) => break,
                }
            });
        }
        // Queues a file's runs. A one-run file (the common small file) is checked and created
        // by its worker: the walk only reads manifests. A file of several runs is created here,
        // once, and its handle shared by its runs.
        let walked = {
            let add_file = |path: String, v: EntryVersion, depth: usize| {
                if let Some(u) = overlong_path(&path, limit, "file", &v) {
                    pipeline.emit(Outcome::Unreadable(u));
                    return Ok(());
                }
                let file = v.file().expect("file manifest");
                let n = file.blocks.len();
                let handle = OnceLock::new();
                let p = local(&path);
                if n > RUN_BLOCKS {
                    if let Some(u) = missing_keys(realm, &path, &v) {
                        pipeline.emit(Outcome::Unreadable(u));
                        return Ok(());
                    }
                    let _ = handle.set(pipeline.create_file(&p, file)?);
                }
                progress.grow(file.size);
                let task = Arc::new(FileTask {
                    seq: pipeline.delivery.issue(&pipeline.stop),
                    path,
                    local: p,
                    depth,
                    runs_left: AtomicUsize::new(n.div_ceil(RUN_BLOCKS).max(1)),
                    version: v,
                    handle,
                    failed: Mutex::new(None),
                    missing: Mutex::new(None),
                    hash: Mutex::new(HashState {
                        next_run: 0,
                        position: 0,
                        hasher: Some(Sha256::new()),
                    }),
                    hash_turn: Condvar::new(),
                });
                let mut first = 0;
                for index in 0.. {
                    let end = (first + RUN_BLOCKS).min(n);
                    let run = Run {
                        task: task.clone(),
                        index,
                        blocks: first..end,
                    };
                    if runs.send(run).is_err() {
                        return Err(ExportError::Interrupted);
                    }
                    first = end;
                    if first >= n {
                        break;
                    }
                }
                Ok(())
            };
            let walk_all = || -> Result<(), ExportError> {
                let Some(updated) = start_folder else {
                    let name = base_name.clone().unwrap_or_default();
                    return add_file(join("/", &name), start.clone(), 1);
                };
                pipeline.emit(Outcome::Folder {
                    path: "/".into(),
                    depth: 0,
                    local: temp.clone(),
                    updated,
                });
                let mut walk = Walk::new(realm, options.at, "/", start.clone(), MAX_DEPTH);
                while let Some(step) = walk.next_step()? {
                    if pipeline.stopped() {
                        break;
                    }
                    let e = match step {
                        WalkStep::Problem(p) => {
                            pipeline.emit(Outcome::Unreadable(UnreadableEntry {
                                path: p.path,
                                kind: "unknown",
                                vlob_id: p.id,
                                version: p.version.unwrap_or(0),
                                needed_key_indexes: vec![],
                                reason: p.reason,
                            }));
                            continue;
                        }
                        WalkStep::Entry(e) => e,
                    };
                    match e.child.version.manifest().map(|m| &**m) {
                        Some(Manifest::Folder(f)) => {
                            if let Some(u) =
                                overlong_path(&e.path, limit, "folder", &e.child.version)
                            {
                                pipeline.emit(Outcome::Unreadable(u));
                                continue;
                            }
                            let p = local(&e.path);
                            dirs.create(&p)
                                .map_err(|err| io_err("cannot create", &p, err))?;
                            pipeline.emit(Outcome::Folder {
                                path: e.path,
                                depth: e.depth,
                                local: p,
                                updated: f.header.updated,
                            });
                        }
                        Some(Manifest::File(_)) => add_file(e.path, e.child.version, e.depth)?,
                        None => pipeline.emit(Outcome::Unreadable(unreadable_entry(
                            &e.path,
                            &e.child.version,
                        ))),
                    }
                }
                Ok(())
            };
            walk_all()
        };
        if walked.is_err() {
            pipeline.stop.store(true, Ordering::Relaxed);
        }
        drop(runs);
        walked
    });
    walked?;
    if let Some(e) = pipeline
        .io_failure
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
    {
        return Err(e);
    }
    if options.cancelled() {
        return Err(ExportError::Interrupted);
    }
    let mut state = pipeline
        .delivery
        .state
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(e) = state.error {
        return Err(e);
    }
    debug_assert!(state.pending.is_empty() && state.next == state.issued);
    // The folders still open (the last branch of the walk) are complete now.
    state.close_folders(0)?;
    fs::rename(&temp, dest).map_err(|e| io_err("cannot rename the finished tree to", dest, e))?;
    guard.0 = None;
    progress.finish();
    Ok(state.counts)
}

fn to_system_time(t: DateTime) -> std::time::SystemTime {
    let us = t.as_micros();
    if us >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::from_micros(us as u64)
    } else {
        std::time::UNIX_EPOCH - std::time::Duration::from_micros(us.unsigned_abs())
    }
}

/// The chain-of-custody record written next to the extracted tree (`DEST.custody.json`): the
/// fields that come before its per-entry lists. [`CustodyRecordWriter`] writes the whole record:
/// these fields, then `folders`, `files` and `unreadable` (entries at T that were not extracted:
/// unreadable, invalid, or hidden by the structure rules of [`super::walk`], e.g. a child whose
/// manifest names another parent), then `problems` (problems of the export as a whole:
/// [`super::verify::export_problems`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CustodyRecord {
    pub tool: String,
    pub tool_version: String,
    pub created_at: DateTime,
    pub export_file: String,
    pub export_sha256: String,
    pub export_size: u64,
    pub organization_id: String,
    #[serde(serialize_with = "super::ser_id")]
    pub realm_id: [u8; 16],
    pub realm_name: String,
    /// The root verify key, its fingerprint and whether (and by what) it was anchored.
    pub trust_anchor: super::anchor::TrustReport,
    pub snapshot_timestamp: DateTime,
    pub export_complete: bool,
    pub time_of_interest: DateTime,
    pub extracted_path: String,
    pub destination: String,
    #[serde(serialize_with = "super::ser_id")]
    pub service_id: [u8; 16],
    pub service_label: String,
    pub service_revoked: Option<DateTime>,
    pub key_fingerprint_sha256: String,
    pub token: crate::token::TokenDescription,
    pub token_operations: u32,
    pub realm_key_indexes_obtained: Vec<u64>,
    pub realm_key_indexes_missing: Vec<u64>,
    pub files_extracted: u64,
    pub bytes_extracted: u64,
}

/// One of the record's per-entry lists, spooled to an unnamed temporary file as entries complete
/// (so the record costs no memory per entry), copied into the record when it is published.
struct Spool {
    out: std::io::BufWriter<File>,
    count: u64,
}

impl Spool {
    fn new(dir: &Path) -> Result<Self, ExportError> {
        let f = tempfile::tempfile_in(dir)
            .map_err(|e| io_err("cannot create a temporary file in", dir, e))?;
        Ok(Spool {
            out: std::io::BufWriter::with_capacity(1 << 16, f),
            count: 0,
        })
    }

    fn push(&mut self, value: &impl serde::Serialize) -> Result<(), ExportError> {
        use std::io::Write;
        let sep: &[u8] = if self.count == 0 {
            b"\n    "
        } else {
            b",\n    "
        };
        self.out
            .write_all(sep)
            .map_err(|e| ExportError::Io(format!("cannot write the custody record: {e}")))?;
        serde_json::to_writer(&mut self.out, value)
            .map_err(|e| ExportError::Io(format!("cannot write the custody record: {e}")))?;
        self.count += 1;
        Ok(())
    }

    /// Writes `"name": [ ...entries... ]` to `out`.
    fn copy_into(self, name: &str, out: &mut impl std::io::Write) -> std::io::Result<()> {
        use std::io::{Seek, SeekFrom};
        write!(out, "  \"{name}\": [")?;
        let mut f = self.out.into_inner().map_err(|e| e.into_error())?;
        f.seek(SeekFrom::Start(0))?;
        std::io::copy(&mut f, out)?;
        if self.count > 0 {
            out.write_all(b"\n  ")?;
        }
        out.write_all(b"]")
    }
}

/// Builds the chain-of-custody record while the extraction runs: an [`ExtractSink`] that spools
/// `folders`, `files` and `unreadable` (in walk order) to temporary files in the record's
/// directory; [`Self::publish`] then writes the whole record (the same fields as before, one
/// JSON document) to a temporary file and renames it into place. Nothing is left on failure.
pub struct CustodyRecordWriter {
    folders: Spool,
    files: Spool,
    unreadable: Spool,
    /// The first [`Self::SAMPLE`] unreadable entries, for the command's own summary.
    pub unreadable_sample: Vec<UnreadableEntry>,
}

impl CustodyRecordWriter {
    /// Unreadable entries kept in memory for the command's summary (the record has them all).
    pub const SAMPLE: usize = 1000;

    /// Spools in `dir` (the directory the record will be published in).
    pub fn new(dir: &Path) -> Result<Self, ExportError> {
        Ok(CustodyRecordWriter {
            folders: Spool::new(dir)?,
            files: Spool::new(dir)?,
            unreadable: Spool::new(dir)?,
            unreadable_sample: Vec::new(),
        })
    }

    /// Writes the record to `path` (refusing to overwrite): `header`, then the spooled lists,
    /// then `problems`; atomically (temporary file in the same directory, synced, renamed).
    pub fn publish(
        self,
        path: &Path,
        header: &CustodyRecord,
        problems: &[super::verify::Problem],
    ) -> Result<(), ExportError> {
        use std::io::Write;
        let json_err = std::io::Error::other;
        Ok(crate::fsutil::publish_new(path, |out| {
            let head = super::json_object_head(header).map_err(json_err)?;
            let problems = serde_json::to_string_pretty(problems).map_err(json_err)?;
            out.write_all(head.as_bytes())?;
            out.write_all(b",\n")?;
            self.folders.copy_into("folders", out)?;
            out.write_all(b",\n")?;
            self.files.copy_into("files", out)?;
            out.write_all(b",\n")?;
            self.unreadable.copy_into("unreadable", out)?;
            write!(
                out,
                ",\n  \"problems\": {}\n}}\n",
                problems.replace('\n', "\n  ")
            )
        })?)
    }
}

impl ExtractSink for CustodyRecordWriter {
    fn folder(&mut self, path: &str) -> Result<(), ExportError> {
        self.folders.push(&path)
    }
    fn file(&mut self, file: ExtractedFile) -> Result<(), ExportError> {
        self.files.push(&file)
    }
    fn unreadable(&mut self, entry: UnreadableEntry) -> Result<(), ExportError> {
        self.unreadable.push(&entry)?;
        if self.unreadable_sample.len() < Self::SAMPLE {
            self.unreadable_sample.push(entry);
        }
        Ok(())
    }
}

/// Streaming SHA-256 of the export file (for the custody record).
pub fn export_sha256(realm: &Realm) -> Result<(String, u64), ExportError> {
    export_sha256_unless(realm, &[])
}

/// [`export_sha256`], abandoned ([`ExportError::Interrupted`]) as soon as one of `stop` is set:
/// run alongside an extraction, it stops when the extraction is cancelled or fails.
pub fn export_sha256_unless(
    realm: &Realm,
    stop: &[&AtomicBool],
) -> Result<(String, u64), ExportError> {
    let path = realm.file().path();
    let size = fs::metadata(path)
        .map_err(|e| io_err("cannot stat", path, e))?
        .len();
    Ok((crate::fsutil::hash_file_unless(path, stop)?, size))
}

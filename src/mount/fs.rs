//! The FUSE filesystem over an unlocked [`Realm`]: read-only, lazy, multi-threaded.
//!
//! Every request resolves what it needs through the reader (`entry_at`, `children_at`,
//! `read_range_with`), whose manifest and block caches are bounded LRUs; this layer only keeps
//! the inode table (entries seen so far), the listings of open directories and the manifests
//! of open files. No lock is held while the reader queries SQLite or decrypts.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType,
    Filesystem, FopenFlags, Generation, INodeNo, KernelConfig, LockOwner, OpenAccMode, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use super::inodes::{Inodes, Node, HISTORY_INO, HISTORY_PLACEHOLDER_BASE, ROOT_INO};
use super::prefetch::{ListAhead, Prefetcher};
use crate::export::walk::{screen_child, screen_children, MAX_DEPTH};
use crate::export::{
    terminal, BlockData, BlockError, ChildEntry, EntryVersion, Realm, VersionContent,
};
use crate::parsec::manifest::{FileManifest, Manifest};
use crate::parsec::DateTime;

/// Name of the time-travel folder at the mount root.
pub const HISTORY_NAME: &str = ".history";

/// Attributes never change (the export is immutable): let the kernel cache them.
const TTL: Duration = Duration::from_secs(3600);

/// Asynchronous (read-ahead, parallel) requests the kernel may queue to us.
const MAX_BACKGROUND: u16 = 64;
/// Kernel read-ahead asked for, in bytes (it caps it at what it offers).
const MAX_READAHEAD: u32 = 1 << 20;

/// Settings of a mount.
#[derive(Debug, Clone)]
pub struct FsOptions {
    /// The instant shown at the mount root.
    pub at: DateTime,
    /// Owner of every file (the invoking user).
    pub uid: u32,
    pub gid: u32,
    /// Threads decrypting the blocks of one large read, and read-ahead workers.
    pub read_threads: usize,
    /// Blocks decrypted ahead of a sequential reader.
    pub readahead_blocks: usize,
    /// Debug log lines (`-vv`): the inode table's size at each `statfs` (e.g. `stat -f`).
    pub debug: bool,
}

struct DirItem {
    ino: u64,
    kind: FileType,
    name: OsString,
}

/// The filesystem. `Send + Sync`; every method takes `&self`.
pub struct ExportFs {
    realm: Arc<Realm>,
    opts: FsOptions,
    inodes: Mutex<Inodes>,
    next_fh: AtomicU64,
    /// Listings of open directories, built at the first `readdir` (with the kernel's directory
    /// cache, a folder listed before is often never read again).
    dirs: Mutex<HashMap<u64, Option<Arc<Vec<DirItem>>>>>,
    files: Mutex<HashMap<u64, Arc<Manifest>>>,
    instants: OnceLock<Vec<DateTime>>,
    prefetch: Prefetcher,
    list_ahead: ListAhead,
}

/// Logs one line on stderr (the mount runs in the foreground; the investigator sees it).
pub fn log(msg: &str) {
    // Paths and reasons hold attacker-chosen names: escaped for the terminal.
    eprintln!("[{}] mount: {}", DateTime::now(), terminal::escape(msg));
}

fn system_time(t: DateTime) -> SystemTime {
    let us = t.as_micros();
    if us >= 0 {
        UNIX_EPOCH + Duration::from_micros(us as u64)
    } else {
        UNIX_EPOCH - Duration::from_micros(us.unsigned_abs())
    }
}

impl ExportFs {
    /// Checks that the workspace exists at `opts.at` (reads only the root manifest).
    pub(crate) fn new(realm: Arc<Realm>, opts: FsOptions) -> Result<Self, String> {
        match realm.root_at(opts.at) {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(format!(
                    "the workspace did not exist yet at {} (its first version is later)",
                    opts.at
                ))
            }
            Err(e) => return Err(e.to_string()),
        }
        let inodes = Mutex::new(Inodes::new(realm.realm_id(), opts.at));
        let prefetch = Prefetcher::new(realm.clone(), opts.read_threads.max(1));
        let list_ahead = ListAhead::new(realm.clone(), opts.read_threads.max(1));
        Ok(ExportFs {
            realm,
            opts,
            inodes,
            next_fh: AtomicU64::new(1),
            dirs: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
            instants: OnceLock::new(),
            prefetch,
            list_ahead,
        })
    }

    fn inodes(&self) -> std::sync::MutexGuard<'_, Inodes> {
        self.inodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn node(&self, ino: u64) -> Option<(Node, DateTime)> {
        let inodes = self.inodes();
        let node = inodes.get(ino)?;
        let t = inodes.view_time(node.view);
        Some((node, t))
    }

    fn path_of(&self, ino: u64) -> String {
        self.inodes().path_of(ino)
    }

    fn base_attr(&self, ino: u64, kind: FileType, perm: u16, size: u64) -> FileAttr {
        let t = system_time(self.realm.snapshot());
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind,
            perm,
            // 1 for folders too: "unknown" to find(1), which would otherwise skip the
            // subfolders of a folder whose link count is 2.
            nlink: 1,
            uid: self.opts.uid,
            gid: self.opts.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// Attributes of an entry version: readable folders 0555, readable files 0444 with their
    /// size, unreadable or invalid entries a 0000 empty file (open says why).
    fn attr(&self, ino: u64, v: &EntryVersion) -> FileAttr {
        let is_view_root = ino == ROOT_INO || v.meta.vlob_id == self.realm.realm_id();
        match &v.content {
            VersionContent::Readable(m) => {
                let h = m.header();
                let mut a = match &**m {
                    Manifest::Folder(_) => self.base_attr(ino, FileType::Directory, 0o555, 0),
                    Manifest::File(f) => self.base_attr(ino, FileType::RegularFile, 0o444, f.size),
                };
                a.mtime = system_time(h.updated);
                a.atime = a.mtime;
                a.ctime = system_time(h.timestamp);
                a.crtime = system_time(h.created);
                a
            }
            _ => {
                // A root is always a directory (the kernel insists); unreadable, it is empty.
                let kind = if is_view_root {
                    FileType::Directory
                } else {
                    FileType::RegularFile
                };
                let mut a = self.base_attr(ino, kind, 0, 0);
                a.mtime = system_time(v.meta.timestamp);
                a.atime = a.mtime;
                a.ctime = a.mtime;
                a
            }
        }
    }

    fn history_attr(&self) -> FileAttr {
        self.base_attr(HISTORY_INO, FileType::Directory, 0o555, 0)
    }

    fn kind_of(v: &EntryVersion) -> FileType {
        match v.manifest().map(|m| &**m) {
            Some(Manifest::Folder(_)) => FileType::Directory,
            _ => FileType::RegularFile,
        }
    }

    /// The entry version of an inode at its view's time; errors already logged.
    fn version(&self, ino: u64) -> Result<(Node, DateTime, EntryVersion), Errno> {
        let (node, t) = self.node(ino).ok_or(Errno::ENOENT)?;
        match self.realm.entry_at(&node.id, t) {
            Ok(Some(v)) => Ok((node, t, v)),
            Ok(None) => Err(Errno::ENOENT),
            Err(e) => {
                log(&format!("EIO {}: {e}", self.path_of(ino)));
                Err(Errno::EIO)
            }
        }
    }

    /// Why an entry cannot be opened: EACCES for a key this service never received, EIO for an
    /// integrity failure. Logged with the path.
    fn refuse(&self, ino: u64, v: &EntryVersion) -> Errno {
        let path = self.path_of(ino);
        match &v.content {
            VersionContent::Unreadable { .. } => {
                log(&format!(
                    "EACCES {path}: version {} {}",
                    v.meta.version,
                    v.problem().unwrap_or_default()
                ));
                Errno::EACCES
            }
            VersionContent::Invalid { reason } => {
                log(&format!(
                    "EIO {path}: version {} is invalid: {reason}",
                    v.meta.version
                ));
                Errno::EIO
            }
            VersionContent::Readable(_) => Errno::EIO,
        }
    }

    fn instants(&self) -> &[DateTime] {
        self.instants.get_or_init(|| {
            let first = self
                .realm
                .file()
                .time_range()
                .ok()
                .flatten()
                .map(|(from, _)| from);
            match self.realm.file().change_instants() {
                Ok(all) => all
                    .into_iter()
                    .filter(|t| first.map_or(true, |f| *t >= f) && *t <= self.realm.snapshot())
                    .collect(),
                Err(e) => {
                    log(&format!(
                        "cannot list the change instants for /.history: {e}"
                    ));
                    Vec::new()
                }
            }
        })
    }

    /// Whether the real workspace root at T has an entry named like the history folder (then
    /// the real entry wins and the time-travel folder is not shown).
    fn history_shadowed(&self) -> bool {
        match self.realm.root_at(self.opts.at) {
            Ok(Some(v)) => v
                .folder()
                .is_some_and(|f| f.children.iter().any(|c| c.name.as_str() == HISTORY_NAME)),
            _ => false,
        }
    }

    fn lookup_history(&self, name: &OsStr) -> Result<FileAttr, Errno> {
        let t = name
            .to_str()
            .and_then(|s| DateTime::parse_rfc3339(s).ok())
            .ok_or(Errno::ENOENT)?;
        if t > self.realm.snapshot() {
            return Err(Errno::ENOENT);
        }
        let root = match self.realm.root_at(t) {
            Ok(Some(v)) => v,
            Ok(None) => return Err(Errno::ENOENT),
            Err(e) => {
                log(&format!("EIO /{HISTORY_NAME}/{t}: {e}"));
                return Err(Errno::EIO);
            }
        };
        let ino = {
            let mut inodes = self.inodes();
            let view = inodes.view_for(t);
            inodes.lookup(view, self.realm.realm_id(), HISTORY_INO, &t.to_rfc3339())
        };
        Ok(self.attr(ino, &root))
    }

    fn lookup_child(&self, parent: u64, name: &OsStr) -> Result<FileAttr, Errno> {
        if parent == HISTORY_INO {
            return self.lookup_history(name);
        }
        if parent == ROOT_INO && name == HISTORY_NAME && !self.history_shadowed() {
            return Ok(self.history_attr());
        }
        let (node, t, folder_version) = self.version(parent)?;
        let folder = match &folder_version.content {
            VersionContent::Readable(m) => match &**m {
                Manifest::Folder(f) => f,
                Manifest::File(_) => return Err(Errno::ENOTDIR),
            },
            _ => return Err(self.refuse(parent, &folder_version)),
        };
        let name = name.to_str().ok_or(Errno::ENOENT)?;
        let child = folder
            .children
            .iter()
            .find(|c| c.name.as_str() == name)
            .ok_or(Errno::ENOENT)?;
        let lineage = self.inodes().lineage(parent, MAX_DEPTH + 1);
        if lineage.len() > MAX_DEPTH + 1 {
            return Err(self.too_deep(parent));
        }
        let root_id = self.realm.realm_id();
        if let Some((_, reason)) = screen_child(folder, &root_id, &child.name, &child.id, |id| {
            lineage.contains(id)
        }) {
            log(&format!("ENOENT {}/{name}: {reason}", self.path_of(parent)));
            return Err(Errno::ENOENT);
        }
        let v = match self.realm.entry_at(&child.id, t) {
            Ok(Some(v)) => v,
            Ok(None) => return Err(Errno::ENOENT),
            Err(e) => {
                log(&format!("EIO {}/{name}: {e}", self.path_of(parent)));
                return Err(Errno::EIO);
            }
        };
        if v.manifest().is_some_and(|m| m.header().parent != node.id) {
            return Err(Errno::ENOENT);
        }
        let ino = self.inodes().lookup(node.view, child.id, parent, name);
        Ok(self.attr(ino, &v))
    }

    fn list(&self, ino: u64) -> Result<Vec<DirItem>, Errno> {
        if ino == HISTORY_INO {
            return Ok(self
                .instants()
                .iter()
                .enumerate()
                .map(|(i, t)| DirItem {
                    ino: HISTORY_PLACEHOLDER_BASE + i as u64,
                    kind: FileType::Directory,
                    name: OsString::from(t.to_rfc3339()),
                })
                .collect());
        }
        let (node, t, v) = self.version(ino)?;
        let folder = match &v.content {
            VersionContent::Readable(m) => match &**m {
                Manifest::Folder(f) => f,
                Manifest::File(_) => return Err(Errno::ENOTDIR),
            },
            _ if ino == ROOT_INO => {
                // The root itself is unreadable at T: say why, but keep time travel reachable.
                self.refuse(ino, &v);
                return Ok(vec![DirItem {
                    ino: HISTORY_INO,
                    kind: FileType::Directory,
                    name: OsString::from(HISTORY_NAME),
                }]);
            }
            _ => return Err(self.refuse(ino, &v)),
        };
        let lineage = self.inodes().lineage(ino, MAX_DEPTH + 1);
        if lineage.len() > MAX_DEPTH + 1 {
            return Err(self.too_deep(ino));
        }
        let children = match self.list_ahead.listed(&node.id, t) {
            Some(loaded_ahead) => loaded_ahead,
            None => self.children(folder, t).map_err(|e| {
                log(&format!("EIO {}: listing failed: {e}", self.path_of(ino)));
                Errno::EIO
            })?,
        };
        // The shared structure rules (export::walk): no cycle, one name per entry.
        let root_id = self.realm.realm_id();
        let (children, hidden) =
            screen_children(folder, &root_id, children, |id| lineage.contains(id));
        for (c, _, reason) in &hidden {
            log(&format!(
                "not shown {}/{}: {reason}",
                self.path_of(ino).trim_end_matches('/'),
                c.name
            ));
        }
        // A recursive walk lists these subfolders next: load their children meanwhile.
        self.list_ahead.request(
            t,
            children
                .iter()
                .filter_map(|c| c.version.manifest())
                .filter(|m| matches!(&***m, Manifest::Folder(_)))
                .cloned()
                .collect(),
        );
        let mut items = Vec::with_capacity(children.len() + 1);
        {
            let mut inodes = self.inodes();
            for c in &children {
                let child_ino = inodes.listing_ino(node.view, c.id);
                items.push(DirItem {
                    ino: child_ino,
                    kind: Self::kind_of(&c.version),
                    name: OsString::from(c.name.as_str()),
                });
            }
        }
        if ino == ROOT_INO && !children.iter().any(|c| c.name.as_str() == HISTORY_NAME) {
            items.push(DirItem {
                ino: HISTORY_INO,
                kind: FileType::Directory,
                name: OsString::from(HISTORY_NAME),
            });
        }
        Ok(items)
    }

    /// [`Realm::children_at`] with the children's manifests loaded (decrypted, signature
    /// checked) on several threads: listing a large folder is dominated by Ed25519 checks.
    fn children(
        &self,
        folder: &crate::parsec::manifest::FolderManifest,
        t: DateTime,
    ) -> Result<Vec<ChildEntry>, crate::export::ExportError> {
        if folder.children.len() < 16 || self.opts.read_threads <= 1 {
            return self.realm.children_at(folder, t);
        }
        self.realm
            .children_at_with_threads(folder, t, self.opts.read_threads)
    }

    /// Runs one request's work; a panic (a bug, or input no check foresaw) becomes EIO for this
    /// request instead of killing the FUSE thread and leaving the caller waiting for ever.
    fn guarded<T>(
        &self,
        ino: u64,
        what: &str,
        work: impl FnOnce() -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
            Ok(r) => r,
            Err(_) => {
                log(&format!(
                    "EIO {}: internal error while {what}; the mount goes on",
                    self.path_of(ino)
                ));
                Err(Errno::EIO)
            }
        }
    }

    /// A folder deeper than [`MAX_DEPTH`] is not listed (as in every other traversal).
    fn too_deep(&self, ino: u64) -> Errno {
        log(&format!(
            "EIO {}: folder nested more than {MAX_DEPTH} levels deep; not listed",
            self.path_of(ino)
        ));
        Errno::EIO
    }

    fn open_file(&self, ino: u64) -> Result<Arc<Manifest>, Errno> {
        if ino == HISTORY_INO {
            return Err(Errno::EISDIR);
        }
        let (_, _, v) = self.version(ino)?;
        match &v.content {
            VersionContent::Readable(m) => match &**m {
                Manifest::File(_) => Ok(m.clone()),
                Manifest::Folder(_) => Err(Errno::EISDIR),
            },
            _ => Err(self.refuse(ino, &v)),
        }
    }

    fn read_file(
        &self,
        ino: u64,
        file: &FileManifest,
        offset: u64,
        size: u32,
    ) -> Result<ReadData, Errno> {
        let refuse = |e: BlockError| {
            let path = self.path_of(ino);
            match e {
                BlockError::KeyUnavailable { .. } => {
                    log(&format!("EACCES {path}: {e}"));
                    Errno::EACCES
                }
                _ => {
                    log(&format!("EIO {path}: integrity error: {e}"));
                    Errno::EIO
                }
            }
        };
        let end = offset.saturating_add(size as u64).min(file.size);
        // Sequential readers: the next blocks are decrypted on other threads while this one
        // decrypts the current block (asked first, so that they start at once).
        if self.opts.readahead_blocks > 0 && end < file.size {
            let next: Vec<_> = file
                .blocks
                .iter()
                .filter(|b| b.offset >= end)
                .take(self.opts.readahead_blocks)
                .copied()
                .collect();
            self.prefetch.request(&next);
        }
        // The usual case, a kernel read inside one block: reply straight from the cached block
        // (no buffer to zero and fill).
        if let Some(b) = file
            .blocks
            .iter()
            .find(|b| b.offset <= offset && offset < end && end <= b.offset + b.size)
        {
            let data = self.realm.read_block(b).map_err(refuse)?;
            let range = (offset - b.offset) as usize..(end - b.offset) as usize;
            if range.end <= data.len() {
                return Ok(ReadData::Block(data, range));
            }
        }
        self.realm
            .read_range_with(file, offset, size as u64, self.opts.read_threads)
            .map(ReadData::Owned)
            .map_err(refuse)
    }
}

/// What a read replies: part of a cached block, or bytes assembled from several blocks.
enum ReadData {
    Block(BlockData, std::ops::Range<usize>),
    Owned(Vec<u8>),
}

impl ReadData {
    fn bytes(&self) -> &[u8] {
        match self {
            ReadData::Block(b, r) => &b[r.clone()],
            ReadData::Owned(v) => v,
        }
    }
}

fn erofs_entry(reply: ReplyEntry) {
    reply.error(Errno::EROFS)
}

impl Filesystem for ExportFs {
    /// More requests in flight than fuser's defaults: the kernel's asynchronous reads and
    /// read-ahead of several readers reach all request threads at once, and reads are as large
    /// as the kernel allows (fewer round trips per block).
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_background(MAX_BACKGROUND);
        let _ = config.set_congestion_threshold(MAX_BACKGROUND * 3 / 4);
        if let Err(max) = config.set_max_readahead(MAX_READAHEAD) {
            let _ = config.set_max_readahead(max);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.guarded(parent.0, "looking up a name", || {
            self.lookup_child(parent.0, name)
        }) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    /// Also serves `batch_forget` (fuser's default splits it; its `ForgetOne` is not nameable).
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.inodes().forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino.0 == HISTORY_INO {
            return reply.attr(&TTL, &self.history_attr());
        }
        match self.guarded(ino.0, "reading attributes", || {
            self.version(ino.0).map(|(_, _, v)| self.attr(ino.0, &v))
        }) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            return reply.error(Errno::EROFS);
        }
        match self.guarded(ino.0, "opening", || self.open_file(ino.0)) {
            Ok(m) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                self.files
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(fh, m);
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE)
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let manifest = self
            .files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh.0)
            .cloned();
        let manifest = match manifest {
            Some(m) => m,
            None => match self.open_file(ino.0) {
                Ok(m) => m,
                Err(e) => return reply.error(e),
            },
        };
        let Manifest::File(file) = &*manifest else {
            return reply.error(Errno::EISDIR);
        };
        match self.guarded(ino.0, "reading", || {
            self.read_file(ino.0, file, offset, size)
        }) {
            Ok(data) => reply.data(data.bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Only check that it can be listed (one manifest); the listing itself is lazy.
        if ino.0 != HISTORY_INO {
            match self.version(ino.0) {
                Ok((_, _, v)) => match v.manifest().map(|m| &**m) {
                    Some(Manifest::Folder(_)) => {}
                    Some(Manifest::File(_)) => return reply.error(Errno::ENOTDIR),
                    // An unreadable root still lists `.history`.
                    None if ino.0 == ROOT_INO => {}
                    None => return reply.error(self.refuse(ino.0, &v)),
                },
                Err(e) => return reply.error(e),
            }
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, None);
        reply.opened(
            FileHandle(fh),
            FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
        )
    }

    /// Offsets are positions in the listing captured at the first `readdir` of this handle:
    /// entry k (0 = `.`, 1 = `..`)
    /// is sent with offset k + 1, the position to resume from.
    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let items = self
            .dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh.0)
            .cloned()
            .flatten();
        let items = match items {
            Some(i) => i,
            None => match self.guarded(ino.0, "listing", || self.list(ino.0)) {
                Ok(i) => {
                    let i = Arc::new(i);
                    if let Some(slot) = self
                        .dirs
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_mut(&fh.0)
                    {
                        *slot = Some(i.clone());
                    }
                    i
                }
                Err(e) => return reply.error(e),
            },
        };
        let parent = match ino.0 {
            HISTORY_INO => ROOT_INO,
            i => self.node(i).map_or(ROOT_INO, |(n, _)| n.parent),
        };
        let total = items.len() as u64 + 2;
        for k in offset..total {
            let full = match k {
                0 => reply.add(ino, k + 1, FileType::Directory, "."),
                1 => reply.add(INodeNo(parent), k + 1, FileType::Directory, ".."),
                _ => {
                    let item = &items[(k - 2) as usize];
                    reply.add(INodeNo(item.ino), k + 1, item.kind, &item.name)
                }
            };
            if full {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        if self.opts.debug {
            let ahead = self.list_ahead.stats();
            log(&format!(
                "debug: inode table: {} nodes; list-ahead: {} folders loaded ahead, {} listings \
                 found theirs ready",
                self.inodes().node_count(),
                ahead.loaded,
                ahead.hits
            ));
        }
        let info = self.realm.info();
        let blocks = info.blocks_total_bytes.div_ceil(4096);
        reply.statfs(blocks, 0, 0, 0, 0, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if mask.contains(AccessFlags::W_OK) {
            return reply.error(Errno::EROFS);
        }
        if ino.0 == HISTORY_INO {
            return reply.ok();
        }
        match self.version(ino.0) {
            Ok((_, _, v)) if v.manifest().is_some() => reply.ok(),
            Ok((_, _, v)) if mask.contains(AccessFlags::R_OK) => {
                reply.error(self.refuse(ino.0, &v))
            }
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    // ---- every write-like operation: read-only file system ----

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS)
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        erofs_entry(reply)
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        erofs_entry(reply)
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS)
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS)
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        erofs_entry(reply)
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS)
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        erofs_entry(reply)
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS)
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS)
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS)
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS)
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS)
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS)
    }
}

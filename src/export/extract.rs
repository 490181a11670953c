//! `extract`: writes the tree as it was at T, atomically, with both cores decrypting blocks, and
//! the data of the chain-of-custody record.

use std::fs::{self, File};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::reader::{split_path, EntryVersion, Realm, VersionContent};
use super::walk::{join, Walk, WalkStep, MAX_DEPTH};
use super::{parallel, ExportError};
use crate::parsec::manifest::{BlockAccess, FileManifest, Manifest};
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
    fn finish(&self) {}
}

/// No progress display.
pub struct NoProgress;
impl Progress for NoProgress {}

/// The tree at T, planned before anything is written.
#[derive(Default)]
pub struct Plan {
    /// Path, modification time, entry ID and version of each folder.
    pub folders: Vec<(String, DateTime, [u8; 16], u32)>,
    pub files: Vec<(String, EntryVersion)>,
    pub unreadable: Vec<UnreadableEntry>,
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

/// Walks the tree at `at` below `path` (depth first, iterative). Unreadable folders are reported
/// and not entered; files whose blocks need keys this service lacks are reported too.
pub fn plan(realm: &Realm, path: &str, at: DateTime) -> Result<Plan, ExportError> {
    plan_cancellable(realm, path, at, None)
}

fn plan_cancellable(
    realm: &Realm,
    path: &str,
    at: DateTime,
    cancel: Option<&AtomicBool>,
) -> Result<Plan, ExportError> {
    let start = realm.resolve(path, at)?;
    let mut plan = Plan::default();
    let base_name = split_path(path)?.last().map(|s| s.to_string());
    let updated = match (&start.content, start.manifest().map(|m| &**m)) {
        (VersionContent::Readable(_), Some(Manifest::File(_))) => {
            let name = base_name.unwrap_or_default();
            classify_file(realm, &mut plan, join("/", &name), start);
            return Ok(plan);
        }
        (VersionContent::Readable(_), Some(Manifest::Folder(f))) => f.header.updated,
        _ => {
            return Err(ExportError::Unreadable {
                path: if path.is_empty() {
                    "/".into()
                } else {
                    path.into()
                },
                reason: start.problem().unwrap_or_default(),
            })
        }
    };
    plan.folders
        .push(("/".into(), updated, start.meta.vlob_id, start.meta.version));
    let mut walk = Walk::new(realm, at, "/", start, MAX_DEPTH);
    while let Some(step) = walk.next_step()? {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(ExportError::Interrupted);
        }
        match step {
            WalkStep::Problem(p) => plan.unreadable.push(UnreadableEntry {
                path: p.path,
                kind: "unknown",
                vlob_id: p.id,
                version: p.version.unwrap_or(0),
                needed_key_indexes: vec![],
                reason: p.reason,
            }),
            WalkStep::Entry(e) => match e.child.version.manifest().map(|m| &**m) {
                Some(Manifest::Folder(f)) => plan.folders.push((
                    e.path,
                    f.header.updated,
                    e.child.id,
                    e.child.version.meta.version,
                )),
                Some(Manifest::File(_)) => classify_file(realm, &mut plan, e.path, e.child.version),
                None => plan
                    .unreadable
                    .push(unreadable_entry(&e.path, &e.child.version)),
            },
        }
    }
    plan.folders.sort();
    Ok(plan)
}

fn classify_file(realm: &Realm, plan: &mut Plan, path: String, v: EntryVersion) {
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
        plan.files.push((path, v));
    } else {
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
        plan.unreadable.push(UnreadableEntry {
            path,
            kind: "file",
            vlob_id: v.meta.vlob_id,
            version: v.meta.version,
            needed_key_indexes: missing,
            reason,
        });
    }
}

/// Entries whose path under the temporary directory (`base_len` bytes) would exceed PATH_MAX are
/// reported instead of failing the whole extraction (deep trees of long names are legal in
/// Parsec). Their descendants have longer paths, so they go too.
fn leave_out_overlong_paths(plan: &mut Plan, base_len: usize) {
    let limit = (libc::PATH_MAX as usize).saturating_sub(base_len + 2);
    let reason = |len: usize| {
        format!(
            "its path is {len} bytes long: too long to write here (PATH_MAX {}); read it with \
             `export cat` or the mount",
            libc::PATH_MAX
        )
    };
    let mut too_long = Vec::new();
    plan.folders.retain(|(path, _, id, version)| {
        if path.len() <= limit {
            return true;
        }
        too_long.push((path.clone(), "folder", *id, *version));
        false
    });
    plan.files.retain(|(path, v)| {
        if path.len() <= limit {
            return true;
        }
        too_long.push((path.clone(), "file", v.meta.vlob_id, v.meta.version));
        false
    });
    for (path, kind, vlob_id, version) in too_long {
        plan.unreadable.push(UnreadableEntry {
            reason: reason(path.len()),
            path,
            kind,
            vlob_id,
            version,
            needed_key_indexes: vec![],
        });
    }
}

/// A unit of parallel work: a run of blocks of one file.
struct Job<'a> {
    file: usize,
    blocks: &'a [BlockAccess],
    /// The job covers the whole file: its SHA-256 is computed on the fly, no re-read.
    whole: bool,
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
/// reported.
pub fn extract(
    realm: &Realm,
    dest: &Path,
    options: &ExtractOptions,
    progress: &dyn Progress,
) -> Result<ExtractReport, ExportError> {
    if dest.symlink_metadata().is_ok() {
        return Err(ExportError::Io(format!(
            "{} already exists; choose a new destination",
            dest.display()
        )));
    }
    let mut plan = plan_cancellable(realm, &options.path, options.at, options.cancel)?;
    let temp = temp_sibling(dest)?;
    leave_out_overlong_paths(&mut plan, temp.as_os_str().len());
    let _ = fs::remove_dir_all(&temp);
    // Evidence is private by default: created with the requested modes (umask still applies),
    // never chmod-ed after, so no window where it is readable by others.
    let mut dirs = fs::DirBuilder::new();
    dirs.recursive(true).mode(options.dir_mode);
    dirs.create(&temp)
        .map_err(|e| io_err("cannot create", &temp, e))?;
    let mut guard = TempGuard(Some(temp.clone()));
    let local = |p: &str| temp.join(p.trim_start_matches('/'));

    for (folder, ..) in &plan.folders {
        if folder != "/" {
            dirs.create(local(folder))
                .map_err(|e| io_err("cannot create", &local(folder), e))?;
        }
    }
    // Files are created (and sized) up front but not kept open: a tree may hold more files than
    // the process may open at once. Workers open a file for each run of blocks.
    let mut total = 0u64;
    for (path, v) in &plan.files {
        if options.cancelled() {
            return Err(ExportError::Interrupted);
        }
        let file = v.file().expect("planned files are readable");
        let p = local(path);
        let f = File::options()
            .write(true)
            .create_new(true)
            .mode(options.file_mode)
            .open(&p)
            .map_err(|e| io_err("cannot create", &p, e))?;
        f.set_len(file.size)
            .map_err(|e| io_err("cannot size", &p, e))?;
        total += file.size;
    }
    progress.start(total);

    // Runs of up to 8 blocks: big files are split across workers, small files stay whole.
    let mut jobs = Vec::new();
    for (i, (_, v)) in plan.files.iter().enumerate() {
        let blocks = &v.file().expect("file").blocks;
        for chunk in blocks.chunks(8) {
            jobs.push(Job {
                file: i,
                blocks: chunk,
                whole: blocks.len() <= 8,
            });
        }
    }
    let failed: Mutex<Vec<Option<String>>> = Mutex::new(vec![None; plan.files.len()]);
    let hashes: Mutex<Vec<Option<String>>> = Mutex::new(vec![None; plan.files.len()]);
    let io_failure: Mutex<Option<ExportError>> = Mutex::new(None);
    let stop = AtomicBool::new(false);
    // A panic in one job (a bug, or input no check foresaw) fails that file only.
    let outcomes = parallel::try_map(&jobs, options.threads, |job| {
        if stop.load(Ordering::Relaxed) || options.cancelled() {
            return;
        }
        let target = local(&plan.files[job.file].0);
        let handle = match File::options().write(true).open(&target) {
            Ok(h) => h,
            Err(e) => {
                *io_failure.lock().unwrap() = Some(io_err("cannot open", &target, e));
                stop.store(true, Ordering::Relaxed);
                return;
            }
        };
        let mut hasher = job.whole.then(Sha256::new);
        let mut position = 0u64;
        for b in job.blocks {
            if failed.lock().unwrap()[job.file].is_some() {
                return;
            }
            match realm.decrypt_block(b) {
                Ok(data) => {
                    if let Some(h) = hasher.as_mut() {
                        hash_zeros(h, b.offset - position);
                        h.update(&data[..]);
                        position = b.offset + b.size;
                    }
                    if let Err(e) = handle.write_all_at(&data, b.offset) {
                        *io_failure.lock().unwrap() =
                            Some(io_err("cannot write", &local(&plan.files[job.file].0), e));
                        stop.store(true, Ordering::Relaxed);
                        return;
                    }
                    progress.advance(b.size);
                }
                Err(e) => {
                    failed.lock().unwrap()[job.file] = Some(e.to_string());
                    return;
                }
            }
        }
        if let Some(mut h) = hasher {
            let size = plan.files[job.file].1.file().expect("file").size;
            hash_zeros(&mut h, size - position);
            hashes.lock().unwrap()[job.file] = Some(hex::encode(h.finalize()));
        }
    });
    for (job, outcome) in jobs.iter().zip(outcomes) {
        if let Err(reason) = outcome {
            failed.lock().unwrap_or_else(|p| p.into_inner())[job.file] = Some(reason);
        }
    }
    let hashes = hashes.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = io_failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    if options.cancelled() {
        return Err(ExportError::Interrupted);
    }
    let failed = failed.into_inner().unwrap_or_else(|p| p.into_inner());

    let mut report = ExtractReport {
        unreadable: plan.unreadable.clone(),
        ..Default::default()
    };
    let kept: Vec<usize> = (0..plan.files.len())
        .filter(|i| failed[*i].is_none())
        .collect();
    for (i, reason) in failed.iter().enumerate() {
        if let Some(reason) = reason {
            let (path, v) = &plan.files[i];
            fs::remove_file(local(path)).map_err(|e| io_err("cannot remove", &local(path), e))?;
            report.unreadable.push(UnreadableEntry {
                path: path.clone(),
                kind: "file",
                vlob_id: v.meta.vlob_id,
                version: v.meta.version,
                needed_key_indexes: vec![],
                reason: format!("integrity error: {reason}"),
            });
        }
    }
    // Hash what is on disk (what the custody record vouches for), in parallel, then set mtimes.
    let hashed: Vec<Result<ExtractedFile, ExportError>> =
        parallel::map(&kept, options.threads, |&i| {
            let (path, v) = &plan.files[i];
            let file = v.file().expect("file");
            let p = local(path);
            let sha = match &hashes[i] {
                Some(h) => h.clone(),
                None => hash_file(&p)?,
            };
            let f = File::options()
                .write(true)
                .open(&p)
                .map_err(|e| io_err("cannot open", &p, e))?;
            f.set_modified(to_system_time(file.header.updated))
                .map_err(|e| io_err("cannot set mtime of", &p, e))?;
            Ok(ExtractedFile {
                path: path.clone(),
                size: file.size,
                sha256: sha,
                vlob_id: v.meta.vlob_id,
                version: v.meta.version,
                updated: file.header.updated,
                author: realm.describe_author(&v.meta.author),
            })
        });
    if options.cancelled() {
        return Err(ExportError::Interrupted);
    }
    for h in hashed {
        let f = h?;
        report.bytes += f.size;
        report.files.push(f);
    }
    report.files.sort_by(|a, b| a.path.cmp(&b.path));
    report.unreadable.sort_by(|a, b| a.path.cmp(&b.path));
    // Folder mtimes last (creating children changed them), deepest first.
    let mut folders = plan.folders.clone();
    folders.sort_by_key(|(p, ..)| std::cmp::Reverse(p.matches('/').count()));
    for (folder, updated, ..) in &folders {
        let p = local(folder);
        let f = File::open(&p).map_err(|e| io_err("cannot open", &p, e))?;
        f.set_modified(to_system_time(*updated))
            .map_err(|e| io_err("cannot set mtime of", &p, e))?;
    }
    report.folders = plan.folders.iter().map(|(p, ..)| p.clone()).collect();
    fs::rename(&temp, dest).map_err(|e| io_err("cannot rename the finished tree to", dest, e))?;
    guard.0 = None;
    progress.finish();
    Ok(report)
}

fn to_system_time(t: DateTime) -> std::time::SystemTime {
    let us = t.as_micros();
    if us >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::from_micros(us as u64)
    } else {
        std::time::UNIX_EPOCH - std::time::Duration::from_micros(us.unsigned_abs())
    }
}

/// SHA-256 of a file, hex, streaming.
pub fn hash_file(path: &Path) -> Result<String, ExportError> {
    hash_file_unless(path, &[])
}

/// [`hash_file`] that gives up with [`ExportError::Interrupted`] as soon as one of `stop` is set
/// (checked every MiB: a 100 GB export must not delay Ctrl-C or an early failure).
pub fn hash_file_unless(path: &Path, stop: &[&AtomicBool]) -> Result<String, ExportError> {
    use std::io::Read;
    let mut f = File::open(path).map_err(|e| io_err("cannot open", path, e))?;
    let mut hasher = Sha256::new();
    // Sized to the file: a fixed 1 MiB buffer per small file costs more than hashing it.
    let len = f
        .metadata()
        .map_err(|e| io_err("cannot stat", path, e))?
        .len();
    let mut buf = vec![0u8; len.clamp(1, 1 << 20) as usize];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| io_err("cannot read", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if stop.iter().any(|s| s.load(Ordering::Relaxed)) {
            return Err(ExportError::Interrupted);
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The chain-of-custody record written next to the extracted tree (`DEST.custody.json`).
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
    pub files_extracted: usize,
    pub bytes_extracted: u64,
    pub folders: Vec<String>,
    pub files: Vec<ExtractedFile>,
    /// Entries at T that were not extracted (unreadable, invalid, or hidden by the structure
    /// rules of [`super::walk`], e.g. a child whose manifest names another parent).
    pub unreadable: Vec<UnreadableEntry>,
    /// Problems of the export as a whole ([`super::verify::export_problems`]: certificates that
    /// fail, unusable keys-bundle accesses or bundles, duplicate certificates).
    pub problems: Vec<super::verify::Problem>,
}

/// Writes `value` as pretty JSON to `path` atomically (temp file in the same directory, then
/// rename). Refuses to overwrite.
pub fn write_json_atomic(path: &Path, value: &impl serde::Serialize) -> Result<(), ExportError> {
    if path.symlink_metadata().is_ok() {
        return Err(ExportError::Io(format!(
            "{} already exists",
            path.display()
        )));
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(parent)
        .map_err(|e| io_err("cannot create a temporary file in", parent, e))?;
    use std::io::Write;
    // Buffered: unbuffered, serde_json issues one write(2) per token (millions for a record of
    // 100k files).
    let mut out = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
    serde_json::to_writer_pretty(&mut out, value)
        .map_err(|e| ExportError::Io(format!("cannot write {}: {e}", path.display())))?;
    out.write_all(b"\n")
        .and_then(|_| out.flush())
        .map_err(|e| io_err("cannot write", path, e))?;
    drop(out);
    tmp.as_file()
        .sync_all()
        .map_err(|e| io_err("cannot sync", path, e))?;
    tmp.persist_noclobber(path)
        .map_err(|e| io_err("cannot write", path, e.error))?;
    Ok(())
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
    Ok((hash_file_unless(path, stop)?, size))
}

/// Shared handle type for callers that keep a realm around.
pub type SharedRealm = Arc<Realm>;

/// Reads a whole readable file at T into memory (for `cat` of small files and tests).
pub fn read_whole_file(realm: &Realm, file: &FileManifest) -> Result<Vec<u8>, super::BlockError> {
    realm.read_range_with(file, 0, file.size, parallel::default_threads())
}

#[cfg(test)]
mod hash_tests {
    use super::*;

    #[test]
    fn hashing_stops_when_a_stop_flag_is_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, vec![7u8; 3 << 20]).unwrap();
        let (go, stop) = (AtomicBool::new(false), AtomicBool::new(true));
        assert_eq!(
            hash_file_unless(&path, &[&go]).unwrap(),
            hash_file(&path).unwrap()
        );
        assert_eq!(
            hash_file(&path).unwrap(),
            crate::crypto::sha256_hex(&[7u8; 3 << 20])
        );
        assert!(matches!(
            hash_file_unless(&path, &[&go, &stop]),
            Err(ExportError::Interrupted)
        ));
    }
}

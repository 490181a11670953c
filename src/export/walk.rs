//! The structure rules of a tree at one instant, in one place, used by every
//! traversal: `ls -R`, `extract`, `verify`, `timeline`/`history` paths, and the mount's listings
//! and lookups.
//!
//! Rules (docs/formats.md §5.4 step 9, plus what a hostile export needs):
//! - A child must exist at T and name the listing folder as its `parent`. Parsec's client skips
//!   such an "invalid child" silently (docs/formats.md §5.4 step 9; a move between two uploads
//!   leaves that state for a moment, so it is not by itself tampering); here it is not shown
//!   either, but each one is a per-entry [`WalkRule::ParentMismatch`] naming the folder path and
//!   the child, so nothing is hidden silently. `verify` lists them as notices (shown, not failing).
//! - A folder never lists the root, itself or one of its ancestors (a cycle); such a child is a
//!   per-entry problem and is not followed.
//! - One entry ID is shown once per walk: listed again (under another name, or in another
//!   folder than the one its `parent` names, while that folder lists it too), it is a per-entry
//!   problem and not shown or expanded again. So each folder is
//!   expanded at most once per instant, whatever the fan-out of names.
//! - At most [`MAX_DEPTH`] folder levels below the walk's start are entered; a deeper folder is
//!   shown but not entered, with a per-entry problem.
//! - A file's declared size must fit its blocks ([`file_size_problem`]).
//!
//! Traversals are iterative (an explicit stack): no recursion whose depth the input controls.

use std::collections::HashMap;

use super::reader::{ChildEntry, EntryVersion, Realm};
use super::ExportError;
use crate::parsec::device::Id;
use crate::parsec::entry_name::EntryName;
use crate::parsec::manifest::{FileManifest, FolderManifest};
use crate::parsec::DateTime;

/// Folder levels below the workspace root that traversals enter. Parsec sets no limit; a real
/// workspace is a few dozen levels deep at most, and paths deeper than this would not fit
/// PATH_MAX (4096 bytes) once written out anyway.
pub const MAX_DEPTH: usize = 128;

/// Largest declared file size accepted (1 TiB).
pub const MAX_FILE_SIZE: u64 = 1 << 40;

/// Why a child is not shown (or, for [`WalkRule::TooDeep`], shown but not entered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WalkRule {
    /// The child is the root, the listing folder itself or one of its ancestors.
    Cycle,
    /// The child's entry ID was already listed under another name or in another folder.
    DuplicateId,
    /// The folder is deeper than [`MAX_DEPTH`]: not entered.
    TooDeep,
    /// Several children of the folder have this name after NFC normalisation (docs/formats.md
    /// §3.7): none of them is shown, rather than a guess.
    NameCollision,
    /// The child's manifest names another folder as its `parent`: not shown (as Parsec's client
    /// does), reported. Not by itself a sign of tampering (see the module doc).
    ParentMismatch,
}

/// A per-entry problem found while walking.
#[derive(Debug, Clone)]
pub struct WalkProblem {
    /// Where the entry was listed.
    pub path: String,
    /// The folder that lists it.
    pub folder: Id,
    pub id: Id,
    pub version: Option<u32>,
    pub rule: WalkRule,
    pub reason: String,
}

/// A child that passed the rules, at `path`, `depth` folder levels below the walk's start.
#[derive(Debug, Clone)]
pub struct WalkEntry {
    pub path: String,
    pub depth: usize,
    pub child: ChildEntry,
}

/// One step of a [`Walk`].
#[derive(Debug, Clone)]
pub enum WalkStep {
    Entry(WalkEntry),
    Problem(WalkProblem),
}

/// Joins a folder path and a child name (`/` + `a` = `/a`).
pub fn join(parent: &str, name: &str) -> String {
    if parent == "/" || parent.is_empty() {
        format!("/{name}")
    } else {
        format!("{}/{name}", parent.trim_end_matches('/'))
    }
}

/// The per-folder part of the rules, shared by [`Walk`] and the mount: splits the children of
/// one folder (as returned by [`Realm::children_at`], sorted by name) into those to show and the
/// problems. `is_ancestor` says whether an ID is the folder's ancestor (the root included).
/// A child ID listed under several names is shown under the first name only.
pub fn screen_children(
    folder: &FolderManifest,
    root_id: &Id,
    children: Vec<ChildEntry>,
    is_ancestor: impl Fn(&Id) -> bool,
) -> (Vec<ChildEntry>, Vec<(ChildEntry, WalkRule, String)>) {
    let folder_id = &folder.header.id;
    let mut shown: Vec<ChildEntry> = Vec::with_capacity(children.len());
    let mut first_name: HashMap<Id, usize> = HashMap::new();
    let mut problems = Vec::new();
    for c in children {
        if folder.duplicate_names.contains(&c.name) {
            let reason = "suspicious folder: several children have this name after NFC \
                          normalisation; none is shown (see `export verify`)"
                .to_string();
            problems.push((c, WalkRule::NameCollision, reason));
            continue;
        }
        if c.id == *root_id || c.id == *folder_id || is_ancestor(&c.id) {
            let what = if c.id == *root_id {
                "the workspace root"
            } else if c.id == *folder_id {
                "this folder itself"
            } else {
                "an ancestor of this folder"
            };
            let reason = format!(
                "cycle: the folder lists {what} (entry {}) as a child; not followed",
                hex::encode(c.id)
            );
            problems.push((c, WalkRule::Cycle, reason));
            continue;
        }
        if let Some(&i) = first_name.get(&c.id) {
            let reason = format!(
                "entry {} is listed again under the name `{}` of the same folder; shown once, \
                 as `{}`",
                hex::encode(c.id),
                c.name,
                shown[i].name
            );
            problems.push((c, WalkRule::DuplicateId, reason));
            continue;
        }
        first_name.insert(c.id, shown.len());
        shown.push(c);
    }
    (shown, problems)
}

/// Problems of one folder manifest version that need no walk (for `verify`, which checks every
/// version): it lists the root or itself, or one child ID under several names.
pub fn folder_version_problems(folder: &FolderManifest, root_id: &Id) -> Vec<String> {
    let mut out = Vec::new();
    let mut names: HashMap<Id, Vec<&str>> = HashMap::new();
    for c in &folder.children {
        if c.id == *root_id || c.id == folder.header.id {
            out.push(format!(
                "cycle: child `{}` is {} (entry {})",
                c.name,
                if c.id == *root_id {
                    "the workspace root"
                } else {
                    "the folder itself"
                },
                hex::encode(c.id)
            ));
        }
        names.entry(c.id).or_default().push(c.name.as_str());
    }
    let mut dups: Vec<(Id, Vec<&str>)> = names.into_iter().filter(|(_, n)| n.len() > 1).collect();
    dups.sort();
    for (id, mut n) in dups {
        n.sort_unstable();
        out.push(format!(
            "entry {} is listed under {} names: {:?}",
            hex::encode(id),
            n.len(),
            n
        ));
    }
    out
}

/// Why a file's declared size is not acceptable for its blocks, or `None`.
///
/// Rule (docs/formats.md §3.7 allows gaps and a tail of zeros): blocks sorted, non-overlapping,
/// inside the size (checked when the manifest is decoded), the size at most [`MAX_FILE_SIZE`], and
/// the bytes not covered by any block (holes and tail, which read as zeros) at most as many as the
/// bytes the blocks hold. A file of zeros declared without blocks would otherwise cost hashing or
/// writing any size the attacker chooses for a few bytes of manifest.
pub fn file_size_problem(file: &FileManifest) -> Option<String> {
    if file.size > MAX_FILE_SIZE {
        return Some(format!(
            "declared size {} bytes exceeds the {} byte maximum",
            file.size, MAX_FILE_SIZE
        ));
    }
    let in_blocks: u64 = file
        .blocks
        .iter()
        .fold(0u64, |sum, b| sum.saturating_add(b.size));
    let end = file
        .blocks
        .iter()
        .map(|b| b.offset.saturating_add(b.size))
        .max()
        .unwrap_or(0);
    if end > file.size {
        return Some(format!(
            "blocks reach byte {end}, beyond the declared size {}",
            file.size
        ));
    }
    let zeros = file.size - in_blocks.min(file.size);
    if zeros > in_blocks {
        return Some(format!(
            "declared size {} bytes is absurd for its {} block(s) holding {in_blocks} bytes: \
             {zeros} bytes would be zeros (holes and tail may not exceed the block data)",
            file.size,
            file.blocks.len()
        ));
    }
    None
}

/// A child to show, or one the rules hide (with why).
type Screened = Result<ChildEntry, (ChildEntry, WalkRule, String)>;

struct Frame {
    id: Id,
    path: String,
    depth: usize,
    /// In name order, hidden children where they would have been.
    children: std::vec::IntoIter<Screened>,
    /// Number of children in all (taken from `children` or not).
    total: usize,
    /// The children before this index (in the original order) had their own children's
    /// manifests prefetched, or were not folders.
    prefetched: usize,
    /// Child folder ID -> the versions of its children, loaded ahead (in the order of its
    /// `children`), until the walk expands it.
    ahead: HashMap<Id, Vec<Option<EntryVersion>>>,
}

/// Manifests loaded ahead of the walk in one parallel batch: the children of the folder about to
/// be expanded and of the next folders of the same parent, up to this many. Bounded so that a
/// batch stays a small part of the manifest cache (it must still be there when the walk gets to
/// it: each signature is checked once per run), and the walk's memory stays independent of the
/// entry count.
pub const PREFETCH_MANIFESTS: usize = 1024;

/// Manifest cache weight assumed per prefetched manifest when sizing a batch (a manifest weighs
/// its encrypted size; a folder listing many children weighs more).
const PREFETCH_WEIGHT_ESTIMATE: usize = 8 << 10;

/// Depth-first walk of the tree at `t` below one folder, children in name order, applying the
/// rules of this module. Iterate with [`Walk::next_step`].
pub struct Walk<'r> {
    realm: &'r Realm,
    t: DateTime,
    root_id: Id,
    max_depth: usize,
    stack: Vec<Frame>,
    /// Entry ID -> the path it was first shown at, for folders and unreadable entries only:
    /// bounded by the number of folders (and unreadable entries), not of files. A readable
    /// file needs no entry: the parent rule already shows it at most once (its manifest names
    /// one parent, any other folder listing it sees a stray, and one folder listing it under
    /// two names is screened by [`screen_children`]). The same argument holds for readable
    /// folders; they are kept anyway, as the guard that each folder is expanded once.
    seen: HashMap<Id, String>,
    /// A folder just shown, expanded at the next step (pre-order).
    pending: Option<(Id, String, usize, EntryVersion)>,
    /// A problem about the entry just returned (too deep), returned next.
    queued: std::collections::VecDeque<WalkStep>,
    /// Versions held in the frames' `ahead` maps (bounded by two prefetch batches).
    ahead_len: usize,
}

impl<'r> Walk<'r> {
    /// Walks below `start` (a readable folder version) shown at `path`. `max_depth` is the
    /// number of folder levels below `start` to enter (capped at [`MAX_DEPTH`]); 0 lists only
    /// `start`'s children.
    pub fn new(
        realm: &'r Realm,
        t: DateTime,
        path: &str,
        start: EntryVersion,
        max_depth: usize,
    ) -> Self {
        let mut seen = HashMap::new();
        seen.insert(start.meta.vlob_id, path.to_string());
        Walk {
            realm,
            t,
            root_id: realm.realm_id(),
            max_depth: max_depth.min(MAX_DEPTH),
            stack: Vec::new(),
            seen,
            pending: Some((start.meta.vlob_id, path.to_string(), 0, start)),
            queued: Default::default(),
            ahead_len: 0,
        }
    }

    fn is_ancestor(&self, id: &Id) -> bool {
        self.stack.iter().any(|f| f.id == *id)
    }

    fn expand(
        &mut self,
        id: Id,
        path: String,
        depth: usize,
        version: EntryVersion,
    ) -> Result<(), ExportError> {
        let Some(folder) = version.folder() else {
            return Ok(());
        };
        self.prefetch(folder);
        let loaded = self
            .stack
            .last_mut()
            .and_then(|frame| frame.ahead.remove(&folder.header.id));
        let (children, strays) = match loaded {
            Some(versions) => {
                self.ahead_len -= versions.len();
                Realm::sort_children(folder, versions.into_iter().map(Ok).collect())?
            }
            None => {
                let threads = if folder.children.len() >= 32 {
                    super::parallel::default_threads()
                } else {
                    1
                };
                self.realm.children_and_strays_at(folder, self.t, threads)?
            }
        };
        // The stack holds exactly this folder's ancestors (a frame is popped only once its
        // subtree is done).
        let (shown, problems) =
            screen_children(folder, &self.root_id, children, |c| self.is_ancestor(c));
        let mut items: Vec<Screened> = shown.into_iter().map(Ok).collect();
        items.extend(problems.into_iter().map(Err));
        for stray in strays {
            let (rule, reason) = self.stray_problem(folder, &stray)?;
            items.push(Err((stray, rule, reason)));
        }
        fn name(i: &Screened) -> &EntryName {
            match i {
                Ok(c) | Err((c, _, _)) => &c.name,
            }
        }
        items.sort_by(|a, b| name(a).cmp(name(b)));
        self.stack.push(Frame {
            id,
            path,
            depth,
            total: items.len(),
            children: items.into_iter(),
            prefetched: 0,
            ahead: HashMap::new(),
        });
        Ok(())
    }

    /// Loads (decrypts, verifies) on all cores, in one batch, the children of `folder` (about to
    /// be expanded, unless they were loaded ahead already) and of the folders that follow it
    /// among its parent's children, up to [`PREFETCH_MANIFESTS`]; the versions are kept in the
    /// parent's frame until each folder is expanded. Small folders are then not loaded one
    /// thread at a time, and each manifest is looked up and verified once. At most two batches
    /// are held ahead (the one being consumed and the next), so memory does not grow with the
    /// tree.
    fn prefetch(&mut self, folder: &FolderManifest) {
        let threads = super::parallel::default_threads();
        let budget = PREFETCH_MANIFESTS
            .min(self.realm.manifest_cache_capacity() / PREFETCH_WEIGHT_ESTIMATE)
            .max(1);
        let id = folder.header.id;
        let ahead_len = self.ahead_len;
        let Some(frame) = self.stack.last_mut() else {
            return;
        };
        if threads <= 1 || folder.children.len() >= budget || ahead_len >= budget {
            return;
        }
        // Groups (folder ID, its children's IDs) to load.
        let mut groups: Vec<(Id, Vec<Id>)> = Vec::new();
        let mut count = 0;
        if !frame.ahead.contains_key(&id) {
            groups.push((id, folder.children.iter().map(|c| c.id).collect()));
            count += folder.children.len();
        }
        // The sibling folders after the one being expanded, not prefetched yet.
        let front = frame.total - frame.children.len();
        let from = frame.prefetched.max(front);
        for item in &frame.children.as_slice()[from - front..] {
            if let Ok(c) = item {
                if let Some(f) = c.version.folder() {
                    if count + f.children.len() > budget {
                        break;
                    }
                    count += f.children.len();
                    groups.push((c.id, f.children.iter().map(|c| c.id).collect()));
                }
            }
            frame.prefetched = frame.prefetched.max(from) + 1;
        }
        if count < 2 * threads {
            return;
        }
        let ids: Vec<Id> = groups.iter().flat_map(|(_, g)| g.iter().copied()).collect();
        let t = self.t;
        let realm = self.realm;
        let mut loaded =
            super::parallel::map(&ids, threads, |id| realm.entry_at(id, t).ok()).into_iter();
        for (folder_id, children) in groups {
            let versions: Vec<Option<Option<EntryVersion>>> =
                loaded.by_ref().take(children.len()).collect();
            // A storage error is left for the expansion to meet and report.
            if let Some(versions) = versions.into_iter().collect::<Option<Vec<_>>>() {
                self.ahead_len += versions.len();
                frame.ahead.insert(folder_id, versions);
            }
        }
    }

    /// Why a child whose manifest names another parent (a "stray") is not shown: a cycle when
    /// it is the root, this folder or an ancestor; otherwise a parent mismatch, saying whether
    /// the folder its manifest names lists it too (one entry in two folders) or not (a stale
    /// link, e.g. a move seen between two uploads).
    fn stray_problem(
        &self,
        folder: &FolderManifest,
        stray: &ChildEntry,
    ) -> Result<(WalkRule, String), ExportError> {
        if stray.id == self.root_id || stray.id == folder.header.id || self.is_ancestor(&stray.id) {
            let (_, mut problems) =
                screen_children(folder, &self.root_id, vec![stray.clone()], |c| {
                    self.is_ancestor(c)
                });
            if let Some((_, rule, reason)) = problems.pop() {
                return Ok((rule, reason));
            }
        }
        let Some(parent) = stray.version.manifest().map(|m| m.header().parent) else {
            // Only readable children are strays.
            return Ok((
                WalkRule::ParentMismatch,
                format!(
                    "entry {} names another parent folder",
                    hex::encode(stray.id)
                ),
            ));
        };
        let listed = self
            .realm
            .entry_at(&parent, self.t)?
            .and_then(|v| {
                v.folder()
                    .map(|f| f.children.iter().any(|c| c.id == stray.id))
            })
            .unwrap_or(false);
        let what = if listed {
            "which lists it too (one entry in two folders)"
        } else {
            "which does not list it at this time (a stale link, e.g. a move between two uploads)"
        };
        Ok((
            WalkRule::ParentMismatch,
            format!(
                "parent mismatch: child `{}` (entry {}) of folder {} names folder {} as its \
                 parent, {what}; not shown here, as Parsec's client does",
                stray.name,
                hex::encode(stray.id),
                hex::encode(folder.header.id),
                hex::encode(parent)
            ),
        ))
    }

    /// The next entry or problem; `None` when the walk is over.
    pub fn next_step(&mut self) -> Result<Option<WalkStep>, ExportError> {
        loop {
            if let Some(step) = self.queued.pop_front() {
                return Ok(Some(step));
            }
            if let Some((id, path, depth, version)) = self.pending.take() {
                self.expand(id, path, depth, version)?;
                continue;
            }
            let Some(frame) = self.stack.last_mut() else {
                return Ok(None);
            };
            let Some(item) = frame.children.next() else {
                // Folders loaded ahead but never expanded (hidden by the rules).
                let left: usize = frame.ahead.values().map(Vec::len).sum();
                self.ahead_len -= left;
                self.stack.pop();
                continue;
            };
            let child = match item {
                Ok(c) => c,
                Err((c, rule, reason)) => {
                    return Ok(Some(WalkStep::Problem(WalkProblem {
                        path: join(&frame.path, c.name.as_str()),
                        folder: frame.id,
                        id: c.id,
                        version: Some(c.version.meta.version),
                        rule,
                        reason,
                    })))
                }
            };
            let path = join(&frame.path, child.name.as_str());
            let depth = frame.depth + 1;
            let folder = frame.id;
            if let Some(first) = self.seen.get(&child.id) {
                let reason = format!(
                    "entry {} is already shown as {first}: one entry listed under several \
                     names or folders is shown once",
                    hex::encode(child.id)
                );
                return Ok(Some(WalkStep::Problem(WalkProblem {
                    path,
                    folder,
                    id: child.id,
                    version: Some(child.version.meta.version),
                    rule: WalkRule::DuplicateId,
                    reason,
                })));
            }
            if child.version.file().is_none() {
                self.seen.insert(child.id, path.clone());
            }
            if child.version.folder().is_some() {
                if depth <= self.max_depth {
                    self.pending = Some((child.id, path.clone(), depth, child.version.clone()));
                } else if self.max_depth == MAX_DEPTH {
                    self.queued.push_back(WalkStep::Problem(WalkProblem {
                        path: path.clone(),
                        folder,
                        id: child.id,
                        version: Some(child.version.meta.version),
                        rule: WalkRule::TooDeep,
                        reason: format!(
                            "folder nested more than {MAX_DEPTH} levels deep: its content is \
                             not listed"
                        ),
                    }));
                }
            }
            return Ok(Some(WalkStep::Entry(WalkEntry { path, depth, child })));
        }
    }
}

/// [`screen_children`] for one child looked up by name (the mount's `lookup`), without loading
/// the other children: `None` when the child named `name` (entry `id`) of `folder` is shown.
/// Same rules and same choice among several names of one entry (the first in name order).
pub fn screen_child(
    folder: &FolderManifest,
    root_id: &Id,
    name: &EntryName,
    id: &Id,
    is_ancestor: impl Fn(&Id) -> bool,
) -> Option<(WalkRule, String)> {
    if folder.duplicate_names.contains(name) {
        return Some((
            WalkRule::NameCollision,
            "several children have this name after NFC normalisation".into(),
        ));
    }
    if id == root_id || *id == folder.header.id || is_ancestor(id) {
        return Some((
            WalkRule::Cycle,
            format!(
                "cycle: the folder lists the root, itself or an ancestor (entry {})",
                hex::encode(id)
            ),
        ));
    }
    if let Some(first) = folder
        .children
        .iter()
        .filter(|c| c.id == *id && c.name < *name)
        .map(|c| &c.name)
        .min()
    {
        return Some((
            WalkRule::DuplicateId,
            format!(
                "entry {} is listed again under the name `{name}`; shown once, as `{first}`",
                hex::encode(id)
            ),
        ));
    }
    None
}

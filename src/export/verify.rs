//! `verify`: walks every manifest version and every block reachable by this service, checks every
//! signature and digest, and lists every problem with where it is.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::reader::{Realm, VersionContent, VersionMeta};
use super::walk::{folder_version_problems, Walk, WalkRule, WalkStep, MAX_DEPTH};
use super::{parallel, ExportError};
use crate::parsec::device::Id;
use crate::parsec::manifest::{BlockAccess, Manifest};
use crate::parsec::DateTime;

/// One problem found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    /// `certificate`, `keys`, `manifest`, `structure` (cycles, one entry under several names,
    /// nesting too deep; see [`super::walk`]) or `block`.
    pub kind: &'static str,
    pub entry_id: Option<String>,
    pub path: Option<String>,
    pub version: Option<u32>,
    pub timestamp: Option<DateTime>,
    pub author: Option<String>,
    pub reason: String,
}

/// The verification report.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    pub entries: u64,
    pub folders: u64,
    pub files: u64,
    pub versions: u64,
    pub readable_versions: u64,
    pub unreadable_versions: u64,
    /// Versions this service cannot read, by the key index they need.
    pub unreadable_versions_by_key_index: BTreeMap<u64, u64>,
    pub invalid_versions: u64,
    pub blocks_checked: u64,
    pub block_bytes_checked: u64,
    pub blocks_unreadable: u64,
    /// The first [`MAX_KEPT_PROBLEMS`] problems (memory stays bounded on a badly damaged
    /// export); `problems_total` counts them all.
    pub problems: Vec<Problem>,
    pub problems_total: u64,
    /// Shown, but not failing verification: children that the tree at the export's snapshot
    /// does not show because their manifest names another parent folder (Parsec's client skips
    /// them too; a move between two uploads can leave that state, so it is not by itself
    /// tampering). Kind `structure`.
    pub notices: Vec<Problem>,
    /// All notices, of which the first [`MAX_KEPT_PROBLEMS`] are in `notices`.
    pub notices_total: u64,
}

/// Problems (and notices) kept in a [`VerifyReport`]; the rest are counted.
pub const MAX_KEPT_PROBLEMS: usize = 10_000;

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems_total == 0
    }

    fn add(&mut self, p: Problem) {
        self.problems_total += 1;
        if self.problems.len() < MAX_KEPT_PROBLEMS {
            self.problems.push(p);
        }
    }
}

const PAGE: usize = 512;

/// Verifies everything this service can reach, using `threads` workers for manifests and blocks.
pub fn verify(realm: &Realm, threads: usize) -> Result<VerifyReport, ExportError> {
    let mut report = VerifyReport::default();
    for p in export_problems(realm) {
        report.add(p);
    }
    // Versions come entry by entry: the state below is the current entry's only (whether it
    // was counted as a folder / file, the blocks its versions share), not the export's.
    let mut current: Option<Id> = None;
    let (mut counted_folder, mut counted_file) = (false, false);
    let mut blocks: Vec<(BlockAccess, VersionMeta)> = Vec::new();
    let mut seen_blocks = HashSet::new();
    let mut folder_parents: HashMap<Id, (Id, VersionMeta)> = HashMap::new();
    let mut page: Vec<VersionMeta> = Vec::with_capacity(PAGE);
    let mut flush = |page: &mut Vec<VersionMeta>,
                     report: &mut VerifyReport|
     -> Result<(), ExportError> {
        let loaded = parallel::try_map(page, threads, |m| realm.load_version(m.clone()));
        for (meta, v) in page.iter().zip(loaded) {
            let v = match v {
                Ok(v) => v?,
                Err(reason) => {
                    report.versions += 1;
                    report.invalid_versions += 1;
                    report.add(manifest_problem(realm, meta, reason));
                    continue;
                }
            };
            report.versions += 1;
            if current != Some(v.meta.vlob_id) {
                current = Some(v.meta.vlob_id);
                report.entries += 1;
                (counted_folder, counted_file) = (false, false);
                seen_blocks.clear();
            }
            match &v.content {
                VersionContent::Readable(m) => {
                    report.readable_versions += 1;
                    match &**m {
                        Manifest::Folder(f) => {
                            if !counted_folder {
                                counted_folder = true;
                                report.folders += 1;
                            }
                            if v.meta.vlob_id != realm.realm_id() {
                                // An entry's versions come in time order: the latest wins.
                                folder_parents
                                    .insert(v.meta.vlob_id, (f.header.parent, v.meta.clone()));
                            }
                            for reason in folder_version_problems(f, &realm.realm_id()) {
                                let mut p = manifest_problem(realm, &v.meta, reason);
                                p.kind = "structure";
                                report.add(p);
                            }
                            if !f.duplicate_names.is_empty() {
                                report.add(manifest_problem(
                                    realm,
                                    &v.meta,
                                    format!(
                                        "suspicious folder: names duplicated after NFC normalisation: {:?}",
                                        f.duplicate_names.iter().map(|n| n.to_string()).collect::<Vec<_>>()
                                    ),
                                ));
                            }
                        }
                        Manifest::File(f) => {
                            if !counted_file {
                                counted_file = true;
                                report.files += 1;
                            }
                            for b in &f.blocks {
                                if seen_blocks.insert((b.id, b.digest, b.size)) {
                                    blocks.push((*b, v.meta.clone()));
                                }
                            }
                        }
                    }
                }
                VersionContent::Unreadable { key_index, .. } => {
                    report.unreadable_versions += 1;
                    *report
                        .unreadable_versions_by_key_index
                        .entry(*key_index)
                        .or_default() += 1;
                }
                VersionContent::Invalid { reason } => {
                    report.invalid_versions += 1;
                    report.add(manifest_problem(realm, &v.meta, reason.clone()));
                }
            }
        }
        page.clear();
        // The page's blocks are checked now: only one page of block references is held.
        for chunk in blocks.chunks(PAGE) {
            let results = parallel::try_map(chunk, threads, |(b, _)| {
                realm.decrypt_block(b).map(|d| d.len() as u64)
            });
            for ((b, meta), r) in chunk.iter().zip(results) {
                let r = r.unwrap_or_else(|reason| {
                    Err(super::BlockError::Storage {
                        id: hex::encode(b.id),
                        reason,
                    })
                });
                match r {
                    Ok(n) => {
                        report.blocks_checked += 1;
                        report.block_bytes_checked += n;
                    }
                    Err(super::BlockError::KeyUnavailable { .. }) => report.blocks_unreadable += 1,
                    Err(e) => {
                        let mut p = manifest_problem(realm, meta, e.to_string());
                        p.kind = "block";
                        report.add(p);
                    }
                }
            }
        }
        blocks.clear();
        Ok(())
    };
    realm.for_each_version_meta_by_entry(|meta| {
        page.push(meta);
        if page.len() >= PAGE {
            flush(&mut page, &mut report)?;
        }
        Ok(())
    })?;
    flush(&mut page, &mut report)?;
    for p in too_deep(realm, &folder_parents) {
        report.add(p);
    }
    let (structure, notices, notices_total) = snapshot_walk_problems(realm)?;
    for p in structure {
        report.add(p);
    }
    report.notices = notices;
    report.notices_total = notices_total;

    Ok(report)
}

/// Problems of the export as a whole, not of one entry: certificates that fail (organisation,
/// sequester, realm), unusable keys-bundle accesses or bundles, duplicate certificates. `verify`
/// lists them first; `extract` puts them in the custody record.
pub fn export_problems(realm: &Realm) -> Vec<Problem> {
    let certificates = realm
        .organization()
        .problems
        .iter()
        .chain(&realm.sequester_topic().problems)
        .chain(&realm.realm_certificates().problems)
        .map(|p| simple("certificate", p));
    let keys = realm.recovery().problems.iter().map(|p| simple("keys", p));
    certificates.chain(keys).collect()
}

/// What only a walk of the tree finds, at the export's snapshot (the listings' default time):
/// an ancestor listed as a child (the root or the folder itself are found version by version),
/// and, as notices, children whose manifest names another parent. The rules are those of
/// [`super::walk`], the same as `ls`, `extract` and the mount apply.
/// Structure problems, the first [`MAX_KEPT_PROBLEMS`] notices and the number of notices.
type WalkFindings = (Vec<Problem>, Vec<Problem>, u64);

fn snapshot_walk_problems(realm: &Realm) -> Result<WalkFindings, ExportError> {
    let (mut problems, mut notices, mut notices_total) = (Vec::new(), Vec::new(), 0u64);
    let t = realm.snapshot();
    let Some(root) = realm.root_at(t)?.filter(|v| v.folder().is_some()) else {
        return Ok((problems, notices, notices_total));
    };
    let root_id = realm.realm_id();
    let mut walk = Walk::new(realm, t, "/", root, MAX_DEPTH);
    while let Some(step) = walk.next_step()? {
        let WalkStep::Problem(p) = step else { continue };
        let problem = Problem {
            kind: "structure",
            entry_id: Some(hex::encode(p.id)),
            path: Some(p.path),
            version: p.version,
            timestamp: Some(t),
            author: None,
            reason: p.reason,
        };
        match p.rule {
            WalkRule::ParentMismatch => {
                notices_total += 1;
                if notices.len() < MAX_KEPT_PROBLEMS {
                    notices.push(problem);
                }
            }
            WalkRule::Cycle if p.id != root_id && p.id != p.folder => problems.push(problem),
            // The others are found version by version (one folder's names, depth).
            _ => {}
        }
    }
    Ok((problems, notices, notices_total))
}

/// Folders nested more than [`MAX_DEPTH`] levels deep, following the `parent` of each folder's
/// latest version (no second pass over the manifests). Cycles and one entry under several names
/// are found version by version.
fn too_deep(realm: &Realm, parents: &HashMap<Id, (Id, VersionMeta)>) -> Vec<Problem> {
    let root = realm.realm_id();
    let mut depth: HashMap<Id, usize> = HashMap::new();
    depth.insert(root, 0);
    let mut out = Vec::new();
    for start in parents.keys() {
        // Climb until a known depth (the root is 0), an orphan or a cycle; then fill in the chain.
        let mut chain: Vec<Id> = Vec::new();
        let mut on_chain: HashSet<Id> = HashSet::new();
        let mut cur = *start;
        let base = loop {
            if let Some(d) = depth.get(&cur) {
                break Some(*d);
            }
            if !on_chain.insert(cur) {
                break None;
            }
            chain.push(cur);
            match parents.get(&cur) {
                Some((parent, _)) => cur = *parent,
                None => break None,
            }
        };
        let Some(base) = base else {
            // Orphan or cycle: no depth.
            for id in chain {
                depth.entry(id).or_insert(usize::MAX);
            }
            continue;
        };
        for (i, id) in chain.iter().rev().enumerate() {
            depth.insert(*id, base.saturating_add(i + 1));
        }
    }
    for (id, (_, meta)) in parents {
        if depth.get(id) == Some(&(MAX_DEPTH + 1)) {
            let mut p = manifest_problem(
                realm,
                meta,
                format!(
                    "folder nested more than {MAX_DEPTH} levels deep: listings and extraction \
                     do not enter it"
                ),
            );
            p.kind = "structure";
            out.push(p);
        }
    }
    out.sort_by(|a, b| a.entry_id.cmp(&b.entry_id));
    out
}

fn simple(kind: &'static str, reason: &str) -> Problem {
    Problem {
        kind,
        entry_id: None,
        path: None,
        version: None,
        timestamp: None,
        author: None,
        reason: reason.to_string(),
    }
}

fn manifest_problem(realm: &Realm, meta: &VersionMeta, reason: String) -> Problem {
    Problem {
        kind: "manifest",
        entry_id: Some(hex::encode(meta.vlob_id)),
        path: realm
            .path_hint(&meta.vlob_id, meta.timestamp)
            .ok()
            .flatten(),
        version: Some(meta.version),
        timestamp: Some(meta.timestamp),
        author: Some(realm.describe_author(&meta.author)),
        reason,
    }
}

//! `verify`: walks every manifest version and every block reachable by this service, checks every
//! signature and digest, and lists every problem with where it is.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::reader::{Realm, VersionContent, VersionMeta};
use super::walk::{folder_version_problems, MAX_DEPTH};
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
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

const PAGE: usize = 512;

/// Verifies everything this service can reach, using `threads` workers for manifests and blocks.
pub fn verify(realm: &Realm, threads: usize) -> Result<VerifyReport, ExportError> {
    let mut report = VerifyReport::default();
    for p in &realm.organization().problems {
        report.problems.push(simple("certificate", p));
    }
    for p in &realm.sequester_topic().problems {
        report.problems.push(simple("certificate", p));
    }
    for p in &realm.realm_certificates().problems {
        report.problems.push(simple("certificate", p));
    }
    for p in &realm.recovery().problems {
        report.problems.push(simple("keys", p));
    }
    let mut entries = HashSet::new();
    let mut folders = HashSet::new();
    let mut files = HashSet::new();
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
                    report.problems.push(manifest_problem(realm, meta, reason));
                    continue;
                }
            };
            report.versions += 1;
            entries.insert(v.meta.vlob_id);
            match &v.content {
                VersionContent::Readable(m) => {
                    report.readable_versions += 1;
                    match &**m {
                        Manifest::Folder(f) => {
                            folders.insert(v.meta.vlob_id);
                            if v.meta.vlob_id != realm.realm_id() {
                                // Versions come in time order: the latest one wins.
                                folder_parents
                                    .insert(v.meta.vlob_id, (f.header.parent, v.meta.clone()));
                            }
                            for reason in folder_version_problems(f, &realm.realm_id()) {
                                let mut p = manifest_problem(realm, &v.meta, reason);
                                p.kind = "structure";
                                report.problems.push(p);
                            }
                            if !f.duplicate_names.is_empty() {
                                report.problems.push(manifest_problem(
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
                            files.insert(v.meta.vlob_id);
                            for b in &f.blocks {
                                if seen_blocks.insert((b.id, b.digest, b.size)) {
                                    blocks.push((*b, v.meta.clone()));
                                }
                            }
                        }
                    }
                }
                VersionContent::Unreadable { key_index } => {
                    report.unreadable_versions += 1;
                    *report
                        .unreadable_versions_by_key_index
                        .entry(*key_index)
                        .or_default() += 1;
                }
                VersionContent::Invalid { reason } => {
                    report.invalid_versions += 1;
                    report
                        .problems
                        .push(manifest_problem(realm, &v.meta, reason.clone()));
                }
            }
        }
        page.clear();
        Ok(())
    };
    realm.for_each_version_meta(|meta| {
        page.push(meta);
        if page.len() >= PAGE {
            flush(&mut page, &mut report)?;
        }
        Ok(())
    })?;
    flush(&mut page, &mut report)?;
    report.problems.extend(too_deep(realm, &folder_parents));
    report.entries = entries.len() as u64;
    report.folders = folders.len() as u64;
    report.files = files.len() as u64;

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
                    report.problems.push(p);
                }
            }
        }
    }
    Ok(report)
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

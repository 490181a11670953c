//! What the writer put in an export, for comparison with what a reader gets out of it.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use sequester_custody::parsec::DateTime;

fn ser_dt<S: serde::Serializer>(t: &DateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339())
}

fn de_dt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<DateTime, D::Error> {
    let s = String::deserialize(d)?;
    DateTime::parse_rfc3339(&s).map_err(serde::de::Error::custom)
}

fn ser_opt_dt<S: serde::Serializer>(t: &Option<DateTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_some(&t.to_rfc3339()),
        None => s.serialize_none(),
    }
}

fn de_opt_dt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<DateTime>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| DateTime::parse_rfc3339(&s).map_err(serde::de::Error::custom))
        .transpose()
}

/// Everything the writer knows about an export it wrote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroundTruth {
    pub organization_id: String,
    /// The organisation root verify key, 64 hex digits.
    #[serde(default)]
    pub root_verify_key: String,
    /// 32 hex digits.
    pub realm_id: String,
    /// The last realm name (none if never named).
    pub realm_name: Option<String>,
    #[serde(serialize_with = "ser_dt", deserialize_with = "de_dt")]
    pub snapshot: DateTime,
    /// Timestamp of the root manifest version 1: the earliest instant with content.
    #[serde(serialize_with = "ser_opt_dt", deserialize_with = "de_opt_dt")]
    pub root_created: Option<DateTime>,
    pub blocksize: u64,
    pub services: Vec<ServiceTruth>,
    /// `(key index, rotation time)`, in order.
    pub key_rotations: Vec<RotationTruth>,
    pub checkpoints: Vec<TreeSnapshot>,
    pub stats: WriteStats,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotationTruth {
    pub key_index: u64,
    #[serde(serialize_with = "ser_dt", deserialize_with = "de_dt")]
    pub at: DateTime,
    /// Service ids (hex) that received an access row for this key index.
    pub services_with_access: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceTruth {
    /// 32 hex digits.
    pub id: String,
    pub label: String,
    /// SHA-256 (hex) of the service public key SPKI DER.
    pub spki_sha256: String,
    #[serde(serialize_with = "ser_dt", deserialize_with = "de_dt")]
    pub created: DateTime,
    #[serde(serialize_with = "ser_opt_dt", deserialize_with = "de_opt_dt")]
    pub revoked: Option<DateTime>,
    /// Key indexes with an access row for this service.
    pub access_key_indexes: Vec<u64>,
}

impl ServiceTruth {
    /// The realm keys this service can recover: every index up to its highest access
    /// (docs/formats.md §5.5).
    pub fn readable_key_indexes(&self) -> BTreeSet<u64> {
        let max = self.access_key_indexes.iter().copied().max().unwrap_or(0);
        (1..=max).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Folder,
}

/// One entry of the tree at a checkpoint, as stored (readable by someone holding every key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TruthEntry {
    /// `/a/b/c.txt`; the root itself is not listed.
    pub path: String,
    pub kind: EntryKind,
    /// 32 hex digits.
    pub id: String,
    pub version: u32,
    /// Key index of this manifest version.
    pub key_index: u64,
    /// Distinct key indexes of the file's blocks.
    pub block_key_indexes: Vec<u64>,
    pub size: u64,
    /// SHA-256 (hex) of the content (files only).
    pub sha256: Option<String>,
    #[serde(serialize_with = "ser_dt", deserialize_with = "de_dt")]
    pub created: DateTime,
    #[serde(serialize_with = "ser_dt", deserialize_with = "de_dt")]
    pub updated: DateTime,
    /// Device id (hex) of the author of this version.
    pub author: String,
}

/// The tree as of one instant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TreeSnapshot {
    pub label: String,
    #[serde(serialize_with = "ser_dt", deserialize_with = "de_dt")]
    pub at: DateTime,
    pub root_key_index: u64,
    /// Parents before children, sorted by path.
    pub entries: Vec<TruthEntry>,
}

/// What a reader holding `readable` key indexes should see for one entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpectedEntry {
    pub path: String,
    pub kind: EntryKind,
    pub readable: bool,
    /// The first key index this reader lacks (when not readable).
    pub missing_key_index: Option<u64>,
    pub size: u64,
    pub sha256: Option<String>,
}

impl TreeSnapshot {
    /// The view of a reader holding the given key indexes: entries under an unreadable folder are
    /// invisible; an unreadable entry is listed as such; a file is readable only if its manifest
    /// and every block key are held. `None` when the root itself is unreadable.
    pub fn view_for(&self, readable: &BTreeSet<u64>) -> Option<Vec<ExpectedEntry>> {
        if !readable.contains(&self.root_key_index) {
            return None;
        }
        let mut hidden_prefixes: Vec<String> = Vec::new();
        let mut out = Vec::new();
        for e in &self.entries {
            if hidden_prefixes
                .iter()
                .any(|p| e.path.starts_with(p.as_str()))
            {
                continue;
            }
            let missing = std::iter::once(e.key_index)
                .chain(e.block_key_indexes.iter().copied())
                .find(|k| !readable.contains(k));
            let manifest_ok = readable.contains(&e.key_index);
            if e.kind == EntryKind::Folder && !manifest_ok {
                hidden_prefixes.push(format!("{}/", e.path));
            }
            out.push(ExpectedEntry {
                path: e.path.clone(),
                kind: e.kind,
                readable: missing.is_none(),
                missing_key_index: missing,
                size: e.size,
                sha256: e.sha256.clone(),
            });
        }
        Some(out)
    }

    pub fn entry(&self, path: &str) -> Option<&TruthEntry> {
        self.entries.iter().find(|e| e.path == path)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WriteStats {
    pub files_written: u64,
    pub plaintext_bytes: u64,
    pub blocks: u64,
    pub blocks_total_bytes: u64,
    pub vlob_atoms: u64,
    pub vlobs_total_bytes: u64,
    pub seconds: f64,
}

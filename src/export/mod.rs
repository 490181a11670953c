//! Realm export reader: opens a Parsec realm export strictly read-only and walks the
//! decryption and verification chain of docs/formats.md §5.4, with the token doing the only RSA
//! step.
//!
//! Entry points:
//! - [`ExportFile::open`]: cheap (schema + `info` row), no key needed; `info`, sequester topic,
//!   access rows.
//! - [`ExportFile::unlock`]: runs the chain with a [`crate::token::KeyHandle`] and returns a
//!   [`Realm`]: manifests at any time T ([`Realm::entry_at`], [`Realm::resolve`],
//!   [`Realm::children_at`]), history ([`Realm::versions`]), blocks ([`Realm::read_block`],
//!   [`Realm::read_range`]).
//! - [`extract`], [`verify`], [`timeline`]: whole-export operations built on the above.
//!
//! Partial readability is a state, not an error: see [`VersionContent::Unreadable`].

pub mod anchor;
mod cache;
pub(crate) mod chain;
pub(crate) mod db;
mod error;
pub mod extract;
mod inflight;
pub mod parallel;
mod reader;
pub(crate) mod sequester_topic;
pub mod terminal;
pub mod timeline;
pub mod verify;
pub mod walk;

pub use cache::LruCache;
pub use chain::{Device, Organization, RealmCertificates, RealmName, RecoveryReport, User};
pub use db::ExportInfo;
pub use error::ExportError;
pub use reader::{
    split_path, unreadable_reason, AccessRow, BlockData, BlockError, CacheLimits, ChildEntry,
    EntryVersion, ExportFile, OpenOptions, Realm, UnlockOptions, VersionContent, VersionMeta,
};
pub use sequester_topic::{SequesterService, SequesterTopic};

/// Serializes a 16-byte ID as 32 hex digits.
pub(crate) fn ser_id<S: serde::Serializer>(id: &[u8; 16], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(id))
}

/// Serializes 32 bytes as hex.
pub(crate) fn ser_hex32<S: serde::Serializer>(b: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(b))
}

/// Pretty JSON of `value` (which must serialize to an object) without its closing brace: members
/// streamed after it (`,\n  "name": [...]` then `}`) complete the same object. How large lists
/// (custody record, `ls -R`, `timeline`) are written with bounded memory.
pub fn json_object_head(value: &impl serde::Serialize) -> serde_json::Result<String> {
    let text = serde_json::to_string_pretty(value)?;
    match text.trim_end().strip_suffix('}') {
        Some(head) if text.starts_with('{') => Ok(head.trim_end().to_string()),
        _ => Err(serde::ser::Error::custom("expected a JSON object")),
    }
}

/// Parses a 32-hex-digit ID (dashes allowed).
pub fn parse_id(s: &str) -> Result<[u8; 16], String> {
    let clean: String = s.chars().filter(|c| *c != '-').collect();
    let bytes = hex::decode(&clean).map_err(|_| format!("`{s}` is not a hexadecimal ID"))?;
    bytes
        .try_into()
        .map_err(|_| format!("`{s}` is not a 16-byte (32 hex digit) ID"))
}

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod tests;

//! Printing shared by the `export` commands: JSON documents, the context every JSON report
//! carries, entry lines, and text lines with attacker-chosen parts escaped for a terminal.

use std::io::Write;

use serde_json::{json, Value};

use sequester_custody::export::anchor::TrustReport;
use sequester_custody::export::{EntryVersion, Realm, VersionContent};
use sequester_custody::parsec::manifest::Manifest;
use sequester_custody::parsec::DateTime;

/// `writeln!` of one line with attacker-chosen text (names, labels) escaped for a terminal.
macro_rules! safe_line {
    ($o:expr, $($arg:tt)*) => {
        writeln!($o, "{}", ::sequester_custody::export::terminal::escape(&format!($($arg)*)))
    };
}
pub(crate) use safe_line;

/// `println!` of one escaped line (see [`safe_line`]).
macro_rules! safe_println {
    ($($arg:tt)*) => {
        println!("{}", ::sequester_custody::export::terminal::escape(&format!($($arg)*)))
    };
}
pub(crate) use safe_println;

pub(crate) fn print_json(v: &Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

fn service_json(realm: &Realm) -> Value {
    let s = realm.service();
    json!({
        "service_id": hex::encode(s.service_id),
        "label": s.label,
        "revoked": s.revoked,
        "key_fingerprint": s.key_fingerprint,
        "token_operations": realm.token_operations(),
        "recovery": realm.recovery(),
        "token": realm.token(),
    })
}

pub(crate) fn context_json(realm: &Realm, trust: &TrustReport, at: DateTime) -> Value {
    json!({
        "trust": trust,
        "export": realm.file().display_path(),
        "complete": realm.info().is_complete(),
        "organization_id": realm.info().organization_id,
        "realm_id": hex::encode(realm.realm_id()),
        "realm_name": realm.realm_name_at(at),
        "snapshot_timestamp": realm.snapshot(),
        "at": at,
        "service": service_json(realm),
    })
}

fn kind_of(v: &EntryVersion) -> &'static str {
    match v.manifest().map(|m| &**m) {
        Some(Manifest::Folder(_)) => "folder",
        Some(Manifest::File(_)) => "file",
        None => "unknown",
    }
}

pub(crate) fn entry_json(realm: &Realm, path: &str, v: &EntryVersion) -> Value {
    let mut e = json!({
        "path": path,
        "id": hex::encode(v.meta.vlob_id),
        "kind": kind_of(v),
        "version": v.meta.version,
        "key_index": v.meta.key_index,
        "timestamp": v.meta.timestamp,
        "author": realm.describe_author(&v.meta.author),
        "readable": v.manifest().is_some(),
    });
    match &v.content {
        VersionContent::Readable(m) => {
            e["created"] = json!(m.header().created);
            e["updated"] = json!(m.header().updated);
            if let Manifest::File(f) = &**m {
                e["size"] = json!(f.size);
            }
        }
        VersionContent::Unreadable { key_index, .. } => {
            e["needs_key_index"] = json!(key_index);
            e["reason"] = json!(v.problem());
        }
        VersionContent::Invalid { reason } => {
            e["invalid"] = json!(true);
            e["reason"] = json!(reason);
        }
    }
    e
}

pub(crate) fn entry_line(realm: &Realm, name: &str, v: &EntryVersion, long: bool) -> String {
    let suffix = if kind_of(v) == "folder" { "/" } else { "" };
    let problem = v.problem().map(|p| format!("  [UNREADABLE: {p}]"));
    let problem = match &v.content {
        VersionContent::Invalid { reason } => Some(format!("  [INVALID: {reason}]")),
        _ => problem,
    };
    if !long {
        return format!("{name}{suffix}{}", problem.unwrap_or_default());
    }
    let (size, updated) = match v.manifest().map(|m| &**m) {
        Some(Manifest::File(f)) => (f.size.to_string(), f.header.updated.to_string()),
        Some(Manifest::Folder(f)) => ("-".into(), f.header.updated.to_string()),
        None => ("?".into(), "?".into()),
    };
    format!(
        "{:<7} {:>12}  v{:<4} key {:<3} {:<27} {:<40} {name}{suffix}{}",
        kind_of(v),
        size,
        v.meta.version,
        v.meta.key_index,
        updated,
        realm.describe_author(&v.meta.author),
        problem.unwrap_or_default()
    )
}

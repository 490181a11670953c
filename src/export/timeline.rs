//! `timeline`: every change in time order — sequester services, key rotations, realm names and
//! roles, and every manifest version with what it changed.

use std::collections::BTreeSet;

use super::reader::{Realm, VersionContent};
use super::ExportError;
use crate::parsec::device::Id;
use crate::parsec::entry_name::EntryName;
use crate::parsec::manifest::Manifest;
use crate::parsec::DateTime;

/// One event.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TimelineEvent {
    pub timestamp: DateTime,
    /// `sequester_service`, `sequester_revocation`, `key_rotation`, `realm_name`, `realm_role`,
    /// `folder`, `file`, `unreadable`, `invalid`.
    pub kind: &'static str,
    pub path: Option<String>,
    pub entry_id: Option<String>,
    pub version: Option<u32>,
    pub key_index: Option<u64>,
    pub author: Option<String>,
    pub readable: bool,
    pub description: String,
}

fn event(timestamp: DateTime, kind: &'static str, description: String) -> TimelineEvent {
    TimelineEvent {
        timestamp,
        kind,
        path: None,
        entry_id: None,
        version: None,
        key_index: None,
        author: None,
        readable: true,
        description,
    }
}

/// Builds the whole timeline in memory (for tests and library callers; the command streams
/// with [`for_each_event`]).
pub fn timeline(realm: &Realm) -> Result<Vec<TimelineEvent>, ExportError> {
    let mut events = Vec::new();
    for_each_event(realm, |e| {
        events.push(e);
        Ok(())
    })?;
    Ok(events)
}

/// The events of the realm's certificates (services, rotations, names, roles): a few per
/// certificate, not per entry.
fn certificate_events(realm: &Realm) -> Vec<TimelineEvent> {
    let mut events = Vec::new();
    for s in &realm.sequester_topic().services {
        events.push(event(
            s.created,
            "sequester_service",
            format!(
                "sequester service `{}` ({}) created",
                s.label,
                hex::encode(s.service_id)
            ),
        ));
        if let Some(r) = s.revoked {
            events.push(event(
                r,
                "sequester_revocation",
                format!(
                    "sequester service `{}` ({}) revoked",
                    s.label,
                    hex::encode(s.service_id)
                ),
            ));
        }
    }
    let certs = realm.realm_certificates();
    let access: BTreeSet<u64> = realm
        .recovery()
        .access_key_indexes
        .iter()
        .copied()
        .collect();
    for r in certs.rotations.values() {
        let mut e = event(
            r.timestamp,
            "key_rotation",
            format!(
                "key rotation to key index {}{}",
                r.key_index,
                if access.contains(&r.key_index) {
                    " (this service received an access)"
                } else {
                    " (no access for this service)"
                }
            ),
        );
        e.key_index = Some(r.key_index);
        e.author = Some(realm.describe_author(&r.author));
        e.readable = realm.has_key(r.key_index);
        events.push(e);
    }
    for n in &certs.names {
        let name = realm.realm_name_at(n.timestamp);
        let mut e = event(
            n.timestamp,
            "realm_name",
            format!("workspace named `{name}`"),
        );
        e.key_index = Some(n.key_index);
        e.author = Some(realm.describe_author(&n.author));
        e.readable = realm.has_key(n.key_index);
        events.push(e);
    }
    for r in &certs.roles {
        let user = realm
            .organization()
            .users
            .get(&r.user_id)
            .and_then(|u| u.email.clone())
            .unwrap_or_else(|| hex::encode(r.user_id));
        let mut e = event(
            r.timestamp,
            "realm_role",
            match &r.role {
                Some(role) => format!("{user} given role {role}"),
                None => format!("{user} removed from the workspace"),
            },
        );
        e.author = Some(realm.describe_author(&r.author));
        events.push(e);
    }

    events
}

/// The children of the last readable folder version of `id` before `t` (what a folder version
/// at `t` changed from), looked up instead of kept: walking back costs a query (and, past the
/// manifest cache, a decryption) per folder version, and no memory per entry.
fn children_before(
    realm: &Realm,
    id: &Id,
    t: DateTime,
) -> Result<Option<Vec<(EntryName, Id)>>, ExportError> {
    let mut at = t.as_micros();
    loop {
        let Some(prev) = realm.entry_at(id, DateTime::from_micros(at.saturating_sub(1)))? else {
            return Ok(None);
        };
        if let Some(f) = prev.folder() {
            return Ok(Some(
                f.children.iter().map(|c| (c.name.clone(), c.id)).collect(),
            ));
        }
        // Unreadable or invalid: the one before it (timestamps strictly decrease).
        at = prev.meta.timestamp.as_micros();
    }
}

/// Hands every event to `f` in time order (stable: at equal timestamps, certificate events
/// first), as the versions are read: memory holds the certificate events only.
pub fn for_each_event(
    realm: &Realm,
    mut f: impl FnMut(TimelineEvent) -> Result<(), ExportError>,
) -> Result<(), ExportError> {
    let mut certificates = certificate_events(realm);
    certificates.sort_by_key(|e| e.timestamp);
    let mut certificates = certificates.into_iter().peekable();
    realm.for_each_version_meta(|meta| {
        while let Some(c) = certificates.next_if(|c| c.timestamp <= meta.timestamp) {
            f(c)?;
        }
        let v = realm.load_version(meta)?;
        let mut e = event(v.meta.timestamp, "file", String::new());
        e.entry_id = Some(hex::encode(v.meta.vlob_id));
        e.version = Some(v.meta.version);
        e.key_index = Some(v.meta.key_index);
        e.author = Some(realm.describe_author(&v.meta.author));
        match &v.content {
            VersionContent::Readable(m) => {
                e.path = realm.path_of(&v.meta.vlob_id, v.meta.timestamp)?;
                match &**m {
                    Manifest::Folder(f) => {
                        e.kind = "folder";
                        let now: Vec<(EntryName, Id)> =
                            f.children.iter().map(|c| (c.name.clone(), c.id)).collect();
                        let before = children_before(realm, &v.meta.vlob_id, v.meta.timestamp)?;
                        e.description = describe_folder_change(
                            v.meta.version,
                            v.meta.vlob_id == realm.realm_id(),
                            before.as_deref(),
                            &now,
                        );
                    }
                    Manifest::File(f) => {
                        e.description = format!(
                            "file {} version {} ({} bytes, {} blocks)",
                            if v.meta.version == 1 {
                                "created,"
                            } else {
                                "updated,"
                            },
                            v.meta.version,
                            f.size,
                            f.blocks.len()
                        );
                    }
                }
            }
            VersionContent::Unreadable { .. } => {
                e.kind = "unreadable";
                e.readable = false;
                e.description = format!(
                    "version {} of entry {}: {}",
                    v.meta.version,
                    hex::encode(v.meta.vlob_id),
                    v.problem().unwrap_or_default()
                );
                if v.meta.vlob_id == realm.realm_id() {
                    e.path = Some("/".into());
                }
            }
            VersionContent::Invalid { reason } => {
                e.kind = "invalid";
                e.readable = false;
                e.description = format!(
                    "version {} of entry {} is INVALID: {reason}",
                    v.meta.version,
                    hex::encode(v.meta.vlob_id)
                );
            }
        }
        f(e)
    })?;
    for c in certificates {
        f(c)?;
    }
    Ok(())
}

fn describe_folder_change(
    version: u32,
    is_root: bool,
    before: Option<&[(EntryName, Id)]>,
    now: &[(EntryName, Id)],
) -> String {
    let what = if is_root { "workspace root" } else { "folder" };
    let Some(before) = before else {
        let names: Vec<&str> = now.iter().map(|(n, _)| n.as_str()).collect();
        return format!("{what} version {version}: children {names:?}");
    };
    let mut changes = Vec::new();
    for (name, id) in now {
        match before.iter().find(|(_, bid)| bid == id) {
            Some((old, _)) if old != name => changes.push(format!("renamed `{old}` -> `{name}`")),
            Some(_) => {}
            None => changes.push(format!("added `{name}`")),
        }
    }
    for (name, id) in before {
        if !now.iter().any(|(_, nid)| nid == id) {
            changes.push(format!("removed `{name}`"));
        }
    }
    if changes.is_empty() {
        changes.push("no change in children".into());
    }
    format!("{what} version {version}: {}", changes.join(", "))
}

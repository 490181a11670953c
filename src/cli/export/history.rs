//! `export history`: every version of one entry.

use std::io::Write;
use std::process::ExitCode;

use serde_json::json;

use sequester_custody::export::parse_id;
use sequester_custody::parsec::manifest::Manifest;

use super::options::KeyArgs;
use super::output::{context_json, entry_json, print_json, safe_line};
use super::unlock::{normalize, unlock_at};
use crate::cli::{CommandResult, GlobalOpts};

pub(crate) fn run(
    file: &std::path::Path,
    path: &str,
    args: &KeyArgs,
    at: Option<&str>,
    global: &GlobalOpts,
) -> CommandResult {
    let (realm, trust, t) = unlock_at(file, args, at, global)?;
    let (id, shown) = if let Some(hex_id) = path.strip_prefix("id:") {
        (
            parse_id(hex_id).map_err(anyhow::Error::msg)?,
            path.to_string(),
        )
    } else {
        let p = normalize(path);
        (realm.resolve(&p, t)?.meta.vlob_id, p)
    };
    let versions = realm.versions(&id)?;
    if global.json {
        print_json(&json!({
            "context": context_json(&realm, &trust, t),
            "path": shown,
            "id": hex::encode(id),
            "versions": versions.iter().map(|v| {
                let mut e = entry_json(&realm, &shown, v);
                e["user_id"] = json!(realm.organization().devices.get(&v.meta.author).map(|d| hex::encode(d.user_id)));
                e["path_at_version"] = json!(realm.path_of(&v.meta.vlob_id, v.meta.timestamp).ok().flatten());
                e
            }).collect::<Vec<_>>(),
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut o = std::io::stdout().lock();
    safe_line!(o, "History of {shown} (entry {}):", hex::encode(id))?;
    for v in &versions {
        let size = match v.manifest().map(|m| &**m) {
            Some(Manifest::File(f)) => format!("{} bytes", f.size),
            Some(Manifest::Folder(f)) => format!("{} children", f.children.len()),
            None => "-".into(),
        };
        let at_path = realm
            .path_of(&v.meta.vlob_id, v.meta.timestamp)?
            .map(|p| format!(" as {p}"))
            .unwrap_or_default();
        safe_line!(
            o,
            "  v{:<4} {}  key {:<3} {:<14} by {}{}{}",
            v.meta.version,
            v.meta.timestamp,
            v.meta.key_index,
            size,
            realm.describe_author(&v.meta.author),
            at_path,
            match v.problem() {
                Some(p) => format!(
                    "  [{}]",
                    p.replacen("encrypted", "UNREADABLE: encrypted", 1)
                ),
                None => "  [readable]".into(),
            }
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

//! `export info`: what the export holds, without the token.

use std::io::Write;
use std::process::ExitCode;

use serde_json::{json, Value};

use super::anchor::check_anchor;
use super::options::AnchorArgs;
use super::output::print_json;
use super::unlock::open;
use crate::cli::{CommandResult, GlobalOpts};

pub(crate) fn run(
    file: &std::path::Path,
    allow_incomplete: bool,
    anchor_args: &AnchorArgs,
    global: &GlobalOpts,
) -> CommandResult {
    let export = open(file, allow_incomplete)?;
    let trust = check_anchor(&export, anchor_args, global)?;
    let i = export.info();
    let counts = export.table_counts()?;
    // A broken authority certificate is reported, not fatal: the rest of `info` still helps.
    let (topic, topic_error) = match export.sequester_topic() {
        Ok(t) => (t, None),
        Err(e) => (None, Some(e.to_string())),
    };
    let access = export.sequester_access_rows()?;
    let org = export.organization()?;
    let certs = export.realm_certificates(&org)?;
    let range = export.time_range()?;
    let file_size = std::fs::metadata(file)?.len();
    let key_indexes: Vec<Value> = certs
        .rotations
        .values()
        .map(|r| {
            let services: Vec<String> = access
                .iter()
                .filter(|a| a.key_index == r.key_index)
                .map(|a| hex::encode(a.service_id))
                .collect();
            json!({"key_index": r.key_index, "rotated_at": r.timestamp,
                   "author": org.describe_device(&r.author), "services_with_access": services})
        })
        .collect();
    let services: Vec<Value> = topic
        .as_ref()
        .map(|t| {
            t.services
                .iter()
                .map(|s| {
                    let idx: Vec<u64> = access
                        .iter()
                        .filter(|a| a.service_id == s.service_id)
                        .map(|a| a.key_index)
                        .collect();
                    json!({"service_id": hex::encode(s.service_id), "label": s.label,
                       "status": if s.revoked.is_some() {"revoked"} else {"active"},
                       "created": s.created, "revoked": s.revoked,
                       "key_fingerprint": s.key_fingerprint, "key_bits": s.key_bits,
                       "access_key_indexes": idx})
                })
                .collect()
        })
        .unwrap_or_default();
    if global.json {
        print_json(&json!({
            "file": file.display().to_string(),
            "file_size": file_size,
            "trust": trust,
            "info": i,
            "complete": i.is_complete(),
            "sequestered": topic.is_some() || topic_error.is_some(),
            "sequester_error": topic_error,
            "sequester_authority": topic.as_ref().map(|t| json!({
                "created": t.authority_timestamp, "key_fingerprint": t.authority_key_fingerprint,
            })),
            "sequester_services": services,
            "sequester_problems": topic.as_ref().map(|t| t.problems.clone()).unwrap_or_default(),
            "key_indexes": key_indexes,
            "latest_key_index": certs.latest_key_index,
            "time_range": range.map(|(a, b)| json!({"from": a, "to": b})),
            "devices": org.devices.len(),
            "users": org.users.len(),
            "tables": counts.iter().map(|(t, n)| (t.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        }))?;
        return Ok(if topic_error.is_some() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        });
    }
    let mut o = std::io::stdout().lock();
    writeln!(o, "File:          {} ({file_size} bytes)", file.display())?;
    writeln!(o, "Organization:  {}", i.organization_id)?;
    writeln!(
        o,
        "Root key:      SHA-256 {} ({})",
        trust.root_key_fingerprint,
        if trust.anchored {
            format!("ANCHORED: matches {}", trust.anchored_by_text())
        } else {
            "NOT ANCHORED: no pin, --org or --root-key".to_string()
        }
    )?;
    writeln!(o, "Realm ID:      {}", hex::encode(i.realm_id))?;
    writeln!(o, "Snapshot:      {}", i.snapshot_timestamp)?;
    if let Some((from, to)) = range {
        writeln!(o, "Time range:    {from} .. {to}")?;
    }
    writeln!(
        o,
        "Complete:      {}",
        if i.is_complete() {
            "yes".to_string()
        } else {
            format!("NO (not done: {})", i.missing_parts().join(", "))
        }
    )?;
    writeln!(
        o,
        "Sizes:         vlobs {} bytes, blocks {} bytes (encrypted)",
        i.vlobs_total_bytes, i.blocks_total_bytes
    )?;
    writeln!(
        o,
        "Rows:          {}",
        counts
            .iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    writeln!(
        o,
        "Users/devices: {} users, {} devices verified",
        org.users.len(),
        org.devices.len()
    )?;
    match &topic {
        None if topic_error.is_some() => writeln!(
            o,
            "Sequester:     INVALID: {}",
            topic_error.as_deref().unwrap_or_default()
        )?,
        None => writeln!(
            o,
            "Sequester:     NOT SEQUESTERED (no sequester authority): no sequester service key can read this export"
        )?,
        Some(t) => {
            writeln!(
                o,
                "Sequester:     authority created {}, key SHA-256 {}",
                t.authority_timestamp, t.authority_key_fingerprint
            )?;
            for s in &t.services {
                let idx: Vec<u64> = access
                    .iter()
                    .filter(|a| a.service_id == s.service_id)
                    .map(|a| a.key_index)
                    .collect();
                writeln!(
                    o,
                    "  service {} `{}`: {} (created {}{}), RSA {} bits, key SHA-256 {}, access to key index(es) {:?}",
                    hex::encode(s.service_id),
                    s.label,
                    if s.revoked.is_some() { "REVOKED" } else { "active" },
                    s.created,
                    s.revoked.map(|r| format!(", revoked {r}")).unwrap_or_default(),
                    s.key_bits,
                    s.key_fingerprint,
                    idx
                )?;
            }
            for p in &t.problems {
                writeln!(o, "  problem: {p}")?;
            }
        }
    }
    writeln!(o, "Key indexes:   latest {}", certs.latest_key_index)?;
    for k in &key_indexes {
        writeln!(
            o,
            "  key index {}: rotated {} by {}; services with access: {}",
            k["key_index"],
            k["rotated_at"].as_str().unwrap_or(""),
            k["author"].as_str().unwrap_or(""),
            k["services_with_access"]
                .as_array()
                .map(|a| if a.is_empty() {
                    "none".to_string()
                } else {
                    a.iter()
                        .filter_map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default()
        )?;
    }
    Ok(if topic_error.is_some() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

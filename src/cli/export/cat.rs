//! `export cat`: a file's content at T on stdout, streamed.

use std::io::Write;
use std::process::ExitCode;

use anyhow::bail;
use serde_json::json;

use sequester_custody::export::{parallel, VersionContent};
use sequester_custody::parsec::manifest::Manifest;

use super::options::KeyArgs;
use super::output::{context_json, entry_json, print_json};
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
    let path = normalize(path);
    let v = realm.resolve(&path, t)?;
    let f = match (&v.content, v.manifest().map(|m| &**m)) {
        (_, Some(Manifest::File(f))) => f,
        (_, Some(Manifest::Folder(_))) => bail!("{path}: is a folder (at {t})"),
        (VersionContent::Unreadable { .. }, _) => bail!(
            "{path}: version {} at {t} is UNREADABLE: {} (an older version is NOT shown in its place)",
            v.meta.version,
            v.problem().unwrap_or_default()
        ),
        _ => bail!("{path}: version {} at {t}: {}", v.meta.version, v.problem().unwrap_or_default()),
    };
    if global.json {
        // JSON carries the content in base64: meant for small files (use `extract` otherwise).
        const JSON_MAX: u64 = 64 << 20;
        if f.size > JSON_MAX {
            bail!(
                "{path}: {} bytes is too large for `cat --json`; use `export extract`",
                f.size
            );
        }
        let data = realm
            .read_range_with(f, 0, f.size, parallel::default_threads())
            .map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        use base64::Engine;
        print_json(&json!({
            "context": context_json(&realm, &trust, t),
            "entry": entry_json(&realm, &path, &v),
            "sha256": sequester_custody::crypto::sha256_hex(&data),
            "content_base64": base64::engine::general_purpose::STANDARD.encode(&data),
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    // Stream block runs so that huge files do not sit in memory.
    const CHUNK: u64 = 8 << 20;
    let mut offset = 0;
    let threads = parallel::default_threads();
    while offset < f.size {
        let data = realm
            .read_range_with(f, offset, CHUNK, threads)
            .map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        out.write_all(&data)?;
        offset += data.len() as u64;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

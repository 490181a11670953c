//! Opening an export for a command: the partial-export warning, the anchor check, the token key
//! and the realm keys it recovers, the time of interest and path arguments.

use std::sync::Arc;

use anyhow::{bail, Context};

use sequester_custody::export::anchor::TrustReport;
use sequester_custody::export::{parse_id, ExportFile, OpenOptions, Realm, UnlockOptions};
use sequester_custody::parsec::DateTime;

use super::anchor::check_anchor;
use super::options::KeyArgs;
use crate::cli::GlobalOpts;

pub(crate) fn open(
    file: &std::path::Path,
    allow_incomplete: bool,
) -> anyhow::Result<Arc<ExportFile>> {
    let export = ExportFile::open(file, &OpenOptions { allow_incomplete })?;
    if !export.info().is_complete() {
        eprintln!(
            "WARNING: {} is a PARTIAL export (not done: {}); what follows may be missing data",
            file.display(),
            export.info().missing_parts().join(", ")
        );
    }
    Ok(export)
}

/// Opens the export, checks its anchor, opens the token key and runs the chain. Prints the
/// context to stderr.
pub(crate) fn unlock(
    file: &std::path::Path,
    args: &KeyArgs,
    global: &GlobalOpts,
) -> anyhow::Result<(Realm, TrustReport)> {
    let started = std::time::Instant::now();
    let export = open(file, args.allow_incomplete)?;
    let trust = check_anchor(&export, &args.anchor, global)?;
    let opened = started.elapsed();
    let service_id = args
        .service_id
        .as_deref()
        .map(parse_id)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    // Checked before touching the token: a non-sequestered export needs no PIN.
    if export.sequester_topic()?.is_none() {
        return Err(sequester_custody::export::ExportError::NotSequestered.into());
    }
    let key = sequester_custody::token::open_key(&args.key, crate::cli::token::terminal())
        .context("opening the service key")?;
    let key_opened = started.elapsed();
    let realm = export.unlock(key.as_ref(), &UnlockOptions { service_id })?;
    if global.verbose > 0 && !global.json {
        eprintln!(
            "Timings: export opened in {:.1} ms, token key opened in {:.1} ms, chain verified and \
             keys recovered in {:.1} ms",
            opened.as_secs_f64() * 1e3,
            (key_opened - opened).as_secs_f64() * 1e3,
            (started.elapsed() - key_opened).as_secs_f64() * 1e3
        );
    }
    let r = realm.recovery();
    let service = realm.service();
    if !global.json {
        eprintln!(
            "Service `{}` ({}){}; token operations: {}; realm keys obtained: {:?} of {}",
            service.label,
            hex::encode(service.service_id),
            service
                .revoked
                .map(|t| format!(", revoked {t}"))
                .unwrap_or_default(),
            r.token_operations,
            r.obtained_key_indexes,
            realm.latest_key_index(),
        );
        if global.verbose > 0 {
            if let Some(m) = r.mechanism {
                eprintln!("Token mechanism: {m}");
            }
            for p in &r.problems {
                eprintln!("note: {p}");
            }
        }
        if r.obtained_key_indexes.is_empty() {
            eprintln!("{}", nothing_readable_message(&realm));
        } else if !r.missing_key_indexes.is_empty() {
            let (unusable, never): (Vec<u64>, Vec<u64>) = r
                .missing_key_indexes
                .iter()
                .partition(|k| r.unusable_key_indexes.contains_key(k));
            if !never.is_empty() {
                eprintln!(
                    "Note: data encrypted with key index(es) {never:?} is not readable by this \
                     service (it was never given those keys); such entries are shown as \
                     UNREADABLE."
                );
            }
            if !unusable.is_empty() {
                eprintln!(
                    "WARNING: key index(es) {unusable:?} were given to this service but their \
                     keys-bundle access or bundle is unusable (damaged or forged, see the notes \
                     above); such entries are shown as UNREADABLE."
                );
            }
        }
    }
    Ok((realm, trust))
}

fn nothing_readable_message(realm: &Realm) -> String {
    let r = realm.recovery();
    if realm.latest_key_index() == 0 {
        "NOTHING IS READABLE: this export has no valid key rotation certificate, so no realm key \
         can be checked (see the certificate problems with `export verify`)."
            .to_string()
    } else if r.access_key_indexes.is_empty() {
        format!(
            "NOTHING IS READABLE with this key: service `{}` has no keys bundle access in this \
             export (it received no key rotation while active), so no realm key could be \
             recovered (0 token operations).",
            realm.service().label
        )
    } else {
        format!(
            "NOTHING IS READABLE with this key: the access rows for key index(es) {:?} did not \
             yield a usable realm key ({}).",
            r.access_key_indexes,
            r.problems.join("; ")
        )
    }
}

/// [`unlock`] for a command showing one instant: `--at` (never after the snapshot; default the
/// snapshot). A malformed `--at` is refused before the token is used.
pub(crate) fn unlock_at(
    file: &std::path::Path,
    args: &KeyArgs,
    at: Option<&str>,
    global: &GlobalOpts,
) -> anyhow::Result<(Realm, TrustReport, DateTime)> {
    let at = at
        .map(|at| DateTime::parse_rfc3339(at).map_err(anyhow::Error::msg))
        .transpose()?;
    let (realm, trust) = unlock(file, args, global)?;
    let snapshot = realm.snapshot();
    let t = at.unwrap_or(snapshot);
    if t > snapshot {
        bail!(
            "--at {t} is after the export's snapshot time {snapshot}: the export knows nothing \
             after it"
        );
    }
    Ok((realm, trust, t))
}

pub(crate) fn normalize(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    format!("/{}", parts.join("/"))
}

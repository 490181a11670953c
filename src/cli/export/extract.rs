//! `export extract`: the tree at T written to a new folder, with its custody record.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use serde_json::json;

use sequester_custody::export::extract::{self, CustodyRecord, ExtractOptions, Progress};
use sequester_custody::export::{parallel, verify};
use sequester_custody::parsec::DateTime;

use super::options::KeyArgs;
use super::output::{print_json, safe_println};
use super::unlock::{normalize, unlock_at};
use crate::cli::{CommandResult, GlobalOpts};

struct Bar(Option<indicatif::ProgressBar>);

impl Progress for Bar {
    fn start(&self, total: u64) {
        if let Some(b) = &self.0 {
            b.set_length(total);
        }
    }
    fn advance(&self, bytes: u64) {
        if let Some(b) = &self.0 {
            b.inc(bytes);
        }
    }
    fn grow(&self, bytes: u64) {
        if let Some(b) = &self.0 {
            b.inc_length(bytes);
        }
    }
    fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

fn custody_path(dest: &std::path::Path) -> PathBuf {
    let mut name = dest
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".custody.json");
    dest.with_file_name(name)
}

#[allow(clippy::too_many_arguments)] // one parameter per CLI option
pub(crate) fn run(
    file: &std::path::Path,
    dest: &std::path::Path,
    path: &str,
    args: &KeyArgs,
    at: Option<&str>,
    threads: Option<usize>,
    mode_from_umask: bool,
    global: &GlobalOpts,
) -> CommandResult {
    let dest = dest.to_path_buf();
    if dest.file_name().is_none() {
        bail!("{}: not a valid destination directory name", dest.display());
    }
    let record_path = custody_path(&dest);
    if dest.symlink_metadata().is_ok() {
        bail!(
            "{} already exists; extraction needs a new destination",
            dest.display()
        );
    }
    if record_path.symlink_metadata().is_ok() {
        bail!(
            "{} already exists; refusing to overwrite a custody record",
            record_path.display()
        );
    }
    let (realm, trust, t) = unlock_at(file, args, at, global)?;
    let path = normalize(path);
    let bar = if !global.json && std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Bar(Some(b))
    } else {
        Bar(None)
    };
    let options = ExtractOptions {
        at: t,
        path: path.clone(),
        threads: threads.unwrap_or_else(parallel::default_threads),
        cancel: Some(install_interrupt_flag()),
        file_mode: if mode_from_umask {
            0o666
        } else {
            extract::PRIVATE_FILE_MODE
        },
        dir_mode: if mode_from_umask {
            0o777
        } else {
            extract::PRIVATE_DIR_MODE
        },
    };
    // The export's own SHA-256 (for the record) is computed alongside the extraction: one more
    // core's worth of work that would otherwise come first.
    // It stops as soon as the extraction is interrupted or fails (no wait for a full pass).
    let extraction_over = std::sync::atomic::AtomicBool::new(false);
    // The record's per-entry lists are spooled beside it as entries complete (bounded memory).
    let record_dir = record_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf();
    let mut record_writer = extract::CustodyRecordWriter::new(&record_dir)?;
    let (extracted, hashed) = std::thread::scope(|scope| {
        let interrupted = options.cancel;
        let stop = &extraction_over;
        let realm = &realm;
        let hasher = scope.spawn(move || {
            let mut flags = vec![stop];
            flags.extend(interrupted);
            extract::export_sha256_unless(realm, &flags)
        });
        let extracted = extract::extract_to(realm, &dest, &options, &bar, &mut record_writer);
        if extracted.is_err() {
            extraction_over.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        (extracted, hasher.join())
    });
    let report = match extracted {
        Ok(r) => r,
        Err(sequester_custody::export::ExportError::Interrupted) => {
            bar.finish();
            eprintln!("interrupted: nothing was written to {}", dest.display());
            return Ok(ExitCode::from(130));
        }
        Err(e) => return Err(e.into()),
    };
    let (export_sha256, export_size) = match hashed {
        Ok(Ok(h)) => h,
        Ok(Err(sequester_custody::export::ExportError::Interrupted)) => {
            // Ctrl-C after the extraction, while the export was still being hashed.
            let _ = std::fs::remove_dir_all(&dest);
            bar.finish();
            eprintln!("interrupted: nothing was written to {}", dest.display());
            return Ok(ExitCode::from(130));
        }
        Ok(Err(e)) => {
            let _ = std::fs::remove_dir_all(&dest);
            return Err(e.into());
        }
        Err(_) => {
            let _ = std::fs::remove_dir_all(&dest);
            bail!("hashing the export file failed");
        }
    };
    let service = realm.service();
    let record = CustodyRecord {
        tool: "sequester-custody".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        created_at: DateTime::now(),
        export_file: std::fs::canonicalize(file)?.display().to_string(),
        export_sha256: export_sha256.clone(),
        export_size,
        organization_id: realm.info().organization_id.clone(),
        realm_id: realm.realm_id(),
        realm_name: realm.realm_name_at(t).to_string(),
        snapshot_timestamp: realm.snapshot(),
        export_complete: realm.info().is_complete(),
        time_of_interest: t,
        extracted_path: path.clone(),
        destination: std::fs::canonicalize(&dest)?.display().to_string(),
        service_id: service.service_id,
        service_label: service.label.clone(),
        service_revoked: service.revoked,
        key_fingerprint_sha256: realm.token_key_fingerprint().to_string(),
        trust_anchor: trust.clone(),
        token: realm.token().clone(),
        token_operations: realm.token_operations(),
        realm_key_indexes_obtained: realm.recovery().obtained_key_indexes.clone(),
        realm_key_indexes_missing: realm.recovery().missing_key_indexes.clone(),
        files_extracted: report.files,
        bytes_extracted: report.bytes,
    };
    let problems = verify::export_problems(&realm);
    let unreadable_sample = std::mem::take(&mut record_writer.unreadable_sample);
    if let Err(e) = record_writer.publish(&record_path, &record, &problems) {
        // No tree without its record: undo the extraction.
        let _ = std::fs::remove_dir_all(&dest);
        return Err(e.into());
    }
    if global.json {
        // The record itself is in the custody file: the per-entry lists are not repeated here
        // (they would cost memory per entry), only the first unreadable entries and the counts.
        print_json(&json!({
            "destination": dest.display().to_string(),
            "custody_record": record_path.display().to_string(),
            "record": record,
            "folders_extracted": report.folders,
            "unreadable_total": report.unreadable,
            "unreadable": unreadable_sample,
            "problems": problems,
        }))?;
    } else {
        safe_println!(
            "Extracted {} file(s), {} folder(s), {} bytes of `{}` as of {t} to {}",
            report.files,
            report.folders,
            report.bytes,
            realm.realm_name_at(t),
            dest.display()
        );
        if report.unreadable > 0 {
            safe_println!("{} entr(y/ies) NOT extracted:", report.unreadable);
            for u in &unreadable_sample {
                safe_println!("  {} ({}, v{}): {}", u.path, u.kind, u.version, u.reason);
            }
            if report.unreadable > unreadable_sample.len() as u64 {
                safe_println!(
                    "  ... and {} more: see the custody record",
                    report.unreadable - unreadable_sample.len() as u64
                );
            }
        }
        if !problems.is_empty() {
            safe_println!(
                "{} problem(s) of the export as a whole (see `export verify`):",
                problems.len()
            );
            for p in &problems {
                safe_println!("  [{}] {}", p.kind, p.reason);
            }
        }
        safe_println!("Custody record: {}", record_path.display());
        safe_println!("Export SHA-256: {export_sha256}");
    }
    Ok(ExitCode::SUCCESS)
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    // Async-signal-safe: only an atomic store.
    INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// SIGINT / SIGTERM set a flag that the extraction polls, so that an interrupted run removes its
/// temporary tree instead of leaving it behind.
fn install_interrupt_flag() -> &'static std::sync::atomic::AtomicBool {
    let handler = on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
    &INTERRUPTED
}

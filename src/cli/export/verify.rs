//! `export verify`: every signature and digest reachable with the key, and the anchor.

use std::io::Write;
use std::process::ExitCode;

use serde_json::json;

use sequester_custody::export::anchor;
use sequester_custody::export::{parallel, verify};

use super::options::KeyArgs;
use super::output::{context_json, print_json, safe_line};
use super::unlock::unlock;
use crate::cli::{CommandResult, GlobalOpts};

pub(crate) fn run(file: &std::path::Path, args: &KeyArgs, global: &GlobalOpts) -> CommandResult {
    let (realm, trust) = unlock(file, args, global)?;
    let report = verify::verify(&realm, parallel::default_threads())?;
    // Problems outrank the missing anchor: exit 2 whether anchored or not.
    let consistent = report.ok();
    let (result, code) = match (consistent, trust.anchored) {
        (false, _) => ("problems", 2),
        (true, false) => ("not_anchored", anchor::EXIT_NOT_ANCHORED),
        (true, true) => ("ok", 0),
    };
    if global.json {
        print_json(&json!({
            "context": context_json(&realm, &trust, realm.snapshot()),
            "ok": code == 0,
            "consistent": consistent,
            "anchored": trust.anchored,
            "result": result,
            "report": report,
        }))?;
    } else {
        let mut o = std::io::stdout().lock();
        safe_line!(
            o,
            "Entries:   {} ({} folders, {} files seen readable)",
            report.entries,
            report.folders,
            report.files
        )?;
        safe_line!(
            o,
            "Versions:  {} ({} readable and verified, {} unreadable by this service, {} invalid)",
            report.versions,
            report.readable_versions,
            report.unreadable_versions,
            report.invalid_versions
        )?;
        for (k, n) in &report.unreadable_versions_by_key_index {
            let why = match realm.key_unusable(*k) {
                Some(_) => {
                    "whose keys-bundle access for this service is present but unusable \
                            (damaged or forged, see the problems below)"
                }
                None => "which this service was never given",
            };
            safe_line!(o, "           {n} version(s) need key index {k}, {why}")?;
        }
        safe_line!(
            o,
            "Blocks:    {} verified ({} bytes), {} unreadable by this service",
            report.blocks_checked,
            report.block_bytes_checked,
            report.blocks_unreadable
        )?;
        safe_line!(o, "Token operations: {}", realm.token_operations())?;
        if consistent && trust.anchored {
            safe_line!(
                o,
                "Result:    OK — every signature and digest reachable with this key verifies, \
                 from the root key anchored by {}",
                trust.anchored_by_text()
            )?;
        } else if consistent {
            writeln!(
                o,
                "Result:    NOT ANCHORED — internally consistent (every signature and digest \
                 reachable with this key verifies against the root key the export carries), but \
                 nothing ties that root key to the organisation: a forged export would look the \
                 same."
            )?;
            safe_line!(o, "           {}", trust.how_to_pin())?;
        } else {
            safe_line!(o, "Result:    {} PROBLEM(S)", report.problems_total)?;
            for p in &report.problems {
                safe_line!(o, "{}", problem_line(p))?;
            }
            if report.problems_total > report.problems.len() as u64 {
                safe_line!(
                    o,
                    "           ... and {} more (only the first {} are kept)",
                    report.problems_total - report.problems.len() as u64,
                    verify::MAX_KEPT_PROBLEMS
                )?;
            }
        }
        if !consistent && !trust.anchored {
            safe_line!(o, "Also NOT ANCHORED: {}", trust.how_to_pin())?;
        }
        if !report.notices.is_empty() {
            safe_line!(
                o,
                "Notices:   {} listed entr{} NOT SHOWN by listings and extraction (not counted \
                 as problems: Parsec's client skips them too):",
                report.notices_total,
                if report.notices_total == 1 {
                    "y is"
                } else {
                    "ies are"
                }
            )?;
            for p in &report.notices {
                safe_line!(o, "{}", problem_line(p))?;
            }
        }
    }
    Ok(ExitCode::from(code))
}

/// One indented line of a `verify` problem or notice: where, which version, when, by whom, why.
fn problem_line(p: &verify::Problem) -> String {
    let location = match (&p.path, &p.entry_id) {
        (Some(path), Some(id)) => format!("{path} (entry {id})"),
        (None, Some(id)) => format!("entry {id}"),
        (Some(path), None) => path.clone(),
        (None, None) => String::new(),
    };
    let details = format!(
        "{location}{}{}{}",
        p.version.map(|v| format!(" v{v}")).unwrap_or_default(),
        p.timestamp.map(|t| format!(" at {t}")).unwrap_or_default(),
        p.author
            .as_deref()
            .map(|a| format!(" by {a}"))
            .unwrap_or_default(),
    );
    if details.is_empty() {
        format!("  [{}] {}", p.kind, p.reason)
    } else {
        format!("  [{}] {details}: {}", p.kind, p.reason)
    }
}

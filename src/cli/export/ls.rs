//! `export ls`: a folder (or a tree with -R) as it was at T, streamed.

use std::io::Write;
use std::process::ExitCode;

use anyhow::bail;
use serde_json::{json, Value};

use sequester_custody::export::walk::{self, Walk, WalkProblem, WalkStep};
use sequester_custody::export::{terminal, EntryVersion};

use super::options::KeyArgs;
use super::output::{context_json, entry_json, entry_line, print_json};
use super::unlock::{normalize, unlock_at};
use crate::cli::{CommandResult, GlobalOpts};

pub(crate) fn run(
    file: &std::path::Path,
    path: &str,
    args: &KeyArgs,
    at: Option<&str>,
    long: bool,
    recursive: bool,
    global: &GlobalOpts,
) -> CommandResult {
    let (realm, trust, t) = unlock_at(file, args, at, global)?;
    let path = normalize(path);
    let start = match realm.resolve(&path, t) {
        Ok(v) => v,
        Err(sequester_custody::export::ExportError::NoSuchPath(_)) if path == "/" => {
            let first = realm.file().time_range()?.map(|(a, _)| a);
            bail!(
                "the workspace did not exist yet at {t}{}",
                first
                    .map(|f| format!(" (its first version is at {f})"))
                    .unwrap_or_default()
            );
        }
        Err(e) => return Err(e.into()),
    };
    if start.manifest().is_none() {
        // The path itself is unreadable or invalid: say so, exit non-zero.
        if global.json {
            print_json(
                &json!({"context": context_json(&realm, &trust, t), "path": path,
                               "entry": entry_json(&realm, &path, &start)}),
            )?;
        } else {
            println!(
                "{}",
                terminal::escape(&entry_line(&realm, &path, &start, long))
            );
        }
        return Ok(ExitCode::from(2));
    }
    // Printed as the walk goes (bounded memory whatever the tree's size): text lines in walk
    // order, problems where the entry was listed; with --json, one document whose `entries`
    // array is streamed and whose `problems` keeps the first MAX_LISTED_PROBLEMS (with
    // `problems_total`).
    let mut o = std::io::BufWriter::new(std::io::stdout().lock());
    let shown = |p: &str| -> String {
        if recursive {
            p.to_string()
        } else {
            p.rsplit('/').next().unwrap_or(p).to_string()
        }
    };
    if global.json {
        let head = sequester_custody::export::json_object_head(
            &json!({"context": context_json(&realm, &trust, t), "path": path}),
        )?;
        write!(o, "{head},\n  \"entries\": [")?;
    } else {
        eprintln!(
            "{}",
            terminal::escape(&format!(
                "Workspace `{}` ({}) as of {t}",
                realm.realm_name_at(t),
                hex::encode(realm.realm_id())
            ))
        );
    }
    let mut entries = 0u64;
    let mut unreadable = 0u64;
    let mut strays = 0u64;
    let mut problems_total = 0u64;
    let mut problems: Vec<Value> = Vec::new();
    let mut entry = |o: &mut dyn Write, p: &str, v: &EntryVersion| -> anyhow::Result<()> {
        if v.manifest().is_none() {
            unreadable += 1;
        }
        if global.json {
            let sep = if entries == 0 { "\n    " } else { ",\n    " };
            write!(
                o,
                "{sep}{}",
                serde_json::to_string(&entry_json(&realm, p, v))?
            )?;
        } else {
            writeln!(
                o,
                "{}",
                terminal::escape(&entry_line(&realm, &shown(p), v, long))
            )?;
        }
        entries += 1;
        Ok(())
    };
    if start.folder().is_some() {
        // Depth-first, children in name order, through the shared walk rules.
        let depth = if recursive { walk::MAX_DEPTH } else { 0 };
        let mut walk = Walk::new(&realm, t, &path, start, depth);
        while let Some(step) = walk.next_step()? {
            match step {
                WalkStep::Entry(e) => entry(&mut o, &e.path, &e.child.version)?,
                WalkStep::Problem(p) => {
                    problems_total += 1;
                    if p.rule == walk::WalkRule::ParentMismatch {
                        strays += 1;
                    }
                    if global.json {
                        if problems.len() < MAX_LISTED_PROBLEMS {
                            problems.push(problem_json(&p));
                        }
                    } else {
                        let text = format!("{}  [NOT SHOWN: {}]", shown(&p.path), p.reason);
                        writeln!(o, "{}", terminal::escape(&text))?;
                    }
                }
            }
        }
    } else {
        entry(&mut o, &path, &start)?;
    }
    if global.json {
        let problems = serde_json::to_string_pretty(&problems)?.replace('\n', "\n  ");
        let close = if entries == 0 { "]" } else { "\n  ]" };
        writeln!(
            o,
            "{close},\n  \"unreadable_entries\": {unreadable},\n  \"problems\": {problems},\n  \
             \"problems_total\": {problems_total}\n}}"
        )?;
        o.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    o.flush()?;
    drop(o);
    if unreadable > 0 {
        eprintln!(
            "{unreadable} entr{} UNREADABLE with this service's keys",
            if unreadable == 1 { "y is" } else { "ies are" }
        );
    }
    let entries = |n: u64| if n == 1 { "y is" } else { "ies are" };
    if strays > 0 {
        eprintln!(
            "{strays} listed entr{} NOT SHOWN: their manifest names another parent folder \
             (Parsec's client skips them too; see above)",
            entries(strays)
        );
    }
    if problems_total > strays {
        eprintln!(
            "{} listed entr{} NOT SHOWN: the export's tree structure is inconsistent (see above)",
            problems_total - strays,
            entries(problems_total - strays)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Problems kept in memory for one JSON listing (the rest are counted).
const MAX_LISTED_PROBLEMS: usize = 10_000;

fn problem_json(p: &WalkProblem) -> Value {
    json!({
        "path": p.path,
        "id": hex::encode(p.id),
        "version": p.version,
        "rule": p.rule,
        "reason": p.reason,
    })
}

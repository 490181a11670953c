//! `export timeline`: every change in time order, streamed.

use std::io::Write;
use std::process::ExitCode;

use serde_json::json;

use sequester_custody::export::{terminal, timeline};

use super::options::KeyArgs;
use super::output::context_json;
use super::unlock::unlock;
use crate::cli::{CommandResult, GlobalOpts};

pub(crate) fn run(file: &std::path::Path, args: &KeyArgs, global: &GlobalOpts) -> CommandResult {
    let (realm, trust) = unlock(file, args, global)?;
    // Printed as the versions are read (bounded memory whatever the number of versions); with
    // --json, one document whose `events` array is streamed.
    let mut o = std::io::BufWriter::new(std::io::stdout().lock());
    if global.json {
        let head = sequester_custody::export::json_object_head(
            &json!({"context": context_json(&realm, &trust, realm.snapshot())}),
        )?;
        write!(o, "{head},\n  \"events\": [")?;
    }
    let mut n = 0u64;
    let streamed = timeline::for_each_event(&realm, |e| {
        let written = if global.json {
            let sep = if n == 0 { "\n    " } else { ",\n    " };
            serde_json::to_string(&e)
                .map_err(std::io::Error::other)
                .and_then(|j| write!(o, "{sep}{j}"))
        } else {
            let line = format!(
                "{}  {:<20} {}{}{}",
                e.timestamp,
                e.kind,
                e.path
                    .as_deref()
                    .map(|p| format!("{p}: "))
                    .unwrap_or_default(),
                e.description,
                e.author
                    .as_deref()
                    .map(|a| format!("  (by {a})"))
                    .unwrap_or_default()
            );
            writeln!(o, "{}", terminal::escape(&line))
        };
        n += 1;
        written
            .map_err(|e| sequester_custody::export::ExportError::Io(format!("cannot write: {e}")))
    });
    streamed?;
    if global.json {
        let close = if n == 0 { "]" } else { "\n  ]" };
        writeln!(o, "{close}\n}}")?;
    }
    o.flush()?;
    Ok(ExitCode::SUCCESS)
}

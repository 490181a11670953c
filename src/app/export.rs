//! `export` commands.

use super::{CommandResult, GlobalOpts};

#[derive(Debug, clap::Subcommand)]
pub enum ExportCommand {
    /// Not implemented yet.
    Todo,
}

pub fn run(cmd: ExportCommand, _global: &GlobalOpts) -> CommandResult {
    match cmd {
        ExportCommand::Todo => anyhow::bail!("not implemented yet"),
    }
}

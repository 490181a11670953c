//! `ceremony` commands.

use super::{CommandResult, GlobalOpts};

#[derive(Debug, clap::Subcommand)]
pub enum CeremonyCommand {
    /// Not implemented yet.
    Todo,
}

pub fn run(cmd: CeremonyCommand, _global: &GlobalOpts) -> CommandResult {
    match cmd {
        CeremonyCommand::Todo => anyhow::bail!("not implemented yet"),
    }
}

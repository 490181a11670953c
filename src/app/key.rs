//! `key` commands.

use super::{CommandResult, GlobalOpts};

#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// Not implemented yet.
    Todo,
}

pub fn run(cmd: KeyCommand, _global: &GlobalOpts) -> CommandResult {
    match cmd {
        KeyCommand::Todo => anyhow::bail!("not implemented yet"),
    }
}

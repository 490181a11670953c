//! `token` commands.

use super::{CommandResult, GlobalOpts};

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Not implemented yet.
    Todo,
}

pub fn run(cmd: TokenCommand, _global: &GlobalOpts) -> CommandResult {
    match cmd {
        TokenCommand::Todo => anyhow::bail!("not implemented yet"),
    }
}

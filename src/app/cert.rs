//! `cert` commands.

use super::{CommandResult, GlobalOpts};

#[derive(Debug, clap::Subcommand)]
pub enum CertCommand {
    /// Not implemented yet.
    Todo,
}

pub fn run(cmd: CertCommand, _global: &GlobalOpts) -> CommandResult {
    match cmd {
        CertCommand::Todo => anyhow::bail!("not implemented yet"),
    }
}

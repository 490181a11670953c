//! Command implementations behind the thin binary (`src/main.rs`): each area has a clap
//! `Subcommand` enum and a `run` function. This is the binary's edge, so `anyhow` is used here and
//! nowhere below.

pub mod assets;
pub mod ceremony;
pub mod cert;
pub mod doctor;
pub mod export;
pub mod generate;
pub mod key;
mod key_yubikey;
pub mod mount;
pub mod token;

use std::process::ExitCode;

/// Options every command accepts.
#[derive(Debug, Clone, Copy, Default)]
pub struct GlobalOpts {
    /// Machine-readable output on stdout.
    pub json: bool,
    /// `-v` count: 1 shows mechanism paths and timings, 2 adds debug detail.
    pub verbose: u8,
}

pub type CommandResult = anyhow::Result<ExitCode>;

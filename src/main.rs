//! The `sequester-custody` binary: parses arguments, runs the command, prints errors.
//! The commands live in `src/cli/` (binary only); the work they do lives in the library.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
mod cli;

use cli::GlobalOpts;

/// Parsec sequester keys in hardware: key ceremonies and realm export investigation through a
/// PKCS#11 token or a YubiKey.
#[derive(Debug, Parser)]
#[command(name = "sequester-custody", version, about)]
struct Cli {
    /// Machine-readable JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// More detail (mechanisms, timings, key attributes); `-vv` adds debug lines to
    /// `export mount` (inode table size).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Tokens: list modules and tokens, show one.
    #[command(subcommand)]
    Token(cli::token::TokenCommand),
    /// Keys on tokens: generate, list, show, import, test.
    #[command(subcommand)]
    Key(cli::key::KeyCommand),
    /// Parsec sequester service and revocation certificates.
    #[command(subcommand)]
    Cert(cli::cert::CertCommand),
    /// Ceremony transcripts and plans.
    #[command(subcommand)]
    Ceremony(cli::ceremony::CeremonyCommand),
    /// Read a realm export: info, verify, ls, cat, history, timeline, extract, mount.
    #[command(subcommand)]
    Export(cli::export::ExportCommand),
    /// Organisation trust anchors: pin, list and unpin root verify keys.
    #[command(subcommand)]
    Org(cli::org::OrgCommand),
    /// Check this machine: pcscd and readers, PKCS#11 modules and tokens, FUSE, clock, files.
    Doctor(cli::doctor::DoctorArgs),
    /// Write the man pages and shell completions of this CLI (Debian package build).
    #[command(name = "generate-assets", hide = true)]
    GenerateAssets(cli::assets::AssetsArgs),
}

fn main() -> ExitCode {
    restore_default_sigpipe();
    if let Err(e) = cli::forbid_core_dumps() {
        eprintln!("warning: cannot disable core dumps: {e}");
    }
    let cli = Cli::parse();
    let global = GlobalOpts {
        json: cli.json,
        verbose: cli.verbose,
    };
    let result = match cli.command {
        Command::Token(cmd) => cli::token::run(cmd, &global),
        Command::Key(cmd) => cli::key::run(cmd, &global),
        Command::Cert(cmd) => cli::cert::run(cmd, &global),
        Command::Ceremony(cmd) => cli::ceremony::run(cmd, &global),
        Command::Export(cmd) => cli::export::run(cmd, &global),
        Command::Org(cmd) => cli::org::run(cmd, &global),
        Command::Doctor(args) => cli::doctor::run(args, &global),
        Command::GenerateAssets(args) => cli::assets::run(args, Cli::command()),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            let mut source = err.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            // A trust-anchor mismatch has its own documented exit code (docs/investigation.md).
            ExitCode::from(
                err.downcast_ref::<sequester_custody::export::anchor::AnchorError>()
                    .map_or(1, |e| e.exit_code()),
            )
        }
    }
}

/// Rust ignores SIGPIPE, so `println!` panics when stdout is closed early
/// (`sequester-custody export ls … | head`). A command-line tool should simply stop, as `ls` does.
fn restore_default_sigpipe() {
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL is a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

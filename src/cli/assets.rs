//! `generate-assets DIR` (hidden): man pages and shell completions generated from the binary's
//! own clap definition, so they can never describe another version of the CLI. The Debian
//! package (scripts/deb.sh) installs what this writes:
//!
//!   DIR/man/sequester-custody.1, sequester-custody-export.1, sequester-custody-export-ls.1, …
//!   DIR/completions/sequester-custody.bash, _sequester-custody (zsh), sequester-custody.fish

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap_complete::Shell;

use super::CommandResult;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct AssetsArgs {
    /// Directory to write `man/` and `completions/` into (created if missing).
    pub(crate) dir: PathBuf,
}

/// Writes one man page per (non-hidden) command and subcommand, and the bash, zsh and fish
/// completions, for `cmd` (the binary's `Cli::command()`).
pub(crate) fn run(args: AssetsArgs, cmd: clap::Command) -> CommandResult {
    let man = args.dir.join("man");
    let completions = args.dir.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    clap_mangen::generate_to(cmd.clone(), &man)
        .with_context(|| format!("writing man pages to {}", man.display()))?;
    let name = cmd.get_name().to_string();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = cmd.clone();
        clap_complete::generate_to(shell, &mut cmd, &name, &completions)
            .with_context(|| format!("writing {shell} completion to {}", completions.display()))?;
    }
    let pages = count(&man)?;
    eprintln!(
        "wrote {pages} man pages to {} and bash/zsh/fish completions to {}",
        man.display(),
        completions.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn count(dir: &Path) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "1"))
        .count())
}

//! `export` commands: read a realm export through the token, one module per command.
//!
//! Output: human text on stdout (file content only for `cat`), context and warnings on stderr;
//! `--json` puts one JSON document on stdout. Shared pieces: `options` (clap arguments),
//! `anchor` (trust-anchor check), `unlock` (opening the export, recovering the realm keys),
//! `output` (JSON and escaped text).

mod anchor;
mod cat;
mod extract;
mod history;
mod info;
mod ls;
#[cfg(feature = "mount")]
mod mount;
mod options;
mod output;
mod timeline;
mod unlock;
mod verify;

use std::path::PathBuf;

use options::{AnchorArgs, KeyArgs};

use super::{CommandResult, GlobalOpts};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ExportCommand {
    /// Organisation, realm, snapshot, sizes, completeness, sequester services and key indexes (no
    /// key needed).
    Info {
        /// The realm export (opened read-only; never modified).
        file: PathBuf,
        /// Read an export whose `*_done` flags are not all set.
        #[arg(long)]
        allow_incomplete: bool,
        #[command(flatten)]
        anchor: AnchorArgs,
    },
    /// Verify every signature and block digest reachable with the key; exit 0 only if nothing is
    /// wrong AND the root key is anchored (pin, --org or --root-key); 2 = problems found, 3 =
    /// consistent but not anchored, 4 = the anchor does not match.
    Verify {
        /// The realm export (opened read-only; never modified).
        file: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// List a folder as it was at T.
    Ls {
        /// The realm export (opened read-only; never modified).
        file: PathBuf,
        /// Folder (or file) path inside the workspace; default `/`.
        path: Option<String>,
        #[command(flatten)]
        key: KeyArgs,
        /// Time of interest (RFC 3339); default: the snapshot time.
        #[arg(long)]
        at: Option<String>,
        /// Long format: kind, size, version, key index, modification time, author.
        #[arg(short = 'l')]
        long: bool,
        /// Recursive.
        #[arg(short = 'R')]
        recursive: bool,
    },
    /// Write a file's content at T to stdout.
    Cat {
        /// The realm export (opened read-only; never modified).
        file: PathBuf,
        /// File path inside the workspace.
        path: String,
        #[command(flatten)]
        key: KeyArgs,
        /// Time of interest (RFC 3339); default: the snapshot time.
        #[arg(long)]
        at: Option<String>,
    },
    /// Every version of an entry (found by its path at T, or `id:<hex>`).
    History {
        /// The realm export (opened read-only; never modified).
        file: PathBuf,
        /// Path inside the workspace, or `id:<32 hex digits>` (the entry ID).
        path: String,
        #[command(flatten)]
        key: KeyArgs,
        /// Time at which PATH is resolved; default: the snapshot time.
        #[arg(long)]
        at: Option<String>,
    },
    /// Every change in time order.
    Timeline {
        /// The realm export (opened read-only; never modified).
        file: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Write the tree at T to DEST (atomically) and DEST.custody.json beside it.
    Extract {
        /// The realm export (opened read-only; never modified).
        file: PathBuf,
        /// New destination folder (must not exist).
        dest: PathBuf,
        /// Sub-tree to extract; default `/`.
        path: Option<String>,
        #[command(flatten)]
        key: KeyArgs,
        /// Time of interest (RFC 3339); default: the snapshot time.
        #[arg(long)]
        at: Option<String>,
        /// Worker threads decrypting blocks (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Create files and folders with the usual modes (0666/0777 minus the umask) instead of
        /// owner-only 0600/0700.
        #[arg(long)]
        mode_from_umask: bool,
    },
    /// Mount the workspace read-only (FUSE) as it was at T; `/.history/<T>/` for other instants.
    #[cfg(feature = "mount")]
    Mount(mount::MountArgs),
    /// NOT IN THIS BUILD: the FUSE mount needs the `mount` cargo feature (rebuild with
    /// `--features mount`).
    #[cfg(not(feature = "mount"))]
    Mount {
        /// Whatever `export mount` would take; refused.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<std::ffi::OsString>,
    },
}

pub(crate) fn run(cmd: ExportCommand, global: &GlobalOpts) -> CommandResult {
    match cmd {
        #[cfg(feature = "mount")]
        ExportCommand::Mount(args) => mount::run(args, global),
        #[cfg(not(feature = "mount"))]
        ExportCommand::Mount { .. } => anyhow::bail!(
            "export mount: not compiled into this build of sequester-custody (cargo feature \
             `mount`; rebuild with `--features mount`)"
        ),
        ExportCommand::Info {
            file,
            allow_incomplete,
            anchor,
        } => info::run(&file, allow_incomplete, &anchor, global),
        ExportCommand::Verify { file, key } => verify::run(&file, &key, global),
        ExportCommand::Ls {
            file,
            path,
            key,
            at,
            long,
            recursive,
        } => ls::run(
            &file,
            path.as_deref().unwrap_or("/"),
            &key,
            at.as_deref(),
            long,
            recursive,
            global,
        ),
        ExportCommand::Cat {
            file,
            path,
            key,
            at,
        } => cat::run(&file, &path, &key, at.as_deref(), global),
        ExportCommand::History {
            file,
            path,
            key,
            at,
        } => history::run(&file, &path, &key, at.as_deref(), global),
        ExportCommand::Timeline { file, key } => timeline::run(&file, &key, global),
        ExportCommand::Extract {
            file,
            dest,
            path,
            key,
            at,
            threads,
            mode_from_umask,
        } => extract::run(
            &file,
            &dest,
            path.as_deref().unwrap_or("/"),
            &key,
            at.as_deref(),
            threads,
            mode_from_umask,
            global,
        ),
    }
}

//! `export mount FILE MOUNTPOINT --key URI [--at T]`: recovers the realm keys through the token
//! (one operation), then serves the workspace read-only with FUSE in the foreground until
//! Ctrl-C / SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use sequester_custody::mount::{self, Ended, FsOptions, MountOptions};

use super::options::KeyArgs;
use super::unlock::unlock_at;
use crate::cli::{CommandResult, GlobalOpts};

#[derive(Debug, clap::Args)]
pub(crate) struct MountArgs {
    /// The realm export (opened read-only; never modified).
    pub(crate) file: PathBuf,
    /// An existing, empty directory.
    pub(crate) mountpoint: PathBuf,
    #[command(flatten)]
    pub(crate) key: KeyArgs,
    /// Time of interest shown at the mount root (RFC 3339); default: the snapshot time. Any
    /// other instant is under `/.history/<RFC3339>/`.
    #[arg(long)]
    pub(crate) at: Option<String>,
    /// FUSE request threads (default: 2 x cores, at least 4).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
}

pub(crate) fn run(args: MountArgs, global: &GlobalOpts) -> CommandResult {
    limit_malloc_arenas();
    // Checked before the token: a bad mount point must not cost a PIN entry.
    mount::check_mount_point(&args.mountpoint)?;
    // The token session closes inside `unlock_at`: the mount never needs the token again.
    let (realm, trust, at) = unlock_at(&args.file, &args.key, args.at.as_deref(), global)?;
    if !global.json && !realm.recovery().missing_key_indexes.is_empty() {
        eprintln!(
            "Unreadable entries appear with mode 0000; opening them fails with EACCES (logged here)."
        );
    }
    let name = realm.realm_name_at(at).to_string();
    let realm_id = hex::encode(realm.realm_id());
    let cores = sequester_custody::export::parallel::default_threads();
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let opts = MountOptions {
        fs: FsOptions {
            at,
            uid,
            gid,
            read_threads: cores,
            readahead_blocks: 4,
            debug: global.verbose >= 2,
        },
        threads: args.threads.unwrap_or((cores * 2).max(4)),
        fs_name: format!("sequester-custody:{realm_id}"),
    };
    let mountpoint = args.mountpoint.clone();
    let json = global.json;
    let ended = mount::run_foreground(Arc::new(realm), &args.mountpoint, opts, || {
        if json {
            println!(
                "{}",
                serde_json::json!({"mounted": mountpoint, "realm_name": name, "trust": trust,
                    "realm_id": realm_id, "at": at, "history": format!("{}/{}",
                    mountpoint.display(), mount::HISTORY_NAME)})
            );
        } else {
            // The workspace name is the export's: escaped for the terminal.
            println!(
                "Mounted {} ({realm_id}) as of {at} at {}; Ctrl-C to unmount",
                sequester_custody::export::terminal::escape(&name),
                mountpoint.display()
            );
            println!(
                "Other instants: {}/{}/<RFC 3339 time>/",
                mountpoint.display(),
                mount::HISTORY_NAME
            );
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
    })?;
    match ended {
        Ended::Signal(_) => eprintln!("Unmounted {}", args.mountpoint.display()),
        Ended::External => eprintln!("{} was unmounted from outside", args.mountpoint.display()),
    }
    Ok(ExitCode::SUCCESS)
}

/// Caps glibc's malloc arenas at the number of cores. By default glibc gives up to 8 arenas per
/// core to the FUSE, read-ahead and parallel-read threads, and each keeps the 512 KiB block
/// buffers it freed: with 8 parallel readers on a 1 GiB export the mount's peak RSS was 195–205
/// MiB with default arenas and 110 MiB with 2, at the same throughput (docs/performance.md).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let arenas = sequester_custody::export::parallel::default_threads().max(2);
        // SAFETY: mallopt only sets an allocator tunable; called before the mount's threads exist.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas.min(64) as libc::c_int) };
    }
}

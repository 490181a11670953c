//! Read-only FUSE view of a realm export; design in `docs/mount.md`.
//!
//! [`ExportFs`] serves an unlocked [`crate::export::Realm`] as the workspace at time T, with a
//! virtual `/.history/<RFC3339>/` folder showing the workspace at any other instant.
//! [`run_foreground`] mounts it (`AutoUnmount` so that a killed process leaves no stale mount),
//! waits for SIGINT/SIGTERM or an external unmount, and unmounts cleanly.

mod fs;
mod inodes;
mod prefetch;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use fs::{log, ExportFs, FsOptions, HISTORY_NAME};

use crate::export::Realm;

/// Errors of the mount layer.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount point {0} does not exist")]
    NoMountPoint(PathBuf),
    #[error("mount point {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("mount point {0} is not empty (mounting over files would hide them)")]
    NotEmpty(PathBuf),
    #[error("cannot read mount point {path}: {source}")]
    MountPointIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot show the workspace: {0}")]
    Workspace(String),
    #[error(
        "FUSE mount of {path} failed: {source} (is /dev/fuse available and fusermount3 installed?)"
    )]
    Mount {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("FUSE session ended with an error: {0}")]
    Session(std::io::Error),
    #[error("signal handling: {0}")]
    Signals(std::io::Error),
}

/// Checks that `path` is an existing, empty directory.
pub fn check_mount_point(path: &Path) -> Result<(), MountError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => MountError::NoMountPoint(path.to_path_buf()),
        _ => MountError::MountPointIo {
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    if !meta.is_dir() {
        return Err(MountError::NotADirectory(path.to_path_buf()));
    }
    let mut entries = std::fs::read_dir(path).map_err(|e| MountError::MountPointIo {
        path: path.to_path_buf(),
        source: e,
    })?;
    if entries.next().is_some() {
        return Err(MountError::NotEmpty(path.to_path_buf()));
    }
    Ok(())
}

/// How the session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// SIGINT or SIGTERM: unmounted by us.
    Signal(i32),
    /// Unmounted from outside (`fusermount3 -u`, `umount`).
    External,
}

/// SIGINT and SIGTERM, blocked in the calling thread (and so in every thread it spawns after),
/// to be received with `sigtimedwait` instead of killing the process mid-request.
struct BlockedSignals {
    set: libc::sigset_t,
    old: libc::sigset_t,
}

impl BlockedSignals {
    fn block() -> Result<Self, MountError> {
        // SAFETY: plain libc signal-set manipulation on stack values we own.
        unsafe {
            // A process started in the background by a shell has SIGINT ignored, and an ignored
            // signal is discarded even while blocked: restore the default first.
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            if rc != 0 {
                return Err(MountError::Signals(std::io::Error::from_raw_os_error(rc)));
            }
            Ok(BlockedSignals { set, old })
        }
    }

    /// Waits up to `timeout` for one of the signals.
    fn wait(&self, timeout: Duration) -> Option<i32> {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `set` is a valid initialised signal set; info may be null.
        let sig = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &ts) };
        (sig > 0).then_some(sig)
    }
}

impl Drop for BlockedSignals {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `block`.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut());
        }
    }
}

/// Unmounts `path`: `umount2` as root, `fusermount3 -u` otherwise; lazily if busy (open files
/// then keep working until closed, and the mount point is free at once).
/// Returns `true` when the mount point was busy and only detached lazily.
fn unmount(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(c_path.as_ptr(), 0) } == 0 {
        return false;
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EBUSY) {
        // SAFETY: as above.
        if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } == 0 {
            log("mount point busy (open files): detached; open files fail from now on");
            return true;
        }
    }
    for args in [&["-u"][..], &["-u", "-z"][..]] {
        let ok = std::process::Command::new("fusermount3")
            .args(args)
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return args.len() > 1;
        }
    }
    log(&format!("could not unmount {}: {err}", path.display()));
    true
}

/// Options of [`run_foreground`].
#[derive(Debug, Clone)]
pub struct MountOptions {
    pub fs: FsOptions,
    /// FUSE request threads.
    pub threads: usize,
    /// Shown in `/proc/mounts` as the source.
    pub fs_name: String,
}

fn config(opts: &MountOptions, auto_unmount: bool) -> fuser::Config {
    use fuser::MountOption;
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoExec,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoAtime,
        MountOption::FSName(opts.fs_name.clone()),
    ];
    if auto_unmount {
        // fusermount3 unmounts as soon as our /dev/fuse descriptor closes, even after kill -9.
        // It requires allow_other/allow_root; fuser still limits access to root and the owner.
        config.mount_options.push(MountOption::AutoUnmount);
        config.acl = fuser::SessionACL::RootAndOwner;
    }
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    config
}

/// Mounts `realm` at `mountpoint` and serves it until SIGINT/SIGTERM or an external unmount.
/// `on_mounted` runs once the mount is live (to print the banner).
pub fn run_foreground(
    realm: Arc<Realm>,
    mountpoint: &Path,
    opts: MountOptions,
    on_mounted: impl FnOnce(),
) -> Result<Ended, MountError> {
    check_mount_point(mountpoint)?;
    let signals = BlockedSignals::block()?;
    let make_fs = || ExportFs::new(realm.clone(), opts.fs.clone()).map_err(MountError::Workspace);
    let session = match fuser::spawn_mount(make_fs()?, mountpoint, &config(&opts, true)) {
        Ok(s) => s,
        Err(first) => {
            // Without root or `user_allow_other` in /etc/fuse.conf, AutoUnmount is refused:
            // mount without it (SIGINT/SIGTERM still unmount cleanly).
            log(&format!(
                "AutoUnmount unavailable ({first}); mounting without it: a killed process may \
                 leave a stale mount (fusermount3 -u {})",
                mountpoint.display()
            ));
            fuser::spawn_mount(make_fs()?, mountpoint, &config(&opts, false)).map_err(|e| {
                MountError::Mount {
                    path: mountpoint.to_path_buf(),
                    source: e,
                }
            })?
        }
    };
    on_mounted();
    let ended = loop {
        if let Some(sig) = signals.wait(Duration::from_millis(200)) {
            break Ended::Signal(sig);
        }
        if session.guard.is_finished() {
            break Ended::External;
        }
    };
    let detached = match ended {
        // fuser's own unmount only closes the AutoUnmount socket, and fusermount3 leaves the
        // mount in place while this process lives: unmount explicitly, then the session ends.
        Ended::Signal(_) => unmount(mountpoint),
        Ended::External => false,
    };
    if detached {
        // Files still open keep the FUSE connection alive, so the session would not end: leave
        // it; the kernel aborts the connection when this process exits.
        std::mem::forget(session);
    } else {
        session.join().map_err(MountError::Session)?;
    }
    drop(signals);
    Ok(ended)
}

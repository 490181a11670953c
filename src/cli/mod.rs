//! Command implementations behind the thin binary (`src/main.rs`): each area has a clap
//! `Subcommand` enum and a `run` function. This is the binary's edge, so `anyhow` is used here and
//! nowhere below.

pub(crate) mod assets;
pub(crate) mod ceremony;
pub(crate) mod cert;
pub(crate) mod doctor;
pub(crate) mod export;
pub(crate) mod key;
#[cfg(feature = "yubikey")]
mod key_yubikey;
pub(crate) mod org;
pub(crate) mod token;

use std::process::ExitCode;

/// Options every command accepts.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GlobalOpts {
    /// Machine-readable output on stdout.
    pub(crate) json: bool,
    /// `-v` count: 1 shows mechanism paths and timings, 2 adds debug detail.
    pub(crate) verbose: u8,
}

pub(crate) type CommandResult = anyhow::Result<ExitCode>;

/// Keeps key material out of core files: no core dump (RLIMIT_CORE 0) and not
/// dumpable (PR_SET_DUMPABLE 0, which also stops other processes of the same user from
/// attaching with ptrace). Called at the start of every command: PINs, realm keys and decrypted
/// evidence may all be in memory. Failures are reported, not fatal.
pub(crate) fn forbid_core_dumps() -> Result<(), std::io::Error> {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls with valid arguments.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_CORE, &zero) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

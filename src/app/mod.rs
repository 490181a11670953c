//! Command implementations behind the thin binary (`src/main.rs`): each area has a clap
//! `Subcommand` enum and a `run` function. This is the binary's edge, so `anyhow` is used here and
//! nowhere below.

pub mod assets;
pub mod ceremony;
pub mod cert;
pub mod doctor;
pub mod export;
pub mod key;
mod key_yubikey;
pub mod mount;
pub mod org;
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

/// Keeps key material out of core files (issue 10 item 6): no core dump (RLIMIT_CORE 0) and not
/// dumpable (PR_SET_DUMPABLE 0, which also stops other processes of the same user from
/// attaching with ptrace). Called at the start of every command: PINs, realm keys and decrypted
/// evidence may all be in memory. Failures are reported, not fatal.
pub fn forbid_core_dumps() -> Result<(), std::io::Error> {
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

/// Whether the process may dump core (for tests and `-v` output): false after
/// [`forbid_core_dumps`].
pub fn core_dumps_possible() -> bool {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls with valid arguments.
    let (rc, dumpable) = unsafe {
        (
            libc::getrlimit(libc::RLIMIT_CORE, &mut limit),
            libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0),
        )
    };
    !(rc == 0 && limit.rlim_cur == 0 && dumpable == 0)
}

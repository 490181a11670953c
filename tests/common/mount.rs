//! Running `export mount` for real in tests: start, wait for the banner, unmount, check for
//! stale mounts.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common;

/// FUSE usable here (`/dev/fuse` and `fusermount3`), else skip/fail per `require_all`.
pub fn fuse_available() -> bool {
    let ok = Path::new("/dev/fuse").exists()
        && std::process::Command::new("fusermount3")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    common::available(
        "FUSE (/dev/fuse and fusermount3 from the fuse3 package)",
        ok,
    )
}

pub fn is_mounted(mountpoint: &Path) -> bool {
    let canon = mountpoint
        .canonicalize()
        .unwrap_or_else(|_| mountpoint.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let needle = canon.to_str().unwrap();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(needle))
}

/// Waits until `mountpoint` is no longer mounted; false after `timeout`.
pub fn wait_unmounted(mountpoint: &Path, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if !is_mounted(mountpoint) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    !is_mounted(mountpoint)
}

/// A running `export mount` process.
pub struct Mount {
    pub child: Option<Child>,
    pub mountpoint: PathBuf,
    pub banner: String,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Mount {
    /// Starts `sequester-custody export mount EXPORT MOUNTPOINT --key KEY [extra]` and waits for
    /// the "Mounted …" line. Panics with the process output if it exits first.
    pub fn start(
        export: &Path,
        mountpoint: &Path,
        key: &str,
        extra: &[&str],
        env: &[(String, String)],
    ) -> Mount {
        let mut cmd = common::cli();
        cmd.args(["export", "mount"])
            .arg(export)
            .arg(mountpoint)
            .args(["--key", key])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut stderr_pipe = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr_pipe.read_to_string(&mut s);
            s
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut banner = String::new();
        stdout.read_line(&mut banner).unwrap();
        // Keep draining stdout so the process never blocks on it.
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = stdout.read_to_string(&mut rest);
        });
        let mut m = Mount {
            child: Some(child),
            mountpoint: mountpoint.to_path_buf(),
            banner,
            stderr: Some(stderr),
        };
        if !m.banner.starts_with("Mounted ") {
            let status = m.child.as_mut().unwrap().wait().unwrap();
            panic!(
                "mount did not start ({status}): stdout `{}`, stderr:\n{}",
                m.banner,
                m.stderr.take().unwrap().join().unwrap()
            );
        }
        assert!(is_mounted(mountpoint), "banner printed but not mounted");
        m
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Sends `signal`, waits for the exit; returns (exit status, stderr).
    pub fn stop(mut self, signal: i32) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        let stderr = self.stderr.take().unwrap().join().unwrap();
        (status, stderr)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !wait_unmounted(&self.mountpoint, Duration::from_secs(5)) {
            let _ = std::process::Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.mountpoint)
                .status();
        }
    }
}

//! Virtual PIV cards for the `yubikey_*` tests: pcscd + vpcd (started once per test process by
//! `softhsm-fixtures/virtual-piv/start.sh`) and one fresh `sequester-virtual-piv` card process
//! per test. The vpcd reader offers two slots (ports 35963 and 35964), so a test can hold two
//! cards. Card tests serialise on a process-wide lock: pcscd is shared.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::common;

pub const PIN: &str = "123456";
pub const BASE_PORT: u16 = 35963;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("softhsm-fixtures/virtual-piv")
}

/// Parses the `export NAME=value` lines the scripts print.
fn exports(stdout: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The card binary and a running pcscd, once per process. `None` (skip) when unavailable and
/// SEQUESTER_TEST_REQUIRE_ALL is not set.
fn environment() -> Option<&'static PathBuf> {
    static ENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let result = ENV.get_or_init(|| {
        if Command::new("pcscd").arg("--version").output().is_err() {
            return Err("pcscd (apt package pcscd) not installed".into());
        }
        let out = Command::new("bash")
            .arg(fixture_dir().join("start.sh"))
            .env("VIRTUAL_PIV_CARD", "0")
            .env("VIRTUAL_PIV_PORT", BASE_PORT.to_string())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("start.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "start.sh failed: {}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        exports(&out.stdout)
            .into_iter()
            .find(|(k, _)| k == "VIRTUAL_PIV_BIN")
            .map(|(_, v)| PathBuf::from(v))
            .ok_or_else(|| "start.sh printed no VIRTUAL_PIV_BIN".into())
    });
    match result {
        Ok(bin) => Some(bin),
        Err(reason) => {
            common::available(&format!("virtual PIV card ({reason})"), false);
            None
        }
    }
}

fn card_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One virtual card process; killed on drop.
pub struct VirtualCard {
    child: Child,
    pub serial: u32,
    pub port: u16,
}

impl VirtualCard {
    pub fn uri(&self) -> String {
        format!("yubikey:serial={}", self.serial)
    }
}

impl Drop for VirtualCard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Cards of one test plus the lock that keeps other tests of this process off pcscd.
pub struct Session {
    pub cards: Vec<VirtualCard>,
    pub dir: tempfile::TempDir,
    _lock: MutexGuard<'static, ()>,
}

impl Session {
    pub fn card(&self) -> &VirtualCard {
        &self.cards[0]
    }

    /// A `pin-source` file holding `pin`.
    pub fn pin_file(&self, name: &str, pin: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, format!("{pin}\n")).unwrap();
        // Secret files readable by others are refused.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        path
    }

    /// `yubikey:serial=…;slot=…?pin-source=file:…` with the right PIN.
    pub fn key_uri(&self, card: &VirtualCard, slot: &str) -> String {
        let pin = self.pin_file("pin", PIN);
        format!(
            "yubikey:serial={};slot={slot}?pin-source=file:{}",
            card.serial,
            pin.display()
        )
    }
}

fn unique_serial(index: u32) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    10_000_000 + (std::process::id() * 7919 + nanos / 1000 + index * 1_000_003) % 80_000_000
}

/// Starts `versions.len()` fresh cards (firmware versions as given, e.g. "5.4.3") and waits
/// until each answers. `None` = skipped (no virtual card support here).
pub fn start(versions: &[&str]) -> Option<Session> {
    let cards: Vec<(&str, &[&str])> = versions.iter().map(|v| (*v, &[][..])).collect();
    start_with(&cards)
}

/// [`start`] with extra arguments per card (e.g. `--aes256-management-key HEX`).
pub fn start_with(cards_spec: &[(&str, &[&str])]) -> Option<Session> {
    assert!(cards_spec.len() <= 2, "the vpcd reader has two slots");
    let bin = environment()?;
    let lock = card_lock();
    let mut cards = Vec::new();
    for (i, (version, extra)) in cards_spec.iter().enumerate() {
        let serial = unique_serial(i as u32);
        let port = BASE_PORT + i as u16;
        let child = Command::new(bin)
            .args(["--port", &port.to_string(), "--serial", &serial.to_string()])
            .args(["--version", version])
            .args(extra.iter())
            .stdout(Stdio::null())
            // VIRTUAL_PIV_TRACE=1: the card logs every APDU (with RUST_LOG=trace) to stderr.
            .stderr(if std::env::var_os("VIRTUAL_PIV_TRACE").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("spawn the virtual card");
        cards.push(VirtualCard {
            child,
            serial,
            port,
        });
    }
    for card in &cards {
        wait_until_present(card.serial);
    }
    Some(Session {
        cards,
        dir: tempfile::tempdir().unwrap(),
        _lock: lock,
    })
}

fn wait_until_present(serial: u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let uri = format!("yubikey:serial={serial}");
    loop {
        match sequester_custody::token::yubikey::card_info(&uri) {
            Ok(_) => return,
            Err(e) if Instant::now() > deadline => {
                panic!("virtual card {serial} did not come up: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

//! Shared test fixtures: throwaway tokens, paths to `../shared`, running the CLI.
//!
//! Every token is real (SoftHSM2 through its real PKCS#11 module, kryoptic as a real cdylib);
//! each test gets its own token directory, selected per subprocess through `SOFTHSM2_CONF` /
//! `KRYOPTIC_CONF`, so tests never share token state.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const USER_PIN: &str = "123456";
pub const SO_PIN: &str = "12345678";

/// `../shared` beside the repository (the CI clone has a copy there too).
pub fn shared_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    assert!(
        dir.join("spec/parsec-formats.md").exists(),
        "../shared not found beside the repository ({})",
        dir.display()
    );
    dir.canonicalize().unwrap()
}

pub fn fixture(name: &str) -> PathBuf {
    shared_dir().join("fixtures/parsec").join(name)
}

/// When set (CI, `scripts/test.sh`), a missing optional component fails the test instead of
/// skipping it, so a green CI always means everything ran.
pub fn require_all() -> bool {
    std::env::var_os("SEQUESTER_TEST_REQUIRE_ALL").is_some()
}

/// Skips (returns false) or fails, depending on [`require_all`].
pub fn available(what: &str, ok: bool) -> bool {
    if !ok {
        if require_all() {
            panic!("{what} is required (SEQUESTER_TEST_REQUIRE_ALL is set) but not available");
        }
        eprintln!("SKIPPED: {what} not available");
    }
    ok
}

pub fn softhsm_module() -> Option<PathBuf> {
    [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// A fresh SoftHSM2 token in its own directory.
pub struct SoftHsm {
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub label: String,
    pub module: PathBuf,
}

impl SoftHsm {
    pub fn new(label: &str) -> Option<SoftHsm> {
        let module = softhsm_module();
        if !available("SoftHSM2 (apt package softhsm2)", module.is_some()) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tokens")).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                dir.path().join("tokens").display()
            ),
        )
        .unwrap();
        let hsm = SoftHsm {
            dir,
            conf,
            label: label.to_string(),
            module: module.unwrap(),
        };
        hsm.init_token(label);
        Some(hsm)
    }

    /// Adds another token (same directory, so the same `SOFTHSM2_CONF`).
    pub fn init_token(&self, label: &str) {
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &self.conf)
            .args([
                "--init-token",
                "--free",
                "--label",
                label,
                "--so-pin",
                SO_PIN,
                "--pin",
                USER_PIN,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "softhsm2-util: {out:?}");
    }

    /// Imports an unencrypted PKCS#8 PEM key with softhsm2-util (test keys only).
    pub fn import_with_softhsm_util(&self, pem: &Path, label: &str, id_hex: &str) {
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &self.conf)
            .args(["--import"])
            .arg(pem)
            .args([
                "--token",
                &self.label,
                "--label",
                label,
                "--id",
                id_hex,
                "--pin",
                USER_PIN,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "softhsm2-util --import: {out:?}");
    }

    /// Environment for a subprocess that should see this token (PIN included).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("SOFTHSM2_CONF".into(), self.conf.display().to_string()),
            ("SEQUESTER_CUSTODY_PIN".into(), USER_PIN.into()),
        ]
    }

    /// `pkcs11:` URI of a key on this token, with the module path.
    pub fn key_uri(&self, object: &str) -> String {
        format!(
            "pkcs11:token={};object={};type=private?module-path={}",
            self.label,
            object,
            self.module.display()
        )
    }

    pub fn token_uri(&self) -> String {
        format!(
            "pkcs11:token={}?module-path={}",
            self.label,
            self.module.display()
        )
    }
}

/// The CLI under test.
pub fn cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sequester-custody"))
}

/// Runs the CLI with extra environment, returns the output.
pub fn run_cli(args: &[&str], env: &[(String, String)]) -> Output {
    let mut cmd = cli();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// SHA-256 of a file, hex.
pub fn file_sha256(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

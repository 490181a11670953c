//! Shared test fixtures: throwaway tokens, paths to `../shared`, running the CLI.
//!
//! Every token is real (SoftHSM2 through its real PKCS#11 module, kryoptic as a real cdylib);
//! each test gets its own token directory, selected per subprocess through `SOFTHSM2_CONF` /
//! `KRYOPTIC_CONF`, so tests never share token state.
#![allow(dead_code)]

pub mod mount;
#[cfg(feature = "yubikey")]
pub mod yubikey;

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

/// A writable copy `<dir>/<name>.sqlite` of the real fixture export, with `mutate` applied through
/// a read-write SQLite connection (the fixture itself is read-only and never touched).
pub fn altered_fixture_export(
    dir: &Path,
    name: &str,
    mutate: impl FnOnce(&rusqlite::Connection),
) -> PathBuf {
    let path = dir.join(format!("{name}.sqlite"));
    std::fs::copy(fixture("sequestered_export.sqlite"), &path).unwrap();
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&path, perms).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    mutate(&conn);
    drop(conn);
    path
}

/// When set (CI, `scripts/test.sh`), a missing optional component fails the test instead of
/// skipping it, so a green CI always means everything ran.
pub fn require_all() -> bool {
    std::env::var_os("SEQUESTER_TEST_REQUIRE_ALL").is_some()
}

/// When set, every skip appends its `SKIPPED …` line to this file: libtest hides the stderr of
/// passing tests, so `scripts/test.sh` counts the skips from here at the end of the run.
pub const SKIP_LOG_ENV: &str = "SEQUESTER_TEST_SKIP_LOG";

/// The running test's name (libtest runs each test on a thread named after it).
pub fn current_test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("<unnamed test thread>")
        .to_string()
}

/// A test that cannot run here: `SKIPPED <test>: <reason>` on stderr and in the skip log, and a
/// failure when [`require_all`] is set.
pub fn skip(reason: &str) {
    let line = format!("SKIPPED {}: {reason}", current_test_name());
    if require_all() {
        panic!("{line} (SEQUESTER_TEST_REQUIRE_ALL is set: a missing component is a failure)");
    }
    eprintln!("{line}");
    if let Some(log) = std::env::var_os(SKIP_LOG_ENV) {
        use std::io::Write;
        // One write per line on an O_APPEND file: parallel tests do not interleave.
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut file| file.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = written {
            panic!("{line}; could not record it in {SKIP_LOG_ENV}: {e}");
        }
    }
}

/// Skips (returns false, see [`skip`]) or fails, depending on [`require_all`].
pub fn available(what: &str, ok: bool) -> bool {
    if !ok {
        skip(&format!("{what} not available"));
    }
    ok
}

/// The real Parsec server's python (the interop venv): `PARSEC_ORACLE_PY`, else the venv
/// `scripts/test.sh` sets up. See [`oracle_python`] for the checked form.
pub fn oracle_python_path() -> PathBuf {
    std::env::var_os("PARSEC_ORACLE_PY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/parsec-oracle-venv/bin/python"))
}

/// [`oracle_python_path`] when it is installed; a skip (or failure, see [`available`]) otherwise.
pub fn oracle_python() -> Option<PathBuf> {
    let py = oracle_python_path();
    available(
        "Parsec oracle venv (PARSEC_ORACLE_PY; bash ../shared/interop/setup.sh)",
        py.is_file(),
    )
    .then_some(py)
}

/// Single-quotes a value for `sh -c`.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Every regular file under `root`, as `/relative/path`.
pub fn files_under(root: &Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                out.insert(format!("/{rel}"));
            }
        }
    }
    out
}

/// A host RSA key that is the same on every run (seeded), for exports written by the test writer.
pub fn seeded_rsa_key(seed: u64, bits: usize) -> rsa::RsaPrivateKey {
    use rand::SeedableRng;
    rsa::RsaPrivateKey::new(&mut rand::rngs::StdRng::seed_from_u64(seed), bits).unwrap()
}

/// The SubjectPublicKeyInfo DER of a host RSA key.
pub fn spki_der(key: &rsa::RsaPrivateKey) -> Vec<u8> {
    use rsa::pkcs8::EncodePublicKey;
    key.to_public_key()
        .to_public_key_der()
        .unwrap()
        .as_bytes()
        .to_vec()
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
    /// Set once a key was imported with softhsm2-util: such keys are modifiable and
    /// sign-recover-capable, which the tool refuses unless told this is a test token.
    pub has_unsafe_keys: std::cell::Cell<bool>,
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
            has_unsafe_keys: std::cell::Cell::new(false),
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
        self.has_unsafe_keys.set(true);
    }

    /// Imports a (test-size) PEM service key with the tool's own `key import`: the key gets the
    /// hardened template (not modifiable, no sign-recover, allowed mechanisms), so no unsafe-key
    /// override is needed to use it.
    pub fn import_service_key_with_tool(&self, pem: &Path, label: &str) {
        let token = self.token_uri();
        let pem = pem.display().to_string();
        let out = run_cli(
            &key_import_args(
                "service",
                label,
                &token,
                &pem,
                &["--allow-insecure-test-size"],
            ),
            &self.env_without_unsafe_override(),
        );
        assert!(out.status.success(), "key import: {out:?}");
    }

    /// Environment for a subprocess that should see this token (PIN included).
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = self.env_without_unsafe_override();
        if self.has_unsafe_keys.get() {
            env.push((
                "SEQUESTER_CUSTODY_TEST_ALLOW_UNSAFE_KEYS".into(),
                "1".into(),
            ));
        }
        env
    }

    /// [`SoftHsm::env`] without the test-only override for keys imported with softhsm2-util.
    pub fn env_without_unsafe_override(&self) -> Vec<(String, String)> {
        vec![
            ("SOFTHSM2_CONF".into(), self.conf.display().to_string()),
            ("SEQUESTER_CUSTODY_PIN".into(), USER_PIN.into()),
            // Key commands append to a ceremony transcript: keep it with the token, not in the
            // repository (an explicit --transcript still wins).
            (
                "SEQUESTER_CUSTODY_TRANSCRIPT".into(),
                self.dir
                    .path()
                    .join("transcript.jsonl")
                    .display()
                    .to_string(),
            ),
        ]
    }

    /// A fresh token holding `key` as object `svc` (id 01), imported with softhsm2-util.
    pub fn with_service_key(key: &rsa::RsaPrivateKey, label: &str) -> Option<SoftHsm> {
        use rsa::pkcs8::{EncodePrivateKey, LineEnding};
        let hsm = SoftHsm::new(label)?;
        let pem = hsm.dir.path().join("svc.pem");
        std::fs::write(&pem, key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
        hsm.import_with_softhsm_util(&pem, "svc", "01");
        std::fs::remove_file(&pem).unwrap();
        Some(hsm)
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

/// Runs the CLI with extra environment, returns the output. The child has no controlling
/// terminal (its own session), so a PIN or passphrase prompt fails instead of waiting for a
/// developer's keyboard.
pub fn run_cli(args: &[&str], env: &[(String, String)]) -> Output {
    let mut cmd = cli();
    detach_from_terminal(&mut cmd);
    cmd.args(args);
    // Commands that touch a private key append to a ceremony transcript, by default in the
    // working directory (the repository, for tests): point it elsewhere unless the test chose.
    if !env.iter().any(|(k, _)| k == "SEQUESTER_CUSTODY_TRANSCRIPT") {
        let dir = std::env::temp_dir().join("sequester-custody-test-transcripts");
        std::fs::create_dir_all(&dir).unwrap();
        cmd.env(
            "SEQUESTER_CUSTODY_TRANSCRIPT",
            dir.join(format!("{}.jsonl", std::process::id())),
        );
    }
    // Pins (organisation trust anchors) of the developer's machine must not leak into tests.
    if !env.iter().any(|(k, _)| k == "SEQUESTER_CUSTODY_PINS") {
        cmd.env(
            "SEQUESTER_CUSTODY_PINS",
            std::env::temp_dir().join(format!(
                "sequester-custody-test-pins-{}.json",
                std::process::id()
            )),
        );
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// `key generate --role <role> --label <label> --bits <bits> --token <token>` followed by
/// `extra` (`--public-out`, `--transcript`, the global `--json`, …), for [`run_cli`].
pub fn key_generate_args<'a>(
    role: &'a str,
    label: &'a str,
    bits: &'a str,
    token: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "key", "generate", "--role", role, "--label", label, "--bits", bits, "--token", token,
    ];
    args.extend_from_slice(extra);
    args
}

/// `key import --role <role> --label <label> --token <token> --in <pem>` followed by `extra`,
/// for [`run_cli`].
pub fn key_import_args<'a>(
    role: &'a str,
    label: &'a str,
    token: &'a str,
    pem: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "key", "import", "--role", role, "--label", label, "--token", token, "--in", pem,
    ];
    args.extend_from_slice(extra);
    args
}

/// Generates a 2048-bit `role` key `label` on `t` with the CLI under `env`; asserts it worked.
pub fn generate_key(t: &TestToken, role: &str, label: &str, env: &[(String, String)]) {
    let out = run_cli(
        &key_generate_args(role, label, "2048", &t.token_uri(), &[]),
        env,
    );
    assert!(out.status.success(), "{}: {}", t.name(), stderr(&out));
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// SHA-256 of a file, hex.
/// Writes a secret file (PIN, passphrase) readable by its owner only: the tool refuses secret
/// files that its group or others can read.
pub fn write_secret_file(path: &Path, contents: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

pub fn file_sha256(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// User PIN of kryoptic test tokens (kryoptic requires at least 8 characters).
pub const KRYOPTIC_USER_PIN: &str = "87654321";

/// The kryoptic module built by `softhsm-fixtures/kryoptic/setup.sh` (`KRYOPTIC_MODULE`).
pub fn kryoptic_module() -> Option<PathBuf> {
    std::env::var_os("KRYOPTIC_MODULE")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
}

/// A fresh kryoptic token (its own sqlite database and `KRYOPTIC_CONF`).
pub struct Kryoptic {
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub label: String,
    pub module: PathBuf,
}

impl Kryoptic {
    pub fn new(label: &str) -> Option<Kryoptic> {
        Kryoptic::with_tokens(&[label])
    }

    /// One slot per label (labels may repeat, e.g. for "two tokens match" tests); the first
    /// label is this fixture's `label`.
    pub fn with_tokens(labels: &[&str]) -> Option<Kryoptic> {
        let module = kryoptic_module();
        if !available(
            "kryoptic (KRYOPTIC_MODULE from softhsm-fixtures/kryoptic/setup.sh)",
            module.is_some(),
        ) {
            return None;
        }
        let module = module.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("kryoptic.conf");
        let mut text = String::new();
        for (i, _) in labels.iter().enumerate() {
            text.push_str(&format!(
                "[[slots]]\nslot = {}\ndbtype = \"sqlite\"\ndbargs = \"{}\"\n\n",
                10 + i,
                dir.path().join(format!("token{i}.sql")).display()
            ));
        }
        std::fs::write(&conf, text).unwrap();
        let k = Kryoptic {
            dir,
            conf,
            label: labels[0].to_string(),
            module,
        };
        for (i, label) in labels.iter().enumerate() {
            k.pkcs11_tool(&[
                "--slot",
                &(10 + i).to_string(),
                "--init-token",
                "--label",
                label,
                "--so-pin",
                SO_PIN,
            ]);
            k.pkcs11_tool(&[
                "--slot",
                &(10 + i).to_string(),
                "--login",
                "--login-type",
                "so",
                "--so-pin",
                SO_PIN,
                "--init-pin",
                "--pin",
                KRYOPTIC_USER_PIN,
            ]);
        }
        Some(k)
    }

    fn pkcs11_tool(&self, args: &[&str]) {
        let out = Command::new("pkcs11-tool")
            .env("KRYOPTIC_CONF", &self.conf)
            .arg("--module")
            .arg(&self.module)
            .args(args)
            .output()
            .expect("pkcs11-tool (apt package opensc)");
        assert!(out.status.success(), "pkcs11-tool {args:?}: {out:?}");
    }

    /// Environment for a subprocess that should see this token (PIN included).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("KRYOPTIC_CONF".into(), self.conf.display().to_string()),
            ("SEQUESTER_CUSTODY_PIN".into(), KRYOPTIC_USER_PIN.into()),
            (
                "SEQUESTER_CUSTODY_TRANSCRIPT".into(),
                self.dir
                    .path()
                    .join("transcript.jsonl")
                    .display()
                    .to_string(),
            ),
        ]
    }

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

/// Either kind of test token, for tests that run against both.
pub enum TestToken {
    SoftHsm(SoftHsm),
    Kryoptic(Kryoptic),
}

impl TestToken {
    /// The two real tokens the suite runs against, each freshly created (skipped ones omitted).
    pub fn both(label: &str) -> Vec<TestToken> {
        let mut v = Vec::new();
        if let Some(s) = SoftHsm::new(label) {
            v.push(TestToken::SoftHsm(s));
        }
        if let Some(k) = Kryoptic::new(label) {
            v.push(TestToken::Kryoptic(k));
        }
        v
    }

    pub fn name(&self) -> &'static str {
        match self {
            TestToken::SoftHsm(_) => "softhsm2",
            TestToken::Kryoptic(_) => "kryoptic",
        }
    }

    pub fn env(&self) -> Vec<(String, String)> {
        match self {
            TestToken::SoftHsm(t) => t.env(),
            TestToken::Kryoptic(t) => t.env(),
        }
    }

    pub fn key_uri(&self, object: &str) -> String {
        match self {
            TestToken::SoftHsm(t) => t.key_uri(object),
            TestToken::Kryoptic(t) => t.key_uri(object),
        }
    }

    pub fn token_uri(&self) -> String {
        match self {
            TestToken::SoftHsm(t) => t.token_uri(),
            TestToken::Kryoptic(t) => t.token_uri(),
        }
    }

    pub fn dir(&self) -> &Path {
        match self {
            TestToken::SoftHsm(t) => t.dir.path(),
            TestToken::Kryoptic(t) => t.dir.path(),
        }
    }

    pub fn module(&self) -> &Path {
        match self {
            TestToken::SoftHsm(t) => &t.module,
            TestToken::Kryoptic(t) => &t.module,
        }
    }

    pub fn user_pin(&self) -> &'static str {
        match self {
            TestToken::SoftHsm(_) => USER_PIN,
            TestToken::Kryoptic(_) => KRYOPTIC_USER_PIN,
        }
    }
}

/// Set in the child process of [`run_isolated`].
pub const ISOLATED_ENV: &str = "SEQUESTER_TEST_ISOLATED";

/// Runs the `#[ignore]`d test `name` of the current test binary in a child process with `env`.
/// PKCS#11 modules read their configuration (SOFTHSM2_CONF, KRYOPTIC_CONF) once per process, so
/// in-process token work runs in a child to keep one fresh token per test.
#[track_caller]
pub fn run_isolated(name: &str, env: &[(String, String)]) {
    let exe = std::env::current_exe().unwrap();
    let caller_module = Path::new(std::panic::Location::caller().file())
        .file_stem()
        .and_then(|stem| stem.to_str())
        .unwrap_or_default();
    let full_name = ignored_test_path(&exe, caller_module, name);
    let out = Command::new(exe)
        .args([
            full_name.as_str(),
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ISOLATED_ENV, "1")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    let text = format!("{}\n{}", stdout(&out), stderr(&out));
    assert!(
        out.status.success() && text.contains("1 passed"),
        "isolated test {name} failed:\n{text}"
    );
}

/// The full name (`module::name`) of the `#[ignore]`d test `name` in this test binary: tests
/// live in one module per former test file, and `--exact` needs the whole path. The caller's own
/// module wins when several modules have a test of that name.
fn ignored_test_path(exe: &Path, caller_module: &str, name: &str) -> String {
    let out = Command::new(exe)
        .args(["--list", "--ignored"])
        .output()
        .unwrap();
    let suffix = format!("::{name}");
    let matches: Vec<String> = stdout(&out)
        .lines()
        .filter_map(|line| line.strip_suffix(": test"))
        .filter(|test| *test == name || test.ends_with(&suffix))
        .map(str::to_string)
        .collect();
    let own = format!("{caller_module}::{name}");
    if matches.contains(&own) {
        return own;
    }
    assert_eq!(
        matches.len(),
        1,
        "exactly one ignored test named {name} expected in this binary, found {matches:?}"
    );
    matches.into_iter().next().unwrap()
}

/// True in the child process of [`run_isolated`]; the `#[ignore]`d inner tests return early
/// otherwise.
pub fn in_isolated_child() -> bool {
    std::env::var_os(ISOLATED_ENV).is_some()
}

/// Asserts a CLI run failed cleanly: non-zero exit, no panic, stderr containing `needle`.
pub fn assert_clean_failure(out: &Output, needle: &str) {
    let err = stderr(out);
    assert!(
        !out.status.success(),
        "expected failure, got success: {err}"
    );
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(
        err.contains(needle),
        "stderr does not contain `{needle}`:\n{err}"
    );
}

/// Environment for [`check_private_key_locked_down`] in a child process.
pub fn locked_down_env(
    t: &TestToken,
    token_label: &str,
    key_label: &str,
    role: &str,
) -> Vec<(String, String)> {
    let mut env = t.env();
    env.push(("INNER_MODULE".into(), t.module().display().to_string()));
    env.push(("INNER_LABEL".into(), key_label.into()));
    env.push(("INNER_TOKEN".into(), token_label.into()));
    env.push(("INNER_ROLE".into(), role.into()));
    env
}

/// Directly through PKCS#11 (not through the tool): the private key's secret attributes are
/// unreadable, C_WrapKey is refused, CKA_EXTRACTABLE cannot be set to true, and the usage flags
/// are the role's.
///
/// Reads INNER_MODULE, INNER_TOKEN, INNER_LABEL, INNER_ROLE and SEQUESTER_CUSTODY_PIN; runs in
/// the child process of [`run_isolated`] (it initialises the module in-process).
pub fn check_private_key_locked_down() {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::error::{Error as CkError, RvError};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;
    let module = std::env::var("INNER_MODULE").unwrap();
    let label = std::env::var("INNER_LABEL").unwrap();
    let token = std::env::var("INNER_TOKEN").unwrap();
    let role = std::env::var("INNER_ROLE").unwrap();
    let pin = std::env::var("SEQUESTER_CUSTODY_PIN").unwrap();
    let ctx = Pkcs11::new(module).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = ctx
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label() == token)
        .unwrap();
    let session = ctx.open_rw_session(slot).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::new(pin.into())))
        .unwrap();
    let keys = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(KeyType::RSA),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .unwrap();
    assert_eq!(keys.len(), 1);
    let key = keys[0];

    assert_secret_components_unreadable(&session, key, &format!("{label} ({role})"));

    // Usage flags: authority = sign only, service = decrypt only.
    let flags = session
        .get_attributes(
            key,
            &[
                AttributeType::Sign,
                AttributeType::Decrypt,
                AttributeType::Unwrap,
                AttributeType::Token,
                AttributeType::Private,
            ],
        )
        .unwrap();
    let want_sign = role == "authority";
    for a in &flags {
        match a {
            Attribute::Sign(b) => assert_eq!(*b, want_sign, "CKA_SIGN"),
            Attribute::Decrypt(b) => assert_eq!(*b, !want_sign, "CKA_DECRYPT"),
            Attribute::Unwrap(b) => assert!(!*b, "CKA_UNWRAP"),
            Attribute::Token(b) => assert!(*b, "CKA_TOKEN"),
            Attribute::Private(b) => assert!(*b, "CKA_PRIVATE"),
            _ => {}
        }
    }
    assert_eq!(flags.len(), 5, "{flags:?}");

    // C_WrapKey with a fresh AES wrapping key is refused.
    let wrapping = session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(false),
                Attribute::ValueLen(32.into()),
                Attribute::Wrap(true),
                Attribute::Encrypt(true),
            ],
        )
        .unwrap();
    assert_wrap_refused(&session, wrapping, key, &format!("{label} ({role})"));

    // CKA_EXTRACTABLE cannot go back to true.
    let set = session.update_attributes(key, &[Attribute::Extractable(true)]);
    assert!(
        matches!(
            set,
            Err(CkError::Pkcs11(
                RvError::AttributeReadOnly
                    | RvError::ActionProhibited
                    | RvError::AttributeValueInvalid,
                _
            ))
        ),
        "setting CKA_EXTRACTABLE=true: {set:?}"
    );
    let still = session
        .get_attributes(key, &[AttributeType::Extractable])
        .unwrap();
    assert!(matches!(still[..], [Attribute::Extractable(false)]));
}

/// Through PKCS#11: the private key's secret components are reported sensitive (or unavailable)
/// and never returned (`get_attributes` would silently drop them). `what` names the key.
pub fn assert_secret_components_unreadable(
    session: &cryptoki::session::Session,
    key: cryptoki::object::ObjectHandle,
    what: &str,
) {
    use cryptoki::object::{AttributeInfo, AttributeType};
    let info = session
        .get_attribute_info(
            key,
            &[
                AttributeType::PrivateExponent,
                AttributeType::Prime1,
                AttributeType::Prime2,
                AttributeType::Coefficient,
            ],
        )
        .unwrap();
    for i in &info {
        assert!(
            matches!(i, AttributeInfo::Sensitive | AttributeInfo::Unavailable),
            "{what}: secret attribute readable: {info:?}"
        );
    }
    let got = session
        .get_attributes(
            key,
            &[AttributeType::PrivateExponent, AttributeType::Prime1],
        )
        .unwrap();
    assert!(
        got.is_empty(),
        "{what}: a secret component was returned: {got:?}"
    );
}

/// Through PKCS#11: C_WrapKey of the private key with the AES key `wrapping` is refused by at
/// least one wrap mechanism the token implements. `what` names the key.
pub fn assert_wrap_refused(
    session: &cryptoki::session::Session,
    wrapping: cryptoki::object::ObjectHandle,
    key: cryptoki::object::ObjectHandle,
    what: &str,
) {
    use cryptoki::error::{Error as CkError, RvError};
    use cryptoki::mechanism::Mechanism;
    let mut refusals = 0;
    for mech in [Mechanism::AesKeyWrapPad, Mechanism::AesCbcPad([7u8; 16])] {
        let wrapped = session.wrap_key(&mech, wrapping, key);
        eprintln!("{what}: wrap with {mech:?}: {wrapped:?}");
        match wrapped {
            Err(CkError::Pkcs11(
                RvError::KeyUnextractable | RvError::KeyFunctionNotPermitted,
                _,
            )) => refusals += 1,
            // A token that does not implement this wrap mechanism proves nothing either way.
            Err(CkError::Pkcs11(RvError::MechanismInvalid, _)) => {}
            other => panic!("{what}: C_WrapKey with {mech:?}: {other:?}"),
        }
    }
    assert!(
        refusals >= 1,
        "{what}: no wrap mechanism was even tried on the key"
    );
}

/// Starts `cmd` in a new session without a controlling terminal (no `/dev/tty` to prompt on).
pub fn detach_from_terminal(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe and only affects the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
}

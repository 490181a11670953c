//! Hostile exports through the REAL Parsec server (docs/adversarial-suite.md).
//!
//! `tests/adversarial/make_adversarial.py` (run once, with the interop venv's python) starts the
//! real server, bootstraps a sequestered organisation with the fixture authority key and service
//! 1, and as member devices uploads one realm per attack (crafted msgpack, signed and encrypted
//! like a client would), exports every realm with the real `parsec export_realm` CLI, then damages
//! copies of the clean export at the SQLite level. Each case also holds legitimate files.
//!
//! Then, for every case, each command — `export info`, `verify`, `ls -R /`, `extract`, `mount` with
//! `find` and reads — must: end within a bounded time, never panic, report a clear error or a
//! per-entry problem, stay under 1 GiB of RSS, write nothing outside DEST, leave the export
//! byte-identical, and still give the legitimate files. Expectations are one table row per case
//! ([`EXPECTATIONS`]). Every failure of every case is collected and printed as one table, then the
//! test fails if there is any.
//!
//! Problem texts are matched loosely: any of a few lower-case substrings, searched in the
//! problem kinds and reasons of `--json` output or in stderr (documented in
//! `docs/adversarial-suite.md`).
#![cfg(feature = "mount")] // every case is also mounted

use crate::common;
use crate::common::mount as mount_support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::common::SoftHsm;
use serde_json::Value;

/// Wall-clock bound of one command (the exports are < 1 MiB: a correct tool needs < 2 s).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// Judged memory bound (max RSS of the command).
const MAX_RSS_BYTES: u64 = 1 << 30;
/// Safety net so a runaway command cannot take the shared machine down: address space and file
/// size limits of every child (exceeding them kills it, which the suite reports).
const SAFETY_ADDRESS_SPACE: u64 = 6 << 30;
const SAFETY_FILE_SIZE: u64 = 1 << 30;
/// Cases run concurrently (CI has 2 cores).
const PARALLEL_CASES: usize = 2;

/// How a case must be reported.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Report {
    /// Per-entry problems: `verify` lists problems, `ls`/`extract`/`mount` still work and give
    /// the legitimate files.
    PerEntry,
    /// Either a per-entry problem or one clear error refusing the whole export.
    EntryOrWhole,
    /// The whole export must be refused with one clear error by every command but `info`
    /// (`info` too when `info_fails`).
    Whole,
    /// Nothing the service can check is wrong: every command succeeds (verify exits 0).
    Clean,
}

struct Expect {
    case: &'static str,
    report: Report,
    /// Lower-case substrings; a problem/error text must contain one of them.
    problem: &'static [&'static str],
    /// The legitimate files must come out of `extract` and the mount, byte-exact.
    legit_required: bool,
    /// Workspace paths that must NOT be extracted (content that does not verify).
    not_extracted: &'static [&'static str],
    /// `export info` (no key) must fail too.
    info_fails: bool,
    /// Each hostile entry's last path component must appear in some verify problem.
    per_entry_paths: bool,
}

const DAMAGE: &[&str] = &[
    "corrupt",
    "malformed",
    "not a database",
    "sqlite",
    "truncat",
    "signature",
    "decrypt",
    "invalid",
    "schema",
    "unusable",
    "missing",
    "does not",
    "mismatch",
    "too large",
    "limit",
    "not found",
    "undecodable",
    "another realm",
];

const fn row(case: &'static str, report: Report, problem: &'static [&'static str]) -> Expect {
    Expect {
        case,
        report,
        problem,
        legit_required: true,
        not_extracted: &[],
        info_fails: false,
        per_entry_paths: false,
    }
}

const fn damage(case: &'static str, report: Report, legit_required: bool) -> Expect {
    Expect {
        case,
        report,
        problem: DAMAGE,
        legit_required,
        not_extracted: &[],
        info_fails: false,
        per_entry_paths: false,
    }
}

/// One row per case built by `make_adversarial.py`.
const EXPECTATIONS: &[Expect] = &[
    row("baseline", Report::Clean, &[]),
    Expect {
        per_entry_paths: true,
        ..row(
            "root_self_child",
            Report::PerEntry,
            &["cycle", "ancestor", "root", "loop", "itself"],
        )
    },
    Expect {
        per_entry_paths: true,
        not_extracted: &["/a/b/back-to-a", "/a/b/back-to-root", "/wrong-parent.txt"],
        ..row(
            "ancestor_cycle",
            Report::PerEntry,
            &["cycle", "ancestor", "parent", "loop", "root"],
        )
    },
    row(
        "fanout_8pow9",
        Report::PerEntry,
        &[
            "duplicate",
            "listed under",
            "limit",
            "too many",
            "already",
            "more than once",
        ],
    ),
    Expect {
        per_entry_paths: true,
        not_extracted: &["/deep-folder", "/deep-file"],
        ..row(
            "nested_arrays",
            Report::PerEntry,
            &["depth", "nest", "deep", "limit"],
        )
    },
    Expect {
        per_entry_paths: true,
        not_extracted: &["/terabyte.bin", "/two-pow-50.bin", "/u64-max.bin"],
        ..row(
            "huge_sizes",
            Report::PerEntry,
            &["size", "absurd", "limit", "too large"],
        )
    },
    Expect {
        per_entry_paths: true,
        not_extracted: &["/bomb"],
        ..row(
            "zstd_bomb",
            Report::PerEntry,
            &["decompress", "zstd", "too large", "limit", "size", "bomb"],
        )
    },
    Expect {
        per_entry_paths: true,
        not_extracted: &["/by-revoked.txt"],
        ..row(
            "revoked_author",
            Report::PerEntry,
            &["revoked", "revocation"],
        )
    },
    Expect {
        per_entry_paths: true,
        not_extracted: &["/by-reader.txt"],
        ..row(
            "reader_author",
            Report::PerEntry,
            &["role", "reader", "not allowed", "writ"],
        )
    },
    row(
        "duplicate_ids",
        Report::PerEntry,
        &["duplicate", "listed under", "more than once"],
    ),
    row(
        "bad_names",
        Report::PerEntry,
        &["name", "nfc", "normali", "escape"],
    ),
    Expect {
        per_entry_paths: true,
        not_extracted: &[
            "/overlap.bin",
            "/beyond-size.bin",
            "/far-offset.bin",
            "/size-lie.bin",
            "/unsorted.bin",
            "/cross-span.bin",
            "/blocksize-zero.bin",
        ],
        ..row(
            "bad_blocks",
            Report::PerEntry,
            &["block", "overlap", "offset", "range", "size", "span"],
        )
    },
    Expect {
        per_entry_paths: true,
        not_extracted: &["/missing-block.bin"],
        ..row(
            "missing_block",
            Report::PerEntry,
            &[
                "missing",
                "not found",
                "absent",
                "not in the export",
                "block",
            ],
        )
    },
    Expect {
        per_entry_paths: true,
        not_extracted: &["/wrong-id.txt", "/impersonates-legit-a.txt"],
        ..row(
            "id_mismatch",
            Report::PerEntry,
            &["id", "mismatch", "differs"],
        )
    },
    Expect {
        per_entry_paths: true,
        not_extracted: &["/unknown-signer.txt", "/forged-bob.txt"],
        ..row(
            "unknown_device",
            Report::PerEntry,
            &["author", "device", "signature", "signed"],
        )
    },
    Expect {
        per_entry_paths: true,
        not_extracted: &["/impostor-bob.txt"],
        ..row(
            "duplicate_certificate",
            Report::PerEntry,
            &["duplicate", "already", "second", "certificate"],
        )
    },
    Expect {
        info_fails: true,
        ..damage("trunc_half", Report::Whole, false)
    },
    Expect {
        info_fails: true,
        ..damage("trunc_header", Report::Whole, false)
    },
    damage("flip_info", Report::Whole, false),
    damage("flip_common_certificate", Report::EntryOrWhole, false),
    damage("flip_sequester_certificate", Report::EntryOrWhole, false),
    damage("flip_realm_certificate", Report::EntryOrWhole, false),
    damage("flip_realm_keys_bundle", Report::EntryOrWhole, false),
    // Users' keys-bundle accesses are encrypted to the users: a service cannot check them.
    damage("flip_realm_keys_bundle_access", Report::Clean, true),
    damage(
        "flip_realm_sequester_keys_bundle_access",
        Report::EntryOrWhole,
        false,
    ),
    damage("flip_vlob_atom", Report::EntryOrWhole, false),
    damage("flip_block", Report::EntryOrWhole, false),
    damage("flip_block_data", Report::EntryOrWhole, false),
    damage("flip_raw_pages", Report::EntryOrWhole, false),
    Expect {
        problem: &[
            "decompress",
            "zstd",
            "too large",
            "limit",
            "size",
            "signature",
            "undecodable",
        ],
        ..damage("cert_bomb", Report::EntryOrWhole, false)
    },
    // The baseline tree under a fresh root key, naming the genuine organisation, checked with the
    // genuine root key: refused (the trust anchor).
    Expect {
        problem: &["root", "anchor", "pin", "fingerprint", "mismatch"],
        ..damage("forged_root", Report::Whole, false)
    },
    Expect {
        problem: &["schema", "view", "trigger"],
        info_fails: true,
        ..damage("schema_extra", Report::Whole, false)
    },
];

// ---------------------------------------------------------------- bounded child processes

struct Run {
    code: Option<i32>,
    signal: Option<i32>,
    timed_out: bool,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    max_rss_bytes: u64,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    /// The generic rules every command obeys: bounded time, no panic, not killed, memory bound.
    fn generic_failures(&self, what: &str) -> Vec<String> {
        let mut f = Vec::new();
        if self.timed_out {
            f.push(format!(
                "{what}: still running after {COMMAND_TIMEOUT:?} (killed)"
            ));
        }
        if let Some(s) = self.signal.filter(|_| !self.timed_out) {
            f.push(format!(
                "{what}: killed by signal {s} (6 = abort, e.g. allocation failure; 11 = stack overflow; 25 = file size limit) {}",
                tail(&self.stderr())
            ));
        }
        if self.code == Some(101) || self.stderr().contains("panicked") {
            f.push(format!("{what}: PANIC {}", tail(&self.stderr())));
        }
        if self.max_rss_bytes > MAX_RSS_BYTES {
            f.push(format!(
                "{what}: max RSS {} MiB > 1 GiB",
                self.max_rss_bytes >> 20
            ));
        }
        f
    }
}

fn tail(s: &str) -> String {
    let s = s.trim();
    let start = s.char_indices().rev().nth(400).map(|(i, _)| i).unwrap_or(0);
    format!("[{}]", s[start..].replace('\n', " | "))
}

/// Reads a pipe, keeping at most `cap` bytes (a runaway `ls -R` prints for ever).
fn drain(mut r: impl Read + Send + 'static, cap: usize) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = cap.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
        kept
    })
}

/// Own session (no terminal to prompt on, one group to kill), safety limits, no core dumps.
fn harden(cmd: &mut Command) {
    // SAFETY: setsid/setrlimit are async-signal-safe and only affect the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            for (res, v) in [
                (libc::RLIMIT_AS, SAFETY_ADDRESS_SPACE),
                (libc::RLIMIT_FSIZE, SAFETY_FILE_SIZE),
                (libc::RLIMIT_CORE, 0),
            ] {
                let lim = libc::rlimit {
                    rlim_cur: v,
                    rlim_max: v,
                };
                libc::setrlimit(res, &lim);
            }
            Ok(())
        });
    }
}

/// Waits for `pid` (our child) up to `timeout`, then SIGKILLs its process group. Returns
/// (wait status, rusage, timed out).
fn wait_bounded(pid: i32, timeout: Duration) -> (i32, libc::rusage, bool) {
    let start = Instant::now();
    // SAFETY: rusage is plain data.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            return (status, ru, false);
        }
        if start.elapsed() > timeout {
            // SAFETY: the child leads its own session/group.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::wait4(pid, &mut status, 0, &mut ru);
            }
            return (status, ru, true);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// The child is reaped by `wait4` in [`wait_bounded`], which also gives its rusage.
#[allow(clippy::zombie_processes)]
fn run_bounded(mut cmd: Command, timeout: Duration) -> Run {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    harden(&mut cmd);
    let mut child = cmd.spawn().expect("spawn");
    let out = drain(child.stdout.take().unwrap(), 8 << 20);
    let err = drain(child.stderr.take().unwrap(), 1 << 20);
    let (status, ru, timed_out) = wait_bounded(child.id() as i32, timeout);
    finish(
        status,
        ru,
        timed_out,
        out.join().unwrap(),
        err.join().unwrap(),
    )
}

fn finish(status: i32, ru: libc::rusage, timed_out: bool, stdout: Vec<u8>, stderr: Vec<u8>) -> Run {
    Run {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        timed_out,
        stdout,
        stderr,
        max_rss_bytes: ru.ru_maxrss as u64 * 1024,
    }
}

// ---------------------------------------------------------------- the generated cases

struct Case {
    name: String,
    export: PathBuf,
    sha256: String,
    root_key: String,
    legit: BTreeMap<String, String>,
    /// (workspace path, vlob ID when listed in the root)
    hostile: Vec<(String, Option<String>)>,
}

fn generate(out: &Path) -> (Value, Vec<Case>) {
    let py = common::oracle_python_path();
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/adversarial/make_adversarial.py");
    let shared = common::shared_dir();
    let t = Instant::now();
    let o = Command::new(&py)
        .arg(&script)
        .arg("--interop")
        .arg(shared.join("interop"))
        .arg("--fixtures")
        .arg(shared.join("fixtures/parsec"))
        .arg("--out")
        .arg(out)
        .output()
        .expect("running make_adversarial.py");
    assert!(
        o.status.success(),
        "make_adversarial.py failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!(
        "hostile exports generated in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let summary: Value =
        serde_json::from_slice(&std::fs::read(out.join("cases.json")).unwrap()).unwrap();
    let cases = summary["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().into(),
            export: c["export"].as_str().unwrap().into(),
            sha256: c["sha256"].as_str().unwrap().into(),
            root_key: c["root_verify_key"].as_str().unwrap().into(),
            legit: c["legit"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(p, h)| (p.clone(), h.as_str().unwrap().into()))
                .collect(),
            hostile: c["hostile"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|h| {
                    h["path"]
                        .as_str()
                        .map(|p| (p.to_string(), h["id"].as_str().map(String::from)))
                })
                .collect(),
        })
        .collect();
    (summary, cases)
}

// ---------------------------------------------------------------- running one case

struct Ctx {
    key: String,
    env: Vec<(String, String)>,
    /// The tool takes `--root-key` (the trust anchor, docs/formats.md §11): pass the genuine root
    /// key.
    root_key_flag: bool,
    fuse: bool,
}

impl Ctx {
    fn cmd(&self, cwd: &Path, sub: &[&str], export: &Path, root_key: &str, json: bool) -> Command {
        let mut c = common::cli();
        c.current_dir(cwd);
        if json {
            c.arg("--json");
        }
        c.arg("export").arg(sub[0]).arg(export).args(&sub[1..]);
        if sub[0] != "info" {
            c.args(["--key", &self.key]);
        }
        if self.root_key_flag && !root_key.is_empty() {
            c.args(["--root-key", root_key]);
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c.env(
            "SEQUESTER_CUSTODY_TRANSCRIPT",
            cwd.join("../transcript.jsonl"),
        );
        c
    }
}

fn contains_any(text: &str, needles: &[&str]) -> bool {
    let t = text.to_lowercase();
    needles.is_empty() || needles.iter().any(|n| t.contains(n))
}

/// Kinds and reasons of `verify --json` problems (`list` = "problems") or notices, one per line
/// (paths apart).
fn verify_problems(v: &Value, list: &str) -> Vec<(String, String)> {
    v["report"][list]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        format!(
                            "[{}] {}",
                            p["kind"].as_str().unwrap_or(""),
                            p["reason"].as_str().unwrap_or("")
                        ),
                        format!(
                            "{} {}",
                            p["path"].as_str().unwrap_or(""),
                            p["entry_id"].as_str().unwrap_or("")
                        ),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Terminal control characters a name could smuggle (cursor moves, colours, bidi override).
fn control_chars(s: &[u8]) -> bool {
    let text = String::from_utf8_lossy(s);
    text.chars().any(|c| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    })
}

fn sha256_hex(p: &Path) -> Option<String> {
    std::fs::read(p).ok().map(|d| {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(d))
    })
}

/// Every path under `root` (relative), files and folders, not following symlinks.
fn tree(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().to_path_buf());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p);
            }
            if out.len() > 200_000 {
                return out;
            }
        }
    }
    out
}

fn run_case(ctx: &Ctx, case: &Case, exp: &Expect, sandbox: &Path) -> Vec<String> {
    let mut f: Vec<String> = Vec::new();
    let export = case.export.as_path();
    let work = sandbox.join("work");
    let out_dir = work.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let dest = out_dir.join("tree");
    let record = out_dir.join("tree.custody.json");
    let whole_ok = exp.report != Report::PerEntry && exp.report != Report::Clean;

    if common::file_sha256(export) != case.sha256 {
        f.push("export changed before the tool ran (generator problem)".into());
    }

    // ---- info (no key)
    let r = run_bounded(
        ctx.cmd(&work, &["info"], export, &case.root_key, true),
        COMMAND_TIMEOUT,
    );
    f.extend(r.generic_failures("info"));
    if exp.info_fails && r.code == Some(0) {
        f.push("info: accepted an export that must be refused".into());
    }
    if exp.info_fails && r.code.is_some_and(|c| c != 0) && !contains_any(&r.stderr(), exp.problem) {
        f.push(format!(
            "info: error does not say what is wrong {}",
            tail(&r.stderr())
        ));
    }
    // Hostile content is not for `info` to judge (it reads no manifest): it must still describe
    // the export.
    if matches!(exp.report, Report::Clean | Report::PerEntry) && r.code != Some(0) {
        f.push(format!(
            "info: failed on a sound export {}",
            tail(&r.stderr())
        ));
    }

    // ---- verify
    let r = run_bounded(
        ctx.cmd(&work, &["verify"], export, &case.root_key, true),
        COMMAND_TIMEOUT,
    );
    f.extend(r.generic_failures("verify"));
    if !r.timed_out {
        let json: Value = serde_json::from_slice(&r.stdout).unwrap_or(Value::Null);
        let problems = verify_problems(&json, "problems");
        // Notices (shown, not failing verify) name entries the listings do not show, e.g. a
        // child whose manifest names another parent: they count for naming hostile entries.
        let named_in = [problems.clone(), verify_problems(&json, "notices")].concat();
        let texts: Vec<&str> = problems.iter().map(|(t, _)| t.as_str()).collect();
        let all = texts.join("\n");
        match exp.report {
            Report::Clean => {
                if r.code != Some(0) {
                    f.push(format!(
                        "verify: exit {:?} on an export without problems: {} {}",
                        r.code,
                        all,
                        tail(&r.stderr())
                    ));
                }
            }
            _ => {
                if r.code == Some(0) {
                    f.push("verify: exit 0 (OK) on a hostile export".into());
                } else if problems.is_empty() {
                    if !whole_ok {
                        f.push(format!(
                            "verify: no per-entry problem listed (exit {:?}) {}",
                            r.code,
                            tail(&r.stderr())
                        ));
                    } else if !contains_any(&(r.stdout() + &r.stderr()), exp.problem) {
                        f.push(format!(
                            "verify: unclear error {}",
                            tail(&(r.stdout() + &r.stderr()))
                        ));
                    }
                } else if !texts.iter().any(|t| contains_any(t, exp.problem)) {
                    f.push(format!(
                        "verify: no problem mentions any of {:?}: {}",
                        exp.problem,
                        tail(&all)
                    ));
                }
                if exp.per_entry_paths && !problems.is_empty() {
                    for (h, id) in &case.hostile {
                        let name = h.rsplit('/').next().unwrap_or(h);
                        // By vlob ID when known, else by full path or quoted name (a bare
                        // one-letter name would match anything).
                        let named = |text: &str| match id {
                            Some(id) => text.contains(id.as_str()) || text.contains(h.as_str()),
                            None => {
                                text.contains(h.as_str())
                                    || text.contains(&format!("`{name}`"))
                                    || text.contains(&format!("\"{name}\""))
                            }
                        };
                        if !named_in.iter().any(|(t, p)| named(p) || named(t)) {
                            f.push(format!(
                                "verify: no problem or notice names hostile entry {h}"
                            ));
                        }
                    }
                }
            }
        }
    }

    // Without any anchor, verify never says a bare OK: "not anchored", its own exit code.
    if ctx.root_key_flag && (case.name == "baseline" || case.name == "forged_root") {
        let r = run_bounded(
            ctx.cmd(&work, &["verify"], export, "", false),
            COMMAND_TIMEOUT,
        );
        f.extend(r.generic_failures("verify (no root key)"));
        let text = format!("{}{}", r.stdout(), r.stderr()).to_lowercase();
        if r.code == Some(0) || !text.contains("not anchored") {
            f.push(format!(
                "verify (no root key, nothing pinned): exit {:?}, `not anchored` not said {}",
                r.code,
                tail(&text)
            ));
        }
    }

    // ---- ls -R /
    let r = run_bounded(
        ctx.cmd(
            &work,
            &["ls", "/", "-R", "-l"],
            export,
            &case.root_key,
            true,
        ),
        COMMAND_TIMEOUT,
    );
    f.extend(r.generic_failures("ls -R"));
    if !r.timed_out {
        let json: Value = serde_json::from_slice(&r.stdout).unwrap_or(Value::Null);
        if r.code.is_some_and(|c| c != 0) {
            if !whole_ok {
                f.push(format!(
                    "ls -R: failed (exit {:?}) {}",
                    r.code,
                    tail(&r.stderr())
                ));
            } else if !contains_any(&(r.stdout() + &r.stderr()), exp.problem) {
                f.push(format!(
                    "ls -R: unclear error {}",
                    tail(&(r.stdout() + &r.stderr()))
                ));
            }
        } else if exp.legit_required {
            let entries = json["entries"].as_array().cloned().unwrap_or_default();
            for p in case.legit.keys() {
                let ok = entries.iter().any(|e| {
                    e["path"].as_str() == Some(p.as_str()) && e["invalid"].as_bool() != Some(true)
                });
                if !ok {
                    f.push(format!("ls -R: legitimate {p} not listed as readable"));
                }
            }
        }
    }
    if case.name == "bad_names" {
        for (what, sub) in [
            ("ls -R (text)", &["ls", "/", "-R", "-l"][..]),
            ("verify (text)", &["verify"][..]),
        ] {
            let r = run_bounded(
                ctx.cmd(&work, sub, export, &case.root_key, false),
                COMMAND_TIMEOUT,
            );
            f.extend(r.generic_failures(what));
            if control_chars(&r.stdout) || control_chars(&r.stderr) {
                f.push(format!(
                    "{what}: raw control characters from entry names reach the terminal"
                ));
            }
        }
    }

    // ---- extract
    let r = run_bounded(
        ctx.cmd(
            &work,
            &["extract", dest.to_str().unwrap()],
            export,
            &case.root_key,
            true,
        ),
        COMMAND_TIMEOUT,
    );
    f.extend(r.generic_failures("extract"));
    // A killed extraction cannot remove its temporary sibling: that is reported as the kill.
    let extract_killed = r.timed_out || r.signal.is_some();
    if !r.timed_out {
        let succeeded = r.code == Some(0);
        if !succeeded {
            if dest.exists() || record.exists() {
                f.push("extract: failed but left DEST or its custody record behind".into());
            }
            if !whole_ok || exp.legit_required {
                f.push(format!(
                    "extract: failed (exit {:?}), the legitimate tree is not extracted {}",
                    r.code,
                    tail(&r.stderr())
                ));
            } else if !contains_any(&r.stderr(), exp.problem) {
                f.push(format!("extract: unclear error {}", tail(&r.stderr())));
            }
        } else {
            for (p, sha) in &case.legit {
                let local = dest.join(p.trim_start_matches('/'));
                match sha256_hex(&local) {
                    Some(h) if &h == sha => {}
                    Some(_) => f.push(format!("extract: {p} extracted with WRONG content")),
                    None if exp.legit_required => {
                        f.push(format!("extract: legitimate {p} not extracted"))
                    }
                    None => {}
                }
                if let Ok(m) = std::fs::symlink_metadata(&local) {
                    use std::os::unix::fs::PermissionsExt;
                    if m.permissions().mode() & 0o077 != 0 {
                        f.push(format!(
                            "extract: {p} has mode {:o} (evidence readable by other users)",
                            m.permissions().mode() & 0o777
                        ));
                    }
                }
            }
            // Evidence hygiene: folders 0700 like the files' 0600, DEST included.
            if let Ok(m) = std::fs::symlink_metadata(&dest) {
                use std::os::unix::fs::PermissionsExt;
                if m.permissions().mode() & 0o077 != 0 {
                    f.push(format!(
                        "extract: DEST has mode {:o}",
                        m.permissions().mode() & 0o777
                    ));
                }
            }
            for p in case.legit.keys() {
                let mut dir = Path::new(p.trim_start_matches('/')).parent();
                while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
                    if let Ok(m) = std::fs::symlink_metadata(dest.join(d)) {
                        use std::os::unix::fs::PermissionsExt;
                        if m.permissions().mode() & 0o077 != 0 {
                            f.push(format!(
                                "extract: folder /{} has mode {:o}",
                                d.display(),
                                m.permissions().mode() & 0o777
                            ));
                        }
                    }
                    dir = d.parent();
                }
            }
            for p in exp.not_extracted {
                if dest.join(p.trim_start_matches('/')).exists() {
                    f.push(format!(
                        "extract: {p} extracted although it does not verify"
                    ));
                }
            }
            let rec: Value = std::fs::read(&record)
                .ok()
                .and_then(|d| serde_json::from_slice(&d).ok())
                .unwrap_or(Value::Null);
            if rec.is_null() {
                f.push("extract: succeeded without a readable custody record".into());
            }
            let reported = rec["unreadable"].as_array().map_or(0, |a| a.len())
                + rec["problems"].as_array().map_or(0, |a| a.len());
            match exp.report {
                Report::Clean if reported != 0 => f.push(format!(
                    "extract: {reported} entries reported on a sound export"
                )),
                Report::Whole => {
                    f.push("extract: succeeded on an export that must be refused".into())
                }
                Report::PerEntry | Report::EntryOrWhole if reported == 0 => {
                    f.push("extract: succeeded and the custody record reports no problem".into())
                }
                _ => {}
            }
        }
    }

    // ---- mount + find + reads
    if ctx.fuse {
        f.extend(mount_case(ctx, case, exp, &work, whole_ok));
    }

    // ---- nothing outside DEST, export unchanged
    for p in tree(sandbox) {
        let s = p.to_string_lossy();
        let allowed = s == "work"
            || s == "transcript.jsonl"
            || s == "work/out"
            || s == "work/mnt"
            || s == "work/out/tree"
            || s == "work/out/tree.custody.json"
            || s.starts_with("work/out/tree/")
            || (extract_killed && s.starts_with("work/out/.tree.partial-"));
        if !allowed {
            f.push(format!("written outside DEST: {s}"));
        }
    }
    // Names climbing to /tmp carry a per-run tag.
    for (h, _) in &case.hostile {
        if let Some(i) = h.find("adv-escape-") {
            let escaped = Path::new("/tmp").join(&h[i..]);
            if escaped.symlink_metadata().is_ok() {
                f.push(format!("written outside DEST: {}", escaped.display()));
            }
        }
    }
    if common::file_sha256(export) != case.sha256 {
        f.push("the export file CHANGED".into());
    }
    f
}

// The mount process is reaped by `wait4` in [`wait_bounded`] (its rusage is the point).
#[allow(clippy::zombie_processes)]
fn mount_case(ctx: &Ctx, case: &Case, exp: &Expect, work: &Path, whole_ok: bool) -> Vec<String> {
    let mut f = Vec::new();
    let mnt = work.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut cmd = ctx.cmd(
        work,
        &["mount", mnt.to_str().unwrap()],
        &case.export,
        &case.root_key,
        false,
    );
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    harden(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let pid = child.id() as i32;
    let err = drain(child.stderr.take().unwrap(), 1 << 20);
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(l)) = lines.next() {
            let _ = tx.send(l);
        }
        for _ in lines {}
    });
    let banner = rx.recv_timeout(COMMAND_TIMEOUT).ok();
    let mounted = banner.as_deref().is_some_and(|b| b.starts_with("Mounted "));
    if mounted {
        let mut find = Command::new("find");
        find.arg(&mnt);
        let r = run_bounded(find, COMMAND_TIMEOUT);
        if r.timed_out {
            f.push("mount: `find` of the mount still running after the time limit".into());
        }
        if r.signal.is_some() && !r.timed_out {
            f.push("mount: `find` killed".into());
        }
        for (p, sha) in &case.legit {
            let mut c = Command::new("sha256sum");
            c.arg(mnt.join(p.trim_start_matches('/')));
            let r = run_bounded(c, COMMAND_TIMEOUT);
            let got = r
                .stdout()
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string();
            if r.timed_out {
                f.push(format!("mount: reading {p} hangs"));
            } else if r.code == Some(0) && &got != sha {
                f.push(format!("mount: {p} read with WRONG content"));
            } else if r.code != Some(0) && exp.legit_required {
                f.push(format!(
                    "mount: legitimate {p} unreadable {}",
                    tail(&r.stderr())
                ));
            }
        }
        for p in exp.not_extracted {
            let mut c = Command::new("cat");
            c.arg(mnt.join(p.trim_start_matches('/')));
            let r = run_bounded(c, COMMAND_TIMEOUT);
            if r.timed_out {
                f.push(format!("mount: reading {p} hangs"));
            } else if r.code == Some(0) {
                f.push(format!("mount: {p} readable although it does not verify"));
            }
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let (status, ru, timed_out) = wait_bounded(
        pid,
        if mounted {
            Duration::from_secs(10)
        } else {
            COMMAND_TIMEOUT
        },
    );
    let r = finish(status, ru, timed_out, Vec::new(), err.join().unwrap());
    if !mount_support::wait_unmounted(&mnt, Duration::from_secs(5)) {
        f.push("mount: still mounted after the process ended".into());
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(&mnt)
            .status();
    }
    if mounted {
        f.extend(r.generic_failures("mount"));
        if r.signal.is_some() || r.code.is_some_and(|c| c != 0) {
            f.push(format!(
                "mount: died or failed while serving (exit {:?}, signal {:?}) {}",
                r.code,
                r.signal,
                tail(&r.stderr())
            ));
        }
        if exp.report == Report::Whole {
            f.push("mount: mounted an export that must be refused".into());
        }
    } else {
        f.extend(r.generic_failures("mount"));
        if !whole_ok || exp.legit_required {
            f.push(format!(
                "mount: did not mount (banner {banner:?}, exit {:?}) {}",
                r.code,
                tail(&r.stderr())
            ));
        } else if !contains_any(&r.stderr(), exp.problem) {
            f.push(format!("mount: unclear error {}", tail(&r.stderr())));
        }
    }
    f
}

#[test]
fn hostile_exports_through_the_real_server() {
    if common::oracle_python().is_none() {
        return;
    }
    // One token per worker: concurrent processes on one SoftHSM2 token directory occasionally
    // fail to find the token.
    let mut hsms = Vec::new();
    for i in 0..PARALLEL_CASES {
        let Some(hsm) = SoftHsm::new(&format!("adversarial{i}")) else {
            return;
        };
        hsm.import_with_softhsm_util(
            &common::fixture("sequester_service_1.00000000000000000000000000000001.private.pem"),
            "svc1",
            "01",
        );
        hsms.push(hsm);
    }
    let dir = tempfile::tempdir().unwrap();
    let (_summary, cases) = generate(&dir.path().join("exports"));

    // Every generated case has a row, every row a case.
    for c in &cases {
        assert!(
            EXPECTATIONS.iter().any(|e| e.case == c.name),
            "no expectation row for case {}",
            c.name
        );
    }
    for e in EXPECTATIONS {
        assert!(
            cases.iter().any(|c| c.name == e.case),
            "expectation row {} has no generated case",
            e.case
        );
    }

    let help = common::run_cli(&["export", "verify", "--help"], &[]);
    let root_key_flag = common::stdout(&help).contains("--root-key");
    let fuse = mount_support::fuse_available();
    let mut failures: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if !root_key_flag {
        failures.insert(
            "(tool)".into(),
            vec![
                "`export verify` has no --root-key: verdicts are not anchored in the organisation"
                    .into(),
            ],
        );
    }
    let results = Mutex::new(failures);
    let next = AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|s| {
        for hsm in &hsms {
            let ctx = Ctx {
                key: hsm.key_uri("svc1"),
                env: hsm.env(),
                root_key_flag,
                fuse,
            };
            let (cases, results, next, dir) = (&cases, &results, &next, &dir);
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(case) = cases.get(i) else { break };
                let exp = EXPECTATIONS.iter().find(|e| e.case == case.name).unwrap();
                let sandbox = dir.path().join("run").join(&case.name);
                std::fs::create_dir_all(&sandbox).unwrap();
                let t = Instant::now();
                let f = run_case(&ctx, case, exp, &sandbox);
                eprintln!(
                    "{:<42} {:>5.1}s {}",
                    case.name,
                    t.elapsed().as_secs_f64(),
                    if f.is_empty() {
                        "ok".to_string()
                    } else {
                        format!("{} failure(s)", f.len())
                    }
                );
                let _ = std::fs::remove_dir_all(sandbox.join("work/out"));
                if !f.is_empty() {
                    results.lock().unwrap().insert(case.name.clone(), f);
                }
            });
        }
    });
    let failures = results.into_inner().unwrap();
    eprintln!("{} cases in {:.1}s", cases.len(), t.elapsed().as_secs_f64());
    let mut report = String::new();
    for (case, fs) in &failures {
        for x in fs {
            report.push_str(&format!("{case:<42} {x}\n"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} hostile-export cases fail:\n{report}",
        failures.len(),
        cases.len()
    );
}

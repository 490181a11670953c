//! Hostile exports through the CLI and the real FUSE mount: a root that
//! lists itself, an 8-way fan-out nine levels deep, absurd file sizes and names made of terminal
//! control sequences, in a real SQLite export written by the project's writer (with forged
//! manifest versions) and read with the service key in SoftHSM2. Every command must end quickly,
//! report the forged entries, still give the legitimate tree, and never let a name reach the
//! terminal raw.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use sequester_export_writer::forge::ForgedManifest;
use sequester_export_writer::{Content, ExportWriter, WriterConfig};

#[cfg(feature = "mount")]
use crate::common::mount::{fuse_available, Mount};

/// A name that would clear the line and print a fake "OK" on a terminal.
const ESCAPE_NAME: &str = "evil\x1b[2K\rOK";
/// A right-to-left override: `report\u{202e}fdp.exe` shows as `reportexe.pdf`.
const BIDI_NAME: &str = "report\u{202e}fdp.exe";

const GOOD: [(&str, &[u8]); 3] = [
    ("/good/a.txt", b"alpha"),
    ("/good/sub/b.txt", b"bravo"),
    ("/docs/c.txt", b"charlie"),
];

struct Env {
    hsm: common::SoftHsm,
    dir: tempfile::TempDir,
    export: PathBuf,
}

fn setup(label: &str) -> Option<Env> {
    let key = common::seeded_rsa_key(31, 1024);
    let hsm = common::SoftHsm::with_service_key(&key, label)?;
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("hostile.sqlite");
    let config = WriterConfig {
        blocksize: 512,
        seed: 9,
        authority_bits: 1024,
        ..WriterConfig::default()
    };
    let mut w = ExportWriter::create(&export, config).unwrap();
    w.add_service("svc", &common::spki_der(&key)).unwrap();
    w.rotate_key().unwrap();
    for (p, data) in GOOD {
        w.write_file(p, Content::bytes(data.to_vec())).unwrap();
    }
    for name in [ESCAPE_NAME, BIDI_NAME] {
        w.write_file(&format!("/names/{name}"), Content::bytes(b"named".to_vec()))
            .unwrap();
    }
    w.sync().unwrap();
    let root = w.realm_id();
    let mut children: Vec<(String, [u8; 16])> = ["docs", "good", "names"]
        .iter()
        .map(|n| {
            (
                n.to_string(),
                w.entry_id(&format!("/{n}")).unwrap().unwrap(),
            )
        })
        .collect();
    // The root lists itself.
    children.push(("loop".into(), root));
    // Nine levels, each listing the next under eight names: 8^9 paths, 9 folders.
    let levels: Vec<[u8; 16]> = (0..9).map(|_| w.new_entry_id()).collect();
    children.extend((0..8).map(|i| (format!("l1-{i}"), levels[0])));
    for k in 0..9 {
        let parent = if k == 0 { root } else { levels[k - 1] };
        let listed = if k + 1 < 9 {
            (0..8)
                .map(|i| (format!("l{}-{i}", k + 2), levels[k + 1]))
                .collect()
        } else {
            vec![]
        };
        w.forge_manifest(levels[k], parent, ForgedManifest::Folder(listed))
            .unwrap();
    }
    // Files declaring sizes their blocks cannot back.
    for (name, size) in [("tebibyte", 1u64 << 40), ("two-pow-50", 1 << 50)] {
        let id = w.new_entry_id();
        w.forge_manifest(
            id,
            root,
            ForgedManifest::File {
                size,
                blocksize: 512,
                blocks: vec![],
            },
        )
        .unwrap();
        children.push((name.into(), id));
    }
    w.forge_manifest(root, root, ForgedManifest::Folder(children))
        .unwrap();
    w.finish().unwrap();
    Some(Env { hsm, dir, export })
}

impl Env {
    /// Runs the CLI (umask 022, no terminal) and fails if it takes more than `secs`.
    fn run(&self, args: &[&str], secs: u64) -> Output {
        let mut cmd = common::cli();
        common::detach_from_terminal(&mut cmd);
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: umask is async-signal-safe and only affects the child.
            unsafe {
                cmd.pre_exec(|| {
                    libc::umask(0o022);
                    Ok(())
                });
            }
        }
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        for (k, v) in self.hsm.env() {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let pid = child.id() as i32;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(Duration::from_secs(secs)) {
            Ok(out) => out.unwrap(),
            Err(_) => {
                // SAFETY: killing our own child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                panic!("{args:?} did not finish within {secs} s");
            }
        }
    }

    fn export(&self) -> &str {
        self.export.to_str().unwrap()
    }
}

/// No raw control or bidi character reached the output (escaped forms are fine).
fn assert_no_raw_controls(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let bad: Vec<char> = text
        .chars()
        .filter(|c| {
            (c.is_control() && *c != '\n')
                || ('\u{202a}'..='\u{202e}').contains(c)
                || ('\u{2066}'..='\u{2069}').contains(c)
        })
        .collect();
    assert!(bad.is_empty(), "{what}: raw {bad:?} in:\n{text}");
}

#[test]
fn ls_extract_verify_timeline_end_quickly_report_the_attacks_and_escape_names() {
    let Some(env) = setup("hostile-cli") else {
        return;
    };
    let key = env.hsm.key_uri("svc");
    let export_sha = common::file_sha256(&env.export);

    // ls -R: the cycle and the 7 extra names of each level are reported, not followed.
    let started = Instant::now();
    let out = env.run(&["export", "ls", "-R", env.export(), "--key", &key], 60);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let text = common::stdout(&out);
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(text.contains("/loop  [NOT SHOWN: cycle"), "{text}");
    assert_eq!(text.matches("[NOT SHOWN: entry").count(), 9 * 7, "{text}");
    assert!(text.lines().count() < 200, "{text}");
    assert!(text.contains("/good/sub/b.txt"), "{text}");
    assert!(text.contains("evil\\x1b[2K\\rOK"), "{text}");
    assert!(text.contains("report\\u{202e}fdp.exe"), "{text}");
    assert_no_raw_controls("ls -R", &out.stdout);
    assert_no_raw_controls("ls -R stderr", &out.stderr);

    // JSON stays exact: the raw name, and the problems with their rule.
    let out = env.run(
        &["--json", "export", "ls", "-R", env.export(), "--key", &key],
        60,
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let paths: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&format!("/names/{ESCAPE_NAME}").as_str()),
        "{paths:?}"
    );
    let rules: Vec<&str> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules.iter().filter(|r| **r == "cycle").count(), 1);
    assert_eq!(rules.iter().filter(|r| **r == "duplicate_id").count(), 63);

    // extract: the legitimate tree is written (0600/0700), the forged entries are reported.
    let dest = env.dir.path().join("out");
    let out = env.run(
        &[
            "export",
            "extract",
            env.export(),
            dest.to_str().unwrap(),
            "--key",
            &key,
        ],
        60,
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_no_raw_controls("extract", &out.stdout);
    let report = common::stdout(&out);
    for (p, data) in GOOD {
        assert_eq!(std::fs::read(dest.join(&p[1..])).unwrap(), data, "{p}");
    }
    assert_eq!(
        std::fs::read(dest.join("names").join(ESCAPE_NAME)).unwrap(),
        b"named"
    );
    for name in ["/loop", "/tebibyte", "/two-pow-50", "/l1-1"] {
        assert!(report.contains(&format!("  {name} (")), "{name}: {report}");
        assert!(!dest.join(&name[1..]).exists(), "{name}");
    }
    assert!(report.contains("absurd"), "{report}");
    assert!(report.contains("maximum"), "{report}");
    check_modes(&dest, 0o600, 0o700);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.dir.path().join("out.custody.json")).unwrap())
            .unwrap();
    assert_eq!(record["token_operations"], 1);

    // --mode-from-umask widens to the usual modes (umask 022 here).
    let dest = env.dir.path().join("wide");
    let out = env.run(
        &[
            "export",
            "extract",
            env.export(),
            dest.to_str().unwrap(),
            "--key",
            &key,
            "--mode-from-umask",
        ],
        60,
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    check_modes(&dest, 0o644, 0o755);

    // verify: no longer OK, the structure problems are named, and escaped.
    let out = env.run(&["export", "verify", env.export(), "--key", &key], 60);
    assert_eq!(out.status.code(), Some(2), "{}", common::stdout(&out));
    let text = common::stdout(&out);
    assert!(text.contains("[structure]"), "{text}");
    assert!(text.contains("is listed under 8 names"), "{text}");
    assert!(text.contains("cycle"), "{text}");
    assert!(text.contains("absurd"), "{text}");
    assert_no_raw_controls("verify", &out.stdout);

    // timeline and history: bounded, escaped.
    let out = env.run(&["export", "timeline", env.export(), "--key", &key], 60);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_no_raw_controls("timeline", &out.stdout);
    assert!(common::stdout(&out).contains("evil\\x1b[2K\\rOK"));
    let target = format!("/names/{ESCAPE_NAME}");
    let out = env.run(
        &["export", "history", env.export(), &target, "--key", &key],
        60,
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_no_raw_controls("history", &out.stdout);

    assert_eq!(
        common::file_sha256(&env.export),
        export_sha,
        "export modified"
    );
}

/// Every file under `dest` has `file`, every folder `dir` (and `dest` itself).
fn check_modes(dest: &Path, file: u32, dir: u32) {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![dest.to_path_buf()];
    let mut seen = 0;
    while let Some(d) = stack.pop() {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, dir, "{}", d.display());
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                assert_eq!(
                    meta.permissions().mode() & 0o7777,
                    file,
                    "{}",
                    e.path().display()
                );
                seen += 1;
            }
        }
    }
    assert!(seen >= 5, "{seen} files");
}

#[test]
#[cfg(feature = "mount")]
fn the_mount_hides_the_cycle_and_the_extra_names_and_survives() {
    if !fuse_available() {
        return;
    }
    let Some(env) = setup("hostile-mount") else {
        return;
    };
    let mp = env.dir.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let mount = Mount::start(
        &env.export,
        &mp,
        &env.hsm.key_uri("svc"),
        &[],
        &env.hsm.env(),
    );

    // Core dumps are off in the process holding the keys.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", mount.pid())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(
        core.split_whitespace().collect::<Vec<_>>()[4..6],
        ["0", "0"],
        "{core}"
    );

    let names = |p: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let started = Instant::now();
    let root = names(&mp);
    assert!(!root.contains(&"loop".to_string()), "{root:?}");
    assert!(root.contains(&"l1-0".to_string()), "{root:?}");
    assert!(!root.contains(&"l1-1".to_string()), "{root:?}");
    assert!(std::fs::metadata(mp.join("loop")).is_err());
    assert!(std::fs::metadata(mp.join("l1-3")).is_err());
    // The chain is there once, all nine levels.
    let mut p = mp.clone();
    for k in 1..=9 {
        p = p.join(format!("l{k}-0"));
        assert!(p.is_dir(), "{}", p.display());
        if k < 9 {
            assert_eq!(names(&p), vec![format!("l{}-0", k + 1)]);
        }
    }
    // A bounded walk of the whole mount (what `find` or `cp -r` would do) ends quickly.
    let mut stack = vec![mp.clone()];
    let mut entries = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            entries += 1;
            assert!(entries < 1000, "walk does not end");
            let name = e.file_name();
            if e.file_type().unwrap().is_dir() && d != mp.join(".history") && name != ".history" {
                stack.push(e.path());
            }
        }
    }
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(std::fs::read(mp.join("good/a.txt")).unwrap(), b"alpha");
    assert_eq!(
        std::fs::read(mp.join("names").join(ESCAPE_NAME)).unwrap(),
        b"named"
    );
    // The absurd file is shown as an unreadable entry: opening it fails, the mount goes on.
    assert!(std::fs::read(mp.join("two-pow-50")).is_err());
    assert_eq!(std::fs::read(mp.join("docs/c.txt")).unwrap(), b"charlie");

    let (status, stderr) = mount.stop(libc::SIGTERM);
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("not shown /loop: cycle"), "{stderr}");
    assert_no_raw_controls("mount log", stderr.as_bytes());
}

//! The real Parsec fixture `sequestered_export.sqlite` read through the CLI with the fixture's
//! service keys imported into a real SoftHSM2 token (1024-bit published test keys).
//! Checks the fixture README timeline at every listed instant, token operation counts, and that
//! the export file is byte-identical after every command.

use crate::common;

use std::path::PathBuf;

use crate::common::{fixture, run_cli, stderr, stdout, SoftHsm};
use serde_json::Value;

const SERVICE1: &str = "sequester_service_1.00000000000000000000000000000001.private.pem";
const SERVICE2: &str = "sequester_service_2.00000000000000000000000000000002.private.pem";
const SERVICE3: &str = "sequester_service_3.00000000000000000000000000000003.private.pem";
/// `info.root_verify_key` of the fixture (organisation `Org1`), hex: the test anchor.
const FIXTURE_ROOT_KEY: &str = "c118b50c90876d8feac2ffe02d59c26f447064289091c1993d3aec170fd6a9c2";
const EXPORT_SHA256: &str = "db1cd159724b448569b9697f7a4ab21d6b770da78bb78dcaaf340d452c528ecf";

struct Env {
    hsm: SoftHsm,
    export: PathBuf,
}

fn setup() -> Option<Env> {
    let hsm = SoftHsm::new("export-fixture")?;
    hsm.import_with_softhsm_util(&fixture(SERVICE1), "svc1", "01");
    hsm.import_with_softhsm_util(&fixture(SERVICE2), "svc2", "02");
    hsm.import_with_softhsm_util(&fixture(SERVICE3), "svc3", "03");
    Some(Env {
        hsm,
        export: fixture("sequestered_export.sqlite"),
    })
}

impl Env {
    /// Runs `export <args>` and checks the export file is unchanged afterwards.
    fn run(&self, args: &[&str]) -> std::process::Output {
        let mut full = vec!["export"];
        full.extend_from_slice(args);
        let out = run_cli(&full, &self.hsm.env());
        assert_eq!(
            common::file_sha256(&self.export),
            EXPORT_SHA256,
            "export modified by {args:?}"
        );
        out
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let out = self.run(&full);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn export(&self) -> &str {
        self.export.to_str().unwrap()
    }
}

fn at(day: u32) -> String {
    format!("2000-01-{day:02}T00:00:00Z")
}

/// (path, readable, content) of one listed entry.
type Listed = (String, bool, Option<String>);

/// The entries of `/` at T through `ls --json` + `cat`.
fn tree_at(env: &Env, key: &str, t: &str) -> Result<Vec<Listed>, String> {
    let out = env.run(&["--json", "ls", env.export(), "/", "--key", key, "--at", t]);
    if !out.status.success() {
        return Err(format!("{}{}", stdout(&out), stderr(&out)));
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["context"]["service"]["token_operations"], 1);
    let mut entries = Vec::new();
    for e in v["entries"].as_array().unwrap() {
        let path = e["path"].as_str().unwrap().to_string();
        let readable = e["readable"].as_bool().unwrap();
        let content = if readable {
            let out = env.run(&["cat", env.export(), &path, "--key", key, "--at", t]);
            assert!(out.status.success(), "{}", stderr(&out));
            Some(stdout(&out))
        } else {
            assert_eq!(e["needs_key_index"], 3, "{e}");
            None
        };
        entries.push((path, readable, content));
    }
    Ok(entries)
}

#[test]
fn service1_sees_the_readme_timeline_with_one_token_operation() {
    let Some(env) = setup() else { return };
    let key = env.hsm.key_uri("svc1");
    // T < 2000-01-10: the workspace does not exist yet.
    let err = tree_at(&env, &key, &at(9)).unwrap_err();
    assert!(err.contains("did not exist yet"), "{err}");
    let file = |name: &str, content: Option<&str>| {
        (
            name.to_string(),
            content.is_some(),
            content.map(str::to_string),
        )
    };
    let expectations: [(String, Vec<Listed>); 6] = [
        (at(10), vec![file("/bar.txt", Some("Hello v1"))]),
        (at(11), vec![file("/bar.txt", Some("Hello v1"))]),
        (at(12), vec![file("/bar2.txt", Some("Hello v1"))]),
        (at(14), vec![file("/bar2.txt", Some("Hello v1"))]),
        (at(15), vec![file("/bar2.txt", Some("Hello v2"))]),
        (at(19), vec![file("/bar2.txt", Some("Hello v2"))]),
    ];
    for (t, expected) in expectations {
        assert_eq!(tree_at(&env, &key, &t).unwrap(), expected, "at {t}");
    }
    // 01-20: bar2.txt v3 is encrypted with key 3: reported, never replaced by v2.
    assert_eq!(
        tree_at(&env, &key, &at(20)).unwrap(),
        vec![file("/bar2.txt", None)]
    );
    let out = env.run(&[
        "cat",
        env.export(),
        "/bar2.txt",
        "--key",
        &key,
        "--at",
        &at(20),
    ]);
    assert!(!out.status.success());
    assert!(stdout(&out).is_empty(), "no content may be printed");
    assert!(stderr(&out).contains("key index 3"), "{}", stderr(&out));
    // 01-21 and the snapshot (default): the root itself is unreadable.
    for t in [Some(at(21)), None] {
        let mut args = vec!["ls", env.export(), "--key", &key];
        if let Some(t) = &t {
            args.extend(["--at", t]);
        }
        let out = env.run(&args);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stdout(&out).contains("UNREADABLE"), "{}", stdout(&out));
        assert!(stdout(&out).contains("key index 3"), "{}", stdout(&out));
    }
    // `cat --json`: content in base64 with its digest.
    let v = env.json(&[
        "cat",
        env.export(),
        "/bar2.txt",
        "--key",
        &key,
        "--at",
        &at(15),
    ]);
    assert_eq!(v["content_base64"], "SGVsbG8gdjI=");
    assert_eq!(v["entry"]["version"], 2);
    // Keys 1 and 2 recovered with exactly one token operation.
    let v = env.json(&["ls", env.export(), "--key", &key, "--at", &at(15)]);
    let svc = &v["context"]["service"];
    assert_eq!(svc["service_id"], "00000000000000000000000000000001");
    assert_eq!(svc["token_operations"], 1);
    assert_eq!(
        svc["recovery"]["obtained_key_indexes"],
        serde_json::json!([1, 2])
    );
    assert_eq!(
        svc["recovery"]["missing_key_indexes"],
        serde_json::json!([3])
    );
    assert_eq!(v["context"]["realm_name"]["name"], "wksp1");
}

#[test]
fn service1_history_timeline_verify_and_extract() {
    let Some(env) = setup() else { return };
    let key = env.hsm.key_uri("svc1");
    let h = env.json(&[
        "history",
        env.export(),
        "/bar2.txt",
        "--key",
        &key,
        "--at",
        &at(20),
    ]);
    let versions = h["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 3);
    assert_eq!(versions[0]["readable"], true);
    assert_eq!(versions[1]["readable"], true);
    assert_eq!(versions[2]["readable"], false);
    assert_eq!(versions[2]["needs_key_index"], 3);
    // Authored by alice's device: the user is alice.
    assert_eq!(versions[1]["user_id"], "a11cec00100000000000000000000000");

    let tl = env.json(&["timeline", env.export(), "--key", &key]);
    let events = tl["events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "key_rotation").count(), 3);
    assert_eq!(kinds.iter().filter(|k| **k == "unreadable").count(), 2);
    let renamed = events.iter().any(|e| {
        e["description"]
            .as_str()
            .unwrap()
            .contains("renamed `bar.txt` -> `bar2.txt`")
    });
    assert!(renamed, "{tl}");

    // Without an anchor: consistent but NOT ANCHORED (exit 3), never a bare OK.
    let out = env.run(&["verify", env.export(), "--key", &key]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("NOT ANCHORED"), "{}", stdout(&out));
    // Anchored by the fixture organisation's root key (from the fixture's documentation).
    let out = env.run(&[
        "verify",
        env.export(),
        "--key",
        &key,
        "--root-key",
        FIXTURE_ROOT_KEY,
    ]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let v = env.json(&[
        "verify",
        env.export(),
        "--key",
        &key,
        "--root-key",
        FIXTURE_ROOT_KEY,
    ]);
    assert_eq!(v["ok"], true);
    assert_eq!(v["anchored"], true);
    assert_eq!(v["report"]["readable_versions"], 4);
    assert_eq!(v["report"]["unreadable_versions"], 2);
    assert_eq!(v["report"]["blocks_checked"], 2);

    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("at-15");
    let out = env.run(&[
        "extract",
        env.export(),
        dest.to_str().unwrap(),
        "--key",
        &key,
        "--at",
        &at(15),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(dest.join("bar2.txt")).unwrap(), b"Hello v2");
    let mtime = std::fs::metadata(dest.join("bar2.txt"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(
        mtime
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        947894400
    );
    let record: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("at-15.custody.json")).unwrap())
            .unwrap();
    assert!(!dest.join("at-15.custody.json").exists());
    assert_eq!(record["export_sha256"], EXPORT_SHA256);
    assert_eq!(record["service_id"], "00000000000000000000000000000001");
    assert_eq!(record["token_operations"], 1);
    assert_eq!(record["token"]["label"], "export-fixture");
    assert_eq!(record["time_of_interest"], at(15));
    assert_eq!(record["files"][0]["path"], "/bar2.txt");
    assert_eq!(
        record["files"][0]["sha256"],
        "68556ebbfd8707f616564c01b4d01282de5df108f1098d61a21db954800c4a43"
    );
    // At 01-20 the file is reported as unreadable and not written.
    let dest20 = dir.path().join("at-20");
    let out = env.run(&[
        "extract",
        env.export(),
        dest20.to_str().unwrap(),
        "--key",
        &key,
        "--at",
        &at(20),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!dest20.join("bar2.txt").exists());
    let record: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("at-20.custody.json")).unwrap())
            .unwrap();
    assert_eq!(record["files"].as_array().unwrap().len(), 0);
    assert_eq!(record["unreadable"][0]["path"], "/bar2.txt");
    assert_eq!(
        record["unreadable"][0]["needed_key_indexes"],
        serde_json::json!([3])
    );
    // An existing destination is refused, nothing is touched.
    let out = env.run(&[
        "extract",
        env.export(),
        dest.to_str().unwrap(),
        "--key",
        &key,
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
}

#[test]
fn service2_reads_nothing_with_zero_token_operations() {
    let Some(env) = setup() else { return };
    let key = env.hsm.key_uri("svc2");
    let out = env.run(&["ls", env.export(), "--key", &key]);
    let err = stderr(&out);
    assert!(err.contains("token operations: 0"), "{err}");
    assert!(err.contains("NOTHING IS READABLE"), "{err}");
    assert!(err.contains("no keys bundle access"), "{err}");
    let v: Value = {
        let out = env.run(&["--json", "verify", env.export(), "--key", &key]);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(v["context"]["service"]["token_operations"], 0);
    assert_eq!(v["report"]["readable_versions"], 0);
    assert_eq!(v["context"]["realm_name"]["state"], "unreadable");
}

#[test]
fn service3_matches_no_service() {
    let Some(env) = setup() else { return };
    let out = env.run(&["ls", env.export(), "--key", &env.hsm.key_uri("svc3")]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("matches no service of this export"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn non_sequestered_export_is_refused_clearly() {
    let Some(env) = setup() else { return };
    let path = fixture("workspace_history_export.sqlite");
    let before = common::file_sha256(&path);
    let out = run_cli(
        &[
            "export",
            "ls",
            path.to_str().unwrap(),
            "--key",
            &env.hsm.key_uri("svc1"),
        ],
        &env.hsm.env(),
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not sequestered"), "{}", stderr(&out));
    let out = run_cli(&["export", "info", path.to_str().unwrap()], &[]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("NOT SEQUESTERED"), "{}", stdout(&out));
    assert_eq!(common::file_sha256(&path), before);
}

#[test]
fn info_needs_no_key() {
    let Some(env) = setup() else { return };
    let v = env.json(&["info", env.export()]);
    assert_eq!(v["info"]["organization_id"], "Org1");
    assert_eq!(v["complete"], true);
    let services = v["sequester_services"].as_array().unwrap();
    assert_eq!(services.len(), 2);
    assert_eq!(services[0]["status"], "revoked");
    assert_eq!(services[0]["access_key_indexes"], serde_json::json!([2]));
    assert_eq!(services[1]["status"], "active");
    assert_eq!(services[1]["access_key_indexes"], serde_json::json!([]));
    assert_eq!(v["latest_key_index"], 3);
}

#[test]
fn service_id_and_time_arguments_are_checked() {
    let Some(env) = setup() else { return };
    let key = env.hsm.key_uri("svc1");
    let cases: [(&[&str], &str); 5] = [
        (
            &["--service-id", "00000000000000000000000000000002"],
            "holds a different public key",
        ),
        (
            &["--service-id", "000000000000000000000000000000ff"],
            "no such service in this export",
        ),
        (&["--service-id", "xyz"], "not a hexadecimal ID"),
        (
            &["--at", "2030-01-01T00:00:00Z"],
            "after the export's snapshot time",
        ),
        (&["--at", "yesterday"], "not an RFC 3339 timestamp"),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["ls", env.export(), "--key", &key];
        args.extend_from_slice(extra);
        let out = env.run(&args);
        assert!(!out.status.success(), "{extra:?}");
        assert!(stderr(&out).contains(needle), "{extra:?}: {}", stderr(&out));
    }
    // The right service ID is accepted.
    let out = env.run(&[
        "ls",
        env.export(),
        "--key",
        &key,
        "--service-id",
        "00000000-0000-0000-0000-000000000001",
        "--at",
        &at(15),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "bar2.txt");
}

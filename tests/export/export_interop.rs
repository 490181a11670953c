//! Real-server exports: `../shared/interop/make_export.py` runs the real Parsec 3.9.3 server in
//! hook mode, with OUR CLI signing the service and revocation certificates with an authority key
//! generated on a SoftHSM2 token, and service keys generated on the same token. Scenario: two
//! early services (the first is revoked), one late service, four key indexes. Then every service
//! key extracts every snapshot of `expected.json`, and the result must be exactly that: every
//! readable file byte-identical (SHA-256), every unreadable file and folder reported, nothing else.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use crate::common::{files_under, key_generate_args, run_cli, sh_quote, stderr, SoftHsm};
use serde_json::Value;

fn cli(hsm: &SoftHsm, args: &[&str]) -> std::process::Output {
    let out = run_cli(args, &hsm.env());
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    out
}

struct Made {
    dir: tempfile::TempDir,
    export: PathBuf,
    expected: Value,
    /// service label -> key URI
    keys: BTreeMap<String, String>,
}

fn make_export(hsm: &SoftHsm) -> Made {
    let dir = tempfile::tempdir().unwrap();
    let token = hsm.token_uri();
    let auth_pub = dir.path().join("authority.pub.pem");
    cli(
        hsm,
        &key_generate_args(
            "authority",
            "authority",
            "2048",
            &token,
            &["--public-out", auth_pub.to_str().unwrap()],
        ),
    );
    let mut keys = BTreeMap::new();
    for name in ["A", "B", "C"] {
        let label = format!("service-{name}");
        cli(
            hsm,
            &key_generate_args("service", &label, "2048", &token, &[]),
        );
        keys.insert(format!("Service {name}"), hsm.key_uri(&label));
    }
    let bin = env!("CARGO_BIN_EXE_sequester-custody");
    let transcript = dir.path().join("transcript.jsonl");
    let authority = hsm.key_uri("authority");
    let service_hook = |name: &str| {
        format!(
            "{} cert service --authority {} --authority-public {} --service-key {} --label {} --output {{out}} --transcript {}",
            sh_quote(bin),
            sh_quote(&authority),
            sh_quote(auth_pub.to_str().unwrap()),
            sh_quote(&keys[&format!("Service {name}")]),
            sh_quote(&format!("Service {name}")),
            sh_quote(transcript.to_str().unwrap()),
        )
    };
    let revoke_hook = format!(
        "{} cert revoke --authority {} --authority-public {} --service-id {{service_id}} --output {{out}} --transcript {}",
        sh_quote(bin),
        sh_quote(&authority),
        sh_quote(auth_pub.to_str().unwrap()),
        sh_quote(transcript.to_str().unwrap()),
    );
    let export = dir.path().join("export.sqlite");
    let expected = dir.path().join("expected.json");
    let mut cmd = Command::new(common::oracle_python_path());
    cmd.arg(common::shared_dir().join("interop/make_export.py"))
        .args(["--authority-pub", auth_pub.to_str().unwrap()])
        .args(["--service-cert-cmd", &service_hook("A")])
        .args(["--service-cert-cmd", &service_hook("B")])
        .args(["--late-service-cert-cmd", &service_hook("C")])
        .args(["--revoke-cert-cmd", &revoke_hook])
        .args(["--out", export.to_str().unwrap()])
        .args(["--expected", expected.to_str().unwrap()])
        .args(["--seed", "11"])
        .args(["--workdir", dir.path().join("work").to_str().unwrap()]);
    for (k, v) in hsm.env() {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "make_export.py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: Value = serde_json::from_slice(&std::fs::read(&expected).unwrap()).unwrap();
    Made {
        dir,
        export,
        expected,
        keys,
    }
}

fn below_any(path: &str, folders: &BTreeSet<String>) -> bool {
    folders.iter().any(|f| path.starts_with(&format!("{f}/")))
}

#[test]
fn real_server_export_extracts_exactly_as_expected() {
    if common::oracle_python().is_none() {
        return;
    }
    let Some(hsm) = SoftHsm::new("export-interop") else {
        return;
    };
    let made = make_export(&hsm);
    let export_sha = common::file_sha256(&made.export);
    assert_eq!(made.expected["export"]["sha256"], export_sha);

    let services = made.expected["sequester_services"].as_array().unwrap();
    assert_eq!(services.len(), 3);
    assert!(services.iter().any(|s| s["revoked"] == true));
    assert!(services.iter().any(|s| s["late"] == true));
    let snapshots = made.expected["snapshots"].as_array().unwrap();
    assert!(snapshots.len() >= 5);

    for service in services {
        let label = service["label"].as_str().unwrap();
        let sid = service["service_id"].as_str().unwrap();
        let key = &made.keys[label];
        let decryptable: Vec<u64> = service["decryptable_key_indexes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        for snap in snapshots {
            let t = snap["timestamp"].as_str().unwrap();
            let snap_label = snap["label"].as_str().unwrap();
            let dest = made.dir.path().join(format!("out-{sid}-{snap_label}"));
            let out = run_cli(
                &[
                    "--json",
                    "export",
                    "extract",
                    made.export.to_str().unwrap(),
                    dest.to_str().unwrap(),
                    "--key",
                    key,
                    "--at",
                    t,
                ],
                &hsm.env(),
            );
            assert!(
                out.status.success(),
                "{label} at {snap_label}: {}",
                stderr(&out)
            );
            assert_eq!(
                common::file_sha256(&made.export),
                export_sha,
                "export modified"
            );
            let record_path = made
                .dir
                .path()
                .join(format!("out-{sid}-{snap_label}.custody.json"));
            let record: Value =
                serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
            let ctx = format!("{label} ({sid}) at {snap_label} {t}");
            assert_eq!(record["service_id"], sid, "{ctx}");
            assert_eq!(record["token_operations"], 1, "{ctx}: one token operation");
            assert_eq!(record["export_sha256"], export_sha, "{ctx}");
            let obtained: Vec<u64> = record["realm_key_indexes_obtained"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            assert_eq!(obtained, decryptable, "{ctx}: realm keys");

            let expected_service = &snap["per_service"][sid];
            let exp_unreadable_folders: BTreeSet<String> = expected_service["unreadable_folders"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            let exp_unreadable_files: BTreeSet<String> = expected_service["unreadable_files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            let files = snap["files"].as_object().unwrap();
            let exp_readable: BTreeMap<String, String> = files
                .iter()
                .filter(|(p, _)| !exp_unreadable_files.contains(*p))
                .map(|(p, f)| (p.clone(), f["sha256"].as_str().unwrap().to_string()))
                .collect();
            assert_eq!(
                exp_readable.len() as u64,
                expected_service["readable_files"].as_u64().unwrap(),
                "{ctx}: expected.json consistency"
            );

            // Readable files: exactly these, byte-identical on disk and in the record.
            let on_disk = files_under(&dest);
            assert_eq!(
                on_disk,
                exp_readable.keys().cloned().collect::<BTreeSet<_>>(),
                "{ctx}: extracted file set"
            );
            for (p, sha) in &exp_readable {
                let local = dest.join(p.trim_start_matches('/'));
                assert_eq!(&common::file_sha256(&local), sha, "{ctx}: {p}");
            }
            let recorded: BTreeMap<String, String> = record["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| {
                    (
                        f["path"].as_str().unwrap().to_string(),
                        f["sha256"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            assert_eq!(recorded, exp_readable, "{ctx}: custody record files");

            // Readable folders extracted, unreadable ones not.
            for folder in snap["folders"].as_array().unwrap() {
                let folder = folder.as_str().unwrap();
                let local = dest.join(folder.trim_start_matches('/'));
                assert_eq!(
                    local.is_dir(),
                    !exp_unreadable_folders.contains(folder),
                    "{ctx}: folder {folder}"
                );
            }

            // Unreadable entries: each reported one is expected; each expected one is reported
            // or hidden below a reported unreadable folder. Nothing else.
            let reported: BTreeSet<String> = record["unreadable"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u["path"].as_str().unwrap().to_string())
                .collect();
            for u in record["unreadable"].as_array().unwrap() {
                let p = u["path"].as_str().unwrap();
                assert!(
                    exp_unreadable_files.contains(p) || exp_unreadable_folders.contains(p),
                    "{ctx}: {p} reported unreadable but expected readable: {u}"
                );
                let needed = u["needed_key_indexes"].as_array().unwrap();
                assert!(!needed.is_empty(), "{ctx}: {u}");
                for k in needed {
                    assert!(!decryptable.contains(&k.as_u64().unwrap()), "{ctx}: {u}");
                }
            }
            let reported_folders: BTreeSet<String> = reported
                .iter()
                .filter(|p| exp_unreadable_folders.contains(*p))
                .cloned()
                .collect();
            for p in exp_unreadable_files
                .iter()
                .chain(exp_unreadable_folders.iter())
            {
                assert!(
                    reported.contains(p) || below_any(p, &reported_folders),
                    "{ctx}: {p} should be reported unreadable"
                );
            }
            assert_eq!(
                expected_service["complete"].as_bool().unwrap(),
                reported.is_empty(),
                "{ctx}: completeness"
            );
        }
    }

    // Verify with every key: nothing wrong in a real export (revocations, roles and
    // certificate IDs as the real server wrote them). Not anchored here: exit 3, consistent.
    for key in made.keys.values() {
        let out = run_cli(
            &[
                "--json",
                "export",
                "verify",
                made.export.to_str().unwrap(),
                "--key",
                key,
            ],
            &hsm.env(),
        );
        assert_eq!(
            out.status.code(),
            Some(3),
            "{}{}",
            common::stdout(&out),
            stderr(&out)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["consistent"], true, "{v}");
        assert_eq!(v["result"], "not_anchored", "{v}");
    }
    assert_eq!(common::file_sha256(&made.export), export_sha);
}

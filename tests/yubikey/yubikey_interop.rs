//! A real Parsec 3.9.3 server export (`../shared/interop/make_export.py`, hook mode) whose
//! sequester service certificate is signed by OUR CLI with the authority key in slot 9c of a
//! (virtual) YubiKey, for a service key in slot 9d of that card; then the 9d key extracts the
//! final snapshot, which must be exactly what `expected.json` says.
#![cfg(feature = "yubikey")] // the YubiKey PIV backend

use crate::common;
use crate::common::yubikey as yubikey_common;

use std::collections::{BTreeMap, BTreeSet};

use std::process::Command;

use crate::common::{files_under, run_cli, sh_quote, stderr};
use serde_json::Value;

#[test]
fn real_server_export_with_certificate_and_decryption_on_the_card() {
    let Some(py) = common::oracle_python() else {
        return;
    };
    let Some(session) = yubikey_common::start(&["5.4.3"]) else {
        return;
    };
    let serial = session.card().serial;
    let dir = session.dir.path();
    let env = vec![
        (
            "SEQUESTER_CUSTODY_PIN".to_string(),
            yubikey_common::PIN.to_string(),
        ),
        (
            "SEQUESTER_CUSTODY_TRANSCRIPT".to_string(),
            dir.join("transcript.jsonl").display().to_string(),
        ),
    ];
    let auth_pub = dir.join("authority.pub.pem");
    for (role, out) in [("authority", Some(&auth_pub)), ("service", None)] {
        let token = session.card().uri();
        let mut args = vec![
            "key", "generate", "--role", role, "--label", role, "--bits", "2048", "--token", &token,
        ];
        let out_str;
        if let Some(p) = out {
            out_str = p.display().to_string();
            args.extend(["--public-out", &out_str]);
        }
        let res = run_cli(&args, &env);
        assert!(res.status.success(), "{}", stderr(&res));
    }
    let authority = format!("yubikey:serial={serial};slot=9c");
    let service = format!("yubikey:serial={serial};slot=9d");
    let hook = format!(
        "{} cert service --authority {} --authority-public {} --service-key {} --label {} \
         --output {{out}} --transcript {}",
        sh_quote(env!("CARGO_BIN_EXE_sequester-custody")),
        sh_quote(&authority),
        sh_quote(auth_pub.to_str().unwrap()),
        sh_quote(&service),
        sh_quote("Service YubiKey"),
        sh_quote(dir.join("transcript.jsonl").to_str().unwrap()),
    );
    let export = dir.join("export.sqlite");
    let expected_path = dir.join("expected.json");
    let out = Command::new(&py)
        .arg(common::shared_dir().join("interop/make_export.py"))
        .args(["--authority-pub", auth_pub.to_str().unwrap()])
        .args(["--service-cert-cmd", &hook])
        .args(["--out", export.to_str().unwrap()])
        .args(["--expected", expected_path.to_str().unwrap()])
        .args(["--seed", "7"])
        .args(["--workdir", dir.join("work").to_str().unwrap()])
        .envs(env.iter().cloned())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "make_export.py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: Value = serde_json::from_slice(&std::fs::read(&expected_path).unwrap()).unwrap();
    let export_sha = common::file_sha256(&export);
    let services = expected["sequester_services"].as_array().unwrap();
    assert_eq!(services.len(), 1);
    let sid = services[0]["service_id"].as_str().unwrap();
    assert_eq!(services[0]["label"], "Service YubiKey");

    let snap = expected["snapshots"].as_array().unwrap().last().unwrap();
    let dest = dir.join("extracted");
    let out = run_cli(
        &[
            "--json",
            "export",
            "extract",
            export.to_str().unwrap(),
            dest.to_str().unwrap(),
            "--key",
            &service,
            "--at",
            snap["timestamp"].as_str().unwrap(),
        ],
        &env,
    );
    assert!(out.status.success(), "extract: {}", stderr(&out));
    assert_eq!(common::file_sha256(&export), export_sha, "export modified");

    let per_service = &snap["per_service"][sid];
    let unreadable: BTreeSet<&str> = per_service["unreadable_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let readable: BTreeMap<String, String> = snap["files"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(p, _)| !unreadable.contains(p.as_str()))
        .map(|(p, f)| (p.clone(), f["sha256"].as_str().unwrap().to_string()))
        .collect();
    assert!(!readable.is_empty());
    assert_eq!(
        files_under(&dest),
        readable.keys().cloned().collect::<BTreeSet<_>>()
    );
    for (path, sha) in &readable {
        assert_eq!(
            &common::file_sha256(&dest.join(path.trim_start_matches('/'))),
            sha,
            "{path}"
        );
    }
    let record: Value =
        serde_json::from_slice(&std::fs::read(dir.join("extracted.custody.json")).unwrap())
            .unwrap();
    assert_eq!(record["service_id"], sid);
    assert_eq!(record["export_sha256"], export_sha);
}

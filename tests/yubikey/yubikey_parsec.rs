//! The CLI end to end with keys on a (virtual) YubiKey: `key generate`/`key show`, a Parsec
//! service certificate signed by the 9c authority key and judged by the real Parsec 3.9.3
//! server code, and a realm export whose access rows are decrypted by the 9d service key.
#![cfg(feature = "yubikey")] // the YubiKey PIV backend

use crate::common;
use crate::common::yubikey as yubikey_common;

use std::path::Path;

use crate::common::yubikey::{Session, PIN};
use crate::common::{run_cli, stderr, stdout};
use sequester_export_writer::scenario::{self, ServiceInput, Shape};
use sequester_export_writer::WriterConfig;

/// PIN for the card; key generation and certificates go to a transcript in the test dir.
fn env_in(dir: &Path) -> Vec<(String, String)> {
    vec![
        ("SEQUESTER_CUSTODY_PIN".into(), PIN.into()),
        (
            "SEQUESTER_CUSTODY_TRANSCRIPT".into(),
            dir.join("transcript.jsonl").display().to_string(),
        ),
    ]
}

fn generate(session: &Session, role: &str, public_out: &Path) -> std::process::Output {
    let token = session.card().uri();
    run_cli(
        &[
            "key",
            "generate",
            "--role",
            role,
            "--label",
            &format!("{role} on YubiKey"),
            "--bits",
            "2048",
            "--token",
            &token,
            "--public-out",
            public_out.to_str().unwrap(),
        ],
        &env_in(session.dir.path()),
    )
}

fn spki_sha256(pem_path: &Path) -> String {
    let der = pem::parse(std::fs::read(pem_path).unwrap()).unwrap();
    sequester_custody::crypto::sha256_hex(der.contents())
}

#[test]
fn certificate_signed_on_the_card_is_accepted_by_parsec_and_export_decrypts() {
    let Some(session) = yubikey_common::start(&["5.4.3"]) else {
        return;
    };
    let serial = session.card().serial;
    let dir = session.dir.path();
    let authority_pub = dir.join("authority.pub.pem");
    let service_pub = dir.join("service.pub.pem");

    let out = generate(&session, "authority", &authority_pub);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("FACTORY DEFAULT 3DES management key"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).contains(&format!("yubikey:serial={serial};slot=9c")));
    let out = generate(&session, "service", &service_pub);
    assert!(out.status.success(), "{}", stderr(&out));
    // Both generations joined the ceremony transcript, naming the card.
    let transcript = std::fs::read_to_string(dir.join("transcript.jsonl")).unwrap();
    assert_eq!(transcript.lines().count(), 2, "{transcript}");
    assert!(transcript.contains(&serial.to_string()), "{transcript}");

    // The default 4096 bits is refused on a 5.4 card, with the way out named.
    let out = run_cli(
        &[
            "key", "generate", "--role", "service", "--label", "x", "--token",
        ]
        .into_iter()
        .chain([session.card().uri().as_str(), "--bits", "4096"])
        .collect::<Vec<_>>(),
        &env_in(dir),
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--bits 2048"), "{}", stderr(&out));

    // key show / key list: no PIN needed; the emulated card has no attestation and says so.
    let key_9c = format!("yubikey:serial={serial};slot=9c");
    let key_9d = format!("yubikey:serial={serial};slot=9d");
    let out = run_cli(&["key", "show", &key_9c], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("role:        authority"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("attestation: not available"),
        "{}",
        stdout(&out)
    );
    let out = run_cli(
        &["--json", "key", "list", "--token", &session.card().uri()],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let listed: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(listed[1]["fingerprint"], spki_sha256(&service_pub));

    // Service certificate signed by the 9c key.
    let out = run_cli(
        &[
            "cert",
            "service",
            "--authority",
            &key_9c,
            "--authority-public",
            authority_pub.to_str().unwrap(),
            "--service-public-key",
            service_pub.to_str().unwrap(),
            "--label",
            "Investigator YubiKey",
            "--service-id",
            "0123456789abcdef0123456789abcdef",
            "--transcript",
            dir.join("transcript.jsonl").to_str().unwrap(),
            "--operator",
            "Alice",
            "-o",
            dir.join("service.cert.pem").to_str().unwrap(),
        ],
        &env_in(dir),
    );
    assert!(out.status.success(), "cert service: {}", stderr(&out));

    if let Some(py) = common::oracle_python() {
        let judged = std::process::Command::new(py)
            .arg(common::shared_dir().join("interop/verify_service_cert.py"))
            .arg(&authority_pub)
            .arg(dir.join("service.cert.pem"))
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&judged.stdout);
        assert!(
            judged.status.success(),
            "Parsec rejected: {line} {}",
            stderr(&judged)
        );
        let verdict: serde_json::Value =
            serde_json::from_str(line.lines().last().unwrap()).unwrap();
        assert_eq!(verdict["accepted"], true);
        assert_eq!(verdict["label"], "Investigator YubiKey");
        assert_eq!(verdict["public_key_der_sha256"], spki_sha256(&service_pub));
        assert_eq!(
            verdict["authority_public_key_der_sha256"],
            spki_sha256(&authority_pub)
        );
    }

    // A realm export for the card's service key: the 9d key decrypts the access rows.
    let export = dir.join("export.sqlite");
    let spki_der = pem::parse(std::fs::read(&service_pub).unwrap())
        .unwrap()
        .into_contents();
    let shape = Shape::SmallFiles {
        files: 6,
        folders: 2,
        min_size: 1 << 10,
        max_size: 16 << 10,
    };
    let config = WriterConfig {
        record_tree: true,
        ..WriterConfig::default()
    };
    let services = [ServiceInput {
        label: "Generated Service 1".into(),
        spki_der,
    }];
    let truth = scenario::generate(&export, config, &shape, &services).expect("generate export");
    let before = common::file_sha256(&export);
    let dest = dir.join("extracted");
    let out = run_cli(
        &[
            "export",
            "extract",
            "--key",
            &key_9d,
            export.to_str().unwrap(),
            dest.to_str().unwrap(),
        ],
        &env_in(dir),
    );
    assert!(out.status.success(), "export extract: {}", stderr(&out));
    assert_eq!(
        common::file_sha256(&export),
        before,
        "the export must stay byte-identical"
    );

    let truth = serde_json::to_value(&truth).unwrap();
    let last = truth["checkpoints"].as_array().unwrap().last().unwrap();
    let mut files = 0;
    for entry in last["entries"].as_array().unwrap() {
        if entry["kind"] != "file" {
            continue;
        }
        let path = dest.join(entry["path"].as_str().unwrap().trim_start_matches('/'));
        assert_eq!(
            common::file_sha256(&path),
            entry["sha256"].as_str().unwrap(),
            "{}",
            path.display()
        );
        files += 1;
    }
    assert_eq!(files, 6);

    // The authority key refuses to decrypt (one role per key), with a clear error.
    let out = run_cli(
        &[
            "export",
            "verify",
            "--key",
            &key_9c,
            export.to_str().unwrap(),
        ],
        &env_in(dir),
    );
    assert!(!out.status.success());
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}

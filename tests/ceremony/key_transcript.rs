//! Key commands that create or use a private key append to the ceremony transcript:
//! `key generate`, `key import`, `key test` — success and failure alike.

use crate::common::*;
use sequester_custody::ceremony::transcript;

#[test]
fn generate_import_and_test_are_recorded_in_one_chain() {
    let Some(hsm) = SoftHsm::new("transcript-token") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("ceremony.jsonl");
    let t_arg = t.to_str().unwrap();
    let pub_out = dir.path().join("svc.pub.pem");
    let token = hsm.token_uri();

    let out = run_cli(
        &key_generate_args(
            "service",
            "svc",
            "2048",
            &token,
            &[
                "--public-out",
                pub_out.to_str().unwrap(),
                "--transcript",
                t_arg,
                "--operator",
                "Alice",
                "--operator",
                "Bob",
            ],
        ),
        &hsm.env(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("transcript: "), "{}", stderr(&out));

    let out = run_cli(
        &["key", "test", &hsm.key_uri("svc"), "--transcript", t_arg],
        &hsm.env(),
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // A failing import (missing file) is recorded as failed, and still exits non-zero.
    let missing = dir.path().join("no-such-key.pem");
    let out = run_cli(
        &key_import_args(
            "service",
            "x",
            &token,
            missing.to_str().unwrap(),
            &["--transcript", t_arg],
        ),
        &hsm.env(),
    );
    assert!(!out.status.success());

    let report = transcript::verify(&t).unwrap();
    assert_eq!(report.entries, 3);
    let text = std::fs::read_to_string(&t).unwrap();
    let entries: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let gen = serde_json::to_string(&entries[0]).unwrap();
    assert!(gen.contains("key generate"), "{gen}");
    assert!(gen.contains("Alice") && gen.contains("Bob"), "{gen}");
    assert!(
        gen.contains("transcript-token"),
        "token label recorded: {gen}"
    );
    // The public key written is recorded with its SHA-256, and the key by its fingerprint.
    assert!(gen.contains(&file_sha256(&pub_out)), "{gen}");
    let test = serde_json::to_string(&entries[1]).unwrap();
    assert!(
        test.contains("key test") && test.contains("\"ok\""),
        "{test}"
    );
    let failed = serde_json::to_string(&entries[2]).unwrap();
    assert!(failed.contains("failed"), "{failed}");
    // The PIN never appears anywhere in the transcript.
    // (Matched as a whole value, so a digest that happens to contain the digits cannot trip it.)
    for needle in [format!("\"{USER_PIN}\""), format!("={USER_PIN}")] {
        assert!(!text.contains(&needle), "PIN leaked into the transcript");
    }
}

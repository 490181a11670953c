//! Key generation on real SoftHSM2 and kryoptic tokens: sizes, attributes, provenance, and that
//! the private key cannot be read, wrapped or made extractable.

use crate::common::*;

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "CLI failed: {}", stderr(out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", stdout(out)))
}

fn generate(t: &TestToken, role: &str, label: &str, bits: &str) -> serde_json::Value {
    let out = run_cli(
        &key_generate_args(role, label, bits, &t.token_uri(), &["--json"]),
        &t.env(),
    );
    json(&out)
}

fn check_generated(v: &serde_json::Value, role: &str, bits: u64) {
    assert_eq!(v["role"], role);
    assert_eq!(v["bits"], bits);
    assert_eq!(v["can_sign"], role == "authority");
    assert_eq!(v["can_decrypt"], role == "service");
    let p = &v["provenance"];
    assert_eq!(p["verdict"], "generated-on-token", "{p}");
    assert_eq!(p["local"], true);
    assert_eq!(p["never_extractable"], true);
    assert_eq!(p["always_sensitive"], true);
    assert_eq!(p["extractable"], false);
    assert_eq!(p["sensitive"], true);
    // SPKI PEM parses with the rsa crate, rsaEncryption, right size, e = 65537
    use rsa::pkcs8::DecodePublicKey;
    use rsa::traits::PublicKeyParts;
    let pem = v["public_key_pem"].as_str().unwrap();
    let key = rsa::RsaPublicKey::from_public_key_pem(pem).unwrap();
    assert_eq!(key.n().bits() as u64, bits);
    assert_eq!(key.e(), &rsa::BigUint::from(65537u32));
    // fingerprint = SHA-256 of the DER SPKI
    let der = pem::parse(pem).unwrap().into_contents();
    assert_eq!(v["fingerprint"], file_sha256_bytes(&der));
}

fn file_sha256_bytes(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(data))
}

#[test]
#[ignore = "run in a child process by the keygen tests"]
fn inner_private_key_is_locked_down() {
    if in_isolated_child() {
        check_private_key_locked_down();
    }
}

fn locked_down(t: &TestToken, label: &str, role: &str) {
    run_isolated(
        "inner_private_key_is_locked_down",
        &locked_down_env(t, "keygen", label, role),
    );
}

#[test]
fn keygen_2048_both_roles_attributes_and_lockdown() {
    for t in TestToken::both("keygen") {
        let a = generate(&t, "authority", "auth-2048", "2048");
        check_generated(&a, "authority", 2048);
        let s = generate(&t, "service", "svc-2048", "2048");
        check_generated(&s, "service", 2048);
        assert_ne!(a["fingerprint"], s["fingerprint"], "{}", t.name());
        assert_ne!(a["id"], s["id"], "random CKA_IDs");
        locked_down(&t, "auth-2048", "authority");
        locked_down(&t, "svc-2048", "service");
    }
}

#[test]
fn keygen_4096_default_size() {
    for t in TestToken::both("keygen") {
        // No --bits: the default is 4096.
        let out = run_cli(
            &[
                "--json",
                "key",
                "generate",
                "--role",
                "service",
                "--label",
                "svc-4096",
                "--token",
                &t.token_uri(),
            ],
            &t.env(),
        );
        let v = json(&out);
        check_generated(&v, "service", 4096);
        locked_down(&t, "svc-4096", "service");
    }
}

#[test]
fn keygen_public_out_writes_parsec_pem_and_refuses_overwrite() {
    let Some(hsm) = SoftHsm::new("keygen") else {
        return;
    };
    let out_file = hsm.dir.path().join("auth.pub.pem");
    let out = run_cli(
        &key_generate_args(
            "authority",
            "a",
            "2048",
            &hsm.token_uri(),
            &["--json", "--public-out", out_file.to_str().unwrap()],
        ),
        &hsm.env(),
    );
    let v = json(&out);
    let written = std::fs::read_to_string(&out_file).unwrap();
    assert_eq!(written, v["public_key_pem"].as_str().unwrap());
    assert!(written.starts_with("-----BEGIN PUBLIC KEY-----\n"));
    assert!(written.lines().all(|l| l.len() <= 64));
    // Second run with the same file: refused before touching the token, file unchanged.
    let before = file_sha256(&out_file);
    let out = run_cli(
        &key_generate_args(
            "authority",
            "b",
            "2048",
            &hsm.token_uri(),
            &["--public-out", out_file.to_str().unwrap()],
        ),
        &hsm.env(),
    );
    assert_clean_failure(&out, "already exists");
    assert_eq!(file_sha256(&out_file), before);
}

#[test]
fn keygen_refuses_bad_sizes_and_duplicate_labels() {
    let Some(hsm) = SoftHsm::new("sizes") else {
        return;
    };
    for (bits, needle) in [
        ("1024", "below the 2048-bit minimum"),
        ("4104", "above 4096"),
        ("8192", "above 4096"),
        ("2052", "multiple of 8"),
        ("2047", "multiple of 8"),
    ] {
        let out = run_cli(
            &key_generate_args("service", "x", bits, &hsm.token_uri(), &[]),
            &hsm.env(),
        );
        assert_clean_failure(&out, needle);
    }
    // The test-only flag allows 1024 (fixture-sized keys on test tokens)...
    let out = run_cli(
        &key_generate_args(
            "service",
            "small",
            "1024",
            &hsm.token_uri(),
            &["--json", "--allow-insecure-test-size"],
        ),
        &hsm.env(),
    );
    assert_eq!(json(&out)["bits"], 1024);
    // ...but never above 4096.
    let out = run_cli(
        &key_generate_args(
            "service",
            "big",
            "4104",
            &hsm.token_uri(),
            &["--allow-insecure-test-size"],
        ),
        &hsm.env(),
    );
    assert_clean_failure(&out, "above 4096");
    // Same label twice is refused (it would make `object=` ambiguous).
    let out = run_cli(
        &key_generate_args("authority", "small", "2048", &hsm.token_uri(), &[]),
        &hsm.env(),
    );
    assert_clean_failure(&out, "already exists");
    // And nothing but the one small key is on the token.
    let out = run_cli(
        &["--json", "key", "list", "--token", &hsm.token_uri()],
        &hsm.env(),
    );
    let keys = json(&out);
    assert_eq!(keys.as_array().unwrap().len(), 1, "{keys}");
}

//! `key import` of legacy openssl keys into real SoftHSM2 and kryoptic tokens.

use std::path::Path;
use std::process::Command;

use crate::common::*;

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

fn import(
    t: &TestToken,
    file: &Path,
    role: &str,
    label: &str,
    extra: &[&str],
    env: &[(String, String)],
) -> std::process::Output {
    let mut args = vec![
        "--json", "key", "import", "--role", role, "--label", label, "--token",
    ];
    let token_uri = t.token_uri();
    args.push(&token_uri);
    args.push("--in");
    let file = file.to_str().unwrap().to_string();
    args.push(&file);
    args.extend_from_slice(extra);
    run_cli(&args, env)
}

fn check_imported(out: &std::process::Output, role: &str, public_pem: &str) -> serde_json::Value {
    assert!(out.status.success(), "{}", stderr(out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &v["provenance"];
    assert_eq!(p["verdict"], "imported-non-extractable", "{p}");
    assert_eq!(p["local"], false, "{p}");
    assert_eq!(p["extractable"], false, "{p}");
    assert_eq!(p["sensitive"], true, "{p}");
    assert_eq!(v["role"], role);
    // The token's public key is the file's public key (as openssl derives it).
    assert_eq!(
        v["public_key_pem"].as_str().unwrap().trim(),
        public_pem.trim()
    );
    v
}

fn public_pem_of(key: &Path, pass: Option<&str>) -> String {
    let mut args = vec!["pkey", "-in", key.to_str().unwrap(), "-pubout"];
    let passin;
    if let Some(p) = pass {
        passin = format!("pass:{p}");
        args.extend_from_slice(&["-passin", &passin]);
    }
    let out = Command::new("openssl").args(&args).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
#[ignore = "run in a child process by the import tests"]
fn inner_private_key_is_locked_down() {
    if in_isolated_child() {
        check_private_key_locked_down();
    }
}

#[test]
fn import_openssl_aes256_key_with_passphrase() {
    for t in TestToken::both("import") {
        let key = t.dir().join("legacy.pem");
        // The passphrase only ever reaches openssl here, the test's own tool.
        openssl(&[
            "genrsa",
            "-aes256",
            "-passout",
            "pass:correct horse",
            "-out",
            key.to_str().unwrap(),
            "2048",
        ]);
        let text = std::fs::read_to_string(&key).unwrap();
        assert!(text.contains("ENCRYPTED"), "openssl wrote an encrypted key");
        let public = public_pem_of(&key, Some("correct horse"));

        // Wrong passphrase: clear error, nothing created.
        let mut env = t.env();
        env.push(("SEQUESTER_CUSTODY_KEY_PASSPHRASE".into(), "wrong".into()));
        let out = import(&t, &key, "service", "legacy", &[], &env);
        assert_clean_failure(&out, "wrong passphrase");
        // No passphrase and no terminal: clear error, no hang.
        let out = import(&t, &key, "service", "legacy", &[], &t.env());
        assert_clean_failure(&out, "no passphrase");

        // Passphrase from the environment.
        let mut env = t.env();
        env.push((
            "SEQUESTER_CUSTODY_KEY_PASSPHRASE".into(),
            "correct horse".into(),
        ));
        let out = import(&t, &key, "service", "legacy", &[], &env);
        check_imported(&out, "service", &public);
        // Directly through PKCS#11: unreadable, unwrappable, cannot become extractable.
        run_isolated(
            "inner_private_key_is_locked_down",
            &locked_down_env(&t, "import", "legacy", "service"),
        );
        // The imported key works through the token (service: decrypt).
        let out = run_cli(&["--json", "key", "test", &t.key_uri("legacy")], &t.env());
        assert!(out.status.success(), "{}", stderr(&out));

        // Passphrase from a file, as an authority key.
        let pass_file = t.dir().join("pass.txt");
        write_secret_file(&pass_file, "correct horse\n");
        let out = import(
            &t,
            &key,
            "authority",
            "legacy-auth",
            &["--passphrase-file", pass_file.to_str().unwrap()],
            &t.env(),
        );
        let v = check_imported(&out, "authority", &public);
        assert_eq!(v["can_sign"], true);
        assert_eq!(v["can_decrypt"], false);
        let out = run_cli(&["key", "test", &t.key_uri("legacy-auth")], &t.env());
        assert!(out.status.success(), "{}", stderr(&out));
        // The key list shows both, with the honest verdict.
        let out = run_cli(&["key", "list", "--token", &t.token_uri()], &t.env());
        assert!(
            stdout(&out).contains("imported, non-extractable now"),
            "{}",
            stdout(&out)
        );
    }
}

#[test]
fn import_pkcs1_and_pkcs8_and_fixture_keys() {
    for t in TestToken::both("import") {
        // PKCS#1 (BEGIN RSA PRIVATE KEY), unencrypted.
        let pkcs1 = t.dir().join("pkcs1.pem");
        openssl(&[
            "genrsa",
            "-traditional",
            "-out",
            pkcs1.to_str().unwrap(),
            "2048",
        ]);
        assert!(std::fs::read_to_string(&pkcs1)
            .unwrap()
            .contains("BEGIN RSA PRIVATE KEY"));
        let out = import(&t, &pkcs1, "authority", "pkcs1", &[], &t.env());
        check_imported(&out, "authority", &public_pem_of(&pkcs1, None));

        // Legacy encrypted PKCS#1 (Proc-Type/DEK-Info): refused with a conversion hint.
        let legacy = t.dir().join("legacy-enc.pem");
        openssl(&[
            "rsa",
            "-in",
            pkcs1.to_str().unwrap(),
            "-traditional",
            "-aes256",
            "-passout",
            "pass:x",
            "-out",
            legacy.to_str().unwrap(),
        ]);
        let out = import(&t, &legacy, "authority", "legacy-enc", &[], &t.env());
        assert_clean_failure(&out, "openssl pkcs8 -topk8");

        // Parsec's published 1024-bit fixture key (PKCS#8): refused without the test-only flag.
        let fixture_key =
            fixture("sequester_service_1.00000000000000000000000000000001.private.pem");
        let fixture_pub = std::fs::read_to_string(fixture(
            "sequester_service_1.00000000000000000000000000000001.public.pem",
        ))
        .unwrap();
        let out = import(&t, &fixture_key, "service", "service-1", &[], &t.env());
        assert_clean_failure(&out, "below the 2048-bit minimum");
        let out = import(
            &t,
            &fixture_key,
            "service",
            "service-1",
            &["--allow-insecure-test-size"],
            &t.env(),
        );
        let v = check_imported(&out, "service", &fixture_pub);
        assert_eq!(v["bits"], 1024);
        // The fingerprint is the SHA-256 of the fixture's SPKI DER.
        let der = pem::parse(&fixture_pub).unwrap().into_contents();
        use sha2::{Digest, Sha256};
        assert_eq!(v["fingerprint"], hex::encode(Sha256::digest(&der)));
        let out = run_cli(&["key", "test", &t.key_uri("service-1")], &t.env());
        assert!(out.status.success(), "{}", stderr(&out));

        // Not a key at all.
        let junk = t.dir().join("junk.pem");
        std::fs::write(
            &junk,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let out = import(&t, &junk, "service", "junk", &[], &t.env());
        assert_clean_failure(&out, "is not an RSA private key");
        let out = import(
            &t,
            Path::new("/nonexistent.pem"),
            "service",
            "junk",
            &[],
            &t.env(),
        );
        assert_clean_failure(&out, "cannot read /nonexistent.pem");
    }
}

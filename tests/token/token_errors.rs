//! Bad input against real tokens: wrong PIN (one attempt, counter state), missing module,
//! unknown / ambiguous token, unknown key, malformed URIs, PIN sources. Each is a specific error,
//! a non-zero exit and no panic.

use crate::common::*;

fn with_pin(env: &[(String, String)], pin: &str) -> Vec<(String, String)> {
    let mut env: Vec<_> = env
        .iter()
        .filter(|(k, _)| k != "SEQUESTER_CUSTODY_PIN")
        .cloned()
        .collect();
    env.push(("SEQUESTER_CUSTODY_PIN".into(), pin.into()));
    env
}

#[test]
fn wrong_pin_is_reported_with_counter_state_and_not_retried() {
    for t in TestToken::both("pins") {
        generate_key(&t, "service", "svc", &t.env());
        let out = run_cli(
            &["key", "show", &t.key_uri("svc")],
            &with_pin(&t.env(), "99999999"),
        );
        assert_clean_failure(&out, "wrong PIN for token `pins`");
        let err = stderr(&out);
        assert!(err.contains("not retried"), "{err}");
        assert!(err.contains("counter state"), "{err}");
        assert!(!err.contains("99999999"), "the PIN is echoed: {err}");
        let token_flags = |t: &TestToken| -> (Vec<String>, String) {
            let out = run_cli(&["--json", "token", "info", &t.token_uri()], &t.env());
            assert!(out.status.success(), "{}", stderr(&out));
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let flags = v["flags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap().to_string())
                .collect();
            (flags, v["pin_state"].as_str().unwrap().to_string())
        };
        match &t {
            TestToken::SoftHsm(_) => {
                // SoftHSM flags COUNT_LOW after any failure and never locks.
                let (flags, state) = token_flags(&t);
                assert!(
                    flags.contains(&"USER_PIN_COUNT_LOW".to_string()),
                    "{flags:?}"
                );
                assert!(state.contains("COUNT_LOW"), "{state}");
            }
            TestToken::Kryoptic(_) => {
                // Kryoptic allows 10 attempts and flags COUNT_LOW at 3 or 2 left, FINAL_TRY at 1:
                // the flags after N failed runs prove each run made exactly one attempt.
                let (flags, _) = token_flags(&t);
                assert!(
                    !flags
                        .iter()
                        .any(|f| f.starts_with("USER_PIN_") && f != "USER_PIN_INITIALIZED"),
                    "after 1 attempt: {flags:?}"
                );
                for _ in 2..=7 {
                    let out = run_cli(
                        &["key", "show", &t.key_uri("svc")],
                        &with_pin(&t.env(), "99999999"),
                    );
                    assert_clean_failure(&out, "wrong PIN");
                }
                let (flags, _) = token_flags(&t);
                assert!(
                    flags.contains(&"USER_PIN_COUNT_LOW".to_string()),
                    "after 7: {flags:?}"
                );
                assert!(
                    !flags.contains(&"USER_PIN_FINAL_TRY".to_string()),
                    "after 7: {flags:?}"
                );
                let out = run_cli(
                    &["key", "show", &t.key_uri("svc")],
                    &with_pin(&t.env(), "99999999"),
                );
                assert_clean_failure(&out, "COUNT_LOW");
                let out = run_cli(
                    &["key", "show", &t.key_uri("svc")],
                    &with_pin(&t.env(), "99999999"),
                );
                assert_clean_failure(&out, "FINAL_TRY");
                // The right PIN still works at the final try (and resets the counter).
                let out = run_cli(&["key", "show", &t.key_uri("svc")], &t.env());
                assert!(out.status.success(), "{}", stderr(&out));
                let (flags, _) = token_flags(&t);
                assert!(
                    !flags.contains(&"USER_PIN_FINAL_TRY".to_string()),
                    "{flags:?}"
                );
                continue;
            }
        }
        // And the right PIN still works.
        let out = run_cli(&["key", "show", &t.key_uri("svc")], &t.env());
        assert!(out.status.success(), "{}", stderr(&out));
    }
}

/// Kryoptic locks the PIN after 10 failures: the tool then says "locked" and does not try.
#[test]
fn locked_pin_is_reported() {
    let Some(k) = Kryoptic::new("locked") else {
        return;
    };
    let t = TestToken::Kryoptic(k);
    generate_key(&t, "service", "svc", &t.env());
    let mut last = None;
    for _ in 0..10 {
        let out = run_cli(
            &["key", "show", &t.key_uri("svc")],
            &with_pin(&t.env(), "99999999"),
        );
        assert!(!out.status.success());
        last = Some(out);
    }
    let err = stderr(last.as_ref().unwrap());
    assert!(err.contains("LOCKED") || err.contains("is locked"), "{err}");
    let out = run_cli(&["key", "show", &t.key_uri("svc")], &t.env());
    assert_clean_failure(&out, "PIN of token `locked` is locked");
}

#[test]
fn pin_from_file_source_and_pin_value_refused() {
    for t in TestToken::both("pins") {
        generate_key(&t, "authority", "auth", &t.env());
        let pin_file = t.dir().join("pin.txt");
        write_secret_file(&pin_file, &format!("{}\n", t.user_pin()));
        let env: Vec<_> = t
            .env()
            .into_iter()
            .filter(|(k, _)| k != "SEQUESTER_CUSTODY_PIN")
            .collect();
        let uri = format!(
            "{}&pin-source=file:{}",
            t.key_uri("auth"),
            pin_file.display()
        );
        let out = run_cli(&["key", "test", &uri], &env);
        assert!(out.status.success(), "{}: {}", t.name(), stderr(&out));
        // A wrong PIN in the file: same clear error.
        write_secret_file(&pin_file, "00000000\n");
        let out = run_cli(&["key", "test", &uri], &env);
        assert_clean_failure(&out, "wrong PIN");
        // A missing PIN file.
        let uri = format!("{}&pin-source=file:/nonexistent/pin", t.key_uri("auth"));
        let out = run_cli(&["key", "test", &uri], &env);
        assert_clean_failure(&out, "cannot read PIN file /nonexistent/pin");
        // pin-value= (a PIN on the command line) is refused, and not echoed.
        let uri = format!("{}&pin-value=4242", t.key_uri("auth"));
        let out = run_cli(&["key", "test", &uri], &env);
        assert_clean_failure(&out, "`pin-value` is refused");
        assert!(!stderr(&out).contains("4242"), "{}", stderr(&out));
        // No PIN at all and no terminal: a clear error, not a hang.
        let out = run_cli(&["key", "test", &t.key_uri("auth")], &env);
        assert_clean_failure(&out, "no PIN");
    }
}

#[test]
fn missing_module_is_a_specific_error() {
    let out = run_cli(
        &[
            "key",
            "show",
            "pkcs11:token=x;object=y?module-path=/nonexistent/libpkcs11.so",
        ],
        &[],
    );
    assert_clean_failure(&out, "PKCS#11 module not found: /nonexistent/libpkcs11.so");
    let out = run_cli(
        &[
            "token",
            "info",
            "pkcs11:token=x?module-name=no-such-profile",
        ],
        &[],
    );
    assert_clean_failure(&out, "no HSM profile named `no-such-profile`");
    // A file that is not a PKCS#11 module.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake.so");
    std::fs::write(&fake, b"not a library").unwrap();
    let out = run_cli(
        &[
            "token",
            "info",
            &format!("pkcs11:token=x?module-path={}", fake.display()),
        ],
        &[],
    );
    assert_clean_failure(&out, "cannot load PKCS#11 module");
}

#[test]
fn unknown_ambiguous_tokens_and_unknown_keys() {
    // Two tokens with the same label on SoftHSM, one on kryoptic with two slots.
    let Some(hsm) = SoftHsm::new("twin") else {
        return;
    };
    hsm.init_token("twin");
    hsm.init_token("other");
    let t = TestToken::SoftHsm(hsm);
    let mut tokens = vec![t];
    if let Some(k) = Kryoptic::with_tokens(&["twin", "twin", "other"]) {
        tokens.push(TestToken::Kryoptic(k));
    }
    for t in tokens {
        let module = t.module().display().to_string();
        let out = run_cli(
            &[
                "key",
                "show",
                &format!("pkcs11:token=twin;object=k?module-path={module}"),
            ],
            &t.env(),
        );
        assert_clean_failure(&out, "2 tokens match token=twin");
        assert!(stderr(&out).contains("serial"), "hint to select by serial");
        let out = run_cli(
            &[
                "token",
                "info",
                &format!("pkcs11:token=nope?module-path={module}"),
            ],
            &t.env(),
        );
        assert_clean_failure(&out, "no token matches token=nope");
        // Selecting by serial resolves the ambiguity.
        let out = run_cli(&["--json", "token", "list", "--module", &module], &t.env());
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let listing = v
            .as_array()
            .unwrap()
            .iter()
            .find(|m| {
                m["module_path"].as_str().is_some_and(|p| {
                    std::path::Path::new(p).canonicalize().unwrap()
                        == t.module().canonicalize().unwrap()
                })
            })
            .unwrap();
        let twins: Vec<_> = listing["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|tok| tok["label"] == "twin")
            .collect();
        assert_eq!(twins.len(), 2, "{listing}");
        let serial = twins[0]["serial"].as_str().unwrap();
        let by_serial = format!("pkcs11:token=twin;serial={serial}?module-path={module}");
        let out = run_cli(&["--json", "token", "info", &by_serial], &t.env());
        assert!(out.status.success(), "{}", stderr(&out));
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(info["serial"], serial);
        // The URI printed by `token list` selects the token again.
        let out = run_cli(
            &["token", "info", twins[1]["uri"].as_str().unwrap()],
            &t.env(),
        );
        assert!(out.status.success(), "{}", stderr(&out));
        // No such key on a valid token.
        let out = run_cli(
            &[
                "key",
                "show",
                &format!("pkcs11:serial={serial};object=missing?module-path={module}"),
            ],
            &t.env(),
        );
        assert_clean_failure(&out, "no key matches object=missing");
    }
}

#[test]
fn malformed_uris_are_specific_errors() {
    for (uri, needle) in [
        ("not-a-uri", "expected a `pkcs11:` or `yubikey:` URI"),
        ("pkcs11:token=a;bogus=b", "unknown attribute `bogus`"),
        ("pkcs11:token=a;token=b", "attribute `token` given twice"),
        ("pkcs11:token=a;id=%zz", "malformed percent escape"),
        ("pkcs11:token", "has no `=`"),
        ("pkcs11:token=a;type=secret-key;object=x", "type=private"),
        (
            "pkcs11:token=a?slot-id=abc",
            "slot-id `abc` is not a number",
        ),
        ("pkcs11:token=a", "names no key"),
    ] {
        let out = run_cli(&["key", "test", uri], &[]);
        assert_clean_failure(&out, "malformed key URI");
        assert_clean_failure(&out, needle);
    }
    // token commands too
    let out = run_cli(&["token", "info", "pkcs11:tokn=a"], &[]);
    assert_clean_failure(&out, "unknown attribute `tokn`");
    let out = run_cli(&["key", "list", "--token", "pkcs11:token=a;obj=x"], &[]);
    assert_clean_failure(&out, "unknown attribute `obj`");
}

#[test]
fn operations_outside_the_role_are_refused() {
    let Some(hsm) = SoftHsm::new("roles") else {
        return;
    };
    let t = TestToken::SoftHsm(hsm);
    generate_key(&t, "service", "svc", &t.env());
    // A key URI where a token URI is expected.
    let out = run_cli(
        &key_generate_args("service", "x", "2048", &t.key_uri("svc"), &[]),
        &t.env(),
    );
    assert_clean_failure(&out, "give the token URI");
    let out = run_cli(
        &[
            "key",
            "generate",
            "--role",
            "boss",
            "--label",
            "x",
            "--token",
            &t.token_uri(),
        ],
        &t.env(),
    );
    assert_clean_failure(&out, "unknown role `boss`");
}

/// A build without the `yubikey` feature (PKCS#11 only) refuses every `yubikey:` URI with the
/// clear message, exit 1, no panic, and never reaches PC/SC.
#[test]
#[cfg(not(feature = "yubikey"))]
fn a_pkcs11_only_build_refuses_yubikey_uris() {
    let key = "yubikey:serial=1;slot=9d";
    let commands: [&[&str]; 4] = [
        &["key", "show", key],
        &["key", "test", key],
        &["key", "list", "--token", "yubikey:serial=1"],
        &["token", "info", "yubikey:serial=1"],
    ];
    for args in commands {
        let out = run_cli(args, &[]);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert_clean_failure(
            &out,
            "`yubikey:` URIs (the YubiKey PIV backend): not compiled into this build of \
             sequester-custody (cargo feature `yubikey`; rebuild with `--features yubikey`)",
        );
    }
}

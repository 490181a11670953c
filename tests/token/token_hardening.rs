//! Custody hardening, tried as a PIN holder would: keys made by `key generate` and
//! `key import` on SoftHSM2 and kryoptic, attacked through cryptoki directly (not through the
//! tool). Role flips, sign-recover, copies, wrapping, reading secret components and mechanisms
//! outside `CKA_ALLOWED_MECHANISMS` are refused; the tool's own paths still work (`key test`).

use crate::common::*;

fn cli_ok(args: &[&str], env: &[(String, String)]) -> serde_json::Value {
    let out = run_cli(args, env);
    assert!(
        out.status.success(),
        "{args:?}: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// Keys of both roles, generated and imported, on `t`; returns (label, role) pairs.
fn make_keys(t: &TestToken) -> Vec<(&'static str, &'static str)> {
    let token = t.token_uri();
    for (label, role) in [("auth-gen", "authority"), ("svc-gen", "service")] {
        let v = cli_ok(
            &key_generate_args(role, label, "2048", &token, &["--json"]),
            &t.env(),
        );
        check_hardened(&v, role, t.name());
    }
    for (label, role, file) in [
        ("auth-imp", "authority", "sequester_authority.private.pem"),
        (
            "svc-imp",
            "service",
            "sequester_service_1.00000000000000000000000000000001.private.pem",
        ),
    ] {
        let v = cli_ok(
            &key_import_args(
                role,
                label,
                &token,
                fixture(file).to_str().unwrap(),
                &["--json", "--allow-insecure-test-size"],
            ),
            &t.env(),
        );
        check_hardened(&v, role, t.name());
    }
    vec![
        ("auth-gen", "authority"),
        ("svc-gen", "service"),
        ("auth-imp", "authority"),
        ("svc-imp", "service"),
    ]
}

/// The JSON of a new key reports every security attribute as asked.
fn check_hardened(v: &serde_json::Value, role: &str, token: &str) {
    let p = &v["provenance"];
    assert_eq!(p["modifiable"], false, "{p}");
    assert_eq!(p["copyable"], false, "{p}");
    assert_eq!(p["sign_recover"], false, "{p}");
    assert_eq!(p["extractable"], false, "{p}");
    assert_eq!(p["weaknesses"], serde_json::json!([]), "{p}");
    let expected = match (role, token) {
        ("authority", _) => "CKM_SHA256_RSA_PKCS_PSS",
        ("service", "softhsm2") => "CKM_RSA_X_509",
        _ => "CKM_RSA_PKCS_OAEP",
    };
    assert_eq!(
        p["allowed_mechanisms"],
        serde_json::json!([expected]),
        "{p}"
    );
}

#[test]
fn keys_resist_a_pin_holder_and_the_tool_paths_still_work() {
    for t in TestToken::both("hardening") {
        let keys = make_keys(&t);
        let list = keys
            .iter()
            .map(|(l, r)| format!("{l}:{r}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut env = t.env();
        env.push(("INNER_MODULE".into(), t.module().display().to_string()));
        env.push(("INNER_TOKEN".into(), "hardening".into()));
        env.push(("INNER_KEYS".into(), list));
        run_isolated("inner_attacks_through_cryptoki_are_refused", &env);
        // The mechanism paths the tool needs are the allowed ones: the round trips still work.
        for (label, _) in &keys {
            let out = run_cli(&["key", "test", &t.key_uri(label)], &t.env());
            assert!(out.status.success(), "{}: {}", t.name(), stderr(&out));
        }
    }
}

#[test]
#[ignore = "runs in the child process of keys_resist_a_pin_holder_and_the_tool_paths_still_work"]
fn inner_attacks_through_cryptoki_are_refused() {
    if in_isolated_child() {
        attack_keys();
    }
}

/// True for the return values that mean "refused" (as opposed to done).
fn refused(rv: &cryptoki::error::Error) -> bool {
    use cryptoki::error::{Error as CkError, RvError};
    matches!(
        rv,
        CkError::Pkcs11(
            RvError::AttributeReadOnly
                | RvError::ActionProhibited
                | RvError::AttributeValueInvalid
                | RvError::KeyFunctionNotPermitted
                | RvError::KeyUnextractable
                | RvError::MechanismInvalid
                | RvError::KeyTypeInconsistent
                | RvError::FunctionNotSupported
                | RvError::TemplateInconsistent,
            _
        )
    )
}

fn attack_keys() {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::error::{Error as CkError, RvError};
    use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
    use cryptoki::mechanism::{Mechanism, MechanismType};
    use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;
    let module = std::env::var("INNER_MODULE").unwrap();
    let token = std::env::var("INNER_TOKEN").unwrap();
    let pin = std::env::var("SEQUESTER_CUSTODY_PIN").unwrap();
    let ctx = Pkcs11::new(&module).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = ctx
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label() == token)
        .unwrap();
    let session = ctx.open_rw_session(slot).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::new(pin.into())))
        .unwrap();

    // C_SignRecover is not wrapped by cryptoki: take it from the module's function list.
    // SAFETY: the module cryptoki loaded and initialised; the list is a static table.
    let (sign_recover_init, sign_recover, _lib) = unsafe {
        let lib = cryptoki_sys::Pkcs11::new(&module).unwrap();
        let mut list: *mut cryptoki_sys::CK_FUNCTION_LIST = std::ptr::null_mut();
        assert_eq!(lib.C_GetFunctionList(&mut list), cryptoki_sys::CKR_OK);
        (
            (*list).C_SignRecoverInit.unwrap(),
            (*list).C_SignRecover.unwrap(),
            lib,
        )
    };

    // A token wrapping key, as a PIN holder could make one.
    let wrapping = session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::ValueLen(32.into()),
                Attribute::Wrap(true),
                Attribute::Encrypt(true),
                Attribute::Label(b"attacker-wrap".to_vec()),
            ],
        )
        .unwrap();

    for entry in std::env::var("INNER_KEYS").unwrap().split(',') {
        let (label, role) = entry.split_once(':').unwrap();
        let authority = role == "authority";
        let found = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::KeyType(KeyType::RSA),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .unwrap();
        assert_eq!(found.len(), 1, "{label}");
        let key = found[0];
        let what = format!("{label} ({role})");

        // The role cannot be flipped, nor any other security attribute turned back on.
        for attr in [
            Attribute::Sign(!authority),
            Attribute::Decrypt(authority),
            Attribute::SignRecover(true),
            Attribute::Extractable(true),
            Attribute::Modifiable(true),
            Attribute::Unwrap(true),
        ] {
            let set = session.update_attributes(key, std::slice::from_ref(&attr));
            assert!(
                matches!(&set, Err(e) if refused(e)),
                "{what}: C_SetAttributeValue({attr:?}) was not refused: {set:?}"
            );
        }
        let flags = session
            .get_attributes(
                key,
                &[
                    AttributeType::Sign,
                    AttributeType::Decrypt,
                    AttributeType::SignRecover,
                    AttributeType::Modifiable,
                    AttributeType::Copyable,
                ],
            )
            .unwrap();
        for a in &flags {
            match a {
                Attribute::Sign(b) => assert_eq!(*b, authority, "{what} CKA_SIGN"),
                Attribute::Decrypt(b) => assert_eq!(*b, !authority, "{what} CKA_DECRYPT"),
                Attribute::SignRecover(b) => assert!(!b, "{what} CKA_SIGN_RECOVER"),
                Attribute::Modifiable(b) => assert!(!b, "{what} CKA_MODIFIABLE"),
                Attribute::Copyable(b) => assert!(!b, "{what} CKA_COPYABLE"),
                _ => {}
            }
        }
        assert_eq!(flags.len(), 5, "{what}: {flags:?}");

        // The raw private operation through C_SignRecover.
        let mut mechanism = cryptoki_sys::CK_MECHANISM {
            mechanism: cryptoki_sys::CKM_RSA_X_509,
            pParameter: std::ptr::null_mut(),
            ulParameterLen: 0,
        };
        // SAFETY: a valid session and key handle of this module; buffers outlive the calls.
        let recovered = unsafe {
            let rv = sign_recover_init(session.handle(), &mut mechanism, key.handle());
            if rv == cryptoki_sys::CKR_OK {
                let mut input = vec![0x42u8; 64];
                let mut out = vec![0u8; 512];
                let mut out_len = out.len() as cryptoki_sys::CK_ULONG;
                sign_recover(
                    session.handle(),
                    input.as_mut_ptr(),
                    input.len() as cryptoki_sys::CK_ULONG,
                    out.as_mut_ptr(),
                    &mut out_len,
                )
            } else {
                rv
            }
        };
        assert_ne!(
            recovered,
            cryptoki_sys::CKR_OK,
            "{what}: C_SignRecover with CKM_RSA_X_509 succeeded"
        );

        // Copies: plain, and with CKA_EXTRACTABLE=TRUE in the copy's template.
        for template in [vec![], vec![Attribute::Extractable(true)]] {
            let copy = session.copy_object(key, &template);
            assert!(
                matches!(&copy, Err(e) if refused(e)),
                "{what}: C_CopyObject({template:?}) was not refused: {copy:?}"
            );
        }

        // Wrapping with the token wrapping key.
        assert_wrap_refused(&session, wrapping, key, &what);

        // Secret components are not readable.
        assert_secret_components_unreadable(&session, key, &what);

        // Mechanisms outside CKA_ALLOWED_MECHANISMS are refused at init (before any data).
        let allowed = session
            .get_attributes(key, &[AttributeType::AllowedMechanisms])
            .unwrap();
        let [Attribute::AllowedMechanisms(allowed)] = &allowed[..] else {
            panic!("{what}: no CKA_ALLOWED_MECHANISMS: {allowed:?}");
        };
        assert_eq!(allowed.len(), 1, "{what}: {allowed:?}");
        let block = vec![0x01u8; 64];
        let oaep_sha1 = Mechanism::RsaPkcsOaep(PkcsOaepParams::new(
            MechanismType::SHA1,
            PkcsMgfType::MGF1_SHA1,
            PkcsOaepSource::empty(),
        ));
        let outside: Vec<(Mechanism, MechanismType)> = vec![
            (Mechanism::RsaPkcs, MechanismType::RSA_PKCS),
            (Mechanism::RsaX509, MechanismType::RSA_X_509),
            (oaep_sha1, MechanismType::RSA_PKCS_OAEP),
            (Mechanism::Sha256RsaPkcs, MechanismType::SHA256_RSA_PKCS),
        ];
        let mut tried = 0;
        for (mech, mech_type) in outside {
            if allowed.contains(&mech_type) {
                continue;
            }
            tried += 1;
            let result = if authority {
                session.sign(&mech, key, &block).map(|_| ())
            } else {
                session.decrypt(&mech, key, &block).map(|_| ())
            };
            assert!(
                matches!(
                    &result,
                    Err(CkError::Pkcs11(
                        RvError::MechanismInvalid | RvError::KeyFunctionNotPermitted,
                        _
                    ))
                ),
                "{what}: {mech_type} outside CKA_ALLOWED_MECHANISMS was not refused: {result:?}"
            );
        }
        assert!(tried >= 3, "{what}");
        eprintln!("{what}: every attack refused (allowed: {allowed:?})");
    }
}

#[test]
fn unsafe_keys_are_reported_and_refused_unless_the_test_override_is_set() {
    let Some(hsm) = SoftHsm::new("unsafe") else {
        return;
    };
    // softhsm2-util leaves CKA_MODIFIABLE and CKA_SIGN_RECOVER at the module's default (TRUE).
    hsm.import_with_softhsm_util(
        &fixture("sequester_service_1.00000000000000000000000000000001.private.pem"),
        "legacy",
        "01",
    );
    let strict = hsm.env_without_unsafe_override();
    let v = cli_ok(&["--json", "key", "show", &hsm.key_uri("legacy")], &strict);
    let weaknesses = v["provenance"]["weaknesses"].to_string();
    assert!(weaknesses.contains("CKA_MODIFIABLE"), "{weaknesses}");
    assert!(weaknesses.contains("CKA_SIGN_RECOVER"), "{weaknesses}");
    let out = run_cli(&["key", "show", &hsm.key_uri("legacy")], &strict);
    let text = stdout(&out);
    assert!(
        text.contains("UNSAFE (2 problem(s)) — refused for signing and decryption"),
        "{text}"
    );
    assert!(text.contains("CKA_MODIFIABLE=TRUE"), "{text}");

    let out = run_cli(&["key", "test", &hsm.key_uri("legacy")], &strict);
    assert_clean_failure(&out, "UNSAFE key `legacy`");
    assert!(stderr(&out).contains("SEQUESTER_CUSTODY_TEST_ALLOW_UNSAFE_KEYS"));

    // The explicit test-only override.
    let out = run_cli(&["key", "test", &hsm.key_uri("legacy")], &hsm.env());
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn always_authenticate_authority_keys_sign_with_a_context_login() {
    for t in TestToken::both("always-auth") {
        let v = cli_ok(
            &key_generate_args(
                "authority",
                "auth",
                "2048",
                &t.token_uri(),
                &["--json", "--always-authenticate"],
            ),
            &t.env(),
        );
        assert!(
            v["provenance"]["evidence"]
                .to_string()
                .contains("CKA_ALWAYS_AUTHENTICATE=TRUE"),
            "{}: {v}",
            t.name()
        );
        let out = run_cli(&["key", "test", &t.key_uri("auth")], &t.env());
        assert!(out.status.success(), "{}: {}", t.name(), stderr(&out));
    }
}

#[test]
fn secret_files_readable_by_others_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let Some(hsm) = SoftHsm::new("modes") else {
        return;
    };
    let pin = hsm.dir.path().join("pin");
    std::fs::write(&pin, format!("{USER_PIN}\n")).unwrap();
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut env = hsm.env();
    env.retain(|(k, _)| k != "SEQUESTER_CUSTODY_PIN");
    let uri = format!("{}&pin-source=file:{}", hsm.token_uri(), pin.display());
    let out = run_cli(&["key", "list", "--token", &uri], &env);
    assert_clean_failure(&out, "readable by every user (mode 0644)");
    assert!(stderr(&out).contains(&format!("chmod 600 {}", pin.display())));
    assert!(!stderr(&out).contains(USER_PIN));
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run_cli(&["key", "list", "--token", &uri], &env);
    assert!(out.status.success(), "{}", stderr(&out));

    // The passphrase file of `key import` (an encrypted PKCS#8 key).
    let encrypted = hsm.dir.path().join("enc.pem");
    let out = std::process::Command::new("openssl")
        .args([
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-passout",
            "pass:correct horse",
            "-in",
        ])
        .arg(fixture(
            "sequester_service_1.00000000000000000000000000000001.private.pem",
        ))
        .arg("-out")
        .arg(&encrypted)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let pass = hsm.dir.path().join("pass");
    std::fs::write(&pass, "correct horse\n").unwrap();
    let import = |label: &str| {
        run_cli(
            &key_import_args(
                "service",
                label,
                &hsm.token_uri(),
                encrypted.to_str().unwrap(),
                &[
                    "--passphrase-file",
                    pass.to_str().unwrap(),
                    "--allow-insecure-test-size",
                ],
            ),
            &hsm.env(),
        )
    };
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = import("x");
    assert_clean_failure(&out, "passphrase file");
    assert!(stderr(&out).contains("readable by its group (mode 0640)"));
    assert!(!stderr(&out).contains("correct horse"));
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = import("x");
    assert!(out.status.success(), "{}", stderr(&out));
}

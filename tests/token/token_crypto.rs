//! Signing and decryption through real SoftHSM2 and kryoptic tokens, checked with the `rsa`
//! crate, on every mechanism path (native, host digest, raw RSA + host padding).

use crate::common::*;
use rsa::pkcs8::DecodePublicKey;
use rsa::rand_core::OsRng;
use rsa::{Oaep, Pss, RsaPublicKey};
use std::sync::Arc;

use sequester_custody::token::interaction::{Interaction, PinKind, PinRequest};
use sequester_custody::token::{open_key, MechanismPath, TokenError};
use sha2::{Digest, Sha256};

fn expect_path(var: &str) -> MechanismPath {
    let v = std::env::var(var).unwrap();
    serde_json::from_value(serde_json::Value::String(v)).unwrap()
}

/// In a child process: sign with the token, verify with the rsa crate (auto and 32-byte salt);
/// the mechanism path is the expected one and the signature is exactly k bytes.
#[test]
#[ignore = "run in a child process by sign_on_token_verify_with_rsa_crate"]
fn inner_sign() {
    if !in_isolated_child() {
        return;
    }
    let key = open_key(
        &std::env::var("INNER_URI").unwrap(),
        sequester_custody::token::interaction::non_interactive(),
    )
    .unwrap();
    let public = RsaPublicKey::from_public_key_der(key.public_key_spki()).unwrap();
    for message in [
        &b""[..],
        b"\x00\x28\xb5\x2f\xfd certificate envelope",
        &[0xabu8; 5000],
    ] {
        let (sig, path) = key.sign_pss_sha256(message).unwrap();
        assert_eq!(path, expect_path("INNER_EXPECT_PATH"));
        assert_eq!(sig.len(), 256);
        let digest = Sha256::digest(message);
        public.verify(Pss::new::<Sha256>(), &digest, &sig).unwrap();
        public
            .verify(Pss::new_with_salt::<Sha256>(32), &digest, &sig)
            .expect("salt length 32");
        // Signing the same message twice gives different signatures (random salt).
        let (sig2, _) = key.sign_pss_sha256(message).unwrap();
        assert_ne!(sig, sig2);
        // A modified message does not verify.
        let other = Sha256::digest([message, b"x"].concat());
        assert!(public.verify(Pss::new::<Sha256>(), &other, &sig).is_err());
    }
    // The service operation is refused on an authority key.
    assert!(matches!(
        key.decrypt_oaep_sha256(&[0u8; 256]),
        Err(TokenError::NotPermitted { .. })
    ));
}

/// In a child process: a block made by the rsa crate with Oaep::new::<Sha256>() decrypts to the
/// same 32 bytes, on the expected path; every tampered block gives the same generic error.
#[test]
#[ignore = "run in a child process by decrypt_on_token_block_from_rsa_crate"]
fn inner_decrypt() {
    if !in_isolated_child() {
        return;
    }
    let key = open_key(
        &std::env::var("INNER_URI").unwrap(),
        sequester_custody::token::interaction::non_interactive(),
    )
    .unwrap();
    let expected_path = expect_path("INNER_EXPECT_PATH");
    let public = RsaPublicKey::from_public_key_der(key.public_key_spki()).unwrap();
    let secret: [u8; 32] = rand::random();
    let block = public
        .encrypt(&mut OsRng, Oaep::new::<Sha256>(), &secret)
        .unwrap();
    assert_eq!(block.len(), 256);
    let (plain, path) = key.decrypt_oaep_sha256(&block).unwrap();
    assert_eq!(path, expected_path);
    assert_eq!(plain.as_slice(), &secret);

    // Tampering of every kind: same error variant, same message.
    let mut tampered: Vec<(&str, Vec<u8>)> = Vec::new();
    for (name, pos) in [("first byte", 0usize), ("middle", 128), ("last byte", 255)] {
        let mut b = block.clone();
        b[pos] ^= 0x01;
        tampered.push((name, b));
    }
    tampered.push((
        "label",
        public
            .encrypt(&mut OsRng, Oaep::new_with_label::<Sha256, _>("x"), &secret)
            .unwrap(),
    ));
    tampered.push((
        "other hash",
        public
            .encrypt(&mut OsRng, Oaep::new::<sha2::Sha512>(), &secret)
            .unwrap(),
    ));
    tampered.push((
        "PKCS#1 v1.5",
        public
            .encrypt(&mut OsRng, rsa::Pkcs1v15Encrypt, &secret)
            .unwrap(),
    ));
    tampered.push(("all zero", vec![0u8; 256]));
    tampered.push(("above modulus", vec![0xffu8; 256]));
    for (name, b) in tampered {
        match key.decrypt_oaep_sha256(&b) {
            Err(TokenError::DecryptionFailed) => {}
            other => panic!("tampering `{name}`: expected DecryptionFailed, got {other:?}"),
        }
    }
    assert_eq!(
        TokenError::DecryptionFailed.to_string(),
        "decryption failed"
    );
    // A block of the wrong size is refused before reaching the token.
    assert!(matches!(
        key.decrypt_oaep_sha256(&block[1..]),
        Err(TokenError::Refused(_))
    ));
    // The key still works after all those failures.
    let (again, _) = key.decrypt_oaep_sha256(&block).unwrap();
    assert_eq!(again.as_slice(), &secret);
    // The authority operation is refused on a service key (softhsm2-util imports keys with
    // both usages: no role to check there).
    if std::env::var_os("INNER_KEY_HAS_BOTH_USAGES").is_none() {
        assert!(matches!(
            key.sign_pss_sha256(b"m"),
            Err(TokenError::NotPermitted { .. })
        ));
    }
}

fn inner_env(
    t: &TestToken,
    base: &[(String, String)],
    label: &str,
    path: &str,
) -> Vec<(String, String)> {
    let mut env = base.to_vec();
    env.push(("INNER_URI".into(), t.key_uri(label)));
    env.push(("INNER_EXPECT_PATH".into(), path.into()));
    env
}

/// A profile replacing the shipped one for `t`'s module, restricting the mechanism paths.
fn forced_profile(
    t: &TestToken,
    decrypt: &[&str],
    sign: &[&str],
) -> (tempfile::TempDir, (String, String)) {
    let dir = tempfile::tempdir().unwrap();
    let list = |v: &[&str]| {
        v.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    std::fs::write(
        dir.path().join("forced.toml"),
        format!(
            "name = \"{name}\"\ndescription = \"test override\"\ntested = true\nmodule_paths = [\"{module}\"]\n\n[mechanisms]\ndecrypt = [{d}]\nsign = [{s}]\n",
            name = t.name(),
            module = t.module().display(),
            d = list(decrypt),
            s = list(sign),
        ),
    )
    .unwrap();
    let var = (
        "SEQUESTER_CUSTODY_PROFILES".to_string(),
        dir.path().display().to_string(),
    );
    (dir, var)
}

#[test]
fn sign_on_token_verify_with_rsa_crate() {
    for t in TestToken::both("crypto") {
        generate_key(&t, "authority", "auth", &t.env());
        // Default negotiation: both tokens sign natively.
        run_isolated(
            "inner_sign",
            &inner_env(&t, &t.env(), "auth", "native-sha256-pss"),
        );
        // The two fallbacks, forced through a profile override, on the same real token. The
        // key is made under the same profile: its CKA_ALLOWED_MECHANISMS holds that path's
        // mechanism only.
        for path in ["host-digest-pss", "raw-rsa-host-pss"] {
            let (_dir, var) = forced_profile(&t, &["raw-rsa-host-oaep"], &[path]);
            let mut env = t.env();
            env.push(var);
            let label = format!("auth-{path}");
            generate_key(&t, "authority", &label, &env);
            run_isolated("inner_sign", &inner_env(&t, &env, &label, path));
        }
    }
}

#[test]
fn decrypt_on_token_block_from_rsa_crate() {
    for t in TestToken::both("crypto") {
        generate_key(&t, "service", "svc", &t.env());
        // SoftHSM 2.6.1 refuses OAEP-SHA256: raw fallback. Kryoptic: native.
        let expected = match t {
            TestToken::SoftHsm(_) => "raw-rsa-host-oaep",
            TestToken::Kryoptic(_) => "native-oaep-sha256",
        };
        run_isolated("inner_decrypt", &inner_env(&t, &t.env(), "svc", expected));
        // The raw fallback forced on kryoptic too (a key made under that profile).
        let (_dir, var) = forced_profile(&t, &["raw-rsa-host-oaep"], &["native-sha256-pss"]);
        let mut env = t.env();
        env.push(var);
        generate_key(&t, "service", "svc-raw", &env);
        run_isolated(
            "inner_decrypt",
            &inner_env(&t, &env, "svc-raw", "raw-rsa-host-oaep"),
        );
    }
}

/// SoftHSM lists CKM_RSA_PKCS_OAEP but refuses SHA-256 parameters: with a profile that tries
/// native first, the refusal at C_DecryptInit makes the key fall back to raw RSA and still
/// return the right 32 bytes. A key without CKA_ALLOWED_MECHANISMS (imported with
/// softhsm2-util, so also unsafe: the test-only override is set) is the one that can still
/// take both paths.
#[test]
fn softhsm_native_oaep_refusal_falls_back_to_raw() {
    let Some(hsm) = SoftHsm::new("crypto") else {
        return;
    };
    let pem = hsm.dir.path().join("svc.pem");
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&pem)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    hsm.import_with_softhsm_util(&pem, "svc", "01");
    let t = TestToken::SoftHsm(hsm);
    let (_dir, var) = forced_profile(
        &t,
        &["native-oaep-sha256", "raw-rsa-host-oaep"],
        &["native-sha256-pss"],
    );
    let mut env = t.env();
    env.push(var);
    env.push(("INNER_KEY_HAS_BOTH_USAGES".into(), "1".into()));
    run_isolated(
        "inner_decrypt",
        &inner_env(&t, &env, "svc", "raw-rsa-host-oaep"),
    );
}

#[test]
fn key_test_reports_path_and_latency() {
    for t in TestToken::both("keytest") {
        generate_key(&t, "service", "svc", &t.env());
        generate_key(&t, "authority", "auth", &t.env());
        for (label, op, path) in [
            (
                "svc",
                "decrypt",
                match t {
                    TestToken::SoftHsm(_) => "raw-rsa-host-oaep",
                    TestToken::Kryoptic(_) => "native-oaep-sha256",
                },
            ),
            ("auth", "sign", "native-sha256-pss"),
        ] {
            let out = run_cli(
                &["--json", "key", "test", &t.key_uri(label), "--rounds", "3"],
                &t.env(),
            );
            assert!(out.status.success(), "{}: {}", t.name(), stderr(&out));
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v["operation"], op);
            assert_eq!(v["mechanism_path"], path, "{}", t.name());
            assert_eq!(v["ok"], true);
            assert_eq!(v["rounds"], 3);
            assert!(v["latency_ms_mean"].as_f64().unwrap() > 0.0);
            eprintln!(
                "{} {op} via {path}: mean {:.2} ms",
                t.name(),
                v["latency_ms_mean"].as_f64().unwrap()
            );
            // Text output names the path too.
            let out = run_cli(&["key", "test", &t.key_uri(label)], &t.env());
            assert!(stdout(&out).contains("mechanism path:"), "{}", stdout(&out));
        }
    }
}

const V6_RSA_BLOCK: &str = "50118dfd50b269d27d0e303d2b4010091520593653e06419afa50be4ea431d1004555532337fe9816afaec9f6d93c148d8a998c6629706bff71dec60201ef97f372671ae76070d585310c240b254ca86cc7152ca410c800ff04bb5eced44406966dec1aa682c6d1997c2ed014503f27a6c89ac75761b1058d361e087946d65d9";

/// In a child process: docs/formats.md §10 vector V6's rsa_block, decrypted by the token holding
/// the imported fixture service 1 key, gives the ephemeral key 00 01 .. 1f.
#[test]
#[ignore = "run in a child process by spec_vector_v6_decrypts_on_token"]
fn inner_v6() {
    if !in_isolated_child() {
        return;
    }
    let key = open_key(
        &std::env::var("INNER_URI").unwrap(),
        sequester_custody::token::interaction::non_interactive(),
    )
    .unwrap();
    let (plain, path) = key
        .decrypt_oaep_sha256(&hex::decode(V6_RSA_BLOCK).unwrap())
        .unwrap();
    assert_eq!(path, expect_path("INNER_EXPECT_PATH"));
    assert_eq!(plain.to_vec(), (0u8..32).collect::<Vec<u8>>());
}

#[test]
fn spec_vector_v6_decrypts_on_token() {
    for t in TestToken::both("v6") {
        let key = fixture("sequester_service_1.00000000000000000000000000000001.private.pem");
        let out = run_cli(
            &key_import_args(
                "service",
                "service-1",
                &t.token_uri(),
                key.to_str().unwrap(),
                &["--allow-insecure-test-size"],
            ),
            &t.env(),
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let expected = match t {
            TestToken::SoftHsm(_) => "raw-rsa-host-oaep",
            TestToken::Kryoptic(_) => "native-oaep-sha256",
        };
        run_isolated("inner_v6", &inner_env(&t, &t.env(), "service-1", expected));
    }
}

/// An [`Interaction`] that answers every PIN request with one PIN and records the requests.
struct RecordingInteraction {
    pin: String,
    asked: std::sync::Mutex<Vec<(String, PinKind)>>,
}

impl Interaction for RecordingInteraction {
    fn ask_pin(&self, request: &PinRequest<'_>) -> Result<zeroize::Zeroizing<String>, TokenError> {
        self.asked
            .lock()
            .unwrap()
            .push((request.token_label.to_string(), request.kind));
        Ok(zeroize::Zeroizing::new(self.pin.clone()))
    }
    fn touch_needed(&self, _token_label: &str, _what: &str) {}
    fn warn(&self, _message: &str) {}
}

/// In a child process without SEQUESTER_CUSTODY_PIN: the token layer asks its caller for the PIN
/// (never a terminal); without a way to ask, a clear error and no PIN is presented.
#[test]
#[ignore = "run in a child process by the_pin_is_asked_of_the_callers_interaction"]
fn inner_interaction() {
    if !in_isolated_child() {
        return;
    }
    assert!(std::env::var_os(sequester_custody::token::pin::PIN_ENV).is_none());
    let uri = std::env::var("INNER_URI").unwrap();
    let err = open_key(
        &uri,
        sequester_custody::token::interaction::non_interactive(),
    )
    .err()
    .expect("no PIN source and no prompt");
    assert!(matches!(err, TokenError::PinSource(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("a PIN is needed") && text.contains("no prompt is available"),
        "{text}"
    );
    let recording = Arc::new(RecordingInteraction {
        pin: std::env::var("INNER_PIN").unwrap(),
        asked: Default::default(),
    });
    let key = open_key(&uri, recording.clone()).unwrap();
    let (sig, _) = key.sign_pss_sha256(b"asked once").unwrap();
    assert_eq!(sig.len(), 256);
    let asked = recording.asked.lock().unwrap().clone();
    assert_eq!(
        asked,
        [(std::env::var("INNER_TOKEN_LABEL").unwrap(), PinKind::User)]
    );
}

#[test]
fn the_pin_is_asked_of_the_callers_interaction() {
    for t in TestToken::both("asks") {
        generate_key(&t, "authority", "auth", &t.env());
        let mut env: Vec<_> = t
            .env()
            .into_iter()
            .filter(|(k, _)| k != sequester_custody::token::pin::PIN_ENV)
            .collect();
        env.push(("INNER_URI".into(), t.key_uri("auth")));
        env.push(("INNER_PIN".into(), t.user_pin().into()));
        let token_label = match &t {
            TestToken::SoftHsm(h) => h.label.clone(),
            TestToken::Kryoptic(k) => k.label.clone(),
        };
        env.push(("INNER_TOKEN_LABEL".into(), token_label));
        run_isolated("inner_interaction", &env);
    }
}

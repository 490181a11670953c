//! The same (virtual) YubiKey through PKCS#11 with the generic `pkcs11:` backend: OpenSC's
//! `opensc-pkcs11.so` and Yubico's `libykcs11.so` (apt `ykcs11`; it only accepts readers whose
//! name contains "Yubico", which the virtual reader's does). Keys are generated with the native
//! `yubikey:` backend, then used through each module: same public key, decryption and signing
//! round trips checked on the host. The authority key sits in 9c, which both modules mark
//! CKA_ALWAYS_AUTHENTICATE: each signature needs a context-specific login.
#![cfg(feature = "yubikey")] // the YubiKey PIV backend

use crate::common;
use crate::common::yubikey as yubikey_common;

use std::path::{Path, PathBuf};

use rsa::pkcs8::DecodePublicKey;
use sequester_custody::token::pkcs11::Pkcs11Key;
use sequester_custody::token::uri::Pkcs11Uri;
use sequester_custody::token::{self, yubikey as yk, KeyHandle, KeySpec, Role, TokenError};

fn module(names: &[&str], what: &str) -> Option<PathBuf> {
    let found = names.iter().map(PathBuf::from).find(|p| p.exists());
    common::available(what, found.is_some()).then(|| found.unwrap())
}

fn opensc() -> Option<PathBuf> {
    module(
        &[
            "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so",
            "/usr/lib64/opensc-pkcs11.so",
        ],
        "OpenSC PKCS#11 module (apt opensc)",
    )
}

fn ykcs11() -> Option<PathBuf> {
    module(
        &[
            "/usr/lib/x86_64-linux-gnu/libykcs11.so",
            "/usr/lib64/libykcs11.so",
        ],
        "Yubico ykcs11 PKCS#11 module (apt ykcs11)",
    )
}

struct Keys {
    session: yubikey_common::Session,
    authority_spki: Vec<u8>,
    service_spki: Vec<u8>,
    pin_file: PathBuf,
}

/// A fresh card with an authority key in `authority_slot` and a service key in 9d.
fn card_with_keys(authority_slot: &str) -> Option<Keys> {
    let session = yubikey_common::start(&["5.4.3"])?;
    let pin_file = session.pin_file("pin", yubikey_common::PIN);
    let card = session.card().uri();
    let gen = |slot: &str, role: Role| {
        let uri = format!("{card};slot={slot}?pin-source=file:{}", pin_file.display());
        let spec = KeySpec {
            role,
            label: role.to_string(),
            bits: 2048,
            allow_insecure_test_size: false,
            always_authenticate: false,
        };
        let generated =
            yk::generate(&uri, &spec, &sequester_custody::token::NonInteractive).unwrap();
        token::KeyHandle::public_key_spki(&generated.key).to_vec()
    };
    let authority_spki = gen(authority_slot, Role::Authority);
    let service_spki = gen("9d", Role::Service);
    Some(Keys {
        session,
        authority_spki,
        service_spki,
        pin_file,
    })
}

fn pkcs11_uri(module: &Path, selector: &str, id: &str, pin_file: &Path) -> String {
    format!(
        "pkcs11:{selector};id=%{id};type=private?module-path={}&pin-source=file:{}",
        module.display(),
        pin_file.display()
    )
}

fn round_trips(keys: &Keys, module: &Path, selector: &str, authority_id: &str) {
    // Decryption through the module.
    let service = token::open_key(
        &pkcs11_uri(module, selector, "03", &keys.pin_file),
        sequester_custody::token::interaction::non_interactive(),
    )
    .unwrap();
    assert_eq!(service.public_key_spki(), &keys.service_spki[..]);
    let public = rsa::RsaPublicKey::from_public_key_der(&keys.service_spki).unwrap();
    let secret = [0x42u8; 32];
    let block = public
        .encrypt(
            &mut rand::rngs::OsRng,
            rsa::Oaep::new::<sha2::Sha256>(),
            &secret,
        )
        .unwrap();
    let (plain, path) = service.decrypt_oaep_sha256(&block).unwrap();
    assert_eq!(&plain[..], &secret[..], "{path}");
    drop(service);

    // Signing through the module.
    let authority = token::open_key(
        &pkcs11_uri(module, selector, authority_id, &keys.pin_file),
        sequester_custody::token::interaction::non_interactive(),
    )
    .unwrap();
    assert_eq!(authority.public_key_spki(), &keys.authority_spki[..]);
    let message = b"\x00envelope";
    let (sig, path) = authority.sign_pss_sha256(message).unwrap();
    let public = rsa::RsaPublicKey::from_public_key_der(&keys.authority_spki).unwrap();
    public
        .verify(
            rsa::Pss::new_with_salt::<sha2::Sha256>(32),
            &sequester_custody::crypto::sha256(message),
            &sig,
        )
        .unwrap_or_else(|e| panic!("signature via {path} does not verify: {e}"));
}

#[test]
fn ykcs11_decrypts_and_signs_with_keys_generated_by_the_yubikey_backend() {
    let Some(module) = ykcs11() else { return };
    let Some(keys) = card_with_keys("9c") else {
        return;
    };
    let selector = format!("serial={}", keys.session.card().serial);
    round_trips(&keys, &module, &selector, "02");
}

#[test]
fn opensc_decrypts_and_signs_with_keys_generated_by_the_yubikey_backend() {
    let Some(module) = opensc() else { return };
    let Some(keys) = card_with_keys("9c") else {
        return;
    };
    // OpenSC names the token after the first certificate and derives its serial from the
    // CHUID; select by label. Its ids: 9a = 01, 9c = 02, 9d = 03.
    let selector = "token=Parsec%20sequester%20authority%20key".to_string();
    round_trips(&keys, &module, &selector, "02");

    // OpenSC marks the 9c key CKA_ALWAYS_AUTHENTICATE: each signature needs a context-specific
    // login between C_SignInit and C_Sign (without it OpenSC answers CKR_USER_NOT_LOGGED_IN).
    // Check that this key really takes that path, and that it works for every signature of
    // one open key, not only the first.
    let uri = Pkcs11Uri::parse(&pkcs11_uri(&module, &selector, "02", &keys.pin_file)).unwrap();
    let authority = Pkcs11Key::open(
        &uri,
        sequester_custody::token::interaction::non_interactive(),
    )
    .unwrap();
    assert!(
        authority.always_authenticate(),
        "OpenSC should report CKA_ALWAYS_AUTHENTICATE on the 9c key"
    );
    let public = rsa::RsaPublicKey::from_public_key_der(&keys.authority_spki).unwrap();
    for message in [&b"first"[..], b"second", b"third"] {
        let (sig, path) = authority.sign_pss_sha256(message).unwrap();
        public
            .verify(
                rsa::Pss::new_with_salt::<sha2::Sha256>(32),
                &sequester_custody::crypto::sha256(message),
                &sig,
            )
            .unwrap_or_else(|e| panic!("signature via {path} does not verify: {e}"));
    }
    drop(authority);

    // A wrong PIN at the context-specific login: reported, never tried again. To reach that
    // login with a wrong PIN, the module must already be logged in (by the service key, opened
    // with the right PIN): then opening the authority key reads no PIN, and the first signature
    // reads the wrong one from its pin-source.
    let service = Pkcs11Key::open(
        &Pkcs11Uri::parse(&pkcs11_uri(&module, &selector, "03", &keys.pin_file)).unwrap(),
        sequester_custody::token::interaction::non_interactive(),
    )
    .unwrap();
    let wrong = keys.session.pin_file("wrong", "654321");
    let authority = Pkcs11Key::open(
        &Pkcs11Uri::parse(&pkcs11_uri(&module, &selector, "02", &wrong)).unwrap(),
        sequester_custody::token::interaction::non_interactive(),
    )
    .unwrap();
    match authority.sign_pss_sha256(b"wrong PIN") {
        Err(TokenError::WrongPin { .. }) => {}
        other => panic!("expected a wrong PIN, got {other:?}"),
    }
    match authority.sign_pss_sha256(b"again") {
        // Refused by the key itself, without presenting a PIN again.
        Err(TokenError::Refused(text)) => assert!(
            text.contains("no further sign") && text.contains("wrong PIN"),
            "{text}"
        ),
        other => panic!("expected a refusal without a second attempt, got {other:?}"),
    }
    drop(authority);
    drop(service);
    // Exactly one retry spent, read from the card itself.
    let retries = yk::card_info(&keys.session.card().uri())
        .unwrap()
        .pin_retries;
    assert_eq!(retries, 2, "one wrong PIN must cost exactly one retry");
}

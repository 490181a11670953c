//! The `yubikey:` backend against a virtual PIV card (pcscd + vpcd + piv-authenticator):
//! opening by serial, on-card generation, PSS signing and OAEP decryption through the host
//! paddings, PIN handling and refusals. See docs/yubikey.md for what only hardware covers.
#![cfg(feature = "yubikey")] // the YubiKey PIV backend

use crate::common::yubikey as yubikey_common;

use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use sequester_custody::token::yubikey::{self as yk, MgmKeyKind};
use sequester_custody::token::{KeyHandle, KeySpec, MechanismPath, Role, TokenError};

fn spec(role: Role, bits: usize) -> KeySpec {
    KeySpec {
        role,
        label: format!("test {role}"),
        bits,
        allow_insecure_test_size: false,
        always_authenticate: false,
    }
}

/// Generates a `role` key of `bits` on the card `token` designates, with no one to ask.
fn generate(token: &str, role: Role, bits: usize) -> Result<yk::Generated, TokenError> {
    yk::generate(
        token,
        &spec(role, bits),
        &sequester_custody::token::NonInteractive,
    )
}

#[test]
fn opens_each_of_two_cards_by_serial() {
    let Some(session) = yubikey_common::start(&["5.4.3", "5.7.1"]) else {
        return;
    };
    let (a, b) = (&session.cards[0], &session.cards[1]);
    let info_a = yk::card_info(&a.uri()).unwrap();
    let info_b = yk::card_info(&b.uri()).unwrap();
    assert_eq!(info_a.serial, a.serial);
    assert_eq!(info_a.firmware, "5.4.3");
    assert_eq!(info_b.serial, b.serial);
    assert_eq!(info_b.firmware, "5.7.1");
    assert!(info_a.reader.contains("Yubico"), "{}", info_a.reader);

    // Two cards and no serial: ambiguous, never a silent pick.
    match yk::card_info("yubikey:") {
        Err(TokenError::AmbiguousToken { count: 2, .. }) => {}
        other => panic!("expected AmbiguousToken, got {other:?}"),
    }
    match yk::card_info("yubikey:serial=99") {
        Err(TokenError::NoSuchToken(msg)) => assert!(msg.contains("99"), "{msg}"),
        other => panic!("expected NoSuchToken, got {other:?}"),
    }
}

#[test]
fn generates_signs_and_decrypts_on_the_card() {
    let Some(session) = yubikey_common::start(&["5.4.3"]) else {
        return;
    };
    let card = session.card();
    let pin = session.pin_file("pin", yubikey_common::PIN);
    let token = format!("{}?pin-source=file:{}", card.uri(), pin.display());

    let authority = generate(&token, Role::Authority, 2048).unwrap();
    assert_eq!(authority.key.slot(), 0x9c);
    assert_eq!(authority.mgm_key, MgmKeyKind::FactoryDefault);
    let service = generate(&token, Role::Service, 2048).unwrap();
    assert_eq!(service.key.slot(), 0x9d);
    assert_ne!(
        authority.key.public_key_spki(),
        service.key.public_key_spki()
    );
    drop(authority);
    drop(service);

    // The keys are found again from a fresh handle, through the slot certificates.
    let listed = yk::list_keys(&card.uri()).unwrap();
    let slots: Vec<(&str, Option<Role>, usize)> = listed
        .iter()
        .map(|k| (k.id.as_str(), k.role, k.bits))
        .collect();
    assert_eq!(
        slots,
        vec![
            ("9c", Some(Role::Authority), 2048),
            ("9d", Some(Role::Service), 2048)
        ]
    );

    // Sign: EMSA-PSS on the host, raw RSA on the card; verify with the public key only.
    let signer = yk::open_key(
        &session.key_uri(card, "9c"),
        &sequester_custody::token::NonInteractive,
    )
    .unwrap();
    let message = b"\x00 a Parsec envelope stand-in";
    let (sig, path) = signer.sign_pss_sha256(message).unwrap();
    assert_eq!(path, MechanismPath::RawRsaHostPss);
    assert_eq!(sig.len(), 256);
    let public = rsa::RsaPublicKey::from_public_key_der(signer.public_key_spki()).unwrap();
    assert_eq!(public.n().bits(), 2048);
    let digest = sequester_custody::crypto::sha256(message);
    public
        .verify(rsa::Pss::new_with_salt::<sha2::Sha256>(32), &digest, &sig)
        .expect("card signature verifies with salt 32");
    let other = sequester_custody::crypto::sha256(b"another message");
    assert!(public
        .verify(rsa::Pss::new_with_salt::<sha2::Sha256>(32), &other, &sig)
        .is_err());

    // Decrypt: raw RSA on the card, EME-OAEP decoding on the host.
    let decrypter = yk::open_key(
        &session.key_uri(card, "9d"),
        &sequester_custody::token::NonInteractive,
    )
    .unwrap();
    let service_pub = rsa::RsaPublicKey::from_public_key_der(decrypter.public_key_spki()).unwrap();
    let secret = [0x5au8; 32];
    let block = service_pub
        .encrypt(
            &mut rand::rngs::OsRng,
            rsa::Oaep::new::<sha2::Sha256>(),
            &secret,
        )
        .unwrap();
    let (plain, path) = decrypter.decrypt_oaep_sha256(&block).unwrap();
    assert_eq!(path, MechanismPath::RawRsaHostOaep);
    assert_eq!(&plain[..], &secret[..]);
    // A tampered block fails with the one generic error.
    let mut tampered = block.clone();
    tampered[100] ^= 1;
    assert!(matches!(
        decrypter.decrypt_oaep_sha256(&tampered),
        Err(TokenError::DecryptionFailed)
    ));
    // OAEP with another hash (SHA-512) is refused, not mis-decoded.
    let other_hash_block = service_pub
        .encrypt(
            &mut rand::rngs::OsRng,
            rsa::Oaep::new::<sha2::Sha512>(),
            &secret,
        )
        .unwrap();
    assert!(matches!(
        decrypter.decrypt_oaep_sha256(&other_hash_block),
        Err(TokenError::DecryptionFailed)
    ));

    // One role per key.
    assert!(matches!(
        decrypter.sign_pss_sha256(b"x"),
        Err(TokenError::NotPermitted { .. })
    ));
    assert!(matches!(
        signer.decrypt_oaep_sha256(&block),
        Err(TokenError::NotPermitted { .. })
    ));

    // The slot is never overwritten.
    match generate(&token, Role::Authority, 2048) {
        Err(TokenError::Refused(msg)) => assert!(msg.contains("already holds a key"), "{msg}"),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    // A further service key goes to a retired slot.
    let extra = generate(
        &format!("{};slot=82?pin-source=file:{}", card.uri(), pin.display()),
        Role::Service,
        2048,
    )
    .unwrap();
    assert_eq!(extra.key.slot(), 0x82);

    // The emulated card cannot attest: provenance says so instead of claiming anything.
    let info = signer.info().unwrap();
    assert_eq!(
        info.provenance.verdict,
        sequester_custody::token::ProvenanceVerdict::Unknown
    );
    assert!(
        info.provenance
            .evidence
            .iter()
            .any(|e| e.contains("attestation")),
        "{:?}",
        info.provenance.evidence
    );
    assert_eq!(info.uri, format!("yubikey:serial={};slot=9c", card.serial));
}

#[test]
fn wrong_pin_reports_retries_and_spends_exactly_one() {
    let Some(session) = yubikey_common::start(&["5.4.3"]) else {
        return;
    };
    let card = session.card();
    let pin = session.pin_file("pin", yubikey_common::PIN);
    let token = format!("{}?pin-source=file:{}", card.uri(), pin.display());
    generate(&token, Role::Service, 2048).unwrap();
    let before = yk::card_info(&card.uri()).unwrap().pin_retries;
    assert!(before >= 2, "{before}");

    let wrong = session.pin_file("wrong", "654321");
    let uri = format!("{};slot=9d?pin-source=file:{}", card.uri(), wrong.display());
    let err = yk::open_key(&uri, &sequester_custody::token::NonInteractive)
        .err()
        .expect("wrong PIN refused");
    let text = err.to_string();
    match &err {
        TokenError::WrongPin { state, .. } => {
            assert!(state.contains(&format!("{} retr", before - 1)), "{state}")
        }
        other => panic!("expected WrongPin, got {other:?}"),
    }
    assert!(
        !text.contains("654321"),
        "the PIN leaked into the error: {text}"
    );
    // Not retried: exactly one attempt was spent.
    assert_eq!(yk::card_info(&card.uri()).unwrap().pin_retries, before - 1);
    // The right PIN resets the counter.
    yk::open_key(
        &session.key_uri(card, "9d"),
        &sequester_custody::token::NonInteractive,
    )
    .unwrap();
    assert_eq!(yk::card_info(&card.uri()).unwrap().pin_retries, before);
}

#[test]
fn rsa_3072_needs_firmware_5_7() {
    let Some(session) = yubikey_common::start(&["5.4.3", "5.7.1"]) else {
        return;
    };
    let pin = session.pin_file("pin", yubikey_common::PIN);
    let (old, new) = (&session.cards[0], &session.cards[1]);
    for bits in [3072, 4096] {
        let token = format!("{}?pin-source=file:{}", old.uri(), pin.display());
        match generate(&token, Role::Service, bits) {
            Err(TokenError::Refused(msg)) => {
                assert!(msg.contains("needs YubiKey firmware 5.7"), "{msg}")
            }
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }
    }
    assert!(yk::list_keys(&old.uri()).unwrap().is_empty());

    // Firmware 5.7: RSA-3072 through our own PIV commands (the yubikey crate stops at 2048).
    let token = format!("{}?pin-source=file:{}", new.uri(), pin.display());
    let authority = generate(&token, Role::Authority, 3072).unwrap();
    let service = generate(&token, Role::Service, 3072).unwrap();
    drop((authority, service));
    let listed = yk::list_keys(&new.uri()).unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|k| (k.id.as_str(), k.bits))
            .collect::<Vec<_>>(),
        vec![("9c", 3072), ("9d", 3072)]
    );

    let signer = yk::open_key(
        &session.key_uri(new, "9c"),
        &sequester_custody::token::NonInteractive,
    )
    .unwrap();
    let (sig, _) = signer.sign_pss_sha256(b"\x00big").unwrap();
    assert_eq!(sig.len(), 384);
    let public = rsa::RsaPublicKey::from_public_key_der(signer.public_key_spki()).unwrap();
    public
        .verify(
            rsa::Pss::new_with_salt::<sha2::Sha256>(32),
            &sequester_custody::crypto::sha256(b"\x00big"),
            &sig,
        )
        .unwrap();

    let decrypter = yk::open_key(
        &session.key_uri(new, "9d"),
        &sequester_custody::token::NonInteractive,
    )
    .unwrap();
    let public = rsa::RsaPublicKey::from_public_key_der(decrypter.public_key_spki()).unwrap();
    let block = public
        .encrypt(
            &mut rand::rngs::OsRng,
            rsa::Oaep::new::<sha2::Sha256>(),
            &[7u8; 32],
        )
        .unwrap();
    assert_eq!(block.len(), 384);
    let (plain, _) = decrypter.decrypt_oaep_sha256(&block).unwrap();
    assert_eq!(&plain[..], &[7u8; 32]);
}

#[test]
fn management_key_from_file_or_refused() {
    let Some(session) = yubikey_common::start(&["5.4.3"]) else {
        return;
    };
    let card = session.card();
    let pin = session.pin_file("pin", yubikey_common::PIN);
    let wrong_mgm = session.pin_file("mgm-wrong", &"11".repeat(24));
    let uri = format!(
        "{};slot=9d?pin-source=file:{}&mgm-key-source=file:{}",
        card.uri(),
        pin.display(),
        wrong_mgm.display()
    );
    match generate(&uri, Role::Service, 2048) {
        Err(TokenError::NotPermitted { reason, .. }) => {
            assert!(reason.contains("refused the management key"), "{reason}")
        }
        other => panic!("expected NotPermitted, got {:?}", other.map(|_| ())),
    }
    let default_mgm = session.pin_file("mgm", "010203040506070801020304050607080102030405060708");
    let uri = format!(
        "{};slot=9d?pin-source=file:{}&mgm-key-source=file:{}&pin-policy=always",
        card.uri(),
        pin.display(),
        default_mgm.display()
    );
    let generated = generate(&uri, Role::Service, 2048).unwrap();
    assert_eq!(generated.mgm_key, MgmKeyKind::FromFile);
}

#[test]
fn card_held_exclusively_by_another_program_is_named() {
    let Some(session) = yubikey_common::start(&["5.4.3"]) else {
        return;
    };
    let card = session.card();
    // Another program (here: a second PC/SC context, as scdaemon would) takes the card
    // exclusively.
    let ctx = pcsc::Context::establish(pcsc::Scope::System).unwrap();
    let mut names = vec![0u8; ctx.list_readers_len().unwrap()];
    let reader = ctx
        .list_readers(&mut names)
        .unwrap()
        .find(|r| r.to_string_lossy().ends_with("00 00"))
        .expect("the first vpcd slot")
        .to_owned();
    let holder = ctx
        .connect(&reader, pcsc::ShareMode::Exclusive, pcsc::Protocols::ANY)
        .unwrap();
    match yk::card_info(&card.uri()) {
        Err(e @ TokenError::Backend { .. }) => {
            assert!(e.to_string().contains("held by another program"), "{e}")
        }
        other => panic!("expected a busy-card error, got {other:?}"),
    }
    drop(holder);
    assert_eq!(yk::card_info(&card.uri()).unwrap().serial, card.serial);
}

#[test]
fn aes_management_key_is_detected_and_used() {
    let aes_key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let Some(session) =
        yubikey_common::start_with(&[("5.7.1", &["--aes256-management-key", aes_key][..])])
    else {
        return;
    };
    let card = session.card();
    let pin = session.pin_file("pin", yubikey_common::PIN);
    // No key given: the factory default does not fit an AES-256 key; the error says which.
    match generate(
        &format!("{}?pin-source=file:{}", card.uri(), pin.display()),
        Role::Service,
        2048,
    ) {
        Err(TokenError::NotPermitted { reason, .. }) => {
            assert!(reason.contains("AES-256"), "{reason}");
            assert!(reason.contains("mgm-key-source"), "{reason}");
        }
        other => panic!("expected NotPermitted, got {:?}", other.map(|_| ())),
    }
    // A wrong AES key is refused by the mutual authentication.
    let wrong = session.pin_file("mgm-wrong", &"ab".repeat(32));
    match generate(
        &format!(
            "{}?pin-source=file:{}&mgm-key-source=file:{}",
            card.uri(),
            pin.display(),
            wrong.display()
        ),
        Role::Service,
        2048,
    ) {
        Err(TokenError::NotPermitted { reason, .. }) => {
            assert!(reason.contains("refused the management key"), "{reason}")
        }
        other => panic!("expected NotPermitted, got {:?}", other.map(|_| ())),
    }
    // A 3DES-sized key for an AES-256 card is caught before talking to the card.
    let short = session.pin_file("mgm-short", &"01".repeat(24));
    assert!(matches!(
        generate(
            &format!(
                "{}?pin-source=file:{}&mgm-key-source=file:{}",
                card.uri(),
                pin.display(),
                short.display()
            ),
            Role::Service,
            2048
        ),
        Err(TokenError::PinSource(_))
    ));
    // The right AES key: generation and the slot certificate work.
    let right = session.pin_file("mgm", aes_key);
    let generated = generate(
        &format!(
            "{}?pin-source=file:{}&mgm-key-source=file:{}",
            card.uri(),
            pin.display(),
            right.display()
        ),
        Role::Service,
        2048,
    )
    .unwrap();
    assert_eq!(generated.mgm_key, MgmKeyKind::FromFile);
    assert_eq!(yk::list_keys(&card.uri()).unwrap().len(), 1);
}

/// A wrong PIN is never retried: the PIN is changed on the card while a run holds an open key
/// (another program, a swapped card with the same serial). The kept PIN is rejected once; after
/// that neither this key nor a new key opened with the same PIN presents it again: exactly one
/// retry is spent.
#[test]
fn a_pin_changed_mid_run_costs_exactly_one_retry() {
    let Some(session) = yubikey_common::start(&["5.4.3"]) else {
        return;
    };
    let card = session.card();
    let pin = session.pin_file("pin", yubikey_common::PIN);
    let token = format!("{}?pin-source=file:{}", card.uri(), pin.display());
    generate(&token, Role::Service, 2048).unwrap();
    let key = yk::open_key(
        &session.key_uri(card, "9d"),
        &sequester_custody::token::NonInteractive,
    )
    .unwrap();
    let public = rsa::RsaPublicKey::from_public_key_der(key.public_key_spki()).unwrap();
    let block = |secret: &[u8]| {
        public
            .encrypt(
                &mut rand::rngs::OsRng,
                rsa::Oaep::new::<sha2::Sha256>(),
                secret,
            )
            .unwrap()
    };
    assert_eq!(
        key.decrypt_oaep_sha256(&block(b"row 1"))
            .unwrap()
            .0
            .as_slice(),
        b"row 1"
    );
    let before = yk::card_info(&card.uri()).unwrap().pin_retries;

    // Another program changes the PIN, and leaves the card without resetting it (a reset is
    // seen by the open key as the card having been removed, which stops the run at once).
    let mut other = yubikey::YubiKey::open_by_serial(yubikey::Serial(card.serial)).unwrap();
    other
        .change_pin(yubikey_common::PIN.as_bytes(), b"777777")
        .unwrap();
    assert!(other.disconnect(pcsc::Disposition::LeaveCard).is_ok());

    // The next access row: the kept PIN is presented once and rejected.
    match key.decrypt_oaep_sha256(&block(b"row 2")) {
        Err(TokenError::WrongPin { .. }) => {}
        other => panic!("expected WrongPin, got {other:?}"),
    }
    assert_eq!(yk::card_info(&card.uri()).unwrap().pin_retries, before - 1);
    // Every further row is refused by the key without touching the card.
    for row in [b"row 3", b"row 4", b"row 5"] {
        match key.decrypt_oaep_sha256(&block(row)) {
            Err(TokenError::Refused(text)) => assert!(text.contains("no further"), "{text}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    // A new key opened with the same (now wrong) PIN file is refused before the card is asked.
    match yk::open_key(
        &session.key_uri(card, "9d"),
        &sequester_custody::token::NonInteractive,
    ) {
        Err(e @ TokenError::PinLatched { .. }) => assert!(e.is_fatal()),
        Err(other) => panic!("expected PinLatched, got {other:?}"),
        Ok(_) => panic!("expected PinLatched, got a key"),
    }
    assert_eq!(
        yk::card_info(&card.uri()).unwrap().pin_retries,
        before - 1,
        "the rejected PIN was presented again"
    );
    drop(key);
    // The new PIN is another PIN: it may be presented, and works.
    let new_pin = session.pin_file("new-pin", "777777");
    let uri = format!(
        "{};slot=9d?pin-source=file:{}",
        card.uri(),
        new_pin.display()
    );
    let key = yk::open_key(&uri, &sequester_custody::token::NonInteractive).unwrap();
    assert_eq!(
        key.decrypt_oaep_sha256(&block(b"row 6"))
            .unwrap()
            .0
            .as_slice(),
        b"row 6"
    );
}

/// Default policies: authority slots default to PIN always + touch always; service slots to PIN
/// once + touch never. The URI still chooses.
#[test]
fn authority_slots_default_to_pin_always_and_touch_always() {
    use sequester_custody::token::yubikey::uri::{PinPolicyOpt, TouchPolicyOpt};
    let Some(session) = yubikey_common::start(&["5.4.3"]) else {
        return;
    };
    let card = session.card();
    let pin = session.pin_file("pin", yubikey_common::PIN);
    let token = format!("{}?pin-source=file:{}", card.uri(), pin.display());
    let authority = generate(&token, Role::Authority, 2048).unwrap();
    assert_eq!(authority.pin_policy, PinPolicyOpt::Always);
    assert_eq!(authority.touch_policy, TouchPolicyOpt::Always);
    drop(authority);
    let service = generate(&token, Role::Service, 2048).unwrap();
    assert_eq!(service.pin_policy, PinPolicyOpt::Once);
    assert_eq!(service.touch_policy, TouchPolicyOpt::Never);
    drop(service);
    let cached = format!(
        "{};slot=9a?pin-source=file:{}&touch-policy=cached",
        card.uri(),
        pin.display()
    );
    let authority = generate(&cached, Role::Authority, 2048).unwrap();
    assert_eq!(authority.pin_policy, PinPolicyOpt::Always);
    assert_eq!(authority.touch_policy, TouchPolicyOpt::Cached);
    // The authority key signs (the emulated card has no touch sensor and grants it).
    let (sig, _) = authority
        .key
        .sign_pss_sha256(b"service certificate")
        .unwrap();
    assert_eq!(sig.len(), 256);
}

/// A slot certificate is not trusted for the role: whoever holds the management key can rewrite a
/// slot certificate, which records the role. In 9c/9d the slot decides: a 9d certificate rewritten
/// to claim the authority role is refused, and generation never puts a key of the other role there.
#[test]
fn a_rewritten_slot_certificate_cannot_change_the_role() {
    use std::str::FromStr;
    use yubikey::certificate::yubikey_signer::{Rsa2048, YubiRsa};
    let Some(session) = yubikey_common::start(&["5.4.3"]) else {
        return;
    };
    let card = session.card();
    let pin = session.pin_file("pin", yubikey_common::PIN);
    let token = format!("{}?pin-source=file:{}", card.uri(), pin.display());
    let service = generate(&token, Role::Service, 2048).unwrap();
    let spki = service.key.public_key_spki().to_vec();
    drop(service);

    // Generation refuses the other role in 9c/9d.
    let in_9d = format!("{};slot=9d?pin-source=file:{}", card.uri(), pin.display());
    match generate(&in_9d, Role::Authority, 2048) {
        Err(TokenError::Refused(msg)) => assert!(msg.contains("holds the service key"), "{msg}"),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }

    // The management key holder rewrites the 9d certificate to claim the authority role.
    {
        let mut yk = yubikey::YubiKey::open_by_serial(yubikey::Serial(card.serial)).unwrap();
        yk.authenticate(yubikey::MgmKey::default()).unwrap();
        yk.verify_pin(yubikey_common::PIN.as_bytes()).unwrap();
        let name = x509_cert::name::Name::from_str(
            "CN=Parsec sequester authority key,O=sequester-custody",
        )
        .unwrap();
        let spki =
            <x509_cert::spki::SubjectPublicKeyInfoOwned as der::Decode>::from_der(&spki).unwrap();
        yubikey::Certificate::generate_self_signed::<_, YubiRsa<Rsa2048>>(
            &mut yk,
            yubikey::piv::SlotId::KeyManagement,
            x509_cert::serial_number::SerialNumber::new(&[0x42]).unwrap(),
            x509_cert::time::Validity::from_now(std::time::Duration::from_secs(86_400)).unwrap(),
            name,
            spki,
            |_| Ok(()),
        )
        .unwrap();
        assert!(yk.disconnect(pcsc::Disposition::LeaveCard).is_ok());
    }
    match yk::open_key(
        &session.key_uri(card, "9d"),
        &sequester_custody::token::NonInteractive,
    ) {
        Err(TokenError::Refused(msg)) => {
            assert!(msg.contains("claims the authority role"), "{msg}")
        }
        Err(other) => panic!("expected a refusal, got {other:?}"),
        Ok(_) => panic!("a rewritten certificate turned the service key into an authority key"),
    }
    // The listing shows the key without a role.
    let listed = yk::list_keys(&card.uri()).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].role, None);
}

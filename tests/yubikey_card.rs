//! The `yubikey:` backend against a virtual PIV card (pcscd + vpcd + piv-authenticator):
//! opening by serial, on-card generation, PSS signing and OAEP decryption through the host
//! paddings, PIN handling and refusals. See docs/yubikey.md for what only hardware covers.

mod common;
mod yubikey_common;

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
    }
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

    let authority = yk::generate(&token, &spec(Role::Authority, 2048)).unwrap();
    assert_eq!(authority.key.slot(), 0x9c);
    assert_eq!(authority.mgm_key, MgmKeyKind::FactoryDefault);
    let service = yk::generate(&token, &spec(Role::Service, 2048)).unwrap();
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
    let signer = yk::open_key(&session.key_uri(card, "9c")).unwrap();
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
    let decrypter = yk::open_key(&session.key_uri(card, "9d")).unwrap();
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
    match yk::generate(&token, &spec(Role::Authority, 2048)) {
        Err(TokenError::Refused(msg)) => assert!(msg.contains("already holds a key"), "{msg}"),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    // A further service key goes to a retired slot.
    let extra = yk::generate(
        &format!("{};slot=82?pin-source=file:{}", card.uri(), pin.display()),
        &spec(Role::Service, 2048),
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
    yk::generate(&token, &spec(Role::Service, 2048)).unwrap();
    let before = yk::card_info(&card.uri()).unwrap().pin_retries;
    assert!(before >= 2, "{before}");

    let wrong = session.pin_file("wrong", "654321");
    let uri = format!("{};slot=9d?pin-source=file:{}", card.uri(), wrong.display());
    let err = yk::open_key(&uri).err().expect("wrong PIN refused");
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
    yk::open_key(&session.key_uri(card, "9d")).unwrap();
    assert_eq!(yk::card_info(&card.uri()).unwrap().pin_retries, before);
}

#[test]
fn refuses_sizes_the_card_or_driver_cannot_generate() {
    let Some(session) = yubikey_common::start(&["5.4.3", "5.7.1"]) else {
        return;
    };
    let pin = session.pin_file("pin", yubikey_common::PIN);
    for (card, needle) in [
        (&session.cards[0], "needs YubiKey firmware 5.7"),
        (&session.cards[1], "yubikey crate 0.8"),
    ] {
        for bits in [3072, 4096] {
            let token = format!("{}?pin-source=file:{}", card.uri(), pin.display());
            match yk::generate(&token, &spec(Role::Service, bits)) {
                Err(TokenError::Refused(msg)) => assert!(msg.contains(needle), "{msg}"),
                other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
            }
        }
    }
    // Nothing was generated.
    assert!(yk::list_keys(&session.cards[0].uri()).unwrap().is_empty());
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
    match yk::generate(&uri, &spec(Role::Service, 2048)) {
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
    let generated = yk::generate(&uri, &spec(Role::Service, 2048)).unwrap();
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

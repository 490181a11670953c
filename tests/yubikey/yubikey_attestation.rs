//! Attestation chain checks on stored certificate chains (an emulated card cannot attest).
//! The chains are built here, shaped like Yubico's: root CA -> [intermediate] -> per-device f9
//! certificate -> slot attestation certificate with the Yubico extensions. The keys are the
//! published 1024-bit Parsec fixture keys (fast; never production keys).
#![cfg(feature = "yubikey")] // the YubiKey PIV backend

use crate::common;

use std::str::FromStr;
use std::time::Duration;

use der::asn1::{BitString, OctetString};
use der::{Any, Encode};
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use rsa::signature::{SignatureEncoding, Signer};
use rsa::RsaPrivateKey;
use sequester_custody::token::yubikey::attestation::{
    self, oid, AttestedPinPolicy, AttestedTouchPolicy, Expected,
};
use x509_cert::certificate::{Certificate, TbsCertificate, Version};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::time::Validity;

const SHA256_WITH_RSA: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const SERIAL: u32 = 12_345_678;

fn key(name: &str) -> RsaPrivateKey {
    RsaPrivateKey::from_pkcs8_pem(&std::fs::read_to_string(common::fixture(name)).unwrap()).unwrap()
}

fn spki_of(key: &RsaPrivateKey) -> Vec<u8> {
    key.to_public_key().to_public_key_der().unwrap().into_vec()
}

fn ext(id: der::asn1::ObjectIdentifier, value: &[u8]) -> Extension {
    Extension {
        extn_id: id,
        critical: false,
        extn_value: OctetString::new(value.to_vec()).unwrap(),
    }
}

fn yubico_extensions(firmware: [u8; 3], serial: u32, policy: [u8; 2]) -> Vec<Extension> {
    vec![
        ext(oid::FIRMWARE, &firmware),
        ext(
            oid::SERIAL,
            &der::asn1::Uint::new(&serial.to_be_bytes())
                .unwrap()
                .to_der()
                .unwrap(),
        ),
        ext(oid::POLICY, &policy),
        ext(oid::FORM_FACTOR, &[0x01]),
    ]
}

/// A certificate for `subject_spki`, issued by `issuer` and signed with `signer`.
fn cert(
    subject: &str,
    issuer: &str,
    subject_spki: &[u8],
    signer: &RsaPrivateKey,
    extensions: Vec<Extension>,
) -> Vec<u8> {
    let alg = AlgorithmIdentifierOwned {
        oid: SHA256_WITH_RSA,
        parameters: Some(Any::null()),
    };
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(&[0x01, 0x02, 0x03]).unwrap(),
        signature: alg.clone(),
        issuer: Name::from_str(issuer).unwrap(),
        validity: Validity::from_now(Duration::from_secs(10 * 365 * 86_400)).unwrap(),
        subject: Name::from_str(subject).unwrap(),
        subject_public_key_info: <SubjectPublicKeyInfoOwned as der::Decode>::from_der(subject_spki)
            .unwrap(),
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: (!extensions.is_empty()).then_some(extensions),
    };
    let signing_key = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(signer.clone());
    let signature = signing_key.sign(&tbs.to_der().unwrap()).to_vec();
    Certificate {
        tbs_certificate: tbs,
        signature_algorithm: alg,
        signature: BitString::from_bytes(&signature).unwrap(),
    }
    .to_der()
    .unwrap()
}

const ROOT: &str = "CN=Test Yubico PIV Root CA Serial 263751";
const INTERMEDIATE: &str = "CN=Test Yubico PIV Attestation B 1";
const DEVICE: &str = "CN=Yubico PIV Attestation";
const SLOT: &str = "CN=YubiKey PIV Attestation 9c";

struct Chain {
    root: Vec<u8>,
    intermediate: Vec<u8>,
    device: Vec<u8>,
    slot: Vec<u8>,
    slot_spki: Vec<u8>,
}

/// root (authority key) -> intermediate (service 3) -> f9 (service 1) -> 9c (service 2 key).
fn chain() -> Chain {
    let root_key = key("sequester_authority.private.pem");
    let intermediate_key = key("sequester_service_3.00000000000000000000000000000003.private.pem");
    let device_key = key("sequester_service_1.00000000000000000000000000000001.private.pem");
    let slot_key = key("sequester_service_2.00000000000000000000000000000002.private.pem");
    let slot_spki = spki_of(&slot_key);
    Chain {
        root: cert(ROOT, ROOT, &spki_of(&root_key), &root_key, vec![]),
        intermediate: cert(
            INTERMEDIATE,
            ROOT,
            &spki_of(&intermediate_key),
            &root_key,
            vec![],
        ),
        device: cert(
            DEVICE,
            INTERMEDIATE,
            &spki_of(&device_key),
            &intermediate_key,
            vec![],
        ),
        slot: cert(
            SLOT,
            DEVICE,
            &slot_spki,
            &device_key,
            yubico_extensions([5, 4, 3], SERIAL, [2, 1]),
        ),
        slot_spki,
    }
}

fn expected(spki: &[u8]) -> Expected<'_> {
    Expected {
        spki_der: spki,
        serial: Some(SERIAL),
        firmware: Some((5, 4, 3)),
        slot: 0x9c,
    }
}

#[test]
fn a_genuine_chain_is_attested_and_its_extensions_read() {
    let c = chain();
    let roots = vec![c.root.clone(), c.intermediate.clone()];
    let report =
        attestation::verify(&c.slot, &c.device, Some(&roots), &expected(&c.slot_spki)).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.generated_on_device);
    assert!(report.signed_by_device_key);
    assert_eq!(report.chains_to_root, Some(true));
    assert_eq!(report.root_subject.as_deref(), Some(ROOT));
    assert_eq!(report.facts.firmware, Some((5, 4, 3)));
    assert_eq!(report.facts.serial, Some(SERIAL));
    assert_eq!(report.facts.pin_policy, Some(AttestedPinPolicy::Once));
    assert_eq!(report.facts.touch_policy, Some(AttestedTouchPolicy::Never));
    assert_eq!(report.facts.form_factor, Some(1));
    assert!(
        report.summary().starts_with("generated on this YubiKey"),
        "{}",
        report.summary()
    );

    assert!(!report.root_shipped);
    assert!(report
        .summary()
        .contains("root named with --attestation-root"));

    // Without the operator's root the chain ends at a CA that is neither shipped nor named:
    // the card's signature is not enough for "generated on this card".
    let report = attestation::verify(&c.slot, &c.device, None, &expected(&c.slot_spki)).unwrap();
    assert!(!report.generated_on_device);
    assert!(report.signed_by_device_key);
    assert_eq!(report.chains_to_root, Some(false));
    assert!(
        report.summary().starts_with("NOT anchored"),
        "{}",
        report.summary()
    );
    assert!(report.summary().contains("--attestation-root"));
}

#[test]
fn the_shipped_yubico_cas_are_the_published_ones_and_chain_to_their_roots() {
    // Every certificate of the shipped file matches its pinned fingerprint (docs/yubikey.md).
    let blocks = pem::parse_many(attestation::YUBICO_PIV_CAS_PEM).unwrap();
    assert_eq!(blocks.len(), attestation::YUBICO_PIV_CA_FINGERPRINTS.len());
    let docs = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/yubikey.md"),
    )
    .unwrap();
    for (block, (name, fingerprint)) in blocks.iter().zip(attestation::YUBICO_PIV_CA_FINGERPRINTS) {
        let cert = <x509_cert::Certificate as der::Decode>::from_der(block.contents()).unwrap();
        assert!(
            cert.tbs_certificate.subject.to_string().ends_with(name),
            "{name}"
        );
        assert_eq!(
            sequester_custody::crypto::sha256_hex(block.contents()),
            fingerprint,
            "{name}"
        );
        assert!(
            docs.to_ascii_lowercase().contains(fingerprint),
            "docs/yubikey.md does not give the fingerprint of {name}"
        );
    }
    assert_eq!(attestation::shipped_yubico_cas().len(), blocks.len());
    // The PIV intermediates of firmware 5.7.4+ chain (signatures checked) to Attestation Root 1;
    // the legacy root is self-signed.
    for (i, root) in [
        (4, "CN=Yubico Attestation Root 1"),
        (5, "CN=Yubico Attestation Root 1"),
        (0, "CN=Yubico PIV Root CA Serial 263751"),
    ] {
        assert_eq!(
            attestation::shipped_anchor_of(blocks[i].contents()).unwrap(),
            root
        );
    }
    // A certificate from elsewhere is not anchored.
    let c = chain();
    assert!(attestation::shipped_anchor_of(&c.intermediate)
        .unwrap_err()
        .contains("not anchored"));
}

#[test]
fn each_broken_link_is_named() {
    let c = chain();
    let roots = vec![c.root.clone(), c.intermediate.clone()];
    let check = |slot: &[u8], device: &[u8], roots: Option<&[Vec<u8>]>, exp: &Expected<'_>| {
        let report = attestation::verify(slot, device, roots, exp).unwrap();
        assert!(!report.generated_on_device);
        assert!(
            report.summary().starts_with("NOT attested")
                || report.summary().starts_with("NOT anchored"),
            "{}",
            report.summary()
        );
        report.problems.join("; ")
    };

    // Another card's serial.
    let mut other_serial = expected(&c.slot_spki);
    other_serial.serial = Some(SERIAL + 1);
    assert!(check(&c.slot, &c.device, Some(&roots), &other_serial).contains("serial"));

    // Another firmware.
    let mut other_fw = expected(&c.slot_spki);
    other_fw.firmware = Some((5, 7, 1));
    assert!(check(&c.slot, &c.device, Some(&roots), &other_fw).contains("firmware"));

    // The attestation is for another key than the one in the slot.
    let other_spki = spki_of(&key("sequester_authority.private.pem"));
    assert!(
        check(&c.slot, &c.device, Some(&roots), &expected(&other_spki))
            .contains("attested public key is not the key in slot 9c")
    );

    // Another slot.
    let mut other_slot = expected(&c.slot_spki);
    other_slot.slot = 0x9d;
    assert!(check(&c.slot, &c.device, Some(&roots), &other_slot).contains("slot 9d"));

    // Slot certificate signed by a key that is not the f9 key (a forged attestation).
    let forger = key("sequester_service_3.00000000000000000000000000000003.private.pem");
    let forged = cert(
        SLOT,
        DEVICE,
        &c.slot_spki,
        &forger,
        yubico_extensions([5, 4, 3], SERIAL, [2, 1]),
    );
    let problems = check(&forged, &c.device, Some(&roots), &expected(&c.slot_spki));
    assert!(problems.contains("signature does not verify"), "{problems}");

    // A modified certificate (touch policy flipped after signing).
    let mut tampered = c.slot.clone();
    let pos = tampered.windows(2).rposition(|w| w == [2, 1]).unwrap();
    tampered[pos + 1] = 2;
    assert!(
        check(&tampered, &c.device, Some(&roots), &expected(&c.slot_spki))
            .contains("signature does not verify")
    );

    // A device certificate from another root.
    let other_root_key = key("sequester_service_2.00000000000000000000000000000002.private.pem");
    let other_root = cert(
        "CN=Someone Else CA",
        "CN=Someone Else CA",
        &spki_of(&other_root_key),
        &other_root_key,
        vec![],
    );
    let report = attestation::verify(
        &c.slot,
        &c.device,
        Some(&[other_root]),
        &expected(&c.slot_spki),
    )
    .unwrap();
    assert_eq!(report.chains_to_root, Some(false));
    assert!(report.signed_by_device_key);
    assert!(!report.generated_on_device);

    // Root file without the intermediate: the chain is incomplete.
    let problems = check(
        &c.slot,
        &c.device,
        Some(std::slice::from_ref(&c.root)),
        &expected(&c.slot_spki),
    );
    assert!(problems.contains("does not chain"), "{problems}");

    // No Yubico extensions at all.
    let bare = cert(
        SLOT,
        DEVICE,
        &c.slot_spki,
        &key("sequester_service_1.00000000000000000000000000000001.private.pem"),
        vec![],
    );
    let problems = check(&bare, &c.device, None, &expected(&c.slot_spki));
    assert!(problems.contains("no serial extension"), "{problems}");
    assert!(
        problems.contains("no PIN/touch policy extension"),
        "{problems}"
    );
}

#[test]
fn root_files_load_as_pem_bundle_or_der_and_garbage_is_an_error() {
    let c = chain();
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("yubico-piv-ca.pem");
    let text = [&c.root, &c.intermediate]
        .iter()
        .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec())))
        .collect::<String>();
    std::fs::write(&bundle, text).unwrap();
    assert_eq!(
        attestation::load_roots(&bundle).unwrap(),
        vec![c.root.clone(), c.intermediate.clone()]
    );

    let der_file = dir.path().join("root.der");
    std::fs::write(&der_file, &c.root).unwrap();
    assert_eq!(
        attestation::load_roots(&der_file).unwrap(),
        vec![c.root.clone()]
    );

    let junk = dir.path().join("junk.pem");
    std::fs::write(
        &junk,
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    assert!(attestation::load_roots(&junk).is_err());
    assert!(attestation::load_roots(&dir.path().join("missing.pem")).is_err());

    assert!(matches!(
        attestation::verify(
            b"not a certificate",
            &c.device,
            None,
            &expected(&c.slot_spki)
        ),
        Err(attestation::AttestationError::Parse { .. })
    ));
}

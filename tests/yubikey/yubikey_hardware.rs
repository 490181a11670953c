//! Tests that need a REAL YubiKey (5 series, firmware 5.x): attestation by the card's f9 key up
//! to Yubico's PIV root, touch, PIN policies as enforced by genuine firmware. All `#[ignore]`d;
//! run on a TEST key whose PIV applet may be reset (keys are generated in retired slots 94/95
//! and cannot be deleted on firmware < 5.7):
//!
//! ```sh
//! ykman piv reset                       # factory PIN 123456, default 3DES management key
//! SEQUESTER_YUBIKEY_SERIAL=12345678 \
//! SEQUESTER_YUBIKEY_ROOT=/path/to/yubico-piv-ca-1.pem \
//! SEQUESTER_CUSTODY_PIN=123456 \
//!   cargo test --test yubikey yubikey_hardware -- --ignored --test-threads=1 --nocapture
//! ```
//! See docs/yubikey.md ("Hardware test procedure").
#![cfg(feature = "yubikey")] // the YubiKey PIV backend

use std::path::PathBuf;

use sequester_custody::token::yubikey as yk;
use sequester_custody::token::{KeyHandle, KeySpec, ProvenanceVerdict, Role};

fn serial() -> u32 {
    std::env::var("SEQUESTER_YUBIKEY_SERIAL")
        .expect("set SEQUESTER_YUBIKEY_SERIAL to the serial of the test YubiKey")
        .parse()
        .expect("SEQUESTER_YUBIKEY_SERIAL is a decimal serial")
}

fn root() -> PathBuf {
    PathBuf::from(
        std::env::var("SEQUESTER_YUBIKEY_ROOT")
            .expect("set SEQUESTER_YUBIKEY_ROOT to Yubico's PIV attestation CA (PEM)"),
    )
}

fn spec(role: Role) -> KeySpec {
    KeySpec {
        role,
        label: "hardware test".into(),
        bits: 2048,
        allow_insecure_test_size: false,
        always_authenticate: false,
    }
}

#[test]
#[ignore = "needs a real YubiKey: see the module documentation"]
fn generated_key_is_attested_up_to_the_yubico_root() {
    let serial = serial();
    let generated = yk::generate(
        &format!("yubikey:serial={serial};slot=95"),
        &spec(Role::Service),
        &sequester_custody::token::NonInteractive,
    )
    .expect("generate in retired slot 95 (reset the applet if it is taken)");
    let report =
        yk::attestation_report(&format!("yubikey:serial={serial};slot=95"), Some(&root())).unwrap();
    assert!(report.generated_on_device, "{:?}", report.problems);
    assert_eq!(report.chains_to_root, Some(true));
    assert_eq!(report.facts.serial, Some(serial));
    assert_eq!(report.facts.firmware, Some(generated.key.firmware()));
    let provenance = generated.key.provenance().unwrap();
    assert_eq!(provenance.verdict, ProvenanceVerdict::GeneratedOnToken);
}

#[test]
#[ignore = "needs a real YubiKey and a person to touch it"]
fn touch_policy_always_waits_for_a_touch() {
    let serial = serial();
    let generated = yk::generate(
        &format!("yubikey:serial={serial};slot=94?touch-policy=always"),
        &spec(Role::Authority),
        &sequester_custody::token::NonInteractive,
    )
    .expect("generate in retired slot 94");
    eprintln!("Touch the YubiKey within 15 s to sign...");
    let (sig, _) = generated.key.sign_pss_sha256(b"\x00touch test").unwrap();
    assert_eq!(sig.len(), 256);
    eprintln!("Now do NOT touch it: the next signature must fail after the timeout.");
    assert!(generated.key.sign_pss_sha256(b"\x00no touch").is_err());
}

#[test]
#[ignore = "needs a real YubiKey (5.7+ generates, older refuses)"]
fn rsa_4096_generated_on_5_7_and_refused_before() {
    let serial = serial();
    let info = yk::card_info(&format!("yubikey:serial={serial}")).unwrap();
    let mut big = spec(Role::Authority);
    big.bits = 4096;
    let result = yk::generate(
        &format!("yubikey:serial={serial};slot=93"),
        &big,
        &sequester_custody::token::NonInteractive,
    );
    let version: Vec<u32> = info
        .firmware
        .split('.')
        .map(|p| p.parse().unwrap())
        .collect();
    if (version[0], version[1]) >= (5, 7) {
        let generated = result.expect("RSA-4096 on firmware 5.7+");
        let (sig, _) = generated.key.sign_pss_sha256(b"\x00big").unwrap();
        assert_eq!(sig.len(), 512);
        let report = generated
            .key
            .attest(Some(&yk::attestation::load_roots(&root()).unwrap()));
        assert!(report.unwrap().generated_on_device);
    } else {
        let text = result.err().expect("refused").to_string();
        assert!(text.contains("firmware 5.7"), "{text}");
    }
}

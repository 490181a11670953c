//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the corpus replay test
//! (`tests/export/fuzz_corpus.rs`): one function per target, taking the raw input bytes. Each runs every
//! decoder of its kind on the input and must return without panicking, whatever the bytes.
//!
//! Inputs starting with `0x00` are used as they are (a data-format-v0 envelope); any other input
//! is taken as msgpack and wrapped in an envelope first, so that the fuzzer explores the msgpack
//! structure instead of the zstd framing.

use crate::crypto::rsa_padding;
use crate::parsec::manifest::Manifest;
use crate::parsec::spki::{self, RsaPublicKeyDer};
use crate::parsec::{armor, cert_pem, device, envelope, limits, msgpack, realm, sequester};

/// A public key generated for the fuzz targets only (no private key is kept anywhere).
const FUZZ_AUTHORITY_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAtsLSQ7NF8gl8FZcmxofe
Hc39buaE8SM6lq8HbHi6LslA3ckFfeB0WR90XeENupBS9LulhhfruWa7IMXxu3Dk
U2TwbCNJvVW7ckL4eZQXBHn80ykpDYdixtuBw/PKMLfxBWI/FcoKDHuUDkRC6TZi
94cNfa7C9ZBJAxI3fA7y+wZeUtDuIZMi6YA7yTb+T+gpAPGy6PIuYVCoj1ZPIUxE
RhAlbVs48DWn1G05DmiAMmyqkuPDMeB4drZCKMUVikWdk941IguAdhPiaSia/+VB
uyTk3jKeylE4YxZFmMolaoVhBDoc+Q9OcZA5r3vfX60jT8wMIbgAsdDc/aLQHqP2
nQIDAQAB
-----END PUBLIC KEY-----
";

/// Every fuzz target: its name (the file under `fuzz/fuzz_targets/` and the corpus directory)
/// and its entry function.
/// A fuzz target's entry function.
pub type Entry = fn(&[u8]);

pub const TARGETS: &[(&str, Entry)] = &[
    ("envelope", envelope_and_msgpack),
    ("manifest", manifest),
    ("common_certificate", common_certificate),
    ("realm_certificate", realm_certificate),
    ("sequester_certificate", sequester_certificate),
    ("keys_bundle", keys_bundle),
    ("keys_bundle_access", keys_bundle_access),
    ("rsa_armor", rsa_armor),
    ("spki_der", spki_der),
    ("pem", pem),
    ("pkcs11_uri", pkcs11_uri),
    #[cfg(feature = "yubikey")]
    ("yubikey_uri", yubikey_uri),
    ("ceremony_plan", ceremony_plan),
];

/// The envelope as it is, or msgpack wrapped into one: a zstd frame holding one raw
/// (uncompressed) block, far cheaper per execution than compressing.
fn as_envelope(data: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    const MAX_RAW_BLOCK: usize = 128 * 1024;
    match data.first() {
        Some(0) => data.into(),
        _ if data.len() >= MAX_RAW_BLOCK => envelope::wrap(data).into(),
        _ => {
            // magic, descriptor 0x00, window 2^21, last raw block header (size << 3 | 1)
            let mut out = vec![0x00, 0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x58];
            let header = ((data.len() as u32) << 3) | 1;
            out.extend_from_slice(&header.to_le_bytes()[..3]);
            out.extend_from_slice(data);
            out.into()
        }
    }
}

/// The zstd envelope (every limit kind) and the bounded msgpack decoder on raw bytes.
pub fn envelope_and_msgpack(data: &[u8]) {
    for kind in [
        &limits::MANIFEST,
        &limits::CERTIFICATE,
        &limits::KEYS_BUNDLE,
        &limits::KEYS_BUNDLE_ACCESS,
    ] {
        let _ = envelope::decode_value(data, kind);
        let _ = msgpack::decode_bounded(data, kind);
    }
}

/// Folder and file manifests.
pub fn manifest(data: &[u8]) {
    if let Ok(m) = Manifest::decode(&as_envelope(data)) {
        // What was accepted must encode and decode to the same manifest.
        assert_eq!(Manifest::decode(&m.encode()).ok(), Some(m));
    }
}

/// `common_certificate` rows: user and device certificates, and the type sniffing.
pub fn common_certificate(data: &[u8]) {
    let env = as_envelope(data);
    let _ = device::DeviceCertificate::decode(&env);
    let _ = device::UserCertificate::decode(&env);
    let _ = device::type_of(&env);
}

/// `realm_certificate` rows: key rotation, name and role certificates.
pub fn realm_certificate(data: &[u8]) {
    let env = as_envelope(data);
    let _ = realm::KeyRotationCertificate::decode(&env);
    let _ = realm::NameCertificate::decode(&env);
    let _ = realm::RoleCertificate::decode(&env);
}

/// `sequester_certificate` rows: authority (envelope) and service/revocation (envelope, and
/// armored rows read with or without the authority key).
pub fn sequester_certificate(data: &[u8]) {
    let env = as_envelope(data);
    let _ = sequester::AuthorityCertificate::decode(&env);
    let _ = sequester::SequesterCertificate::decode(&env);
    let _ = sequester::decode_unverified(data);
    let _ = sequester::decode_sequester_topic_row(fuzz_authority(), data);
}

/// `realm_keys_bundle` (after decryption).
pub fn keys_bundle(data: &[u8]) {
    let _ = realm::KeysBundle::decode(&as_envelope(data));
}

/// `realm_keys_bundle_access` (after decryption).
pub fn keys_bundle_access(data: &[u8]) {
    let _ = realm::KeysBundleAccess::decode(&as_envelope(data));
}

/// The RSA armor (PSS signature and OAEP framing, every key size) and OAEP decoding of a block.
pub fn rsa_armor(data: &[u8]) {
    for k in [128, 256, 384, 512] {
        let _ = armor::split(armor::PSS_SHA256, k, data);
        let _ = armor::split_oaep(k, data);
    }
    let _ = armor::verify_pss_armored(fuzz_authority(), data);
    let _ = rsa_padding::oaep_sha256_decode(data);
    let _ = rsa_padding::oaep_sha256_decode_raw(data, 256);
}

/// DER SubjectPublicKeyInfo (certificates' keys, token-read keys).
pub fn spki_der(data: &[u8]) {
    let _ = RsaPublicKeyDer::from_der(data);
    let _ = spki::parse_spki_der_lenient(data);
}

/// PEM operator files: certificate files and public keys.
pub fn pem(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = cert_pem::decode(&text, None);
    let _ = RsaPublicKeyDer::from_pem(&text);
}

/// RFC 7512 PKCS#11 URIs.
pub fn pkcs11_uri(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = crate::token::uri::redact_pin_value(&text);
    if let Ok(uri) = crate::token::uri::Pkcs11Uri::parse(&text) {
        let _ = uri.token_selector();
        let _ = uri.object_selector();
        // A parsed URI prints as a URI that parses again.
        let again = uri.to_uri_string();
        assert!(
            crate::token::uri::Pkcs11Uri::parse(&again).is_ok(),
            "{again}"
        );
    }
}

/// `yubikey:` URIs.
#[cfg(feature = "yubikey")]
pub fn yubikey_uri(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = crate::token::yubikey::uri::YubikeyUri::parse(&text);
}

/// Ceremony plans (TOML), parsed and statically checked.
pub fn ceremony_plan(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(plan) = crate::ceremony::plan::CeremonyPlan::parse(&text) {
        if plan.check().is_ok() {
            for step in &plan.steps {
                let _ = step.describe();
            }
        }
    }
}

fn fuzz_authority() -> &'static RsaPublicKeyDer {
    static KEY: std::sync::OnceLock<RsaPublicKeyDer> = std::sync::OnceLock::new();
    KEY.get_or_init(|| RsaPublicKeyDer::from_pem(FUZZ_AUTHORITY_PEM).expect("valid embedded key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_block_wrapping_is_a_valid_envelope() {
        let msgpack = [0x81, 0xa1, b'a', 0xc0];
        assert_eq!(
            envelope::unwrap(&as_envelope(&msgpack)).unwrap(),
            msgpack.to_vec()
        );
    }
}

//! YubiKey PIV attestation: the card signs, with its per-device attestation key (slot f9), a
//! certificate for the public key of a slot, carrying Yubico extensions (firmware, serial, PIN
//! and touch policy). The f9 certificate itself is issued by Yubico's PIV attestation CA.
//!
//! This module is pure (no card I/O): it checks a chain `slot certificate -> f9 certificate ->
//! [intermediates] -> root` given as DER, so the logic is tested on stored chains.
//! <https://developers.yubico.com/PIV/Introduction/PIV_attestation.html>
//!
//! The chain must end at a Yubico PIV attestation root shipped with the tool
//! ([`YUBICO_PIV_CAS_PEM`]: `Yubico PIV Root CA Serial 263751` for firmware before 5.7.4,
//! `Yubico Attestation Root 1` with its A/B intermediates after) or at a root the operator names
//! (`--attestation-root`); otherwise the verdict is "not anchored".

use der::{Decode, Encode};
use rsa::signature::Verifier;
use serde::Serialize;
use sha2::{Sha256, Sha384, Sha512};
use x509_cert::Certificate;

/// Yubico's PIV attestation extension OIDs (arc 1.3.6.1.4.1.41482.3).
pub mod oid {
    use der::asn1::ObjectIdentifier;
    /// Firmware version: three raw bytes (major, minor, patch).
    pub const FIRMWARE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.3");
    /// Device serial: a DER INTEGER.
    pub const SERIAL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.7");
    /// PIN policy and touch policy: two raw bytes.
    pub const POLICY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.8");
    /// Form factor: one raw byte.
    pub const FORM_FACTOR: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.9");
}

/// Yubico's public PIV attestation CA certificates, shipped with the tool (source and SHA-256
/// fingerprints in docs/yubikey.md; the fingerprints are checked by a test).
pub const YUBICO_PIV_CAS_PEM: &str = include_str!("yubico-piv-attestation-cas.pem");

/// SHA-256 fingerprints of the certificates in [`YUBICO_PIV_CAS_PEM`], in file order.
pub const YUBICO_PIV_CA_FINGERPRINTS: [(&str, &str); 6] = [
    (
        "Yubico PIV Root CA Serial 263751",
        "63ece914e54dd87915f34033c85af4c0696ba1512f8add66ced738331207b546",
    ),
    (
        "Yubico Attestation Root 1",
        "62760c6a6ef91679f454c8902b80fd009825b3f25da90f1fbace2ec6586cd5a8",
    ),
    (
        "Yubico Attestation Intermediate A 1",
        "4698a1d3389c3ec60016c216250f1d0439922832d65142327436376dc2942b55",
    ),
    (
        "Yubico Attestation Intermediate B 1",
        "d4cc3f456fdaf4e7812a21aab1dfe9d8e27d24e2fd2d6f21c9940109f0daa754",
    ),
    (
        "Yubico PIV Attestation A 1",
        "6de693f05376f5d8ca29069261e1c8626c75d503bd2edbfd75354cad1f722870",
    ),
    (
        "Yubico PIV Attestation B 1",
        "2d55b7998f4e42569d6d8fa382b6dc77d1dacf07358b19701163892922b17052",
    ),
];

/// The shipped Yubico CA certificates as DER, each checked against its pinned fingerprint
/// (a certificate that does not match is left out, so a damaged file anchors nothing).
pub fn shipped_yubico_cas() -> Vec<Vec<u8>> {
    pem::parse_many(YUBICO_PIV_CAS_PEM)
        .unwrap_or_default()
        .into_iter()
        .map(|p| p.into_contents())
        .zip(YUBICO_PIV_CA_FINGERPRINTS)
        .filter(|(der, (_, fp))| crate::crypto::sha256_hex(der) == *fp)
        .map(|(der, _)| der)
        .collect()
}

const SHA256_WITH_RSA: &str = "1.2.840.113549.1.1.11";
const SHA384_WITH_RSA: &str = "1.2.840.113549.1.1.12";
const SHA512_WITH_RSA: &str = "1.2.840.113549.1.1.13";
const ECDSA_WITH_SHA256: &str = "1.2.840.10045.4.3.2";
const ECDSA_WITH_SHA384: &str = "1.2.840.10045.4.3.3";

/// Errors that make a chain unusable (as opposed to a check that fails, see
/// [`AttestationReport::problems`]).
#[derive(Debug, thiserror::Error)]
pub enum AttestationError {
    #[error("cannot parse the {what} certificate: {reason}")]
    Parse { what: &'static str, reason: String },
    #[error("cannot read the attestation root file {path}: {reason}")]
    RootFile { path: String, reason: String },
}

/// PIV PIN policy as attested (extension byte values 1..3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttestedPinPolicy {
    Never,
    Once,
    Always,
    /// A value this tool does not know (e.g. biometric policies of the Bio series).
    Other(u8),
}

/// PIV touch policy as attested (extension byte values 1..3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttestedTouchPolicy {
    Never,
    Always,
    Cached,
    Other(u8),
}

impl AttestedPinPolicy {
    fn from_byte(b: u8) -> Self {
        match b {
            1 => Self::Never,
            2 => Self::Once,
            3 => Self::Always,
            other => Self::Other(other),
        }
    }
}

impl AttestedTouchPolicy {
    fn from_byte(b: u8) -> Self {
        match b {
            1 => Self::Never,
            2 => Self::Always,
            3 => Self::Cached,
            other => Self::Other(other),
        }
    }
}

/// The Yubico extensions of a slot attestation certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AttestedFacts {
    pub firmware: Option<(u8, u8, u8)>,
    pub serial: Option<u32>,
    pub pin_policy: Option<AttestedPinPolicy>,
    pub touch_policy: Option<AttestedTouchPolicy>,
    pub form_factor: Option<u8>,
}

/// What the caller knows independently of the attestation (read from the card and the slot).
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    /// SubjectPublicKeyInfo DER of the key in the slot.
    pub spki_der: &'a [u8],
    pub serial: Option<u32>,
    pub firmware: Option<(u8, u8, u8)>,
    /// The slot, e.g. 0x9c.
    pub slot: u8,
}

/// Outcome of an attestation check. `generated_on_device` is true only when every check passed.
#[derive(Debug, Clone, Serialize)]
pub struct AttestationReport {
    pub facts: AttestedFacts,
    /// The slot certificate verifies with the f9 certificate's key and names it as issuer.
    pub signed_by_device_key: bool,
    /// `Some(true)` when the f9 certificate chains to a shipped Yubico root or one the operator
    /// named; `Some(false)` when it does not ("not anchored").
    pub chains_to_root: Option<bool>,
    /// Subject of the root the chain ends in, when it does.
    pub root_subject: Option<String>,
    /// True when that root is one shipped with the tool (false: named by the operator).
    pub root_shipped: bool,
    /// Every check that failed, in words. Empty means attested.
    pub problems: Vec<String>,
    pub generated_on_device: bool,
}

impl AttestationReport {
    /// One line for `key show`.
    pub fn summary(&self) -> String {
        if self.generated_on_device {
            let root = self.root_subject.as_deref().unwrap_or("?");
            let whose = if self.root_shipped {
                "Yubico root shipped with the tool"
            } else {
                "root named with --attestation-root"
            };
            format!(
                "generated on this YubiKey (attestation verified to the f9 certificate, which \
                 chains to `{root}`, {whose})"
            )
        } else if self.chains_to_root == Some(false)
            && self.signed_by_device_key
            && self.problems.len() == 1
        {
            format!(
                "NOT anchored: the slot attestation is signed by the card's f9 key, but {}",
                self.problems.join("; ")
            )
        } else {
            format!("NOT attested: {}", self.problems.join("; "))
        }
    }
}

fn parse(der: &[u8], what: &'static str) -> Result<Certificate, AttestationError> {
    Certificate::from_der(der).map_err(|e| AttestationError::Parse {
        what,
        reason: e.to_string(),
    })
}

/// Reads a PEM or DER file holding one or more certificates (root, optionally intermediates).
pub fn load_roots(path: &std::path::Path) -> Result<Vec<Vec<u8>>, AttestationError> {
    let err = |reason: String| AttestationError::RootFile {
        path: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let ders: Vec<Vec<u8>> =
        if bytes.starts_with(b"-----") || bytes.windows(5).any(|w| w == b"-----") {
            pem::parse_many(&bytes)
                .map_err(|e| err(e.to_string()))?
                .into_iter()
                .filter(|p| p.tag() == "CERTIFICATE")
                .map(|p| p.into_contents())
                .collect()
        } else {
            vec![bytes]
        };
    if ders.is_empty() {
        return Err(err("no CERTIFICATE block found".into()));
    }
    for der in &ders {
        parse(der, "root").map_err(|e| err(e.to_string()))?;
    }
    Ok(ders)
}

/// Extracts the Yubico extensions of a slot attestation certificate.
pub(crate) fn facts_of(cert: &Certificate) -> AttestedFacts {
    let mut facts = AttestedFacts::default();
    for ext in cert.tbs_certificate.extensions.iter().flatten() {
        let value = ext.extn_value.as_bytes();
        if ext.extn_id == oid::FIRMWARE && value.len() == 3 {
            facts.firmware = Some((value[0], value[1], value[2]));
        } else if ext.extn_id == oid::SERIAL {
            facts.serial = parse_serial(value);
        } else if ext.extn_id == oid::POLICY && value.len() >= 2 {
            facts.pin_policy = Some(AttestedPinPolicy::from_byte(value[0]));
            facts.touch_policy = Some(AttestedTouchPolicy::from_byte(value[1]));
        } else if ext.extn_id == oid::FORM_FACTOR && !value.is_empty() {
            facts.form_factor = Some(value[0]);
        }
    }
    facts
}

/// The serial extension is a DER INTEGER (some early firmware wrote raw bytes: accept both).
fn parse_serial(value: &[u8]) -> Option<u32> {
    let digits: &[u8] = match der::asn1::UintRef::from_der(value) {
        Ok(int) => int.as_bytes(),
        Err(_) => value,
    };
    if digits.is_empty() || digits.len() > 4 {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u32, |acc, b| (acc << 8) | u32::from(*b)),
    )
}

/// Verifies `cert`'s signature with `issuer`'s public key.
fn signed_by(cert: &Certificate, issuer: &Certificate) -> Result<(), String> {
    let tbs = cert
        .tbs_certificate
        .to_der()
        .map_err(|e| format!("cannot re-encode the certificate: {e}"))?;
    let sig = cert
        .signature
        .as_bytes()
        .ok_or("signature is not a whole number of bytes")?;
    let spki_der = issuer
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| e.to_string())?;
    let alg = cert.signature_algorithm.oid.to_string();
    let result = match alg.as_str() {
        SHA256_WITH_RSA | SHA384_WITH_RSA | SHA512_WITH_RSA => {
            use rsa::pkcs8::DecodePublicKey;
            let key = rsa::RsaPublicKey::from_public_key_der(&spki_der)
                .map_err(|e| format!("issuer key is not RSA: {e}"))?;
            let sig = rsa::pkcs1v15::Signature::try_from(sig).map_err(|e| e.to_string())?;
            match alg.as_str() {
                SHA256_WITH_RSA => {
                    rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key).verify(&tbs, &sig)
                }
                SHA384_WITH_RSA => {
                    rsa::pkcs1v15::VerifyingKey::<Sha384>::new(key).verify(&tbs, &sig)
                }
                _ => rsa::pkcs1v15::VerifyingKey::<Sha512>::new(key).verify(&tbs, &sig),
            }
        }
        ECDSA_WITH_SHA256 => {
            use p256::pkcs8::DecodePublicKey;
            let key = p256::ecdsa::VerifyingKey::from_public_key_der(&spki_der)
                .map_err(|e| format!("issuer key is not P-256: {e}"))?;
            let sig = p256::ecdsa::DerSignature::try_from(sig).map_err(|e| e.to_string())?;
            key.verify(&tbs, &sig)
        }
        ECDSA_WITH_SHA384 => {
            use p384::pkcs8::DecodePublicKey;
            let key = p384::ecdsa::VerifyingKey::from_public_key_der(&spki_der)
                .map_err(|e| format!("issuer key is not P-384: {e}"))?;
            let sig = p384::ecdsa::DerSignature::try_from(sig).map_err(|e| e.to_string())?;
            key.verify(&tbs, &sig)
        }
        other => return Err(format!("unsupported signature algorithm {other}")),
    };
    result.map_err(|_| "signature does not verify".to_string())
}

fn valid_now(cert: &Certificate) -> bool {
    let now = std::time::SystemTime::now();
    let validity = &cert.tbs_certificate.validity;
    validity.not_before.to_system_time() <= now && now <= validity.not_after.to_system_time()
}

/// Walks from the f9 certificate to a self-signed certificate of `roots` (which may also hold
/// intermediates). Returns the root's subject.
fn chain_to_root(device: &Certificate, roots: &[Certificate]) -> Result<String, String> {
    let mut current = device.clone();
    for _ in 0..5 {
        let issuer = roots
            .iter()
            .find(|c| {
                c.tbs_certificate.subject == current.tbs_certificate.issuer
                    && signed_by(&current, c).is_ok()
            })
            .ok_or_else(|| {
                format!(
                    "no known CA certificate issued `{}` (or its signature does not verify)",
                    current.tbs_certificate.issuer
                )
            })?;
        if !valid_now(issuer) {
            return Err(format!(
                "CA certificate `{}` is outside its validity period",
                issuer.tbs_certificate.subject
            ));
        }
        if issuer.tbs_certificate.subject == issuer.tbs_certificate.issuer {
            return Ok(issuer.tbs_certificate.subject.to_string());
        }
        current = issuer.clone();
    }
    Err("chain too long (more than 5 certificates)".into())
}

/// Where the f9 certificate `device` chains to: the root's subject and whether that root is
/// shipped with the tool; else why the chain is not anchored.
fn anchor(
    device: &Certificate,
    shipped: &[Certificate],
    operator: &[Certificate],
) -> Result<(String, bool), String> {
    // Shipped CAs first; the operator's file may add a root or intermediates.
    let mut pool = shipped.to_vec();
    pool.extend(operator.iter().cloned());
    match chain_to_root(device, &pool) {
        Ok(subject) => {
            let shipped_root = shipped
                .iter()
                .any(|c| c.tbs_certificate.subject.to_string() == subject);
            Ok((subject, shipped_root))
        }
        Err(reason) => Err(format!(
            "the chain is not anchored: the f9 certificate does not chain to a Yubico PIV \
             attestation root shipped with the tool{} ({reason})",
            if operator.is_empty() {
                " (name another root with --attestation-root)"
            } else {
                " or to the root named with --attestation-root"
            }
        )),
    }
}

/// `anchor` for a CA certificate given as DER, against the shipped Yubico CAs only: the
/// root's subject, or why it does not chain.
pub fn shipped_anchor_of(cert_der: &[u8]) -> Result<String, String> {
    let cert = parse(cert_der, "certificate").map_err(|e| e.to_string())?;
    let shipped = shipped_yubico_cas()
        .iter()
        .filter_map(|d| parse(d, "shipped Yubico CA").ok())
        .collect::<Vec<_>>();
    anchor(&cert, &shipped, &[]).map(|(subject, _)| subject)
}

/// Checks a slot attestation: `slot_cert` must be signed by `device_cert` (the f9 certificate),
/// attest exactly `expected.spki_der`, carry the card's serial and firmware, and `device_cert`
/// must chain to a shipped Yubico root ([`shipped_yubico_cas`]) or to one of `operator_roots`
/// (the `--attestation-root` file: a root, optionally with intermediates).
pub fn verify(
    slot_cert_der: &[u8],
    device_cert_der: &[u8],
    operator_roots: Option<&[Vec<u8>]>,
    expected: &Expected<'_>,
) -> Result<AttestationReport, AttestationError> {
    let slot_cert = parse(slot_cert_der, "slot attestation")?;
    let device_cert = parse(device_cert_der, "f9 device")?;
    let shipped = shipped_yubico_cas()
        .iter()
        .map(|d| parse(d, "shipped Yubico CA"))
        .collect::<Result<Vec<_>, _>>()?;
    let operator = operator_roots
        .unwrap_or_default()
        .iter()
        .map(|d| parse(d, "root"))
        .collect::<Result<Vec<_>, _>>()?;

    let facts = facts_of(&slot_cert);
    let mut problems = Vec::new();

    let issuer_matches = slot_cert.tbs_certificate.issuer == device_cert.tbs_certificate.subject;
    if !issuer_matches {
        problems.push(format!(
            "slot certificate issuer `{}` is not the f9 certificate `{}`",
            slot_cert.tbs_certificate.issuer, device_cert.tbs_certificate.subject
        ));
    }
    let signature = signed_by(&slot_cert, &device_cert);
    if let Err(reason) = &signature {
        problems.push(format!("slot certificate vs f9 key: {reason}"));
    }
    let signed_by_device_key = issuer_matches && signature.is_ok();

    match slot_cert.tbs_certificate.subject_public_key_info.to_der() {
        Ok(attested) if attested == expected.spki_der => {}
        Ok(_) => problems.push(format!(
            "the attested public key is not the key in slot {:02x}",
            expected.slot
        )),
        Err(e) => problems.push(format!("cannot encode the attested key: {e}")),
    }
    let subject = slot_cert.tbs_certificate.subject.to_string();
    let slot_hex = format!("{:02x}", expected.slot);
    if !subject.to_ascii_lowercase().contains(&slot_hex) {
        problems.push(format!(
            "slot certificate subject `{subject}` does not name slot {slot_hex}"
        ));
    }
    match (facts.serial, expected.serial) {
        (Some(a), Some(e)) if a != e => {
            problems.push(format!("attested serial {a} is not the card's serial {e}"))
        }
        (None, _) => problems.push("no serial extension (1.3.6.1.4.1.41482.3.7)".into()),
        _ => {}
    }
    match (facts.firmware, expected.firmware) {
        (Some(a), Some(e)) if a != e => problems.push(format!(
            "attested firmware {}.{}.{} is not the card's firmware {}.{}.{}",
            a.0, a.1, a.2, e.0, e.1, e.2
        )),
        (None, _) => problems.push("no firmware extension (1.3.6.1.4.1.41482.3.3)".into()),
        _ => {}
    }
    if facts.pin_policy.is_none() {
        problems.push("no PIN/touch policy extension (1.3.6.1.4.1.41482.3.8)".into());
    }
    if !valid_now(&device_cert) {
        problems.push("the f9 certificate is outside its validity period".into());
    }

    let (chains_to_root, root_subject, root_shipped) =
        match anchor(&device_cert, &shipped, &operator) {
            Ok((subject, shipped_root)) => (Some(true), Some(subject), shipped_root),
            Err(reason) => {
                problems.push(reason);
                (Some(false), None, false)
            }
        };

    let generated_on_device = problems.is_empty();
    Ok(AttestationReport {
        facts,
        signed_by_device_key,
        chains_to_root,
        root_subject,
        root_shipped,
        problems,
        generated_on_device,
    })
}

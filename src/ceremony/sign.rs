//! Signing sequester service and revocation certificates through the token (docs/formats.md §4.2,
//! §4.3, §4.6). Every refusal happens before the token is asked to sign; every signature is
//! self-checked (verified and decoded as the server would) before it is returned.

use serde::Serialize;

use super::CeremonyError;
use crate::parsec::cert_pem::{self, CertificateKind};
use crate::parsec::sequester::{
    self, RevokedServiceCertificate, SequesterCertificate, ServiceCertificate, ServiceId,
};
use crate::parsec::spki::{RsaPublicKeyDer, MIN_SIGNING_BITS};
use crate::parsec::{armor, DateTime};
use crate::token::{KeyHandle, MechanismPath};

/// How far in the future a timestamp may be without `allow_future` (docs/formats.md §4.5).
pub(crate) const MAX_FUTURE_MICROS: i64 = 5 * 60 * 1_000_000;

/// What the operator allowed.
#[derive(Debug, Clone)]
pub struct SigningPolicy {
    /// Minimum size of the authority and service keys. 2048 unless a test lowers it to use the
    /// published 1024-bit fixture keys.
    pub min_bits: usize,
    /// Accept a timestamp more than `MAX_FUTURE_MICROS` ahead of `now`.
    pub allow_future: bool,
    /// The timestamp must be strictly after this (last certificate known for the organisation).
    pub not_after: Option<NotAfter>,
}

impl Default for SigningPolicy {
    fn default() -> Self {
        Self {
            min_bits: MIN_SIGNING_BITS,
            allow_future: false,
            not_after: None,
        }
    }
}

/// The last known sequester timestamp of an organisation and where it came from.
#[derive(Debug, Clone)]
pub struct NotAfter {
    pub last: DateTime,
    pub organization: String,
    pub journal: std::path::PathBuf,
}

/// Inputs of a service certificate.
#[derive(Debug, Clone)]
pub struct ServiceCertificateRequest {
    pub service_key: RsaPublicKeyDer,
    pub label: String,
    /// Default: a fresh random UUIDv4.
    pub service_id: Option<ServiceId>,
    /// Default: now.
    pub timestamp: Option<DateTime>,
}

/// Inputs of a revocation certificate.
#[derive(Debug, Clone)]
pub struct RevocationRequest {
    pub service_id: ServiceId,
    pub timestamp: Option<DateTime>,
}

/// A signed, self-checked certificate ready to be written.
#[derive(Debug, Clone)]
pub struct SignedCertificate {
    pub kind: CertificateKind,
    pub certificate: SequesterCertificate,
    /// `"RSASSA-PSS-SHA256:" || sig || serialized`.
    pub signed: Vec<u8>,
    /// The PEM file text.
    pub pem: String,
    /// Parsec's file name for it.
    pub file_name: String,
    pub authority: RsaPublicKeyDer,
    pub mechanism: MechanismPath,
}

/// What `cert service` / `cert revoke` print (and `--json` emits).
#[derive(Debug, Clone, Serialize)]
pub struct CertificateSummary {
    pub kind: CertificateKind,
    pub service_id: ServiceId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub timestamp: DateTime,
    pub timestamp_us: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_key_fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_key_bits: Option<usize>,
    pub authority_key_fingerprint: String,
    pub authority_key_bits: usize,
}

impl SignedCertificate {
    pub fn summary(&self) -> CertificateSummary {
        summarize(&self.certificate, &self.authority)
    }
}

/// Summary of any decoded certificate.
pub(crate) fn summarize(
    cert: &SequesterCertificate,
    authority: &RsaPublicKeyDer,
) -> CertificateSummary {
    let (kind, label, service_key) = match cert {
        SequesterCertificate::Service(c) => (
            CertificateKind::Service,
            Some(c.service_label.clone()),
            c.encryption_key().ok(),
        ),
        SequesterCertificate::Revoked(_) => (CertificateKind::Revocation, None, None),
    };
    CertificateSummary {
        kind,
        service_id: cert.service_id(),
        label,
        timestamp: cert.timestamp(),
        timestamp_us: cert.timestamp().as_micros(),
        service_key_fingerprint: service_key.as_ref().map(|k| k.fingerprint()),
        service_key_bits: service_key.as_ref().map(|k| k.bits()),
        authority_key_fingerprint: authority.fingerprint(),
        authority_key_bits: authority.bits(),
    }
}

/// The authority key of `authority`, checked against policy and the expected public key.
pub(crate) fn check_authority(
    authority: &dyn KeyHandle,
    expected: Option<&RsaPublicKeyDer>,
    policy: &SigningPolicy,
) -> Result<RsaPublicKeyDer, CeremonyError> {
    let key = RsaPublicKeyDer::from_der(authority.public_key_spki())
        .map_err(|e| CeremonyError::AuthorityKeyPolicy(e.to_string()))?;
    key.check_signing_policy(policy.min_bits)
        .map_err(|e| CeremonyError::AuthorityKeyPolicy(e.to_string()))?;
    if let Some(expected) = expected {
        if expected.der() != key.der() {
            return Err(CeremonyError::AuthorityMismatch {
                expected: expected.fingerprint(),
                found: key.fingerprint(),
            });
        }
    }
    Ok(key)
}

/// Timestamp checks shared by both kinds: not too far in the future, after the journal.
pub fn check_timestamp(
    timestamp: DateTime,
    now: DateTime,
    policy: &SigningPolicy,
) -> Result<(), CeremonyError> {
    let ahead = timestamp.as_micros().saturating_sub(now.as_micros());
    if ahead > MAX_FUTURE_MICROS && !policy.allow_future {
        return Err(CeremonyError::FutureTimestamp {
            timestamp,
            now,
            ahead_s: ahead / 1_000_000,
        });
    }
    if let Some(na) = &policy.not_after {
        if timestamp <= na.last {
            return Err(CeremonyError::NotAfterJournal {
                timestamp,
                last: na.last,
                organization: na.organization.clone(),
                journal: na.journal.clone(),
            });
        }
    }
    Ok(())
}

/// Checks everything that can be checked before signing a service certificate, and returns
/// the certificate to sign and the authority key.
pub(crate) fn prepare_service_certificate(
    authority: &dyn KeyHandle,
    expected_authority: Option<&RsaPublicKeyDer>,
    request: &ServiceCertificateRequest,
    policy: &SigningPolicy,
    now: DateTime,
) -> Result<(ServiceCertificate, RsaPublicKeyDer), CeremonyError> {
    let authority_key = check_authority(authority, expected_authority, policy)?;
    request
        .service_key
        .check_signing_policy(policy.min_bits)
        .map_err(|e| CeremonyError::ServiceKeyPolicy(e.to_string()))?;
    if request.service_key.der() == authority_key.der() {
        return Err(CeremonyError::ServiceKeyIsAuthorityKey(
            authority_key.fingerprint(),
        ));
    }
    if request.label.trim().is_empty() {
        return Err(CeremonyError::EmptyLabel);
    }
    let timestamp = request.timestamp.unwrap_or(now);
    check_timestamp(timestamp, now, policy)?;
    let cert = ServiceCertificate {
        timestamp,
        service_id: request.service_id.unwrap_or_else(ServiceId::random),
        service_label: request.label.clone(),
        encryption_key_der: request.service_key.der().to_vec(),
    };
    Ok((cert, authority_key))
}

/// Signs a service certificate with the authority key on the token.
pub fn sign_service_certificate(
    authority: &dyn KeyHandle,
    expected_authority: Option<&RsaPublicKeyDer>,
    request: &ServiceCertificateRequest,
    policy: &SigningPolicy,
    now: DateTime,
) -> Result<SignedCertificate, CeremonyError> {
    let (cert, authority_key) =
        prepare_service_certificate(authority, expected_authority, request, policy, now)?;
    let expected = SequesterCertificate::Service(cert.clone());
    sign_and_check(
        authority,
        authority_key,
        CertificateKind::Service,
        &cert.serialize(),
        expected,
    )
}

/// Signs a revocation certificate with the authority key on the token.
pub fn sign_revocation_certificate(
    authority: &dyn KeyHandle,
    expected_authority: Option<&RsaPublicKeyDer>,
    request: &RevocationRequest,
    policy: &SigningPolicy,
    now: DateTime,
) -> Result<SignedCertificate, CeremonyError> {
    let authority_key = check_authority(authority, expected_authority, policy)?;
    let timestamp = request.timestamp.unwrap_or(now);
    check_timestamp(timestamp, now, policy)?;
    let cert = RevokedServiceCertificate {
        timestamp,
        service_id: request.service_id,
    };
    let expected = SequesterCertificate::Revoked(cert.clone());
    sign_and_check(
        authority,
        authority_key,
        CertificateKind::Revocation,
        &cert.serialize(),
        expected,
    )
}

fn sign_and_check(
    authority: &dyn KeyHandle,
    authority_key: RsaPublicKeyDer,
    kind: CertificateKind,
    serialized: &[u8],
    expected: SequesterCertificate,
) -> Result<SignedCertificate, CeremonyError> {
    let (signature, mechanism) = authority.sign_pss_sha256(serialized)?;
    let signed = armor::build_pss(&authority_key, &signature, serialized)
        .map_err(|e| CeremonyError::SelfCheck(e.to_string()))?;
    // Self-check: exactly what a verifier does with the file's content.
    let pem = cert_pem::encode(kind, &signed);
    let (_, body) =
        cert_pem::decode(&pem, Some(kind)).map_err(|e| CeremonyError::SelfCheck(e.to_string()))?;
    let decoded = sequester::decode_sequester_topic_row(&authority_key, &body)
        .map_err(|e| CeremonyError::SelfCheck(e.to_string()))?;
    if decoded != expected {
        return Err(CeremonyError::SelfCheck(
            "decoded certificate differs from the inputs".into(),
        ));
    }
    let file_name = kind.file_name(expected.service_id(), expected.timestamp());
    Ok(SignedCertificate {
        kind,
        certificate: expected,
        signed,
        pem,
        file_name,
        authority: authority_key,
        mechanism,
    })
}

/// A certificate file read back, verified when the authority key is known.
#[derive(Debug, Clone)]
pub struct ShownCertificate {
    pub kind: CertificateKind,
    pub certificate: SequesterCertificate,
    /// `Some(fingerprint)` when verified with that authority key; `None` when unverified.
    pub verified_with: Option<RsaPublicKeyDer>,
    /// Signature length in bytes (the authority key's k).
    pub signature_len: usize,
}

/// Reads any certificate file text; verifies it when `authority` is given.
pub fn read_certificate(
    text: &str,
    authority: Option<&RsaPublicKeyDer>,
) -> Result<ShownCertificate, CeremonyError> {
    let (kind, body) = cert_pem::decode(text, None)?;
    let (certificate, signature_len) = match authority {
        Some(a) => (sequester::decode_sequester_topic_row(a, &body)?, a.k()),
        None => {
            let u = sequester::decode_unverified(&body)?;
            (u.certificate, u.signature_len)
        }
    };
    let matches_header = matches!(
        (&certificate, kind),
        (SequesterCertificate::Service(_), CertificateKind::Service)
            | (
                SequesterCertificate::Revoked(_),
                CertificateKind::Revocation
            )
    );
    if !matches_header {
        return Err(crate::parsec::FormatError::Pem(format!(
            "the PEM header says {kind} but the content is a {}",
            match certificate {
                SequesterCertificate::Service(_) => CertificateKind::Service,
                SequesterCertificate::Revoked(_) => CertificateKind::Revocation,
            }
        ))
        .into());
    }
    Ok(ShownCertificate {
        kind,
        certificate,
        verified_with: authority.cloned(),
        signature_len,
    })
}

/// Any of the three sequester certificate kinds, as `cert show` reads it.
#[derive(Debug, Clone)]
pub enum AnyCertificate {
    /// A service or revocation certificate (PEM file, or the raw armored bytes).
    Sequester(ShownCertificate),
    /// A raw `sequester_authority_certificate` row (Ed25519 signature || envelope), e.g. taken
    /// from a realm export. `verified` when checked with the organisation root verify key.
    Authority {
        certificate: sequester::AuthorityCertificate,
        verified: bool,
    },
}

/// Reads a certificate from file contents: Parsec PEM text, a raw RSA-armored certificate, or a
/// raw Ed25519-signed authority certificate.
pub fn read_any_certificate(
    data: &[u8],
    authority: Option<&RsaPublicKeyDer>,
    root_verify_key: Option<&[u8; 32]>,
) -> Result<AnyCertificate, CeremonyError> {
    if data.starts_with(armor::PSS_SHA256.as_bytes()) {
        let (certificate, signature_len) = match authority {
            Some(a) => (sequester::decode_sequester_topic_row(a, data)?, a.k()),
            None => {
                let u = sequester::decode_unverified(data)?;
                (u.certificate, u.signature_len)
            }
        };
        let kind = match certificate {
            SequesterCertificate::Service(_) => CertificateKind::Service,
            SequesterCertificate::Revoked(_) => CertificateKind::Revocation,
        };
        return Ok(AnyCertificate::Sequester(ShownCertificate {
            kind,
            certificate,
            verified_with: authority.cloned(),
            signature_len,
        }));
    }
    // Text goes to the PEM reader (and its messages); binary is a raw authority certificate.
    if let Ok(text) = std::str::from_utf8(data) {
        return read_certificate(text, authority).map(AnyCertificate::Sequester);
    }
    // Raw authority certificate: 64-byte Ed25519 signature, then the envelope.
    let certificate = match root_verify_key {
        Some(root) => sequester::AuthorityCertificate::verify_and_decode(root, data)?,
        None => {
            if data.len() < 64 {
                return Err(crate::parsec::FormatError::Pem(
                    "neither a Parsec certificate PEM file nor a raw certificate".into(),
                )
                .into());
            }
            sequester::AuthorityCertificate::decode(&data[64..]).map_err(|e| {
                crate::parsec::FormatError::Pem(format!(
                    "neither a Parsec certificate PEM file nor a raw certificate ({e})"
                ))
            })?
        }
    };
    if let (Some(a), Ok(k)) = (authority, certificate.verify_key()) {
        if a.der() != k.der() {
            return Err(CeremonyError::AuthorityMismatch {
                expected: a.fingerprint(),
                found: k.fingerprint(),
            });
        }
    }
    Ok(AnyCertificate::Authority {
        certificate,
        verified: root_verify_key.is_some(),
    })
}

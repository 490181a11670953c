//! The sequester topic of an export (docs/formats.md §5.4 step 2): the authority certificate
//! (Ed25519-signed by the root key) and the RSA-PSS-signed service and revocation certificates.
//!
//! The certificate decoders and the PSS verification are [`crate::parsec::sequester`] and
//! [`crate::parsec::armor`]; this module walks the table and matches keys.

use crate::crypto::sha256_hex;
use crate::parsec::device::Id;
use crate::parsec::sequester::{
    decode_sequester_topic_row, AuthorityCertificate, SequesterCertificate,
};
use crate::parsec::spki::RsaPublicKeyDer;
use crate::parsec::DateTime;

/// One sequester service as the export's certificates describe it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SequesterService {
    #[serde(serialize_with = "super::ser_id")]
    pub service_id: Id,
    pub label: String,
    /// Certificate timestamp (creation).
    pub created: DateTime,
    /// Revocation timestamp, if a revocation certificate exists.
    pub revoked: Option<DateTime>,
    /// SHA-256 of the service public key (SPKI DER), hex.
    pub key_fingerprint: String,
    pub key_bits: usize,
    #[serde(skip)]
    pub encryption_key_der: Vec<u8>,
}

/// The verified sequester topic.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SequesterTopic {
    pub authority_timestamp: DateTime,
    /// SHA-256 of the authority SPKI DER, hex.
    pub authority_key_fingerprint: String,
    pub services: Vec<SequesterService>,
    /// Rows that were skipped, with the reason (bad signature, undecodable, ...).
    pub problems: Vec<String>,
    #[serde(skip)]
    pub authority_key_der: Vec<u8>,
}

/// Parses a Parsec SPKI (rsaEncryption + NULL, size rules of docs/formats.md §1.5).
pub(crate) fn rsa_public_key(spki_der: &[u8]) -> Result<RsaPublicKeyDer, String> {
    RsaPublicKeyDer::from_der(spki_der).map_err(|e| e.to_string())
}

/// Same RSA public key (modulus and exponent), whatever the DER encoding details.
pub(crate) fn same_rsa_key(a: &RsaPublicKeyDer, b: &RsaPublicKeyDer) -> bool {
    a.modulus() == b.modulus() && a.exponent() == b.exponent()
}

/// Walks the `sequester_certificate` rows (in `_id` order). `Ok(None)`: the table is empty (the
/// organization is not sequestered). Row 0 failing is fatal (the whole topic is untrusted).
pub(crate) fn verify_topic(
    root_verify_key: &[u8; 32],
    rows: &[(i64, Vec<u8>)],
) -> Result<Option<SequesterTopic>, super::ExportError> {
    let Some(((row0_id, row0), rest)) = rows.split_first() else {
        return Ok(None);
    };
    let bad_row =
        |row: i64, reason: String| super::ExportError::BadSequesterCertificate { row, reason };
    let authority_cert =
        AuthorityCertificate::verify_and_decode(root_verify_key, row0).map_err(|e| {
            bad_row(
                *row0_id,
                format!("authority certificate not verified by the organization root key: {e}"),
            )
        })?;
    let authority_key_der = authority_cert.verify_key_der.clone();
    let authority_timestamp = authority_cert.timestamp;
    let authority = authority_cert
        .verify_key()
        .map_err(|e| bad_row(*row0_id, e.to_string()))?;

    let mut services: Vec<SequesterService> = Vec::new();
    let mut problems = Vec::new();
    for (row, blob) in rest {
        match decode_sequester_topic_row(&authority, blob) {
            Ok(SequesterCertificate::Service(c)) => {
                let service_id = c.service_id.0;
                if services.iter().any(|s| s.service_id == service_id) {
                    problems.push(format!(
                        "sequester certificate row {row}: duplicate service {}",
                        hex::encode(service_id)
                    ));
                    continue;
                }
                let key_bits = match rsa_public_key(&c.encryption_key_der) {
                    Ok(k) => k.bits(),
                    Err(e) => {
                        problems.push(format!("sequester certificate row {row}: {e}"));
                        continue;
                    }
                };
                services.push(SequesterService {
                    service_id,
                    label: c.service_label,
                    created: c.timestamp,
                    revoked: None,
                    key_fingerprint: sha256_hex(&c.encryption_key_der),
                    key_bits,
                    encryption_key_der: c.encryption_key_der,
                });
            }
            Ok(SequesterCertificate::Revoked(c)) => {
                let service_id = c.service_id.0;
                match services.iter_mut().find(|s| s.service_id == service_id) {
                    Some(s) if s.revoked.is_none() => s.revoked = Some(c.timestamp),
                    _ => problems.push(format!(
                        "sequester certificate row {row}: revocation of unknown or already revoked service {}",
                        hex::encode(service_id)
                    )),
                }
            }
            Err(e) => problems.push(format!("sequester certificate row {row} skipped: {e}")),
        }
    }
    Ok(Some(SequesterTopic {
        authority_timestamp,
        authority_key_fingerprint: sha256_hex(&authority_key_der),
        services,
        problems,
        authority_key_der,
    }))
}

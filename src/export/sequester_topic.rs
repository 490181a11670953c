//! The sequester topic of an export (spec §5.4 step 2): the authority certificate (Ed25519-signed
//! by the root key) and the RSA-PSS-signed service and revocation certificates.
//!
//! The certificate decoders and the PSS verification are the ones of [`crate::parsec`] when
//! available; this module only walks the table and matches keys.

use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use rsa::RsaPublicKey;

use crate::crypto::sha256_hex;
use crate::crypto::symmetric::ed25519_verify;
use crate::parsec::device::Id;
use crate::parsec::msgpack::{self, Map};
use crate::parsec::{envelope, DateTime, FormatError};

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

/// Parses an SPKI DER RSA public key.
pub fn rsa_public_key(spki_der: &[u8]) -> Result<RsaPublicKey, String> {
    RsaPublicKey::from_public_key_der(spki_der).map_err(|e| format!("not an RSA SPKI: {e}"))
}

/// Same RSA public key (modulus and exponent), whatever the DER encoding details.
pub fn same_rsa_key(a: &RsaPublicKey, b: &RsaPublicKey) -> bool {
    a.n() == b.n() && a.e() == b.e()
}

/// RSA block size k = floor(modulus bits / 8) (spec §1.5).
pub fn block_size(key: &RsaPublicKey) -> usize {
    key.n().bits() / 8
}

/// Splits an RSA armor (spec §1.6): first `:`, exact algorithm name, at least k bytes after it.
pub fn parse_armor<'a>(
    blob: &'a [u8],
    algorithm: &str,
    k: usize,
) -> Result<(&'a [u8], &'a [u8]), String> {
    let colon = blob
        .iter()
        .position(|&b| b == b':')
        .ok_or("no `:` in the RSA armor")?;
    if &blob[..colon] != algorithm.as_bytes() {
        return Err(format!(
            "armor algorithm is `{}`, expected `{algorithm}`",
            String::from_utf8_lossy(&blob[..colon.min(64)])
        ));
    }
    let rest = &blob[colon + 1..];
    if rest.len() < k {
        return Err(format!(
            "armor carries {} bytes, fewer than the {k}-byte RSA block",
            rest.len()
        ));
    }
    Ok(rest.split_at(k))
}

/// Verifies a `RSASSA-PSS-SHA256:` armored blob with any salt length (spec §1.8); returns the
/// signed payload.
pub fn verify_pss_armor<'a>(
    authority: &RsaPublicKey,
    armored: &'a [u8],
) -> Result<&'a [u8], String> {
    use rsa::pss::Pss;
    use sha2::{Digest, Sha256};
    let k = block_size(authority);
    let (signature, payload) = parse_armor(armored, "RSASSA-PSS-SHA256", k)?;
    let hash = Sha256::digest(payload);
    // rsa 0.9 verifies a fixed salt length: try the two lengths Parsec signers use first, then
    // every other legal length (Parsec verifiers auto-detect the salt length).
    let max_salt = k.saturating_sub(34);
    let mut candidates = vec![32, max_salt];
    candidates.extend((0..=max_salt).filter(|s| *s != 32 && *s != max_salt));
    for salt in candidates {
        if authority
            .verify(Pss::new_with_salt::<Sha256>(salt), &hash, signature)
            .is_ok()
        {
            return Ok(payload);
        }
    }
    Err("RSASSA-PSS-SHA256 signature does not verify with the authority key".into())
}

fn decode(serialized: &[u8]) -> Result<rmpv::Value, FormatError> {
    msgpack::decode(&envelope::unwrap(serialized)?)
}

enum SequesterCert {
    Service {
        timestamp: DateTime,
        service_id: Id,
        label: String,
        key_der: Vec<u8>,
    },
    Revoked {
        timestamp: DateTime,
        service_id: Id,
    },
}

fn decode_sequester_cert(serialized: &[u8]) -> Result<SequesterCert, FormatError> {
    let value = decode(serialized)?;
    let map = Map::new(&value)?;
    match map.type_name()? {
        "sequester_service_certificate" => Ok(SequesterCert::Service {
            timestamp: map.datetime("timestamp")?,
            service_id: map.uuid("service_id")?,
            label: map.str("service_label")?.to_string(),
            key_der: map.bin("encryption_key_der")?.to_vec(),
        }),
        "sequester_revoked_service_certificate" => Ok(SequesterCert::Revoked {
            timestamp: map.datetime("timestamp")?,
            service_id: map.uuid("service_id")?,
        }),
        other => Err(FormatError::WrongType {
            expected: "sequester_service_certificate or sequester_revoked_service_certificate"
                .into(),
            found: other.into(),
        }),
    }
}

/// Walks the `sequester_certificate` rows (in `_id` order). `Ok(None)`: the table is empty (the
/// organization is not sequestered). Row 0 failing is fatal (the whole topic is untrusted).
pub fn verify_topic(
    root_verify_key: &[u8; 32],
    rows: &[(i64, Vec<u8>)],
) -> Result<Option<SequesterTopic>, super::ExportError> {
    let Some(((row0_id, row0), rest)) = rows.split_first() else {
        return Ok(None);
    };
    let bad_row =
        |row: i64, reason: String| super::ExportError::BadSequesterCertificate { row, reason };
    let serialized = ed25519_verify(root_verify_key, row0).map_err(|e| {
        bad_row(
            *row0_id,
            format!("authority certificate not signed by the organization root key: {e}"),
        )
    })?;
    let value = decode(serialized).map_err(|e| bad_row(*row0_id, e.to_string()))?;
    let map = Map::new(&value).map_err(|e| bad_row(*row0_id, e.to_string()))?;
    map.expect_type("sequester_authority_certificate")
        .map_err(|e| bad_row(*row0_id, e.to_string()))?;
    let authority_timestamp = map
        .datetime("timestamp")
        .map_err(|e| bad_row(*row0_id, e.to_string()))?;
    let authority_key_der = map
        .bin("verify_key_der")
        .map_err(|e| bad_row(*row0_id, e.to_string()))?
        .to_vec();
    let authority = rsa_public_key(&authority_key_der).map_err(|e| bad_row(*row0_id, e))?;

    let mut services: Vec<SequesterService> = Vec::new();
    let mut problems = Vec::new();
    for (row, blob) in rest {
        let payload = match verify_pss_armor(&authority, blob) {
            Ok(p) => p,
            Err(e) => {
                problems.push(format!("sequester certificate row {row} skipped: {e}"));
                continue;
            }
        };
        match decode_sequester_cert(payload) {
            Ok(SequesterCert::Service {
                timestamp,
                service_id,
                label,
                key_der,
            }) => {
                if services.iter().any(|s| s.service_id == service_id) {
                    problems.push(format!(
                        "sequester certificate row {row}: duplicate service {}",
                        hex::encode(service_id)
                    ));
                    continue;
                }
                let key_bits = match rsa_public_key(&key_der) {
                    Ok(k) => k.n().bits(),
                    Err(e) => {
                        problems.push(format!("sequester certificate row {row}: {e}"));
                        continue;
                    }
                };
                services.push(SequesterService {
                    service_id,
                    label,
                    created: timestamp,
                    revoked: None,
                    key_fingerprint: sha256_hex(&key_der),
                    key_bits,
                    encryption_key_der: key_der,
                });
            }
            Ok(SequesterCert::Revoked {
                timestamp,
                service_id,
            }) => match services.iter_mut().find(|s| s.service_id == service_id) {
                Some(s) if s.revoked.is_none() => s.revoked = Some(timestamp),
                _ => problems.push(format!(
                    "sequester certificate row {row}: revocation of unknown or already revoked service {}",
                    hex::encode(service_id)
                )),
            },
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

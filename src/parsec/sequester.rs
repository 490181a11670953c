//! Sequester certificates (docs/formats.md §3.1–3.3, §4.2–4.3): the authority certificate (Ed25519,
//! signed by the organisation root key), service and revoked-service certificates (RSASSA-PSS,
//! signed by the authority key). Encoding is byte-exact with Parsec; decoding accepts any key
//! order.

use serde::Serialize;

use super::armor;
use super::msgpack::{Map, Writer};
use super::spki::RsaPublicKeyDer;
use super::{envelope, limits, DateTime, FormatError};

pub(crate) const AUTHORITY_TYPE: &str = "sequester_authority_certificate";
pub(crate) const SERVICE_TYPE: &str = "sequester_service_certificate";
pub(crate) const REVOKED_TYPE: &str = "sequester_revoked_service_certificate";

/// A SequesterServiceID: 16 UUID bytes. Shown as 32 lowercase hex digits (Parsec's form).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(pub [u8; 16]);

impl ServiceId {
    /// A fresh random UUIDv4, as Parsec's tools make.
    pub(crate) fn random() -> Self {
        ServiceId(*uuid::Uuid::new_v4().as_bytes())
    }

    /// 32 lowercase hex digits, no dashes.
    pub(crate) fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Display for ServiceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.hex())
    }
}

impl std::str::FromStr for ServiceId {
    type Err = String;
    /// Accepts 32 hex digits with or without dashes (`0000…0001` or `00000000-0000-…`).
    fn from_str(s: &str) -> Result<Self, String> {
        uuid::Uuid::parse_str(s.trim())
            .map(|u| ServiceId(*u.as_bytes()))
            .map_err(|e| format!("`{s}` is not a service ID (32 hex digits or a UUID): {e}"))
    }
}

impl Serialize for ServiceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

/// `sequester_authority_certificate` (docs/formats.md §3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorityCertificate {
    pub timestamp: DateTime,
    pub verify_key_der: Vec<u8>,
}

/// `sequester_service_certificate` (docs/formats.md §3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCertificate {
    pub timestamp: DateTime,
    pub service_id: ServiceId,
    pub service_label: String,
    pub encryption_key_der: Vec<u8>,
}

/// `sequester_revoked_service_certificate` (docs/formats.md §3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedServiceCertificate {
    pub timestamp: DateTime,
    pub service_id: ServiceId,
}

/// One RSA-signed row of the sequester topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SequesterCertificate {
    Service(ServiceCertificate),
    Revoked(RevokedServiceCertificate),
}

impl SequesterCertificate {
    pub fn timestamp(&self) -> DateTime {
        match self {
            Self::Service(c) => c.timestamp,
            Self::Revoked(c) => c.timestamp,
        }
    }

    pub fn service_id(&self) -> ServiceId {
        match self {
            Self::Service(c) => c.service_id,
            Self::Revoked(c) => c.service_id,
        }
    }

    /// Decodes an envelope (`0x00 || zstd(msgpack)`) of either RSA-signed kind.
    pub(crate) fn decode(serialized: &[u8]) -> Result<Self, FormatError> {
        let value = envelope::decode_value(serialized, &limits::CERTIFICATE)?;
        let map = Map::new(&value)?;
        match map.type_name()? {
            SERVICE_TYPE => ServiceCertificate::from_map(&map).map(Self::Service),
            REVOKED_TYPE => RevokedServiceCertificate::from_map(&map).map(Self::Revoked),
            other => Err(FormatError::WrongType {
                expected: format!("{SERVICE_TYPE}` or `{REVOKED_TYPE}"),
                found: other.to_string(),
            }),
        }
    }
}

impl AuthorityCertificate {
    pub fn to_msgpack(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.map(3)
            .field("type", |w| {
                w.str(AUTHORITY_TYPE);
            })
            .field("timestamp", |w| {
                w.datetime(self.timestamp);
            })
            .field("verify_key_der", |w| {
                w.bin(&self.verify_key_der);
            });
        w.into_bytes()
    }

    #[cfg(test)]
    fn serialize(&self) -> Vec<u8> {
        envelope::wrap(&self.to_msgpack())
    }

    /// Decodes the envelope (the bytes after the 64-byte Ed25519 signature).
    pub fn decode(serialized: &[u8]) -> Result<Self, FormatError> {
        let value = envelope::decode_value(serialized, &limits::CERTIFICATE)?;
        let map = Map::new(&value)?;
        map.expect_type(AUTHORITY_TYPE)?;
        Ok(Self {
            timestamp: map.datetime("timestamp")?,
            verify_key_der: map.bin("verify_key_der")?.to_vec(),
        })
    }

    /// Verifies `signature(64) || serialized` with the organisation root verify key, then decodes.
    pub(crate) fn verify_and_decode(
        root_verify_key: &[u8; 32],
        signed: &[u8],
    ) -> Result<Self, FormatError> {
        let serialized = crate::crypto::symmetric::ed25519_verify(root_verify_key, signed)
            .map_err(|e| FormatError::Invalid(format!("sequester authority certificate: {e}")))?;
        Self::decode(serialized)
    }

    /// The authority key, validated as Parsec validates it.
    pub fn verify_key(&self) -> Result<RsaPublicKeyDer, FormatError> {
        RsaPublicKeyDer::from_der(&self.verify_key_der)
    }
}

impl ServiceCertificate {
    /// The exact msgpack Parsec writes (docs/formats.md §4.2 step 2).
    pub fn to_msgpack(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.map(5)
            .field("type", |w| {
                w.str(SERVICE_TYPE);
            })
            .field("timestamp", |w| {
                w.datetime(self.timestamp);
            })
            .field("service_id", |w| {
                w.uuid(&self.service_id.0);
            })
            .field("service_label", |w| {
                w.str(&self.service_label);
            })
            .field("encryption_key_der", |w| {
                w.bin(&self.encryption_key_der);
            });
        w.into_bytes()
    }

    /// `0x00 || zstd(msgpack)`: the bytes the authority signs.
    pub(crate) fn serialize(&self) -> Vec<u8> {
        envelope::wrap(&self.to_msgpack())
    }

    pub fn decode(serialized: &[u8]) -> Result<Self, FormatError> {
        match SequesterCertificate::decode(serialized)? {
            SequesterCertificate::Service(c) => Ok(c),
            SequesterCertificate::Revoked(_) => Err(FormatError::WrongType {
                expected: SERVICE_TYPE.into(),
                found: REVOKED_TYPE.into(),
            }),
        }
    }

    fn from_map(map: &Map) -> Result<Self, FormatError> {
        map.expect_type(SERVICE_TYPE)?;
        Ok(Self {
            timestamp: map.datetime("timestamp")?,
            service_id: ServiceId(map.uuid("service_id")?),
            service_label: map.str("service_label")?.to_string(),
            encryption_key_der: map.bin("encryption_key_der")?.to_vec(),
        })
    }

    /// The service key, validated as Parsec validates it.
    pub fn encryption_key(&self) -> Result<RsaPublicKeyDer, FormatError> {
        RsaPublicKeyDer::from_der(&self.encryption_key_der)
    }
}

impl RevokedServiceCertificate {
    /// The exact msgpack Parsec writes (docs/formats.md §4.3).
    pub fn to_msgpack(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.map(3)
            .field("type", |w| {
                w.str(REVOKED_TYPE);
            })
            .field("timestamp", |w| {
                w.datetime(self.timestamp);
            })
            .field("service_id", |w| {
                w.uuid(&self.service_id.0);
            });
        w.into_bytes()
    }

    pub(crate) fn serialize(&self) -> Vec<u8> {
        envelope::wrap(&self.to_msgpack())
    }

    pub fn decode(serialized: &[u8]) -> Result<Self, FormatError> {
        match SequesterCertificate::decode(serialized)? {
            SequesterCertificate::Revoked(c) => Ok(c),
            SequesterCertificate::Service(_) => Err(FormatError::WrongType {
                expected: REVOKED_TYPE.into(),
                found: SERVICE_TYPE.into(),
            }),
        }
    }

    fn from_map(map: &Map) -> Result<Self, FormatError> {
        map.expect_type(REVOKED_TYPE)?;
        Ok(Self {
            timestamp: map.datetime("timestamp")?,
            service_id: ServiceId(map.uuid("service_id")?),
        })
    }
}

/// Verifies an RSA-armored sequester topic row (a `sequester_certificate` row other than the
/// authority one, or a certificate file's decoded body) with the authority key and decodes it.
pub(crate) fn decode_sequester_topic_row(
    authority: &RsaPublicKeyDer,
    row: &[u8],
) -> Result<SequesterCertificate, FormatError> {
    let serialized = armor::verify_pss_armored(authority, row)?;
    SequesterCertificate::decode(serialized)
}

/// A certificate read WITHOUT the authority key: the armor is split by trying every key size
/// Parsec accepts (1024..=4096 bits) until the payload decodes. Nothing is verified.
#[derive(Debug, Clone)]
pub(crate) struct UnverifiedCertificate {
    pub certificate: SequesterCertificate,
    /// Signature length, i.e. the authority key's k.
    pub signature_len: usize,
}

pub(crate) fn decode_unverified(row: &[u8]) -> Result<UnverifiedCertificate, FormatError> {
    // Name and colon are checked with any k; then look for the k whose payload decodes.
    let (_, after) = armor::split(armor::PSS_SHA256, 0, row)?;
    let mut last_error = None;
    for k in 128..=512usize {
        if after.len() < k {
            break;
        }
        let payload = &after[k..];
        // Parsec envelopes start with 0x00 then the zstd magic.
        if !payload.starts_with(&[0x00, 0x28, 0xb5, 0x2f, 0xfd]) {
            continue;
        }
        match SequesterCertificate::decode(payload) {
            Ok(certificate) => {
                return Ok(UnverifiedCertificate {
                    certificate,
                    signature_len: k,
                })
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or(FormatError::ArmorTooShort {
        needed: 128,
        found: after.len(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parsec::armor::tests::{authority_public, fixture, V5_ARMORED};

    const V4_SERVICE_MSGPACK: &str = "85a474797065bd7365717565737465725f736572766963655f6365727469666963617465a974696d657374616d70d70100035dca65a1a000aa736572766963655f6964d80200000000000000000000000000000001ad736572766963655f6c6162656cb353657175657374657220536572766963652031b2656e6372797074696f6e5f6b65795f646572c4a230819f300d06092a864886f70d010101050003818d0030818902818100d89038b4ff4684f7f55baaf28976196c6f8521812cac53e00e12e0c094aa0c1a3e1ae52ee62d19001e626b085dec126a2c9dbbf4a98ffc67e73c9afe0025c54e37139938dfdf996a3cf9f983f06d09c3464bc49351f5dc4e1c3c55fcb0e094e52c34bc0c0e40aec9758fe0c2e8352ef7782e51084c585b17574dc6a84c9a37770203010001";
    const V4_REVOKED_MSGPACK: &str = "83a474797065d9257365717565737465725f7265766f6b65645f736572766963655f6365727469666963617465a974696d657374616d70d70100035e2efad68000aa736572766963655f6964d80200000000000000000000000000000001";

    fn id(last: u8) -> ServiceId {
        let mut b = [0u8; 16];
        b[15] = last;
        ServiceId(b)
    }

    #[test]
    fn v4_service_and_revoked_msgpack() {
        let service1 = RsaPublicKeyDer::from_pem(&fixture(
            "sequester_service_1.00000000000000000000000000000001.public.pem",
        ))
        .unwrap();
        let cert = ServiceCertificate {
            timestamp: DateTime(947548800000000),
            service_id: id(1),
            service_label: "Sequester Service 1".into(),
            encryption_key_der: service1.der().to_vec(),
        };
        assert_eq!(hex::encode(cert.to_msgpack()), V4_SERVICE_MSGPACK);
        assert_eq!(ServiceCertificate::decode(&cert.serialize()).unwrap(), cert);
        let revoked = RevokedServiceCertificate {
            timestamp: DateTime(947980800000000),
            service_id: id(1),
        };
        assert_eq!(hex::encode(revoked.to_msgpack()), V4_REVOKED_MSGPACK);
        assert_eq!(
            RevokedServiceCertificate::decode(&revoked.serialize()).unwrap(),
            revoked
        );
        // V5 armored blob = revocation of service 1, verified and decoded.
        let row = hex::decode(V5_ARMORED).unwrap();
        assert_eq!(
            decode_sequester_topic_row(&authority_public(), &row).unwrap(),
            SequesterCertificate::Revoked(revoked.clone())
        );
        let unverified = decode_unverified(&row).unwrap();
        assert_eq!(unverified.signature_len, 128);
        assert_eq!(
            unverified.certificate,
            SequesterCertificate::Revoked(revoked)
        );
        // Wrong kind is refused by the typed decoders.
        let (_, after) = armor::split(armor::PSS_SHA256, 0, &row).unwrap();
        let signed = &after[unverified.signature_len..];
        assert!(matches!(
            ServiceCertificate::decode(signed),
            Err(FormatError::WrongType { .. })
        ));
    }

    fn fixture_rows() -> Vec<Vec<u8>> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/fixtures/parsec/sequestered_export.sqlite");
        let conn =
            rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        let mut stmt = conn
            .prepare("SELECT certificate FROM sequester_certificate ORDER BY _id")
            .unwrap();
        let rows = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        rows
    }

    #[test]
    fn fixture_sequester_topic_decodes_verifies_and_reencodes_byte_exact() {
        let rows = fixture_rows();
        assert_eq!(rows.len(), 4);
        let root: [u8; 32] =
            hex::decode("c118b50c90876d8feac2ffe02d59c26f447064289091c1993d3aec170fd6a9c2")
                .unwrap()
                .try_into()
                .unwrap();
        // Row 0: authority certificate, Ed25519 by the root key.
        let auth = AuthorityCertificate::verify_and_decode(&root, &rows[0]).unwrap();
        assert_eq!(auth.serialize(), rows[0][64..]);
        assert_eq!(auth.timestamp.to_rfc3339(), "2000-01-02T00:00:00Z");
        let authority = auth.verify_key().unwrap();
        assert_eq!(authority, authority_public());
        let mut tampered = rows[0].clone();
        tampered[70] ^= 1;
        assert!(AuthorityCertificate::verify_and_decode(&root, &tampered).is_err());

        // Rows 1-3: service 1, revocation of service 1, service 2.
        let mut kinds = Vec::new();
        for row in &rows[1..] {
            let cert = decode_sequester_topic_row(&authority, row).unwrap();
            let serialized = &row[18 + 128..];
            let reencoded = match &cert {
                SequesterCertificate::Service(c) => {
                    kinds.push(format!("service {} {}", c.service_id, c.service_label));
                    c.encryption_key().unwrap();
                    c.serialize()
                }
                SequesterCertificate::Revoked(c) => {
                    kinds.push(format!("revoked {}", c.service_id));
                    c.serialize()
                }
            };
            assert_eq!(reencoded, serialized, "re-encoding differs for {cert:?}");
            assert_eq!(decode_unverified(row).unwrap().certificate, cert);
        }
        assert_eq!(
            kinds,
            [
                "service 00000000000000000000000000000001 Sequester Service 1",
                "revoked 00000000000000000000000000000001",
                "service 00000000000000000000000000000002 Sequester Service 2",
            ]
        );
        if let SequesterCertificate::Service(c) =
            decode_sequester_topic_row(&authority, &rows[1]).unwrap()
        {
            assert_eq!(hex::encode(c.to_msgpack()), V4_SERVICE_MSGPACK);
        }
        // The service key does not verify authority rows.
        let service1 = RsaPublicKeyDer::from_pem(&fixture(
            "sequester_service_1.00000000000000000000000000000001.public.pem",
        ))
        .unwrap();
        assert_eq!(
            decode_sequester_topic_row(&service1, &rows[1]).unwrap_err(),
            FormatError::BadSignature
        );
    }

    #[test]
    fn decoders_accept_any_key_order_and_refuse_wrong_kinds() {
        let mut w = Writer::new();
        w.map(3)
            .field("service_id", |w| {
                w.uuid(&[9; 16]);
            })
            .field("timestamp", |w| {
                w.datetime(DateTime(5));
            })
            .field("type", |w| {
                w.str(REVOKED_TYPE);
            });
        let env = envelope::wrap(&w.into_bytes());
        assert_eq!(
            RevokedServiceCertificate::decode(&env).unwrap(),
            RevokedServiceCertificate {
                timestamp: DateTime(5),
                service_id: ServiceId([9; 16])
            }
        );
        // service_id as bin is refused.
        let mut w = Writer::new();
        w.map(3)
            .field("type", |w| {
                w.str(REVOKED_TYPE);
            })
            .field("timestamp", |w| {
                w.datetime(DateTime(5));
            })
            .field("service_id", |w| {
                w.bin(&[9; 16]);
            });
        assert!(matches!(
            RevokedServiceCertificate::decode(&envelope::wrap(&w.into_bytes())),
            Err(FormatError::BadField {
                field: "service_id",
                ..
            })
        ));
        // Missing field.
        let mut w = Writer::new();
        w.map(2)
            .field("type", |w| {
                w.str(SERVICE_TYPE);
            })
            .field("timestamp", |w| {
                w.datetime(DateTime(5));
            });
        assert_eq!(
            SequesterCertificate::decode(&envelope::wrap(&w.into_bytes())).unwrap_err(),
            FormatError::MissingField("service_id")
        );
    }

    #[test]
    fn service_ids_parse_both_forms() {
        let a: ServiceId = "00000000000000000000000000000001".parse().unwrap();
        let b: ServiceId = "00000000-0000-0000-0000-000000000001".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a, id(1));
        assert!("xyz".parse::<ServiceId>().is_err());
        assert_ne!(ServiceId::random(), ServiceId::random());
    }
}

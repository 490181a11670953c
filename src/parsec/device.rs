//! `device_certificate` (docs/formats.md §3.4) and the other common certificates' `type` detection.
//!
//! Only device certificates matter to the export reader: they carry the Ed25519 verify keys that
//! sign manifests, keys bundles and realm certificates.

use super::msgpack::{self, Map, Writer};
use super::{envelope, limits, DateTime, FormatError};

/// A 16-byte UUID-based ID (DeviceID, UserID, VlobID, BlockID, SequesterServiceID).
pub type Id = [u8; 16];

/// Type string of device certificates.
pub(crate) const DEVICE_CERTIFICATE: &str = "device_certificate";
/// Type string of user certificates.
pub(crate) const USER_CERTIFICATE: &str = "user_certificate";

/// A decoded `device_certificate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCertificate {
    /// `STANDARD` when absent; any string accepted (it does not affect signature checks).
    pub purpose: String,
    /// `None` = signed by the organization root key.
    pub author: Option<Id>,
    pub timestamp: DateTime,
    pub user_id: Id,
    pub device_id: Id,
    pub device_label: Option<String>,
    pub verify_key: [u8; 32],
}

impl DeviceCertificate {
    /// Decodes the serialized (envelope) bytes, i.e. a signed blob after its 64-byte signature.
    pub fn decode(serialized: &[u8]) -> Result<Self, FormatError> {
        let value = envelope::decode_value(serialized, &limits::CERTIFICATE)?;
        let map = Map::new(&value)?;
        map.expect_type(DEVICE_CERTIFICATE)?;
        let purpose = match map.get("purpose") {
            None => "STANDARD".to_string(),
            Some(v) => msgpack::as_str(v, "purpose")?.to_string(),
        };
        let algorithm = map.str("algorithm")?;
        if algorithm != "ED25519" {
            return Err(FormatError::BadField {
                field: "algorithm",
                reason: format!("unknown algorithm `{algorithm}` (only ED25519 exists)"),
            });
        }
        Ok(DeviceCertificate {
            purpose,
            author: map.nullable_uuid("author")?,
            timestamp: map.datetime("timestamp")?,
            user_id: map.uuid("user_id")?,
            device_id: map.uuid("device_id")?,
            device_label: map.nullable_str("device_label")?.map(str::to_string),
            verify_key: map.bin32("verify_key")?,
        })
    }

    /// Msgpack in Parsec's field order (before the envelope).
    pub fn to_msgpack(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.map(9)
            .field("type", |w| {
                w.str(DEVICE_CERTIFICATE);
            })
            .field("purpose", |w| {
                w.str(&self.purpose);
            });
        write_author_timestamp_user(&mut w, self.author.as_ref(), self.timestamp, &self.user_id);
        w.field("device_id", |w| {
            w.uuid(&self.device_id);
        })
        .field("device_label", |w| {
            match &self.device_label {
                Some(l) => w.str(l),
                None => w.nil(),
            };
        })
        .field("verify_key", |w| {
            w.bin(&self.verify_key);
        })
        .field("algorithm", |w| {
            w.str("ED25519");
        });
        w.into_bytes()
    }
}

/// A `user_certificate` (docs/formats.md §3.4, "other common certificates").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserCertificate {
    /// `None` = signed by the organization root key.
    pub author: Option<Id>,
    pub timestamp: DateTime,
    pub user_id: Id,
    /// `(email, label)`; `None` in the redacted variant.
    pub human_handle: Option<(String, String)>,
    /// X25519 public key of the user.
    pub public_key: [u8; 32],
    /// `ADMIN`, `STANDARD` or `OUTSIDER`.
    pub profile: String,
}

impl UserCertificate {
    /// Decodes the serialized (envelope) bytes, i.e. a signed blob after its 64-byte signature.
    pub fn decode(serialized: &[u8]) -> Result<Self, FormatError> {
        let value = envelope::decode_value(serialized, &limits::CERTIFICATE)?;
        let map = Map::new(&value)?;
        map.expect_type(USER_CERTIFICATE)?;
        let algorithm = map.str("algorithm")?;
        if algorithm != "X25519_XSALSA20_POLY1305" {
            return Err(FormatError::BadField {
                field: "algorithm",
                reason: format!("unknown algorithm `{algorithm}`"),
            });
        }
        let human_handle = match map.nullable("human_handle")? {
            None => None,
            Some(rmpv::Value::Array(items)) if items.len() == 2 => Some((
                msgpack::as_str(&items[0], "human_handle")?.to_string(),
                msgpack::as_str(&items[1], "human_handle")?.to_string(),
            )),
            Some(_) => {
                return Err(FormatError::BadField {
                    field: "human_handle",
                    reason: "not nil or an array of 2 strings".into(),
                })
            }
        };
        Ok(UserCertificate {
            author: map.nullable_uuid("author")?,
            timestamp: map.datetime("timestamp")?,
            user_id: map.uuid("user_id")?,
            human_handle,
            public_key: map.bin32("public_key")?,
            profile: map.str("profile")?.to_string(),
        })
    }

    /// Msgpack in Parsec's field order (before the envelope).
    pub fn to_msgpack(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.map(8).field("type", |w| {
            w.str(USER_CERTIFICATE);
        });
        write_author_timestamp_user(&mut w, self.author.as_ref(), self.timestamp, &self.user_id);
        w.field("human_handle", |w| {
            match &self.human_handle {
                Some((email, label)) => w.array(2).str(email).str(label),
                None => w.nil(),
            };
        })
        .field("public_key", |w| {
            w.bin(&self.public_key);
        })
        .field("algorithm", |w| {
            w.str("X25519_XSALSA20_POLY1305");
        })
        .field("profile", |w| {
            w.str(&self.profile);
        });
        w.into_bytes()
    }
}

/// `author` (nullable), `timestamp`, `user_id`: the run shared by user and device certificates.
fn write_author_timestamp_user(
    w: &mut Writer,
    author: Option<&Id>,
    timestamp: DateTime,
    user_id: &Id,
) {
    w.field("author", |w| {
        match author {
            Some(a) => w.uuid(a),
            None => w.nil(),
        };
    })
    .field("timestamp", |w| {
        w.datetime(timestamp);
    })
    .field("user_id", |w| {
        w.uuid(user_id);
    });
}

/// The `type` string of serialized data (envelope bytes), without decoding the rest.
pub fn type_of(serialized: &[u8]) -> Result<String, FormatError> {
    let value = envelope::decode_value(serialized, &limits::CERTIFICATE)?;
    Ok(Map::new(&value)?.type_name()?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_certificate_round_trip() {
        let cert = DeviceCertificate {
            purpose: "STANDARD".into(),
            author: None,
            timestamp: DateTime(947548800000000),
            user_id: [1; 16],
            device_id: [2; 16],
            device_label: Some("laptop".into()),
            verify_key: [3; 32],
        };
        let decoded = DeviceCertificate::decode(&envelope::wrap(&cert.to_msgpack())).unwrap();
        assert_eq!(decoded, cert);
        assert_eq!(
            type_of(&envelope::wrap(&cert.to_msgpack())).unwrap(),
            DEVICE_CERTIFICATE
        );
    }

    #[test]
    fn user_certificate_round_trip() {
        let mut cert = UserCertificate {
            author: Some([7; 16]),
            timestamp: DateTime(947548800000000),
            user_id: [1; 16],
            human_handle: Some(("bob@example.com".into(), "bob".into())),
            public_key: [3; 32],
            profile: "STANDARD".into(),
        };
        assert_eq!(
            UserCertificate::decode(&envelope::wrap(&cert.to_msgpack())).unwrap(),
            cert
        );
        cert.human_handle = None;
        cert.author = None;
        assert_eq!(
            UserCertificate::decode(&envelope::wrap(&cert.to_msgpack())).unwrap(),
            cert
        );
        assert_eq!(
            type_of(&envelope::wrap(&cert.to_msgpack())).unwrap(),
            USER_CERTIFICATE
        );
        assert!(DeviceCertificate::decode(&envelope::wrap(&cert.to_msgpack())).is_err());
    }
}

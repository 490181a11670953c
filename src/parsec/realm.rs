//! Realm certificates (docs/formats.md §3.5), `realm_keys_bundle_access` and `realm_keys_bundle`
//! (§3.6).
//!
//! Decoders take the serialized (envelope) bytes, i.e. what follows the 64-byte Ed25519 signature.
//! Encoders produce msgpack in Parsec's field order; `encode()` wraps it in the envelope.

use zeroize::Zeroizing;

use super::device::Id;
use super::msgpack::{self, Map, Writer};
use super::{envelope, limits, DateTime, FormatError};

pub(crate) const REALM_KEY_ROTATION_CERTIFICATE: &str = "realm_key_rotation_certificate";
pub(crate) const REALM_NAME_CERTIFICATE: &str = "realm_name_certificate";
pub(crate) const REALM_ROLE_CERTIFICATE: &str = "realm_role_certificate";
pub(crate) const REALM_KEYS_BUNDLE: &str = "realm_keys_bundle";
pub(crate) const REALM_KEYS_BUNDLE_ACCESS: &str = "realm_keys_bundle_access";

/// Wipes every byte string of a decoded msgpack value (secret keys were copied out of it).
fn zeroize_value(value: &mut rmpv::Value) {
    use zeroize::Zeroize;
    match value {
        rmpv::Value::Binary(b) => b.zeroize(),
        rmpv::Value::Array(items) => items.iter_mut().for_each(zeroize_value),
        rmpv::Value::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
            zeroize_value(k);
            zeroize_value(v);
        }),
        _ => {}
    }
}

fn decode_map(serialized: &[u8]) -> Result<rmpv::Value, FormatError> {
    envelope::decode_value(serialized, &limits::CERTIFICATE)
}

/// A writer holding the opening of a realm object: map of `fields` entries, then `type`,
/// `author`, `timestamp`, `realm_id` (the order shared by docs/formats.md §3.5-3.6).
fn realm_writer(
    fields: u32,
    type_name: &str,
    author: &Id,
    timestamp: DateTime,
    realm: &Id,
) -> Writer {
    let mut w = Writer::new();
    w.map(fields)
        .field("type", |w| {
            w.str(type_name);
        })
        .field("author", |w| {
            w.uuid(author);
        })
        .field("timestamp", |w| {
            w.datetime(timestamp);
        })
        .field("realm_id", |w| {
            w.uuid(realm);
        });
    w
}

/// `realm_key_rotation_certificate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRotationCertificate {
    pub author: Id,
    pub timestamp: DateTime,
    pub realm_id: Id,
    pub key_index: u64,
    pub key_canary: Vec<u8>,
}

impl KeyRotationCertificate {
    pub fn decode(serialized: &[u8]) -> Result<Self, FormatError> {
        let value = decode_map(serialized)?;
        let map = Map::new(&value)?;
        map.expect_type(REALM_KEY_ROTATION_CERTIFICATE)?;
        let enc = map.str("encryption_algorithm")?;
        if enc != "BLAKE2_XSALSA20_POLY1305" {
            return Err(FormatError::BadField {
                field: "encryption_algorithm",
                reason: format!("unknown value `{enc}`"),
            });
        }
        let hash = map.str("hash_algorithm")?;
        if hash != "SHA256" {
            return Err(FormatError::BadField {
                field: "hash_algorithm",
                reason: format!("unknown value `{hash}`"),
            });
        }
        Ok(KeyRotationCertificate {
            author: map.uuid("author")?,
            timestamp: map.datetime("timestamp")?,
            realm_id: map.uuid("realm_id")?,
            key_index: map.uint("key_index")?,
            key_canary: map.bin("key_canary")?.to_vec(),
        })
    }

    pub fn to_msgpack(&self) -> Vec<u8> {
        let mut w = realm_writer(
            8,
            REALM_KEY_ROTATION_CERTIFICATE,
            &self.author,
            self.timestamp,
            &self.realm_id,
        );
        w.field("key_index", |w| {
            w.uint(self.key_index);
        })
        .field("encryption_algorithm", |w| {
            w.str("BLAKE2_XSALSA20_POLY1305");
        })
        .field("hash_algorithm", |w| {
            w.str("SHA256");
        })
        .field("key_canary", |w| {
            w.bin(&self.key_canary);
        });
        w.into_bytes()
    }
}

/// `realm_name_certificate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameCertificate {
    pub author: Id,
    pub timestamp: DateTime,
    pub realm_id: Id,
    pub key_index: u64,
    pub encrypted_name: Vec<u8>,
}

impl NameCertificate {
    pub fn decode(serialized: &[u8]) -> Result<Self, FormatError> {
        let value = decode_map(serialized)?;
        let map = Map::new(&value)?;
        map.expect_type(REALM_NAME_CERTIFICATE)?;
        Ok(NameCertificate {
            author: map.uuid("author")?,
            timestamp: map.datetime("timestamp")?,
            realm_id: map.uuid("realm_id")?,
            key_index: map.uint("key_index")?,
            encrypted_name: map.bin("encrypted_name")?.to_vec(),
        })
    }

    pub fn to_msgpack(&self) -> Vec<u8> {
        let mut w = realm_writer(
            6,
            REALM_NAME_CERTIFICATE,
            &self.author,
            self.timestamp,
            &self.realm_id,
        );
        w.field("key_index", |w| {
            w.uint(self.key_index);
        })
        .field("encrypted_name", |w| {
            w.bin(&self.encrypted_name);
        });
        w.into_bytes()
    }
}

/// `realm_role_certificate` (role `None` = role removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleCertificate {
    pub author: Id,
    pub timestamp: DateTime,
    pub realm_id: Id,
    pub user_id: Id,
    pub role: Option<String>,
}

impl RoleCertificate {
    pub fn decode(serialized: &[u8]) -> Result<Self, FormatError> {
        let value = decode_map(serialized)?;
        let map = Map::new(&value)?;
        map.expect_type(REALM_ROLE_CERTIFICATE)?;
        Ok(RoleCertificate {
            author: map.uuid("author")?,
            timestamp: map.datetime("timestamp")?,
            realm_id: map.uuid("realm_id")?,
            user_id: map.uuid("user_id")?,
            role: map.nullable_str("role")?.map(str::to_string),
        })
    }

    pub fn to_msgpack(&self) -> Vec<u8> {
        let mut w = realm_writer(
            6,
            REALM_ROLE_CERTIFICATE,
            &self.author,
            self.timestamp,
            &self.realm_id,
        );
        w.field("user_id", |w| {
            w.uuid(&self.user_id);
        })
        .field("role", |w| {
            match &self.role {
                Some(r) => w.str(r),
                None => w.nil(),
            };
        });
        w.into_bytes()
    }
}

/// `realm_keys_bundle_access`: the 32-byte key that opens a keys bundle (secret, zeroized).
pub struct KeysBundleAccess {
    pub keys_bundle_key: Zeroizing<[u8; 32]>,
}

impl KeysBundleAccess {
    pub fn decode(serialized: &[u8]) -> Result<Self, FormatError> {
        let limits = &limits::KEYS_BUNDLE_ACCESS;
        let raw = Zeroizing::new(envelope::unwrap_bounded(serialized, limits)?);
        let mut value = msgpack::decode_bounded(&raw, limits)?;
        let key = (|| {
            let map = Map::new(&value)?;
            map.expect_type(REALM_KEYS_BUNDLE_ACCESS)?;
            Ok::<_, FormatError>(Zeroizing::new(map.bin32("keys_bundle_key")?))
        })();
        zeroize_value(&mut value);
        Ok(KeysBundleAccess {
            keys_bundle_key: key?,
        })
    }

    pub(crate) fn to_msgpack(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::new();
        w.map(2)
            .field("type", |w| {
                w.str(REALM_KEYS_BUNDLE_ACCESS);
            })
            .field("keys_bundle_key", |w| {
                w.bin(&self.keys_bundle_key[..]);
            });
        Zeroizing::new(w.into_bytes())
    }

    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(envelope::wrap(&self.to_msgpack()))
    }
}

/// `realm_keys_bundle`: all realm keys so far, `keys[0]` = key index 1 (secret, zeroized).
pub struct KeysBundle {
    pub author: Id,
    pub timestamp: DateTime,
    pub realm_id: Id,
    pub keys: Vec<Zeroizing<[u8; 32]>>,
}

impl KeysBundle {
    pub fn decode(serialized: &[u8]) -> Result<Self, FormatError> {
        let limits = &limits::KEYS_BUNDLE;
        let raw = Zeroizing::new(envelope::unwrap_bounded(serialized, limits)?);
        let mut value = msgpack::decode_bounded(&raw, limits)?;
        let decoded = Self::from_value(&value);
        zeroize_value(&mut value);
        decoded
    }

    fn from_value(value: &rmpv::Value) -> Result<Self, FormatError> {
        let map = Map::new(value)?;
        map.expect_type(REALM_KEYS_BUNDLE)?;
        let items = map.array("keys")?;
        if items.len() > limits::MAX_REALM_KEYS {
            return Err(FormatError::BadField {
                field: "keys",
                reason: format!(
                    "{} keys, more than the limit of {}",
                    items.len(),
                    limits::MAX_REALM_KEYS
                ),
            });
        }
        let mut keys = Vec::with_capacity(items.len());
        for item in items {
            let b = msgpack::as_bin(item, "keys")?;
            let k: [u8; 32] = b.try_into().map_err(|_| FormatError::BadField {
                field: "keys",
                reason: format!("a key has {} bytes, not 32", b.len()),
            })?;
            keys.push(Zeroizing::new(k));
        }
        if keys.is_empty() {
            return Err(FormatError::BadField {
                field: "keys",
                reason: "empty keys list".into(),
            });
        }
        Ok(KeysBundle {
            author: map.uuid("author")?,
            timestamp: map.datetime("timestamp")?,
            realm_id: map.uuid("realm_id")?,
            keys,
        })
    }

    pub fn to_msgpack(&self) -> Zeroizing<Vec<u8>> {
        let mut w = realm_writer(
            5,
            REALM_KEYS_BUNDLE,
            &self.author,
            self.timestamp,
            &self.realm_id,
        );
        w.field("keys", |w| {
            w.array(self.keys.len() as u32);
            for k in &self.keys {
                w.bin(&k[..]);
            }
        });
        Zeroizing::new(w.into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let rot = KeyRotationCertificate {
            author: [1; 16],
            timestamp: DateTime(5),
            realm_id: [2; 16],
            key_index: 3,
            key_canary: vec![9; 40],
        };
        assert_eq!(
            KeyRotationCertificate::decode(&envelope::wrap(&rot.to_msgpack())).unwrap(),
            rot
        );
        let name = NameCertificate {
            author: [1; 16],
            timestamp: DateTime(5),
            realm_id: [2; 16],
            key_index: 1,
            encrypted_name: vec![7; 45],
        };
        assert_eq!(
            NameCertificate::decode(&envelope::wrap(&name.to_msgpack())).unwrap(),
            name
        );
        let role = RoleCertificate {
            author: [1; 16],
            timestamp: DateTime(5),
            realm_id: [2; 16],
            user_id: [4; 16],
            role: None,
        };
        assert_eq!(
            RoleCertificate::decode(&envelope::wrap(&role.to_msgpack())).unwrap(),
            role
        );
        let bundle = KeysBundle {
            author: [1; 16],
            timestamp: DateTime(6),
            realm_id: [2; 16],
            keys: vec![Zeroizing::new([0xaa; 32]), Zeroizing::new([0xbb; 32])],
        };
        let back = KeysBundle::decode(&envelope::wrap(&bundle.to_msgpack())).unwrap();
        assert_eq!(back.keys.len(), 2);
        assert_eq!(*back.keys[1], [0xbb; 32]);
        let access = KeysBundleAccess {
            keys_bundle_key: Zeroizing::new([5; 32]),
        };
        assert_eq!(
            *KeysBundleAccess::decode(&envelope::wrap(&access.to_msgpack()))
                .unwrap()
                .keys_bundle_key,
            [5; 32]
        );
    }

    #[test]
    fn spec_v7_keys_bundle_access_msgpack() {
        let access = KeysBundleAccess {
            keys_bundle_key: Zeroizing::new({
                let mut k = [0u8; 32];
                k[0] = 0xaa;
                k[31] = 0x0e;
                k
            }),
        };
        assert_eq!(hex::encode(&*access.to_msgpack()), "82a474797065b87265616c6d5f6b6579735f62756e646c655f616363657373af6b6579735f62756e646c655f6b6579c420aa0000000000000000000000000000000000000000000000000000000000000e");
    }
}

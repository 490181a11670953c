//! Msgpack encoders for the Parsec objects the writer emits (spec §3), fields in Parsec's order
//! and smallest encodings, so the bytes before compression equal what Parsec writes.

use std::collections::BTreeMap;

use crate::parsec::msgpack::Writer;
use crate::parsec::DateTime;

pub type Id = [u8; 16];

/// One `BlockAccess` of a file manifest.
#[derive(Debug, Clone)]
pub struct BlockAccess {
    pub id: Id,
    pub offset: u64,
    pub size: u64,
    pub digest: [u8; 32],
}

fn header(w: &mut Writer, fields: u32, type_name: &str) {
    w.map(fields).field("type", |w| {
        w.str(type_name);
    });
}

fn opt_uuid(w: &mut Writer, id: Option<&Id>) {
    match id {
        Some(id) => w.uuid(id),
        None => w.nil(),
    };
}

pub fn user_certificate(
    author: Option<&Id>,
    timestamp: DateTime,
    user_id: &Id,
    human_handle: (&str, &str),
    public_key: &[u8; 32],
    profile: &str,
) -> Vec<u8> {
    let mut w = Writer::new();
    header(&mut w, 8, "user_certificate");
    w.field("author", |w| opt_uuid(w, author))
        .field("timestamp", |w| {
            w.datetime(timestamp);
        })
        .field("user_id", |w| {
            w.uuid(user_id);
        })
        .field("human_handle", |w| {
            w.array(2).str(human_handle.0).str(human_handle.1);
        })
        .field("public_key", |w| {
            w.bin(public_key);
        })
        .field("algorithm", |w| {
            w.str("X25519_XSALSA20_POLY1305");
        })
        .field("profile", |w| {
            w.str(profile);
        });
    w.into_bytes()
}

pub fn device_certificate(
    author: Option<&Id>,
    timestamp: DateTime,
    user_id: &Id,
    device_id: &Id,
    device_label: &str,
    verify_key: &[u8; 32],
) -> Vec<u8> {
    let mut w = Writer::new();
    header(&mut w, 9, "device_certificate");
    w.field("purpose", |w| {
        w.str("STANDARD");
    })
    .field("author", |w| opt_uuid(w, author))
    .field("timestamp", |w| {
        w.datetime(timestamp);
    })
    .field("user_id", |w| {
        w.uuid(user_id);
    })
    .field("device_id", |w| {
        w.uuid(device_id);
    })
    .field("device_label", |w| {
        w.str(device_label);
    })
    .field("verify_key", |w| {
        w.bin(verify_key);
    })
    .field("algorithm", |w| {
        w.str("ED25519");
    });
    w.into_bytes()
}

pub fn authority_certificate(timestamp: DateTime, verify_key_der: &[u8]) -> Vec<u8> {
    let mut w = Writer::new();
    header(&mut w, 3, "sequester_authority_certificate");
    w.field("timestamp", |w| {
        w.datetime(timestamp);
    })
    .field("verify_key_der", |w| {
        w.bin(verify_key_der);
    });
    w.into_bytes()
}

pub fn service_certificate(
    timestamp: DateTime,
    service_id: &Id,
    label: &str,
    encryption_key_der: &[u8],
) -> Vec<u8> {
    let mut w = Writer::new();
    header(&mut w, 5, "sequester_service_certificate");
    w.field("timestamp", |w| {
        w.datetime(timestamp);
    })
    .field("service_id", |w| {
        w.uuid(service_id);
    })
    .field("service_label", |w| {
        w.str(label);
    })
    .field("encryption_key_der", |w| {
        w.bin(encryption_key_der);
    });
    w.into_bytes()
}

pub fn revoked_service_certificate(timestamp: DateTime, service_id: &Id) -> Vec<u8> {
    let mut w = Writer::new();
    header(&mut w, 3, "sequester_revoked_service_certificate");
    w.field("timestamp", |w| {
        w.datetime(timestamp);
    })
    .field("service_id", |w| {
        w.uuid(service_id);
    });
    w.into_bytes()
}

fn realm_header(
    w: &mut Writer,
    fields: u32,
    type_name: &str,
    author: &Id,
    ts: DateTime,
    realm: &Id,
) {
    header(w, fields, type_name);
    w.field("author", |w| {
        w.uuid(author);
    })
    .field("timestamp", |w| {
        w.datetime(ts);
    })
    .field("realm_id", |w| {
        w.uuid(realm);
    });
}

pub fn realm_role_certificate(
    author: &Id,
    timestamp: DateTime,
    realm_id: &Id,
    user_id: &Id,
    role: Option<&str>,
) -> Vec<u8> {
    let mut w = Writer::new();
    realm_header(
        &mut w,
        6,
        "realm_role_certificate",
        author,
        timestamp,
        realm_id,
    );
    w.field("user_id", |w| {
        w.uuid(user_id);
    })
    .field("role", |w| {
        match role {
            Some(r) => w.str(r),
            None => w.nil(),
        };
    });
    w.into_bytes()
}

pub fn realm_key_rotation_certificate(
    author: &Id,
    timestamp: DateTime,
    realm_id: &Id,
    key_index: u64,
    key_canary: &[u8],
) -> Vec<u8> {
    let mut w = Writer::new();
    realm_header(
        &mut w,
        8,
        "realm_key_rotation_certificate",
        author,
        timestamp,
        realm_id,
    );
    w.field("key_index", |w| {
        w.uint(key_index);
    })
    .field("encryption_algorithm", |w| {
        w.str("BLAKE2_XSALSA20_POLY1305");
    })
    .field("hash_algorithm", |w| {
        w.str("SHA256");
    })
    .field("key_canary", |w| {
        w.bin(key_canary);
    });
    w.into_bytes()
}

pub fn realm_name_certificate(
    author: &Id,
    timestamp: DateTime,
    realm_id: &Id,
    key_index: u64,
    encrypted_name: &[u8],
) -> Vec<u8> {
    let mut w = Writer::new();
    realm_header(
        &mut w,
        6,
        "realm_name_certificate",
        author,
        timestamp,
        realm_id,
    );
    w.field("key_index", |w| {
        w.uint(key_index);
    })
    .field("encrypted_name", |w| {
        w.bin(encrypted_name);
    });
    w.into_bytes()
}

pub fn realm_keys_bundle(
    author: &Id,
    timestamp: DateTime,
    realm_id: &Id,
    keys: &[[u8; 32]],
) -> Vec<u8> {
    let mut w = Writer::new();
    realm_header(&mut w, 5, "realm_keys_bundle", author, timestamp, realm_id);
    w.str("keys").array(keys.len() as u32);
    for k in keys {
        w.bin(k);
    }
    w.into_bytes()
}

pub fn realm_keys_bundle_access(keys_bundle_key: &[u8; 32]) -> Vec<u8> {
    let mut w = Writer::new();
    header(&mut w, 2, "realm_keys_bundle_access");
    w.field("keys_bundle_key", |w| {
        w.bin(keys_bundle_key);
    });
    w.into_bytes()
}

/// Fields shared by folder and file manifests, in Parsec's order.
pub struct ManifestHeader {
    pub author: Id,
    pub timestamp: DateTime,
    pub id: Id,
    pub parent: Id,
    pub version: u32,
    pub created: DateTime,
    pub updated: DateTime,
}

fn manifest_header(w: &mut Writer, fields: u32, type_name: &str, h: &ManifestHeader) {
    header(w, fields, type_name);
    w.field("author", |w| {
        w.uuid(&h.author);
    })
    .field("timestamp", |w| {
        w.datetime(h.timestamp);
    })
    .field("id", |w| {
        w.uuid(&h.id);
    })
    .field("parent", |w| {
        w.uuid(&h.parent);
    })
    .field("version", |w| {
        w.uint(h.version.into());
    })
    .field("created", |w| {
        w.datetime(h.created);
    })
    .field("updated", |w| {
        w.datetime(h.updated);
    });
}

pub fn folder_manifest(h: &ManifestHeader, children: &BTreeMap<String, Id>) -> Vec<u8> {
    let mut w = Writer::new();
    manifest_header(&mut w, 9, "folder_manifest", h);
    w.str("children").map(children.len() as u32);
    for (name, id) in children {
        w.str(name).uuid(id);
    }
    w.into_bytes()
}

pub fn file_manifest(
    h: &ManifestHeader,
    size: u64,
    blocksize: u64,
    blocks: &[BlockAccess],
) -> Vec<u8> {
    let mut w = Writer::new();
    manifest_header(&mut w, 11, "file_manifest", h);
    w.field("size", |w| {
        w.uint(size);
    })
    .field("blocksize", |w| {
        w.uint(blocksize);
    });
    w.str("blocks").array(blocks.len() as u32);
    for b in blocks {
        w.map(4)
            .field("id", |w| {
                w.uuid(&b.id);
            })
            .field("offset", |w| {
                w.uint(b.offset);
            })
            .field("size", |w| {
                w.uint(b.size);
            })
            .field("digest", |w| {
                w.bin(&b.digest);
            });
    }
    w.into_bytes()
}

/// TEMPORARY: the writer's encoders and the parsec type modules' encoders give the same bytes.
#[cfg(test)]
mod same_bytes_as_parsec {
    use super::*;
    use crate::parsec::{device, manifest, realm, sequester};
    use zeroize::Zeroizing;

    const T: DateTime = DateTime(1_700_000_000_123_456);

    #[test]
    fn every_type_encodes_identically() {
        let (a, u, d, r) = ([1u8; 16], [2u8; 16], [3u8; 16], [4u8; 16]);
        for (author, profile) in [(None, "ADMIN"), (Some(a), "STANDARD")] {
            assert_eq!(
                user_certificate(
                    author.as_ref(),
                    T,
                    &u,
                    ("bob@example.com", "bob"),
                    &[5; 32],
                    profile
                ),
                device::UserCertificate {
                    author,
                    timestamp: T,
                    user_id: u,
                    human_handle: Some(("bob@example.com".into(), "bob".into())),
                    public_key: [5; 32],
                    profile: profile.into(),
                }
                .to_msgpack()
            );
            assert_eq!(
                device_certificate(author.as_ref(), T, &u, &d, "bob's machine", &[6; 32]),
                device::DeviceCertificate {
                    purpose: "STANDARD".into(),
                    author,
                    timestamp: T,
                    user_id: u,
                    device_id: d,
                    device_label: Some("bob's machine".into()),
                    verify_key: [6; 32],
                }
                .to_msgpack()
            );
        }
        let der = vec![0x30; 300];
        assert_eq!(
            authority_certificate(T, &der),
            sequester::AuthorityCertificate {
                timestamp: T,
                verify_key_der: der.clone(),
            }
            .to_msgpack()
        );
        assert_eq!(
            service_certificate(T, &d, "Service é", &der),
            sequester::ServiceCertificate {
                timestamp: T,
                service_id: sequester::ServiceId(d),
                service_label: "Service é".into(),
                encryption_key_der: der.clone(),
            }
            .to_msgpack()
        );
        assert_eq!(
            revoked_service_certificate(T, &d),
            sequester::RevokedServiceCertificate {
                timestamp: T,
                service_id: sequester::ServiceId(d),
            }
            .to_msgpack()
        );
        for role in [Some("OWNER"), Some("CONTRIBUTOR"), None] {
            assert_eq!(
                realm_role_certificate(&a, T, &r, &u, role),
                realm::RoleCertificate {
                    author: a,
                    timestamp: T,
                    realm_id: r,
                    user_id: u,
                    role: role.map(str::to_string),
                }
                .to_msgpack()
            );
        }
        for index in [1u64, 200, 70_000] {
            assert_eq!(
                realm_key_rotation_certificate(&a, T, &r, index, &[7; 40]),
                realm::KeyRotationCertificate {
                    author: a,
                    timestamp: T,
                    realm_id: r,
                    key_index: index,
                    key_canary: vec![7; 40],
                }
                .to_msgpack()
            );
            assert_eq!(
                realm_name_certificate(&a, T, &r, index, &[8; 45]),
                realm::NameCertificate {
                    author: a,
                    timestamp: T,
                    realm_id: r,
                    key_index: index,
                    encrypted_name: vec![8; 45],
                }
                .to_msgpack()
            );
        }
        let keys: Vec<[u8; 32]> = (0..20u8).map(|i| [i; 32]).collect();
        for n in [1, 15, 16, 20] {
            assert_eq!(
                realm_keys_bundle(&a, T, &r, &keys[..n]),
                *realm::KeysBundle {
                    author: a,
                    timestamp: T,
                    realm_id: r,
                    keys: keys[..n].iter().map(|k| Zeroizing::new(*k)).collect(),
                }
                .to_msgpack()
            );
        }
        assert_eq!(
            realm_keys_bundle_access(&[9; 32]),
            *realm::KeysBundleAccess {
                keys_bundle_key: Zeroizing::new([9; 32]),
            }
            .to_msgpack()
        );
        let header = ManifestHeader {
            author: a,
            timestamp: T,
            id: r,
            parent: r,
            version: 70_000,
            created: DateTime(1),
            updated: T,
        };
        let parsec_header = manifest::ManifestHeader {
            author: a,
            timestamp: T,
            id: r,
            parent: r,
            version: 70_000,
            created: DateTime(1),
            updated: T,
        };
        for n in [0usize, 3, 16, 40] {
            let children: BTreeMap<String, Id> = (0..n)
                .map(|i| (format!("child {i}"), [i as u8; 16]))
                .collect();
            let parsec_children: Vec<manifest::Child> = children
                .iter()
                .map(|(name, id)| manifest::Child {
                    name: crate::parsec::entry_name::EntryName::parse(name).unwrap(),
                    id: *id,
                })
                .collect();
            let old = folder_manifest(&header, &children);
            assert_eq!(
                old,
                manifest::FolderManifest {
                    header: parsec_header.clone(),
                    children: parsec_children,
                    duplicate_names: vec![],
                }
                .to_msgpack()
            );
            assert_eq!(
                old,
                manifest::folder_manifest_msgpack(
                    &parsec_header,
                    children.iter().map(|(n, id)| (n.as_str(), id))
                )
            );
        }
        for n in [0usize, 1, 16, 17] {
            let blocks: Vec<BlockAccess> = (0..n as u64)
                .map(|i| BlockAccess {
                    id: [i as u8; 16],
                    offset: i * 524_288,
                    size: 100 + i * 1000,
                    digest: [i as u8; 32],
                })
                .collect();
            let parsec_blocks: Vec<manifest::BlockAccess> = blocks
                .iter()
                .map(|b| manifest::BlockAccess {
                    id: b.id,
                    offset: b.offset,
                    size: b.size,
                    digest: b.digest,
                })
                .collect();
            assert_eq!(
                file_manifest(&header, 9_000_000_000, 524_288, &blocks),
                manifest::FileManifest {
                    header: parsec_header.clone(),
                    size: 9_000_000_000,
                    blocksize: 524_288,
                    blocks: parsec_blocks,
                }
                .to_msgpack()
            );
        }
    }
}

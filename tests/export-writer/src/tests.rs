//! The writer's bytes for every Parsec type it emits decode, with the `crate::parsec` decoders,
//! to the values the writer used (the writer encodes through those same types' encoders; this
//! pins the wiring: field values, signatures and encryption layers).

use std::collections::HashMap;

use rand::{rngs::StdRng, SeedableRng};
use rsa::{Oaep, RsaPrivateKey};
use sha2::Sha256;

use super::*;
use sequester_custody::crypto::symmetric::{ed25519_public, secretbox_open};
use sequester_custody::parsec::device::{type_of, DeviceCertificate, UserCertificate};
use sequester_custody::parsec::manifest::Manifest;
use sequester_custody::parsec::realm::{
    KeyRotationCertificate, KeysBundle, KeysBundleAccess, NameCertificate, RoleCertificate,
};
use sequester_custody::parsec::sequester::{
    AuthorityCertificate, RevokedServiceCertificate, ServiceCertificate,
};

/// A folder's children as the writer holds them: `(name, id)` in name order.
type Children = Vec<(String, Id)>;

fn blobs(db: &rusqlite::Connection, sql: &str) -> Vec<Vec<u8>> {
    let mut stmt = db.prepare(sql).unwrap();
    let rows = stmt.query_map([], |r| r.get(0)).unwrap();
    rows.map(Result::unwrap).collect()
}

/// Drops the 64-byte Ed25519 signature.
fn unsigned(signed: &[u8]) -> &[u8] {
    &signed[64..]
}

#[test]
fn writer_output_decodes_with_the_parsec_decoders() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("export.sqlite");
    let service_key = RsaPrivateKey::new(&mut StdRng::seed_from_u64(3), 1024).unwrap();
    let service_spki = service_key
        .to_public_key()
        .to_public_key_der()
        .unwrap()
        .as_bytes()
        .to_vec();
    let config = WriterConfig {
        authority_bits: 1024,
        threads: 1,
        blocksize: 512,
        realm_name: Some("the realm".into()),
        ..WriterConfig::default()
    };
    let mut w = ExportWriter::create(&path, config).unwrap();
    let service = w.add_service("Service A", &service_spki).unwrap();
    let revoked = w.add_service("Service B", &service_spki).unwrap();
    w.revoke_service(revoked).unwrap();
    w.rotate_key().unwrap();
    w.mkdir("/docs").unwrap();
    w.write_file("/docs/a.txt", Content::bytes(vec![7u8; 1500]))
        .unwrap();
    w.sync().unwrap();

    // What the writer used, read before `finish` consumes it.
    let actors: Vec<(Id, Id, [u8; 32])> = w
        .actors
        .iter()
        .map(|a| (a.user_id, a.device_id, ed25519_public(&a.seed)))
        .collect();
    let realm_id = w.realm_id;
    let keys = w.keys.clone();
    let authority_spki = w.authority.spki_der();
    let mut expected_folders: HashMap<Id, (Id, u32, Children)> = HashMap::new();
    let mut expected_files: HashMap<Id, (Id, u32, u64, Vec<BlockAccess>)> = HashMap::new();
    for (id, e) in &w.entries {
        match &e.node {
            Node::Folder(children) => {
                let children = children.iter().map(|(n, c)| (n.clone(), *c)).collect();
                expected_folders.insert(*id, (e.parent, e.version, children));
            }
            Node::File { size, blocks, .. } => {
                let blocks = blocks
                    .iter()
                    .map(|b| BlockAccess {
                        id: b.id,
                        offset: b.offset,
                        size: b.size,
                        digest: b.digest.unwrap(),
                    })
                    .collect();
                expected_files.insert(*id, (e.parent, e.version, *size, blocks));
            }
        }
    }
    w.finish().unwrap();
    let db = rusqlite::Connection::open(&path).unwrap();

    // Common certificates: user then device, per user.
    let common = blobs(
        &db,
        "SELECT certificate FROM common_certificate ORDER BY _id",
    );
    assert_eq!(common.len(), 2 * actors.len());
    for (i, (user_id, device_id, verify_key)) in actors.iter().enumerate() {
        let name = ["alice", "bob"][i];
        let author = (i > 0).then_some(actors[0].1);
        let user = UserCertificate::decode(unsigned(&common[2 * i])).unwrap();
        assert_eq!(
            user,
            UserCertificate {
                author,
                timestamp: user.timestamp,
                user_id: *user_id,
                human_handle: Some((format!("{name}@example.com"), name.to_string())),
                public_key: user.public_key,
                profile: if i == 0 { "ADMIN" } else { "STANDARD" }.into(),
            }
        );
        let device = DeviceCertificate::decode(unsigned(&common[2 * i + 1])).unwrap();
        assert_eq!(
            device,
            DeviceCertificate {
                purpose: "STANDARD".into(),
                author,
                timestamp: user.timestamp,
                user_id: *user_id,
                device_id: *device_id,
                device_label: Some(format!("{name}'s machine")),
                verify_key: *verify_key,
            }
        );
    }

    // Sequester certificates: authority (Ed25519), then RSA-signed services and revocation.
    let sequester = blobs(
        &db,
        "SELECT certificate FROM sequester_certificate ORDER BY _id",
    );
    assert_eq!(sequester.len(), 4);
    let authority = AuthorityCertificate::decode(unsigned(&sequester[0])).unwrap();
    assert_eq!(authority.verify_key_der, authority_spki);
    let rsa_unsigned = |row: &[u8]| {
        let prefix = b"RSASSA-PSS-SHA256:";
        assert!(row.starts_with(prefix));
        row[prefix.len() + 128..].to_vec()
    };
    let svc = ServiceCertificate::decode(&rsa_unsigned(&sequester[1])).unwrap();
    assert_eq!(svc.service_id.0, service.0);
    assert_eq!(svc.service_label, "Service A");
    assert_eq!(svc.encryption_key_der, service_spki);
    let svc_b = ServiceCertificate::decode(&rsa_unsigned(&sequester[2])).unwrap();
    assert_eq!(
        (svc_b.service_id.0, svc_b.service_label.as_str()),
        (revoked.0, "Service B")
    );
    let rev = RevokedServiceCertificate::decode(&rsa_unsigned(&sequester[3])).unwrap();
    assert_eq!(rev.service_id.0, revoked.0);
    assert!(rev.timestamp > svc.timestamp);

    // Realm certificates: roles, the rotation to key 1, the realm name.
    let mut roles = Vec::new();
    let mut rotations = Vec::new();
    let mut names = Vec::new();
    for row in blobs(
        &db,
        "SELECT certificate FROM realm_certificate ORDER BY _id",
    ) {
        let serialized = unsigned(&row);
        match type_of(serialized).unwrap().as_str() {
            "realm_role_certificate" => roles.push(RoleCertificate::decode(serialized).unwrap()),
            "realm_key_rotation_certificate" => {
                rotations.push(KeyRotationCertificate::decode(serialized).unwrap())
            }
            "realm_name_certificate" => names.push(NameCertificate::decode(serialized).unwrap()),
            other => panic!("unexpected realm certificate {other}"),
        }
    }
    let role_of: Vec<(Id, Option<&str>)> = roles
        .iter()
        .map(|r| (r.user_id, r.role.as_deref()))
        .collect();
    assert_eq!(
        role_of,
        vec![
            (actors[0].0, Some("OWNER")),
            (actors[1].0, Some("CONTRIBUTOR"))
        ]
    );
    assert!(roles
        .iter()
        .all(|r| r.author == actors[0].1 && r.realm_id == realm_id));
    assert_eq!(keys.len(), 1);
    assert_eq!(rotations.len(), 1);
    assert_eq!(
        (rotations[0].key_index, rotations[0].realm_id),
        (1, realm_id)
    );
    let canary_key = derive_key(&keys[0], &CANARY_DERIVATION_ID);
    assert!(secretbox_open(&canary_key, &rotations[0].key_canary)
        .unwrap()
        .is_empty());
    assert_eq!(names.len(), 1);
    assert_eq!(names[0].key_index, 1);
    let name_key = derive_key(&keys[0], &REALM_NAME_DERIVATION_ID);
    assert_eq!(
        &secretbox_open(&name_key, &names[0].encrypted_name).unwrap()[..],
        b"the realm"
    );

    // The service's keys bundle access opens the keys bundle, which holds the realm key.
    let accesses = blobs(
        &db,
        "SELECT access FROM realm_sequester_keys_bundle_access ORDER BY _id",
    );
    assert_eq!(accesses.len(), 1, "the revoked service gets no access");
    let armored = &accesses[0];
    let prefix = b"RSAES-OAEP-SHA256-XSALSA20-POLY1305:".len();
    let ek = service_key
        .decrypt(Oaep::new::<Sha256>(), &armored[prefix..prefix + 128])
        .unwrap();
    let ek: [u8; 32] = ek.try_into().unwrap();
    let access = secretbox_open(&ek, &armored[prefix + 128..]).unwrap();
    let bundle_key = KeysBundleAccess::decode(&access).unwrap().keys_bundle_key;
    let sealed = blobs(&db, "SELECT keys_bundle FROM realm_keys_bundle");
    let bundle = secretbox_open(&bundle_key, &sealed[0]).unwrap();
    let bundle = KeysBundle::decode(unsigned(&bundle)).unwrap();
    assert_eq!((bundle.author, bundle.realm_id), (actors[0].1, realm_id));
    let bundle_keys: Vec<[u8; 32]> = bundle.keys.iter().map(|k| **k).collect();
    assert_eq!(bundle_keys, keys);

    // Manifests: the last version of each vlob matches the writer's tree.
    let mut stmt = db
        .prepare("SELECT vlob_id, blob FROM vlob_atom ORDER BY sequential_id")
        .unwrap();
    let mut last: HashMap<Id, Vec<u8>> = HashMap::new();
    for row in stmt
        .query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get(1)?)))
        .unwrap()
    {
        let (id, blob) = row.unwrap();
        last.insert(id.try_into().unwrap(), blob);
    }
    assert_eq!(last.len(), expected_folders.len() + expected_files.len());
    for (id, blob) in last {
        let signed = secretbox_open(&derive_key(&keys[0], &id), &blob).unwrap();
        match Manifest::decode(unsigned(&signed)).unwrap() {
            Manifest::Folder(f) => {
                let (parent, version, children) = &expected_folders[&id];
                assert_eq!((f.header.id, f.header.parent), (id, *parent));
                assert_eq!(f.header.version, *version);
                let got: Vec<(String, Id)> = f
                    .children
                    .iter()
                    .map(|c| (c.name.as_str().to_string(), c.id))
                    .collect();
                assert_eq!(&got, children);
            }
            Manifest::File(f) => {
                let (parent, version, size, blocks) = &expected_files[&id];
                assert_eq!((f.header.id, f.header.parent), (id, *parent));
                assert_eq!((f.header.version, f.size), (*version, *size));
                assert_eq!(f.blocksize, 512);
                assert_eq!(&f.blocks, blocks);
                assert_eq!(f.blocks.len(), 3);
            }
        }
    }
}

/// `record_tree: false` (generate-export without `--truth`, the 1,000,000-entry benchmark
/// export) changes only the ground truth, never a byte the export holds.
#[test]
fn record_tree_off_changes_only_the_ground_truth() {
    let dir = tempfile::tempdir().unwrap();
    let shape = super::scenario::Shape::SmallFiles {
        files: 40,
        folders: 4,
        min_size: 100,
        max_size: 3000,
    };
    let write = |name: &str, record_tree: bool| {
        let path = dir.path().join(name);
        let config = WriterConfig {
            authority_bits: 1024,
            threads: 1,
            blocksize: 1024,
            record_tree,
            ..WriterConfig::default()
        };
        let truth = super::scenario::generate(&path, config, &shape, &[]).unwrap();
        (path, truth)
    };
    let (with_path, with_tree) = write("with.sqlite", true);
    let (without_path, without_tree) = write("without.sqlite", false);
    let last = |t: &GroundTruth| t.checkpoints.last().unwrap().entries.len();
    assert_eq!(
        last(&with_tree),
        40 + 4 + 1,
        "files, folders and their parent"
    );
    assert_eq!(last(&without_tree), 0);
    assert_eq!(with_tree.snapshot, without_tree.snapshot);
    for sql in [
        "SELECT blob FROM vlob_atom ORDER BY sequential_id",
        "SELECT data FROM block_data ORDER BY block",
        "SELECT certificate FROM common_certificate ORDER BY _id",
    ] {
        let with = rusqlite::Connection::open(&with_path).unwrap();
        let without = rusqlite::Connection::open(&without_path).unwrap();
        let (a, b) = (blobs(&with, sql), blobs(&without, sql));
        assert!(!a.is_empty(), "{sql}");
        assert_eq!(a, b, "{sql}");
    }
}

//! Unit tests of the chain on the real fixture.
//!
//! TEST SCAFFOLDING: [`SoftwareKey`] is a software `KeyHandle` built from the published 1024-bit
//! fixture private key, so that the chain can be unit-tested without a token. The integration
//! tests (`tests/export_*.rs`) run the same chain through SoftHSM2.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use zeroize::Zeroizing;

use super::*;
use crate::parsec::manifest::Manifest;
use crate::parsec::DateTime;
use crate::token::{KeyHandle, KeyInfo, MechanismPath, Provenance, TokenDescription, TokenError};

pub(crate) struct SoftwareKey {
    key: rsa::RsaPrivateKey,
    spki: Vec<u8>,
    pub ops: AtomicU32,
}

impl SoftwareKey {
    pub fn from_fixture(name: &str) -> Self {
        let pem = std::fs::read_to_string(fixture(name)).unwrap();
        let key = rsa::RsaPrivateKey::from_pkcs8_pem(&pem).unwrap();
        let spki = key
            .to_public_key()
            .to_public_key_der()
            .unwrap()
            .as_bytes()
            .to_vec();
        SoftwareKey {
            key,
            spki,
            ops: AtomicU32::new(0),
        }
    }
}

impl KeyHandle for SoftwareKey {
    fn public_key_spki(&self) -> &[u8] {
        &self.spki
    }
    fn sign_pss_sha256(&self, _: &[u8]) -> Result<(Vec<u8>, MechanismPath), TokenError> {
        unimplemented!("test scaffolding: decryption only")
    }
    fn decrypt_oaep_sha256(
        &self,
        block: &[u8],
    ) -> Result<(Zeroizing<Vec<u8>>, MechanismPath), TokenError> {
        self.ops.fetch_add(1, Ordering::SeqCst);
        self.key
            .decrypt(rsa::Oaep::new::<sha2::Sha256>(), block)
            .map(|v| (Zeroizing::new(v), MechanismPath::NativeOaepSha256))
            .map_err(|_| TokenError::DecryptionFailed)
    }
    fn provenance(&self) -> Result<Provenance, TokenError> {
        unimplemented!()
    }
    fn token(&self) -> TokenDescription {
        TokenDescription {
            backend: "software-test-scaffolding".into(),
            ..Default::default()
        }
    }
    fn info(&self) -> Result<KeyInfo, TokenError> {
        unimplemented!()
    }
}

pub(crate) fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/parsec")
        .join(name)
}

const SERVICE1: &str = "sequester_service_1.00000000000000000000000000000001.private.pem";
const SERVICE2: &str = "sequester_service_2.00000000000000000000000000000002.private.pem";
const SERVICE3: &str = "sequester_service_3.00000000000000000000000000000003.private.pem";

fn open() -> Arc<ExportFile> {
    ExportFile::open(
        &fixture("sequestered_export.sqlite"),
        &OpenOptions::default(),
    )
    .unwrap()
}

fn t(day: u32) -> DateTime {
    DateTime::parse_rfc3339(&format!("2000-01-{day:02}T00:00:00Z")).unwrap()
}

fn listing(realm: &Realm, at: DateTime) -> Option<Vec<(String, Option<Vec<u8>>)>> {
    let root = realm.root_at(at).unwrap()?;
    let folder = root.folder()?;
    Some(
        realm
            .children_at(folder, at)
            .unwrap()
            .into_iter()
            .map(|c| {
                let content = c
                    .version
                    .file()
                    .map(|f| realm.read_range(f, 0, f.size).unwrap());
                (c.name.to_string(), content)
            })
            .collect(),
    )
}

#[test]
fn service1_chain_matches_fixture_readme() {
    let file = open();
    let key = SoftwareKey::from_fixture(SERVICE1);
    let realm = file.unlock(&key, &UnlockOptions::default()).unwrap();
    assert_eq!(realm.token_operations(), 1);
    assert_eq!(key.ops.load(Ordering::SeqCst), 1);
    assert_eq!(realm.recovery().obtained_key_indexes, vec![1, 2]);
    assert_eq!(realm.recovery().missing_key_indexes, vec![3]);
    assert_eq!(realm.service().label, "Sequester Service 1");
    assert!(realm.service().revoked.is_some());
    assert_eq!(realm.realm_name_at(t(7)).to_string(), "wksp1");
    assert!(realm.root_at(t(9)).unwrap().is_none());
    let hello = |s: &str| Some(s.as_bytes().to_vec());
    assert_eq!(
        listing(&realm, t(10)).unwrap(),
        vec![("bar.txt".into(), hello("Hello v1"))]
    );
    assert_eq!(
        listing(&realm, t(11)).unwrap(),
        vec![("bar.txt".into(), hello("Hello v1"))]
    );
    assert_eq!(
        listing(&realm, t(12)).unwrap(),
        vec![("bar2.txt".into(), hello("Hello v1"))]
    );
    assert_eq!(
        listing(&realm, t(15)).unwrap(),
        vec![("bar2.txt".into(), hello("Hello v2"))]
    );
    // 01-20: bar2.txt v3 uses key 3: shown unreadable, never replaced by v2.
    let root = realm.root_at(t(20)).unwrap().unwrap();
    let children = realm.children_at(root.folder().unwrap(), t(20)).unwrap();
    assert_eq!(children.len(), 1);
    assert_eq!(children[0].name.as_str(), "bar2.txt");
    assert!(matches!(
        children[0].version.content,
        VersionContent::Unreadable { key_index: 3 }
    ));
    // 01-21 and the snapshot: the root itself is unreadable.
    for at in [t(21), realm.snapshot()] {
        let root = realm.root_at(at).unwrap().unwrap();
        assert!(matches!(
            root.content,
            VersionContent::Unreadable { key_index: 3 }
        ));
    }
    let versions = realm.versions(&root.meta.vlob_id).unwrap();
    assert_eq!(versions.len(), 3);
    assert!(matches!(
        &*versions[0].manifest().unwrap().clone(),
        Manifest::Folder(_)
    ));
    let report = verify::verify(&realm, 2).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.versions, 6);
    assert_eq!(report.readable_versions, 4);
    assert_eq!(report.unreadable_versions, 2);
    assert_eq!(report.blocks_checked, 2);
}

#[test]
fn service2_has_no_access_and_service3_matches_nothing() {
    let file = open();
    let key2 = SoftwareKey::from_fixture(SERVICE2);
    let realm = file.unlock(&key2, &UnlockOptions::default()).unwrap();
    assert_eq!(realm.token_operations(), 0);
    assert!(realm.readable_key_indexes().is_empty());
    assert!(matches!(
        realm.root_at(realm.snapshot()).unwrap().unwrap().content,
        VersionContent::Unreadable { .. }
    ));
    let key3 = SoftwareKey::from_fixture(SERVICE3);
    let err = file.unlock(&key3, &UnlockOptions::default()).err().unwrap();
    assert!(
        err.to_string()
            .contains("matches no service of this export"),
        "{err}"
    );
    assert_eq!(key3.ops.load(Ordering::SeqCst), 0);
}

#[test]
fn non_sequestered_export_is_said_clearly() {
    let file = ExportFile::open(
        &fixture("workspace_history_export.sqlite"),
        &OpenOptions::default(),
    )
    .unwrap();
    assert!(file.sequester_topic().unwrap().is_none());
    let key = SoftwareKey::from_fixture(SERVICE1);
    let err = file.unlock(&key, &UnlockOptions::default()).err().unwrap();
    assert!(matches!(err, ExportError::NotSequestered), "{err}");
}

#[test]
fn realm_is_send_sync_and_reads_in_parallel() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Realm>();
    assert_send_sync::<ExportFile>();
    let file = open();
    let key = SoftwareKey::from_fixture(SERVICE1);
    let realm = Arc::new(file.unlock(&key, &UnlockOptions::default()).unwrap());
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let realm = realm.clone();
            std::thread::spawn(move || {
                let at = if i % 2 == 0 { t(10) } else { t(15) };
                let v = realm
                    .resolve(if i % 2 == 0 { "/bar.txt" } else { "/bar2.txt" }, at)
                    .unwrap();
                let f = v.file().unwrap();
                realm.read_range(f, 2, 100).unwrap()
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let expected: &[u8] = if i % 2 == 0 { b"llo v1" } else { b"llo v2" };
        assert_eq!(h.join().unwrap(), expected);
    }
}

#[test]
fn extract_of_a_generated_export_with_multi_block_and_sparse_files() {
    use crate::export::writer::content::Content;
    use crate::export::writer::{ExportWriter, WriterConfig};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("generated.sqlite");
    let key = SoftwareKey::from_fixture(SERVICE1);
    let config = WriterConfig {
        blocksize: 512,
        authority_bits: 1024,
        ..WriterConfig::default()
    };
    let blocksize = config.blocksize;
    let mut w = ExportWriter::create(&path, config).unwrap();
    w.add_service("svc", key.public_key_spki()).unwrap();
    w.rotate_key().unwrap();
    let contents = [
        (
            "/big.bin",
            Content::Random {
                size: 40_000,
                seed: 3,
            },
        ),
        (
            "/a/sparse.bin",
            Content::Sparse {
                size: 20_000,
                seed: 4,
                hole_every: 3,
            },
        ),
        ("/a/b/small.txt", Content::bytes(b"small".to_vec())),
        ("/a/b/empty", Content::bytes(Vec::new())),
    ];
    for (p, c) in &contents {
        w.write_file(p, c.clone()).unwrap();
    }
    let at = w.checkpoint("all").unwrap();
    w.finish().unwrap();

    let file = ExportFile::open(&path, &OpenOptions::default()).unwrap();
    let realm = file.unlock(&key, &UnlockOptions::default()).unwrap();
    assert_eq!(realm.token_operations(), 1);
    let dest = dir.path().join("out");
    let options = extract::ExtractOptions {
        at,
        path: "/".into(),
        threads: 2,
        cancel: None,
        file_mode: extract::PRIVATE_FILE_MODE,
        dir_mode: extract::PRIVATE_DIR_MODE,
    };
    let report = extract::extract(&realm, &dest, &options, &extract::NoProgress).unwrap();
    assert!(report.unreadable.is_empty(), "{:?}", report.unreadable);
    assert_eq!(report.files.len(), contents.len());
    for (p, c) in &contents {
        let expected = c.to_vec(blocksize);
        let on_disk = std::fs::read(dest.join(p.trim_start_matches('/'))).unwrap();
        assert_eq!(on_disk, expected, "{p}");
        let recorded = report.files.iter().find(|f| f.path == *p).unwrap();
        assert_eq!(recorded.sha256, crate::crypto::sha256_hex(&expected), "{p}");
        // Random access across block boundaries without reading the whole file.
        let v = realm.resolve(p, at).unwrap();
        let f = v.file().unwrap();
        for (offset, len) in [
            (0u64, 1u64),
            (500, 30),
            (511, 2),
            (1000, 5000),
            (19_990, 100),
        ] {
            let got = realm.read_range(f, offset, len).unwrap();
            let start = (offset as usize).min(expected.len());
            let end = ((offset + len) as usize).min(expected.len());
            assert_eq!(got, &expected[start..end], "{p} @{offset}+{len}");
        }
    }
}

#[test]
fn open_and_unlock_never_read_manifests_or_blocks() {
    // Every vlob and block payload is destroyed: opening and unlocking must still succeed and
    // report no problem, proving they read neither (lazy open, constant in the export size).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lazy.sqlite");
    std::fs::copy(fixture("sequestered_export.sqlite"), &path).unwrap();
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&path, perms).unwrap();
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("UPDATE vlob_atom SET blob = x'00'; UPDATE block_data SET data = x'00';")
            .unwrap();
    }
    let file = ExportFile::open(&path, &OpenOptions::default()).unwrap();
    let key = SoftwareKey::from_fixture(SERVICE1);
    let realm = file.unlock(&key, &UnlockOptions::default()).unwrap();
    assert!(realm.recovery().problems.is_empty());
    assert_eq!(realm.recovery().obtained_key_indexes, vec![1, 2]);
    // The damage shows only when content is read.
    let root = realm.root_at(t(15)).unwrap().unwrap();
    assert!(matches!(root.content, VersionContent::Invalid { .. }));
}

//! Unit tests of the chain on the real fixture.
//!
//! TEST SCAFFOLDING: [`SoftwareKey`] is a software `KeyHandle` built from the published 1024-bit
//! fixture private key, so that the chain can be unit-tested without a token. The integration
//! tests (`tests/export/`) run the same chain through SoftHSM2.

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
    pub(crate) fn from_fixture(name: &str) -> Self {
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
        VersionContent::Unreadable { key_index: 3, .. }
    ));
    // 01-21 and the snapshot: the root itself is unreadable.
    for at in [t(21), realm.snapshot()] {
        let root = realm.root_at(at).unwrap().unwrap();
        assert!(matches!(
            root.content,
            VersionContent::Unreadable { key_index: 3, .. }
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

/// A writer for a small generated export at `dir/name` (512-byte blocks, 1024-bit test
/// authority, `users` users or the writer's default) with one service for the fixture's service 1 key and one key
/// rotation done; returns it with that key.
fn small_writer(
    dir: &std::path::Path,
    name: &str,
    users: Option<usize>,
) -> (sequester_export_writer::ExportWriter, SoftwareKey) {
    let key = SoftwareKey::from_fixture(SERVICE1);
    let default = sequester_export_writer::WriterConfig::default();
    let config = sequester_export_writer::WriterConfig {
        blocksize: 512,
        authority_bits: 1024,
        users: users.unwrap_or(default.users),
        ..default
    };
    let mut w = sequester_export_writer::ExportWriter::create(&dir.join(name), config).unwrap();
    w.add_service("svc", key.public_key_spki()).unwrap();
    w.rotate_key().unwrap();
    (w, key)
}

/// A block failing verification in the third run of a multi-run file, and in a one-run file:
/// both files are removed and reported, the others are byte-identical, and the folder that held
/// them keeps its manifest's mtime (set once every child is finished, removals included).
#[test]
fn extract_removes_files_whose_blocks_fail_in_any_run() {
    use sequester_export_writer::Content;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("generated.sqlite");
    let (mut w, key) = small_writer(dir.path(), "generated.sqlite", None);
    let contents = [
        ("/d/big.bin", 40_000u64, 1u64),
        ("/d/one.bin", 300, 2),
        ("/d/ok.bin", 2000, 3),
        ("/d/ok-big.bin", 30_000, 4),
    ];
    for (p, size, seed) in contents {
        w.write_file(p, Content::Random { size, seed }).unwrap();
    }
    // The writer links its own copy of this library: its instants cross as microseconds.
    let at = DateTime(w.checkpoint("all").unwrap().0);
    w.finish().unwrap();
    let block_of = |p: &str, i: usize| {
        let file = ExportFile::open(&path, &OpenOptions::default()).unwrap();
        let realm = file.unlock(&key, &UnlockOptions::default()).unwrap();
        realm.resolve(p, at).unwrap().file().unwrap().blocks[i].id
    };
    let (big_block, one_block) = (block_of("/d/big.bin", 20), block_of("/d/one.bin", 0));
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        for id in [big_block, one_block] {
            let n = conn
                .execute(
                    "UPDATE block_data SET data = CAST(substr(data, 1, 50) || X'FF' || \
                     substr(data, 52) AS BLOB) WHERE block = \
                     (SELECT sequential_id FROM block WHERE block_id = ?1)",
                    [&id[..]],
                )
                .unwrap();
            assert_eq!(n, 1);
        }
    }
    let file = ExportFile::open(&path, &OpenOptions::default()).unwrap();
    let realm = file.unlock(&key, &UnlockOptions::default()).unwrap();
    let dest = dir.path().join("out");
    let mut options = extract::ExtractOptions::new(at, "/");
    options.threads = 2;
    let report = extract::extract(&realm, &dest, &options, &extract::NoProgress).unwrap();
    let failed: Vec<&str> = report.unreadable.iter().map(|u| u.path.as_str()).collect();
    assert_eq!(failed, ["/d/big.bin", "/d/one.bin"]);
    assert!(report
        .unreadable
        .iter()
        .all(|u| u.reason.starts_with("integrity error") && u.kind == "file"));
    assert!(!dest.join("d/big.bin").exists() && !dest.join("d/one.bin").exists());
    for (p, size, seed) in [contents[2], contents[3]] {
        let expected = Content::Random { size, seed }.to_vec(512);
        let on_disk = std::fs::read(dest.join(p.trim_start_matches('/'))).unwrap();
        assert_eq!(on_disk, expected, "{p}");
        let recorded = report.files.iter().find(|f| f.path == p).unwrap();
        assert_eq!(recorded.sha256, crate::crypto::sha256_hex(&expected), "{p}");
    }
    let updated = realm
        .resolve("/d", at)
        .unwrap()
        .folder()
        .unwrap()
        .header
        .updated;
    let mtime = std::fs::metadata(dest.join("d"))
        .unwrap()
        .modified()
        .unwrap();
    let us = mtime
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    assert_eq!(us, updated.as_micros(), "folder mtime after the removals");
}

#[test]
fn extract_of_a_generated_export_with_multi_block_and_sparse_files() {
    use sequester_export_writer::Content;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("generated.sqlite");
    let (mut w, key) = small_writer(dir.path(), "generated.sqlite", None);
    let blocksize = 512;
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
    // The writer links its own copy of this library: its instants cross as microseconds.
    let at = DateTime(w.checkpoint("all").unwrap().0);
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
        // Dated (through the handle that wrote it) and private; the multi-run `big.bin` was
        // hashed run by run, never read back.
        let meta = std::fs::metadata(dest.join(p.trim_start_matches('/'))).unwrap();
        let us = meta
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64;
        assert_eq!(us, recorded.updated.as_micros(), "{p} mtime");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o077, 0, "{p} mode");
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
    // Folder mtimes are the manifests' (set when each subtree is done, after its children).
    for folder in ["/a", "/a/b"] {
        let v = realm.resolve(folder, at).unwrap();
        let updated = v.folder().unwrap().header.updated;
        let mtime = std::fs::metadata(dest.join(folder.trim_start_matches('/')))
            .unwrap()
            .modified()
            .unwrap();
        let us = mtime
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64;
        assert_eq!(us, updated.as_micros(), "{folder}");
    }

    // The streamed custody record: same entries as the in-memory report, in walk order, one
    // valid JSON document, and nothing else left beside it (the spools are unnamed).
    let out = dir.path().join("streamed");
    std::fs::create_dir(&out).unwrap();
    let dest2 = out.join("tree");
    let mut writer = extract::CustodyRecordWriter::new(&out).unwrap();
    let counts =
        extract::extract_to(&realm, &dest2, &options, &extract::NoProgress, &mut writer).unwrap();
    assert_eq!(counts.files, contents.len() as u64);
    assert_eq!(counts.folders, report.folders.len() as u64);
    assert_eq!(counts.unreadable, 0);
    assert_eq!(counts.bytes, report.bytes);
    let header = extract::CustodyRecord {
        tool: "t".into(),
        tool_version: "0".into(),
        created_at: at,
        export_file: path.display().to_string(),
        export_sha256: "00".into(),
        export_size: 1,
        organization_id: "Org".into(),
        realm_id: realm.realm_id(),
        realm_name: "r".into(),
        trust_anchor: crate::export::anchor::TrustReport {
            organization_id: "Org".into(),
            root_verify_key: "00".into(),
            root_key_fingerprint: "00".into(),
            anchored: false,
            anchored_by: vec![],
            pin_file: None,
        },
        snapshot_timestamp: at,
        export_complete: true,
        time_of_interest: at,
        extracted_path: "/".into(),
        destination: dest2.display().to_string(),
        service_id: [0; 16],
        service_label: "svc".into(),
        service_revoked: None,
        key_fingerprint_sha256: "ff".into(),
        token: realm.token().clone(),
        token_operations: 1,
        realm_key_indexes_obtained: vec![1, 2],
        realm_key_indexes_missing: vec![],
        files_extracted: counts.files,
        bytes_extracted: counts.bytes,
    };
    let record_path = out.join("tree.custody.json");
    writer.publish(&record_path, &header, &[]).unwrap();
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    let paths = |key: &str, field: Option<&str>| -> Vec<String> {
        record[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| match field {
                Some(f) => v[f].as_str().unwrap().to_string(),
                None => v.as_str().unwrap().to_string(),
            })
            .collect()
    };
    assert_eq!(
        paths("files", Some("path")),
        ["/a/b/empty", "/a/b/small.txt", "/a/sparse.bin", "/big.bin"],
        "walk order"
    );
    assert_eq!(paths("folders", None), ["/", "/a", "/a/b"]);
    assert_eq!(record["unreadable"], serde_json::json!([]));
    assert_eq!(record["problems"], serde_json::json!([]));
    assert_eq!(record["files_extracted"], 4);
    assert_eq!(
        record["realm_key_indexes_obtained"],
        serde_json::json!([1, 2])
    );
    for f in record["files"].as_array().unwrap() {
        let mine = report.files.iter().find(|r| r.path == f["path"]).unwrap();
        assert_eq!(f["sha256"], mine.sha256.as_str());
        assert_eq!(f["size"], mine.size);
    }
    let mut left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["tree", "tree.custody.json"]);
    // Publishing never overwrites.
    let again = extract::CustodyRecordWriter::new(&out).unwrap();
    assert!(again.publish(&record_path, &header, &[]).is_err());
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

// ---- verification like a careful Parsec client: signers, user revocation, realm roles ----

/// A generated export (real SQLite) read with the fixture's service 1 key: alice (owner) writes
/// `/bob.txt` and `/carol.txt`, bob (contributor) overwrites `/bob.txt`; then `tamper` runs
/// (certificate events, overwrites), and the last sync is the snapshot.
fn careful_client_export(
    dir: &std::path::Path,
    tamper: impl FnOnce(&mut sequester_export_writer::ExportWriter),
) -> (Realm, DateTime) {
    use sequester_export_writer::Content;
    let path = dir.join("careful.sqlite");
    let (mut w, key) = small_writer(dir, "careful.sqlite", Some(3));
    w.write_file("/bob.txt", Content::bytes(b"by alice".to_vec()))
        .unwrap();
    w.write_file("/carol.txt", Content::bytes(b"by alice".to_vec()))
        .unwrap();
    w.sync().unwrap();
    w.set_author(1);
    w.write_file("/bob.txt", Content::bytes(b"by bob".to_vec()))
        .unwrap();
    let before = DateTime(w.checkpoint("before").unwrap().0);
    tamper(&mut w);
    w.sync().unwrap();
    w.finish().unwrap();
    let file = ExportFile::open(&path, &OpenOptions::default()).unwrap();
    (
        file.unlock(&key, &UnlockOptions::default()).unwrap(),
        before,
    )
}

fn invalid_reason(realm: &Realm, path: &str) -> Option<String> {
    match realm.resolve(path, realm.snapshot()).unwrap().content {
        VersionContent::Invalid { reason } => Some(reason),
        _ => None,
    }
}

#[test]
fn a_manifest_by_a_revoked_user_after_revocation_is_invalid() {
    use sequester_export_writer::Content;
    let dir = tempfile::tempdir().unwrap();
    let (realm, before) = careful_client_export(dir.path(), |w| {
        w.revoke_user(1).unwrap();
        w.set_author(1);
        w.write_file("/bob.txt", Content::bytes(b"after revocation".to_vec()))
            .unwrap();
    });
    let reason = invalid_reason(&realm, "/bob.txt").expect("post-revocation version invalid");
    assert!(reason.contains("revoked"), "{reason}");
    // Not replaced by the older version, and the version written before revocation still reads.
    let old = realm.resolve("/bob.txt", before).unwrap();
    let f = old.file().expect("pre-revocation version readable");
    assert_eq!(realm.read_range(f, 0, f.size).unwrap(), b"by bob");
    let report = verify::verify(&realm, 2).unwrap();
    assert_eq!(report.invalid_versions, 1, "{:?}", report.problems);
    assert!(report
        .problems
        .iter()
        .any(|p| p.kind == "manifest" && p.reason.contains("revoked")));
}

#[test]
fn a_reader_role_author_or_a_user_without_role_cannot_write() {
    use sequester_export_writer::Content;
    let dir = tempfile::tempdir().unwrap();
    let (realm, _) = careful_client_export(dir.path(), |w| {
        w.set_realm_role(2, Some("READER")).unwrap();
        w.set_realm_role(1, None).unwrap();
        w.set_author(2);
        w.write_file("/carol.txt", Content::bytes(b"by a reader".to_vec()))
            .unwrap();
        w.sync().unwrap();
        w.set_author(1);
        w.write_file("/bob.txt", Content::bytes(b"by a non-member".to_vec()))
            .unwrap();
    });
    let carol = invalid_reason(&realm, "/carol.txt").expect("READER's version invalid");
    assert!(
        carol.contains("had role READER, which cannot write"),
        "{carol}"
    );
    let bob = invalid_reason(&realm, "/bob.txt").expect("non-member's version invalid");
    assert!(bob.contains("had no role"), "{bob}");
    let report = verify::verify(&realm, 2).unwrap();
    assert_eq!(report.invalid_versions, 2, "{:?}", report.problems);
    // The role certificates themselves were accepted (signed by the owner).
    assert!(report.problems.iter().all(|p| p.kind == "manifest"));
}

#[test]
fn a_role_given_by_a_non_owner_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let (realm, _) = careful_client_export(dir.path(), |_| {});
    // Bob (CONTRIBUTOR) cannot give roles: a certificate he signs is a reported problem.
    let certs = realm.realm_certificates();
    assert!(certs.problems.is_empty(), "{:?}", certs.problems);
    let org = realm.organization();
    let bob = org
        .devices
        .values()
        .find(|d| d.label.as_deref() == Some("bob's machine"))
        .unwrap()
        .clone();
    let grant = crate::parsec::realm::RoleCertificate {
        author: bob.device_id,
        timestamp: realm.snapshot(),
        realm_id: realm.realm_id(),
        user_id: bob.user_id,
        role: Some("OWNER".into()),
    };
    let mut copy = certs.clone();
    let before = copy.roles.len();
    assert!(copy.check_role_grant_for_tests(org, &bob, &grant).is_err());
    assert_eq!(copy.roles.len(), before);
    copy.roles.clear();
    // The first certificate must be the creator making itself OWNER.
    let mut self_owner = grant.clone();
    self_owner.role = Some("OWNER".into());
    assert!(copy
        .check_role_grant_for_tests(org, &bob, &self_owner)
        .is_ok());
    self_owner.role = Some("CONTRIBUTOR".into());
    assert!(copy
        .check_role_grant_for_tests(org, &bob, &self_owner)
        .is_err());
}

#[test]
fn self_promotion_to_owner_only_when_no_active_owner_and_highest_role() {
    let dir = tempfile::tempdir().unwrap();
    let (realm, _) = careful_client_export(dir.path(), |w| {
        // Alice (the only OWNER) revoked: bob and carol are CONTRIBUTORs, carol then READER.
        w.set_realm_role(2, Some("READER")).unwrap();
        w.revoke_user(0).unwrap();
    });
    let org = realm.organization();
    let device = |label: &str| {
        org.devices
            .values()
            .find(|d| d.label.as_deref() == Some(label))
            .unwrap()
            .clone()
    };
    let (bob, carol) = (device("bob's machine"), device("carol's machine"));
    let promote = |who: &Device| crate::parsec::realm::RoleCertificate {
        author: who.device_id,
        timestamp: realm.snapshot(),
        realm_id: realm.realm_id(),
        user_id: who.user_id,
        role: Some("OWNER".into()),
    };
    let certs = realm.realm_certificates();
    assert!(certs.problems.is_empty(), "{:?}", certs.problems);
    // Bob holds the highest active role (CONTRIBUTOR): allowed; carol (READER) is not.
    certs
        .check_role_grant_for_tests(org, &bob, &promote(&bob))
        .unwrap();
    let err = certs
        .check_role_grant_for_tests(org, &carol, &promote(&carol))
        .unwrap_err();
    assert!(err.contains("not the highest"), "{err}");
    // While alice was active (before her revocation), nobody could self-promote.
    let mut early = promote(&bob);
    let alice_revoked = org
        .users
        .values()
        .find_map(|u| u.revoked)
        .expect("alice revoked");
    early.timestamp = DateTime(alice_revoked.0 - 1);
    let err = certs
        .check_role_grant_for_tests(org, &bob, &early)
        .unwrap_err();
    assert!(err.contains("an active user was OWNER"), "{err}");
}

#[test]
fn a_second_certificate_with_a_known_id_is_reported_not_a_replacement() {
    let dir = tempfile::tempdir().unwrap();
    let (realm, _) = careful_client_export(dir.path(), |w| {
        w.duplicate_device_certificate(1).unwrap();
    });
    let problems = &realm.organization().problems;
    assert!(
        problems
            .iter()
            .any(|p| p.contains("a second device_certificate")),
        "{problems:?}"
    );
    // Bob's genuine version still verifies with the first key (a replacement would break it).
    let v = realm.resolve("/bob.txt", realm.snapshot()).unwrap();
    let f = v.file().expect("bob's genuine version readable");
    assert_eq!(realm.read_range(f, 0, f.size).unwrap(), b"by bob");
    let report = verify::verify(&realm, 2).unwrap();
    assert!(!report.ok());
    assert_eq!(report.invalid_versions, 0);
}

#[test]
fn the_manifest_cache_is_keyed_by_the_whole_row_and_a_hit_skips_no_check() {
    let dir = tempfile::tempdir().unwrap();
    let (realm, _) = careful_client_export(dir.path(), |_| {});
    let v = realm.resolve("/bob.txt", realm.snapshot()).unwrap();
    assert!(v.file().is_some());
    let cached = v.meta.clone();
    // Same sequential_id (the old cache key), any other column changed: never a cache hit.
    let mut other_id = cached.clone();
    other_id.vlob_id = realm.realm_id();
    let mut other_version = cached.clone();
    other_version.version += 7;
    let mut other_time = cached.clone();
    other_time.timestamp = DateTime(cached.timestamp.0 + 1);
    let alice = realm
        .organization()
        .devices
        .values()
        .find(|d| d.label.as_deref() == Some("alice's machine"))
        .unwrap()
        .device_id;
    let mut other_author = cached.clone();
    other_author.author = alice;
    for meta in [other_id, other_version, other_time, other_author] {
        let loaded = realm.load_version(meta.clone()).unwrap();
        assert!(
            matches!(loaded.content, VersionContent::Invalid { .. }),
            "{meta:?} was accepted"
        );
    }
    // The genuine row still hits.
    assert!(realm.load_version(cached).unwrap().file().is_some());
}

#[test]
fn json_object_head_leaves_the_object_open_for_streamed_members() {
    let head = super::json_object_head(&serde_json::json!({"a": 1})).unwrap();
    let whole: serde_json::Value =
        serde_json::from_str(&format!("{head},\n  \"items\": [1, 2]\n}}")).unwrap();
    assert_eq!(whole, serde_json::json!({"a": 1, "items": [1, 2]}));
    assert!(super::json_object_head(&[1, 2]).is_err());
    assert!(super::json_object_head(&"}").is_err());
}

//! Exports written by our writer (`sequester_export_writer`, in tests/export-writer): same format
//! as the real exports, and what the writer put in is what a reader gets out, at several instants.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use rsa::{Oaep, RsaPrivateKey};
use sequester_custody::crypto::symmetric::{
    derive_key, ed25519_verify, secretbox_open, CANARY_DERIVATION_ID, REALM_NAME_DERIVATION_ID,
};
use sequester_custody::parsec::envelope::unwrap;
use sequester_custody::parsec::msgpack::{as_uuid, decode, Map};
use sequester_export_writer::scenario::{self, ServiceInput, Shape};
use sequester_export_writer::{Content, EntryKind, ExportWriter, GroundTruth, WriterConfig};
use sha2::{Digest, Sha256};

fn small_config(seed: u64) -> WriterConfig {
    WriterConfig {
        blocksize: 4096,
        seed,
        authority_bits: 1024,
        ..WriterConfig::default()
    }
}

/// Tables, columns (name, type, not-null, default, primary key), indexes and foreign keys.
fn schema_facts(path: &Path) -> Vec<String> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut facts = Vec::new();
    let tables: Vec<(String, String, String)> = conn
        .prepare("SELECT type, name, COALESCE(sql, '') FROM sqlite_master ORDER BY name")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (kind, name, sql) in &tables {
        facts.push(format!("{kind} {name}: {}", normalize_sql(sql)));
        if kind != "table" {
            continue;
        }
        for pragma in ["table_info", "index_list", "foreign_key_list"] {
            let mut stmt = conn.prepare(&format!("PRAGMA {pragma}({name})")).unwrap();
            let n = stmt.column_count();
            let rows: Vec<String> = stmt
                .query_map([], |r| {
                    Ok((0..n)
                        .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                        .collect::<Vec<_>>()
                        .join("|"))
                })
                .unwrap()
                .map(Result::unwrap)
                .collect();
            facts.push(format!("{pragma}({name}) = {rows:?}"));
        }
    }
    facts
}

/// SQL without comments and with whitespace collapsed.
fn normalize_sql(sql: &str) -> String {
    let no_comments: String = sql
        .lines()
        .map(|l| l.split("--").next().unwrap())
        .collect::<Vec<_>>()
        .join(" ");
    no_comments
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace("( ", "(")
        .replace(" )", ")")
        .replace(" ,", ",")
}

#[test]
fn generated_schema_equals_the_real_export_schema() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gen.sqlite");
    let w = ExportWriter::create(&out, small_config(3)).unwrap();
    w.finish().unwrap();
    let real = schema_facts(&common::fixture("sequestered_export.sqlite"));
    let ours = schema_facts(&out);
    assert_eq!(ours, real);
    // Sanity: the facts really describe the ten tables.
    assert!(
        real.iter().filter(|f| f.starts_with("table ")).count() == 10,
        "{real:#?}"
    );
}

// ---- an independent walk written from docs/formats.md §5.4 (cross-checks the writer by itself)
// ----

struct SpecWalk {
    conn: rusqlite::Connection,
    realm: [u8; 16],
    devices: BTreeMap<[u8; 16], [u8; 32]>,
    keys: BTreeMap<u64, [u8; 32]>,
    oaep_ops: usize,
}

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Folder,
    File { size: u64, sha256: String },
    Unreadable,
}

impl SpecWalk {
    fn open(path: &Path, service_key: &RsaPrivateKey) -> SpecWalk {
        let conn =
            rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        let (realm, root): (Vec<u8>, Vec<u8>) = conn
            .query_row(
                "SELECT realm_id, root_verify_key FROM info WHERE magic = 87948 AND version = 1 \
                 AND certificates_export_done AND vlobs_export_done \
                 AND blocks_metadata_export_done AND blocks_data_export_done",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let realm: [u8; 16] = realm.try_into().unwrap();
        let root: [u8; 32] = root.try_into().unwrap();
        let mut devices = BTreeMap::new();
        let certs: Vec<Vec<u8>> = conn
            .prepare("SELECT certificate FROM common_certificate ORDER BY _id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for c in certs {
            let msg = unwrap(&c[64..]).unwrap();
            let v = decode(&msg).unwrap();
            let m = Map::new(&v).unwrap();
            if m.type_name().unwrap() != "device_certificate" {
                continue;
            }
            let signer = match m.nullable_uuid("author").unwrap() {
                None => root,
                Some(a) => devices[&a],
            };
            ed25519_verify(&signer, &c).expect("device certificate signature");
            devices.insert(m.uuid("device_id").unwrap(), m.bin32("verify_key").unwrap());
        }
        // Service id: the service certificate carrying this public key.
        let our_spki = common::spki_der(service_key);
        let k = our_spki_len(service_key);
        let seq: Vec<Vec<u8>> = conn
            .prepare("SELECT certificate FROM sequester_certificate WHERE _id > 0 ORDER BY _id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let mut service = None;
        for c in seq {
            let colon = c.iter().position(|&b| b == b':').unwrap();
            assert_eq!(&c[..colon], b"RSASSA-PSS-SHA256");
            // Authority keys in these tests are 1024-bit: k = 128.
            let v = decode(&unwrap(&c[colon + 1 + 128..]).unwrap()).ok();
            if let Some(v) = v {
                let m = Map::new(&v).unwrap();
                if m.type_name().unwrap() == "sequester_service_certificate"
                    && m.bin("encryption_key_der").unwrap() == our_spki.as_slice()
                {
                    service = Some(m.uuid("service_id").unwrap());
                }
            }
        }
        // Canaries.
        let mut canaries = BTreeMap::new();
        let realm_certs: Vec<Vec<u8>> = conn
            .prepare("SELECT certificate FROM realm_certificate ORDER BY _id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for c in &realm_certs {
            let v = decode(&unwrap(&c[64..]).unwrap()).unwrap();
            let m = Map::new(&v).unwrap();
            ed25519_verify(&devices[&m.uuid("author").unwrap()], c).unwrap();
            if m.type_name().unwrap() == "realm_key_rotation_certificate" {
                canaries.insert(
                    m.uint("key_index").unwrap(),
                    m.bin("key_canary").unwrap().to_vec(),
                );
            }
        }
        let mut walk = SpecWalk {
            conn,
            realm,
            devices,
            keys: BTreeMap::new(),
            oaep_ops: 0,
        };
        let Some(service) = service else { return walk };
        let mut remaining = canaries;
        while let Some((&i, _)) = remaining.iter().next_back() {
            let access: Option<Vec<u8>> = walk
                .conn
                .query_row(
                    "SELECT access FROM realm_sequester_keys_bundle_access \
                     WHERE key_index = ?1 AND sequester_service_id = ?2",
                    rusqlite::params![i as i64, &service[..]],
                    |r| r.get(0),
                )
                .ok();
            if let Some(access) = access {
                let name = b"RSAES-OAEP-SHA256-XSALSA20-POLY1305:";
                assert!(access.starts_with(name));
                let block = &access[name.len()..name.len() + k];
                walk.oaep_ops += 1;
                let ek = service_key.decrypt(Oaep::new::<Sha256>(), block).unwrap();
                let ek: [u8; 32] = ek.try_into().unwrap();
                let clear = secretbox_open(&ek, &access[name.len() + k..]).unwrap();
                let v = decode(&unwrap(&clear).unwrap()).unwrap();
                let bundle_key = Map::new(&v).unwrap().bin32("keys_bundle_key").unwrap();
                let sealed: Vec<u8> = walk
                    .conn
                    .query_row(
                        "SELECT keys_bundle FROM realm_keys_bundle WHERE key_index = ?1",
                        [i as i64],
                        |r| r.get(0),
                    )
                    .unwrap();
                let signed = secretbox_open(&bundle_key, &sealed).unwrap();
                let v = decode(&unwrap(&signed[64..]).unwrap()).unwrap();
                let m = Map::new(&v).unwrap();
                ed25519_verify(&walk.devices[&m.uuid("author").unwrap()], &signed).unwrap();
                assert_eq!(m.uuid("realm_id").unwrap(), walk.realm);
                let keys = m.array("keys").unwrap();
                assert_eq!(keys.len() as u64, i);
                for (j, kd) in keys.iter().enumerate() {
                    let j = j as u64 + 1;
                    let kd: [u8; 32] = kd.as_slice().unwrap().try_into().unwrap();
                    if let Some(canary) = remaining.get(&j) {
                        secretbox_open(&derive_key(&kd, &CANARY_DERIVATION_ID), canary)
                            .expect("canary");
                        walk.keys.insert(j, kd);
                        remaining.remove(&j);
                    }
                }
            }
            remaining.remove(&i);
        }
        walk
    }

    fn realm_name(&self) -> Option<String> {
        let certs: Vec<Vec<u8>> = self
            .conn
            .prepare("SELECT certificate FROM realm_certificate ORDER BY _id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let mut name = None;
        for c in certs {
            let v = decode(&unwrap(&c[64..]).unwrap()).unwrap();
            let m = Map::new(&v).unwrap();
            if m.type_name().unwrap() == "realm_name_certificate" {
                let kd = self.keys.get(&m.uint("key_index").unwrap())?;
                let clear = secretbox_open(
                    &derive_key(kd, &REALM_NAME_DERIVATION_ID),
                    m.bin("encrypted_name").unwrap(),
                )
                .unwrap();
                name = Some(String::from_utf8(clear.to_vec()).unwrap());
            }
        }
        name
    }

    /// The manifest of `id` at `t`: None = absent, Some(None) = unreadable.
    fn manifest(&self, id: &[u8; 16], t: i64) -> Option<Option<rmpv::Value>> {
        let row: (Vec<u8>, i64, i64, i64, Vec<u8>) = self
            .conn
            .query_row(
                "SELECT author, timestamp, version, key_index, blob FROM vlob_atom \
                 WHERE vlob_id = ?1 AND timestamp <= ?2 ORDER BY timestamp DESC LIMIT 1",
                rusqlite::params![&id[..], t],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .ok()?;
        let (author, ts, version, key_index, blob) = row;
        let Some(kd) = self.keys.get(&(key_index as u64)) else {
            return Some(None);
        };
        let signed = secretbox_open(&derive_key(kd, id), &blob).unwrap();
        let author: [u8; 16] = author.try_into().unwrap();
        ed25519_verify(&self.devices[&author], &signed).unwrap();
        let v = decode(&unwrap(&signed[64..]).unwrap()).unwrap();
        {
            let m = Map::new(&v).unwrap();
            assert_eq!(m.uuid("id").unwrap(), *id);
            assert_eq!(m.uuid("author").unwrap(), author);
            assert_eq!(m.uint("version").unwrap(), version as u64);
            assert_eq!(m.datetime("timestamp").unwrap().0, ts);
        }
        Some(Some(v))
    }

    fn content(&self, m: &Map) -> Option<Vec<u8>> {
        let size = m.uint("size").unwrap();
        let blocksize = m.uint("blocksize").unwrap();
        let mut out = vec![0u8; size as usize];
        let mut prev_end = 0;
        for b in m.array("blocks").unwrap() {
            let b = Map::new(b).unwrap();
            let id = b.uuid("id").unwrap();
            let offset = b.uint("offset").unwrap();
            let len = b.uint("size").unwrap();
            assert!(offset >= prev_end && len > 0);
            assert_eq!(offset / blocksize, (offset + len - 1) / blocksize);
            prev_end = offset + len;
            let (key_index, data): (i64, Vec<u8>) = self
                .conn
                .query_row(
                    "SELECT block.key_index, block_data.data FROM block LEFT JOIN block_data \
                     ON block.sequential_id = block_data.block WHERE block.block_id = ?1",
                    [&id[..]],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            let kd = self.keys.get(&(key_index as u64))?;
            let clear = secretbox_open(&derive_key(kd, &id), &data).unwrap();
            assert_eq!(clear.len() as u64, len);
            assert_eq!(
                Sha256::digest(&clear[..]).as_slice(),
                b.bin("digest").unwrap()
            );
            out[offset as usize..(offset + len) as usize].copy_from_slice(&clear);
        }
        assert!(prev_end <= size);
        Some(out)
    }

    /// Every entry visible at `t`: path -> what it is. None if the root is unreadable.
    fn tree(&self, t: i64) -> Option<BTreeMap<String, Seen>> {
        let root = self.manifest(&self.realm, t)??;
        let mut out = BTreeMap::new();
        let mut stack = vec![(String::new(), root, self.realm)];
        while let Some((path, folder, folder_id)) = stack.pop() {
            let m = Map::new(&folder).unwrap();
            for (name, child) in m.map("children").unwrap().entries() {
                let name = name.as_str().unwrap();
                let child = as_uuid(child, "child").unwrap();
                let child_path = format!("{path}/{name}");
                let Some(manifest) = self.manifest(&child, t) else {
                    continue;
                };
                let Some(v) = manifest else {
                    out.insert(child_path, Seen::Unreadable);
                    continue;
                };
                let cm = Map::new(&v).unwrap();
                if cm.uuid("parent").unwrap() != folder_id {
                    continue;
                }
                if cm.type_name().unwrap() == "folder_manifest" {
                    out.insert(child_path.clone(), Seen::Folder);
                    stack.push((child_path, v.clone(), child));
                } else {
                    let seen = match self.content(&cm) {
                        Some(data) => Seen::File {
                            size: data.len() as u64,
                            sha256: hex::encode(Sha256::digest(&data)),
                        },
                        None => Seen::Unreadable,
                    };
                    out.insert(child_path, seen);
                }
            }
        }
        Some(out)
    }
}

fn our_spki_len(key: &RsaPrivateKey) -> usize {
    use rsa::traits::PublicKeyParts;
    key.n().bits() / 8
}

/// What the truth says a holder of the service's keys must see at a checkpoint.
fn expected(
    truth: &GroundTruth,
    service: usize,
    checkpoint: usize,
) -> Option<BTreeMap<String, Seen>> {
    let readable = truth.services[service].readable_key_indexes();
    let view = truth.checkpoints[checkpoint].view_for(&readable)?;
    Some(
        view.into_iter()
            .map(|e| {
                let seen = match (e.readable, e.kind) {
                    (false, _) => Seen::Unreadable,
                    (true, EntryKind::Folder) => Seen::Folder,
                    (true, EntryKind::File) => Seen::File {
                        size: e.size,
                        sha256: e.sha256.unwrap(),
                    },
                };
                (e.path, seen)
            })
            .collect(),
    )
}

fn mixed_export(
    dir: &Path,
) -> (
    std::path::PathBuf,
    GroundTruth,
    RsaPrivateKey,
    RsaPrivateKey,
) {
    let main = common::seeded_rsa_key(101, 1024);
    let late = common::seeded_rsa_key(102, 1024);
    let out = dir.join("mixed.sqlite");
    let services = [
        ServiceInput {
            label: "Main".into(),
            spki_der: common::spki_der(&main),
        },
        ServiceInput {
            label: "Late".into(),
            spki_der: common::spki_der(&late),
        },
    ];
    let shape = Shape::Mixed {
        small_files: 40,
        big_files: 1,
        big_file_size: 3 * 4096 + 5,
    };
    let truth = scenario::generate(&out, small_config(7), &shape, &services).unwrap();
    (out, truth, main, late)
}

#[test]
fn mixed_history_reads_back_as_written_with_an_independent_spec_walk() {
    let dir = tempfile::tempdir().unwrap();
    let (out, truth, main, late) = mixed_export(dir.path());
    let labels: Vec<&str> = truth.checkpoints.iter().map(|c| c.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "initial",
            "reorganised",
            "rotated",
            "late-service",
            "partial",
            "snapshot"
        ]
    );
    // main: access to keys 1..3 (excluded from key 4); late: created before key 3, revoked.
    assert_eq!(truth.services[0].access_key_indexes, vec![1, 2, 3]);
    assert_eq!(truth.services[1].access_key_indexes, vec![3]);
    assert_eq!(truth.services[2].access_key_indexes, Vec::<u64>::new());
    assert!(truth.services[1].revoked.is_some());

    for (svc, key) in [(0usize, &main), (1, &late)] {
        let walk = SpecWalk::open(&out, key);
        assert_eq!(walk.oaep_ops, 1, "one OAEP operation for service {svc}");
        assert_eq!(
            walk.keys.keys().copied().collect::<BTreeSet<_>>(),
            (1..=3).collect()
        );
        assert_eq!(walk.realm_name().as_deref(), Some("generated-workspace"));
        for (i, cp) in truth.checkpoints.iter().enumerate() {
            let want = expected(&truth, svc, i);
            let got = walk.tree(cp.at.0);
            assert_eq!(got, want, "service {svc} at checkpoint {}", cp.label);
            // Just before the checkpoint the tree differs (except for the snapshot instant).
            if i > 0 && cp.label != "snapshot" {
                assert_eq!(walk.tree(cp.at.0 - 1), expected(&truth, svc, i - 1));
            }
        }
    }
    // Partial readability really happens, and is reported, never replaced by an older version.
    let partial = expected(&truth, 0, 4).unwrap();
    assert_eq!(partial["/docs/readme.txt"], Seen::Unreadable);
    assert_eq!(partial["/secret"], Seen::Unreadable);
    assert!(!partial.contains_key("/secret/plan.txt"));
    assert!(
        matches!(partial["/data/multi.bin"], Seen::File { size, .. } if size == 3 * 4096 + 2048)
    );
    let initial = expected(&truth, 0, 0).unwrap();
    assert!(initial.contains_key("/docs/a/b/c/d/e/f/g/h/deep.txt"));
    assert!(initial.contains_key("/tmp/scratch.txt"));
    let reorganised = expected(&truth, 0, 1).unwrap();
    assert!(reorganised.contains_key("/docs/alpha/b/c/d/e/f/g/h/deep.txt"));
    assert!(reorganised.contains_key("/docs/alpha/notes.txt"));
    assert!(!reorganised.contains_key("/tmp/scratch.txt"));
    // The late service can read everything up to key 3, including data older than itself.
    let late_view = expected(&truth, 1, 0).unwrap();
    assert_eq!(late_view.len(), initial.len());

    // The throwaway service has no access: nothing.
    let none = SpecWalk::open(&out, &common::seeded_rsa_key(999, 1024));
    assert_eq!(none.oaep_ops, 0);
    assert!(none.keys.is_empty());
}

#[test]
fn sparse_and_multi_block_contents_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let key = common::seeded_rsa_key(5, 1024);
    let out = dir.path().join("sparse.sqlite");
    let mut w = ExportWriter::create(&out, small_config(9)).unwrap();
    w.add_service("S", &common::spki_der(&key)).unwrap();
    let sparse = Content::Sparse {
        size: 4096 * 9 + 77,
        seed: 3,
        hole_every: 4,
    };
    let expected_bytes = sparse.to_vec(4096);
    w.write_file("/s.bin", sparse).unwrap();
    w.write_file(
        "/exact.bin",
        Content::Random {
            size: 4096 * 2,
            seed: 4,
        },
    )
    .unwrap();
    let t = w.checkpoint("c").unwrap();
    let truth = w.finish().unwrap();
    let walk = SpecWalk::open(&out, &key);
    let tree = walk.tree(t.0).unwrap();
    assert_eq!(
        tree["/s.bin"],
        Seen::File {
            size: expected_bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&expected_bytes))
        }
    );
    assert_eq!(truth.checkpoints[0].entry("/exact.bin").unwrap().size, 8192);
    // Holes are real: fewer blocks than spans.
    let blocks: i64 = walk
        .conn
        .query_row("SELECT COUNT(*) FROM block", [], |r| r.get(0))
        .unwrap();
    assert_eq!(blocks, 2 + 10 - 2);
}

#[test]
fn failed_or_abandoned_write_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never.sqlite");
    {
        let mut w = ExportWriter::create(&out, small_config(1)).unwrap();
        w.write_file("/a.txt", Content::bytes(b"x".to_vec()))
            .unwrap();
        assert!(w.add_service("bad", b"not a key").is_err());
        assert!(w
            .write_file("/a.txt/b", Content::bytes(Vec::new()))
            .is_err());
        assert!(w.rename("/missing", "/x").is_err());
        // dropped without finish
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

// ---- through the product's reader (CLI `export …`) with the service key in SoftHSM2 ----

fn cli_json(args: &[&str], env: &[(String, String)]) -> serde_json::Value {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let out = common::run_cli(&full, env);
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        common::stdout(&out),
        common::stderr(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn extraction_through_the_reader_and_softhsm_equals_the_writer_tree_at_every_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (out, truth, main, late) = mixed_export(dir.path());
    let export_sha = common::file_sha256(&out);
    let export = out.to_str().unwrap();
    for (svc, key) in [(0usize, &main), (1, &late)] {
        let Some(hsm) = common::SoftHsm::with_service_key(key, &format!("gen-svc{svc}")) else {
            return;
        };
        let uri = hsm.key_uri("svc");
        let readable = truth.services[svc].readable_key_indexes();
        for (i, cp) in truth.checkpoints.iter().enumerate() {
            let dest = dir.path().join(format!("x-{svc}-{i}"));
            let at = cp.at.to_rfc3339();
            let args = [
                "export",
                "extract",
                export,
                dest.to_str().unwrap(),
                "--key",
                &uri,
                "--at",
                &at,
            ];
            let report = cli_json(&args, &hsm.env());
            assert_eq!(common::file_sha256(&out), export_sha, "export modified");
            let custody: serde_json::Value = serde_json::from_slice(
                &std::fs::read(dir.path().join(format!("x-{svc}-{i}.custody.json"))).unwrap(),
            )
            .unwrap();
            assert_eq!(custody["token_operations"], 1, "{report}");
            let want = cp
                .view_for(&readable)
                .expect("root readable at every checkpoint");
            let want_files: BTreeMap<String, (u64, String)> = want
                .iter()
                .filter(|e| e.readable && e.kind == EntryKind::File)
                .map(|e| (e.path.clone(), (e.size, e.sha256.clone().unwrap())))
                .collect();
            let got_files: BTreeMap<String, (u64, String)> = custody["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| {
                    (
                        f["path"].as_str().unwrap().to_string(),
                        (
                            f["size"].as_u64().unwrap(),
                            f["sha256"].as_str().unwrap().to_string(),
                        ),
                    )
                })
                .collect();
            assert_eq!(got_files, want_files, "service {svc} files at {}", cp.label);
            let want_unreadable: BTreeSet<String> = want
                .iter()
                .filter(|e| !e.readable)
                .map(|e| e.path.clone())
                .collect();
            let got_unreadable: BTreeSet<String> = custody["unreadable"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u["path"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(
                got_unreadable, want_unreadable,
                "service {svc} unreadable at {}",
                cp.label
            );
            // The bytes on disk are the bytes the writer stored.
            for (path, (size, sha)) in &want_files {
                let on_disk = dest.join(path.trim_start_matches('/'));
                assert_eq!(std::fs::metadata(&on_disk).unwrap().len(), *size);
                assert_eq!(&common::file_sha256(&on_disk), sha, "{path}");
            }
            // Every readable folder exists (empty ones included).
            for e in want
                .iter()
                .filter(|e| e.readable && e.kind == EntryKind::Folder)
            {
                assert!(
                    dest.join(e.path.trim_start_matches('/')).is_dir(),
                    "{}",
                    e.path
                );
            }
        }
    }
}

#[test]
fn the_same_reader_code_path_opens_the_real_fixture_and_a_generated_export() {
    let dir = tempfile::tempdir().unwrap();
    let (out, truth, main, _) = mixed_export(dir.path());
    let fixture = common::fixture("sequestered_export.sqlite");
    let real = cli_json(&["export", "info", fixture.to_str().unwrap()], &[]);
    let ours = cli_json(&["export", "info", out.to_str().unwrap()], &[]);
    for v in [&real, &ours] {
        assert_eq!(v["complete"], true);
        assert_eq!(v["sequestered"], true);
        assert!(
            v["sequester_problems"].as_array().unwrap().is_empty(),
            "{v}"
        );
    }
    // Same tables, counted by the reader.
    let tables = |v: &serde_json::Value| -> Vec<String> {
        v["tables"].as_object().unwrap().keys().cloned().collect()
    };
    assert_eq!(tables(&real), tables(&ours));
    assert_eq!(ours["latest_key_index"], 4);
    assert_eq!(ours["sequester_services"].as_array().unwrap().len(), 3);
    assert_eq!(ours["info"]["realm_id"].as_str().unwrap(), truth.realm_id);

    // verify walks every signature and digest reachable with the main service key: all good.
    let Some(hsm) = common::SoftHsm::with_service_key(&main, "gen-verify") else {
        return;
    };
    let out_v = common::run_cli(
        &[
            "export",
            "verify",
            out.to_str().unwrap(),
            "--key",
            &hsm.key_uri("svc"),
            "--root-key",
            &truth.root_verify_key,
        ],
        &hsm.env(),
    );
    assert!(
        out_v.status.success(),
        "{}{}",
        common::stdout(&out_v),
        common::stderr(&out_v)
    );
}

//! TEMPORARY: digest of every row of a seeded generated export (RSA-PSS signatures stripped:
//! their salt is random), to compare the writer's output before and after a refactor.
use sha2::{Digest, Sha256};

use super::scenario::{generate, ServiceInput, Shape};
use super::{AuthoritySigner, SoftwareAuthority, WriterConfig};

#[test]
#[ignore]
fn snapshot_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("export.sqlite");
    let spki = SoftwareAuthority::generate(1024, 7).unwrap().spki_der();
    let config = WriterConfig {
        authority_bits: 1024,
        threads: 1,
        blocksize: 512,
        seed: 42,
        ..WriterConfig::default()
    };
    let services = [ServiceInput {
        label: "svc".into(),
        spki_der: spki,
    }];
    let shape = Shape::Mixed {
        small_files: 30,
        big_files: 2,
        big_file_size: 5000,
    };
    generate(&path, config, &shape, &services).unwrap();
    let db = rusqlite::Connection::open(&path).unwrap();
    let mut tables: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    tables.sort();
    let mut out = String::new();
    let mut rows_total = 0;
    for t in tables {
        let mut stmt = db
            .prepare(&format!("SELECT * FROM {t} ORDER BY rowid"))
            .unwrap();
        let cols = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            let mut h = Sha256::new();
            for c in 0..cols {
                let v: rusqlite::types::Value = row.get(c).unwrap();
                let bytes = match v {
                    rusqlite::types::Value::Blob(b) => {
                        if t == "sequester_certificate" && b.starts_with(b"RSASSA-PSS-SHA256:") {
                            b[18 + 128..].to_vec()
                        } else {
                            b
                        }
                    }
                    other => format!("{other:?}").into_bytes(),
                };
                h.update((bytes.len() as u64).to_be_bytes());
                h.update(&bytes);
            }
            out.push_str(&format!("{t} {}\n", hex::encode(h.finalize())));
            rows_total += 1;
        }
    }
    assert!(rows_total > 50);
    let label = std::env::var("SNAPSHOT_LABEL").unwrap_or_else(|_| "x".into());
    std::fs::write(format!("/tmp/dedup-snapshot-{label}.txt"), out).unwrap();
}

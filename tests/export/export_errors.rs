//! Every reader error case on corrupted copies of the real fixture (made in a tempdir):
//! each gives a specific message naming what and where, never a panic, never partial output, and
//! the (corrupted) export stays byte-identical.

use crate::common;

use std::path::{Path, PathBuf};

use crate::common::{fixture, run_cli, stderr, stdout, SoftHsm};

const SERVICE1: &str = "sequester_service_1.00000000000000000000000000000001.private.pem";

fn flip_blob(
    conn: &rusqlite::Connection,
    table: &str,
    column: &str,
    key: &str,
    key_value: i64,
    at: usize,
) {
    let mut blob: Vec<u8> = conn
        .query_row(
            &format!("SELECT {column} FROM {table} WHERE {key} = ?1"),
            [key_value],
            |r| r.get(0),
        )
        .unwrap();
    let i = at.min(blob.len() - 1);
    blob[i] ^= 0x01;
    conn.execute(
        &format!("UPDATE {table} SET {column} = ?1 WHERE {key} = ?2"),
        rusqlite::params![blob, key_value],
    )
    .unwrap();
}

struct Case {
    args: Vec<String>,
    success: bool,
    exit_code: Option<i32>,
    needles: Vec<&'static str>,
}

fn check(hsm: &SoftHsm, export: &Path, case: &Case) {
    let before = common::file_sha256(export);
    let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
    let out = run_cli(&args, &hsm.env());
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!all.contains("panicked"), "{args:?} panicked: {all}");
    assert_eq!(out.status.success(), case.success, "{args:?}: {all}");
    if let Some(code) = case.exit_code {
        assert_eq!(out.status.code(), Some(code), "{args:?}: {all}");
    }
    for n in &case.needles {
        assert!(all.contains(n), "{args:?}: expected `{n}` in:\n{all}");
    }
    assert_eq!(
        common::file_sha256(export),
        before,
        "{args:?} modified the export"
    );
    // Immutable mode: no journal, WAL or shared-memory file is ever created beside it.
    for suffix in ["-journal", "-wal", "-shm"] {
        let mut side = export.as_os_str().to_owned();
        side.push(suffix);
        assert!(!Path::new(&side).exists(), "{args:?} created {side:?}");
    }
}

fn cmd(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

#[test]
fn file_level_errors() {
    let Some(hsm) = SoftHsm::new("export-errors") else {
        return;
    };
    hsm.import_with_softhsm_util(&fixture(SERVICE1), "svc1", "01");
    let key = hsm.key_uri("svc1");
    let dir = tempfile::tempdir().unwrap();

    let not_sqlite = dir.path().join("not-sqlite.sqlite");
    std::fs::write(
        &not_sqlite,
        b"this is a text file, not a database\n".repeat(10),
    )
    .unwrap();
    let empty = dir.path().join("empty.sqlite");
    std::fs::write(&empty, b"").unwrap();
    let wrong_magic = common::altered_fixture_export(dir.path(), "wrong-magic", |c| {
        c.execute("UPDATE info SET magic = 12345", []).unwrap();
    });
    let future = common::altered_fixture_export(dir.path(), "future-version", |c| {
        c.execute("UPDATE info SET version = 2", []).unwrap();
    });
    let authority = common::altered_fixture_export(dir.path(), "flipped-authority-cert", |c| {
        flip_blob(c, "sequester_certificate", "certificate", "_id", 0, 80)
    });
    let dropped = common::altered_fixture_export(dir.path(), "dropped-table", |c| {
        c.execute("DROP TABLE block_data", []).unwrap();
    });
    let bad_info = common::altered_fixture_export(dir.path(), "bad-info", |c| {
        c.execute("UPDATE info SET realm_id = x'0102'", []).unwrap();
    });
    let incomplete = common::altered_fixture_export(dir.path(), "incomplete", |c| {
        c.execute("UPDATE info SET blocks_data_export_done = 0", [])
            .unwrap();
    });
    // Truncated file: a valid SQLite header but pages missing.
    let truncated_file = dir.path().join("truncated-file.sqlite");
    let bytes = std::fs::read(fixture("sequestered_export.sqlite")).unwrap();
    std::fs::write(&truncated_file, &bytes[..8192]).unwrap();

    let p = |p: &PathBuf| p.to_str().unwrap().to_string();
    let cases = [
        (
            &not_sqlite,
            cmd(&["export", "info"]),
            false,
            vec!["not an SQLite database"],
        ),
        (
            &empty,
            cmd(&["export", "info"]),
            false,
            vec!["not an SQLite database"],
        ),
        (
            &wrong_magic,
            cmd(&["export", "info"]),
            false,
            vec!["not a Parsec realm export", "magic 87948"],
        ),
        (
            &future,
            cmd(&["export", "info"]),
            false,
            vec!["unsupported realm export version 2"],
        ),
        (
            &authority,
            cmd(&["export", "info"]),
            false,
            vec![
                "Sequester:     INVALID",
                "sequester certificate row 0",
                "root key",
            ],
        ),
        (
            &dropped,
            cmd(&["export", "info"]),
            false,
            vec!["block_data", "missing"],
        ),
        (
            &bad_info,
            cmd(&["export", "info"]),
            false,
            vec!["realm_id", "2 bytes, not 16"],
        ),
        (
            &incomplete,
            cmd(&["export", "info"]),
            false,
            vec!["incomplete export", "blocks data", "--allow-incomplete"],
        ),
        (
            &incomplete,
            cmd(&["export", "info", "--allow-incomplete"]),
            true,
            vec!["PARTIAL export", "NO (not done: blocks data)"],
        ),
        (
            &truncated_file,
            cmd(&["export", "info"]),
            false,
            vec!["truncated-file.sqlite"],
        ),
    ];
    for (file, mut args, success, needles) in cases {
        args.insert(2, p(file));
        check(
            &hsm,
            file,
            &Case {
                args,
                success,
                exit_code: None,
                needles,
            },
        );
    }
    // Same errors with a key: refused before the token is touched.
    for (file, needle) in [
        (&not_sqlite, "not an SQLite database"),
        (&future, "version 2"),
    ] {
        let args = vec![
            "export".into(),
            "ls".into(),
            p(file),
            "--key".into(),
            key.clone(),
        ];
        check(
            &hsm,
            file,
            &Case {
                args,
                success: false,
                exit_code: Some(1),
                needles: vec![needle],
            },
        );
    }
}

/// (export, arguments, success, exit code, expected substrings).
type ContentCase<'a> = (
    &'a PathBuf,
    Vec<String>,
    bool,
    Option<i32>,
    Vec<&'static str>,
);

#[test]
fn content_level_errors() {
    let Some(hsm) = SoftHsm::new("export-errors2") else {
        return;
    };
    hsm.import_with_softhsm_util(&fixture(SERVICE1), "svc1", "01");
    let key = hsm.key_uri("svc1");
    let dir = tempfile::tempdir().unwrap();
    let p = |p: &PathBuf| p.to_str().unwrap().to_string();
    let at15 = "2000-01-15T00:00:00Z";

    // Flipped byte in the encrypted manifest of the file, version 2 (vlob seq 203).
    let vlob = common::altered_fixture_export(dir.path(), "flipped-vlob", |c| {
        flip_blob(c, "vlob_atom", "blob", "sequential_id", 203, 100)
    });
    // Truncated manifest blob (shorter than a secretbox).
    let truncated_vlob = common::altered_fixture_export(dir.path(), "truncated-vlob", |c| {
        c.execute(
            "UPDATE vlob_atom SET blob = substr(blob, 1, 30) WHERE sequential_id = 203",
            [],
        )
        .unwrap();
    });
    // Flipped byte in block f0..06 ("Hello v2", sequential_id 101).
    let block = common::altered_fixture_export(dir.path(), "flipped-block", |c| {
        flip_blob(c, "block_data", "data", "block", 101, 45)
    });
    // Block row present, data missing.
    let missing_block = common::altered_fixture_export(dir.path(), "missing-block-data", |c| {
        c.execute("DELETE FROM block_data WHERE block = 101", [])
            .unwrap();
    });
    // Flipped byte in alice's device certificate (common row 1): alice's device becomes unknown.
    let device = common::altered_fixture_export(dir.path(), "flipped-device-cert", |c| {
        flip_blob(c, "common_certificate", "certificate", "_id", 1, 70)
    });
    // Flipped byte in the service 1 certificate: the service no longer verifies.
    let service_cert = common::altered_fixture_export(dir.path(), "flipped-service-cert", |c| {
        flip_blob(c, "sequester_certificate", "certificate", "_id", 1, 200)
    });
    // Flipped byte in keys bundle 2: the bundle is unusable.
    let bundle = common::altered_fixture_export(dir.path(), "flipped-keys-bundle", |c| {
        flip_blob(c, "realm_keys_bundle", "keys_bundle", "key_index", 2, 60)
    });
    // Flipped byte in the OAEP block of the sequester access.
    let access = common::altered_fixture_export(dir.path(), "flipped-access", |c| {
        flip_blob(
            c,
            "realm_sequester_keys_bundle_access",
            "access",
            "key_index",
            2,
            60,
        )
    });
    // A column of the wrong SQLite type (text where a blob is expected).
    let text_access = common::altered_fixture_export(dir.path(), "text-access", |c| {
        c.execute(
            "UPDATE realm_sequester_keys_bundle_access SET access = 'not a blob'",
            [],
        )
        .unwrap();
    });
    // Manifest key index beyond the last rotation.
    let key_index = common::altered_fixture_export(dir.path(), "key-index-out-of-range", |c| {
        c.execute(
            "UPDATE vlob_atom SET key_index = 9 WHERE sequential_id = 203",
            [],
        )
        .unwrap();
    });
    // `info.realm_id` no longer names the realm of the certificates.
    let realm_id = common::altered_fixture_export(dir.path(), "other-info-realm-id", |c| {
        c.execute(
            "UPDATE info SET realm_id = x'00112233445566778899aabbccddeeff'",
            [],
        )
        .unwrap();
    });
    // Unknown author device on a vlob row.
    let author = common::altered_fixture_export(dir.path(), "unknown-author", |c| {
        c.execute("UPDATE vlob_atom SET author = x'de10000000000000000000000000dead' WHERE sequential_id = 203", []).unwrap();
    });

    let ls = |f: &PathBuf| cmd(&["export", "ls", &p(f), "-l", "--key", &key, "--at", at15]);
    let cat = |f: &PathBuf| {
        cmd(&[
            "export",
            "cat",
            &p(f),
            "/bar2.txt",
            "--key",
            &key,
            "--at",
            at15,
        ])
    };
    let verify = |f: &PathBuf| cmd(&["export", "verify", &p(f), "--key", &key]);
    let cases: Vec<ContentCase> = vec![
        (
            &vlob,
            ls(&vlob),
            true,
            None,
            vec!["INVALID", "cannot decrypt"],
        ),
        (
            &vlob,
            cat(&vlob),
            false,
            None,
            vec!["/bar2.txt", "version 2", "cannot decrypt"],
        ),
        (
            &vlob,
            verify(&vlob),
            false,
            Some(2),
            vec![
                "PROBLEM",
                "/bar2.txt (entry f0000000000000000000000000000004) v2 at 2000-01-15T00:00:00Z by alice@example.com",
                ": cannot decrypt",
            ],
        ),
        (
            &truncated_vlob,
            verify(&truncated_vlob),
            false,
            Some(2),
            vec!["v2", "shorter than 40 bytes"],
        ),
        (
            &block,
            cat(&block),
            false,
            None,
            vec![
                "/bar2.txt",
                "block f0000000000000000000000000000006",
                "does not decrypt",
            ],
        ),
        (
            &block,
            verify(&block),
            false,
            Some(2),
            vec![
                "[block]",
                "f0000000000000000000000000000006",
                "does not decrypt",
            ],
        ),
        (
            &missing_block,
            verify(&missing_block),
            false,
            Some(2),
            vec!["f0000000000000000000000000000006", "has no data"],
        ),
        (
            &device,
            verify(&device),
            false,
            Some(2),
            vec![
                "common certificate row 1",
                "bad signature",
                "unknown author device de10a11cec0010000000000000000000",
            ],
        ),
        (
            &service_cert,
            ls(&service_cert),
            false,
            None,
            vec![
                "matches no service of this export",
                "2 sequester certificate(s) were skipped",
            ],
        ),
        (
            &service_cert,
            cmd(&["export", "info", &p(&service_cert)]),
            true,
            None,
            vec!["sequester certificate row 1 skipped", "does not verify"],
        ),
        (
            &bundle,
            verify(&bundle),
            false,
            Some(2),
            vec!["keys bundle 2 unusable", "NOTHING IS READABLE"],
        ),
        // The bundle exists but is damaged: said so, not "never given".
        (
            &bundle,
            ls(&bundle),
            false,
            Some(2),
            vec![
                "whose keys-bundle access for this sequester service is present but unusable \
                 (damaged or forged: keys bundle 2 unusable",
            ],
        ),
        // The accurate reason, before any token operation, whatever the command.
        (
            &realm_id,
            ls(&realm_id),
            false,
            Some(1),
            vec![
                "the `info` table names realm 00112233445566778899aabbccddeeff, but the \
                 export's realm certificates are for another realm",
            ],
        ),
        (
            &realm_id,
            verify(&realm_id),
            false,
            Some(1),
            vec!["realm certificates are for another realm"],
        ),
        (
            &access,
            verify(&access),
            false,
            Some(2),
            vec![
                "keys bundle access for index 2 unusable",
                "decryption failed",
            ],
        ),
        (
            &text_access,
            verify(&text_access),
            false,
            Some(1),
            vec!["realm_sequester_keys_bundle_access", "access"],
        ),
        (
            &key_index,
            verify(&key_index),
            false,
            Some(2),
            vec!["v2", "non existent key index 9"],
        ),
        (
            &author,
            verify(&author),
            false,
            Some(2),
            vec![
                "v2",
                "non existent author device de10000000000000000000000000dead",
            ],
        ),
    ];
    for (file, args, success, exit_code, needles) in cases {
        check(
            &hsm,
            file,
            &Case {
                args,
                success,
                exit_code,
                needles,
            },
        );
    }

    // Extract with a corrupted block: the file is left out and reported; no temporary tree left.
    let dest = dir.path().join("out");
    let out = run_cli(
        &[
            "export",
            "extract",
            &p(&block),
            dest.to_str().unwrap(),
            "--key",
            &key,
            "--at",
            at15,
        ],
        &hsm.env(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!dest.join("bar2.txt").exists());
    assert!(stdout(&out).contains("integrity error"), "{}", stdout(&out));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".partial-"))
        .collect();
    assert!(leftovers.is_empty());
}

/// A build without the `mount` feature has no FUSE: `export mount` says so (exit 1, no panic)
/// and creates nothing.
#[test]
#[cfg(not(feature = "mount"))]
fn a_build_without_fuse_refuses_export_mount() {
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().join("mnt");
    let export = fixture("sequestered_export.sqlite");
    let out = run_cli(
        &[
            "export",
            "mount",
            export.to_str().unwrap(),
            mountpoint.to_str().unwrap(),
            "--key",
            "pkcs11:token=t;object=svc",
        ],
        &[],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains(
            "export mount: not compiled into this build of sequester-custody (cargo feature \
             `mount`; rebuild with `--features mount`)"
        ),
        "{err}"
    );
    assert!(!mountpoint.exists());
}

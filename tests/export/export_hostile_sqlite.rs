//! The export's SQLite file as hostile input: the schema is checked against
//! docs/formats.md §5.2 before the first query (one clear error naming what differs), stored SQL
//! never runs, and raw page damage (truncation, flipped bytes in each table's pages) gives a clear
//! error or a per-entry problem, never a panic, and never changes the file.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{fixture, run_cli, stderr, stdout, SoftHsm};

const SERVICE1: &str = "sequester_service_1.00000000000000000000000000000001.private.pem";

/// A writable copy of the fixture with the SQL `mutate` applied.
fn altered(dir: &Path, name: &str, mutate: &str) -> PathBuf {
    common::altered_fixture_export(dir, name, |conn| conn.execute_batch(mutate).unwrap())
}

/// Runs the CLI; asserts no panic, the export unchanged, bounded time. Returns (success, output).
fn run(export: &Path, args: &[&str], env: &[(String, String)]) -> (bool, String) {
    let before = common::file_sha256(export);
    let mut full = vec![args[0], args[1], export.to_str().unwrap()];
    full.extend_from_slice(&args[2..]);
    let start = Instant::now();
    let out = run_cli(&full, env);
    let took = start.elapsed();
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!all.contains("panicked"), "{full:?} panicked: {all}");
    // 101 is Rust's panic exit code; no code at all is a signal (stack overflow, abort).
    assert!(
        out.status.code().is_some_and(|c| c != 101),
        "{full:?} crashed ({:?}): {all}",
        out.status
    );
    assert!(!all.contains("RUST_BACKTRACE"), "{full:?}: {all}");
    assert!(took < Duration::from_secs(60), "{full:?} took {took:?}");
    assert_eq!(common::file_sha256(export), before, "{full:?} modified it");
    (out.status.success(), all)
}

#[test]
fn schema_mismatches_are_one_clear_error_before_any_query() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "extra-column",
            "ALTER TABLE vlob_atom ADD COLUMN note TEXT",
            vec![
                "not the realm export schema",
                "vlob_atom",
                "9 columns where 8",
            ],
        ),
        (
            "retyped-column",
            "CREATE TABLE x (_id INTEGER PRIMARY KEY, certificate TEXT NOT NULL); \
             INSERT INTO x SELECT * FROM realm_certificate; DROP TABLE realm_certificate; \
             ALTER TABLE x RENAME TO realm_certificate",
            vec![
                "realm_certificate",
                "column `certificate TEXT`",
                "`certificate BLOB`",
            ],
        ),
        (
            "view",
            "CREATE VIEW v AS SELECT * FROM info",
            vec!["not the realm export schema", "unexpected view `v`"],
        ),
        (
            "trigger",
            "CREATE TRIGGER t AFTER INSERT ON block BEGIN SELECT 1; END",
            vec!["unexpected trigger `t`"],
        ),
        (
            "extra-table",
            "CREATE TABLE notes (x)",
            vec!["unexpected table `notes`"],
        ),
        (
            "extra-index",
            "CREATE INDEX i ON vlob_atom(vlob_id)",
            vec!["unexpected index `i` on `vlob_atom`"],
        ),
        (
            "generated-column",
            "ALTER TABLE block ADD COLUMN g INTEGER AS (size * 2)",
            vec!["table `block`", "6 columns where 5"],
        ),
    ];
    for (name, sql, needles) in cases {
        let export = altered(dir.path(), name, sql);
        let (ok, all) = run(&export, &["export", "info"], &[]);
        assert!(!ok, "{name}: accepted:\n{all}");
        for n in needles {
            assert!(all.contains(n), "{name}: expected `{n}` in:\n{all}");
        }
    }
    // A virtual table (needs the module at creation; FTS5 is in the bundled SQLite).
    let export = altered(
        dir.path(),
        "virtual",
        "CREATE VIRTUAL TABLE vt USING fts5(x)",
    );
    let (ok, all) = run(&export, &["export", "info"], &[]);
    assert!(!ok && all.contains("not the realm export schema"), "{all}");
    // The genuine fixtures pass.
    for name in [
        "sequestered_export.sqlite",
        "workspace_history_export.sqlite",
    ] {
        let (ok, all) = run(&fixture(name), &["export", "info"], &[]);
        assert!(!all.contains("schema"), "{name}: {all}");
        let _ = ok;
    }
}

/// Page size and each table's root page, read from the genuine file.
fn table_pages(path: &Path) -> (usize, Vec<(String, usize)>) {
    let conn = rusqlite::Connection::open_with_flags(
        format!("file:{}?mode=ro&immutable=1", path.display()),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
    )
    .unwrap();
    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    let mut stmt = conn
        .prepare("SELECT name, rootpage FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap();
    let roots = stmt
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as usize))
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    (page_size as usize, roots)
}

#[test]
fn raw_page_damage_gives_clear_errors_never_a_panic() {
    let Some(hsm) = SoftHsm::new("hostile-sqlite") else {
        return;
    };
    hsm.import_with_softhsm_util(&fixture(SERVICE1), "svc1", "01");
    let key = hsm.key_uri("svc1");
    let env = hsm.env();
    let dir = tempfile::tempdir().unwrap();
    let genuine = std::fs::read(fixture("sequestered_export.sqlite")).unwrap();
    let (page_size, roots) = table_pages(&fixture("sequestered_export.sqlite"));
    let mut damaged = Vec::new();
    // Flipped bytes in the header and cell area of each table's root page, and in the last page.
    for (table, root) in &roots {
        for (what, offset_in_page) in [("header", 0usize), ("cells", page_size - 64)] {
            let mut bytes = genuine.clone();
            let base = (root - 1) * page_size + if *root == 1 { 100 } else { 0 };
            for i in 0..8 {
                bytes[base + offset_in_page + i] ^= 0xa5;
            }
            let path = dir.path().join(format!("flip-{table}-{what}.sqlite"));
            std::fs::write(&path, &bytes).unwrap();
            damaged.push(path);
        }
    }
    let mut bytes = genuine.clone();
    let last = bytes.len() - page_size / 2;
    for b in &mut bytes[last..last + 256] {
        *b ^= 0xff;
    }
    let path = dir.path().join("flip-last-page.sqlite");
    std::fs::write(&path, &bytes).unwrap();
    damaged.push(path);
    // Truncations at several page boundaries and mid-page.
    for cut in [
        page_size,
        2 * page_size + 17,
        genuine.len() / 2,
        genuine.len() - page_size,
        genuine.len() - 1,
    ] {
        let path = dir.path().join(format!("truncated-{cut}.sqlite"));
        std::fs::write(&path, &genuine[..cut]).unwrap();
        damaged.push(path);
    }
    let out = dir.path().join("out");
    for export in &damaged {
        let (_, all) = run(export, &["export", "info"], &env);
        assert!(!all.trim().is_empty(), "{}: no output", export.display());
        for args in [
            vec!["export", "verify", "--key", key.as_str()],
            vec!["export", "ls", "--key", key.as_str(), "-R"],
        ] {
            let (ok, all) = run(export, &args, &env);
            if !ok {
                // A failure says something: the file's problem or the entries' problems.
                assert!(
                    !all.trim().is_empty(),
                    "{args:?} on {}: silent failure",
                    export.display()
                );
            }
        }
        let dest = out.join(export.file_stem().unwrap());
        let _ = run(
            export,
            &[
                "export",
                "extract",
                "--key",
                key.as_str(),
                dest.to_str().unwrap(),
            ],
            &env,
        );
    }
}

/// Peak resident memory (KiB) of the largest child process waited for so far.
fn children_max_rss_kib() -> i64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes into the struct it is given.
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) },
        0
    );
    usage.ru_maxrss
}

#[test]
fn a_certificate_row_that_decompresses_to_200m_entries_is_refused_cheaply() {
    // An array32 header announcing 200 M values, then 200 MB of msgpack nils: ~6 KiB of zstd.
    let mut envelope = vec![0u8];
    {
        let mut enc = zstd::stream::write::Encoder::new(&mut envelope, 1).unwrap();
        use std::io::Write;
        enc.write_all(&[0xdd]).unwrap();
        enc.write_all(&200_000_000u32.to_be_bytes()).unwrap();
        let nils = vec![0xc0u8; 1 << 20];
        for _ in 0..200 {
            enc.write_all(&nils).unwrap();
        }
        enc.finish().unwrap();
    }
    let mut row = vec![0u8; 64];
    row.extend_from_slice(&envelope);
    assert!(row.len() < 8 * 1024, "{} bytes", row.len());
    let dir = tempfile::tempdir().unwrap();
    let export = altered(dir.path(), "certificate-bomb", "SELECT 1");
    {
        let conn = rusqlite::Connection::open(&export).unwrap();
        conn.execute(
            "UPDATE common_certificate SET certificate = ?1 WHERE _id = 1",
            [&row],
        )
        .unwrap();
    }
    let start = Instant::now();
    let (_, all) = run(&export, &["export", "info"], &[]);
    let took = start.elapsed();
    // The device certificate the bomb replaced no longer verifies.
    assert!(all.contains("0 devices verified"), "{all}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let rss_mib = children_max_rss_kib() / 1024;
    assert!(rss_mib < 256, "a child peaked at {rss_mib} MiB");
}

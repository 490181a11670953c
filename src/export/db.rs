//! The SQLite side: opening strictly read-only and immutable, the opening checks (docs/formats.md
//! §5.3), and a small pool of read-only connections so that many threads can query at once
//! (`rusqlite::Connection` is `Send` but not `Sync`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags};

use super::error::ExportError;
use crate::parsec::device::Id;
use crate::parsec::DateTime;

/// `info.magic` of a realm export.
pub(crate) const EXPORT_MAGIC: i64 = 87948;
/// The only export format version.
pub(crate) const EXPORT_VERSION: i64 = 1;

/// Tables the reader needs (docs/formats.md §5.2).
pub(crate) const REQUIRED_TABLES: [&str; 10] = [
    "info",
    "common_certificate",
    "sequester_certificate",
    "realm_certificate",
    "realm_keys_bundle",
    "realm_keys_bundle_access",
    "realm_sequester_keys_bundle_access",
    "vlob_atom",
    "block",
    "block_data",
];

/// The expected columns of each table (docs/formats.md §5.2, as Parsec 3.9.3 creates them): name,
/// declared type, primary-key position. Checked before the first query. A column as PRAGMA
/// table_xinfo reports it: name, declared type, primary-key position.
type ExpectedColumn = (&'static str, &'static str, i64);

const EXPECTED_SCHEMA: [(&str, &[ExpectedColumn]); 10] = [
    (
        "info",
        &[
            ("magic", "INTEGER", 0),
            ("version", "INTEGER", 0),
            ("organization_id", "VARCHAR(32)", 0),
            ("realm_id", "BLOB", 0),
            ("root_verify_key", "BLOB", 0),
            ("snapshot_timestamp", "INTEGER", 0),
            ("vlobs_total_bytes", "INTEGER", 0),
            ("blocks_total_bytes", "INTEGER", 0),
            ("certificates_export_done", "INTEGER", 0),
            ("vlobs_export_done", "INTEGER", 0),
            ("blocks_metadata_export_done", "INTEGER", 0),
            ("blocks_data_export_done", "INTEGER", 0),
        ],
    ),
    (
        "common_certificate",
        &[("_id", "INTEGER", 1), ("certificate", "BLOB", 0)],
    ),
    (
        "sequester_certificate",
        &[("_id", "INTEGER", 1), ("certificate", "BLOB", 0)],
    ),
    (
        "realm_certificate",
        &[("_id", "INTEGER", 1), ("certificate", "BLOB", 0)],
    ),
    (
        "realm_keys_bundle",
        &[("key_index", "INTEGER", 1), ("keys_bundle", "BLOB", 0)],
    ),
    (
        "realm_keys_bundle_access",
        &[
            ("_id", "INTEGER", 1),
            ("user_id", "BLOB", 0),
            ("key_index", "INTEGER", 0),
            ("access", "BLOB", 0),
        ],
    ),
    (
        "realm_sequester_keys_bundle_access",
        &[
            ("_id", "INTEGER", 1),
            ("sequester_service_id", "BLOB", 0),
            ("key_index", "INTEGER", 0),
            ("access", "BLOB", 0),
        ],
    ),
    (
        "vlob_atom",
        &[
            ("sequential_id", "INTEGER", 1),
            ("vlob_id", "BLOB", 0),
            ("version", "INTEGER", 0),
            ("key_index", "INTEGER", 0),
            ("blob", "BLOB", 0),
            ("size", "INTEGER", 0),
            ("author", "BLOB", 0),
            ("timestamp", "INTEGER", 0),
        ],
    ),
    (
        "block",
        &[
            ("sequential_id", "INTEGER", 1),
            ("block_id", "BLOB", 0),
            ("author", "BLOB", 0),
            ("size", "INTEGER", 0),
            ("key_index", "INTEGER", 0),
        ],
    ),
    (
        "block_data",
        &[("block", "INTEGER", 1), ("data", "BLOB", 0)],
    ),
];

/// Largest string or BLOB SQLite may return (`SQLITE_LIMIT_LENGTH`): a vlob holds a manifest of
/// at most `limits::MANIFEST.max_decompressed` bytes (compressed, signed, encrypted); a block
/// holds one blocksize span (512 KiB by default). Anything larger is refused by SQLite itself.
pub(crate) const MAX_SQLITE_VALUE_BYTES: i32 = 64 * 1024 * 1024;

/// Idle connections kept for reuse; more may exist while busy.
const MAX_IDLE_CONNECTIONS: usize = 16;

/// The `info` row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportInfo {
    pub organization_id: String,
    #[serde(serialize_with = "super::ser_id")]
    pub realm_id: Id,
    #[serde(serialize_with = "super::ser_hex32")]
    pub root_verify_key: [u8; 32],
    pub snapshot_timestamp: DateTime,
    pub vlobs_total_bytes: u64,
    pub blocks_total_bytes: u64,
    pub certificates_export_done: bool,
    pub vlobs_export_done: bool,
    pub blocks_metadata_export_done: bool,
    pub blocks_data_export_done: bool,
}

impl ExportInfo {
    /// All four `*_done` flags set.
    pub fn is_complete(&self) -> bool {
        self.missing_parts().is_empty()
    }

    /// Names of the `*_done` flags that are not set.
    pub fn missing_parts(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        for (done, name) in [
            (self.certificates_export_done, "certificates"),
            (self.vlobs_export_done, "vlobs"),
            (self.blocks_metadata_export_done, "blocks metadata"),
            (self.blocks_data_export_done, "blocks data"),
        ] {
            if !done {
                missing.push(name);
            }
        }
        missing
    }
}

/// A pool of read-only, immutable connections to one export file.
pub(crate) struct ConnectionPool {
    path: PathBuf,
    display: String,
    idle: Mutex<Vec<Connection>>,
}

/// A connection borrowed from the pool; returned on drop.
pub(crate) struct PooledConnection<'a> {
    pool: &'a ConnectionPool,
    conn: Option<Connection>,
}

impl std::ops::Deref for PooledConnection<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("present until drop")
    }
}

impl Drop for PooledConnection<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let mut idle = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < MAX_IDLE_CONNECTIONS {
                idle.push(conn);
            }
        }
    }
}

/// The export is hostile input: no SQL stored in it (views, triggers, defaults, generated
/// columns) may run with privileges, nothing may be written, and no value may exceed the limits.
fn harden(conn: &Connection) -> rusqlite::Result<()> {
    use rusqlite::config::DbConfig;
    use rusqlite::limits::Limit;
    // Read-only anyway; this makes any accidental write attempt fail loudly.
    conn.pragma_update(None, "query_only", true)?;
    conn.pragma_update(None, "trusted_schema", false)?;
    // Detects some page-level damage earlier, as a clean error.
    conn.pragma_update(None, "cell_size_check", true)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)?;
    for (limit, value) in [
        (Limit::SQLITE_LIMIT_LENGTH, MAX_SQLITE_VALUE_BYTES),
        (Limit::SQLITE_LIMIT_SQL_LENGTH, 64 * 1024),
        (Limit::SQLITE_LIMIT_COLUMN, 64),
        (Limit::SQLITE_LIMIT_EXPR_DEPTH, 64),
        (Limit::SQLITE_LIMIT_COMPOUND_SELECT, 4),
        (Limit::SQLITE_LIMIT_ATTACHED, 0),
        (Limit::SQLITE_LIMIT_LIKE_PATTERN_LENGTH, 256),
        (Limit::SQLITE_LIMIT_TRIGGER_DEPTH, 1),
    ] {
        conn.set_limit(limit, value);
    }
    Ok(())
}

/// `file:` URI with the path percent-encoded where SQLite's URI parser would otherwise misread it.
fn sqlite_uri(path: &Path) -> String {
    let mut uri = String::from("file:");
    for &b in path.as_os_str().as_encoded_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/+,:@".contains(&b) {
            uri.push(b as char);
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push_str("?mode=ro&immutable=1");
    uri
}

impl ConnectionPool {
    /// Opens the first connection and checks that the file is an SQLite database.
    pub(crate) fn open(path: &Path) -> Result<Self, ExportError> {
        let display = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|e| ExportError::Open {
            path: display.clone(),
            reason: e.to_string(),
        })?;
        if !meta.is_file() {
            return Err(ExportError::Open {
                path: display,
                reason: "not a regular file".into(),
            });
        }
        // The SQLite header check gives a clear message before SQLite's generic one.
        let mut header = [0u8; 16];
        {
            use std::io::Read;
            let mut f = std::fs::File::open(path).map_err(|e| ExportError::Open {
                path: display.clone(),
                reason: e.to_string(),
            })?;
            let n = f.read(&mut header).map_err(|e| ExportError::Open {
                path: display.clone(),
                reason: e.to_string(),
            })?;
            if n < 16 || &header != b"SQLite format 3\0" {
                return Err(ExportError::NotSqlite {
                    path: display,
                    reason: if n < 16 {
                        format!("only {n} bytes long")
                    } else {
                        "no SQLite header".into()
                    },
                });
            }
        }
        let absolute = std::fs::canonicalize(path).map_err(|e| ExportError::Open {
            path: display.clone(),
            reason: e.to_string(),
        })?;
        let pool = ConnectionPool {
            path: absolute,
            display,
            idle: Mutex::new(Vec::new()),
        };
        let conn = pool.connect()?;
        pool.idle.lock().unwrap().push(conn);
        Ok(pool)
    }

    fn connect(&self) -> Result<Connection, ExportError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(sqlite_uri(&self.path), flags).map_err(|e| {
            ExportError::Open {
                path: self.display.clone(),
                reason: e.to_string(),
            }
        })?;
        harden(&conn).map_err(|e| self.err("configuring the connection", e))?;
        Ok(conn)
    }

    /// Borrows a connection (opens a new one when all are busy).
    pub(crate) fn get(&self) -> Result<PooledConnection<'_>, ExportError> {
        let conn = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match conn {
            Some(c) => c,
            None => self.connect()?,
        };
        Ok(PooledConnection {
            pool: self,
            conn: Some(conn),
        })
    }

    /// The path as the user gave it, for messages.
    pub(crate) fn display_path(&self) -> &str {
        &self.display
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// An SQLite error with what was being done.
    pub(crate) fn err(&self, context: &str, e: impl std::fmt::Display) -> ExportError {
        let reason = e.to_string();
        if reason.contains("file is not a database") {
            return ExportError::NotSqlite {
                path: self.display.clone(),
                reason,
            };
        }
        ExportError::sqlite(&self.display, context, reason)
    }

    /// Checks the schema against docs/formats.md §5.2 before anything else is queried: exactly the
    /// expected tables with the expected columns (name, declared type, primary key), only the
    /// automatic indexes of the constraints, and no view, trigger or virtual table.
    pub(crate) fn check_tables(&self) -> Result<(), ExportError> {
        let conn = self.get()?;
        let mut stmt = conn
            .prepare("SELECT type, name, tbl_name, sql FROM sqlite_master")
            .map_err(|e| self.err("reading the schema", e))?;
        let objects: Vec<(String, String, String, Option<String>)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.err("reading the schema", e))?;
        let tables: Vec<&str> = objects
            .iter()
            .filter(|(kind, ..)| kind == "table")
            .map(|(_, name, ..)| name.as_str())
            .collect();
        if !tables.contains(&"info") {
            return Err(ExportError::NotAnExport {
                path: self.display.clone(),
                reason: "it has no `info` table".into(),
            });
        }
        for table in REQUIRED_TABLES {
            if !tables.contains(&table) {
                return Err(ExportError::MissingTable {
                    path: self.display.clone(),
                    table,
                    reason: "the table does not exist".into(),
                });
            }
        }
        let schema_err = |reason: String| ExportError::Schema {
            path: self.display.clone(),
            reason,
        };
        for (kind, name, table, sql) in &objects {
            let sql = sql.as_deref().unwrap_or("");
            match kind.as_str() {
                "table"
                    if sql
                        .trim_start()
                        .to_ascii_uppercase()
                        .starts_with("CREATE VIRTUAL") =>
                {
                    return Err(schema_err(format!("`{name}` is a virtual table")))
                }
                "table" if REQUIRED_TABLES.contains(&name.as_str()) => {}
                "table" => return Err(schema_err(format!("unexpected table `{name}`"))),
                "index" if name.starts_with("sqlite_autoindex_") && sql.is_empty() => {}
                "index" => {
                    return Err(schema_err(format!(
                        "unexpected index `{name}` on `{table}`"
                    )))
                }
                other => return Err(schema_err(format!("unexpected {other} `{name}`"))),
            }
        }
        for (table, expected) in EXPECTED_SCHEMA {
            let mut stmt = conn
                .prepare("SELECT name, type, pk, hidden FROM pragma_table_xinfo(?1) ORDER BY cid")
                .map_err(|e| self.err("reading the schema", e))?;
            let columns: Vec<(String, String, i64, i64)> = stmt
                .query_map([table], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .and_then(|rows| rows.collect())
                .map_err(|e| self.err("reading the schema", e))?;
            let found: Vec<String> = columns
                .iter()
                .map(|(n, t, pk, hidden)| {
                    let generated = if *hidden != 0 { " GENERATED" } else { "" };
                    format!("{n} {}{generated}{}", t.to_ascii_uppercase(), pk_mark(*pk))
                })
                .collect();
            let wanted: Vec<String> = expected
                .iter()
                .map(|(n, t, pk)| format!("{n} {t}{}", pk_mark(*pk)))
                .collect();
            if found != wanted {
                let first = found
                    .iter()
                    .zip(&wanted)
                    .find(|(f, w)| f != w)
                    .map(|(f, w)| format!("column `{f}` where `{w}` is expected"))
                    .unwrap_or_else(|| {
                        format!(
                            "{} columns where {} are expected",
                            found.len(),
                            wanted.len()
                        )
                    });
                return Err(schema_err(format!("table `{table}`: {first}")));
            }
        }
        Ok(())
    }

    /// Reads and validates the `info` row (docs/formats.md §5.3 checks 1, 2 and 4).
    pub(crate) fn read_info(&self) -> Result<ExportInfo, ExportError> {
        let conn = self.get()?;
        let row: Option<Vec<Value>> = conn
            .query_row(
                "SELECT version, organization_id, realm_id, root_verify_key, snapshot_timestamp, \
                 vlobs_total_bytes, blocks_total_bytes, certificates_export_done, \
                 vlobs_export_done, blocks_metadata_export_done, blocks_data_export_done \
                 FROM info WHERE magic = ?1",
                [EXPORT_MAGIC],
                |r| (0..11).map(|i| r.get_ref(i).map(owned_value)).collect(),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
            .map_err(|e| match e.to_string() {
                s if s.contains("no such column") => ExportError::MissingTable {
                    path: self.display.clone(),
                    table: "info",
                    reason: s,
                },
                _ => self.err("reading the info row", e),
            })?;
        let Some(v) = row else {
            return Err(ExportError::NotAnExport {
                path: self.display.clone(),
                reason: format!("no `info` row with magic {EXPORT_MAGIC}"),
            });
        };
        let bad = |reason: String| ExportError::BadInfo {
            path: self.display.clone(),
            reason,
        };
        let int = |i: usize, name: &str| match &v[i] {
            Value::Integer(n) => Ok(*n),
            other => Err(bad(format!(
                "`{name}` is {}, not an integer",
                describe(other)
            ))),
        };
        let version = int(0, "version")?;
        if version != EXPORT_VERSION {
            return Err(ExportError::UnsupportedVersion {
                path: self.display.clone(),
                version,
            });
        }
        let organization_id = match &v[1] {
            Value::Text(s) => s.clone(),
            other => {
                return Err(bad(format!(
                    "`organization_id` is {}, not text",
                    describe(other)
                )))
            }
        };
        let realm_id: Id = match &v[2] {
            Value::Blob(b) if b.len() == 16 => b.as_slice().try_into().expect("16 bytes"),
            Value::Blob(b) => return Err(bad(format!("`realm_id` has {} bytes, not 16", b.len()))),
            other => {
                return Err(bad(format!(
                    "`realm_id` is {}, not a blob",
                    describe(other)
                )))
            }
        };
        let root_verify_key: [u8; 32] = match &v[3] {
            Value::Blob(b) if b.len() == 32 => b.as_slice().try_into().expect("32 bytes"),
            Value::Blob(b) => {
                return Err(bad(format!(
                    "`root_verify_key` has {} bytes, not 32",
                    b.len()
                )))
            }
            other => {
                return Err(bad(format!(
                    "`root_verify_key` is {}, not a blob",
                    describe(other)
                )))
            }
        };
        let nonneg = |i: usize, name: &str| -> Result<u64, ExportError> {
            let n = int(i, name)?;
            u64::try_from(n).map_err(|_| bad(format!("`{name}` is negative ({n})")))
        };
        Ok(ExportInfo {
            organization_id,
            realm_id,
            root_verify_key,
            snapshot_timestamp: DateTime(int(4, "snapshot_timestamp")?),
            vlobs_total_bytes: nonneg(5, "vlobs_total_bytes")?,
            blocks_total_bytes: nonneg(6, "blocks_total_bytes")?,
            certificates_export_done: int(7, "certificates_export_done")? == 1,
            vlobs_export_done: int(8, "vlobs_export_done")? == 1,
            blocks_metadata_export_done: int(9, "blocks_metadata_export_done")? == 1,
            blocks_data_export_done: int(10, "blocks_data_export_done")? == 1,
        })
    }
}

/// An owned copy of a column value. rusqlite's own conversion panics on TEXT that is not UTF-8;
/// here such text is kept as bytes, and the typed checks then refuse it by name.
fn owned_value(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(s) => Value::Text(s.to_string()),
            Err(_) => Value::Blob(t.to_vec()),
        },
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// A column value's kind and size, for messages (never its possibly huge content).
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Integer(i) => format!("the integer {i}"),
        Value::Real(f) => format!("the real {f}"),
        Value::Text(t) => format!("{}-byte text", t.len()),
        Value::Blob(b) => format!("a {}-byte blob (or text that is not UTF-8)", b.len()),
    }
}

fn pk_mark(pk: i64) -> &'static str {
    if pk != 0 {
        " PRIMARY KEY"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_escapes_special_characters() {
        assert_eq!(
            sqlite_uri(Path::new("/tmp/a?b#c%d e.sqlite")),
            "file:/tmp/a%3Fb%23c%25d%20e.sqlite?mode=ro&immutable=1"
        );
    }
}

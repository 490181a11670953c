//! The SQLite side: opening strictly read-only and immutable, the opening checks (spec §5.3), and a
//! small pool of read-only connections so that many threads can query at once
//! (`rusqlite::Connection` is `Send` but not `Sync`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags};

use super::error::ExportError;
use crate::parsec::device::Id;
use crate::parsec::DateTime;

/// `info.magic` of a realm export.
pub const EXPORT_MAGIC: i64 = 87948;
/// The only export format version.
pub const EXPORT_VERSION: i64 = 1;

/// Tables the reader needs (spec §5.2).
pub const REQUIRED_TABLES: [&str; 10] = [
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
pub struct ConnectionPool {
    path: PathBuf,
    display: String,
    idle: Mutex<Vec<Connection>>,
}

/// A connection borrowed from the pool; returned on drop.
pub struct PooledConnection<'a> {
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
    pub fn open(path: &Path) -> Result<Self, ExportError> {
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
        // Read-only anyway; this makes any accidental write attempt fail loudly.
        conn.pragma_update(None, "query_only", true)
            .map_err(|e| self.err("configuring the connection", e))?;
        Ok(conn)
    }

    /// Borrows a connection (opens a new one when all are busy).
    pub fn get(&self) -> Result<PooledConnection<'_>, ExportError> {
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
    pub fn display_path(&self) -> &str {
        &self.display
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An SQLite error with what was being done.
    pub fn err(&self, context: &str, e: impl std::fmt::Display) -> ExportError {
        let reason = e.to_string();
        if reason.contains("file is not a database") {
            return ExportError::NotSqlite {
                path: self.display.clone(),
                reason,
            };
        }
        ExportError::sqlite(&self.display, context, reason)
    }

    /// Checks that every required table exists.
    pub fn check_tables(&self) -> Result<(), ExportError> {
        let conn = self.get()?;
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
            .map_err(|e| self.err("reading the schema", e))?;
        let names: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.err("reading the schema", e))?;
        if !names.iter().any(|n| n == "info") {
            return Err(ExportError::NotAnExport {
                path: self.display.clone(),
                reason: "it has no `info` table".into(),
            });
        }
        for table in REQUIRED_TABLES {
            if !names.iter().any(|n| n == table) {
                return Err(ExportError::MissingTable {
                    path: self.display.clone(),
                    table,
                    reason: "the table does not exist".into(),
                });
            }
        }
        Ok(())
    }

    /// Reads and validates the `info` row (spec §5.3 checks 1, 2 and 4).
    pub fn read_info(&self) -> Result<ExportInfo, ExportError> {
        let conn = self.get()?;
        let row: Option<Vec<Value>> = conn
            .query_row(
                "SELECT version, organization_id, realm_id, root_verify_key, snapshot_timestamp, \
                 vlobs_total_bytes, blocks_total_bytes, certificates_export_done, \
                 vlobs_export_done, blocks_metadata_export_done, blocks_data_export_done \
                 FROM info WHERE magic = ?1",
                [EXPORT_MAGIC],
                |r| (0..11).map(|i| r.get::<_, Value>(i)).collect(),
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
            other => Err(bad(format!("`{name}` is {other:?}, not an integer"))),
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
            other => return Err(bad(format!("`organization_id` is {other:?}, not text"))),
        };
        let realm_id: Id = match &v[2] {
            Value::Blob(b) if b.len() == 16 => b.as_slice().try_into().expect("16 bytes"),
            Value::Blob(b) => return Err(bad(format!("`realm_id` has {} bytes, not 16", b.len()))),
            other => return Err(bad(format!("`realm_id` is {other:?}, not a blob"))),
        };
        let root_verify_key: [u8; 32] = match &v[3] {
            Value::Blob(b) if b.len() == 32 => b.as_slice().try_into().expect("32 bytes"),
            Value::Blob(b) => {
                return Err(bad(format!(
                    "`root_verify_key` has {} bytes, not 32",
                    b.len()
                )))
            }
            other => return Err(bad(format!("`root_verify_key` is {other:?}, not a blob"))),
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

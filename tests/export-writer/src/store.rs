//! The SQLite side of the writer: schema version 1 (docs/formats.md §5.2, the same table
//! definitions as the exports written by the Parsec server) and batched inserts on the caller's
//! thread.

use std::collections::HashMap;

use rusqlite::{params, Connection};

use super::WriterError;
use sequester_custody::parsec::device::Id;

/// Schema of a realm export, version 1 (docs/formats.md §5.2). Column order, types, defaults and
/// constraints are those of the server's exports; `tests/export_generated.rs` compares them
/// with the real fixture.
pub const SCHEMA_SQL: &str = "
CREATE TABLE info (
    magic INTEGER UNIQUE NOT NULL DEFAULT 87948,
    version INTEGER NOT NULL DEFAULT 1,

    organization_id VARCHAR(32) NOT NULL,
    realm_id BLOB NOT NULL,
    root_verify_key BLOB NOT NULL,

    snapshot_timestamp INTEGER NOT NULL,

    vlobs_total_bytes INTEGER NOT NULL,
    blocks_total_bytes INTEGER NOT NULL,

    certificates_export_done INTEGER NOT NULL DEFAULT 0,
    vlobs_export_done INTEGER NOT NULL DEFAULT 0,
    blocks_metadata_export_done INTEGER NOT NULL DEFAULT 0,
    blocks_data_export_done INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE common_certificate (
    _id INTEGER PRIMARY KEY,
    certificate BLOB NOT NULL
);
CREATE TABLE sequester_certificate (
    _id INTEGER PRIMARY KEY,
    certificate BLOB NOT NULL
);
CREATE TABLE realm_certificate (
    _id INTEGER PRIMARY KEY,
    certificate BLOB NOT NULL
);
CREATE TABLE realm_keys_bundle (
    key_index INTEGER PRIMARY KEY,
    keys_bundle BLOB NOT NULL
);
CREATE TABLE realm_keys_bundle_access (
    _id INTEGER PRIMARY KEY,
    user_id BLOB NOT NULL,
    key_index INTEGER NOT NULL,
    access BLOB NOT NULL
);
CREATE TABLE realm_sequester_keys_bundle_access (
    _id INTEGER PRIMARY KEY,
    sequester_service_id BLOB NOT NULL,
    key_index INTEGER NOT NULL,
    access BLOB NOT NULL
);
CREATE TABLE vlob_atom (
    sequential_id INTEGER PRIMARY KEY,
    vlob_id BLOB NOT NULL,
    version INTEGER NOT NULL,
    key_index INTEGER NOT NULL,
    blob BLOB NOT NULL,
    size INTEGER NOT NULL,
    author BLOB NOT NULL,
    timestamp INTEGER NOT NULL,

    UNIQUE(vlob_id, timestamp)
);
CREATE TABLE block (
    sequential_id INTEGER PRIMARY KEY,
    block_id BLOB NOT NULL UNIQUE,
    author BLOB NOT NULL,
    size INTEGER NOT NULL,
    key_index INTEGER NOT NULL
);
CREATE TABLE block_data (
    block INTEGER PRIMARY KEY REFERENCES block(sequential_id),
    data BLOB NOT NULL
);
";

/// Commit the running transaction after this many bytes, so SQLite's dirty page cache stays small.
const COMMIT_EVERY: u64 = 128 * 1024 * 1024;

/// A finished CPU task, ready to be stored.
pub enum Done {
    Block {
        seq: i64,
        id: Id,
        author: Id,
        key_index: u64,
        data: Vec<u8>,
        digest: [u8; 32],
    },
    FileHash {
        ticket: u64,
        sha256: [u8; 32],
    },
    Vlob {
        seq: i64,
        vlob_id: Id,
        version: u32,
        key_index: u64,
        author: Id,
        timestamp: i64,
        blob: Vec<u8>,
    },
}

pub struct Store {
    pub conn: Connection,
    pub digests: HashMap<Id, [u8; 32]>,
    pub file_hashes: HashMap<u64, [u8; 32]>,
    pub vlobs_total_bytes: u64,
    pub blocks_total_bytes: u64,
    pub blocks_count: u64,
    pub vlobs_count: u64,
    uncommitted: u64,
    pub error: Option<rusqlite::Error>,
}

impl Store {
    pub fn create(conn: Connection) -> Result<Self, WriterError> {
        // The file is private to the writer until it is renamed into place: no journal needed.
        conn.execute_batch(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -65536;",
        )?;
        conn.execute_batch(SCHEMA_SQL)?;
        conn.execute_batch("BEGIN")?;
        Ok(Store {
            conn,
            digests: HashMap::new(),
            file_hashes: HashMap::new(),
            vlobs_total_bytes: 0,
            blocks_total_bytes: 0,
            blocks_count: 0,
            vlobs_count: 0,
            uncommitted: 0,
            error: None,
        })
    }

    /// Stores a finished task; the first SQLite error is kept and reported by [`Store::check`].
    pub fn handle(&mut self, done: Done) {
        if self.error.is_some() {
            return;
        }
        if let Err(e) = self.try_handle(done) {
            self.error = Some(e);
        }
    }

    pub fn check(&mut self) -> Result<(), WriterError> {
        match self.error.take() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    fn try_handle(&mut self, done: Done) -> rusqlite::Result<()> {
        match done {
            Done::Block {
                seq,
                id,
                author,
                key_index,
                data,
                digest,
            } => {
                self.conn
                    .prepare_cached(
                        "INSERT INTO block (sequential_id, block_id, author, size, key_index) \
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![
                        seq,
                        &id[..],
                        &author[..],
                        data.len() as i64,
                        key_index as i64
                    ])?;
                self.conn
                    .prepare_cached("INSERT INTO block_data (block, data) VALUES (?1, ?2)")?
                    .execute(params![seq, data])?;
                self.digests.insert(id, digest);
                self.blocks_total_bytes += data.len() as u64;
                self.blocks_count += 1;
                self.count(data.len() as u64)?;
            }
            Done::FileHash { ticket, sha256 } => {
                self.file_hashes.insert(ticket, sha256);
            }
            Done::Vlob {
                seq,
                vlob_id,
                version,
                key_index,
                author,
                timestamp,
                blob,
            } => {
                self.conn
                    .prepare_cached(
                        "INSERT INTO vlob_atom (sequential_id, vlob_id, version, key_index, blob, \
                         size, author, timestamp) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    )?
                    .execute(params![
                        seq,
                        &vlob_id[..],
                        version,
                        key_index as i64,
                        blob,
                        blob.len() as i64,
                        &author[..],
                        timestamp
                    ])?;
                self.vlobs_total_bytes += blob.len() as u64;
                self.vlobs_count += 1;
                self.count(blob.len() as u64)?;
            }
        }
        Ok(())
    }

    fn count(&mut self, bytes: u64) -> rusqlite::Result<()> {
        self.uncommitted += bytes;
        if self.uncommitted >= COMMIT_EVERY {
            self.conn.execute_batch("COMMIT; BEGIN")?;
            self.uncommitted = 0;
        }
        Ok(())
    }

    /// Appends a row to one of the `_id`-keyed certificate tables (ids from 0, as Parsec does).
    pub fn certificate(&mut self, table: &str, blob: &[u8]) -> Result<(), WriterError> {
        let next: i64 = self.conn.query_row(
            &format!("SELECT COALESCE(MAX(_id) + 1, 0) FROM {table}"),
            [],
            |r| r.get(0),
        )?;
        self.conn.execute(
            &format!("INSERT INTO {table} (_id, certificate) VALUES (?1, ?2)"),
            params![next, blob],
        )?;
        Ok(())
    }

    pub fn keys_bundle(&mut self, key_index: u64, blob: &[u8]) -> Result<(), WriterError> {
        self.conn.execute(
            "INSERT INTO realm_keys_bundle (key_index, keys_bundle) VALUES (?1, ?2)",
            params![key_index as i64, blob],
        )?;
        Ok(())
    }

    pub fn user_access(
        &mut self,
        user: &Id,
        key_index: u64,
        access: &[u8],
    ) -> Result<(), WriterError> {
        self.conn.execute(
            "INSERT INTO realm_keys_bundle_access (_id, user_id, key_index, access) \
             VALUES ((SELECT COALESCE(MAX(_id) + 1, 0) FROM realm_keys_bundle_access), ?1, ?2, ?3)",
            params![&user[..], key_index as i64, access],
        )?;
        Ok(())
    }

    pub fn sequester_access(
        &mut self,
        service: &Id,
        key_index: u64,
        access: &[u8],
    ) -> Result<(), WriterError> {
        self.conn.execute(
            "INSERT INTO realm_sequester_keys_bundle_access (_id, sequester_service_id, key_index, \
             access) VALUES ((SELECT COALESCE(MAX(_id) + 1, 0) FROM \
             realm_sequester_keys_bundle_access), ?1, ?2, ?3)",
            params![&service[..], key_index as i64, access],
        )?;
        Ok(())
    }

    /// Writes the `info` row with every `*_done` flag set and commits.
    pub fn finish(
        &mut self,
        organization_id: &str,
        realm_id: &Id,
        root_verify_key: &[u8; 32],
        snapshot: i64,
    ) -> Result<(), WriterError> {
        self.conn.execute(
            "INSERT INTO info (magic, version, organization_id, realm_id, root_verify_key, \
             snapshot_timestamp, vlobs_total_bytes, blocks_total_bytes, certificates_export_done, \
             vlobs_export_done, blocks_metadata_export_done, blocks_data_export_done) \
             VALUES (87948, 1, ?1, ?2, ?3, ?4, ?5, ?6, 1, 1, 1, 1)",
            params![
                organization_id,
                &realm_id[..],
                &root_verify_key[..],
                snapshot,
                self.vlobs_total_bytes as i64,
                self.blocks_total_bytes as i64
            ],
        )?;
        self.conn.execute_batch("COMMIT")?;
        Ok(())
    }
}

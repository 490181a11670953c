//! The export file and the unlocked realm: the public reading API used by the CLI, the FUSE
//! mount and the benchmarks.
//!
//! Threading model: [`ExportFile`] and [`Realm`] are `Send + Sync` and every method takes `&self`;
//! share them with `Arc`. SQLite access goes through a pool of read-only connections (one per
//! concurrent caller), caches are bounded LRUs whose lock is never held while querying or
//! decrypting. Opening reads only the `info` row and the schema; unlocking reads the certificate
//! tables (small) and the access rows, never the vlobs or blocks.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use super::cache::LruCache;
use super::chain::{
    self, BundleSource, Organization, RealmCertificates, RealmKeys, RealmName, RecoveryReport,
};
use super::db::{ConnectionPool, ExportInfo};
use super::error::ExportError;
use super::inflight::SingleFlight;
use super::sequester_topic::{self, SequesterService, SequesterTopic};
use crate::crypto::sha256;
use crate::crypto::symmetric::{derive_key, secretbox_open, Plaintext};
use crate::parsec::device::Id;
use crate::parsec::entry_name::EntryName;
use crate::parsec::manifest::{BlockAccess, FileManifest, FolderManifest, Manifest};
use crate::parsec::DateTime;
use crate::token::{KeyHandle, TokenDescription};

/// Options for [`ExportFile::open`].
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Read an export whose `*_done` flags are not all set (every command then says so).
    pub allow_incomplete: bool,
}

/// Options for [`ExportFile::unlock`].
#[derive(Debug, Clone, Default)]
pub struct UnlockOptions {
    /// Only needed when the token key matches several services (or none, to force one).
    pub service_id: Option<Id>,
}

/// Cache sizes of a [`Realm`].
#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    /// Bytes of decoded manifests (weighted by encrypted size).
    pub manifest_bytes: usize,
    /// Bytes of decrypted blocks.
    pub block_bytes: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            manifest_bytes: 32 << 20,
            block_bytes: 64 << 20,
        }
    }
}

/// An opened export file (no key needed). Cheap to open: only the schema and the `info` row are
/// read.
pub struct ExportFile {
    pool: ConnectionPool,
    info: ExportInfo,
}

/// One `realm_sequester_keys_bundle_access` row (metadata only).
#[derive(Debug, Clone, serde::Serialize)]
pub struct AccessRow {
    #[serde(serialize_with = "super::ser_id")]
    pub service_id: Id,
    pub key_index: u64,
}

fn blob_to_id(b: Vec<u8>, what: &str) -> Result<Id, String> {
    b.as_slice()
        .try_into()
        .map_err(|_| format!("{what} has {} bytes, not 16", b.len()))
}

impl ExportFile {
    /// Opens `path` read-only and immutable, checks the schema, magic, version and completeness.
    pub fn open(path: &Path, options: &OpenOptions) -> Result<Arc<ExportFile>, ExportError> {
        let pool = ConnectionPool::open(path)?;
        pool.check_tables()?;
        let info = pool.read_info()?;
        if !info.is_complete() && !options.allow_incomplete {
            return Err(ExportError::Incomplete {
                path: pool.display_path().to_string(),
                missing: info.missing_parts().join(", "),
            });
        }
        Ok(Arc::new(ExportFile { pool, info }))
    }

    pub fn info(&self) -> &ExportInfo {
        &self.info
    }

    /// The path as given by the caller.
    pub fn display_path(&self) -> &str {
        self.pool.display_path()
    }

    /// The canonical path.
    pub fn path(&self) -> &Path {
        self.pool.path()
    }

    fn certificate_rows(&self, table: &'static str) -> Result<Vec<(i64, Vec<u8>)>, ExportError> {
        let conn = self.pool.get()?;
        let sql = format!("SELECT _id, certificate FROM {table} ORDER BY _id");
        let mut stmt = conn.prepare(&sql).map_err(|e| self.table_err(table, e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.table_err(table, e))?;
        Ok(rows)
    }

    fn table_err(&self, table: &'static str, e: impl std::fmt::Display) -> ExportError {
        let reason = e.to_string();
        if reason.contains("no such column") || reason.contains("no such table") {
            ExportError::MissingTable {
                path: self.display_path().to_string(),
                table,
                reason,
            }
        } else {
            self.pool.err(&format!("reading table {table}"), reason)
        }
    }

    /// Step 1: devices and users verified from the root key.
    pub fn organization(&self) -> Result<Organization, ExportError> {
        let rows = self.certificate_rows("common_certificate")?;
        Ok(chain::verify_organization(
            &self.info.root_verify_key,
            &rows,
        ))
    }

    /// Step 2: the verified sequester topic; `None` for a non-sequestered organization.
    pub fn sequester_topic(&self) -> Result<Option<SequesterTopic>, ExportError> {
        let rows = self.certificate_rows("sequester_certificate")?;
        sequester_topic::verify_topic(&self.info.root_verify_key, &rows)
    }

    /// Step 3: verified realm certificates (rotations, names, roles).
    pub fn realm_certificates(&self, org: &Organization) -> Result<RealmCertificates, ExportError> {
        let rows = self.certificate_rows("realm_certificate")?;
        Ok(chain::verify_realm_certificates(
            &self.info.realm_id,
            org,
            &rows,
        ))
    }

    /// Every sequester access row (service, key index), without the encrypted payloads.
    pub fn sequester_access_rows(&self) -> Result<Vec<AccessRow>, ExportError> {
        let table = "realm_sequester_keys_bundle_access";
        let conn = self.pool.get()?;
        let mut stmt = conn
            .prepare(
                "SELECT sequester_service_id, key_index FROM realm_sequester_keys_bundle_access \
                 ORDER BY _id",
            )
            .map_err(|e| self.table_err(table, e))?;
        let raw = stmt
            .query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.table_err(table, e))?;
        raw.into_iter()
            .map(|(id, key_index)| {
                Ok(AccessRow {
                    service_id: blob_to_id(id, "sequester_service_id").map_err(|reason| {
                        ExportError::MissingTable {
                            path: self.display_path().to_string(),
                            table,
                            reason,
                        }
                    })?,
                    key_index: key_index.max(0) as u64,
                })
            })
            .collect()
    }

    /// Row counts of every table (for `export info`).
    pub fn table_counts(&self) -> Result<Vec<(&'static str, u64)>, ExportError> {
        let conn = self.pool.get()?;
        super::db::REQUIRED_TABLES
            .iter()
            .map(|t| {
                conn.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| {
                    r.get::<_, i64>(0)
                })
                .map(|n| (*t, n as u64))
                .map_err(|e| self.table_err(t, e))
            })
            .collect()
    }

    /// Valid range of T (docs/formats.md §5.4 step 9): root version 1 timestamp .. snapshot, from
    /// SQL only. `None` when the root has no version at all.
    pub fn time_range(&self) -> Result<Option<(DateTime, DateTime)>, ExportError> {
        let conn = self.pool.get()?;
        let first: Option<i64> = conn
            .query_row(
                "SELECT MIN(timestamp) FROM vlob_atom WHERE vlob_id = ?1",
                [&self.info.realm_id[..]],
                |r| r.get(0),
            )
            .map_err(|e| self.table_err("vlob_atom", e))?;
        Ok(first.map(|f| (DateTime(f), self.info.snapshot_timestamp)))
    }

    /// Every distinct vlob timestamp (the instants at which the tree can change), in order.
    pub fn change_instants(&self) -> Result<Vec<DateTime>, ExportError> {
        let conn = self.pool.get()?;
        let mut stmt = conn
            .prepare("SELECT DISTINCT timestamp FROM vlob_atom ORDER BY timestamp")
            .map_err(|e| self.table_err("vlob_atom", e))?;
        let v = stmt
            .query_map([], |r| r.get::<_, i64>(0))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.table_err("vlob_atom", e))?;
        Ok(v.into_iter().map(DateTime).collect())
    }

    /// Runs the chain (docs/formats.md §5.4 steps 1-7) with the token key and returns the readable
    /// realm.
    ///
    /// The token key is matched to its service certificate by modulus and exponent; the token
    /// is used once per keys bundle actually needed (zero times when the service has no access).
    pub fn unlock(
        self: &Arc<Self>,
        token_key: &dyn KeyHandle,
        options: &UnlockOptions,
    ) -> Result<Realm, ExportError> {
        self.unlock_with_limits(token_key, options, CacheLimits::default())
    }

    /// [`Self::unlock`] with explicit cache sizes.
    pub fn unlock_with_limits(
        self: &Arc<Self>,
        token_key: &dyn KeyHandle,
        options: &UnlockOptions,
        limits: CacheLimits,
    ) -> Result<Realm, ExportError> {
        let org = self.organization()?;
        let topic = self.sequester_topic()?.ok_or(ExportError::NotSequestered)?;
        let token_spki = token_key.public_key_spki().to_vec();
        let token_public =
            sequester_topic::rsa_public_key(&token_spki).map_err(ExportError::BadTokenKey)?;
        let k = token_public.k();
        let matching: Vec<&SequesterService> = topic
            .services
            .iter()
            .filter(|s| {
                sequester_topic::rsa_public_key(&s.encryption_key_der)
                    .map(|pk| sequester_topic::same_rsa_key(&pk, &token_public))
                    .unwrap_or(false)
            })
            .collect();
        let describe = |list: &[&SequesterService]| {
            list.iter()
                .map(|s| format!("{} `{}`", hex::encode(s.service_id), s.label))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let service = match (&options.service_id, matching.as_slice()) {
            (Some(id), _) => {
                let Some(s) = topic.services.iter().find(|s| &s.service_id == id) else {
                    return Err(ExportError::BadServiceId {
                        requested: hex::encode(id),
                        reason: "no such service in this export".into(),
                    });
                };
                if !matching.iter().any(|m| m.service_id == *id) {
                    return Err(ExportError::BadServiceId {
                        requested: hex::encode(id),
                        reason: "that service's certificate holds a different public key than \
                                 the token key"
                            .into(),
                    });
                }
                s.clone()
            }
            (None, [one]) => (*one).clone(),
            (None, []) => {
                return Err(ExportError::NoMatchingService {
                    fingerprint: crate::crypto::sha256_hex(&token_spki),
                    services: {
                        let mut listed = if topic.services.is_empty() {
                            "none".to_string()
                        } else {
                            describe(&topic.services.iter().collect::<Vec<_>>())
                        };
                        if !topic.problems.is_empty() {
                            listed.push_str(&format!(
                                "; {} sequester certificate(s) were skipped as invalid, see \
                                 `export info`",
                                topic.problems.len()
                            ));
                        }
                        listed
                    },
                })
            }
            (None, many) => {
                return Err(ExportError::AmbiguousService {
                    services: describe(many),
                })
            }
        };
        let certs = self.realm_certificates(&org)?;
        // Before any token operation: with certificates for another realm every later step
        // would fail for a misleading reason ("no workspace yet", "no key").
        if let Some(realms) = certs.only_for_other_realms() {
            return Err(ExportError::RealmMismatch {
                path: self.display_path().to_string(),
                info_realm: hex::encode(self.info.realm_id),
                certificate_realms: realms
                    .iter()
                    .map(hex::encode)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let mut access_key_indexes: Vec<u64> = self
            .sequester_access_rows()?
            .into_iter()
            .filter(|r| r.service_id == service.service_id)
            .map(|r| r.key_index)
            .collect();
        access_key_indexes.sort_unstable();
        access_key_indexes.dedup();
        let (keys, report) = chain::recover_keys(
            chain::RecoveryContext {
                source: self.as_ref(),
                service_id: &service.service_id,
                realm_id: &self.info.realm_id,
                certs: &certs,
                org: &org,
                access_key_indexes,
            },
            token_key,
            k,
        )?;
        Ok(Realm {
            file: self.clone(),
            org,
            topic,
            service,
            certs,
            keys,
            report,
            token: token_key.token(),
            token_key_fingerprint: crate::crypto::sha256_hex(&token_spki),
            manifests: LruCache::new(limits.manifest_bytes),
            blocks: LruCache::new(limits.block_bytes),
            blocks_in_flight: SingleFlight::default(),
            manifests_in_flight: SingleFlight::default(),
        })
    }
}

impl BundleSource for ExportFile {
    fn access_rows(&self, service_id: &Id, key_index: u64) -> Result<Vec<Vec<u8>>, ExportError> {
        let table = "realm_sequester_keys_bundle_access";
        let conn = self.pool.get()?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT access FROM realm_sequester_keys_bundle_access \
                 WHERE key_index = ?1 AND sequester_service_id = ?2 ORDER BY _id",
            )
            .map_err(|e| self.table_err(table, e))?;
        let rows = stmt
            .query_map(rusqlite::params![key_index as i64, &service_id[..]], |r| {
                r.get::<_, Vec<u8>>(0)
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.table_err(table, e))?;
        Ok(rows)
    }

    fn keys_bundle(&self, key_index: u64) -> Result<Option<Vec<u8>>, ExportError> {
        let conn = self.pool.get()?;
        match conn.query_row(
            "SELECT keys_bundle FROM realm_keys_bundle WHERE key_index = ?1",
            [key_index as i64],
            |r| r.get::<_, Vec<u8>>(0),
        ) {
            Ok(b) => Ok(Some(b)),
            Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
            Err(e) => Err(self.table_err("realm_keys_bundle", e)),
        }
    }
}

/// The `vlob_atom` row of one manifest version (no content). Its whole identity keys the
/// manifest cache: a row that differs in any column is verified on its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct VersionMeta {
    #[serde(serialize_with = "super::ser_id")]
    pub vlob_id: Id,
    pub version: u32,
    pub key_index: u64,
    #[serde(serialize_with = "super::ser_id")]
    pub author: Id,
    pub timestamp: DateTime,
    /// `vlob_atom.sequential_id` (server insertion order).
    pub sequential_id: i64,
}

/// What this service can see of one manifest version.
#[derive(Debug, Clone)]
pub enum VersionContent {
    /// Decrypted and fully verified.
    Readable(Arc<Manifest>),
    /// Encrypted with a realm key this service does not have: never given (normal, not an
    /// error), or `unusable` with why when its keys-bundle access or bundle is present but
    /// damaged or forged (reported by the key recovery).
    Unreadable {
        key_index: u64,
        unusable: Option<Arc<str>>,
    },
    /// Integrity failure: bad signature, undecryptable with the right key, inconsistent fields.
    Invalid { reason: String },
}

/// One manifest version of an entry with what this service can see of it.
#[derive(Debug, Clone)]
pub struct EntryVersion {
    pub meta: VersionMeta,
    pub content: VersionContent,
}

impl EntryVersion {
    pub fn manifest(&self) -> Option<&Arc<Manifest>> {
        match &self.content {
            VersionContent::Readable(m) => Some(m),
            _ => None,
        }
    }

    pub fn folder(&self) -> Option<&FolderManifest> {
        match self.manifest().map(|m| &**m) {
            Some(Manifest::Folder(f)) => Some(f),
            _ => None,
        }
    }

    pub fn file(&self) -> Option<&FileManifest> {
        match self.manifest().map(|m| &**m) {
            Some(Manifest::File(f)) => Some(f),
            _ => None,
        }
    }

    /// Why this version cannot be shown, or `None` when it is readable.
    pub fn problem(&self) -> Option<String> {
        match &self.content {
            VersionContent::Readable(_) => None,
            VersionContent::Unreadable {
                key_index,
                unusable,
            } => Some(unreadable_reason(*key_index, unusable.as_deref())),
            VersionContent::Invalid { reason } => Some(format!("invalid: {reason}")),
        }
    }
}

/// The standard message for data this service has no key for: never given, or given but
/// `unusable` (the access row or keys bundle is present but damaged or forged; why).
pub fn unreadable_reason(key_index: u64, unusable: Option<&str>) -> String {
    match unusable {
        None => format!(
            "encrypted with realm key index {key_index}, which this sequester service was never \
             given"
        ),
        Some(why) => format!(
            "encrypted with realm key index {key_index}, whose keys-bundle access for this \
             sequester service is present but unusable (damaged or forged: {why})"
        ),
    }
}

/// A child of a folder at time T.
#[derive(Debug, Clone)]
pub struct ChildEntry {
    pub name: EntryName,
    pub id: Id,
    pub version: EntryVersion,
}

/// Why a block cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("block {0} not found in the export")]
    NotFound(String),
    #[error("block {0} has no data (incomplete export)")]
    NoData(String),
    #[error("block {id}: {}", unreadable_reason(*key_index, unusable.as_deref()))]
    KeyUnavailable {
        id: String,
        key_index: u64,
        unusable: Option<Arc<str>>,
    },
    #[error("block {0} does not decrypt (corrupted)")]
    Decrypt(String),
    #[error("block {id}: cleartext is {found} bytes, the manifest says {expected}")]
    SizeMismatch {
        id: String,
        expected: u64,
        found: u64,
    },
    #[error("block {0}: SHA-256 differs from the manifest's digest")]
    DigestMismatch(String),
    #[error("block {id}: {reason}")]
    Storage { id: String, reason: String },
}

/// A decrypted, verified block (erased on drop).
pub type BlockData = Arc<Plaintext>;

/// An unlocked realm: the export, the verified chain and the realm keys this service obtained.
///
/// `Send + Sync`; all methods take `&self`. Realm keys are zeroized when it is dropped.
pub struct Realm {
    file: Arc<ExportFile>,
    org: Organization,
    topic: SequesterTopic,
    service: SequesterService,
    certs: RealmCertificates,
    keys: RealmKeys,
    report: RecoveryReport,
    token: TokenDescription,
    token_key_fingerprint: String,
    manifests: LruCache<VersionMeta, Manifest>,
    blocks: LruCache<(Id, [u8; 32], u64), Plaintext>,
    blocks_in_flight: SingleFlight<(Id, [u8; 32], u64), Result<BlockData, BlockError>>,
    manifests_in_flight: SingleFlight<VersionMeta, Option<EntryVersion>>,
}

/// `block.key_index` and `block_data.data` (NULL when the data row is missing).
type StoredBlock = (u64, Option<Vec<u8>>);

const VERSION_COLUMNS: &str = "sequential_id, version, key_index, author, timestamp";

fn row_to_meta(vlob_id: Id, r: &rusqlite::Row) -> rusqlite::Result<(i64, i64, i64, Vec<u8>, i64)> {
    let _ = vlob_id;
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

impl Realm {
    pub fn file(&self) -> &Arc<ExportFile> {
        &self.file
    }

    pub fn info(&self) -> &ExportInfo {
        self.file.info()
    }

    pub fn realm_id(&self) -> Id {
        self.file.info.realm_id
    }

    pub fn snapshot(&self) -> DateTime {
        self.file.info.snapshot_timestamp
    }

    pub fn organization(&self) -> &Organization {
        &self.org
    }

    pub fn sequester_topic(&self) -> &SequesterTopic {
        &self.topic
    }

    /// The service matched to the token key.
    pub fn service(&self) -> &SequesterService {
        &self.service
    }

    pub fn realm_certificates(&self) -> &RealmCertificates {
        &self.certs
    }

    /// What the key recovery did (token operations, obtained and missing key indexes).
    pub fn recovery(&self) -> &RecoveryReport {
        &self.report
    }

    /// Why key `key_index` is missing although this service was given it (its access row or
    /// keys bundle is damaged or forged); `None` when it was never given (or is available).
    pub fn key_unusable(&self, key_index: u64) -> Option<Arc<str>> {
        self.report
            .unusable_key_indexes
            .get(&key_index)
            .map(|why| Arc::from(why.as_str()))
    }

    /// [`unreadable_reason`] for key `key_index` of this realm.
    pub fn unreadable_reason(&self, key_index: u64) -> String {
        unreadable_reason(key_index, self.key_unusable(key_index).as_deref())
    }

    /// RSA operations done by the token during unlock.
    pub fn token_operations(&self) -> u32 {
        self.report.token_operations
    }

    pub fn token(&self) -> &TokenDescription {
        &self.token
    }

    /// SHA-256 of the token key's SPKI, hex.
    pub fn token_key_fingerprint(&self) -> &str {
        &self.token_key_fingerprint
    }

    /// Realm key indexes this service obtained.
    pub fn readable_key_indexes(&self) -> BTreeSet<u64> {
        self.keys.indexes()
    }

    pub fn has_key(&self, key_index: u64) -> bool {
        self.keys.get(key_index).is_some()
    }

    pub fn latest_key_index(&self) -> u64 {
        self.certs.latest_key_index
    }

    /// The workspace name at `t` (docs/formats.md §5.4 step 7).
    pub fn realm_name_at(&self, t: DateTime) -> RealmName {
        chain::realm_name_at(&self.certs, &self.keys, t)
    }

    fn storage_err(&self, context: &str, e: impl std::fmt::Display) -> ExportError {
        self.file.table_err_ctx(context, e)
    }

    fn meta_from_row(
        &self,
        vlob_id: Id,
        row: (i64, i64, i64, Vec<u8>, i64),
    ) -> Result<VersionMeta, ExportError> {
        let (sequential_id, version, key_index, author, timestamp) = row;
        let author = blob_to_id(author, "vlob_atom.author")
            .map_err(|e| self.storage_err("reading vlob_atom", e))?;
        Ok(VersionMeta {
            vlob_id,
            version: u32::try_from(version).unwrap_or(u32::MAX),
            key_index: u64::try_from(key_index).unwrap_or(u64::MAX),
            author,
            timestamp: DateTime(timestamp),
            sequential_id,
        })
    }

    /// The version of entry `id` valid at `t` (docs/formats.md §5.4 step 8); `None` if it does not
    /// exist at `t`. Never falls back to an older version when the current one is unreadable.
    pub fn entry_at(&self, id: &Id, t: DateTime) -> Result<Option<EntryVersion>, ExportError> {
        let row = {
            let conn = self.file.pool.get()?;
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {VERSION_COLUMNS} FROM vlob_atom \
                     WHERE vlob_id = ?1 AND timestamp <= ?2 ORDER BY timestamp DESC LIMIT 1"
                ))
                .map_err(|e| self.storage_err("reading vlob_atom", e))?;
            let mut rows = stmt
                .query(rusqlite::params![&id[..], t.as_micros()])
                .map_err(|e| self.storage_err("reading vlob_atom", e))?;
            match rows
                .next()
                .map_err(|e| self.storage_err("reading vlob_atom", e))?
            {
                Some(r) => Some(
                    row_to_meta(*id, r).map_err(|e| self.storage_err("reading vlob_atom", e))?,
                ),
                None => None,
            }
        };
        let Some(row) = row else { return Ok(None) };
        let meta = self.meta_from_row(*id, row)?;
        Ok(Some(self.load_version(meta)?))
    }

    /// Every version of entry `id`, oldest first.
    pub fn versions(&self, id: &Id) -> Result<Vec<EntryVersion>, ExportError> {
        let rows = {
            let conn = self.file.pool.get()?;
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {VERSION_COLUMNS} FROM vlob_atom WHERE vlob_id = ?1 ORDER BY timestamp"
                ))
                .map_err(|e| self.storage_err("reading vlob_atom", e))?;
            let rows = stmt
                .query_map([&id[..]], |r| row_to_meta(*id, r))
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(|e| self.storage_err("reading vlob_atom", e))?;
            rows
        };
        rows.into_iter()
            .map(|row| {
                let meta = self.meta_from_row(*id, row)?;
                self.load_version(meta)
            })
            .collect()
    }

    /// Every `vlob_atom` row in time order (metadata only; call [`Self::load_version`] for
    /// content). Used by `timeline` and `verify`; streams in pages to bound memory.
    pub fn for_each_version_meta(
        &self,
        f: impl FnMut(VersionMeta) -> Result<(), ExportError>,
    ) -> Result<(), ExportError> {
        self.for_each_version_meta_ordered("timestamp, sequential_id", f)
    }

    /// [`Self::for_each_version_meta`] entry by entry (each entry's versions together, in time
    /// order; the `UNIQUE(vlob_id, timestamp)` index serves it), so that a caller needs state
    /// for the current entry only.
    pub fn for_each_version_meta_by_entry(
        &self,
        f: impl FnMut(VersionMeta) -> Result<(), ExportError>,
    ) -> Result<(), ExportError> {
        self.for_each_version_meta_ordered("vlob_id, timestamp, sequential_id", f)
    }

    fn for_each_version_meta_ordered(
        &self,
        order: &str,
        mut f: impl FnMut(VersionMeta) -> Result<(), ExportError>,
    ) -> Result<(), ExportError> {
        let conn = self.file.pool.get()?;
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {VERSION_COLUMNS}, vlob_id FROM vlob_atom ORDER BY {order}"
            ))
            .map_err(|e| self.storage_err("reading vlob_atom", e))?;
        let mut rows = stmt
            .query([])
            .map_err(|e| self.storage_err("reading vlob_atom", e))?;
        while let Some(r) = rows
            .next()
            .map_err(|e| self.storage_err("reading vlob_atom", e))?
        {
            let vlob: Vec<u8> = r
                .get(5)
                .map_err(|e| self.storage_err("reading vlob_atom", e))?;
            let vlob_id = blob_to_id(vlob, "vlob_atom.vlob_id")
                .map_err(|e| self.storage_err("reading vlob_atom", e))?;
            let row =
                row_to_meta(vlob_id, r).map_err(|e| self.storage_err("reading vlob_atom", e))?;
            f(self.meta_from_row(vlob_id, row)?)?;
        }
        Ok(())
    }

    /// Decrypts and verifies one version (docs/formats.md §5.4 step 8, checks 1-5). Cached.
    pub fn load_version(&self, meta: VersionMeta) -> Result<EntryVersion, ExportError> {
        let invalid = |meta: VersionMeta, reason: String| EntryVersion {
            meta,
            content: VersionContent::Invalid { reason },
        };
        if meta.key_index > self.certs.latest_key_index || meta.key_index == 0 {
            let reason = format!(
                "non existent key index {} (latest rotation is {})",
                meta.key_index, self.certs.latest_key_index
            );
            return Ok(invalid(meta, reason));
        }
        let Some(kd) = self.keys.get(meta.key_index) else {
            let key_index = meta.key_index;
            return Ok(EntryVersion {
                meta,
                content: VersionContent::Unreadable {
                    key_index,
                    unusable: self.key_unusable(key_index),
                },
            });
        };
        // Who wrote it, checked on every call (a cache hit included): the author device must
        // exist at the version's timestamp, its user not be revoked by then, and hold a writing
        // role in the realm at that instant.
        let device = match self.org.device_at(&meta.author, meta.timestamp) {
            Ok(d) => d,
            Err(reason) => return Ok(invalid(meta, reason)),
        };
        let role = self.certs.role_at(&device.user_id, meta.timestamp);
        if !role.is_some_and(|r| chain::WRITING_ROLES.contains(&r)) {
            let reason = format!(
                "written at {} by {}, whose user {} in this realm at that time",
                meta.timestamp,
                self.org.describe_device(&meta.author),
                match role {
                    Some(r) => format!("had role {r}, which cannot write"),
                    None => "had no role".to_string(),
                }
            );
            return Ok(invalid(meta, reason));
        }
        // Only the decryption and decoding of this exact row are cached: they depend on nothing
        // but the row, which is immutable in a read-only export.
        if let Some(m) = self.manifests.get(&meta) {
            return Ok(EntryVersion {
                meta,
                content: VersionContent::Readable(m),
            });
        }
        let decrypt = |meta: VersionMeta| -> Result<EntryVersion, ExportError> {
            let blob: Vec<u8> = {
                let conn = self.file.pool.get()?;
                let mut stmt = conn
                    .prepare_cached("SELECT blob FROM vlob_atom WHERE sequential_id = ?1")
                    .map_err(|e| self.storage_err("reading vlob_atom", e))?;
                stmt.query_row([meta.sequential_id], |r| r.get(0))
                    .map_err(|e| self.storage_err("reading vlob_atom", e))?
            };
            let key = derive_key(kd, &meta.vlob_id);
            let signed = match secretbox_open(&key, &blob) {
                Ok(s) => s,
                Err(e) => return Ok(invalid(meta, format!("cannot decrypt: {e}"))),
            };
            let serialized = match device.verify(&signed) {
                Ok(s) => s,
                Err(e) => return Ok(invalid(meta, format!("author signature: {e}"))),
            };
            let manifest = match Manifest::decode(serialized) {
                Ok(m) => m,
                Err(e) => return Ok(invalid(meta, format!("cleartext corrupted: {e}"))),
            };
            if let Err(reason) = self.check_manifest(&meta, &manifest) {
                return Ok(invalid(meta, format!("cleartext corrupted: {reason}")));
            }
            let manifest = Arc::new(manifest);
            self.manifests
                .insert(meta.clone(), manifest.clone(), blob.len().max(64));
            Ok(EntryVersion {
                meta,
                content: VersionContent::Readable(manifest),
            })
        };
        // One decryption and signature check per row even when several threads ask for it at
        // once (the mount's request threads, parallel listings): the others wait and share it.
        // A storage error is not shared: each caller then tries on its own and reports it.
        let shared = self.manifests_in_flight.run(
            meta.clone(),
            || match self.manifests.get(&meta) {
                Some(m) => Some(EntryVersion {
                    meta: meta.clone(),
                    content: VersionContent::Readable(m),
                }),
                None => decrypt(meta.clone()).ok(),
            },
            || None,
        );
        match shared {
            Some(v) => Ok(v),
            None => decrypt(meta),
        }
    }

    fn check_manifest(&self, meta: &VersionMeta, m: &Manifest) -> Result<(), String> {
        let h = m.header();
        if h.author != meta.author {
            return Err("manifest author differs from the vlob row".into());
        }
        if h.timestamp != meta.timestamp {
            return Err("manifest timestamp differs from the vlob row".into());
        }
        if h.id != meta.vlob_id {
            return Err("manifest id differs from the vlob id".into());
        }
        if h.version != meta.version {
            return Err(format!(
                "manifest version {} differs from the vlob row version {}",
                h.version, meta.version
            ));
        }
        let is_root = meta.vlob_id == self.realm_id();
        match (m, is_root) {
            (Manifest::Folder(f), true) if f.header.parent != f.header.id => {
                Err("root folder is not its own parent".into())
            }
            (Manifest::File(_), true) => Err("the workspace root is a file manifest".into()),
            (Manifest::Folder(f), false) if f.header.parent == f.header.id => {
                Err("a non-root folder is its own parent".into())
            }
            (Manifest::File(f), _) => match super::walk::file_size_problem(f) {
                Some(reason) => Err(reason),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// The root folder at `t`; `None` before the workspace existed.
    pub fn root_at(&self, t: DateTime) -> Result<Option<EntryVersion>, ExportError> {
        self.entry_at(&self.realm_id(), t)
    }

    /// Children of `folder` at `t` (docs/formats.md §5.4 step 9): children that do not exist at `t`
    /// or whose readable manifest names another parent are skipped; unreadable and invalid children
    /// are kept (callers show them as such). Sorted by name.
    pub fn children_at(
        &self,
        folder: &FolderManifest,
        t: DateTime,
    ) -> Result<Vec<ChildEntry>, ExportError> {
        // Large folders: children are looked up and verified on all cores.
        let threads = if folder.children.len() >= 32 {
            super::parallel::default_threads()
        } else {
            1
        };
        self.children_at_with_threads(folder, t, threads)
    }

    /// [`Self::children_at`] with the children's manifests loaded (decrypted, signature checked)
    /// on `threads` threads.
    pub fn children_at_with_threads(
        &self,
        folder: &FolderManifest,
        t: DateTime,
        threads: usize,
    ) -> Result<Vec<ChildEntry>, ExportError> {
        Ok(self.children_and_strays_at(folder, t, threads)?.0)
    }

    /// [`Self::children_at_with_threads`], also returning the "strays": readable children
    /// skipped because their manifest names another parent (for the walks, which report one
    /// listed in two folders).
    pub fn children_and_strays_at(
        &self,
        folder: &FolderManifest,
        t: DateTime,
        threads: usize,
    ) -> Result<(Vec<ChildEntry>, Vec<ChildEntry>), ExportError> {
        let versions = super::parallel::map(&folder.children, threads, |c| self.entry_at(&c.id, t));
        Self::sort_children(folder, versions)
    }

    /// The part of [`Self::children_and_strays_at`] after the children's versions are loaded
    /// (`versions[i]` is `entry_at(folder.children[i].id, t)`): for a walk that loaded them
    /// ahead of time.
    pub fn sort_children(
        folder: &FolderManifest,
        versions: Vec<Result<Option<EntryVersion>, ExportError>>,
    ) -> Result<(Vec<ChildEntry>, Vec<ChildEntry>), ExportError> {
        let mut out = Vec::with_capacity(folder.children.len());
        let mut strays = Vec::new();
        for (child, version) in folder.children.iter().zip(versions) {
            let Some(version) = version? else {
                continue;
            };
            let stray = version
                .manifest()
                .is_some_and(|m| m.header().parent != folder.header.id);
            let entry = ChildEntry {
                name: child.name.clone(),
                id: child.id,
                version,
            };
            if stray {
                strays.push(entry);
            } else {
                out.push(entry);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        strays.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((out, strays))
    }

    /// Resolves a `/`-separated path at `t`. `""` or `"/"` is the root.
    pub fn resolve(&self, path: &str, t: DateTime) -> Result<EntryVersion, ExportError> {
        let components = split_path(path)?;
        let root = self.root_at(t)?.ok_or_else(|| {
            ExportError::NoSuchPath(format!("/ (the workspace did not exist yet at {t})"))
        })?;
        let mut current = root;
        let mut walked = String::new();
        // The walk rules (cycles, one name per entry, depth) apply to paths typed by the user
        // too: a path the listings do not show does not resolve.
        let root_id = self.realm_id();
        let mut lineage: Vec<Id> = vec![root_id];
        if components.len() > super::walk::MAX_DEPTH + 1 {
            return Err(ExportError::NoSuchPath(format!(
                "{path} (deeper than {} levels)",
                super::walk::MAX_DEPTH
            )));
        }
        for name in components {
            let folder = match &current.content {
                VersionContent::Readable(m) => match &**m {
                    Manifest::Folder(f) => f,
                    Manifest::File(_) => {
                        return Err(ExportError::NotAFolder {
                            path: display_path(&walked),
                        })
                    }
                },
                _ => {
                    return Err(ExportError::Unreadable {
                        path: display_path(&walked),
                        reason: current.problem().unwrap_or_default(),
                    })
                }
            };
            let wanted = EntryName::parse(name).map_err(|_| ExportError::BadPath(path.into()))?;
            let Some(child) = folder.children.iter().find(|c| c.name == wanted) else {
                walked.push('/');
                walked.push_str(name);
                return Err(ExportError::NoSuchPath(format!("{walked} (at {t})")));
            };
            walked.push('/');
            walked.push_str(name);
            if let Some((_, reason)) =
                super::walk::screen_child(folder, &root_id, &child.name, &child.id, |id| {
                    lineage.contains(id)
                })
            {
                return Err(ExportError::NoSuchPath(format!(
                    "{walked} (at {t}): {reason}"
                )));
            }
            lineage.push(child.id);
            let version = self.entry_at(&child.id, t)?;
            let version = match version {
                Some(v) => v,
                None => return Err(ExportError::NoSuchPath(format!("{walked} (at {t})"))),
            };
            if let Some(m) = version.manifest() {
                if m.header().parent != folder.header.id {
                    return Err(ExportError::NoSuchPath(format!("{walked} (at {t})")));
                }
            }
            current = version;
        }
        Ok(current)
    }

    /// The path of entry `id` at `t`, walking parents up to the root; `None` if some ancestor is
    /// unreadable, absent or inconsistent, or the entry is deeper than
    /// [`super::walk::MAX_DEPTH`] (so a `parent` cycle costs at most that many steps). An entry
    /// listed under several names gets the first in name order, as the walks show it.
    pub fn path_of(&self, id: &Id, t: DateTime) -> Result<Option<String>, ExportError> {
        let root = self.realm_id();
        let mut names = Vec::new();
        let mut current = *id;
        for _ in 0..=super::walk::MAX_DEPTH + 1 {
            if current == root {
                names.reverse();
                return Ok(Some(format!("/{}", names.join("/"))));
            }
            let Some(v) = self.entry_at(&current, t)? else {
                return Ok(None);
            };
            let Some(m) = v.manifest() else {
                return Ok(None);
            };
            let parent_id = m.header().parent;
            let Some(parent) = self.entry_at(&parent_id, t)? else {
                return Ok(None);
            };
            let Some(folder) = parent.folder() else {
                return Ok(None);
            };
            let Some(name) = folder
                .children
                .iter()
                .filter(|c| c.id == current)
                .map(|c| &c.name)
                .min()
            else {
                return Ok(None);
            };
            names.push(name.to_string());
            current = parent_id;
        }
        Ok(None)
    }

    /// Like [`Self::path_of`], but also finds the path of an entry whose version at `t` is
    /// unreadable or invalid, through the parent named by an older readable version (for reports).
    pub fn path_hint(&self, id: &Id, t: DateTime) -> Result<Option<String>, ExportError> {
        if let Some(p) = self.path_of(id, t)? {
            return Ok(Some(p));
        }
        for v in self.versions(id)?.iter().rev() {
            let Some(m) = v.manifest() else { continue };
            let parent = m.header().parent;
            let Some(parent_path) = self.path_of(&parent, t)? else {
                continue;
            };
            let Some(folder_version) = self.entry_at(&parent, t)? else {
                continue;
            };
            if let Some(child) = folder_version
                .folder()
                .and_then(|f| f.children.iter().find(|c| c.id == *id))
            {
                let sep = if parent_path == "/" { "" } else { "/" };
                return Ok(Some(format!("{parent_path}{sep}{}", child.name)));
            }
        }
        Ok(None)
    }

    /// Decrypts and verifies one block (docs/formats.md §5.4 step 10), through the bounded block
    /// cache.
    pub fn read_block(&self, access: &BlockAccess) -> Result<BlockData, BlockError> {
        // Keyed by what was verified, so a hit needs no new digest check.
        let cache_key = (access.id, access.digest, access.size);
        if let Some(b) = self.blocks.get(&cache_key) {
            return Ok(b);
        }
        // One decryption per block even when several readers ask for it at once.
        self.blocks_in_flight.run(
            cache_key,
            || {
                if let Some(b) = self.blocks.get(&cache_key) {
                    return Ok(b);
                }
                let data = Arc::new(self.decrypt_block(access)?);
                self.blocks.insert(cache_key, data.clone(), data.len());
                Ok(data)
            },
            || {
                Err(BlockError::Storage {
                    id: hex::encode(access.id),
                    reason: "the thread reading this block failed".into(),
                })
            },
        )
    }

    /// Like [`Self::read_block`] without touching the cache (bulk extraction).
    pub fn decrypt_block(&self, access: &BlockAccess) -> Result<Plaintext, BlockError> {
        let id_hex = hex::encode(access.id);
        let (key_index, data) = self
            .fetch_block(&access.id)
            .map_err(|reason| BlockError::Storage {
                id: id_hex.clone(),
                reason,
            })?
            .ok_or_else(|| BlockError::NotFound(id_hex.clone()))?;
        let data = data.ok_or_else(|| BlockError::NoData(id_hex.clone()))?;
        let kd = self
            .keys
            .get(key_index)
            .ok_or_else(|| BlockError::KeyUnavailable {
                id: id_hex.clone(),
                key_index,
                unusable: self.key_unusable(key_index),
            })?;
        let key = derive_key(kd, &access.id);
        let clear = secretbox_open(&key, &data).map_err(|_| BlockError::Decrypt(id_hex.clone()))?;
        if clear.len() as u64 != access.size {
            return Err(BlockError::SizeMismatch {
                id: id_hex,
                expected: access.size,
                found: clear.len() as u64,
            });
        }
        if sha256(&clear) != access.digest {
            return Err(BlockError::DigestMismatch(id_hex));
        }
        Ok(clear)
    }

    /// `block.key_index` of a block, `None` if it has no row (or on a storage error, which a
    /// later read reports).
    pub fn block_key_index(&self, id: &Id) -> Option<u64> {
        let conn = self.file.pool.get().ok()?;
        let mut stmt = conn
            .prepare_cached("SELECT key_index FROM block WHERE block_id = ?1")
            .ok()?;
        stmt.query_row([&id[..]], |r| r.get::<_, i64>(0))
            .ok()
            .map(|k| k.max(0) as u64)
    }

    /// `(block.key_index, block_data.data)` of a block; `None` if no row.
    fn fetch_block(&self, id: &Id) -> Result<Option<StoredBlock>, String> {
        let conn = self.file.pool.get().map_err(|e| e.to_string())?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT block.key_index, block_data.data FROM block \
                 LEFT JOIN block_data ON block.sequential_id = block_data.block \
                 WHERE block.block_id = ?1",
            )
            .map_err(|e| e.to_string())?;
        match stmt.query_row([&id[..]], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Option<Vec<u8>>>(1)?))
        }) {
            Ok((k, d)) => Ok(Some((k.max(0) as u64, d))),
            Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Reads `len` bytes at `offset` of a file (clamped to its size), decrypting only the blocks
    /// that overlap the range. Holes and the tail after the last block read as zeros.
    pub fn read_range(
        &self,
        file: &FileManifest,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, BlockError> {
        self.read_range_with(file, offset, len, 1)
    }

    /// [`Self::read_range`] decrypting up to `threads` blocks in parallel (read-ahead for large
    /// reads).
    pub fn read_range_with(
        &self,
        file: &FileManifest,
        offset: u64,
        len: u64,
        threads: usize,
    ) -> Result<Vec<u8>, BlockError> {
        let start = offset.min(file.size);
        let end = offset.saturating_add(len).min(file.size);
        let mut out = vec![0u8; (end - start) as usize];
        if out.is_empty() {
            return Ok(out);
        }
        let needed: Vec<&BlockAccess> = file
            .blocks
            .iter()
            .filter(|b| b.offset < end && b.offset + b.size > start)
            .collect();
        let results: Vec<Result<BlockData, BlockError>> =
            super::parallel::map(&needed, threads, |b| self.read_block(b));
        for (b, data) in needed.iter().zip(results) {
            let data = data?;
            let from = b.offset.max(start);
            let to = (b.offset + b.size).min(end);
            out[(from - start) as usize..(to - start) as usize]
                .copy_from_slice(&data[(from - b.offset) as usize..(to - b.offset) as usize]);
        }
        Ok(out)
    }

    /// Capacity of the manifest cache (bytes of encrypted manifests).
    pub fn manifest_cache_capacity(&self) -> usize {
        self.manifests.capacity()
    }

    /// Human description of a device (user email/label).
    pub fn describe_author(&self, device: &Id) -> String {
        self.org.describe_device(device)
    }
}

impl ExportFile {
    fn table_err_ctx(&self, context: &str, e: impl std::fmt::Display) -> ExportError {
        self.pool.err(context, e)
    }
}

fn display_path(walked: &str) -> String {
    if walked.is_empty() {
        "/".into()
    } else {
        walked.into()
    }
}

/// Splits a user path into names (empty components and a leading `/` are ignored).
pub fn split_path(path: &str) -> Result<Vec<&str>, ExportError> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(ExportError::BadPath(path.into()));
    }
    Ok(parts)
}

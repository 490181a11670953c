//! Errors of the export reader. Each names what is wrong and where.

use crate::parsec::FormatError;
use crate::token::TokenError;

/// Fatal errors: the command cannot go on. Problems confined to one entry, version or block are
/// not errors of this type but states ([`super::VersionContent`], [`super::BlockError`]).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot open {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("{path} is not an SQLite database ({reason})")]
    NotSqlite { path: String, reason: String },
    #[error("{path} is not a Parsec realm export: {reason}")]
    NotAnExport { path: String, reason: String },
    #[error("{path}: unsupported realm export version {version} (only version 1 exists)")]
    UnsupportedVersion { path: String, version: i64 },
    #[error("{path}: malformed `info` row: {reason}")]
    BadInfo { path: String, reason: String },
    #[error(
        "{path} is an incomplete export (not done: {missing}); the server can resume it. \
         Pass --allow-incomplete to read it anyway"
    )]
    Incomplete { path: String, missing: String },
    #[error("{path}: table `{table}` is missing or malformed: {reason}")]
    MissingTable {
        path: String,
        table: &'static str,
        reason: String,
    },
    #[error("{path}: not the realm export schema of docs/formats.md §5.2: {reason}")]
    Schema { path: String, reason: String },
    #[error("{path}: SQLite error while {context}: {reason}")]
    Sqlite {
        path: String,
        context: String,
        reason: String,
    },
    #[error(
        "this export is not sequestered: its organization has no sequester authority \
         (table sequester_certificate is empty), so no sequester service key can read it"
    )]
    NotSequestered,
    #[error(
        "{path}: the `info` table names realm {info_realm}, but the export's realm certificates \
         are for another realm ({certificate_realms}): the `info` row is damaged or forged, \
         nothing in this export can be attributed to realm {info_realm}"
    )]
    RealmMismatch {
        path: String,
        info_realm: String,
        certificate_realms: String,
    },
    #[error("sequester certificate row {row}: {reason}")]
    BadSequesterCertificate { row: i64, reason: String },
    #[error(
        "the token key (SPKI SHA-256 {fingerprint}) matches no service of this export \
         (services: {services})"
    )]
    NoMatchingService {
        fingerprint: String,
        services: String,
    },
    #[error("the token key matches several services ({services}); choose one with --service-id")]
    AmbiguousService { services: String },
    #[error("--service-id {requested}: {reason}")]
    BadServiceId { requested: String, reason: String },
    #[error("the token key is unusable: {0}")]
    BadTokenKey(String),
    #[error("token error: {0}")]
    Token(#[from] TokenError),
    #[error("{context}: {source}")]
    Format {
        context: String,
        #[source]
        source: FormatError,
    },
    #[error("no such entry: {0}")]
    NoSuchPath(String),
    #[error("{path}: not a folder")]
    NotAFolder { path: String },
    #[error("{path}: is a folder")]
    IsAFolder { path: String },
    #[error("{path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{path}: integrity error: {reason}")]
    Integrity { path: String, reason: String },
    #[error("invalid path `{0}`: use /-separated names")]
    BadPath(String),
    #[error("{0}")]
    Io(String),
    #[error("interrupted; the partial output was removed")]
    Interrupted,
}

impl ExportError {
    pub(crate) fn sqlite(path: &str, context: &str, e: impl std::fmt::Display) -> Self {
        ExportError::Sqlite {
            path: path.to_string(),
            context: context.to_string(),
            reason: e.to_string(),
        }
    }
}

/// The file helpers' errors as the export layer reports them (an existing output is refused
/// with the same words as before the helpers were shared).
impl From<crate::fsutil::FileError> for ExportError {
    fn from(e: crate::fsutil::FileError) -> Self {
        use crate::fsutil::FileError;
        match e {
            FileError::Interrupted => ExportError::Interrupted,
            FileError::Exists { path } => {
                ExportError::Io(format!("{} already exists", path.display()))
            }
            other => ExportError::Io(other.to_string()),
        }
    }
}

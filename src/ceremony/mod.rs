//! Key ceremony: certificates signed through a token ([`sign`]), the hash-chained
//! transcript ([`transcript`]), the per-organisation timestamp journal ([`journal`]), declarative
//! plans ([`plan`]) and where outputs go (`files`; written with [`crate::fsutil`]).
//!
//! Every private-key operation goes through [`crate::token::KeyHandle`]; nothing here knows PKCS#11.

pub(crate) mod files;
pub mod journal;
pub mod plan;
pub mod sign;
pub mod topic;
pub mod transcript;

use std::path::PathBuf;

use crate::parsec::{DateTime, FormatError};
use crate::token::TokenError;

/// Errors of the ceremony layer. Refusals are separate variants so callers and tests can tell
/// them apart; every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CeremonyError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("refused: service key: {0}")]
    ServiceKeyPolicy(String),
    #[error("refused: authority key: {0}")]
    AuthorityKeyPolicy(String),
    #[error("refused: the service label is empty; give a human name with --label")]
    EmptyLabel,
    #[error(
        "refused: timestamp {timestamp} is {ahead_s} s in the future (now {now}). The Parsec server \
         accepts future-dated certificates, and then refuses every later sequester certificate of \
         the organisation (new services, revocations) whose timestamp is not after {timestamp}. \
         Pass --allow-future only if this is intended"
    )]
    FutureTimestamp {
        timestamp: DateTime,
        now: DateTime,
        ahead_s: i64,
    },
    #[error(
        "refused: the authority key on the token (sha256 {found}) does not match the expected \
         authority public key (sha256 {expected})"
    )]
    AuthorityMismatch { expected: String, found: String },
    #[error(
        "refused: the service key is the authority key (sha256 {0}); a service needs its own key"
    )]
    ServiceKeyIsAuthorityKey(String),
    #[error(
        "refused: timestamp {timestamp} is not after {last}, the last sequester certificate known \
         for organisation `{organization}` (from {journal}); the server would reject it"
    )]
    NotAfterJournal {
        timestamp: DateTime,
        last: DateTime,
        organization: String,
        journal: PathBuf,
    },
    #[error(
        "refused: service {service_id} is not among the known services of organisation \
         `{organization}` (from {journal}); give its certificate with --service-certificate"
    )]
    UnknownService {
        service_id: String,
        organization: String,
        journal: PathBuf,
    },
    #[error(
        "refused: service {service_id} was already revoked at {revoked} (according to {origin})"
    )]
    AlreadyRevoked {
        service_id: String,
        revoked: DateTime,
        origin: PathBuf,
    },
    #[error("refused: {0}")]
    OrganizationMismatch(String),
    #[error("the token's signature failed the self-check ({0}); nothing was written")]
    SelfCheck(String),
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("transcript {path}: {reason}")]
    Transcript { path: PathBuf, reason: String },
    #[error("plan: {0}")]
    Plan(String),
}

impl From<crate::fsutil::FileError> for CeremonyError {
    fn from(e: crate::fsutil::FileError) -> Self {
        use crate::fsutil::FileError;
        match e {
            FileError::Exists { path } => CeremonyError::io(
                path,
                "already exists; refusing to overwrite (choose another output)",
            ),
            FileError::NoDirectory { path } => {
                CeremonyError::io(path, "output directory does not exist")
            }
            FileError::Io { path, source } => CeremonyError::io(path, source),
            FileError::Interrupted => CeremonyError::io(PathBuf::new(), "interrupted"),
        }
    }
}

impl CeremonyError {
    pub(crate) fn io(path: impl Into<PathBuf>, err: impl std::fmt::Display) -> Self {
        CeremonyError::Io {
            path: path.into(),
            reason: err.to_string(),
        }
    }
}

//! Parsec's byte formats (docs/formats.md §1.6, §2, §3, §4.4). Pure: no token, no I/O.
//!
//! Shared core: [`envelope`] (`0x00 || zstd(msgpack)`), [`msgpack`] (exact writer, typed reader),
//! [`DateTime`] (microsecond UTC timestamps), [`FormatError`].

pub(crate) mod datetime;
pub mod device;
pub(crate) mod entry_name;
pub mod envelope;
pub(crate) mod limits;
pub mod manifest;
pub mod msgpack;
pub mod realm;

// Sequester certificates, RSA armor and keys, certificate PEM files.
pub mod armor;
pub mod cert_pem;
pub mod sequester;
pub mod spki;

pub use datetime::DateTime;

/// Errors decoding or encoding Parsec data. Each names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("empty data")]
    Empty,
    #[error("unknown data format version byte 0x{0:02x} (only 0x00 exists)")]
    FormatVersion(u8),
    #[error("zstd decompression failed: {0}")]
    Zstd(String),
    #[error("msgpack decoding failed: {0}")]
    Msgpack(String),
    #[error("trailing bytes after the msgpack object")]
    TrailingBytes,
    #[error("expected a msgpack map")]
    NotAMap,
    #[error("wrong type: expected `{expected}`, found `{found}`")]
    WrongType { expected: String, found: String },
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    #[error("field `{field}`: {reason}")]
    BadField { field: &'static str, reason: String },
    #[error("{0}")]
    Invalid(String),
    // RSA armor, keys and signatures (docs/formats.md §1.5, §1.6, §1.8).
    #[error("armored data has no `:` separator (not an RSA-armored blob)")]
    ArmorNoSeparator,
    #[error("unsupported algorithm `{found}`: expected `{expected}`")]
    ArmorAlgorithm { expected: String, found: String },
    #[error("invalid data size: {found} bytes after the algorithm name, the key needs at least {needed} (truncated, or made for another key size)")]
    ArmorTooShort { needed: usize, found: usize },
    #[error("{0}")]
    Armor(String),
    #[error("RSASSA-PSS-SHA256 signature does not verify with the authority key")]
    BadSignature,
    #[error("invalid RSA public key: {0}")]
    PublicKey(String),
    #[error("{0}")]
    Pem(String),
}

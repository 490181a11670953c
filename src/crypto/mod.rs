//! Host-side cryptographic primitives (docs/formats.md §1). Nothing here touches a token.

pub(crate) mod rsa_padding;
pub mod symmetric;

use sha2::{Digest, Sha256};

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// SHA-256 of `data`, lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha256(data))
}

//! sequester-custody: Parsec sequester keys held in hardware.
//!
//! Layers, bottom up:
//! - [`crypto`]: host-side primitives (secretbox, KDF, Ed25519, RSA padding done on the host).
//! - [`token`]: the token abstraction ([`token::KeyHandle`]) and its backends (PKCS#11, YubiKey PIV).
//! - [`parsec`]: Parsec's byte formats (data format v0, certificates, armor, PEM). Pure, no I/O.
//! - [`export`]: the realm export reader (and a writer for tests and benchmarks).
//! - [`mount`]: a read-only FUSE view of an export.
//! - [`ceremony`]: key-ceremony transcript and plans.
//! - [`app`]: command implementations used by the thin binary in `src/main.rs`.

pub mod app;
pub mod ceremony;
pub mod crypto;
pub mod export;
pub mod fsutil;
#[doc(hidden)]
pub mod fuzz_entry;
pub mod mount;
pub mod parsec;
pub mod token;

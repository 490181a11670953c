//! sequester-custody: Parsec sequester keys held in hardware.
//!
//! Layers, bottom up:
//! - [`crypto`]: host-side primitives (secretbox, KDF, Ed25519, RSA padding done on the host);
//!   [`fsutil`]: the one atomic file writer and the one file hasher.
//! - [`parsec`]: Parsec's byte formats (data format v0, certificates, armor, PEM, the one RSA
//!   public-key/SPKI module). Pure, no I/O.
//! - [`token`]: the token abstraction ([`token::KeyHandle`]) and its backends (PKCS#11; YubiKey PIV
//!   with the cargo feature `yubikey`, on by default).
//! - [`export`]: the realm export reader (the synthetic-export writer for tests and benchmarks is
//!   the development-only workspace crate `tests/export-writer`).
//! - `mount`: a read-only FUSE view of an export (cargo feature `mount`, on by default).
//! - [`ceremony`]: key-ceremony transcript and plans.
//!
//! The command-line interface (clap commands and their output) is part of the binary only
//! (`src/main.rs` and `src/cli/`), built on this library's public API.

// Everything is `pub(crate)` unless a user of the library (the binary, tests, benches, the
// export-writer dev crate, fuzz targets) needs it: the compiler then reports dead code.
#![warn(unreachable_pub)]

pub mod ceremony;
pub mod crypto;
pub mod export;
pub mod fsutil;
#[doc(hidden)]
pub mod fuzz_entry;
#[cfg(feature = "mount")]
pub mod mount;
pub mod parsec;
pub mod token;

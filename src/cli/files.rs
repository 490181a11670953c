//! Files the commands write for the user (public keys): shared by the `key` command and its
//! YubiKey part, so neither imports the other.

use std::path::Path;

use sequester_custody::fsutil::{self, Existing};

/// Writes `text` to a new file at `path` atomically (refuses to replace an existing file).
pub(crate) fn write_new_file(path: &Path, text: &str) -> anyhow::Result<()> {
    Ok(fsutil::write_atomic(path, text.as_bytes(), Existing::Keep)?)
}

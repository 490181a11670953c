//! YubiKey PIV backend (issue 6). Stub until that issue lands: every `yubikey:` URI is refused.

use super::{KeyHandle, TokenError};

/// Opens the key a `yubikey:` URI designates.
pub fn open_key(uri: &str) -> Result<Box<dyn KeyHandle>, TokenError> {
    Err(TokenError::UnsupportedKey(format!(
        "the YubiKey PIV backend is not available in this build (`{uri}`)"
    )))
}

//! EntryName (docs/formats.md §2.3): UTF-8, NFC-normalised, 1..255 bytes, not `.`/`..`, no `/`, no
//! NUL.

use unicode_normalization::UnicodeNormalization;

use super::FormatError;

pub(crate) use super::limits::MAX_ENTRY_NAME_BYTES;

/// NFC composes at most 3 bytes into 1 (Hangul L+V+T jamo): a longer raw name cannot
/// normalise to a valid one and is refused before normalisation allocates.
const MAX_RAW_NAME_BYTES: usize = 4 * MAX_ENTRY_NAME_BYTES;

/// A validated, NFC-normalised entry name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryName(String);

impl EntryName {
    /// Normalises `raw` to NFC (as Parsec does when loading) and validates it.
    pub(crate) fn parse(raw: &str) -> Result<Self, FormatError> {
        if raw.len() > MAX_RAW_NAME_BYTES {
            let start: String = raw.chars().take(32).collect();
            return Err(FormatError::Invalid(format!(
                "invalid entry name {start:?}…: {} bytes, longer than 255",
                raw.len()
            )));
        }
        let name: String = raw.nfc().collect();
        let invalid =
            |why: &str| FormatError::Invalid(format!("invalid entry name {raw:?}: {why}"));
        if name.is_empty() {
            return Err(invalid("empty"));
        }
        if name.len() > MAX_ENTRY_NAME_BYTES {
            return Err(invalid("longer than 255 bytes"));
        }
        if name == "." || name == ".." {
            return Err(invalid("`.` and `..` are not names"));
        }
        if name.contains('/') {
            return Err(invalid("contains `/`"));
        }
        if name.contains('\0') {
            return Err(invalid("contains NUL"));
        }
        Ok(EntryName(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for EntryName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_and_nfc() {
        assert_eq!(EntryName::parse("bar.txt").unwrap().as_str(), "bar.txt");
        // "e" + combining acute accent becomes the precomposed "é".
        assert_eq!(EntryName::parse("e\u{301}").unwrap().as_str(), "\u{e9}");
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(EntryName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(EntryName::parse(&"x".repeat(255)).is_ok());
        assert!(EntryName::parse(&"x".repeat(256)).is_err());
    }
}

//! Where a token PIN comes from: `pin-source=file:…` in the key URI, the environment variable
//! `SEQUESTER_CUSTODY_PIN`, or a prompt without echo — never argv. The PIN is zeroized on drop.

use zeroize::Zeroizing;

use super::TokenError;

/// Environment variable holding the user PIN (for automation and tests).
pub const PIN_ENV: &str = "SEQUESTER_CUSTODY_PIN";

/// Where the PIN was read from (shown in `-v` output, never the PIN itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinOrigin {
    File,
    Environment,
    Prompt,
}

/// Resolves the PIN for `token_label`: `pin_source` (the URI's `pin-source`, `file:` URI or a
/// plain path) first, then [`PIN_ENV`], then an interactive prompt on the terminal.
pub fn resolve_pin(
    pin_source: Option<&str>,
    token_label: &str,
) -> Result<(Zeroizing<String>, PinOrigin), TokenError> {
    if let Some(source) = pin_source {
        return Ok((read_pin_file(source)?, PinOrigin::File));
    }
    if let Some(pin) = std::env::var_os(PIN_ENV) {
        let pin = pin
            .into_string()
            .map_err(|_| TokenError::PinSource(format!("{PIN_ENV} is not valid UTF-8")))?;
        return Ok((Zeroizing::new(pin), PinOrigin::Environment));
    }
    let pin = rpassword::prompt_password(format!("PIN for token `{token_label}`: ")).map_err(|e| {
        TokenError::PinSource(format!(
            "no PIN: no terminal to prompt on ({e}); use `pin-source=file:…` in the URI or set {PIN_ENV}"
        ))
    })?;
    Ok((Zeroizing::new(pin), PinOrigin::Prompt))
}

/// Reads a PIN file given as `file:/path`, `file:///path` or a plain path. One trailing newline
/// (LF or CRLF) is removed; the rest is the PIN.
pub fn read_pin_file(source: &str) -> Result<Zeroizing<String>, TokenError> {
    let path = source
        .strip_prefix("file://")
        .or_else(|| source.strip_prefix("file:"))
        .unwrap_or(source);
    if path.contains("://") || path.starts_with("env:") {
        return Err(TokenError::PinSource(format!(
            "unsupported pin-source `{source}` (only `file:` paths)"
        )));
    }
    let bytes = Zeroizing::new(
        std::fs::read(path)
            .map_err(|e| TokenError::PinSource(format!("cannot read PIN file {path}: {e}")))?,
    );
    let mut text = Zeroizing::new(
        String::from_utf8(bytes.to_vec())
            .map_err(|_| TokenError::PinSource(format!("PIN file {path} is not UTF-8")))?,
    );
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(TokenError::PinSource(format!("PIN file {path} is empty")));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_file_forms() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        std::fs::write(&p, "98 76\r\n").unwrap();
        let plain = p.display().to_string();
        for src in [
            plain.clone(),
            format!("file:{plain}"),
            format!("file://{plain}"),
        ] {
            assert_eq!(&*read_pin_file(&src).unwrap(), "98 76");
        }
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(
            read_pin_file(&plain),
            Err(TokenError::PinSource(_))
        ));
        assert!(matches!(
            read_pin_file("file:/nonexistent/pin"),
            Err(TokenError::PinSource(_))
        ));
    }
}

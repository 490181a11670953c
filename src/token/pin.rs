//! Where a token PIN comes from: `pin-source=file:…` in the key URI, the environment variable
//! `SEQUESTER_CUSTODY_PIN`, or the caller's [`Interaction`] (the CLI prompts without echo) —
//! never argv. The PIN is zeroized on drop.
//!
//! Hygiene: the environment variable is taken out of the process environment (and its bytes
//! overwritten) the first time it is read, so child processes and `/proc/PID/environ` never
//! see it; secret files that the group or others can read are refused. A PIN that a token
//! rejected (wrong or blocked) latches: that token is never sent a PIN again in this process,
//! and the PIN taken from the environment is dropped.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use zeroize::Zeroizing;

use super::interaction::{Interaction, PinRequest};
use super::TokenError;

/// Environment variable holding the user PIN (for automation and tests).
pub const PIN_ENV: &str = "SEQUESTER_CUSTODY_PIN";

/// Where the PIN was read from (shown in `-v` output, never the PIN itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PinOrigin {
    File,
    Environment,
    Prompt,
}

/// Resolves the PIN for `request.token_label`: `pin_source` (the URI's `pin-source`, `file:` URI
/// or a plain path) first, then [`PIN_ENV`], then `interaction` (asked once).
pub(crate) fn resolve_pin(
    pin_source: Option<&str>,
    request: &PinRequest<'_>,
    interaction: &dyn Interaction,
) -> Result<(Zeroizing<String>, PinOrigin), TokenError> {
    if let Some(source) = pin_source {
        return Ok((read_pin_file(source)?, PinOrigin::File));
    }
    if let Some(pin) = environment_pin()? {
        return Ok((pin, PinOrigin::Environment));
    }
    Ok((interaction.ask_pin(request)?, PinOrigin::Prompt))
}

/// What became of [`PIN_ENV`]: read once, then kept here (not in the environment).
enum EnvironmentPin {
    NotRead,
    Taken(Zeroizing<String>),
    /// Absent, or dropped after a token rejected a PIN.
    None,
}

fn environment_pin_state() -> &'static Mutex<EnvironmentPin> {
    static STATE: OnceLock<Mutex<EnvironmentPin>> = OnceLock::new();
    STATE.get_or_init(|| Mutex::new(EnvironmentPin::NotRead))
}

/// The PIN of [`PIN_ENV`]: taken out of the environment at the first call and kept in memory
/// (zeroized on drop) for the other tokens of this run; `None` once dropped by [`latch_rejected`].
fn environment_pin() -> Result<Option<Zeroizing<String>>, TokenError> {
    let mut state = environment_pin_state()
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let EnvironmentPin::NotRead = *state {
        *state = match take_environment_secret(PIN_ENV)? {
            Some(pin) => EnvironmentPin::Taken(pin),
            None => EnvironmentPin::None,
        };
    }
    Ok(match &*state {
        EnvironmentPin::Taken(pin) => Some(pin.clone()),
        _ => None,
    })
}

/// Reads the environment variable `name` and removes it from the process environment, first
/// overwriting its value in place: `remove_var` alone leaves the bytes of the initial
/// environment in memory, where `/proc/PID/environ` still shows them.
pub fn take_environment_secret(name: &str) -> Result<Option<Zeroizing<String>>, TokenError> {
    let Some(value) = std::env::var_os(name) else {
        return Ok(None);
    };
    if let Ok(c_name) = std::ffi::CString::new(name) {
        // SAFETY: getenv returns null or a pointer to the NUL-terminated value of a live
        // environment entry; it is overwritten with zeros within its own length, before the
        // entry is unlinked below. No other thread of this program writes the environment.
        unsafe {
            let p = libc::getenv(c_name.as_ptr());
            if !p.is_null() {
                let len = libc::strlen(p);
                std::ptr::write_bytes(p, 0, len);
            }
        }
    }
    std::env::remove_var(name);
    let value = value
        .into_string()
        .map_err(|_| TokenError::PinSource(format!("{name} is not valid UTF-8")))?;
    Ok(Some(Zeroizing::new(value)))
}

/// Rejections seen in this process: keyed hashes of (token, PIN), or of the token alone when
/// no PIN was presented (PIN pad, or a token that reported its PIN locked). The key is random
/// per process, so the set says nothing about a PIN outside it.
fn rejections() -> &'static Mutex<HashSet<[u8; 32]>> {
    static REJECTED: OnceLock<Mutex<HashSet<[u8; 32]>>> = OnceLock::new();
    REJECTED.get_or_init(|| Mutex::new(HashSet::new()))
}

fn rejection_key(token_id: &str, pin: Option<&str>) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    static SALT: OnceLock<[u8; 32]> = OnceLock::new();
    let salt = SALT.get_or_init(|| {
        let mut salt = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
        salt
    });
    let mut h = Sha256::new();
    h.update(salt);
    h.update((token_id.len() as u64).to_be_bytes());
    h.update(token_id.as_bytes());
    match pin {
        Some(pin) => {
            h.update([1]);
            h.update(pin.as_bytes());
        }
        None => h.update([0]),
    }
    h.finalize().into()
}

/// Records that `token_id` rejected `pin` (wrong), or rejects every PIN (`pin = None`: locked,
/// or a PIN pad entry failed): that PIN is never presented to that token again in this
/// process, and if it came from the environment it is dropped.
pub(crate) fn latch_rejected(token_id: &str, pin: Option<&str>) {
    rejections()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(rejection_key(token_id, pin));
    let mut env_pin = environment_pin_state()
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let EnvironmentPin::Taken(taken) = &*env_pin {
        if pin.is_none() || pin == Some(taken.as_str()) {
            *env_pin = EnvironmentPin::None;
        }
    }
}

/// Refuses (without touching the token) when `token_id` rejected this `pin` (or every PIN)
/// earlier in this process. With `pin = None`, only the token-wide latch is checked.
pub(crate) fn refuse_if_rejected(
    token_id: &str,
    pin: Option<&str>,
    token_label: &str,
) -> Result<(), TokenError> {
    let set = rejections().lock().unwrap_or_else(|e| e.into_inner());
    if set.contains(&rejection_key(token_id, None))
        || pin.is_some_and(|p| set.contains(&rejection_key(token_id, Some(p))))
    {
        return Err(TokenError::PinLatched {
            token: token_label.to_string(),
        });
    }
    Ok(())
}

/// Applies the latch to the outcome of presenting `pin` (`None`: PIN pad or nothing
/// presented): `WrongPin` latches that PIN, `PinLocked` the whole token.
pub(crate) fn latch_on_rejection<T>(
    token_id: &str,
    pin: Option<&str>,
    result: Result<T, TokenError>,
) -> Result<T, TokenError> {
    match &result {
        Err(TokenError::WrongPin { .. }) => latch_rejected(token_id, pin),
        Err(TokenError::PinLocked { .. }) => latch_rejected(token_id, None),
        _ => {}
    }
    result
}

/// Refuses a secret file (PIN, pin-source, key passphrase) that its group or other users can
/// read: whoever can read it holds the secret.
pub fn check_secret_file_mode(path: &Path, what: &str) -> Result<(), TokenError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        TokenError::PinSource(format!("cannot read {what} {}: {e}", path.display()))
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o044 != 0 {
        return Err(TokenError::PinSource(format!(
            "{what} {} is readable by {} (mode {mode:04o}); make it private with `chmod 600 {}`",
            path.display(),
            if mode & 0o004 != 0 {
                "every user"
            } else {
                "its group"
            },
            path.display()
        )));
    }
    Ok(())
}

/// Reads a PIN file given as `file:/path`, `file:///path` or a plain path. One trailing newline
/// (LF or CRLF) is removed; the rest is the PIN. Refused when its group or others can read it.
pub(crate) fn read_pin_file(source: &str) -> Result<Zeroizing<String>, TokenError> {
    let path = source
        .strip_prefix("file://")
        .or_else(|| source.strip_prefix("file:"))
        .unwrap_or(source);
    if path.contains("://") || path.starts_with("env:") {
        return Err(TokenError::PinSource(format!(
            "unsupported pin-source `{source}` (only `file:` paths)"
        )));
    }
    check_secret_file_mode(Path::new(path), "PIN file")?;
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
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        std::fs::write(&p, "98 76\r\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
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

    #[test]
    fn readable_pin_files_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        std::fs::write(&p, "123456\n").unwrap();
        for (mode, who) in [
            (0o644, "every user"),
            (0o640, "its group"),
            (0o604, "every user"),
        ] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = read_pin_file(&p.display().to_string())
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("mode {mode:04o}")), "{err}");
            assert!(err.contains(who), "{err}");
            assert!(err.contains("chmod 600"), "{err}");
            assert!(!err.contains("123456"), "{err}");
        }
        for mode in [0o600, 0o400, 0o620] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(&*read_pin_file(&p.display().to_string()).unwrap(), "123456");
        }
    }

    #[test]
    fn environment_secret_is_taken_out_of_the_environment() {
        let name = "SEQUESTER_CUSTODY_TEST_SECRET_TAKEN";
        std::env::set_var(name, "s3cret");
        assert_eq!(&*take_environment_secret(name).unwrap().unwrap(), "s3cret");
        assert!(std::env::var_os(name).is_none());
        assert!(take_environment_secret(name).unwrap().is_none());
    }

    #[test]
    fn a_rejected_pin_is_never_presented_again() {
        let id = "test-token-latch";
        refuse_if_rejected(id, Some("1111"), "t").unwrap();
        let r: Result<(), _> = latch_on_rejection(
            id,
            Some("1111"),
            Err(TokenError::WrongPin {
                token: "t".into(),
                state: String::new(),
            }),
        );
        assert!(r.is_err());
        assert!(matches!(
            refuse_if_rejected(id, Some("1111"), "t"),
            Err(TokenError::PinLatched { .. })
        ));
        // Another PIN, or the same PIN for another token, may still be presented.
        refuse_if_rejected(id, Some("2222"), "t").unwrap();
        refuse_if_rejected(id, None, "t").unwrap();
        refuse_if_rejected("another-token", Some("1111"), "u").unwrap();
        // A locked PIN latches the whole token.
        let _ = latch_on_rejection::<()>(
            "locked-token",
            Some("3333"),
            Err(TokenError::PinLocked { token: "l".into() }),
        );
        assert!(refuse_if_rejected("locked-token", None, "l").is_err());
        assert!(refuse_if_rejected("locked-token", Some("4444"), "l").is_err());
    }
}

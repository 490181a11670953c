//! What the token layer needs from a person: a PIN, a touch, attention to a warning. The token
//! layer never prompts or prints itself; its caller passes an [`Interaction`] (the CLI's asks
//! on the terminal, [`NonInteractive`] refuses to ask).
//!
//! A PIN from `pin-source` or [`super::pin::PIN_ENV`] never reaches the interaction: it is only
//! asked when neither is given. A PIN the token rejected is never asked for again in the run.

use std::sync::Arc;

use zeroize::Zeroizing;

use super::TokenError;

/// Which PIN a token asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinKind {
    /// The user PIN that opens a session (PKCS#11 `CKU_USER`, PIV PIN).
    User,
    /// The per-operation login of a PKCS#11 key with `CKA_ALWAYS_AUTHENTICATE`.
    ContextSpecific,
}

/// One request for a PIN.
#[derive(Debug, Clone)]
pub struct PinRequest<'a> {
    /// The token's label, as shown to the person.
    pub token_label: &'a str,
    pub kind: PinKind,
    /// Attempts left before the PIN locks, when the token tells.
    pub retries_left: Option<u32>,
}

/// The caller's side of the conversation with the person holding the token.
pub trait Interaction: Send + Sync {
    /// Asks for a PIN once. The answer is presented once; a wrong one is not asked for again.
    fn ask_pin(&self, request: &PinRequest<'_>) -> Result<Zeroizing<String>, TokenError>;

    /// The token waits for a touch (e.g. a YubiKey slot with touch policy `always`).
    fn touch_needed(&self, token_label: &str, what: &str);

    /// Something the person should know (e.g. a factory default management key).
    fn warn(&self, message: &str);
}

/// An interaction shared by a key handle and its caller.
pub type SharedInteraction = Arc<dyn Interaction>;

/// For library users and tests: no prompt (a needed PIN is a clear error), no output.
#[derive(Debug, Clone, Copy, Default)]
pub struct NonInteractive;

impl Interaction for NonInteractive {
    fn ask_pin(&self, request: &PinRequest<'_>) -> Result<Zeroizing<String>, TokenError> {
        Err(TokenError::PinSource(format!(
            "a PIN is needed for token `{}` and no prompt is available; use \
             `pin-source=file:…` in the URI or set {}",
            request.token_label,
            super::pin::PIN_ENV
        )))
    }

    fn touch_needed(&self, _token_label: &str, _what: &str) {}

    fn warn(&self, _message: &str) {}
}

/// A shared [`NonInteractive`].
pub fn non_interactive() -> SharedInteraction {
    Arc::new(NonInteractive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_interactive_refuses_to_ask() {
        let err = NonInteractive
            .ask_pin(&PinRequest {
                token_label: "tok",
                kind: PinKind::User,
                retries_left: Some(3),
            })
            .unwrap_err();
        assert!(matches!(err, TokenError::PinSource(_)));
        let text = err.to_string();
        assert!(text.contains("a PIN is needed"), "{text}");
        assert!(text.contains("no prompt is available"), "{text}");
        assert!(text.contains("`tok`"), "{text}");
    }
}

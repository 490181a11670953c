//! Sessions and login. A wrong PIN is reported with the token's counter flags and never retried;
//! `CKR_USER_ALREADY_LOGGED_IN` counts as success (login state is per module, not per session).

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use super::super::interaction::{Interaction, PinKind, PinRequest};
use super::super::pin::{latch_on_rejection, refuse_if_rejected, resolve_pin};
use super::super::TokenError;
use super::ck_error;
use super::module::TokenRef;

/// The token's user-PIN counter state, in words.
pub(crate) fn pin_counter_state(token: &TokenRef) -> String {
    match token.info() {
        Ok(info) => {
            let mut flags = Vec::new();
            if info.user_pin_locked() {
                flags.push("CKF_USER_PIN_LOCKED: the PIN is locked");
            }
            if info.user_pin_final_try() {
                flags.push("CKF_USER_PIN_FINAL_TRY: one attempt left before the PIN locks");
            }
            if info.user_pin_count_low() {
                flags.push("CKF_USER_PIN_COUNT_LOW: a wrong PIN was entered, few attempts remain");
            }
            if flags.is_empty() {
                "counter state: no COUNT_LOW / FINAL_TRY / LOCKED flag set by the token".into()
            } else {
                format!("counter state: {}", flags.join("; "))
            }
        }
        Err(e) => format!("counter state unavailable: {e}"),
    }
}

/// Opens a session on `token` and logs the user in (once; an existing login is reused).
pub(crate) fn open_logged_in(
    token: &TokenRef,
    read_write: bool,
    pin_source: Option<&str>,
    interaction: &dyn Interaction,
) -> Result<Session, TokenError> {
    open_logged_in_keeping_pin(token, read_write, pin_source, interaction)
        .map(|(session, _)| session)
}

/// [`open_logged_in`], also returning the PIN that was used, if one was read (a key with
/// `CKA_ALWAYS_AUTHENTICATE` needs it again for its context-specific logins; `None` when the
/// session was already logged in or the token has a PIN pad).
pub(crate) fn open_logged_in_keeping_pin(
    token: &TokenRef,
    read_write: bool,
    pin_source: Option<&str>,
    interaction: &dyn Interaction,
) -> Result<(Session, Option<Zeroizing<String>>), TokenError> {
    let ctx = &token.module.ctx;
    let session = if read_write {
        ctx.open_rw_session(token.slot)
    } else {
        ctx.open_ro_session(token.slot)
    }
    .map_err(|e| ck_error("C_OpenSession", e))?;
    let pin = login(token, &session, pin_source, interaction)?;
    Ok((session, pin))
}

/// The identity under which a rejected PIN is latched (module and token serial).
pub(crate) fn latch_id(token: &TokenRef) -> String {
    format!(
        "pkcs11:{}:{}:{}",
        token.module.path.display(),
        token.description.serial,
        token.description.label
    )
}

fn login(
    token: &TokenRef,
    session: &Session,
    pin_source: Option<&str>,
    interaction: &dyn Interaction,
) -> Result<Option<Zeroizing<String>>, TokenError> {
    if let Ok(info) = session.get_session_info() {
        if matches!(
            info.session_state(),
            SessionState::RoUser | SessionState::RwUser
        ) {
            return Ok(None);
        }
    }
    refuse_if_rejected(&latch_id(token), None, &token.description.label)?;
    let info = token.info()?;
    if info.user_pin_locked() {
        return latch_on_rejection(
            &latch_id(token),
            None,
            Err(TokenError::PinLocked {
                token: token.description.label.clone(),
            }),
        );
    }
    if info.protected_authentication_path() {
        // PIN pad on the reader: the PIN never passes through this process.
        return login_result(token, None, session.login(UserType::User, None)).map(|()| None);
    }
    let request = PinRequest {
        token_label: &token.description.label,
        kind: PinKind::User,
        retries_left: info.user_pin_final_try().then_some(1),
    };
    let (pin, _origin) = resolve_pin(pin_source, &request, interaction)?;
    refuse_if_rejected(&latch_id(token), Some(&pin), &token.description.label)?;
    let auth = AuthPin::new(pin.as_str().into());
    login_result(
        token,
        Some(&pin),
        session.login(UserType::User, Some(&auth)),
    )
    .map(|()| Some(pin))
}

/// `C_Login(CKU_CONTEXT_SPECIFIC)`: the per-operation authentication a key with
/// `CKA_ALWAYS_AUTHENTICATE` demands between `C_SignInit`/`C_DecryptInit` and
/// `C_Sign`/`C_Decrypt`. `pin` is `None` on a token with a PIN pad. One attempt: the caller
/// never calls it again after a wrong PIN.
pub(crate) fn context_login(
    token: &TokenRef,
    session: &Session,
    pin: Option<&str>,
) -> Result<(), TokenError> {
    refuse_if_rejected(&latch_id(token), pin, &token.description.label)?;
    let result = match pin {
        Some(pin) => {
            let auth = AuthPin::new(pin.into());
            session.login(UserType::ContextSpecific, Some(&auth))
        }
        None => session.login(UserType::ContextSpecific, None),
    };
    login_result(token, pin, result)
}

fn login_result(
    token: &TokenRef,
    pin: Option<&str>,
    result: Result<(), CkError>,
) -> Result<(), TokenError> {
    latch_on_rejection(&latch_id(token), pin, login_outcome(token, result))
}

fn login_outcome(token: &TokenRef, result: Result<(), CkError>) -> Result<(), TokenError> {
    match result {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(CkError::Pkcs11(RvError::PinIncorrect, _))
        | Err(CkError::Pkcs11(RvError::PinInvalid, _))
        | Err(CkError::Pkcs11(RvError::PinLenRange, _)) => Err(TokenError::WrongPin {
            token: token.description.label.clone(),
            state: pin_counter_state(token),
        }),
        Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(TokenError::PinLocked {
            token: token.description.label.clone(),
        }),
        Err(e) => Err(ck_error("C_Login", e)),
    }
}

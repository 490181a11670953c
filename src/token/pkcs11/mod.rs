//! PKCS#11 backend (cryptoki): module loading through HSM profiles, token selection by RFC 7512
//! URI, login, mechanism negotiation, key generation, import, listing and provenance.

pub(crate) mod key;
pub mod keygen;
pub(crate) mod listing;
pub(crate) mod mechanisms;
pub mod module;
pub mod pem_key;
pub mod registry;
pub(crate) mod session;

pub use key::Pkcs11Key;
pub use listing::{list_modules, token_details, ModuleListing, TokenDetails, TokenSummary};
pub use mechanisms::Negotiated;

use cryptoki::error::{Error as CkError, RvError};

use super::TokenError;

/// Maps a cryptoki error to the token layer's error, keeping the PKCS#11 function and CKR name.
pub(crate) fn ck_error(operation: &str, err: CkError) -> TokenError {
    match err {
        CkError::Pkcs11(RvError::TokenNotPresent | RvError::DeviceRemoved, _) => {
            TokenError::TokenRemoved(format!("{operation}: {err}"))
        }
        CkError::Pkcs11(RvError::KeyFunctionNotPermitted, _) => TokenError::NotPermitted {
            operation: operation.to_string(),
            reason: "CKR_KEY_FUNCTION_NOT_PERMITTED".into(),
        },
        CkError::Pkcs11(rv, function) => TokenError::Backend {
            backend: "pkcs11",
            operation: format!("{operation} ({function:?})"),
            reason: format!("{rv:?}"),
        },
        other => TokenError::Backend {
            backend: "pkcs11",
            operation: operation.to_string(),
            reason: other.to_string(),
        },
    }
}

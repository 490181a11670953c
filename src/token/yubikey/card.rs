//! Finding and opening a YubiKey over PC/SC, PIN verification and management-key
//! authentication, with errors that say what to do.

use ::yubikey::{piv, Error as YkError, MgmKey, YubiKey};
use zeroize::Zeroizing;

use super::super::TokenError;

const BACKEND: &str = "yubikey";

/// An open card and what we learned when opening it.
pub struct Card {
    pub yk: YubiKey,
    pub serial: u32,
    pub version: (u8, u8, u8),
    pub reader: String,
}

impl Card {
    pub fn label(&self) -> String {
        format!("YubiKey {}", self.serial)
    }

    pub fn version_string(&self) -> String {
        format!("{}.{}.{}", self.version.0, self.version.1, self.version.2)
    }
}

/// Maps a PC/SC-level failure to a message an operator can act on.
pub fn pcsc_error(operation: &str, err: &YkError) -> TokenError {
    let reason =
        match err {
            YkError::PcscError { inner: Some(e) } => match e {
                pcsc::Error::NoService | pcsc::Error::ServiceStopped | pcsc::Error::CommError => {
                    "the PC/SC daemon (pcscd) is not running or not reachable: start it \
                 (`systemctl start pcscd`, or `pcscd` as root) and retry"
                        .to_string()
                }
                pcsc::Error::NoReadersAvailable => return TokenError::NoSuchToken(
                    "no YubiKey: no smart-card reader is connected (is the YubiKey plugged in, \
                     with its CCID interface enabled?)"
                        .into(),
                ),
                pcsc::Error::SharingViolation => {
                    "the YubiKey is held by another program (scdaemon/gpg-agent, ykman, a browser \
                 or another sequester-custody): close it (e.g. `gpgconf --kill scdaemon`) and retry"
                        .to_string()
                }
                pcsc::Error::RemovedCard | pcsc::Error::NoSmartcard | pcsc::Error::ResetCard => {
                    return TokenError::TokenRemoved(format!("during {operation}: {e}"))
                }
                other => format!("PC/SC error: {other}"),
            },
            other => format!("{other}"),
        };
    TokenError::Backend {
        backend: BACKEND,
        operation: operation.to_string(),
        reason,
    }
}

/// Opens the card with `serial`, or the only card present when `serial` is `None`.
///
/// Readers are walked by hand (rather than `YubiKey::open`) so that a card held by another
/// program is reported as such instead of as "not found".
pub fn open(serial: Option<u32>) -> Result<Card, TokenError> {
    let mut context =
        ::yubikey::reader::Context::open().map_err(|e| pcsc_error("opening PC/SC", &e))?;
    let readers: Vec<_> = context
        .iter()
        .map_err(|e| pcsc_error("listing smart-card readers", &e))?
        .collect();
    let mut found: Vec<Card> = Vec::new();
    let mut busy: Option<YkError> = None;
    for reader in readers {
        let name = reader.name().into_owned();
        match reader.open() {
            Ok(yk) => {
                let card_serial = yk.serial().0;
                let v = yk.version();
                let card = Card {
                    yk,
                    serial: card_serial,
                    version: (v.major, v.minor, v.patch),
                    reader: name,
                };
                match serial {
                    Some(wanted) if wanted != card_serial => {
                        let _ = card.yk.disconnect(pcsc::Disposition::LeaveCard);
                    }
                    _ => found.push(card),
                }
            }
            Err(
                e @ YkError::PcscError {
                    inner: Some(pcsc::Error::SharingViolation),
                },
            ) => busy = Some(e),
            // Empty readers and non-PIV cards.
            Err(_) => {}
        }
    }
    let what = match serial {
        Some(s) => format!("YubiKey with serial {s}"),
        None => "YubiKey".to_string(),
    };
    match found.len() {
        1 => Ok(found.pop().expect("one card")),
        0 => match busy {
            Some(e) => Err(pcsc_error(&format!("opening the {what}"), &e)),
            None => Err(TokenError::NoSuchToken(format!(
                "no {what} found (no reader holds a PIV card{})",
                if serial.is_some() {
                    " with that serial"
                } else {
                    ""
                }
            ))),
        },
        count => {
            for card in found {
                let _ = card.yk.disconnect(pcsc::Disposition::LeaveCard);
            }
            Err(TokenError::AmbiguousToken {
                selector: "yubikey:".into(),
                count,
            })
        }
    }
}

/// Verifies the PIN once. A wrong PIN is reported with the retries left and never retried.
pub fn verify_pin(card: &mut Card, pin: &Zeroizing<String>) -> Result<(), TokenError> {
    match card.yk.verify_pin(pin.as_bytes()) {
        Ok(()) => Ok(()),
        Err(YkError::WrongPin { tries: 0 }) | Err(YkError::PinLocked) => {
            Err(TokenError::PinLocked {
                token: card.label(),
            })
        }
        Err(YkError::WrongPin { tries }) => Err(TokenError::WrongPin {
            token: card.label(),
            state: format!(
                "{tries} {} left before the PIN locks",
                if tries == 1 { "retry" } else { "retries" }
            ),
        }),
        Err(e @ YkError::PcscError { .. }) => Err(pcsc_error("PIN verification", &e)),
        Err(e) => Err(TokenError::Backend {
            backend: BACKEND,
            operation: "PIN verification".into(),
            reason: e.to_string(),
        }),
    }
}

/// Which management key authenticated the session (for warnings and transcripts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MgmKeyKind {
    /// From `mgm-key-source=file:…`.
    FromFile,
    /// The PIN-protected key stored on the card (`ykman piv access change-management-key
    /// --protect`).
    PinProtected,
    /// The factory default 3DES key: anyone holding the card can replace its keys.
    FactoryDefault,
}

fn read_mgm_key_file(source: &str) -> Result<MgmKey, TokenError> {
    let path = source.strip_prefix("file:").unwrap_or(source);
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        TokenError::PinSource(format!("cannot read management key file {path}: {e}"))
    })?);
    let bytes = Zeroizing::new(hex::decode(text.trim()).map_err(|_| {
        TokenError::PinSource(format!(
            "management key file {path} is not hex (expected 48 hex digits, 3DES)"
        ))
    })?);
    MgmKey::from_bytes(&bytes[..]).map_err(|_| {
        TokenError::PinSource(format!(
            "management key in {path} is not a 24-byte 3DES key (this driver, yubikey 0.8, \
             supports 3DES management keys only)"
        ))
    })
}

/// Authenticates with the management key (needed to generate keys and write certificates).
/// Order: `mgm-key-source` file, then the PIN-protected key on the card (the PIN must already
/// be verified), then the factory default, with a loud warning.
pub fn authenticate_admin(
    card: &mut Card,
    mgm_key_source: Option<&str>,
) -> Result<MgmKeyKind, TokenError> {
    let refused = |card: &Card, detail: String| TokenError::NotPermitted {
        operation: "authenticate with the management key".into(),
        reason: detail + &format!(" (YubiKey {})", card.serial),
    };
    if let Some(source) = mgm_key_source {
        let key = read_mgm_key_file(source)?;
        return match card.yk.authenticate(key) {
            Ok(()) => Ok(MgmKeyKind::FromFile),
            Err(YkError::AuthenticationError) => Err(refused(
                card,
                format!("the card refused the management key from {source}"),
            )),
            Err(e) => Err(pcsc_error("management key authentication", &e)),
        };
    }
    if let Ok(key) = MgmKey::get_protected(&mut card.yk) {
        if card.yk.authenticate(key).is_ok() {
            return Ok(MgmKeyKind::PinProtected);
        }
    }
    match card.yk.authenticate(MgmKey::default()) {
        Ok(()) => {
            eprintln!(
                "WARNING: YubiKey {} still uses the FACTORY DEFAULT management key: anyone who \
                 holds the card can overwrite its keys and certificates. Before production use \
                 set a PIN-protected random key: `ykman piv access change-management-key \
                 --algorithm TDES --generate --protect`.",
                card.serial
            );
            Ok(MgmKeyKind::FactoryDefault)
        }
        Err(YkError::AuthenticationError) if card.version >= (5, 7, 0) => Err(refused(
            card,
            format!(
                "firmware {} uses an AES-192 management key by default, which this driver \
                 (yubikey crate 0.8) cannot use; switch the card to a PIN-protected 3DES key \
                 (`ykman piv access change-management-key --algorithm TDES --generate --protect`) \
                 or give a 3DES key with `mgm-key-source=file:…`",
                card.version_string()
            ),
        )),
        Err(YkError::AuthenticationError) => Err(refused(
            card,
            "the management key is not the factory default and no PIN-protected key is stored; \
             give it with `mgm-key-source=file:…` (hex)"
                .into(),
        )),
        Err(e) => Err(pcsc_error("management key authentication", &e)),
    }
}

/// PIN retries left, without spending one.
pub fn pin_retries(card: &mut Card) -> Result<u8, TokenError> {
    card.yk
        .get_pin_retries()
        .map_err(|e| pcsc_error("reading the PIN retry counter", &e))
}

/// Reads the public key held in `slot`: key metadata (firmware 5.3+) or the slot certificate.
/// Returns `(spki_der, certificate subject if any)`.
pub fn read_slot_public_key(
    card: &mut Card,
    slot: piv::SlotId,
) -> Result<Option<(Vec<u8>, Option<String>)>, TokenError> {
    use der::Encode;
    let subject = ::yubikey::Certificate::read(&mut card.yk, slot).ok();
    if let Some(cert) = &subject {
        let spki = cert
            .cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| TokenError::Backend {
                backend: BACKEND,
                operation: "reading the slot certificate".into(),
                reason: e.to_string(),
            })?;
        return Ok(Some((spki, Some(cert.subject()))));
    }
    if let Ok(meta) = piv::metadata(&mut card.yk, slot) {
        if let Some(public) = meta.public {
            if let Ok(spki) = public.to_der() {
                return Ok(Some((spki, None)));
            }
        }
    }
    Ok(None)
}

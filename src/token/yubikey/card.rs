//! Finding and opening a YubiKey over PC/SC, PIN verification and management-key
//! authentication, with errors that say what to do.

use ::yubikey::{piv, Error as YkError, MgmKey, YubiKey};
use zeroize::Zeroizing;

use super::super::interaction::Interaction;
use super::super::TokenError;
use super::raw;

const BACKEND: &str = "yubikey";

/// An open card and what we learned when opening it.
pub(super) struct Card {
    pub yk: YubiKey,
    pub serial: u32,
    pub version: (u8, u8, u8),
    pub reader: String,
}

impl Card {
    pub(super) fn label(&self) -> String {
        format!("YubiKey {}", self.serial)
    }

    pub(super) fn version_string(&self) -> String {
        format!("{}.{}.{}", self.version.0, self.version.1, self.version.2)
    }
}

/// Maps a PC/SC-level failure to a message an operator can act on.
pub(super) fn pcsc_error(operation: &str, err: &YkError) -> TokenError {
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

/// Every reader seen over PC/SC: the PIV cards opened, and the readers whose card another
/// program holds exclusively.
pub(super) struct Walk {
    pub cards: Vec<Card>,
    pub busy: Vec<(String, YkError)>,
    pub readers: usize,
}

/// Opens every PIV card reachable over PC/SC. No reader at all is an empty walk; pcscd not
/// running is an error.
///
/// Readers are walked by hand (rather than `YubiKey::open`) so that a card held by another
/// program is reported as such instead of as "not found".
pub(super) fn open_all() -> Result<Walk, TokenError> {
    let mut context =
        ::yubikey::reader::Context::open().map_err(|e| pcsc_error("opening PC/SC", &e))?;
    let readers: Vec<_> = match context.iter() {
        Ok(readers) => readers.collect(),
        Err(YkError::PcscError {
            inner: Some(pcsc::Error::NoReadersAvailable),
        }) => Vec::new(),
        Err(e) => return Err(pcsc_error("listing smart-card readers", &e)),
    };
    let mut walk = Walk {
        cards: Vec::new(),
        busy: Vec::new(),
        readers: readers.len(),
    };
    for reader in readers {
        let name = reader.name().into_owned();
        match reader.open() {
            Ok(yk) => {
                let v = yk.version();
                walk.cards.push(Card {
                    serial: yk.serial().0,
                    version: (v.major, v.minor, v.patch),
                    reader: name,
                    yk,
                });
            }
            Err(
                e @ YkError::PcscError {
                    inner: Some(pcsc::Error::SharingViolation),
                },
            ) => walk.busy.push((name, e)),
            // Empty readers and non-PIV cards.
            Err(_) => {}
        }
    }
    Ok(walk)
}

/// Releases a card without resetting it (a reset would drop another handle's verified PIN).
pub(super) fn release(card: Card) {
    let _ = card.yk.disconnect(pcsc::Disposition::LeaveCard);
}

/// Opens the card with `serial`, or the only card present when `serial` is `None`.
pub(super) fn open(serial: Option<u32>) -> Result<Card, TokenError> {
    let walk = open_all()?;
    if walk.readers == 0 {
        return Err(TokenError::NoSuchToken(
            "no YubiKey: no smart-card reader is connected (is the YubiKey plugged in, with its \
             CCID interface enabled?)"
                .into(),
        ));
    }
    let mut found: Vec<Card> = Vec::new();
    for card in walk.cards {
        match serial {
            Some(wanted) if wanted != card.serial => release(card),
            _ => found.push(card),
        }
    }
    let busy = walk.busy.into_iter().next().map(|(_, e)| e);
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
                release(card);
            }
            Err(TokenError::AmbiguousToken {
                selector: "yubikey:".into(),
                count,
            })
        }
    }
}

/// Verifies the PIN once. A wrong PIN is reported with the retries left and never retried.
/// A rejected or blocked PIN latches (see [`crate::token::pin::latch_rejected`]): the card is
/// never sent a PIN again in this process, so a PIN changed mid-run costs exactly one retry.
pub(super) fn verify_pin(card: &mut Card, pin: &Zeroizing<String>) -> Result<(), TokenError> {
    let id = latch_id(card.serial);
    crate::token::pin::refuse_if_rejected(&id, Some(pin), &card.label())?;
    crate::token::pin::latch_on_rejection(&id, Some(pin), verify_pin_once(card, pin))
}

/// The identity under which a rejected PIN of the card `serial` is latched.
pub(super) fn latch_id(serial: u32) -> String {
    format!("yubikey:{serial}")
}

fn verify_pin_once(card: &mut Card, pin: &Zeroizing<String>) -> Result<(), TokenError> {
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

fn read_mgm_key_bytes(source: &str, expected_len: usize) -> Result<Zeroizing<Vec<u8>>, TokenError> {
    let path = source.strip_prefix("file:").unwrap_or(source);
    crate::token::pin::check_secret_file_mode(std::path::Path::new(path), "management key file")?;
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        TokenError::PinSource(format!("cannot read management key file {path}: {e}"))
    })?);
    let bytes =
        Zeroizing::new(hex::decode(text.trim()).map_err(|_| {
            TokenError::PinSource(format!("management key file {path} is not hex"))
        })?);
    if bytes.len() != expected_len {
        return Err(TokenError::PinSource(format!(
            "management key file {path} holds {} bytes; the card's key needs {expected_len}",
            bytes.len()
        )));
    }
    Ok(bytes)
}

fn default_key_warning(card: &Card, algorithm: u8, interaction: &dyn Interaction) {
    interaction.warn(&format!(
        "YubiKey {} still uses the FACTORY DEFAULT {} management key: anyone who \
         holds the card can overwrite its keys and certificates. Before production use set a \
         PIN-protected random key: `ykman piv access change-management-key --generate --protect`.",
        card.serial,
        raw::management_algorithm_name(algorithm)
    ));
}

/// Authenticates with the management key (needed to generate keys and write certificates).
/// Order: `mgm-key-source` file, then the PIN-protected key on the card (the PIN must already
/// be verified), then the factory default, with a loud warning through `interaction`. 3DES keys go through the
/// `yubikey` crate; AES keys (the default of firmware 5.7) through [`raw`], which the card
/// accepts for the following commands of either handle.
pub(super) fn authenticate_admin(
    card: &mut Card,
    mgm_key_source: Option<&str>,
    interaction: &dyn Interaction,
) -> Result<MgmKeyKind, TokenError> {
    let algorithm = if card.version >= (5, 3, 0) {
        raw::RawPiv::connect(&card.reader)?.management_key_algorithm()
    } else {
        None
    }
    .unwrap_or(raw::MGM_3DES);
    let name = raw::management_algorithm_name(algorithm);
    let key_len = raw::management_key_len(algorithm).ok_or_else(|| TokenError::NotPermitted {
        operation: "authenticate with the management key".into(),
        reason: format!("unknown management key {name}"),
    })?;
    let refused = |card: &Card, detail: String| TokenError::NotPermitted {
        operation: "authenticate with the management key".into(),
        reason: detail + &format!(" ({name} key, YubiKey {})", card.serial),
    };
    let try_key = |card: &mut Card, key: &[u8]| -> Result<bool, TokenError> {
        if algorithm == raw::MGM_3DES {
            let key =
                MgmKey::from_bytes(key).map_err(|_| refused(card, "not a 3DES key".into()))?;
            match card.yk.authenticate(key) {
                Ok(()) => Ok(true),
                Err(YkError::AuthenticationError) => Ok(false),
                Err(e) => Err(pcsc_error("management key authentication", &e)),
            }
        } else {
            raw::RawPiv::connect(&card.reader)?.authenticate_management_key(algorithm, key)
        }
    };

    if let Some(source) = mgm_key_source {
        let key = read_mgm_key_bytes(source, key_len)?;
        return if try_key(card, &key)? {
            Ok(MgmKeyKind::FromFile)
        } else {
            Err(refused(
                card,
                format!("the card refused the management key from {source}"),
            ))
        };
    }
    if let Ok(key) = MgmKey::get_protected(&mut card.yk) {
        let bytes: &[u8; 24] = key.as_ref();
        if bytes.len() == key_len && try_key(card, bytes)? {
            return Ok(MgmKeyKind::PinProtected);
        }
    }
    // The factory key is 010203040506070801020304050607080102030405060708 for 3DES and for
    // the AES-192 default of firmware 5.7.
    if key_len == 24 {
        let default = MgmKey::default();
        let bytes: &[u8; 24] = default.as_ref();
        if try_key(card, bytes)? {
            default_key_warning(card, algorithm, interaction);
            return Ok(MgmKeyKind::FactoryDefault);
        }
    }
    Err(refused(
        card,
        "the management key is not the factory default and no PIN-protected key is stored; \
         give it with `mgm-key-source=file:…` (hex)"
            .into(),
    ))
}

/// PIN retries left, without spending one.
pub(super) fn pin_retries(card: &mut Card) -> Result<u8, TokenError> {
    card.yk
        .get_pin_retries()
        .map_err(|e| pcsc_error("reading the PIN retry counter", &e))
}

/// A slot's public key (SPKI DER) and the subject of its certificate, when it has one.
pub(super) type SlotKey = (Vec<u8>, Option<String>);

/// Reads the public key held in `slot`: the slot certificate, or key metadata (firmware 5.3+).
pub(super) fn read_slot_public_key(
    card: &mut Card,
    slot: piv::SlotId,
) -> Result<Option<SlotKey>, TokenError> {
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

/// What GET METADATA (firmware 5.3+) says about a slot's key: facts the management key cannot
/// rewrite, unlike the slot certificate.
#[derive(Debug, Clone, Default)]
pub(super) struct SlotMetadata {
    /// The key's SubjectPublicKeyInfo DER.
    pub spki: Option<Vec<u8>>,
    /// `Some(true)` generated on the card, `Some(false)` imported.
    pub generated: Option<bool>,
    /// PIN and touch policy, as the card reports them.
    pub policies: Option<String>,
}

/// The slot's key metadata, or `None` when the card does not answer GET METADATA for it
/// (firmware before 5.3, or the emulated card of the tests).
pub(super) fn slot_metadata(card: &mut Card, slot: piv::SlotId) -> Option<SlotMetadata> {
    use der::Encode;
    let meta = piv::metadata(&mut card.yk, slot).ok()?;
    Some(SlotMetadata {
        spki: meta.public.and_then(|p| p.to_der().ok()),
        generated: meta.origin.map(|o| matches!(o, piv::Origin::Generated)),
        policies: meta
            .policy
            .map(|(pin, touch)| format!("PIN policy {pin:?}, touch policy {touch:?}")),
    })
}

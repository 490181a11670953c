//! `yubikey:` key URIs: `yubikey:serial=12345678;slot=9d?pin-source=file:/path`.
//!
//! Path attributes (`;`-separated): `serial` (decimal; optional when exactly one card is
//! present), `slot` (hex: 9a, 9c, 9d, 9e, 82..95). Query attributes (`&`-separated):
//! `pin-source` (a `file:` path), `mgm-key-source` (a `file:` path holding the management key
//! in hex), `pin-policy` (never|once|always) and `touch-policy` (never|always|cached) for key
//! generation. `pin-value` is refused: a PIN in a URI ends up in argv and shell history.

use super::super::{Role, TokenError};

/// A parsed `yubikey:` URI.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct YubikeyUri {
    pub serial: Option<u32>,
    pub slot: Option<u8>,
    pub pin_source: Option<String>,
    pub mgm_key_source: Option<String>,
    pub pin_policy: Option<PinPolicyOpt>,
    pub touch_policy: Option<TouchPolicyOpt>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinPolicyOpt {
    Never,
    Once,
    Always,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TouchPolicyOpt {
    Never,
    Always,
    Cached,
}

fn bad(uri: &str, reason: impl Into<String>) -> TokenError {
    TokenError::BadUri {
        uri: redact(uri),
        reason: reason.into(),
    }
}

/// Hides any `pin-value=` so that an error never repeats a PIN.
fn redact(uri: &str) -> String {
    match uri.find("pin-value=") {
        Some(pos) => format!("{}pin-value=***", &uri[..pos]),
        None => uri.to_string(),
    }
}

/// Slots that may hold sequester keys: 9a/9c/9d/9e and the 20 retired key-management slots.
pub(crate) fn slot_is_usable(slot: u8) -> bool {
    matches!(slot, 0x9a | 0x9c | 0x9d | 0x9e | 0x82..=0x95)
}

/// The default slot of a role: authority keys sign (9c, "Digital Signature"), service keys
/// decrypt (9d, "Key Management"); further service keys go to the retired slots 82..95.
pub(crate) fn default_slot(role: Role) -> u8 {
    match role {
        Role::Authority => 0x9c,
        Role::Service => 0x9d,
    }
}

/// The role a slot suggests when nothing else says (used by `key list`).
pub(crate) fn role_of_slot(slot: u8) -> Option<Role> {
    match slot {
        0x9c => Some(Role::Authority),
        0x9d | 0x82..=0x95 => Some(Role::Service),
        _ => None,
    }
}

impl YubikeyUri {
    pub(crate) fn parse(uri: &str) -> Result<Self, TokenError> {
        let rest = uri
            .strip_prefix("yubikey:")
            .ok_or_else(|| bad(uri, "does not start with `yubikey:`"))?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut out = YubikeyUri::default();
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| bad(uri, format!("attribute `{attr}` has no `=`")))?;
            match name {
                "serial" => {
                    out.serial = Some(value.parse().map_err(|_| {
                        bad(uri, format!("serial `{value}` is not a decimal number"))
                    })?)
                }
                "slot" => {
                    let slot = u8::from_str_radix(value.trim_start_matches("0x"), 16)
                        .map_err(|_| bad(uri, format!("slot `{value}` is not hex (e.g. 9d)")))?;
                    if !slot_is_usable(slot) {
                        return Err(bad(
                            uri,
                            format!(
                                "slot {value} cannot hold a key (use 9a, 9c, 9d, 9e or 82..95)"
                            ),
                        ));
                    }
                    out.slot = Some(slot);
                }
                other => return Err(bad(uri, format!("unknown path attribute `{other}`"))),
            }
        }
        for attr in query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|a| !a.is_empty())
        {
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| bad(uri, format!("attribute `{attr}` has no `=`")))?;
            match name {
                "pin-value" => {
                    return Err(bad(
                        uri,
                        "`pin-value` is refused (a PIN on the command line leaks into argv and \
                         shell history); use `pin-source=file:…` or SEQUESTER_CUSTODY_PIN",
                    ))
                }
                "pin-source" => out.pin_source = Some(value.to_string()),
                "mgm-key-source" => out.mgm_key_source = Some(value.to_string()),
                "pin-policy" => {
                    out.pin_policy = Some(match value {
                        "never" => PinPolicyOpt::Never,
                        "once" => PinPolicyOpt::Once,
                        "always" => PinPolicyOpt::Always,
                        _ => return Err(bad(uri, "pin-policy must be never, once or always")),
                    })
                }
                "touch-policy" => {
                    out.touch_policy = Some(match value {
                        "never" => TouchPolicyOpt::Never,
                        "always" => TouchPolicyOpt::Always,
                        "cached" => TouchPolicyOpt::Cached,
                        _ => return Err(bad(uri, "touch-policy must be never, always or cached")),
                    })
                }
                other => return Err(bad(uri, format!("unknown query attribute `{other}`"))),
            }
        }
        Ok(out)
    }

    /// The URI that selects this key again (no PIN, no secrets).
    pub(crate) fn key_uri(serial: u32, slot: u8) -> String {
        format!("yubikey:serial={serial};slot={slot:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_uri() {
        let u = YubikeyUri::parse(
            "yubikey:serial=12345678;slot=9d?pin-source=file:/p&pin-policy=always&touch-policy=cached",
        )
        .unwrap();
        assert_eq!(u.serial, Some(12345678));
        assert_eq!(u.slot, Some(0x9d));
        assert_eq!(u.pin_source.as_deref(), Some("file:/p"));
        assert_eq!(u.pin_policy, Some(PinPolicyOpt::Always));
        assert_eq!(u.touch_policy, Some(TouchPolicyOpt::Cached));
        assert_eq!(
            YubikeyUri::parse("yubikey:").unwrap(),
            YubikeyUri::default()
        );
        assert_eq!(
            YubikeyUri::parse("yubikey:slot=82").unwrap().slot,
            Some(0x82)
        );
    }

    #[test]
    fn refuses_bad_uris() {
        for uri in [
            "pkcs11:token=x",
            "yubikey:serial=abc",
            "yubikey:slot=f9",
            "yubikey:slot=96",
            "yubikey:color=red",
            "yubikey:slot=9d?pin-policy=sometimes",
        ] {
            assert!(YubikeyUri::parse(uri).is_err(), "{uri}");
        }
        let err = YubikeyUri::parse("yubikey:slot=9d?pin-value=123456").unwrap_err();
        assert!(!err.to_string().contains("123456"), "{err}");
    }
}

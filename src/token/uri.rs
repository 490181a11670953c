//! RFC 7512 `pkcs11:` URIs: `pkcs11:token=…;object=…;id=…;type=private?module-path=…`.
//!
//! Path attributes select the token (`token`, `serial`, `manufacturer`, `model`, `slot-id`) and
//! the object (`object`, `id`, `type`); query attributes select the module (`module-path`,
//! `module-name`) and the PIN source (`pin-source`). `pin-value` is refused: a PIN in a URI ends
//! up in argv and shell history.

use std::fmt::Write as _;

use super::TokenError;

/// A parsed `pkcs11:` URI. Values are percent-decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    pub token: Option<String>,
    pub serial: Option<String>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub slot_id: Option<u64>,
    pub object: Option<String>,
    pub id: Option<Vec<u8>>,
    /// `private`, `public`, `cert`, … (only `private` and `public` make sense here).
    pub object_type: Option<String>,
    pub module_path: Option<String>,
    pub module_name: Option<String>,
    pub pin_source: Option<String>,
}

fn bad(uri: &str, reason: impl Into<String>) -> TokenError {
    TokenError::BadUri {
        uri: redact_pin_value(uri),
        reason: reason.into(),
    }
}

/// Hides the value of any `pin-value=` attribute so that an error message never repeats a PIN.
pub(crate) fn redact_pin_value(uri: &str) -> String {
    let mut out = String::with_capacity(uri.len());
    let mut rest = uri;
    while let Some(pos) = rest.find("pin-value=") {
        out.push_str(&rest[..pos + "pin-value=".len()]);
        out.push_str("***");
        let tail = &rest[pos + "pin-value=".len()..];
        let end = tail.find(['&', ';']).unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Percent-decodes `s` (RFC 3986), refusing malformed escapes.
fn pct_decode(uri: &str, s: &str) -> Result<Vec<u8>, TokenError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad(uri, format!("malformed percent escape in `{s}`")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn pct_decode_str(uri: &str, s: &str) -> Result<String, TokenError> {
    String::from_utf8(pct_decode(uri, s)?)
        .map_err(|_| bad(uri, format!("`{s}` is not UTF-8 after percent-decoding")))
}

/// Percent-encodes everything outside RFC 7512's unreserved + a few safe characters.
pub(crate) fn pct_encode(bytes: &[u8], extra_safe: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || extra_safe.contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

impl Pkcs11Uri {
    /// Parses a `pkcs11:` URI. Unknown attributes are refused (a typo must not silently widen
    /// the selection), duplicate attributes too.
    pub fn parse(uri: &str) -> Result<Pkcs11Uri, TokenError> {
        let rest = uri
            .strip_prefix("pkcs11:")
            .ok_or_else(|| bad(uri, "does not start with `pkcs11:`"))?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut parsed = Pkcs11Uri::default();
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| bad(uri, format!("path attribute `{attr}` has no `=`")))?;
            parsed.set(uri, name, value)?;
        }
        if let Some(query) = query {
            for attr in query.split('&').filter(|a| !a.is_empty()) {
                let (name, value) = attr
                    .split_once('=')
                    .ok_or_else(|| bad(uri, format!("query attribute `{attr}` has no `=`")))?;
                parsed.set(uri, name, value)?;
            }
        }
        Ok(parsed)
    }

    fn set(&mut self, uri: &str, name: &str, raw: &str) -> Result<(), TokenError> {
        fn put<T>(uri: &str, name: &str, slot: &mut Option<T>, v: T) -> Result<(), TokenError> {
            if slot.is_some() {
                return Err(bad(uri, format!("attribute `{name}` given twice")));
            }
            *slot = Some(v);
            Ok(())
        }
        match name {
            "token" => put(uri, name, &mut self.token, pct_decode_str(uri, raw)?),
            "serial" => put(uri, name, &mut self.serial, pct_decode_str(uri, raw)?),
            "manufacturer" => put(uri, name, &mut self.manufacturer, pct_decode_str(uri, raw)?),
            "model" => put(uri, name, &mut self.model, pct_decode_str(uri, raw)?),
            "object" => put(uri, name, &mut self.object, pct_decode_str(uri, raw)?),
            "id" => put(uri, name, &mut self.id, pct_decode(uri, raw)?),
            "type" => {
                let t = pct_decode_str(uri, raw)?;
                if !["private", "public", "cert", "secret-key", "data"].contains(&t.as_str()) {
                    return Err(bad(uri, format!("unknown object type `{t}`")));
                }
                put(uri, name, &mut self.object_type, t)
            }
            "slot-id" => {
                let v = pct_decode_str(uri, raw)?;
                let n = v
                    .parse::<u64>()
                    .map_err(|_| bad(uri, format!("slot-id `{v}` is not a number")))?;
                put(uri, name, &mut self.slot_id, n)
            }
            "module-path" => put(uri, name, &mut self.module_path, pct_decode_str(uri, raw)?),
            "module-name" => put(uri, name, &mut self.module_name, pct_decode_str(uri, raw)?),
            "pin-source" => put(uri, name, &mut self.pin_source, pct_decode_str(uri, raw)?),
            "pin-value" => Err(bad(
                uri,
                "`pin-value` is refused (a PIN on the command line leaks); use `pin-source=file:…`, \
                 the SEQUESTER_CUSTODY_PIN environment variable or the prompt",
            )),
            // Accepted by RFC 7512, irrelevant for selection here.
            "library-manufacturer" | "library-description" | "library-version"
            | "slot-manufacturer" | "slot-description" => Ok(()),
            other => Err(bad(uri, format!("unknown attribute `{other}`"))),
        }
    }

    /// True when the URI names an object (a key), not just a token.
    pub(crate) fn names_object(&self) -> bool {
        self.object.is_some() || self.id.is_some()
    }

    /// Human-readable token selector for error messages (`token=… serial=…`).
    pub(crate) fn token_selector(&self) -> String {
        let mut parts = Vec::new();
        if let Some(t) = &self.token {
            parts.push(format!("token={t}"));
        }
        if let Some(s) = &self.serial {
            parts.push(format!("serial={s}"));
        }
        if let Some(m) = &self.manufacturer {
            parts.push(format!("manufacturer={m}"));
        }
        if let Some(m) = &self.model {
            parts.push(format!("model={m}"));
        }
        if let Some(s) = &self.slot_id {
            parts.push(format!("slot-id={s}"));
        }
        if parts.is_empty() {
            "(any token)".into()
        } else {
            parts.join(" ")
        }
    }

    /// Human-readable object selector for error messages.
    pub(crate) fn object_selector(&self) -> String {
        let mut parts = Vec::new();
        if let Some(o) = &self.object {
            parts.push(format!("object={o}"));
        }
        if let Some(id) = &self.id {
            parts.push(format!("id={}", hex::encode(id)));
        }
        parts.push(format!(
            "type={}",
            self.object_type.as_deref().unwrap_or("private")
        ));
        format!("{} on {}", parts.join(" "), self.token_selector())
    }

    /// Serialises back to a URI (no PIN ever). Token selection prefers the serial when known.
    pub(crate) fn to_uri_string(&self) -> String {
        let mut path = Vec::new();
        if let Some(t) = &self.token {
            path.push(format!("token={}", pct_encode(t.as_bytes(), b" ")));
        }
        if let Some(s) = &self.serial {
            path.push(format!("serial={}", pct_encode(s.as_bytes(), b"")));
        }
        if let Some(o) = &self.object {
            path.push(format!("object={}", pct_encode(o.as_bytes(), b" ")));
        }
        if let Some(id) = &self.id {
            path.push(format!("id={}", pct_encode_all(id)));
        }
        if let Some(t) = &self.object_type {
            path.push(format!("type={t}"));
        }
        let mut query = Vec::new();
        if let Some(p) = &self.module_path {
            query.push(format!("module-path={}", pct_encode(p.as_bytes(), b"/")));
        }
        if let Some(n) = &self.module_name {
            query.push(format!("module-name={}", pct_encode(n.as_bytes(), b"")));
        }
        if let Some(p) = &self.pin_source {
            query.push(format!("pin-source={}", pct_encode(p.as_bytes(), b"/:")));
        }
        let mut out = format!("pkcs11:{}", path.join(";"));
        if !query.is_empty() {
            out.push('?');
            out.push_str(&query.join("&"));
        }
        out
    }
}

/// `%xx` for every byte (the usual form of `id=` values).
pub(crate) fn pct_encode_all(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_uri() {
        let u = Pkcs11Uri::parse(
            "pkcs11:token=My%20Token;object=auth;id=%01%ff;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin",
        )
        .unwrap();
        assert_eq!(u.token.as_deref(), Some("My Token"));
        assert_eq!(u.object.as_deref(), Some("auth"));
        assert_eq!(u.id.as_deref(), Some(&[1u8, 0xff][..]));
        assert_eq!(u.object_type.as_deref(), Some("private"));
        assert_eq!(
            u.module_path.as_deref(),
            Some("/usr/lib/softhsm/libsofthsm2.so")
        );
        assert_eq!(u.pin_source.as_deref(), Some("file:/run/pin"));
        let again = Pkcs11Uri::parse(&u.to_uri_string()).unwrap();
        assert_eq!(again, u);
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "pkcs12:token=a",
            "token=a",
            "pkcs11:token",
            "pkcs11:token=a;token=b",
            "pkcs11:tokn=a",
            "pkcs11:id=%zz",
            "pkcs11:token=a?pin-value=1234",
            "pkcs11:slot-id=abc",
            "pkcs11:type=weird",
        ] {
            let err = Pkcs11Uri::parse(bad).unwrap_err();
            assert!(matches!(err, TokenError::BadUri { .. }), "{bad}: {err}");
        }
        let err = Pkcs11Uri::parse("pkcs11:token=a?pin-value=1234").unwrap_err();
        assert!(!err.to_string().contains("1234"), "{err}");
        assert!(err.to_string().contains("pin-value"), "{err}");
    }
}

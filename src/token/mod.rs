//! The token abstraction.
//!
//! Every backend (PKCS#11, YubiKey PIV) implements [`KeyHandle`] for one private key held on a
//! token; [`open_key`], [`generate`] and [`list_keys`] dispatch on the URI scheme ([`Backend`]),
//! nowhere else does. The token layer never prompts or prints: PIN requests, touch requests
//! and warnings go to the caller's [`Interaction`]. Callers
//! never see PKCS#11 or PIV types, and no method returns private key material: the private half
//! never leaves the token.
//!
//! Host-side padding (EME-OAEP decoding, EMSA-PSS encoding) for tokens that only do raw RSA lives
//! in the crate-internal `crypto::rsa_padding` module.

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use interaction::{Interaction, NonInteractive, SharedInteraction};

pub mod interaction;
pub mod pin;
pub mod pkcs11;
pub mod profile;
pub mod uri;
#[cfg(feature = "yubikey")]
pub mod yubikey;

/// What a key is for. Parsec has two RSA roles (docs/formats.md §1.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Signs sequester service and revocation certificates (RSASSA-PSS-SHA256).
    Authority,
    /// Receives realm keys bundle accesses (RSAES-OAEP-SHA256).
    Service,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Authority => "authority",
            Role::Service => "service",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "authority" => Ok(Role::Authority),
            "service" => Ok(Role::Service),
            other => Err(format!(
                "unknown role `{other}`: expected `authority` or `service`"
            )),
        }
    }
}

/// Which way a private-key operation was carried out. Shown with `-v` and in `--json` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MechanismPath {
    /// `CKM_RSA_PKCS_OAEP` with SHA-256 / MGF1-SHA-256 / empty label, done by the token.
    NativeOaepSha256,
    /// Raw RSA (`CKM_RSA_X_509` or PIV) on the token, EME-OAEP decoding on the host.
    RawRsaHostOaep,
    /// `CKM_SHA256_RSA_PKCS_PSS` (salt 32): the token hashes and pads.
    NativeSha256Pss,
    /// SHA-256 on the host, `CKM_RSA_PKCS_PSS` (salt 32) on the token.
    HostDigestPss,
    /// EMSA-PSS encoding on the host, raw RSA on the token.
    RawRsaHostPss,
}

impl fmt::Display for MechanismPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MechanismPath::NativeOaepSha256 => "native CKM_RSA_PKCS_OAEP (SHA-256)",
            MechanismPath::RawRsaHostOaep => "raw RSA on token + host EME-OAEP decoding",
            MechanismPath::NativeSha256Pss => "native CKM_SHA256_RSA_PKCS_PSS (salt 32)",
            MechanismPath::HostDigestPss => "host SHA-256 + CKM_RSA_PKCS_PSS (salt 32)",
            MechanismPath::RawRsaHostPss => "host EMSA-PSS encoding + raw RSA on token",
        })
    }
}

/// The verdict drawn from a key's attributes (`CKA_LOCAL`, `CKA_NEVER_EXTRACTABLE`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProvenanceVerdict {
    /// Generated on this token and never extractable.
    GeneratedOnToken,
    /// Imported (not generated on the token), but not extractable now.
    ImportedNonExtractable,
    /// The private key can be exported: unsafe.
    Extractable,
    /// The backend cannot tell (e.g. attributes unavailable).
    Unknown,
}

impl fmt::Display for ProvenanceVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProvenanceVerdict::GeneratedOnToken => "generated on this token, never extractable",
            ProvenanceVerdict::ImportedNonExtractable => "imported, non-extractable now",
            ProvenanceVerdict::Extractable => "EXTRACTABLE — unsafe",
            ProvenanceVerdict::Unknown => "unknown (the token does not report it)",
        })
    }
}

/// Raw provenance facts plus the verdict. `None` = attribute not available on this backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Provenance {
    pub local: Option<bool>,
    pub never_extractable: Option<bool>,
    pub always_sensitive: Option<bool>,
    pub extractable: Option<bool>,
    pub sensitive: Option<bool>,
    /// `CKA_MODIFIABLE`: TRUE lets a PIN holder rewrite the usage flags (PKCS#11 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modifiable: Option<bool>,
    /// `CKA_COPYABLE` (PKCS#11 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copyable: Option<bool>,
    /// `CKA_SIGN_RECOVER`: TRUE exposes the raw RSA private operation (PKCS#11 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sign_recover: Option<bool>,
    /// `CKA_ALLOWED_MECHANISMS` as mechanism names; `None` = not reported (no restriction).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_mechanisms: Option<Vec<String>>,
    /// Why the key is unsafe to use (extractable, modifiable, sign-recover-capable). A key with
    /// any is refused for signing and decryption (see [`ALLOW_UNSAFE_KEYS_ENV`]).
    pub weaknesses: Vec<String>,
    pub verdict: ProvenanceVerdict,
    /// Backend-specific evidence, e.g. "YubiKey attestation verified to f9 certificate".
    pub evidence: Vec<String>,
}

/// TEST TOKENS ONLY: set to `1` to use keys whose attributes make them unsafe (extractable,
/// modifiable, sign-recover-capable), e.g. keys imported with `softhsm2-util`. Without it such
/// keys are refused for signing and decryption.
pub const ALLOW_UNSAFE_KEYS_ENV: &str = "SEQUESTER_CUSTODY_TEST_ALLOW_UNSAFE_KEYS";

/// True when [`ALLOW_UNSAFE_KEYS_ENV`] is `1`.
pub fn unsafe_keys_allowed() -> bool {
    std::env::var_os(ALLOW_UNSAFE_KEYS_ENV).is_some_and(|v| v == "1")
}

/// Who made and holds the token: recorded in ceremony transcripts and custody records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct TokenDescription {
    /// `pkcs11` or `yubikey`.
    pub backend: String,
    pub manufacturer: String,
    pub model: String,
    pub serial: String,
    pub label: String,
}

/// What a caller may learn about one key on a token (no private material).
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    /// A URI that selects this key again (`pkcs11:…` or `yubikey:…`), without any PIN.
    pub uri: String,
    pub label: String,
    /// Hex of `CKA_ID` (PKCS#11) or the slot (PIV).
    pub id: String,
    pub role: Option<Role>,
    pub bits: usize,
    /// The public key as DER SubjectPublicKeyInfo (rsaEncryption + NULL).
    #[serde(skip)]
    pub spki_der: Vec<u8>,
    /// SHA-256 of `spki_der`, lowercase hex.
    pub fingerprint: String,
    pub can_sign: bool,
    pub can_decrypt: bool,
    pub provenance: Provenance,
}

/// One private key on a token. Object-safe: the Parsec and export layers take `&dyn KeyHandle`.
pub trait KeyHandle: Send + Sync {
    /// The public key as DER SubjectPublicKeyInfo (rsaEncryption + NULL, docs/formats.md §1.5).
    fn public_key_spki(&self) -> &[u8];

    /// RSASSA-PSS-SHA256, MGF1-SHA-256, salt 32 over `message` (the token or the host hashes, per
    /// the negotiated path). Returns exactly k bytes, left-padded (docs/formats.md §1.6).
    fn sign_pss_sha256(&self, message: &[u8]) -> Result<(Vec<u8>, MechanismPath), TokenError>;

    /// RSAES-OAEP-SHA256 (MGF1-SHA-256, empty label) decryption of one k-byte block.
    fn decrypt_oaep_sha256(
        &self,
        block: &[u8],
    ) -> Result<(Zeroizing<Vec<u8>>, MechanismPath), TokenError>;

    /// Provenance of the private key, read from the token.
    fn provenance(&self) -> Result<Provenance, TokenError>;

    /// The token this key lives on.
    fn token(&self) -> TokenDescription;

    /// Full description of the key.
    fn info(&self) -> Result<KeyInfo, TokenError>;
}

/// Errors of the token layer. Messages never carry PINs or key material.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("malformed key URI `{uri}`: {reason}")]
    BadUri { uri: String, reason: String },
    #[error("PKCS#11 module not found: {0}")]
    ModuleNotFound(String),
    #[error("cannot load PKCS#11 module {path}: {reason}")]
    ModuleLoad { path: String, reason: String },
    #[error("no token matches {0}")]
    NoSuchToken(String),
    #[error(
        "{count} tokens match {selector}; select one by serial (`serial=`) or label (`token=`)"
    )]
    AmbiguousToken { selector: String, count: usize },
    #[error("no key matches {0}")]
    NoSuchKey(String),
    #[error("{count} keys match {selector}; add `id=` or `object=` to the URI")]
    AmbiguousKey { selector: String, count: usize },
    #[error("wrong PIN for token `{token}` ({state}); not retried")]
    WrongPin { token: String, state: String },
    #[error("PIN of token `{token}` is locked")]
    PinLocked { token: String },
    /// A PIN was rejected by this token earlier in this process: it is not presented again.
    #[error(
        "token `{token}` rejected a PIN earlier in this run; no PIN is presented to it again \
         (run the command again with the right PIN)"
    )]
    PinLatched { token: String },
    #[error("cannot read the PIN: {0}")]
    PinSource(String),
    #[error("the key cannot {operation}: {reason}")]
    NotPermitted { operation: String, reason: String },
    #[error("unsupported key: {0}")]
    UnsupportedKey(String),
    #[error("refused: {0}")]
    Refused(String),
    /// Deliberately uninformative: a padding oracle must not learn which check failed.
    #[error("decryption failed")]
    DecryptionFailed,
    #[error("the token is not present or was removed: {0}")]
    TokenRemoved(String),
    /// Asked of a build without the cargo feature that provides it.
    #[error(
        "{what}: not compiled into this build of sequester-custody (cargo feature `{feature}`; \
         rebuild with `--features {feature}`)"
    )]
    FeatureNotBuilt {
        what: &'static str,
        feature: &'static str,
    },
    #[error("{backend} error during {operation}: {reason}")]
    Backend {
        backend: &'static str,
        operation: String,
        reason: String,
    },
}

impl TokenError {
    /// True for errors after which no further operation on the token may be attempted in this
    /// run (a rejected or blocked PIN, a removed token, a key refused for custody reasons):
    /// a loop over access rows must stop instead of trying the next row.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            TokenError::WrongPin { .. }
                | TokenError::PinLocked { .. }
                | TokenError::PinLatched { .. }
                | TokenError::PinSource(_)
                | TokenError::TokenRemoved(_)
                | TokenError::NotPermitted { .. }
                | TokenError::UnsupportedKey(_)
                | TokenError::Backend { .. }
        )
    }
}

/// The backend a key or token URI selects: the only place that looks at the URI scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `pkcs11:` (RFC 7512).
    Pkcs11,
    /// `yubikey:` (PIV over PC/SC).
    #[cfg(feature = "yubikey")]
    Yubikey,
}

impl Backend {
    /// The backend of `uri`, from its scheme.
    pub fn of_uri(uri: &str) -> Result<Backend, TokenError> {
        if uri.starts_with("pkcs11:") {
            Ok(Backend::Pkcs11)
        } else if uri.starts_with("yubikey:") {
            #[cfg(feature = "yubikey")]
            return Ok(Backend::Yubikey);
            #[cfg(not(feature = "yubikey"))]
            return Err(TokenError::FeatureNotBuilt {
                what: "`yubikey:` URIs (the YubiKey PIV backend)",
                feature: "yubikey",
            });
        } else {
            Err(TokenError::BadUri {
                uri: uri::redact_pin_value(uri),
                reason: "expected a `pkcs11:` or `yubikey:` URI".into(),
            })
        }
    }
}

/// What opening a key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Private-key operations: the PIN is verified now.
    Use,
    /// The public key and provenance only: no PIN where the backend allows it (YubiKey); a
    /// PKCS#11 private key object is only visible after login, so PKCS#11 still logs in.
    Inspect,
}

/// A key opened by [`open_backend_key`], as its backend's own type (for callers that show
/// backend-specific details, such as a YubiKey attestation).
pub enum OpenedKey {
    Pkcs11(Box<pkcs11::Pkcs11Key>),
    #[cfg(feature = "yubikey")]
    Yubikey(Box<yubikey::YubikeyKey>),
}

impl OpenedKey {
    pub(crate) fn into_handle(self) -> Box<dyn KeyHandle> {
        match self {
            OpenedKey::Pkcs11(key) => key,
            #[cfg(feature = "yubikey")]
            OpenedKey::Yubikey(key) => key,
        }
    }
}

/// Opens the private key any key URI designates, in its backend's own type. Logs in as
/// `access` needs (PIN from `pin-source`, `SEQUESTER_CUSTODY_PIN` or `interaction`; a wrong
/// PIN is never retried).
// `access` only matters to the YubiKey backend (PKCS#11 always logs in).
#[cfg_attr(not(feature = "yubikey"), allow(unused_variables))]
pub fn open_backend_key(
    uri: &str,
    access: Access,
    interaction: SharedInteraction,
) -> Result<OpenedKey, TokenError> {
    match Backend::of_uri(uri)? {
        Backend::Pkcs11 => {
            let parsed = uri::Pkcs11Uri::parse(uri)?;
            Ok(OpenedKey::Pkcs11(Box::new(pkcs11::Pkcs11Key::open(
                &parsed,
                interaction,
            )?)))
        }
        #[cfg(feature = "yubikey")]
        Backend::Yubikey => {
            let login = match access {
                Access::Use => Some(interaction.as_ref()),
                Access::Inspect => None,
            };
            Ok(OpenedKey::Yubikey(Box::new(yubikey::open_yubikey_key(
                uri, login,
            )?)))
        }
    }
}

/// Opens the private key a URI designates for use: `pkcs11:` (RFC 7512) goes to the PKCS#11
/// backend, `yubikey:` to the YubiKey PIV backend.
pub fn open_key(
    uri: &str,
    interaction: SharedInteraction,
) -> Result<Box<dyn KeyHandle>, TokenError> {
    Ok(open_backend_key(uri, Access::Use, interaction)?.into_handle())
}

/// What to create on a token (`key generate`, `key import`).
#[derive(Debug, Clone)]
pub struct KeySpec {
    pub role: Role,
    /// CKA_LABEL (PKCS#11).
    pub label: String,
    /// Modulus size for generation (ignored by import, which checks the key's own size).
    pub bits: usize,
    /// Allows keys below 2048 bits: for test tokens and the published 1024-bit fixture keys only.
    pub allow_insecure_test_size: bool,
    /// PKCS#11: create the private key with `CKA_ALWAYS_AUTHENTICATE` (a context-specific
    /// login before every operation). Meant for authority keys.
    pub always_authenticate: bool,
}

/// Default modulus size for generated keys.
pub const DEFAULT_KEY_BITS: usize = 4096;

/// Key size policy (docs/formats.md §1.5): at most 4096 bits, a multiple of 8, at least 2048 unless
/// the test-only override is given (and never below 1024).
pub fn check_key_size(bits: usize, allow_insecure_test_size: bool) -> Result<(), TokenError> {
    if bits > crate::parsec::spki::MAX_BITS {
        return Err(TokenError::Refused(format!(
            "{bits}-bit RSA: Parsec clients (RustCrypto) reject keys above 4096 bits"
        )));
    }
    if bits % 8 != 0 {
        return Err(TokenError::Refused(format!(
            "{bits}-bit RSA: the modulus size must be a multiple of 8 (Parsec splits blocks at bits/8)"
        )));
    }
    if bits < 1024 {
        return Err(TokenError::Refused(format!(
            "{bits}-bit RSA is far too small"
        )));
    }
    if bits < 2048 && !allow_insecure_test_size {
        return Err(TokenError::Refused(format!(
            "{bits}-bit RSA is below the 2048-bit minimum (only test keys may be smaller, with \
             --allow-insecure-test-size)"
        )));
    }
    Ok(())
}

/// A key generated by [`generate`], as its backend's own type.
pub enum GeneratedKey {
    Pkcs11(Box<pkcs11::Pkcs11Key>),
    /// With the management key and policies the card used.
    #[cfg(feature = "yubikey")]
    Yubikey(Box<yubikey::Generated>),
}

impl GeneratedKey {
    pub(crate) fn into_handle(self) -> Box<dyn KeyHandle> {
        match self {
            GeneratedKey::Pkcs11(key) => key,
            #[cfg(feature = "yubikey")]
            GeneratedKey::Yubikey(generated) => Box::new(generated.key),
        }
    }
}

/// Generates a key pair for `spec.role` on the token `token_uri` designates (any backend).
pub fn generate(
    token_uri: &str,
    spec: &KeySpec,
    interaction: SharedInteraction,
) -> Result<GeneratedKey, TokenError> {
    match Backend::of_uri(token_uri)? {
        Backend::Pkcs11 => {
            let parsed = uri::Pkcs11Uri::parse(token_uri)?;
            Ok(GeneratedKey::Pkcs11(Box::new(pkcs11::keygen::generate(
                &parsed,
                spec,
                interaction,
            )?)))
        }
        #[cfg(feature = "yubikey")]
        Backend::Yubikey => Ok(GeneratedKey::Yubikey(Box::new(yubikey::generate(
            token_uri,
            spec,
            interaction.as_ref(),
        )?))),
    }
}

/// [`generate`], through the backend-neutral interface.
pub fn generate_key(
    token_uri: &str,
    spec: &KeySpec,
    interaction: SharedInteraction,
) -> Result<Box<dyn KeyHandle>, TokenError> {
    Ok(generate(token_uri, spec, interaction)?.into_handle())
}

/// Lists the RSA private keys on the token `token_uri` designates (a PKCS#11 token is logged
/// into; a YubiKey needs no PIN).
pub fn list_keys(
    token_uri: &str,
    interaction: &dyn Interaction,
) -> Result<Vec<KeyInfo>, TokenError> {
    match Backend::of_uri(token_uri)? {
        #[cfg(feature = "yubikey")]
        Backend::Yubikey => return yubikey::list_keys(token_uri),
        Backend::Pkcs11 => {}
    }
    let parsed = uri::Pkcs11Uri::parse(token_uri)?;
    let pin_source = parsed.pin_source.as_deref();
    let token = pkcs11::module::select_token(&parsed)?;
    let session = pkcs11::session::open_logged_in(&token, false, pin_source, interaction)?;
    let mut selector = parsed.clone();
    selector.object_type = None;
    let handles = pkcs11::key::find_private_keys(&session, &selector)?;
    // Keep this session open: closing a module's last session logs out and may invalidate the
    // object handles just found.
    let mut out = Vec::new();
    for handle in handles {
        let session = pkcs11::session::open_logged_in(&token, false, pin_source, interaction)?;
        let key = pkcs11::Pkcs11Key::from_handle(token.clone(), session, handle)?;
        out.push(key.info()?);
    }
    drop(session);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_size_policy() {
        for ok in [2048, 3072, 4096] {
            check_key_size(ok, false).unwrap();
        }
        check_key_size(1024, true).unwrap();
        for bad in [1024, 2047, 2050, 4104, 8192, 512] {
            assert!(
                matches!(check_key_size(bad, false), Err(TokenError::Refused(_))),
                "{bad}"
            );
        }
        assert!(check_key_size(4104, true).is_err());
        assert!(check_key_size(2052, true).is_err());
    }
}

//! One RSA private key on a PKCS#11 token: the [`KeyHandle`] implementation with mechanism
//! negotiation and the host-side padding fallbacks.

use std::sync::Mutex;

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{
    Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::Session;
use rsa::traits::PublicKeyParts;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::super::interaction::{self, PinKind, PinRequest, SharedInteraction};
use super::super::pin::resolve_pin;
use super::super::uri::Pkcs11Uri;
use super::super::{
    KeyHandle, KeyInfo, MechanismPath, Provenance, ProvenanceVerdict, Role, TokenDescription,
    TokenError,
};
use super::mechanisms::{self, Negotiated};
use super::module::TokenRef;
use super::{ck_error, session};
use crate::crypto::rsa_padding;
use crate::parsec::spki;

/// A private RSA key on a PKCS#11 token, with a logged-in session.
pub struct Pkcs11Key {
    token: TokenRef,
    session: Mutex<Session>,
    handle: ObjectHandle,
    label: String,
    id: Vec<u8>,
    spki_der: Vec<u8>,
    public: rsa::RsaPublicKey,
    /// Big-endian modulus, exactly k bytes.
    modulus: Vec<u8>,
    can_sign: bool,
    can_decrypt: bool,
    /// `CKA_ALWAYS_AUTHENTICATE`: every operation needs a context-specific login.
    always_authenticate: bool,
    /// `CKA_ALLOWED_MECHANISMS` when reported: paths outside it are never tried.
    allowed_mechanisms: Option<Vec<MechanismType>>,
    /// Why the key is unsafe (extractable, modifiable, sign-recover-capable): such a key is
    /// refused for signing and decryption unless [`crate::token::unsafe_keys_allowed`].
    weaknesses: Vec<String>,
    /// The first fatal error of an operation: no later operation touches the token.
    fatal: Mutex<Option<String>>,
    context_auth: Mutex<ContextAuth>,
    /// Asked for the context-specific PIN when no source gives it.
    interaction: SharedInteraction,
}

/// The PIN for the context-specific logins of a `CKA_ALWAYS_AUTHENTICATE` key. Kept (zeroized
/// on drop) so the user is asked once, not once per signature; dropped for good after a
/// failed attempt, so a wrong PIN is never presented twice.
enum ContextAuth {
    /// Not read yet: read from `pin_source` (then the environment, then a prompt) when needed.
    Unresolved {
        pin_source: Option<String>,
    },
    Pin(Zeroizing<String>),
    /// The token has a protected authentication path (PIN pad): it asks by itself.
    PinPad,
    /// A context-specific login failed; no further attempt is made.
    Failed,
}

impl std::fmt::Debug for Pkcs11Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Key")
            .field("token", &self.token.description.label)
            .field("label", &self.label)
            .field("id", &hex::encode(&self.id))
            .finish()
    }
}

fn pss_params() -> PkcsPssParams {
    PkcsPssParams {
        hash_alg: MechanismType::SHA256,
        mgf: PkcsMgfType::MGF1_SHA256,
        s_len: (rsa_padding::PSS_SALT_LEN as u64).into(),
    }
}

/// True for errors meaning "the token does not do this mechanism/parameter set" (so the next
/// negotiated path may be tried), as opposed to a failure of the operation itself.
fn is_mechanism_refusal(err: &CkError) -> bool {
    matches!(
        err,
        CkError::Pkcs11(
            RvError::MechanismInvalid | RvError::MechanismParamInvalid | RvError::ArgumentsBad,
            cryptoki::context::Function::DecryptInit | cryptoki::context::Function::SignInit
        )
    )
}

pub(crate) fn read_bool(
    session: &Session,
    handle: ObjectHandle,
    attr: AttributeType,
) -> Option<bool> {
    // Ask for the size first: get_attributes() silently drops attributes the token refuses.
    match session.get_attribute_info(handle, &[attr]).ok()?.first()? {
        AttributeInfo::Available(_) => {}
        _ => return None,
    }
    session
        .get_attributes(handle, &[attr])
        .ok()?
        .into_iter()
        .find_map(|a| match a {
            Attribute::Local(b)
            | Attribute::AlwaysAuthenticate(b)
            | Attribute::NeverExtractable(b)
            | Attribute::AlwaysSensitive(b)
            | Attribute::Extractable(b)
            | Attribute::Sensitive(b)
            | Attribute::Sign(b)
            | Attribute::Decrypt(b)
            | Attribute::Private(b)
            | Attribute::Token(b)
            | Attribute::Modifiable(b)
            | Attribute::Copyable(b)
            | Attribute::SignRecover(b)
            | Attribute::Unwrap(b)
            | Attribute::Derive(b) => Some(b),
            _ => None,
        })
}

/// `CKA_ALLOWED_MECHANISMS`, or `None` when the token does not report it or reports an empty
/// list (SoftHSM does for keys created without it): no restriction.
pub(crate) fn read_allowed_mechanisms(
    session: &Session,
    handle: ObjectHandle,
) -> Option<Vec<MechanismType>> {
    match session
        .get_attribute_info(handle, &[AttributeType::AllowedMechanisms])
        .ok()?
        .first()?
    {
        AttributeInfo::Available(_) => {}
        _ => return None,
    }
    session
        .get_attributes(handle, &[AttributeType::AllowedMechanisms])
        .ok()?
        .into_iter()
        .find_map(|a| match a {
            Attribute::AllowedMechanisms(m) if !m.is_empty() => Some(m),
            _ => None,
        })
}

fn read_bytes(
    session: &Session,
    handle: ObjectHandle,
    attr: AttributeType,
) -> Result<Option<Vec<u8>>, TokenError> {
    let info = session
        .get_attribute_info(handle, &[attr])
        .map_err(|e| ck_error("C_GetAttributeValue", e))?;
    if !matches!(info.first(), Some(AttributeInfo::Available(_))) {
        return Ok(None);
    }
    let attrs = session
        .get_attributes(handle, &[attr])
        .map_err(|e| ck_error("C_GetAttributeValue", e))?;
    Ok(attrs.into_iter().find_map(|a| match a {
        Attribute::Modulus(v)
        | Attribute::PublicExponent(v)
        | Attribute::Id(v)
        | Attribute::Label(v) => Some(v),
        _ => None,
    }))
}

/// Provenance verdict from the raw facts (see docs/keys-and-tokens.md).
pub(crate) fn verdict(
    local: Option<bool>,
    never_extractable: Option<bool>,
    always_sensitive: Option<bool>,
    extractable: Option<bool>,
    sensitive: Option<bool>,
) -> ProvenanceVerdict {
    if extractable == Some(true) || sensitive == Some(false) {
        return ProvenanceVerdict::Extractable;
    }
    match (local, never_extractable, always_sensitive, extractable) {
        (Some(true), Some(true), Some(true), Some(false)) => ProvenanceVerdict::GeneratedOnToken,
        (_, _, _, Some(false)) => ProvenanceVerdict::ImportedNonExtractable,
        _ => ProvenanceVerdict::Unknown,
    }
}

/// Reads the provenance attributes of `handle`.
pub(crate) fn read_provenance(session: &Session, handle: ObjectHandle) -> Provenance {
    let local = read_bool(session, handle, AttributeType::Local);
    let never_extractable = read_bool(session, handle, AttributeType::NeverExtractable);
    let always_sensitive = read_bool(session, handle, AttributeType::AlwaysSensitive);
    let extractable = read_bool(session, handle, AttributeType::Extractable);
    let sensitive = read_bool(session, handle, AttributeType::Sensitive);
    let modifiable = read_bool(session, handle, AttributeType::Modifiable);
    let copyable = read_bool(session, handle, AttributeType::Copyable);
    let sign_recover = read_bool(session, handle, AttributeType::SignRecover);
    let always_authenticate = read_bool(session, handle, AttributeType::AlwaysAuthenticate);
    let allowed_mechanisms = read_allowed_mechanisms(session, handle);
    let verdict = verdict(
        local,
        never_extractable,
        always_sensitive,
        extractable,
        sensitive,
    );
    let mut evidence = Vec::new();
    for (name, v) in [
        ("CKA_LOCAL", local),
        ("CKA_NEVER_EXTRACTABLE", never_extractable),
        ("CKA_ALWAYS_SENSITIVE", always_sensitive),
        ("CKA_EXTRACTABLE", extractable),
        ("CKA_SENSITIVE", sensitive),
        ("CKA_MODIFIABLE", modifiable),
        ("CKA_COPYABLE", copyable),
        ("CKA_SIGN_RECOVER", sign_recover),
        ("CKA_ALWAYS_AUTHENTICATE", always_authenticate),
    ] {
        evidence.push(match v {
            Some(b) => format!("{name}={}", if b { "TRUE" } else { "FALSE" }),
            None => format!("{name} not reported"),
        });
    }
    let allowed_mechanisms =
        allowed_mechanisms.map(|m| m.iter().map(|t| t.to_string()).collect::<Vec<_>>());
    evidence.push(match &allowed_mechanisms {
        Some(m) => format!("CKA_ALLOWED_MECHANISMS={}", m.join(",")),
        None => "CKA_ALLOWED_MECHANISMS not reported (no restriction)".into(),
    });
    let mut weaknesses = Vec::new();
    if extractable == Some(true) {
        weaknesses.push("CKA_EXTRACTABLE=TRUE: the private key can be wrapped out".to_string());
    }
    if sensitive == Some(false) {
        weaknesses.push("CKA_SENSITIVE=FALSE: the private exponent can be read".into());
    }
    if modifiable != Some(false) {
        weaknesses.push(format!(
            "CKA_MODIFIABLE {}: a PIN holder can change its usage flags (its role)",
            if modifiable == Some(true) {
                "TRUE"
            } else {
                "not reported"
            }
        ));
    }
    if sign_recover != Some(false) {
        weaknesses.push(format!(
            "CKA_SIGN_RECOVER {}: C_SignRecover reaches the raw RSA private operation",
            if sign_recover == Some(true) {
                "TRUE"
            } else {
                "not reported"
            }
        ));
    }
    Provenance {
        local,
        never_extractable,
        always_sensitive,
        extractable,
        sensitive,
        modifiable,
        copyable,
        sign_recover,
        allowed_mechanisms,
        weaknesses,
        verdict,
        evidence,
    }
}

/// Drops the weaknesses that the token's HSM profile declares unenforceable on that product
/// (`unenforced_key_attributes`, with the reason in its quirks); they stay in the evidence.
pub(crate) fn exempt_by_profile(token: &TokenRef, weaknesses: Vec<String>) -> Vec<String> {
    let Some(profile) = &token.module.profile else {
        return weaknesses;
    };
    weaknesses
        .into_iter()
        .filter(|w| {
            !profile
                .unenforced_key_attributes
                .iter()
                .any(|a| w.starts_with(&format!("{a} ")) || w.starts_with(&format!("{a}=")))
        })
        .collect()
}

/// Finds private RSA keys matching the URI's object attributes on an open session.
pub(crate) fn find_private_keys(
    session: &Session,
    uri: &Pkcs11Uri,
) -> Result<Vec<ObjectHandle>, TokenError> {
    let mut template = vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(KeyType::RSA),
    ];
    if let Some(label) = &uri.object {
        template.push(Attribute::Label(label.as_bytes().to_vec()));
    }
    if let Some(id) = &uri.id {
        template.push(Attribute::Id(id.clone()));
    }
    session
        .find_objects(&template)
        .map_err(|e| ck_error("C_FindObjects", e))
}

/// The public key of a private key object: from its own CKA_MODULUS / CKA_PUBLIC_EXPONENT, else
/// from the public key object with the same CKA_ID.
fn public_components(
    session: &Session,
    handle: ObjectHandle,
    id: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), TokenError> {
    let n = read_bytes(session, handle, AttributeType::Modulus)?;
    let e = read_bytes(session, handle, AttributeType::PublicExponent)?;
    if let (Some(n), Some(e)) = (n, e) {
        return Ok((n, e));
    }
    let publics = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(KeyType::RSA),
            Attribute::Id(id.to_vec()),
        ])
        .map_err(|e| ck_error("C_FindObjects", e))?;
    for p in publics {
        if let (Some(n), Some(e)) = (
            read_bytes(session, p, AttributeType::Modulus)?,
            read_bytes(session, p, AttributeType::PublicExponent)?,
        ) {
            return Ok((n, e));
        }
    }
    Err(TokenError::UnsupportedKey(
        "the token reports neither the modulus of the private key nor a matching public key".into(),
    ))
}

impl Pkcs11Key {
    /// Wraps an already-located private key object.
    pub(crate) fn from_handle(
        token: TokenRef,
        session: Session,
        handle: ObjectHandle,
    ) -> Result<Pkcs11Key, TokenError> {
        let label = read_bytes(&session, handle, AttributeType::Label)?
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .unwrap_or_default();
        let id = read_bytes(&session, handle, AttributeType::Id)?.unwrap_or_default();
        let (n, e) = public_components(&session, handle, &id)?;
        let spki_der = spki::spki_der_from_components(&n, &e)
            .map_err(|e| TokenError::UnsupportedKey(e.to_string()))?;
        let public = spki::parse_spki_der_lenient(&spki_der)
            .map_err(|e| TokenError::UnsupportedKey(e.to_string()))?;
        let can_sign = read_bool(&session, handle, AttributeType::Sign).unwrap_or(false);
        let can_decrypt = read_bool(&session, handle, AttributeType::Decrypt).unwrap_or(false);
        let always_authenticate =
            read_bool(&session, handle, AttributeType::AlwaysAuthenticate).unwrap_or(false);
        let modulus =
            rsa_padding::left_pad(&public.n().to_bytes_be(), public.size()).unwrap_or_default();
        let allowed_mechanisms = read_allowed_mechanisms(&session, handle);
        let weaknesses = exempt_by_profile(&token, read_provenance(&session, handle).weaknesses);
        Ok(Pkcs11Key {
            token,
            session: Mutex::new(session),
            handle,
            label,
            id,
            spki_der,
            public,
            modulus,
            can_sign,
            can_decrypt,
            always_authenticate,
            allowed_mechanisms,
            weaknesses,
            fatal: Mutex::new(None),
            context_auth: Mutex::new(ContextAuth::Unresolved { pin_source: None }),
            interaction: interaction::non_interactive(),
        })
    }

    /// Where the PIN for context-specific logins comes from: the PIN already read for the
    /// session login if there was one, else `pin_source` (then the environment, then
    /// `interaction`), read at the first operation. Without `CKA_ALWAYS_AUTHENTICATE` the PIN
    /// is not kept.
    pub(crate) fn with_pin_source(
        mut self,
        pin_source: Option<&str>,
        login_pin: Option<Zeroizing<String>>,
        interaction: SharedInteraction,
    ) -> Pkcs11Key {
        self.interaction = interaction;
        let auth = match login_pin {
            Some(pin) if self.always_authenticate => ContextAuth::Pin(pin),
            _ => ContextAuth::Unresolved {
                pin_source: pin_source.map(str::to_string),
            },
        };
        *self.context_auth.lock().unwrap_or_else(|e| e.into_inner()) = auth;
        self
    }

    /// True when the token demands a context-specific login before each operation.
    pub fn always_authenticate(&self) -> bool {
        self.always_authenticate
    }

    /// Opens the single private key the URI designates (logging in as needed; a PIN no source
    /// gives is asked of `interaction`).
    pub fn open(uri: &Pkcs11Uri, interaction: SharedInteraction) -> Result<Pkcs11Key, TokenError> {
        if !uri.names_object() {
            return Err(TokenError::BadUri {
                uri: uri.to_uri_string(),
                reason: "names no key: add `object=` (label) or `id=`".into(),
            });
        }
        if let Some(t) = uri.object_type.as_deref() {
            if t != "private" {
                return Err(TokenError::BadUri {
                    uri: uri.to_uri_string(),
                    reason: format!(
                        "`type={t}`: a key URI designates the private key (type=private)"
                    ),
                });
            }
        }
        let token = super::module::select_token(uri)?;
        let (session, login_pin) = session::open_logged_in_keeping_pin(
            &token,
            false,
            uri.pin_source.as_deref(),
            interaction.as_ref(),
        )?;
        let mut found = find_private_keys(&session, uri)?;
        match found.len() {
            0 => Err(TokenError::NoSuchKey(uri.object_selector())),
            1 => Ok(
                Pkcs11Key::from_handle(token, session, found.remove(0))?.with_pin_source(
                    uri.pin_source.as_deref(),
                    login_pin,
                    interaction,
                ),
            ),
            count => Err(TokenError::AmbiguousKey {
                selector: uri.object_selector(),
                count,
            }),
        }
    }

    /// Modulus length in bits.
    pub(crate) fn bits(&self) -> usize {
        self.public.n().bits()
    }

    /// The key's role, from its usage flags (sign only = authority, decrypt only = service).
    pub(crate) fn role(&self) -> Option<Role> {
        match (self.can_sign, self.can_decrypt) {
            (true, false) => Some(Role::Authority),
            (false, true) => Some(Role::Service),
            _ => None,
        }
    }

    /// The mechanism paths negotiated for this key's token and size, restricted to the key's
    /// `CKA_ALLOWED_MECHANISMS` (a path the key may not use is not tried: its refusal would
    /// otherwise be taken for the token's and drop the path for every key).
    pub fn negotiated(&self) -> Negotiated {
        let mut n = mechanisms::negotiate(&self.token, self.bits());
        if let Some(allowed) = &self.allowed_mechanisms {
            let ok = |p: &MechanismPath| allowed.contains(&mechanisms::required_mechanism(*p).0);
            n.decrypt.retain(ok);
            n.sign.retain(ok);
        }
        n
    }

    /// Before any private-key operation: refuses an unsafe key (unless the test-only override
    /// is set) and any operation after a fatal token error.
    fn ready_for(&self, operation: &str) -> Result<(), TokenError> {
        if let Some(first) = &*self.fatal.lock().unwrap_or_else(|e| e.into_inner()) {
            return Err(TokenError::Refused(format!(
                "no further {operation} with this key in this run after: {first}"
            )));
        }
        if !self.weaknesses.is_empty() && !crate::token::unsafe_keys_allowed() {
            return Err(TokenError::NotPermitted {
                operation: operation.into(),
                reason: format!(
                    "UNSAFE key `{}`: {} (re-create it with `key generate`/`key import`; test \
                     tokens only: {}=1)",
                    self.label,
                    self.weaknesses.join("; "),
                    crate::token::ALLOW_UNSAFE_KEYS_ENV
                ),
            });
        }
        Ok(())
    }

    /// Records a fatal error (see [`TokenError::is_fatal`]) so no later operation is tried.
    fn latch_fatal<T>(&self, result: Result<T, TokenError>) -> Result<T, TokenError> {
        if let Err(e) = &result {
            if e.is_fatal() {
                let mut fatal = self.fatal.lock().unwrap_or_else(|e| e.into_inner());
                if fatal.is_none() {
                    *fatal = Some(e.to_string());
                }
            }
        }
        result
    }

    /// A URI selecting this key again (serial, label, id, module path; no PIN).
    pub(crate) fn uri(&self) -> String {
        let mut u = self.token.uri();
        u.object = Some(self.label.clone()).filter(|l| !l.is_empty());
        u.id = Some(self.id.clone()).filter(|i| !i.is_empty());
        u.object_type = Some("private".into());
        u.to_uri_string()
    }

    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Before an operation of a `CKA_ALWAYS_AUTHENTICATE` key (and before its `*Init`, so that
    /// no operation is left active): the PIN for its context-specific login, read once from
    /// its source if not known yet; refused after an earlier failed login. `None` for other
    /// keys.
    fn context_auth_ready(
        &self,
    ) -> Result<Option<std::sync::MutexGuard<'_, ContextAuth>>, TokenError> {
        if !self.always_authenticate {
            return Ok(None);
        }
        let mut auth = self.context_auth.lock().unwrap_or_else(|e| e.into_inner());
        if let ContextAuth::Unresolved { pin_source } = &*auth {
            *auth = if self.token.info()?.protected_authentication_path() {
                ContextAuth::PinPad
            } else {
                let request = PinRequest {
                    token_label: &self.token.description.label,
                    kind: PinKind::ContextSpecific,
                    retries_left: None,
                };
                ContextAuth::Pin(
                    resolve_pin(pin_source.as_deref(), &request, self.interaction.as_ref())?.0,
                )
            };
        }
        if matches!(*auth, ContextAuth::Failed) {
            return Err(TokenError::Refused(format!(
                "an earlier context-specific login on token `{}` failed; the PIN is not tried \
                 again",
                self.token.description.label
            )));
        }
        Ok(Some(auth))
    }

    /// The context-specific login, between the `*Init` call and the operation. One attempt:
    /// a failure marks the key so that no later operation presents the PIN again.
    fn context_login(&self, session: &Session, auth: &mut ContextAuth) -> Result<(), TokenError> {
        let pin = match &*auth {
            ContextAuth::Pin(pin) => Some(pin.as_str()),
            _ => None,
        };
        let result = session::context_login(&self.token, session, pin);
        if result.is_err() {
            *auth = ContextAuth::Failed;
        }
        result
    }

    /// One single-part operation: `init` (C_SignInit / C_DecryptInit), the context-specific
    /// login if the key needs it, then C_Sign / C_Decrypt called once with a k-byte output
    /// buffer from the module's own function table. cryptoki's `Session::sign` and `decrypt`
    /// run init and operation in one call (no room for the login) and ask the output length
    /// first, which kryoptic answers with CKR_GENERAL_ERROR for CKM_RSA_X_509.
    fn single_part(
        &self,
        session: &Session,
        init: impl FnOnce() -> Result<(), CkError>,
        operation: RawOperation,
        input: &[u8],
    ) -> Result<Result<Zeroizing<Vec<u8>>, TokenError>, CkError> {
        use cryptoki::context::Function;
        use cryptoki::error::Rv;
        let Some(raw) = &self.token.module.raw else {
            return Ok(Err(TokenError::UnsupportedKey(
                "the key needs a context-specific login (CKA_ALWAYS_AUTHENTICATE) but the \
                 module's function list could not be read"
                    .into(),
            )));
        };
        let mut auth = match self.context_auth_ready() {
            Ok(auth) => auth,
            Err(e) => return Ok(Err(e)),
        };
        let (call, function) = match operation {
            RawOperation::Sign => (raw.sign, Function::Sign),
            RawOperation::Decrypt => (raw.decrypt, Function::Decrypt),
        };
        let mut out = Zeroizing::new(vec![0u8; self.public.size()]);
        let mut out_len = out.len() as cryptoki_sys::CK_ULONG;
        let mut input = Zeroizing::new(input.to_vec());
        // SAFETY: a valid session handle of this module with an operation initialised before
        // the call; both buffers outlive it and their lengths are passed alongside.
        let mut run = |out: &mut [u8], out_len: &mut cryptoki_sys::CK_ULONG| unsafe {
            Rv::from(call(
                session.handle(),
                input.as_mut_ptr(),
                input.len() as cryptoki_sys::CK_ULONG,
                out.as_mut_ptr(),
                out_len,
            ))
            .into_result(function)
        };
        init()?;
        if let Some(auth) = auth.as_deref_mut() {
            if let Err(e) = self.context_login(session, auth) {
                // The failed login leaves the operation initialised, and the session would
                // answer every later *Init with CKR_OPERATION_ACTIVE. A C_Sign/C_Decrypt that
                // fails ends it (the token refuses it without the login); whatever it might
                // return is discarded (zeroized).
                let _ = run(&mut out, &mut out_len);
                return Ok(Err(e));
            }
        }
        run(&mut out, &mut out_len)?;
        out.truncate(out_len as usize);
        Ok(Ok(out))
    }

    fn sign_with(
        &self,
        path: MechanismPath,
        message: &[u8],
    ) -> Result<Result<Vec<u8>, TokenError>, CkError> {
        let session = self.session();
        let digest: [u8; 32] = Sha256::digest(message).into();
        let (mechanism, input) = match path {
            MechanismPath::NativeSha256Pss => {
                (Mechanism::Sha256RsaPkcsPss(pss_params()), message.to_vec())
            }
            MechanismPath::HostDigestPss => (Mechanism::RsaPkcsPss(pss_params()), digest.to_vec()),
            MechanismPath::RawRsaHostPss => {
                let em = rsa_padding::pss_sha256_encode_random_salt(&digest, self.bits())
                    .map_err(|_| CkError::InvalidValue)?;
                (Mechanism::RsaX509, em)
            }
            _ => return Err(CkError::NotSupported),
        };
        if !self.always_authenticate {
            return session.sign(&mechanism, self.handle, &input).map(Ok);
        }
        let signed = self.single_part(
            &session,
            || session.sign_init(&mechanism, self.handle),
            RawOperation::Sign,
            &input,
        )?;
        Ok(signed.map(|sig| sig.to_vec()))
    }

    fn decrypt_with(
        &self,
        path: MechanismPath,
        block: &[u8],
    ) -> Result<Result<Zeroizing<Vec<u8>>, TokenError>, CkError> {
        let session = self.session();
        let mechanism = match path {
            MechanismPath::NativeOaepSha256 => Mechanism::RsaPkcsOaep(PkcsOaepParams::new(
                MechanismType::SHA256,
                PkcsMgfType::MGF1_SHA256,
                PkcsOaepSource::empty(),
            )),
            MechanismPath::RawRsaHostOaep => Mechanism::RsaX509,
            _ => return Err(CkError::NotSupported),
        };
        let single_call = self.always_authenticate
            || (path == MechanismPath::RawRsaHostOaep && self.token.module.raw.is_some());
        let out = if !single_call {
            Zeroizing::new(session.decrypt(&mechanism, self.handle, block)?)
        } else {
            match self.single_part(
                &session,
                || session.decrypt_init(&mechanism, self.handle),
                RawOperation::Decrypt,
                block,
            )? {
                Ok(out) => out,
                Err(e) => return Ok(Err(e)),
            }
        };
        Ok(match path {
            MechanismPath::RawRsaHostOaep => rsa_padding::oaep_sha256_decode_raw(&out, block.len())
                .map_err(|_| TokenError::DecryptionFailed),
            _ => Ok(out),
        })
    }
}

#[derive(Clone, Copy)]
enum RawOperation {
    Sign,
    Decrypt,
}

impl KeyHandle for Pkcs11Key {
    fn public_key_spki(&self) -> &[u8] {
        &self.spki_der
    }

    fn sign_pss_sha256(&self, message: &[u8]) -> Result<(Vec<u8>, MechanismPath), TokenError> {
        self.ready_for("sign")?;
        self.latch_fatal(self.sign_checked(message))
    }

    fn decrypt_oaep_sha256(
        &self,
        block: &[u8],
    ) -> Result<(Zeroizing<Vec<u8>>, MechanismPath), TokenError> {
        self.ready_for("decrypt")?;
        self.latch_fatal(self.decrypt_checked(block))
    }

    fn provenance(&self) -> Result<Provenance, TokenError> {
        let mut p = read_provenance(&self.session(), self.handle);
        p.weaknesses = exempt_by_profile(&self.token, std::mem::take(&mut p.weaknesses));
        Ok(p)
    }

    fn token(&self) -> TokenDescription {
        self.token.description.clone()
    }

    fn info(&self) -> Result<KeyInfo, TokenError> {
        Ok(KeyInfo {
            uri: self.uri(),
            label: self.label.clone(),
            id: hex::encode(&self.id),
            role: self.role(),
            bits: self.bits(),
            spki_der: self.spki_der.clone(),
            fingerprint: spki::spki_fingerprint(&self.spki_der),
            can_sign: self.can_sign,
            can_decrypt: self.can_decrypt,
            provenance: self.provenance()?,
        })
    }
}

impl Pkcs11Key {
    fn sign_checked(&self, message: &[u8]) -> Result<(Vec<u8>, MechanismPath), TokenError> {
        if !self.can_sign {
            return Err(TokenError::NotPermitted {
                operation: "sign".into(),
                reason: "CKA_SIGN is false (not an authority key)".into(),
            });
        }
        let paths = self.negotiated().sign;
        if paths.is_empty() {
            return Err(TokenError::UnsupportedKey(
                "the token offers no RSA-PSS-SHA256 signing path (native, host digest or raw RSA)"
                    .into(),
            ));
        }
        let mut last_refusal = None;
        for path in paths {
            match self.sign_with(path, message) {
                Ok(Err(e)) => return Err(e),
                Ok(Ok(sig)) => {
                    let k = self.public.size();
                    let sig =
                        rsa_padding::left_pad(&sig, k).ok_or_else(|| TokenError::Backend {
                            backend: "pkcs11",
                            operation: "C_Sign".into(),
                            reason: format!(
                                "the token returned {} bytes for a {k}-byte key",
                                sig.len()
                            ),
                        })?;
                    // Check the token's work: a faulty signature must never reach a certificate.
                    let digest = Sha256::digest(message);
                    self.public
                        .verify(rsa::Pss::new::<Sha256>(), &digest, &sig)
                        .map_err(|_| TokenError::Backend {
                            backend: "pkcs11",
                            operation: format!("signing ({path})"),
                            reason:
                                "the token's signature does not verify with the key's public key"
                                    .into(),
                        })?;
                    return Ok((sig, path));
                }
                Err(e) if is_mechanism_refusal(&e) => {
                    mechanisms::mark_refused(&self.token, path);
                    last_refusal = Some(e);
                }
                Err(e) => return Err(ck_error("C_Sign", e)),
            }
        }
        Err(TokenError::UnsupportedKey(format!(
            "the token refused every signing path (last: {})",
            last_refusal.map(|e| e.to_string()).unwrap_or_default()
        )))
    }

    fn decrypt_checked(
        &self,
        block: &[u8],
    ) -> Result<(Zeroizing<Vec<u8>>, MechanismPath), TokenError> {
        if !self.can_decrypt {
            return Err(TokenError::NotPermitted {
                operation: "decrypt".into(),
                reason: "CKA_DECRYPT is false (not a service key)".into(),
            });
        }
        let k = self.public.size();
        if block.len() != k {
            return Err(TokenError::Refused(format!(
                "an RSA-OAEP block for this key is {k} bytes, got {}",
                block.len()
            )));
        }
        // c >= n can never be a ciphertext; some tokens answer it with CKR_GENERAL_ERROR, so
        // reject it here (n is public: this check reveals nothing).
        if block >= self.modulus.as_slice() {
            return Err(TokenError::DecryptionFailed);
        }
        let paths = self.negotiated().decrypt;
        if paths.is_empty() {
            return Err(TokenError::UnsupportedKey(
                "the token offers neither CKM_RSA_PKCS_OAEP nor CKM_RSA_X_509 decryption".into(),
            ));
        }
        let mut last_refusal = None;
        for path in paths {
            match self.decrypt_with(path, block) {
                Ok(Ok(plain)) => return Ok((plain, path)),
                Ok(Err(e)) => return Err(e),
                Err(e) if is_mechanism_refusal(&e) => {
                    mechanisms::mark_refused(&self.token, path);
                    last_refusal = Some(e);
                }
                // Every failure of the operation itself is the same error: no padding oracle.
                // Tokens differ in how they report a bad block (kryoptic: CKR_DEVICE_ERROR,
                // SoftHSM: CKR_ENCRYPTED_DATA_INVALID or CKR_GENERAL_ERROR).
                Err(CkError::Pkcs11(
                    RvError::EncryptedDataInvalid
                    | RvError::EncryptedDataLenRange
                    | RvError::DataInvalid
                    | RvError::DataLenRange
                    | RvError::DeviceError
                    | RvError::GeneralError
                    | RvError::FunctionFailed,
                    cryptoki::context::Function::Decrypt,
                ))
                | Err(CkError::InvalidValue) => return Err(TokenError::DecryptionFailed),
                Err(e) => return Err(ck_error("C_Decrypt", e)),
            }
        }
        Err(TokenError::UnsupportedKey(format!(
            "the token refused every decryption path (last: {})",
            last_refusal.map(|e| e.to_string()).unwrap_or_default()
        )))
    }
}

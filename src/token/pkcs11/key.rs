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

use super::super::uri::Pkcs11Uri;
use super::super::{
    KeyHandle, KeyInfo, MechanismPath, Provenance, ProvenanceVerdict, Role, TokenDescription,
    TokenError,
};
use super::mechanisms::{self, Negotiated};
use super::module::TokenRef;
use super::{ck_error, session};
use crate::crypto::{rsa_padding, rsa_public};

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

fn read_bool(session: &Session, handle: ObjectHandle, attr: AttributeType) -> Option<bool> {
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
            | Attribute::NeverExtractable(b)
            | Attribute::AlwaysSensitive(b)
            | Attribute::Extractable(b)
            | Attribute::Sensitive(b)
            | Attribute::Sign(b)
            | Attribute::Decrypt(b)
            | Attribute::Private(b)
            | Attribute::Token(b) => Some(b),
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
pub fn verdict(
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
pub fn read_provenance(session: &Session, handle: ObjectHandle) -> Provenance {
    let local = read_bool(session, handle, AttributeType::Local);
    let never_extractable = read_bool(session, handle, AttributeType::NeverExtractable);
    let always_sensitive = read_bool(session, handle, AttributeType::AlwaysSensitive);
    let extractable = read_bool(session, handle, AttributeType::Extractable);
    let sensitive = read_bool(session, handle, AttributeType::Sensitive);
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
    ] {
        evidence.push(match v {
            Some(b) => format!("{name}={}", if b { "TRUE" } else { "FALSE" }),
            None => format!("{name} not reported"),
        });
    }
    Provenance {
        local,
        never_extractable,
        always_sensitive,
        extractable,
        sensitive,
        verdict,
        evidence,
    }
}

/// Finds private RSA keys matching the URI's object attributes on an open session.
pub fn find_private_keys(
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
    pub fn from_handle(
        token: TokenRef,
        session: Session,
        handle: ObjectHandle,
    ) -> Result<Pkcs11Key, TokenError> {
        let label = read_bytes(&session, handle, AttributeType::Label)?
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .unwrap_or_default();
        let id = read_bytes(&session, handle, AttributeType::Id)?.unwrap_or_default();
        let (n, e) = public_components(&session, handle, &id)?;
        let spki_der = rsa_public::spki_from_modulus_exponent(&n, &e)
            .map_err(|e| TokenError::UnsupportedKey(e.to_string()))?;
        let public = rsa_public::parse_spki_der(&spki_der)
            .map_err(|e| TokenError::UnsupportedKey(e.to_string()))?;
        let can_sign = read_bool(&session, handle, AttributeType::Sign).unwrap_or(false);
        let can_decrypt = read_bool(&session, handle, AttributeType::Decrypt).unwrap_or(false);
        let modulus =
            rsa_padding::left_pad(&public.n().to_bytes_be(), public.size()).unwrap_or_default();
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
        })
    }

    /// Opens the single private key the URI designates (logging in as needed).
    pub fn open(uri: &Pkcs11Uri) -> Result<Pkcs11Key, TokenError> {
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
        let session = session::open_logged_in(&token, false, uri.pin_source.as_deref())?;
        let mut found = find_private_keys(&session, uri)?;
        match found.len() {
            0 => Err(TokenError::NoSuchKey(uri.object_selector())),
            1 => Pkcs11Key::from_handle(token, session, found.remove(0)),
            count => Err(TokenError::AmbiguousKey {
                selector: uri.object_selector(),
                count,
            }),
        }
    }

    pub fn token_ref(&self) -> &TokenRef {
        &self.token
    }

    /// Modulus length in bits.
    pub fn bits(&self) -> usize {
        self.public.n().bits()
    }

    /// k: the RSA block size in bytes (spec conventions).
    pub fn block_len(&self) -> usize {
        self.bits() / 8
    }

    /// The key's role, from its usage flags (sign only = authority, decrypt only = service).
    pub fn role(&self) -> Option<Role> {
        match (self.can_sign, self.can_decrypt) {
            (true, false) => Some(Role::Authority),
            (false, true) => Some(Role::Service),
            _ => None,
        }
    }

    /// The mechanism paths negotiated for this key's token and size.
    pub fn negotiated(&self) -> Negotiated {
        mechanisms::negotiate(&self.token, self.bits())
    }

    /// A URI selecting this key again (serial, label, id, module path; no PIN).
    pub fn uri(&self) -> String {
        let mut u = self.token.uri();
        u.object = Some(self.label.clone()).filter(|l| !l.is_empty());
        u.id = Some(self.id.clone()).filter(|i| !i.is_empty());
        u.object_type = Some("private".into());
        u.to_uri_string()
    }

    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sign_with(&self, path: MechanismPath, message: &[u8]) -> Result<Vec<u8>, CkError> {
        let session = self.session();
        let digest: [u8; 32] = Sha256::digest(message).into();
        match path {
            MechanismPath::NativeSha256Pss => session.sign(
                &Mechanism::Sha256RsaPkcsPss(pss_params()),
                self.handle,
                message,
            ),
            MechanismPath::HostDigestPss => {
                session.sign(&Mechanism::RsaPkcsPss(pss_params()), self.handle, &digest)
            }
            MechanismPath::RawRsaHostPss => {
                let em = rsa_padding::pss_sha256_encode_random_salt(&digest, self.bits())
                    .map_err(|_| CkError::InvalidValue)?;
                session.sign(&Mechanism::RsaX509, self.handle, &em)
            }
            _ => Err(CkError::NotSupported),
        }
    }

    /// CKM_RSA_X_509 decryption with a k-byte output buffer and no length query (see
    /// [`super::module::RawFunctions`]); cryptoki's two-call path when the table is unavailable.
    fn raw_rsa_decrypt(
        &self,
        session: &Session,
        block: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CkError> {
        use cryptoki::context::Function;
        use cryptoki::error::Rv;
        let Some(raw) = &self.token.module.raw else {
            return Ok(Zeroizing::new(session.decrypt(
                &Mechanism::RsaX509,
                self.handle,
                block,
            )?));
        };
        let mut mechanism = cryptoki_sys::CK_MECHANISM {
            mechanism: cryptoki_sys::CKM_RSA_X_509,
            pParameter: std::ptr::null_mut(),
            ulParameterLen: 0,
        };
        let mut out = Zeroizing::new(vec![0u8; block.len()]);
        let mut out_len = out.len() as cryptoki_sys::CK_ULONG;
        let mut input = block.to_vec();
        // SAFETY: valid session and object handles of this module; buffers outlive the calls
        // and their lengths are passed alongside.
        unsafe {
            Rv::from((raw.decrypt_init)(
                session.handle(),
                &mut mechanism,
                self.handle.handle(),
            ))
            .into_result(Function::DecryptInit)?;
            Rv::from((raw.decrypt)(
                session.handle(),
                input.as_mut_ptr(),
                input.len() as cryptoki_sys::CK_ULONG,
                out.as_mut_ptr(),
                &mut out_len,
            ))
            .into_result(Function::Decrypt)?;
        }
        out.truncate(out_len as usize);
        Ok(out)
    }

    fn decrypt_with(
        &self,
        path: MechanismPath,
        block: &[u8],
    ) -> Result<Result<Zeroizing<Vec<u8>>, TokenError>, CkError> {
        let session = self.session();
        match path {
            MechanismPath::NativeOaepSha256 => {
                let params = PkcsOaepParams::new(
                    MechanismType::SHA256,
                    PkcsMgfType::MGF1_SHA256,
                    PkcsOaepSource::empty(),
                );
                let out = session.decrypt(&Mechanism::RsaPkcsOaep(params), self.handle, block)?;
                Ok(Ok(Zeroizing::new(out)))
            }
            MechanismPath::RawRsaHostOaep => {
                let raw = self.raw_rsa_decrypt(&session, block)?;
                Ok(rsa_padding::oaep_sha256_decode_raw(&raw, block.len())
                    .map_err(|_| TokenError::DecryptionFailed))
            }
            _ => Err(CkError::NotSupported),
        }
    }
}

impl KeyHandle for Pkcs11Key {
    fn public_key_spki(&self) -> &[u8] {
        &self.spki_der
    }

    fn sign_pss_sha256(&self, message: &[u8]) -> Result<(Vec<u8>, MechanismPath), TokenError> {
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
                Ok(sig) => {
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

    fn decrypt_oaep_sha256(
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

    fn provenance(&self) -> Result<Provenance, TokenError> {
        Ok(read_provenance(&self.session(), self.handle))
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
            fingerprint: rsa_public::spki_fingerprint(&self.spki_der),
            can_sign: self.can_sign,
            can_decrypt: self.can_decrypt,
            provenance: self.provenance()?,
        })
    }
}

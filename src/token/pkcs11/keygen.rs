//! RSA key pair generation and import on a PKCS#11 token. Private keys are created sensitive,
//! non-extractable, non-modifiable, non-copyable private token objects without
//! `CKA_SIGN_RECOVER`; role `authority` gets CKA_SIGN only, role `service` CKA_DECRYPT only, and
//! `CKA_ALLOWED_MECHANISMS` holds the one mechanism the role's path on this token needs. Every
//! security attribute is read back after creation; a key the token did not make as asked is
//! deleted (docs/keys-and-tokens.md, "Templates per role").

use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use zeroize::Zeroize;

use super::super::interaction::{Interaction, SharedInteraction};
use super::super::uri::Pkcs11Uri;
use super::super::{KeySpec, Role, TokenError};
use super::key::{find_private_keys, read_allowed_mechanisms, read_bool, Pkcs11Key};
use super::mechanisms;
use super::module::{select_token, TokenRef};
use super::{ck_error, session};

const RSA_F4: [u8; 3] = [0x01, 0x00, 0x01];

fn open_for_writing(
    token_uri: &Pkcs11Uri,
    interaction: &dyn Interaction,
) -> Result<(TokenRef, Session), TokenError> {
    if token_uri.names_object() {
        return Err(TokenError::BadUri {
            uri: token_uri.to_uri_string(),
            reason: "give the token URI (token=/serial=), the key label goes in --label".into(),
        });
    }
    let token = select_token(token_uri)?;
    let session =
        session::open_logged_in(&token, true, token_uri.pin_source.as_deref(), interaction)?;
    Ok((token, session))
}

fn refuse_existing_label(session: &Session, label: &str) -> Result<(), TokenError> {
    let existing = find_private_keys(
        session,
        &Pkcs11Uri {
            object: Some(label.to_string()),
            ..Default::default()
        },
    )?;
    if !existing.is_empty() {
        return Err(TokenError::Refused(format!(
            "a private key labelled `{label}` already exists on this token; choose another label"
        )));
    }
    Ok(())
}

fn random_id(session: &Session) -> Result<Vec<u8>, TokenError> {
    // 16 random bytes from the token's RNG, or the host's if the token has none.
    match session.generate_random_vec(16) {
        Ok(v) => Ok(v),
        Err(_) => {
            let mut v = vec![0u8; 16];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut v);
            Ok(v)
        }
    }
}

fn usage(role: Role) -> (bool, bool) {
    match role {
        Role::Authority => (true, false),
        Role::Service => (false, true),
    }
}

/// The security attributes of a new private key for `spec.role` on `token`: what the template
/// asks and what is checked after creation.
struct Hardening {
    sign: bool,
    decrypt: bool,
    /// The mechanism of the path this token takes for the role (first negotiated path).
    allowed: Vec<MechanismType>,
    always_authenticate: bool,
    /// Attributes the token's profile declares unenforceable (left out, not checked).
    unenforced: Vec<String>,
}

impl Hardening {
    fn for_role(token: &TokenRef, spec: &KeySpec, bits: usize) -> Result<Hardening, TokenError> {
        let (sign, decrypt) = usage(spec.role);
        let negotiated = mechanisms::negotiate(token, bits);
        let paths = if sign {
            &negotiated.sign
        } else {
            &negotiated.decrypt
        };
        let path = paths.first().ok_or_else(|| {
            TokenError::UnsupportedKey(format!(
                "the token offers no mechanism path for a {bits}-bit {} key (see `token info`)",
                spec.role
            ))
        })?;
        let unenforced = token
            .module
            .profile
            .as_ref()
            .map(|p| p.unenforced_key_attributes.clone())
            .unwrap_or_default();
        Ok(Hardening {
            sign,
            decrypt,
            allowed: vec![mechanisms::required_mechanism(*path).0],
            always_authenticate: spec.always_authenticate,
            unenforced,
        })
    }

    fn enforced(&self, name: &str) -> bool {
        !self.unenforced.iter().any(|u| u == name)
    }

    /// The security part of the private key template.
    fn private_attributes(&self) -> Vec<Attribute> {
        let mut t = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(self.sign),
            Attribute::Decrypt(self.decrypt),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
        ];
        for (name, attr) in [
            ("CKA_MODIFIABLE", Attribute::Modifiable(false)),
            ("CKA_COPYABLE", Attribute::Copyable(false)),
            ("CKA_SIGN_RECOVER", Attribute::SignRecover(false)),
            (
                "CKA_ALLOWED_MECHANISMS",
                Attribute::AllowedMechanisms(self.allowed.clone()),
            ),
        ] {
            if self.enforced(name) {
                t.push(attr);
            }
        }
        if self.always_authenticate {
            t.push(Attribute::AlwaysAuthenticate(true));
        }
        t
    }

    /// Reads every security attribute of the new key back; the differences, in words.
    fn not_honoured(&self, session: &Session, key: ObjectHandle) -> Vec<String> {
        let mut wrong = Vec::new();
        let mut expect = |name: &str, attr: AttributeType, want: bool| {
            if !self.enforced(name) {
                return;
            }
            match read_bool(session, key, attr) {
                Some(got) if got == want => {}
                Some(got) => wrong.push(format!(
                    "{name}={} (asked {})",
                    bool_name(got),
                    bool_name(want)
                )),
                None => wrong.push(format!("{name} not reported (asked {})", bool_name(want))),
            }
        };
        expect("CKA_TOKEN", AttributeType::Token, true);
        expect("CKA_PRIVATE", AttributeType::Private, true);
        expect("CKA_SENSITIVE", AttributeType::Sensitive, true);
        expect("CKA_EXTRACTABLE", AttributeType::Extractable, false);
        expect("CKA_MODIFIABLE", AttributeType::Modifiable, false);
        expect("CKA_COPYABLE", AttributeType::Copyable, false);
        expect("CKA_SIGN_RECOVER", AttributeType::SignRecover, false);
        expect("CKA_SIGN", AttributeType::Sign, self.sign);
        expect("CKA_DECRYPT", AttributeType::Decrypt, self.decrypt);
        expect("CKA_UNWRAP", AttributeType::Unwrap, false);
        expect("CKA_DERIVE", AttributeType::Derive, false);
        if self.always_authenticate {
            expect(
                "CKA_ALWAYS_AUTHENTICATE",
                AttributeType::AlwaysAuthenticate,
                true,
            );
        }
        if self.enforced("CKA_ALLOWED_MECHANISMS") {
            match read_allowed_mechanisms(session, key) {
                Some(got)
                    if got.len() == self.allowed.len()
                        && got.iter().all(|m| self.allowed.contains(m)) => {}
                got => wrong.push(format!(
                    "CKA_ALLOWED_MECHANISMS={} (asked {})",
                    got.map(|g| names(&g))
                        .unwrap_or_else(|| "not reported".into()),
                    names(&self.allowed)
                )),
            }
        }
        wrong
    }
}

fn bool_name(b: bool) -> &'static str {
    if b {
        "TRUE"
    } else {
        "FALSE"
    }
}

fn names(m: &[MechanismType]) -> String {
    m.iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// After creation: refuses (deleting the new private and public objects) a key whose
/// security attributes are not the ones asked for.
fn check_honoured(
    session: &Session,
    hardening: &Hardening,
    private: ObjectHandle,
    public: Option<ObjectHandle>,
) -> Result<(), TokenError> {
    let wrong = hardening.not_honoured(session, private);
    if wrong.is_empty() {
        return Ok(());
    }
    let deleted = session.destroy_object(private);
    if let Some(public) = public {
        let _ = session.destroy_object(public);
    }
    Err(TokenError::Refused(format!(
        "the token did not create the key as asked: {}; {}",
        wrong.join("; "),
        match deleted {
            Ok(()) => "the new key was deleted".to_string(),
            Err(e) => format!(
                "deleting the new key FAILED ({e}): delete it by hand before using this token"
            ),
        }
    )))
}

/// A template refusal names the attributes the profile may need to declare.
fn creation_error(operation: &str, err: cryptoki::error::Error) -> TokenError {
    use cryptoki::error::{Error as CkError, RvError};
    match err {
        CkError::Pkcs11(
            rv @ (RvError::AttributeTypeInvalid
            | RvError::AttributeValueInvalid
            | RvError::TemplateInconsistent),
            _,
        ) => TokenError::Refused(format!(
            "{operation}: the token refused the key template ({rv:?}): it may not support \
             CKA_MODIFIABLE=FALSE, CKA_COPYABLE=FALSE, CKA_SIGN_RECOVER=FALSE or \
             CKA_ALLOWED_MECHANISMS; a product that cannot must declare it in its HSM profile \
             (`unenforced_key_attributes`, with a quirk saying why)"
        )),
        other => ck_error(operation, other),
    }
}

/// Generates an RSA key pair for `spec.role` on the token `token_uri` designates.
pub(crate) fn generate(
    token_uri: &Pkcs11Uri,
    spec: &KeySpec,
    interaction: SharedInteraction,
) -> Result<Pkcs11Key, TokenError> {
    super::super::check_key_size(spec.bits, spec.allow_insecure_test_size)?;
    let (token, session) = open_for_writing(token_uri, interaction.as_ref())?;
    refuse_existing_label(&session, &spec.label)?;
    let id = random_id(&session)?;
    let hardening = Hardening::for_role(&token, spec, spec.bits)?;
    let (sign, decrypt) = (hardening.sign, hardening.decrypt);
    let public_template = vec![
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::ModulusBits((spec.bits as u64).into()),
        Attribute::PublicExponent(RSA_F4.to_vec()),
        Attribute::Verify(sign),
        Attribute::Encrypt(decrypt),
        Attribute::Wrap(false),
        Attribute::Id(id.clone()),
        Attribute::Label(spec.label.as_bytes().to_vec()),
    ];
    let mut private_template = hardening.private_attributes();
    private_template.push(Attribute::Id(id));
    private_template.push(Attribute::Label(spec.label.as_bytes().to_vec()));
    let (public, private) = session
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &public_template,
            &private_template,
        )
        .map_err(|e| creation_error("C_GenerateKeyPair", e))?;
    check_honoured(&session, &hardening, private, Some(public))?;
    Ok(
        Pkcs11Key::from_handle(token, session, private)?.with_pin_source(
            token_uri.pin_source.as_deref(),
            None,
            interaction,
        ),
    )
}

/// Imports a host RSA private key as a sensitive, non-extractable token key (and its public
/// key). The key's CRT components are zeroized in every copy this function makes.
pub fn import(
    token_uri: &Pkcs11Uri,
    key: &rsa::RsaPrivateKey,
    spec: &KeySpec,
    interaction: SharedInteraction,
) -> Result<Pkcs11Key, TokenError> {
    super::super::check_key_size(key.n().bits(), spec.allow_insecure_test_size)?;
    if key.primes().len() != 2 {
        return Err(TokenError::UnsupportedKey(
            "multi-prime RSA keys are not supported (Parsec uses two-prime keys)".into(),
        ));
    }
    if key.e().to_bytes_be() != RSA_F4 {
        return Err(TokenError::UnsupportedKey(
            "public exponent is not 65537".into(),
        ));
    }
    let (token, session) = open_for_writing(token_uri, interaction.as_ref())?;
    refuse_existing_label(&session, &spec.label)?;
    let id = random_id(&session)?;
    let hardening = Hardening::for_role(&token, spec, key.n().bits())?;
    let (sign, decrypt) = (hardening.sign, hardening.decrypt);
    let mut precomputed = key.clone();
    precomputed
        .precompute()
        .map_err(|e| TokenError::UnsupportedKey(format!("invalid RSA key: {e}")))?;
    let dp = precomputed
        .dp()
        .map(|v| v.to_bytes_be())
        .unwrap_or_default();
    let dq = precomputed
        .dq()
        .map(|v| v.to_bytes_be())
        .unwrap_or_default();
    let qinv = precomputed
        .crt_coefficient()
        .map(|v| v.to_bytes_be())
        .unwrap_or_default();
    drop(precomputed);
    let mut private_template = vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(KeyType::RSA),
    ];
    private_template.extend(hardening.private_attributes());
    private_template.extend([
        Attribute::Id(id.clone()),
        Attribute::Label(spec.label.as_bytes().to_vec()),
        Attribute::Modulus(key.n().to_bytes_be()),
        Attribute::PublicExponent(key.e().to_bytes_be()),
        Attribute::PrivateExponent(key.d().to_bytes_be()),
        Attribute::Prime1(key.primes()[0].to_bytes_be()),
        Attribute::Prime2(key.primes()[1].to_bytes_be()),
        Attribute::Exponent1(dp),
        Attribute::Exponent2(dq),
        Attribute::Coefficient(qinv),
    ]);
    let created = session.create_object(&private_template);
    for attr in private_template.iter_mut() {
        if let Attribute::PrivateExponent(v)
        | Attribute::Prime1(v)
        | Attribute::Prime2(v)
        | Attribute::Exponent1(v)
        | Attribute::Exponent2(v)
        | Attribute::Coefficient(v) = attr
        {
            v.zeroize();
        }
    }
    let private = created.map_err(|e| creation_error("C_CreateObject (private key)", e))?;
    check_honoured(&session, &hardening, private, None)?;
    let public_template = vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::RSA),
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(sign),
        Attribute::Encrypt(decrypt),
        Attribute::Wrap(false),
        Attribute::Id(id),
        Attribute::Label(spec.label.as_bytes().to_vec()),
        Attribute::Modulus(key.n().to_bytes_be()),
        Attribute::PublicExponent(key.e().to_bytes_be()),
    ];
    // Not fatal: the private object carries the modulus and exponent, which is all the public
    // key needs; some tokens refuse public objects with these usage flags.
    let _ = session.create_object(&public_template);
    Ok(
        Pkcs11Key::from_handle(token, session, private)?.with_pin_source(
            token_uri.pin_source.as_deref(),
            None,
            interaction,
        ),
    )
}

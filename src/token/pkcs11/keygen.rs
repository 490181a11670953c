//! RSA key pair generation and import on a PKCS#11 token. Private keys are created sensitive,
//! non-extractable, private token objects; role `authority` gets CKA_SIGN only, role `service`
//! CKA_DECRYPT only (which also covers the CKM_RSA_X_509 fallback).

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass};
use cryptoki::session::Session;
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use zeroize::Zeroize;

use super::super::uri::Pkcs11Uri;
use super::super::{KeySpec, Role, TokenError};
use super::key::{find_private_keys, Pkcs11Key};
use super::module::{select_token, TokenRef};
use super::{ck_error, session};

const RSA_F4: [u8; 3] = [0x01, 0x00, 0x01];

fn open_for_writing(token_uri: &Pkcs11Uri) -> Result<(TokenRef, Session), TokenError> {
    if token_uri.names_object() {
        return Err(TokenError::BadUri {
            uri: token_uri.to_uri_string(),
            reason: "give the token URI (token=/serial=), the key label goes in --label".into(),
        });
    }
    let token = select_token(token_uri)?;
    let session = session::open_logged_in(&token, true, token_uri.pin_source.as_deref())?;
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

/// Generates an RSA key pair for `spec.role` on the token `token_uri` designates.
pub fn generate(token_uri: &Pkcs11Uri, spec: &KeySpec) -> Result<Pkcs11Key, TokenError> {
    super::super::check_key_size(spec.bits, spec.allow_insecure_test_size)?;
    let (token, session) = open_for_writing(token_uri)?;
    refuse_existing_label(&session, &spec.label)?;
    let id = random_id(&session)?;
    let (sign, decrypt) = usage(spec.role);
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
    let private_template = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(sign),
        Attribute::Decrypt(decrypt),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::Id(id),
        Attribute::Label(spec.label.as_bytes().to_vec()),
    ];
    let (_public, private) = session
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &public_template,
            &private_template,
        )
        .map_err(|e| ck_error("C_GenerateKeyPair", e))?;
    Ok(Pkcs11Key::from_handle(token, session, private)?
        .with_pin_source(token_uri.pin_source.as_deref(), None))
}

/// Imports a host RSA private key as a sensitive, non-extractable token key (and its public
/// key). The key's CRT components are zeroized in every copy this function makes.
pub fn import(
    token_uri: &Pkcs11Uri,
    key: &rsa::RsaPrivateKey,
    spec: &KeySpec,
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
    let (token, session) = open_for_writing(token_uri)?;
    refuse_existing_label(&session, &spec.label)?;
    let id = random_id(&session)?;
    let (sign, decrypt) = usage(spec.role);
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
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(sign),
        Attribute::Decrypt(decrypt),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
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
    ];
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
    let private = created.map_err(|e| ck_error("C_CreateObject (private key)", e))?;
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
    Ok(Pkcs11Key::from_handle(token, session, private)?
        .with_pin_source(token_uri.pin_source.as_deref(), None))
}

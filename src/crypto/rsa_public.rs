//! RSA public keys as Parsec stores them: DER SubjectPublicKeyInfo, rsaEncryption + NULL
//! (spec §1.5), its PEM form and its SHA-256 fingerprint. Certificate, export and token code
//! compare keys by these bytes.

use rsa::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPublicKey};

/// Largest modulus accepted anywhere (spec §1.5: RustCrypto refuses more than 4096 bits).
pub const MAX_MODULUS_BITS: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RsaPublicError {
    #[error("invalid RSA public key: {0}")]
    Invalid(String),
    #[error("not a SubjectPublicKeyInfo with rsaEncryption: {0}")]
    NotSpki(String),
}

/// Builds the DER SPKI (rsaEncryption + NULL) from big-endian modulus and public exponent bytes
/// (e.g. `CKA_MODULUS`, `CKA_PUBLIC_EXPONENT`). Accepts up to 16384-bit moduli so that a caller
/// can still describe (and then refuse) an oversized key.
pub fn spki_from_modulus_exponent(
    modulus: &[u8],
    exponent: &[u8],
) -> Result<Vec<u8>, RsaPublicError> {
    let key = RsaPublicKey::new_with_max_size(
        BigUint::from_bytes_be(modulus),
        BigUint::from_bytes_be(exponent),
        16384,
    )
    .map_err(|e| RsaPublicError::Invalid(e.to_string()))?;
    spki_der(&key)
}

/// DER SPKI of an `rsa` crate public key.
pub fn spki_der(key: &RsaPublicKey) -> Result<Vec<u8>, RsaPublicError> {
    Ok(key
        .to_public_key_der()
        .map_err(|e| RsaPublicError::Invalid(e.to_string()))?
        .into_vec())
}

/// Parses a DER SPKI; only rsaEncryption is accepted (the `rsa` crate checks the OID).
pub fn parse_spki_der(der: &[u8]) -> Result<RsaPublicKey, RsaPublicError> {
    // `from_public_key_der` caps at 4096 bits; decode by hand to also describe larger keys.
    let spki = spki::SubjectPublicKeyInfoRef::try_from(der)
        .map_err(|e| RsaPublicError::NotSpki(e.to_string()))?;
    if spki.algorithm.oid != pkcs1::ALGORITHM_OID {
        return Err(RsaPublicError::NotSpki(format!(
            "algorithm {} is not rsaEncryption",
            spki.algorithm.oid
        )));
    }
    let pk = pkcs1::RsaPublicKey::try_from(spki.subject_public_key.raw_bytes())
        .map_err(|e| RsaPublicError::NotSpki(e.to_string()))?;
    RsaPublicKey::new_with_max_size(
        BigUint::from_bytes_be(pk.modulus.as_bytes()),
        BigUint::from_bytes_be(pk.public_exponent.as_bytes()),
        16384,
    )
    .map_err(|e| RsaPublicError::Invalid(e.to_string()))
}

/// Parses a `BEGIN PUBLIC KEY` PEM.
pub fn parse_spki_pem(pem: &str) -> Result<RsaPublicKey, RsaPublicError> {
    match RsaPublicKey::from_public_key_pem(pem) {
        Ok(key) => Ok(key),
        Err(_) => {
            let doc = pem::parse(pem).map_err(|e| RsaPublicError::NotSpki(e.to_string()))?;
            if doc.tag() != "PUBLIC KEY" {
                return Err(RsaPublicError::NotSpki(format!(
                    "PEM label `{}` (expected `PUBLIC KEY`)",
                    doc.tag()
                )));
            }
            parse_spki_der(doc.contents())
        }
    }
}

/// PEM (`BEGIN PUBLIC KEY`, 64-column base64, LF) of a DER SPKI, as Parsec writes it.
pub fn spki_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("PUBLIC KEY", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// SHA-256 of the DER SPKI, lowercase hex: the fingerprint shown everywhere.
pub fn spki_fingerprint(der: &[u8]) -> String {
    crate::crypto::sha256_hex(der)
}

/// Modulus length in bits of a DER SPKI.
pub fn spki_modulus_bits(der: &[u8]) -> Result<usize, RsaPublicError> {
    Ok(parse_spki_der(der)?.n().bits())
}

/// Parsec's RSA block size k of a DER SPKI: `floor(modulus_bits / 8)` (spec conventions, §1.6).
pub fn spki_block_len(der: &[u8]) -> Result<usize, RsaPublicError> {
    Ok(spki_modulus_bits(der)? / 8)
}

/// PEM through the `rsa` crate (used by tests to check both encoders agree).
pub fn spki_pem_via_rsa(key: &RsaPublicKey) -> Result<String, RsaPublicError> {
    key.to_public_key_pem(LineEnding::LF)
        .map_err(|e| RsaPublicError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spki_round_trips_with_fixture_public_key() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/fixtures/parsec/sequester_authority.public.pem"
        );
        let text = std::fs::read_to_string(path).expect("../shared fixtures beside the repository");
        let key = parse_spki_pem(&text).unwrap();
        let der =
            spki_from_modulus_exponent(&key.n().to_bytes_be(), &key.e().to_bytes_be()).unwrap();
        assert_eq!(spki_pem(&der), text, "byte-identical to Parsec's PEM");
        assert_eq!(spki_pem_via_rsa(&key).unwrap(), text);
        assert_eq!(spki_modulus_bits(&der).unwrap(), 1024);
        assert_eq!(spki_block_len(&der).unwrap(), 128);
        assert_eq!(spki_fingerprint(&der).len(), 64);
    }

    #[test]
    fn rejects_pkcs1_public_key_pem() {
        let err =
            parse_spki_pem("-----BEGIN RSA PUBLIC KEY-----\nMAA=\n-----END RSA PUBLIC KEY-----\n");
        assert!(err.is_err());
    }
}

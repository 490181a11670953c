//! Sequester RSA public keys as Parsec stores them: DER SubjectPublicKeyInfo with
//! `rsaEncryption` + NULL parameters (docs/formats.md §1.5).
//!
//! [`RsaPublicKeyDer::from_der`] accepts exactly what every Parsec component accepts (structure,
//! algorithm, modulus a multiple of 8 bits and at most 4096 bits, RustCrypto's exponent bounds).
//! [`RsaPublicKeyDer::check_signing_policy`] adds what this tool demands before it signs
//! (docs/formats.md §4.2 step 1, §4.6): a minimum size and an odd exponent >= 3.
//!
//! The one home of RSA public keys in the crate: the token layer builds and reads a token key's
//! SPKI with `spki_der_from_components` and [`parse_spki_der_lenient`] (which also describe a
//! key Parsec would refuse, so that it can be named and then refused), and everything shows keys
//! with [`spki_pem`] and `spki_fingerprint`.

use rsa::traits::PublicKeyParts;
use rsa::BigUint;
use spki::der::{self, Decode};

use super::FormatError;

/// `rsaEncryption`, the only algorithm Parsec accepts for sequester keys.
pub(crate) const RSA_ENCRYPTION_OID: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// `id-RSASSA-PSS`: refused with a specific message (RustCrypto rejects it).
const RSASSA_PSS_OID: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");

/// Largest modulus every Parsec component accepts (RustCrypto's limit, docs/formats.md §1.5).
pub(crate) const MAX_BITS: usize = super::limits::MAX_RSA_MODULUS_BITS;
/// Smallest key this tool signs for or with, unless a test explicitly lowers it.
pub const MIN_SIGNING_BITS: usize = 2048;

/// A validated RSA public key in Parsec's SPKI form.
#[derive(Clone, PartialEq, Eq)]
pub struct RsaPublicKeyDer {
    der: Vec<u8>,
    n: BigUint,
    e: BigUint,
    bits: usize,
}

impl std::fmt::Debug for RsaPublicKeyDer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RsaPublicKeyDer({} bits, sha256 {})",
            self.bits,
            self.fingerprint()
        )
    }
}

fn key_err(reason: impl Into<String>) -> FormatError {
    FormatError::PublicKey(reason.into())
}

impl RsaPublicKeyDer {
    /// Parses and validates a DER SPKI the way Parsec's stricter backend (RustCrypto) does.
    pub fn from_der(der: &[u8]) -> Result<Self, FormatError> {
        let spki = spki::SubjectPublicKeyInfoRef::from_der(der)
            .map_err(|e| key_err(format!("not a DER SubjectPublicKeyInfo ({e})")))?;
        let oid = spki.algorithm.oid;
        if oid == RSASSA_PSS_OID {
            return Err(key_err(
                "algorithm is id-RSASSA-PSS (1.2.840.113549.1.1.10); Parsec requires rsaEncryption",
            ));
        }
        if oid != RSA_ENCRYPTION_OID {
            return Err(key_err(format!(
                "algorithm {oid} is not rsaEncryption (1.2.840.113549.1.1.1)"
            )));
        }
        match spki.algorithm.parameters {
            Some(p) if p.is_null() => {}
            Some(_) => return Err(key_err("rsaEncryption parameters are not NULL")),
            None => {
                return Err(key_err(
                    "rsaEncryption parameters are absent (must be NULL)",
                ))
            }
        }
        let key_bytes = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| key_err("public key BIT STRING has unused bits"))?;
        let pkcs1 = pkcs1::RsaPublicKey::from_der(key_bytes)
            .map_err(|e| key_err(format!("not a PKCS#1 RSAPublicKey ({e})")))?;
        let n = BigUint::from_bytes_be(pkcs1.modulus.as_bytes());
        let e = BigUint::from_bytes_be(pkcs1.public_exponent.as_bytes());
        let bits = n.bits();
        if bits == 0 {
            return Err(key_err("modulus is zero"));
        }
        if bits % 8 != 0 {
            return Err(key_err(format!(
                "modulus is {bits} bits, not a multiple of 8 (Parsec mis-splits such signatures)"
            )));
        }
        if bits > MAX_BITS {
            return Err(key_err(format!(
                "modulus is {bits} bits; Parsec clients refuse keys over {MAX_BITS} bits"
            )));
        }
        let e_max = (BigUint::from(1u64) << 33usize) - BigUint::from(1u64);
        if e < BigUint::from(2u64) || e > e_max {
            return Err(key_err(format!(
                "public exponent {e} is outside 2 ..= 2^33-1 (Parsec clients refuse it)"
            )));
        }
        Ok(Self {
            der: der.to_vec(),
            n,
            e,
            bits,
        })
    }

    /// Reads a `BEGIN PUBLIC KEY` PEM (any standard PEM layout).
    pub fn from_pem(text: &str) -> Result<Self, FormatError> {
        let block = pem::parse(text.trim_start_matches('\u{feff}'))
            .map_err(|e| key_err(format!("not a PEM file ({e})")))?;
        match block.tag() {
            "PUBLIC KEY" => Self::from_der(block.contents()),
            "RSA PUBLIC KEY" => Err(key_err(
                "this is a PKCS#1 `BEGIN RSA PUBLIC KEY` file; Parsec needs SubjectPublicKeyInfo \
                 (`BEGIN PUBLIC KEY`, e.g. `openssl rsa -RSAPublicKey_in -pubout`)",
            )),
            tag if tag.contains("PRIVATE KEY") => Err(key_err(format!(
                "this is a private key (`BEGIN {tag}`); give the public key only"
            ))),
            tag => Err(key_err(format!(
                "PEM block is `BEGIN {tag}`, expected `BEGIN PUBLIC KEY`"
            ))),
        }
    }

    /// Builds the SPKI from a modulus and exponent (big-endian), as read from a token.
    pub(crate) fn from_components(modulus: &[u8], exponent: &[u8]) -> Result<Self, FormatError> {
        let n = BigUint::from_bytes_be(modulus);
        let e = BigUint::from_bytes_be(exponent);
        let key = rsa::RsaPublicKey::new_unchecked(n, e);
        let doc = rsa::pkcs8::EncodePublicKey::to_public_key_der(&key)
            .map_err(|e| key_err(format!("cannot encode SPKI ({e})")))?;
        Self::from_der(doc.as_bytes())
    }

    /// `-----BEGIN PUBLIC KEY-----` PEM, 64 columns, LF (as Parsec writes it).
    pub(crate) fn to_pem(&self) -> String {
        spki_pem(&self.der)
    }

    pub(crate) fn der(&self) -> &[u8] {
        &self.der
    }

    pub fn bits(&self) -> usize {
        self.bits
    }

    /// Armor block size k = floor(bits / 8) (docs/formats.md §1.5).
    pub(crate) fn k(&self) -> usize {
        self.bits / 8
    }

    pub(crate) fn modulus(&self) -> &BigUint {
        &self.n
    }

    pub(crate) fn exponent(&self) -> &BigUint {
        &self.e
    }

    /// SHA-256 of the SPKI DER, lowercase hex: the key fingerprint shown everywhere.
    pub fn fingerprint(&self) -> String {
        spki_fingerprint(&self.der)
    }

    /// What this tool requires of a key it signs with or for (docs/formats.md §4.2 step 1): at
    /// least `min_bits` and an odd exponent >= 3. [`from_der`](Self::from_der) already enforced the
    /// rest.
    pub fn check_signing_policy(&self, min_bits: usize) -> Result<(), FormatError> {
        if self.bits < min_bits {
            return Err(key_err(format!(
                "key is {} bits; at least {min_bits} bits are required",
                self.bits
            )));
        }
        if self.e < BigUint::from(3u64) || (&self.e % BigUint::from(2u8)) == BigUint::from(0u8) {
            return Err(key_err(format!(
                "public exponent {} must be odd and >= 3 (65537 recommended)",
                self.e
            )));
        }
        Ok(())
    }
}

impl TryFrom<&rsa::RsaPublicKey> for RsaPublicKeyDer {
    type Error = FormatError;
    fn try_from(key: &rsa::RsaPublicKey) -> Result<Self, FormatError> {
        Self::from_components(&key.n().to_bytes_be(), &key.e().to_bytes_be())
    }
}

/// Largest modulus [`parse_spki_der_lenient`] and [`spki_der_from_components`] describe.
const LENIENT_MAX_BITS: usize = 16384;

/// PEM (`BEGIN PUBLIC KEY`, 64-column base64, LF) of a DER SPKI, as Parsec writes it.
pub fn spki_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("PUBLIC KEY", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// SHA-256 of a DER SPKI, lowercase hex: the key fingerprint shown everywhere.
pub(crate) fn spki_fingerprint(der: &[u8]) -> String {
    crate::crypto::sha256_hex(der)
}

/// The DER SPKI (rsaEncryption + NULL) of a big-endian modulus and public exponent, as a
/// token reports them (`CKA_MODULUS`, `CKA_PUBLIC_EXPONENT`). Up to 16384-bit moduli, so that a
/// caller can still describe (and then refuse) an oversized key; [`RsaPublicKeyDer::from_der`]
/// decides whether Parsec accepts it.
pub(crate) fn spki_der_from_components(
    modulus: &[u8],
    exponent: &[u8],
) -> Result<Vec<u8>, FormatError> {
    let key = rsa::RsaPublicKey::new_with_max_size(
        BigUint::from_bytes_be(modulus),
        BigUint::from_bytes_be(exponent),
        LENIENT_MAX_BITS,
    )
    .map_err(|e| key_err(e.to_string()))?;
    Ok(rsa::pkcs8::EncodePublicKey::to_public_key_der(&key)
        .map_err(|e| key_err(e.to_string()))?
        .into_vec())
}

/// Reads any rsaEncryption SPKI of up to 16384 bits into the `rsa` crate's type, without
/// Parsec's checks (size, NULL parameters, exponent bounds): for keys read from a token, which
/// are described first and judged by their users. Use [`RsaPublicKeyDer::from_der`] for keys
/// from files, certificates and exports.
pub fn parse_spki_der_lenient(der: &[u8]) -> Result<rsa::RsaPublicKey, FormatError> {
    let not_spki = |e: String| {
        key_err(format!(
            "not a SubjectPublicKeyInfo with rsaEncryption: {e}"
        ))
    };
    let spki = spki::SubjectPublicKeyInfoRef::try_from(der).map_err(|e| not_spki(e.to_string()))?;
    if spki.algorithm.oid != RSA_ENCRYPTION_OID {
        return Err(not_spki(format!(
            "algorithm {} is not rsaEncryption",
            spki.algorithm.oid
        )));
    }
    let pk = pkcs1::RsaPublicKey::try_from(spki.subject_public_key.raw_bytes())
        .map_err(|e| not_spki(e.to_string()))?;
    rsa::RsaPublicKey::new_with_max_size(
        BigUint::from_bytes_be(pk.modulus.as_bytes()),
        BigUint::from_bytes_be(pk.public_exponent.as_bytes()),
        LENIENT_MAX_BITS,
    )
    .map_err(|e| key_err(e.to_string()))
}

/// Encodes a DER value, for tests building odd SPKIs.
#[cfg(test)]
fn encode_spki(oid: &str, params_null: bool, pkcs1_der: &[u8]) -> Vec<u8> {
    use spki::der::Encode;
    let algorithm = spki::AlgorithmIdentifier {
        oid: der::asn1::ObjectIdentifier::new_unwrap(oid),
        parameters: params_null.then_some(der::asn1::AnyRef::NULL),
    };
    let info = spki::SubjectPublicKeyInfo {
        algorithm,
        subject_public_key: der::asn1::BitStringRef::from_bytes(pkcs1_der).unwrap(),
    };
    info.to_der().unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use spki::der::Encode;

    fn fixture(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/fixtures/parsec")
            .join(name);
        std::fs::read_to_string(path).unwrap()
    }

    fn pkcs1(n: &BigUint, e: u64) -> Vec<u8> {
        let n = n.to_bytes_be();
        let e = BigUint::from(e).to_bytes_be();
        pkcs1::RsaPublicKey {
            modulus: pkcs1::UintRef::new(&n).unwrap(),
            public_exponent: pkcs1::UintRef::new(&e).unwrap(),
        }
        .to_der()
        .unwrap()
    }

    #[test]
    fn fixture_authority_key_parses_and_round_trips() {
        let text = fixture("sequester_authority.public.pem");
        let key = RsaPublicKeyDer::from_pem(&text).unwrap();
        assert_eq!(key.bits(), 1024);
        assert_eq!(key.k(), 128);
        assert_eq!(key.exponent(), &BigUint::from(65537u32));
        assert_eq!(key.to_pem(), text);
        let rebuilt = RsaPublicKeyDer::from_components(
            &key.modulus().to_bytes_be(),
            &key.exponent().to_bytes_be(),
        )
        .unwrap();
        assert_eq!(rebuilt.der(), key.der());
        // 1024 bits is fine to read but below the signing policy.
        assert!(key.check_signing_policy(1024).is_ok());
        let err = key.check_signing_policy(MIN_SIGNING_BITS).unwrap_err();
        assert!(err.to_string().contains("1024 bits"), "{err}");
    }

    #[test]
    fn pem_and_components_round_trip_byte_identical_to_parsec() {
        use rsa::pkcs8::EncodePublicKey;
        let text = fixture("sequester_authority.public.pem");
        let key = RsaPublicKeyDer::from_pem(&text).unwrap();
        let der =
            spki_der_from_components(&key.modulus().to_bytes_be(), &key.exponent().to_bytes_be())
                .unwrap();
        assert_eq!(der, key.der());
        assert_eq!(spki_pem(&der), text, "byte-identical to Parsec's PEM");
        let via_rsa = parse_spki_der_lenient(&der)
            .unwrap()
            .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap();
        assert_eq!(via_rsa, text, "the rsa crate's encoder agrees");
        assert_eq!(spki_fingerprint(&der), key.fingerprint());
        assert_eq!(spki_fingerprint(&der).len(), 64);
    }

    #[test]
    fn refuses_what_parsec_refuses() {
        let good = RsaPublicKeyDer::from_pem(&fixture("sequester_authority.public.pem")).unwrap();
        let n = good.modulus().clone();
        // PSS OID
        let der = encode_spki("1.2.840.113549.1.1.10", true, &pkcs1(&n, 65537));
        let err = RsaPublicKeyDer::from_der(&der).unwrap_err().to_string();
        assert!(err.contains("RSASSA-PSS"), "{err}");
        // absent parameters
        let der = encode_spki("1.2.840.113549.1.1.1", false, &pkcs1(&n, 65537));
        assert!(RsaPublicKeyDer::from_der(&der)
            .unwrap_err()
            .to_string()
            .contains("absent"));
        // exponent too large
        let der = encode_spki("1.2.840.113549.1.1.1", true, &pkcs1(&n, 1u64 << 33));
        assert!(RsaPublicKeyDer::from_der(&der)
            .unwrap_err()
            .to_string()
            .contains("exponent"));
        // even exponent passes Parsec structure checks but not our signing policy
        let der = encode_spki("1.2.840.113549.1.1.1", true, &pkcs1(&n, 4));
        let k = RsaPublicKeyDer::from_der(&der).unwrap();
        assert!(k.check_signing_policy(1024).is_err());
        // modulus not a multiple of 8 bits: drop 4 bits
        let n1020 = &n >> 4usize;
        let der = encode_spki("1.2.840.113549.1.1.1", true, &pkcs1(&n1020, 65537));
        assert!(RsaPublicKeyDer::from_der(&der)
            .unwrap_err()
            .to_string()
            .contains("multiple of 8"));
        // over 4096 bits
        let big = (BigUint::from(1u8) << 4103usize) + BigUint::from(1u8);
        let der = encode_spki("1.2.840.113549.1.1.1", true, &pkcs1(&big, 65537));
        assert!(RsaPublicKeyDer::from_der(&der)
            .unwrap_err()
            .to_string()
            .contains("4096"));
        // trailing garbage
        let mut der = good.der().to_vec();
        der.push(0);
        assert!(RsaPublicKeyDer::from_der(&der).is_err());
        // PKCS#1 PEM and private keys are refused with their own message
        let pkcs1_pem = pem::encode(&pem::Pem::new("RSA PUBLIC KEY", pkcs1(&n, 65537)));
        assert!(RsaPublicKeyDer::from_pem(&pkcs1_pem)
            .unwrap_err()
            .to_string()
            .contains("PKCS#1"));
        // The lenient reader describes what Parsec refuses, up to 16384 bits.
        let der = encode_spki("1.2.840.113549.1.1.1", true, &pkcs1(&big, 65537));
        let described = parse_spki_der_lenient(&der).unwrap();
        assert_eq!(described.n().bits(), 4104);
        let der = spki_der_from_components(&big.to_bytes_be(), &[1, 0, 1]).unwrap();
        assert_eq!(parse_spki_der_lenient(&der).unwrap().n().bits(), 4104);
        let huge = (BigUint::from(1u8) << 16400usize) + BigUint::from(1u8);
        assert!(spki_der_from_components(&huge.to_bytes_be(), &[1, 0, 1]).is_err());
        let der = encode_spki("1.2.840.113549.1.1.10", true, &pkcs1(&n, 65537));
        assert!(parse_spki_der_lenient(&der)
            .unwrap_err()
            .to_string()
            .contains("not rsaEncryption"));
        let private = fixture("sequester_authority.private.pem");
        assert!(RsaPublicKeyDer::from_pem(&private)
            .unwrap_err()
            .to_string()
            .contains("private key"));
    }
}

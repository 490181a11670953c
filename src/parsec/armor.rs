//! The RSA "armor" framing `NAME || ":" || block (k bytes) || payload` (docs/formats.md §1.6) and
//! RSASSA-PSS-SHA256 verification with automatic salt-length detection (docs/formats.md §1.8).

use rsa::BigUint;
use sha2::{Digest, Sha256};

use super::spki::RsaPublicKeyDer;
use super::FormatError;

/// Algorithm name of authority signatures.
pub(crate) const PSS_SHA256: &str = "RSASSA-PSS-SHA256";
/// Algorithm name of the hybrid encryption to a service key.
pub(crate) const OAEP_SHA256_XSALSA20_POLY1305: &str = "RSAES-OAEP-SHA256-XSALSA20-POLY1305";

const HASH_LEN: usize = 32;

/// Builds `name || ":" || block || payload`, left-padding `block` with zeros to `k` bytes.
/// A block longer than `k` is accepted only if its excess leading bytes are zero (some drivers
/// add a sign byte); anything else is an error.
pub(crate) fn build(
    name: &str,
    block: &[u8],
    k: usize,
    payload: &[u8],
) -> Result<Vec<u8>, FormatError> {
    let significant = match block.iter().position(|&b| b != 0) {
        Some(i) => &block[i..],
        None => &[][..],
    };
    if significant.len() > k {
        return Err(FormatError::Armor(format!(
            "RSA block of {} bytes does not fit the {k}-byte key size",
            block.len()
        )));
    }
    let mut out = Vec::with_capacity(name.len() + 1 + k + payload.len());
    out.extend_from_slice(name.as_bytes());
    out.push(b':');
    out.resize(out.len() + k - significant.len(), 0);
    out.extend_from_slice(significant);
    out.extend_from_slice(payload);
    Ok(out)
}

/// Splits an armored blob as Parsec does: the FIRST colon, the exact algorithm name, then
/// exactly `k` bytes of RSA block and the (possibly empty) payload.
pub(crate) fn split<'a>(
    expected_name: &str,
    k: usize,
    blob: &'a [u8],
) -> Result<(&'a [u8], &'a [u8]), FormatError> {
    let colon = blob
        .iter()
        .position(|&b| b == b':')
        .ok_or(FormatError::ArmorNoSeparator)?;
    let name = &blob[..colon];
    if name != expected_name.as_bytes() {
        return Err(FormatError::ArmorAlgorithm {
            expected: expected_name.to_string(),
            found: String::from_utf8_lossy(&name[..name.len().min(64)]).into_owned(),
        });
    }
    let rest = &blob[colon + 1..];
    if rest.len() < k {
        return Err(FormatError::ArmorTooShort {
            needed: k,
            found: rest.len(),
        });
    }
    Ok(rest.split_at(k))
}

/// The OAEP armor of a sequester keys-bundle access: `(k-byte RSA block, secretbox payload)`.
pub(crate) fn split_oaep(k: usize, blob: &[u8]) -> Result<(&[u8], &[u8]), FormatError> {
    split(OAEP_SHA256_XSALSA20_POLY1305, k, blob)
}

/// Builds an authority-signed blob `"RSASSA-PSS-SHA256:" || sig (k bytes) || message`.
pub(crate) fn build_pss(
    authority: &RsaPublicKeyDer,
    signature: &[u8],
    message: &[u8],
) -> Result<Vec<u8>, FormatError> {
    build(PSS_SHA256, signature, authority.k(), message)
}

/// Verifies an authority-signed blob with `authority` and returns the signed payload.
pub fn verify_pss_armored<'a>(
    authority: &RsaPublicKeyDer,
    blob: &'a [u8],
) -> Result<&'a [u8], FormatError> {
    let (signature, payload) = split(PSS_SHA256, authority.k(), blob)?;
    verify_pss_sha256(authority, payload, signature)?;
    Ok(payload)
}

/// RSASSA-PSS-SHA256 verification (RFC 8017 §8.1.2), MGF1-SHA-256, trailer 0xBC, any salt length
/// (auto-detected, as every Parsec verifier does). `signature` must be exactly k bytes.
pub(crate) fn verify_pss_sha256(
    key: &RsaPublicKeyDer,
    message: &[u8],
    signature: &[u8],
) -> Result<(), FormatError> {
    let bad = || FormatError::BadSignature;
    if signature.len() != key.k() {
        return Err(bad());
    }
    let s = BigUint::from_bytes_be(signature);
    if &s >= key.modulus() {
        return Err(bad());
    }
    let m = s.modpow(key.exponent(), key.modulus());
    let mod_bits = key.bits();
    let em_bits = mod_bits - 1;
    let em_len = em_bits.div_ceil(8);
    let m_bytes = m.to_bytes_be();
    if m_bytes.len() > em_len {
        return Err(bad());
    }
    let mut em = vec![0u8; em_len - m_bytes.len()];
    em.extend_from_slice(&m_bytes);
    emsa_pss_verify_any_salt(&Sha256::digest(message), &em, em_bits)
        .then_some(())
        .ok_or_else(bad)
}

/// EMSA-PSS-VERIFY with the salt length recovered from the padding (0 ..= emLen - hLen - 2).
/// Public data only, so no constant-time requirement.
fn emsa_pss_verify_any_salt(m_hash: &[u8], em: &[u8], em_bits: usize) -> bool {
    let em_len = em.len();
    if em_len < HASH_LEN + 2 || em[em_len - 1] != 0xbc {
        return false;
    }
    let (masked_db, rest) = em.split_at(em_len - HASH_LEN - 1);
    let h = &rest[..HASH_LEN];
    let unused_bits = 8 * em_len - em_bits;
    let top_mask = 0xffu8 >> unused_bits;
    if masked_db[0] & !top_mask != 0 {
        return false;
    }
    let mut db = mgf1_sha256(h, masked_db.len());
    for (d, m) in db.iter_mut().zip(masked_db) {
        *d ^= m;
    }
    db[0] &= top_mask;
    let Some(one) = db.iter().position(|&b| b != 0) else {
        return false;
    };
    if db[one] != 0x01 {
        return false;
    }
    let salt = &db[one + 1..];
    let mut hasher = Sha256::new();
    hasher.update([0u8; 8]);
    hasher.update(m_hash);
    hasher.update(salt);
    hasher.finalize().as_slice() == h
}

/// MGF1 with SHA-256 (RFC 8017 §B.2.1).
pub(crate) fn mgf1_sha256(seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + HASH_LEN);
    let mut counter: u32 = 0;
    while out.len() < len {
        let mut hasher = Sha256::new();
        hasher.update(seed);
        hasher.update(counter.to_be_bytes());
        out.extend_from_slice(&hasher.finalize());
        counter += 1;
    }
    out.truncate(len);
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::traits::PrivateKeyParts;

    pub(crate) fn fixture(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/fixtures/parsec")
            .join(name);
        std::fs::read_to_string(path).unwrap()
    }

    pub(crate) fn authority_public() -> RsaPublicKeyDer {
        RsaPublicKeyDer::from_pem(&fixture("sequester_authority.public.pem")).unwrap()
    }

    /// EMSA-PSS encoding with a caller-chosen salt, then a raw RSA private operation with a
    /// software key: test-only, to reproduce the deterministic vector V5. The tool itself only
    /// ever signs through a token.
    pub(crate) fn sign_pss_with_salt_for_test(
        private_pem: &str,
        message: &[u8],
        salt: &[u8],
    ) -> Vec<u8> {
        let key = rsa::RsaPrivateKey::from_pkcs8_pem(private_pem).unwrap();
        let mod_bits = rsa::traits::PublicKeyParts::n(&key).bits();
        let em_bits = mod_bits - 1;
        let em_len = em_bits.div_ceil(8);
        let m_hash = Sha256::digest(message);
        let mut hasher = Sha256::new();
        hasher.update([0u8; 8]);
        hasher.update(m_hash);
        hasher.update(salt);
        let h = hasher.finalize();
        let mut db = vec![0u8; em_len - salt.len() - HASH_LEN - 2];
        db.push(1);
        db.extend_from_slice(salt);
        let mask = mgf1_sha256(&h, db.len());
        for (d, m) in db.iter_mut().zip(mask) {
            *d ^= m;
        }
        db[0] &= 0xff >> (8 * em_len - em_bits);
        let mut em = db;
        em.extend_from_slice(&h);
        em.push(0xbc);
        let m = BigUint::from_bytes_be(&em);
        let s = m.modpow(key.d(), rsa::traits::PublicKeyParts::n(&key));
        let k = mod_bits / 8;
        let s = s.to_bytes_be();
        let mut out = vec![0u8; k - s.len()];
        out.extend_from_slice(&s);
        out
    }

    const V4_REVOKED_ENVELOPE: &str = "0028b52ffd0058950200840483a474797065d9257365717565737465725f7265766f6b65645f736572766963655f6365727469666963617465a974696d657374616d70d70100035e2efad68000aa6964d8020001020038a9c27ad519";
    const V5_SIGNATURE: &str = "2b38d106ddc6ba9decfc70e95dac9da3bbdf6a3e202a0a6f819d4a52c4c97f42d7a5f5ad95c8ff0a876d1ccc19eed943b5ba7f4b9842cfada54695743db447e8c9935793f570c727b02bac0651bc6ee8677c78a53daea8d636f69457bf2e4b1123ff0306bc2d629168645763714f1d9266b220a95e25e5706d27da2fbdd1b78f";
    pub(crate) const V5_ARMORED: &str = "5253415353412d5053532d5348413235363a2b38d106ddc6ba9decfc70e95dac9da3bbdf6a3e202a0a6f819d4a52c4c97f42d7a5f5ad95c8ff0a876d1ccc19eed943b5ba7f4b9842cfada54695743db447e8c9935793f570c727b02bac0651bc6ee8677c78a53daea8d636f69457bf2e4b1123ff0306bc2d629168645763714f1d9266b220a95e25e5706d27da2fbdd1b78f0028b52ffd0058950200840483a474797065d9257365717565737465725f7265766f6b65645f736572766963655f6365727469666963617465a974696d657374616d70d70100035e2efad68000aa6964d8020001020038a9c27ad519";

    #[test]
    fn v5_pss_vector_reproduced_and_verified() {
        let message = hex::decode(V4_REVOKED_ENVELOPE).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&message)),
            "2db06ed430b1246dd3de86738be6773c22e468400748569b0e1b88335e01d81f"
        );
        let sig = sign_pss_with_salt_for_test(
            &fixture("sequester_authority.private.pem"),
            &message,
            &[0x5a; 32],
        );
        assert_eq!(hex::encode(&sig), V5_SIGNATURE);
        let authority = authority_public();
        let armored = build_pss(&authority, &sig, &message).unwrap();
        assert_eq!(hex::encode(&armored), V5_ARMORED);
        assert_eq!(verify_pss_armored(&authority, &armored).unwrap(), message);
    }

    #[test]
    fn any_salt_length_verifies() {
        let authority = authority_public();
        let private = fixture("sequester_authority.private.pem");
        let message = b"salt lengths";
        // 0, 20, 32, 64 and the maximum for 1024 bits (k - 34 = 94).
        for len in [0usize, 20, 32, 64, 94] {
            let sig = sign_pss_with_salt_for_test(&private, message, &vec![7u8; len]);
            verify_pss_sha256(&authority, message, &sig).unwrap();
            assert_eq!(
                verify_pss_sha256(&authority, b"other", &sig),
                Err(FormatError::BadSignature)
            );
        }
    }

    #[test]
    fn armor_refusals_each_have_their_error() {
        let authority = authority_public();
        let armored = hex::decode(V5_ARMORED).unwrap();
        // No colon.
        assert_eq!(
            verify_pss_armored(&authority, &armored[18..]).unwrap_err(),
            FormatError::ArmorNoSeparator
        );
        // Wrong algorithm name.
        let mut other = b"RSASSA-PSS-SHA512".to_vec();
        other.extend_from_slice(&armored[17..]);
        assert!(matches!(
            verify_pss_armored(&authority, &other).unwrap_err(),
            FormatError::ArmorAlgorithm { .. }
        ));
        // Truncated inside the signature.
        assert_eq!(
            verify_pss_armored(&authority, &armored[..18 + 100]).unwrap_err(),
            FormatError::ArmorTooShort {
                needed: 128,
                found: 100
            }
        );
        // Payload modified.
        let mut tampered = armored.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(
            verify_pss_armored(&authority, &tampered).unwrap_err(),
            FormatError::BadSignature
        );
        // Signature by another key.
        let service1 = RsaPublicKeyDer::from_pem(&fixture(
            "sequester_service_1.00000000000000000000000000000001.public.pem",
        ))
        .unwrap();
        assert_eq!(
            verify_pss_armored(&service1, &armored).unwrap_err(),
            FormatError::BadSignature
        );
        // First-colon rule: a colon inside the name region makes the name wrong.
        let mut colon = b"RSASSA:PSS-SHA256:".to_vec();
        colon.extend_from_slice(&armored[18..]);
        assert!(matches!(
            verify_pss_armored(&authority, &colon).unwrap_err(),
            FormatError::ArmorAlgorithm { .. }
        ));
    }

    #[test]
    fn build_left_pads_and_rejects_oversized_blocks() {
        let out = build("X", &[1, 2], 4, b"p").unwrap();
        assert_eq!(out, b"X:\x00\x00\x01\x02p");
        let out = build("X", &[0, 0, 0, 0, 1, 2], 4, b"").unwrap();
        assert_eq!(out, b"X:\x00\x00\x01\x02");
        assert!(build("X", &[1, 2, 3, 4, 5], 4, b"").is_err());
        let (block, payload) = split("X", 4, b"X:\x00\x00\x01\x02p").unwrap();
        assert_eq!((block, payload), (&[0u8, 0, 1, 2][..], &b"p"[..]));
        let (block, payload) = split("X", 4, b"X:\x00\x00\x01\x02").unwrap();
        assert_eq!((block.len(), payload.len()), (4, 0));
    }

    #[test]
    fn v6_oaep_armor_splits_and_the_rsa_block_decrypts() {
        let armored = hex::decode("52534145532d4f4145502d5348413235362d5853414c534132302d504f4c59313330353a50118dfd50b269d27d0e303d2b4010091520593653e06419afa50be4ea431d1004555532337fe9816afaec9f6d93c148d8a998c6629706bff71dec60201ef97f372671ae76070d585310c240b254ca86cc7152ca410c800ff04bb5eced44406966dec1aa682c6d1997c2ed014503f27a6c89ac75761b1058d361e087946d65d9333333333333333333333333333333333333333333333333cd8ae9b1866d9f4bde1fd23bf99bf9dd28a27b8ce044063e481e493197e4aec4864143df4cb9aac56cfa99fd18275b7c288c5d9f92896cc0950deb79050a3c4dc1e2873901f69f988dcb968e").unwrap();
        let (block, payload) = split_oaep(128, &armored).unwrap();
        assert_eq!(hex::encode(block), "50118dfd50b269d27d0e303d2b4010091520593653e06419afa50be4ea431d1004555532337fe9816afaec9f6d93c148d8a998c6629706bff71dec60201ef97f372671ae76070d585310c240b254ca86cc7152ca410c800ff04bb5eced44406966dec1aa682c6d1997c2ed014503f27a6c89ac75761b1058d361e087946d65d9");
        // Software OAEP with the published fixture key (test only) gives the ephemeral key,
        // and the payload opens with it.
        let private = rsa::RsaPrivateKey::from_pkcs8_pem(&fixture(
            "sequester_service_1.00000000000000000000000000000001.private.pem",
        ))
        .unwrap();
        let ek = private.decrypt(rsa::Oaep::new::<Sha256>(), block).unwrap();
        let expected: Vec<u8> = (0u8..32).collect();
        assert_eq!(ek, expected);
        let ek: [u8; 32] = ek.try_into().unwrap();
        let clear = crate::crypto::symmetric::secretbox_open(&ek, payload).unwrap();
        assert_eq!(hex::encode(&*clear), "0028b52ffd0058950100840282a474797065b87265616c6d5f6b6579735f62756e646c655f616363657373af6b6579c420aa000e0200b8dbc0b8f904");
        // A PSS name on an OAEP blob is refused.
        assert!(matches!(
            split(PSS_SHA256, 128, &armored),
            Err(FormatError::ArmorAlgorithm { .. })
        ));
    }
}

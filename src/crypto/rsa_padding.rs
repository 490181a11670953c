//! Host-side RSA padding for tokens that only do raw RSA (`CKM_RSA_X_509`, YubiKey PIV):
//! constant-time EME-OAEP decoding (SHA-256, MGF1-SHA-256, empty label) and EMSA-PSS encoding
//! (SHA-256, MGF1-SHA-256, salt 32). RFC 8017 §7.1.2 step 3 and §9.1.1; docs/formats.md §1.7, §1.8,
//! §9.
//!
//! Used by the PKCS#11 fallback paths and by the YubiKey backend:
//! - decrypt: `em = raw_rsa(block)` left-padded to k bytes, then [`oaep_sha256_decode`];
//! - sign: [`pss_sha256_encode`] (or [`pss_sha256_encode_random_salt`]) then `raw_rsa(em)`.

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use zeroize::{Zeroize, Zeroizing};

/// SHA-256 output length (hLen).
pub(crate) const HASH_LEN: usize = 32;
/// The PSS salt length every path uses (docs/formats.md §1.8: sLen = 32).
pub(crate) const PSS_SALT_LEN: usize = 32;
/// SHA-256 of the empty label (`e3b0c442...b855`).
const EMPTY_LABEL_HASH: [u8; 32] = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// Padding errors. OAEP decoding has ONE error whatever failed, so that no padding oracle can
/// learn which check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PaddingError {
    #[error("decryption failed")]
    Decoding,
    #[error("modulus too small for this padding ({0} bits)")]
    ModulusTooSmall(usize),
}

/// MGF1 with SHA-256 (RFC 8017 B.2.1), XORed into `out`.
fn mgf1_sha256_xor(seed: &[u8], out: &mut [u8]) {
    for (counter, chunk) in (0u32..).zip(out.chunks_mut(HASH_LEN)) {
        let mut h = Sha256::new();
        h.update(seed);
        h.update(counter.to_be_bytes());
        let mut block: [u8; HASH_LEN] = h.finalize().into();
        for (o, m) in chunk.iter_mut().zip(block.iter()) {
            *o ^= *m;
        }
        block.zeroize();
    }
}

/// EME-OAEP decoding (SHA-256, MGF1-SHA-256, empty label) of `em`, the raw RSA output
/// left-padded to k bytes (k = modulus length in bytes). Returns the message.
///
/// Constant time with respect to the content of `em` (only its length, which is public, and the
/// length of a *valid* message influence timing). Every failure is [`PaddingError::Decoding`].
pub(crate) fn oaep_sha256_decode(em: &[u8]) -> Result<Zeroizing<Vec<u8>>, PaddingError> {
    let k = em.len();
    if k < 2 * HASH_LEN + 2 {
        return Err(PaddingError::Decoding);
    }
    let mut buf = Zeroizing::new(em.to_vec());
    let (y, rest) = buf.split_at_mut(1);
    let (seed, db) = rest.split_at_mut(HASH_LEN);
    mgf1_sha256_xor(db, seed);
    mgf1_sha256_xor(seed, db);

    let mut good: Choice = y[0].ct_eq(&0);
    good &= db[..HASH_LEN].ct_eq(&EMPTY_LABEL_HASH);

    // Find the 0x01 separator after PS (zero bytes) without branching on the data.
    let mut looking = Choice::from(1u8);
    let mut invalid = Choice::from(0u8);
    let mut index: u32 = 0;
    for (i, byte) in db.iter().enumerate().skip(HASH_LEN) {
        let is_zero = byte.ct_eq(&0);
        let is_one = byte.ct_eq(&1);
        index.conditional_assign(&(i as u32), looking & is_one);
        invalid |= looking & !is_zero & !is_one;
        looking &= !is_one;
    }
    good &= !invalid & !looking;

    if bool::from(good) {
        Ok(Zeroizing::new(db[index as usize + 1..].to_vec()))
    } else {
        Err(PaddingError::Decoding)
    }
}

/// [`oaep_sha256_decode`] of a raw RSA output that a driver may have returned without its leading
/// zero bytes: left-pads to `k` (the modulus length in bytes) first. Any problem, including an
/// output longer than `k`, is the same [`PaddingError::Decoding`].
pub(crate) fn oaep_sha256_decode_raw(
    raw: &[u8],
    k: usize,
) -> Result<Zeroizing<Vec<u8>>, PaddingError> {
    let em = Zeroizing::new(left_pad(raw, k).ok_or(PaddingError::Decoding)?);
    oaep_sha256_decode(&em)
}

/// EMSA-PSS encoding (SHA-256, MGF1-SHA-256) of a message digest `m_hash` with the given salt,
/// for a modulus of `mod_bits` bits. The result is left-padded with zeros to k =
/// ceil(mod_bits / 8) bytes, ready for raw RSA (`CKM_RSA_X_509`, PIV).
pub(crate) fn pss_sha256_encode(
    m_hash: &[u8; HASH_LEN],
    salt: &[u8],
    mod_bits: usize,
) -> Result<Vec<u8>, PaddingError> {
    let k = mod_bits.div_ceil(8);
    let em_bits = mod_bits - 1;
    let em_len = em_bits.div_ceil(8);
    if em_len < HASH_LEN + salt.len() + 2 {
        return Err(PaddingError::ModulusTooSmall(mod_bits));
    }
    // H = SHA-256(0x00 * 8 || mHash || salt)
    let mut h = Sha256::new();
    h.update([0u8; 8]);
    h.update(m_hash);
    h.update(salt);
    let h: [u8; HASH_LEN] = h.finalize().into();

    // DB = PS || 0x01 || salt, masked with MGF1(H)
    let db_len = em_len - HASH_LEN - 1;
    let mut db = vec![0u8; db_len];
    db[db_len - salt.len() - 1] = 0x01;
    db[db_len - salt.len()..].copy_from_slice(salt);
    mgf1_sha256_xor(&h, &mut db);
    let unused_bits = 8 * em_len - em_bits;
    db[0] &= 0xffu8 >> unused_bits;

    let mut out = Vec::with_capacity(k);
    out.resize(k - em_len, 0);
    out.extend_from_slice(&db);
    out.extend_from_slice(&h);
    out.push(0xbc);
    Ok(out)
}

/// [`pss_sha256_encode`] with a fresh random 32-byte salt (the value every signer here uses).
pub(crate) fn pss_sha256_encode_random_salt(
    m_hash: &[u8; HASH_LEN],
    mod_bits: usize,
) -> Result<Vec<u8>, PaddingError> {
    let mut salt = [0u8; PSS_SALT_LEN];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    pss_sha256_encode(m_hash, &salt, mod_bits)
}

/// Left-pads an RSA output to exactly `k` bytes (some drivers strip leading zeros, docs/formats.md
/// §1.6). Returns `None` if `data` is longer than `k` (after stripping leading zeros).
pub(crate) fn left_pad(data: &[u8], k: usize) -> Option<Vec<u8>> {
    if data.len() > k {
        let extra = data.len() - k;
        if data[..extra].iter().any(|b| *b != 0) {
            return None;
        }
        return Some(data[extra..].to_vec());
    }
    let mut out = vec![0u8; k - data.len()];
    out.extend_from_slice(data);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::traits::{PrivateKeyParts, PublicKeyParts};
    use rsa::{BigUint, Oaep, Pss, RsaPrivateKey};

    fn key() -> RsaPrivateKey {
        // 1024 bits keeps the unit tests fast; the padding code is size-independent.
        let pem = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/fixtures/parsec/sequester_authority.private.pem"
        ));
        match pem {
            Ok(pem) => {
                use rsa::pkcs8::DecodePrivateKey;
                RsaPrivateKey::from_pkcs8_pem(&pem).unwrap()
            }
            Err(_) => RsaPrivateKey::new(&mut rand::thread_rng(), 1024).unwrap(),
        }
    }

    fn raw_decrypt(key: &RsaPrivateKey, block: &[u8]) -> Vec<u8> {
        let c = BigUint::from_bytes_be(block);
        let m = c.modpow(key.d(), key.n());
        left_pad(&m.to_bytes_be(), key.size()).unwrap()
    }

    fn raw_sign(key: &RsaPrivateKey, em: &[u8]) -> Vec<u8> {
        raw_decrypt(key, em)
    }

    #[test]
    fn oaep_decode_matches_rsa_crate_encryption() {
        let key = key();
        let public = key.to_public_key();
        for len in [0usize, 1, 32, 62] {
            let msg: Vec<u8> = (0..len as u8).collect();
            let block = public
                .encrypt(&mut rand::thread_rng(), Oaep::new::<Sha256>(), &msg)
                .unwrap();
            let em = raw_decrypt(&key, &block);
            assert_eq!(&*oaep_sha256_decode(&em).unwrap(), &msg);
        }
    }

    #[test]
    fn oaep_decode_rejects_every_tampering_with_the_same_error() {
        let key = key();
        let public = key.to_public_key();
        let block = public
            .encrypt(&mut rand::thread_rng(), Oaep::new::<Sha256>(), &[7u8; 32])
            .unwrap();
        let em = raw_decrypt(&key, &block);
        let mut cases: Vec<Vec<u8>> = Vec::new();
        // Y != 0
        let mut c = em.clone();
        c[0] = 1;
        cases.push(c);
        // each region flipped: seed, lHash, PS, separator, message
        for pos in [1usize, 40, 33 + 1, em.len() - 40, em.len() - 1] {
            let mut c = em.clone();
            c[pos] ^= 0x01;
            cases.push(c);
        }
        // a non-empty label
        let labelled = public
            .encrypt(
                &mut rand::thread_rng(),
                Oaep::new_with_label::<Sha256, _>("label"),
                &[7u8; 32],
            )
            .unwrap();
        cases.push(raw_decrypt(&key, &labelled));
        // OAEP with another hash (SHA-384; 1024-bit keys carry at most 30 bytes with it)
        let other_hash = public
            .encrypt(
                &mut rand::thread_rng(),
                Oaep::new::<sha2::Sha384>(),
                &[7u8; 16],
            )
            .unwrap();
        cases.push(raw_decrypt(&key, &other_hash));
        // all zeros, too short
        cases.push(vec![0u8; em.len()]);
        cases.push(vec![0u8; 10]);
        for c in cases {
            assert_eq!(oaep_sha256_decode(&c), Err(PaddingError::Decoding));
        }
    }

    #[test]
    fn pss_encoding_verifies_with_rsa_crate() {
        let key = key();
        let public = key.to_public_key();
        let msg = b"\x00some envelope";
        let digest: [u8; 32] = Sha256::digest(msg).into();
        let em = pss_sha256_encode_random_salt(&digest, public.n().bits()).unwrap();
        assert_eq!(em.len(), public.size());
        let sig = raw_sign(&key, &em);
        public
            .verify(Pss::new::<Sha256>(), &digest, &sig)
            .expect("valid PSS signature");
        // salt length 32 is what was used: a verifier insisting on 32 also accepts it
        public
            .verify(Pss::new_with_salt::<Sha256>(32), &digest, &sig)
            .expect("salt 32");
    }

    #[test]
    fn pss_encoding_is_deterministic_for_a_given_salt() {
        let d = [1u8; 32];
        let a = pss_sha256_encode(&d, &[9u8; 32], 2048).unwrap();
        let b = pss_sha256_encode(&d, &[9u8; 32], 2048).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 256);
        assert_eq!(a[255], 0xbc);
        assert_eq!(a[0] & 0x80, 0, "top bit cleared (emBits = modBits - 1)");
        assert!(pss_sha256_encode(&d, &[0u8; 32], 528).is_ok());
        assert_eq!(
            pss_sha256_encode(&d, &[0u8; 32], 512),
            Err(PaddingError::ModulusTooSmall(512))
        );
    }

    #[test]
    fn oaep_decode_raw_accepts_stripped_leading_zeros() {
        let key = key();
        let public = key.to_public_key();
        let block = public
            .encrypt(&mut rand::thread_rng(), Oaep::new::<Sha256>(), &[3u8; 32])
            .unwrap();
        let em = raw_decrypt(&key, &block);
        assert_eq!(em[0], 0);
        let stripped = &em[1..];
        assert_eq!(
            &*oaep_sha256_decode_raw(stripped, em.len()).unwrap(),
            &[3u8; 32]
        );
        let mut long = vec![1u8];
        long.extend_from_slice(&em);
        assert_eq!(
            oaep_sha256_decode_raw(&long, em.len()),
            Err(PaddingError::Decoding)
        );
    }

    fn fixture_key(name: &str) -> RsaPrivateKey {
        use rsa::pkcs8::DecodePrivateKey;
        let path = format!(
            "{}/../shared/fixtures/parsec/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        RsaPrivateKey::from_pkcs8_pem(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// docs/formats.md §10 V5: PSS with salt 32 x 0x5a over the revocation envelope, fixture
    /// authority key.
    #[test]
    fn pss_encoding_reproduces_spec_vector_v5() {
        let key = fixture_key("sequester_authority.private.pem");
        let message = hex::decode("0028b52ffd0058950200840483a474797065d9257365717565737465725f7265766f6b65645f736572766963655f6365727469666963617465a974696d657374616d70d70100035e2efad68000aa6964d8020001020038a9c27ad519").unwrap();
        let digest: [u8; 32] = Sha256::digest(&message).into();
        assert_eq!(
            hex::encode(digest),
            "2db06ed430b1246dd3de86738be6773c22e468400748569b0e1b88335e01d81f"
        );
        let em = pss_sha256_encode(&digest, &[0x5a; 32], key.n().bits()).unwrap();
        let sig = raw_sign(&key, &em);
        assert_eq!(hex::encode(sig), "2b38d106ddc6ba9decfc70e95dac9da3bbdf6a3e202a0a6f819d4a52c4c97f42d7a5f5ad95c8ff0a876d1ccc19eed943b5ba7f4b9842cfada54695743db447e8c9935793f570c727b02bac0651bc6ee8677c78a53daea8d636f69457bf2e4b1123ff0306bc2d629168645763714f1d9266b220a95e25e5706d27da2fbdd1b78f");
    }

    /// docs/formats.md §10 V6: the rsa_block to fixture service 1 decodes to the key 00 01 .. 1f.
    #[test]
    fn oaep_decoding_reproduces_spec_vector_v6() {
        let key = fixture_key("sequester_service_1.00000000000000000000000000000001.private.pem");
        let block = hex::decode("50118dfd50b269d27d0e303d2b4010091520593653e06419afa50be4ea431d1004555532337fe9816afaec9f6d93c148d8a998c6629706bff71dec60201ef97f372671ae76070d585310c240b254ca86cc7152ca410c800ff04bb5eced44406966dec1aa682c6d1997c2ed014503f27a6c89ac75761b1058d361e087946d65d9").unwrap();
        let plain = oaep_sha256_decode(&raw_decrypt(&key, &block)).unwrap();
        assert_eq!(plain.to_vec(), (0u8..32).collect::<Vec<u8>>());
    }

    #[test]
    fn left_pad_restores_stripped_zeros() {
        assert_eq!(left_pad(&[1, 2], 4).unwrap(), vec![0, 0, 1, 2]);
        assert_eq!(left_pad(&[0, 0, 1, 2], 3).unwrap(), vec![0, 1, 2]);
        assert!(left_pad(&[1, 1, 2], 2).is_none());
    }
}

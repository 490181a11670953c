//! Parsec's symmetric primitives: XSalsa20-Poly1305 secretbox (docs/formats.md §1.1), the BLAKE2b
//! key derivation (§1.2) and Ed25519 signed blobs (§1.4).
//!
//! The secretbox is libsodium's own `crypto_secretbox_*_easy` (the reference Parsec itself uses
//! through PyNaCl), built from source by `libsodium-sys-stable`: its SIMD XSalsa20 opens 2–2.6×
//! faster than RustCrypto's portable `salsa20` (measurements in docs/performance.md).
//! libsodium checks the Poly1305 tag in constant time before it decrypts anything, and writes
//! nothing to the output when the tag is wrong.

use std::sync::OnceLock;

use blake2::digest::{consts::U32, Mac};
use blake2::Blake2bMac;
use ed25519_dalek::{Signature, VerifyingKey};
use zeroize::Zeroizing;

/// Nonce (24) + tag (16).
pub const SECRETBOX_OVERHEAD: usize = 40;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// Errors of the symmetric layer. Deliberately terse: no key material in them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SymmetricError {
    #[error("secretbox: ciphertext shorter than 40 bytes")]
    Truncated,
    #[error("secretbox: authentication failed (wrong key or corrupted data)")]
    Authentication,
    #[error("signed blob shorter than 64 bytes")]
    ShortSignedBlob,
    #[error("invalid Ed25519 verify key")]
    BadVerifyKey,
    #[error("Ed25519 signature does not verify")]
    BadSignature,
}

/// A 32-byte secret key, zeroized on drop.
pub type SecretKey = Zeroizing<[u8; 32]>;

/// `sodium_init` once per process: it selects the SIMD implementations for this CPU (without it
/// libsodium runs its portable code). It fails only if the OS cannot provide a mutex or
/// randomness, in which case no cryptography can run at all.
fn sodium() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        // SAFETY: sodium_init is thread-safe and idempotent; it takes no arguments.
        let status = unsafe { libsodium_sys::sodium_init() };
        assert!(status >= 0, "libsodium failed to initialise (sodium_init)");
    });
}

/// Decrypted bytes (a block, a manifest, a keys bundle), erased when dropped with one bulk
/// `sodium_memzero` over the whole allocation. `Zeroizing<Vec<u8>>` erased them one volatile
/// byte store at a time, a third of the decryption's own cost (docs/performance.md).
pub struct Plaintext(Vec<u8>);

impl Plaintext {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::ops::Deref for Plaintext {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Plaintext {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Plaintext {
    /// The length only: plaintext is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Plaintext({} bytes)", self.0.len())
    }
}

impl Drop for Plaintext {
    fn drop(&mut self) {
        sodium();
        // SAFETY: the pointer and capacity describe this Vec's own allocation (writing its
        // uninitialised tail is allowed); sodium_memzero is a memset the compiler cannot elide.
        unsafe {
            libsodium_sys::sodium_memzero(self.0.as_mut_ptr().cast(), self.0.capacity());
        }
    }
}

/// Opens `nonce(24) || tag(16) || ciphertext`. The plaintext is released only once the tag has
/// verified; it is erased on drop.
pub fn secretbox_open(key: &[u8; 32], blob: &[u8]) -> Result<Plaintext, SymmetricError> {
    if blob.len() < SECRETBOX_OVERHEAD {
        return Err(SymmetricError::Truncated);
    }
    sodium();
    let (nonce, boxed) = blob.split_at(NONCE_LEN);
    let len = boxed.len() - TAG_LEN;
    // Not zero-filled first (a second pass over every block): libsodium writes all `len` bytes
    // when the tag verifies, and none otherwise.
    let mut plain = Plaintext(Vec::with_capacity(len));
    // SAFETY: `plain` has capacity for the boxed.len() - 16 message bytes libsodium writes,
    // `boxed` is boxed.len() bytes, nonce 24 and key 32 as crypto_secretbox requires; the
    // buffers do not overlap.
    let status = unsafe {
        libsodium_sys::crypto_secretbox_open_easy(
            plain.0.as_mut_ptr(),
            boxed.as_ptr(),
            boxed.len() as u64,
            nonce.as_ptr(),
            key.as_ptr(),
        )
    };
    if status == 0 {
        // SAFETY: on success all `len` bytes were written.
        unsafe { plain.0.set_len(len) };
        Ok(plain)
    } else {
        Err(SymmetricError::Authentication)
    }
}

/// Seals `plaintext` with the given nonce into `nonce || tag || ciphertext`.
pub fn secretbox_seal_with_nonce(key: &[u8; 32], nonce: &[u8; 24], plaintext: &[u8]) -> Vec<u8> {
    sodium();
    let mut out = vec![0u8; SECRETBOX_OVERHEAD + plaintext.len()];
    out[..NONCE_LEN].copy_from_slice(nonce);
    // SAFETY: the output after the nonce holds plaintext.len() + 16 bytes, as
    // crypto_secretbox_easy writes; the plaintext is a distinct buffer.
    let status = unsafe {
        libsodium_sys::crypto_secretbox_easy(
            out[NONCE_LEN..].as_mut_ptr(),
            plaintext.as_ptr(),
            plaintext.len() as u64,
            nonce.as_ptr(),
            key.as_ptr(),
        )
    };
    // Fails only for messages over crypto_secretbox_MESSAGEBYTES_MAX (≈2^64), impossible in memory.
    assert_eq!(status, 0, "crypto_secretbox_easy failed");
    out
}

/// Seals `plaintext` under a fresh random nonce.
pub fn secretbox_seal(key: &[u8; 32], plaintext: &[u8]) -> Vec<u8> {
    use rand::RngCore;
    let mut nonce = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut nonce);
    secretbox_seal_with_nonce(key, &nonce, plaintext)
}

/// `derive(kd, id)`: keyed BLAKE2b-256 with salt = id[0..8] || 0^8, personal = id[8..16] || 0^8.
pub fn derive_key(key_derivation: &[u8; 32], id: &[u8; 16]) -> SecretKey {
    let mut salt = [0u8; 16];
    salt[..8].copy_from_slice(&id[..8]);
    let mut personal = [0u8; 16];
    personal[..8].copy_from_slice(&id[8..]);
    let mac = Blake2bMac::<U32>::new_with_salt_and_personal(key_derivation, &salt, &personal)
        .expect("32-byte key, 16-byte salt and personal are valid BLAKE2b parameters");
    let out = mac.finalize().into_bytes();
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&out);
    key
}

/// Derivation UUID of key canaries (docs/formats.md §1.2).
pub const CANARY_DERIVATION_ID: [u8; 16] = uuid_bytes(1);
/// Derivation UUID of realm names (docs/formats.md §1.2).
pub const REALM_NAME_DERIVATION_ID: [u8; 16] = uuid_bytes(2);

const fn uuid_bytes(last: u8) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[15] = last;
    b
}

/// Splits `signature(64) || message` and verifies it; returns the message.
pub fn ed25519_verify<'a>(
    verify_key: &[u8; 32],
    signed: &'a [u8],
) -> Result<&'a [u8], SymmetricError> {
    let (signature, message) = ed25519_split(signed)?;
    let key = VerifyingKey::from_bytes(verify_key).map_err(|_| SymmetricError::BadVerifyKey)?;
    key.verify_strict(message, &signature)
        .map_err(|_| SymmetricError::BadSignature)?;
    Ok(message)
}

/// Splits a signed blob without verifying (to read the author before knowing its key).
pub fn ed25519_split(signed: &[u8]) -> Result<(Signature, &[u8]), SymmetricError> {
    if signed.len() < 64 {
        return Err(SymmetricError::ShortSignedBlob);
    }
    let (sig, message) = signed.split_at(64);
    let sig: [u8; 64] = sig.try_into().expect("split at 64");
    Ok((Signature::from_bytes(&sig), message))
}

/// Signs `message` with an Ed25519 seed: `signature || message` (used by the export writer).
pub fn ed25519_sign(seed: &[u8; 32], message: &[u8]) -> Vec<u8> {
    use ed25519_dalek::Signer;
    let key = ed25519_dalek::SigningKey::from_bytes(seed);
    let sig = key.sign(message);
    let mut out = Vec::with_capacity(64 + message.len());
    out.extend_from_slice(&sig.to_bytes());
    out.extend_from_slice(message);
    out
}

/// The Ed25519 verify key of a seed.
pub fn ed25519_public(seed: &[u8; 32]) -> [u8; 32] {
    ed25519_dalek::SigningKey::from_bytes(seed)
        .verifying_key()
        .to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn kdf_matches_spec_v1() {
        let kd: [u8; 32] = h("aa0000000000000000000000000000000000000000000000000000000000000a")
            .try_into()
            .unwrap();
        let cases = [
            (
                "00000000000000000000000000000001",
                "020f52fb773ee800f17d294c0ab6dba95cfd00d36e8a5abd4346e2bac09ac4a8",
            ),
            (
                "00000000000000000000000000000002",
                "8180d782f77a199f468f7b496c2751d1b28195a04ec68e86de8435e431a2e596",
            ),
            (
                "f0000000000000000000000000000004",
                "77dc718eddd49c197ffcbbbd4a87555d5f39614a7ecba3961e9e0da7cc0f0adf",
            ),
            (
                "f0000000000000000000000000000005",
                "0f741ef5967011a4ad50394e60ecaa157966c42f58b570f173f48d6a600b829f",
            ),
        ];
        for (id, expected) in cases {
            let id: [u8; 16] = h(id).try_into().unwrap();
            assert_eq!(hex::encode(*derive_key(&kd, &id)), expected);
        }
    }

    #[test]
    fn secretbox_matches_spec_v2() {
        let key: [u8; 32] = h("020f52fb773ee800f17d294c0ab6dba95cfd00d36e8a5abd4346e2bac09ac4a8")
            .try_into()
            .unwrap();
        let nonce = [0x24u8; 24];
        assert_eq!(
            hex::encode(secretbox_seal_with_nonce(&key, &nonce, b"")),
            "242424242424242424242424242424242424242424242424a4730577a4810c312ecd81514f28627e"
        );
        let hello = h("24242424242424242424242424242424242424242424242401454f9a03934d0089d8d5108fc157900db873a114edd246");
        assert_eq!(&secretbox_open(&key, &hello).unwrap()[..], b"Hello v1");
        let mut tampered = hello.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(
            secretbox_open(&key, &tampered).unwrap_err(),
            SymmetricError::Authentication
        );
        assert_eq!(
            secretbox_open(&key, &hello[..39]).unwrap_err(),
            SymmetricError::Truncated
        );
    }

    /// libsodium and RustCrypto's independent XSalsa20-Poly1305 agree byte for byte, in both
    /// directions, on sizes around the 64-byte Salsa20 block and the 32/16-byte first-block
    /// split of secretbox (and on a 512 KiB block, the size of real exports).
    #[test]
    fn secretbox_agrees_with_rustcrypto() {
        use crypto_secretbox::aead::{Aead, KeyInit};
        use crypto_secretbox::XSalsa20Poly1305;
        use rand::{Rng, RngCore, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let sizes = (0..200).chain([255, 256, 257, 4095, 4096, 16 << 10, 512 << 10]);
        for len in sizes {
            let mut key = [0u8; 32];
            let mut nonce = [0u8; 24];
            rng.fill_bytes(&mut key);
            rng.fill_bytes(&mut nonce);
            let plain: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let ours = secretbox_seal_with_nonce(&key, &nonce, &plain);
            let cipher = XSalsa20Poly1305::new(&key.into());
            let theirs = cipher.encrypt(&nonce.into(), &plain[..]).unwrap();
            assert_eq!(&ours[..24], &nonce[..]);
            assert_eq!(&ours[24..], &theirs[..], "seal differs at {len} bytes");
            assert_eq!(&secretbox_open(&key, &ours).unwrap()[..], &plain[..]);
            assert_eq!(cipher.decrypt(&nonce.into(), &ours[24..]).unwrap(), plain);
        }
    }

    /// A flipped bit anywhere (nonce, tag, ciphertext) or a wrong key is refused, never
    /// decrypted: the tag is checked before any plaintext is released.
    #[test]
    fn secretbox_refuses_every_tampering() {
        let key = [9u8; 32];
        let sealed = secretbox_seal_with_nonce(&key, &[3u8; 24], &[0x5au8; 100]);
        for i in 0..sealed.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = sealed.clone();
                bad[i] ^= bit;
                assert_eq!(
                    secretbox_open(&key, &bad).unwrap_err(),
                    SymmetricError::Authentication,
                    "byte {i} bit {bit:#x}"
                );
            }
        }
        let mut other = key;
        other[31] ^= 1;
        assert_eq!(
            secretbox_open(&other, &sealed).unwrap_err(),
            SymmetricError::Authentication
        );
        // Appending or removing a byte is a different (invalid) box, not a truncation error.
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(secretbox_open(&key, &longer).is_err());
        assert!(secretbox_open(&key, &sealed[..sealed.len() - 1]).is_err());
        // The empty message: exactly the overhead.
        let empty = secretbox_seal_with_nonce(&key, &[0u8; 24], b"");
        assert_eq!(empty.len(), SECRETBOX_OVERHEAD);
        assert!(secretbox_open(&key, &empty).unwrap().is_empty());
    }

    #[test]
    fn ed25519_round_trip_and_tamper() {
        let seed = [7u8; 32];
        let signed = ed25519_sign(&seed, b"manifest");
        let pk = ed25519_public(&seed);
        assert_eq!(ed25519_verify(&pk, &signed).unwrap(), b"manifest");
        let mut bad = signed.clone();
        bad[70] ^= 1;
        assert_eq!(
            ed25519_verify(&pk, &bad).unwrap_err(),
            SymmetricError::BadSignature
        );
        assert_eq!(
            ed25519_verify(&pk, &signed[..63]).unwrap_err(),
            SymmetricError::ShortSignedBlob
        );
    }
}

//! Mechanism negotiation: which of the [`MechanismPath`]s a token can run, probed with
//! `C_GetMechanismInfo` (filtered by the HSM profile's preference order) and cached per token.
//! A path the token lists but refuses at `C_*Init` with our parameters (SoftHSM 2.6.1 and
//! OAEP-SHA256) is dropped from the cache the first time it is refused.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use cryptoki::mechanism::MechanismType;
use serde::Serialize;

use super::super::MechanismPath;
use super::module::TokenRef;

/// The negotiated paths of one token, best first.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Negotiated {
    pub decrypt: Vec<MechanismPath>,
    pub sign: Vec<MechanismPath>,
}

type CacheKey = (PathBuf, u64, String, usize);

fn cache() -> &'static Mutex<HashMap<CacheKey, Negotiated>> {
    static CACHE: OnceLock<Mutex<HashMap<CacheKey, Negotiated>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn key(token: &TokenRef, key_bits: usize) -> CacheKey {
    (
        token.module.path.clone(),
        token.slot.id(),
        token.description.serial.clone(),
        key_bits,
    )
}

/// The token-side mechanism each path needs, and whether it must allow decrypt (else sign).
pub(crate) fn required_mechanism(path: MechanismPath) -> (MechanismType, bool) {
    match path {
        MechanismPath::NativeOaepSha256 => (MechanismType::RSA_PKCS_OAEP, true),
        MechanismPath::RawRsaHostOaep => (MechanismType::RSA_X_509, true),
        MechanismPath::NativeSha256Pss => (MechanismType::SHA256_RSA_PKCS_PSS, false),
        MechanismPath::HostDigestPss => (MechanismType::RSA_PKCS_PSS, false),
        MechanismPath::RawRsaHostPss => (MechanismType::RSA_X_509, false),
    }
}

fn supported(token: &TokenRef, path: MechanismPath, key_bits: usize) -> bool {
    let (mech, decrypt) = required_mechanism(path);
    match token.module.ctx.get_mechanism_info(token.slot, mech) {
        Ok(info) => {
            let op = if decrypt { info.decrypt() } else { info.sign() };
            // Some modules report sizes in bytes or 0 for "no limit"; only apply sane bounds.
            let (min, max) = (info.min_key_size(), info.max_key_size());
            let size_ok = key_bits == 0 || max < 512 || (min <= key_bits && key_bits <= max);
            op && size_ok
        }
        Err(_) => false,
    }
}

/// The paths this token supports for a key of `key_bits` (0 = any), in profile order.
pub(crate) fn negotiate(token: &TokenRef, key_bits: usize) -> Negotiated {
    let k = key(token, key_bits);
    if let Some(n) = cache().lock().unwrap_or_else(|e| e.into_inner()).get(&k) {
        return n.clone();
    }
    let prefs = token
        .module
        .profile
        .as_ref()
        .map(|p| p.mechanisms.clone())
        .unwrap_or_default();
    let negotiated = Negotiated {
        decrypt: prefs
            .decrypt
            .iter()
            .copied()
            .filter(|p| supported(token, *p, key_bits))
            .collect(),
        sign: prefs
            .sign
            .iter()
            .copied()
            .filter(|p| supported(token, *p, key_bits))
            .collect(),
    };
    cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(k, negotiated.clone());
    negotiated
}

/// Drops `path` from the token's cached paths after the token refused it.
pub(crate) fn mark_refused(token: &TokenRef, path: MechanismPath) {
    let mut cache = cache().lock().unwrap_or_else(|e| e.into_inner());
    let this = key(token, 0);
    for (k, n) in cache.iter_mut() {
        if (&k.0, k.1, &k.2) == (&this.0, this.1, &this.2) {
            n.decrypt.retain(|p| *p != path);
            n.sign.retain(|p| *p != path);
        }
    }
}

//! `token list` / `token info`: which modules are installed (per HSM profile), their tokens,
//! flags, free slots, PIN counter state and negotiated mechanism paths. No login needed.

use std::path::PathBuf;

use cryptoki::slot::{Slot, TokenInfo};
use serde::Serialize;

use super::super::profile;
use super::super::uri::Pkcs11Uri;
use super::super::{TokenDescription, TokenError};
use super::mechanisms::{self, Negotiated};
use super::module::{describe, load_module, select_token, token_uri, Module};
use super::session::pin_counter_state;

/// One initialised token.
#[derive(Debug, Clone, Serialize)]
pub struct TokenSummary {
    pub slot_id: u64,
    #[serde(flatten)]
    pub description: TokenDescription,
    /// A URI selecting this token (by serial and label, with the module path).
    pub uri: String,
    pub flags: Vec<String>,
}

/// One module (from a profile, or named explicitly).
#[derive(Debug, Clone, Serialize)]
pub struct ModuleListing {
    pub profile: Option<String>,
    pub tested: Option<bool>,
    pub module_path: Option<PathBuf>,
    pub library: Option<String>,
    pub tokens: Vec<TokenSummary>,
    /// Slots with no token or an uninitialised token.
    pub free_slots: usize,
    /// Why the module could not be listed (not installed, failed to load, …).
    pub error: Option<String>,
}

/// Everything `token info` shows.
#[derive(Debug, Clone, Serialize)]
pub struct TokenDetails {
    #[serde(flatten)]
    pub summary: TokenSummary,
    pub module_path: PathBuf,
    pub profile: Option<String>,
    pub quirks: Vec<String>,
    pub pin_state: String,
    pub min_pin_length: usize,
    pub max_pin_length: usize,
    pub free_public_memory: Option<usize>,
    pub free_private_memory: Option<usize>,
    /// Mechanism paths this token offers for 2048-bit keys, best first.
    pub mechanisms: Negotiated,
}

pub(crate) fn token_flags(info: &TokenInfo) -> Vec<String> {
    let mut flags = Vec::new();
    let mut f = |on: bool, name: &str| {
        if on {
            flags.push(name.to_string());
        }
    };
    f(info.token_initialized(), "TOKEN_INITIALIZED");
    f(info.user_pin_initialized(), "USER_PIN_INITIALIZED");
    f(info.login_required(), "LOGIN_REQUIRED");
    f(info.rng(), "RNG");
    f(info.write_protected(), "WRITE_PROTECTED");
    f(
        info.protected_authentication_path(),
        "PROTECTED_AUTHENTICATION_PATH",
    );
    f(info.user_pin_count_low(), "USER_PIN_COUNT_LOW");
    f(info.user_pin_final_try(), "USER_PIN_FINAL_TRY");
    f(info.user_pin_locked(), "USER_PIN_LOCKED");
    f(info.user_pin_to_be_changed(), "USER_PIN_TO_BE_CHANGED");
    f(info.so_pin_locked(), "SO_PIN_LOCKED");
    flags
}

fn summary(module: &Module, slot: Slot, info: &TokenInfo) -> TokenSummary {
    let description = describe(info);
    TokenSummary {
        slot_id: slot.id(),
        uri: token_uri(&module.path, &description).to_uri_string(),
        description,
        flags: token_flags(info),
    }
}

fn list_module(path: PathBuf, profile: Option<(String, bool)>) -> ModuleListing {
    let mut listing = ModuleListing {
        profile: profile.as_ref().map(|p| p.0.clone()),
        tested: profile.as_ref().map(|p| p.1),
        module_path: Some(path.clone()),
        library: None,
        tokens: Vec::new(),
        free_slots: 0,
        error: None,
    };
    let module = match load_module(&path) {
        Ok(m) => m,
        Err(e) => {
            listing.error = Some(e.to_string());
            return listing;
        }
    };
    if let Ok(info) = module.ctx.get_library_info() {
        listing.library = Some(format!(
            "{} {} ({})",
            info.library_description().trim_end(),
            info.library_version(),
            info.manufacturer_id().trim_end()
        ));
    }
    let slots = match module.ctx.get_all_slots() {
        Ok(s) => s,
        Err(e) => {
            listing.error = Some(format!("C_GetSlotList: {e}"));
            return listing;
        }
    };
    for slot in slots {
        match module.ctx.get_token_info(slot) {
            Ok(info) if info.token_initialized() => {
                listing.tokens.push(summary(&module, slot, &info))
            }
            _ => listing.free_slots += 1,
        }
    }
    listing
}

/// Every profile's module (present or not), plus `extra` modules given explicitly.
pub fn list_modules(extra: &[PathBuf]) -> Result<Vec<ModuleListing>, TokenError> {
    let mut out = Vec::new();
    let mut seen: Vec<PathBuf> = Vec::new();
    for path in extra {
        if !path.is_file() {
            return Err(TokenError::ModuleNotFound(format!(
                "{} does not exist",
                path.display()
            )));
        }
        let canon = path.canonicalize().unwrap_or(path.clone());
        seen.push(canon.clone());
        let profile = profile::profile_for_module(&canon).map(|p| (p.name, p.tested));
        out.push(list_module(canon, profile));
    }
    for p in profile::all_profiles()? {
        match p.present_module() {
            Some(path) => {
                let canon = path.canonicalize().unwrap_or(path);
                if seen.contains(&canon) {
                    continue;
                }
                seen.push(canon.clone());
                out.push(list_module(canon, Some((p.name.clone(), p.tested))));
            }
            None => out.push(ModuleListing {
                profile: Some(p.name.clone()),
                tested: Some(p.tested),
                module_path: None,
                library: None,
                tokens: Vec::new(),
                free_slots: 0,
                error: Some("not installed (no candidate module path exists)".into()),
            }),
        }
    }
    Ok(out)
}

/// `token info`: the token a URI selects.
pub fn token_details(uri: &Pkcs11Uri) -> Result<TokenDetails, TokenError> {
    let token = select_token(uri)?;
    let info = token.info()?;
    Ok(TokenDetails {
        summary: summary(&token.module, token.slot, &info),
        module_path: token.module.path.clone(),
        profile: token.module.profile.as_ref().map(|p| p.name.clone()),
        quirks: token
            .module
            .profile
            .as_ref()
            .map(|p| p.quirks.clone())
            .unwrap_or_default(),
        pin_state: pin_counter_state(&token),
        min_pin_length: info.min_pin_length(),
        max_pin_length: info.max_pin_length(),
        free_public_memory: info.free_public_memory(),
        free_private_memory: info.free_private_memory(),
        mechanisms: mechanisms::negotiate(&token, 2048),
    })
}

//! Loading PKCS#11 modules (once per process: `C_Initialize` may only run once) and selecting a
//! token by label, serial, manufacturer, model or slot id.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::slot::{Slot, TokenInfo};

use super::super::profile::{self, Profile};
use super::super::uri::Pkcs11Uri;
use super::super::{TokenDescription, TokenError};
use super::ck_error;

/// Environment variable naming a default module when a URI gives neither `module-path` nor
/// `module-name`.
pub const MODULE_ENV: &str = "SEQUESTER_CUSTODY_MODULE";

/// A loaded and initialised module.
pub struct Module {
    pub path: PathBuf,
    pub ctx: Pkcs11,
    pub profile: Option<Profile>,
    /// The module's function list, for the one call cryptoki cannot make (see [`RawFunctions`]).
    pub raw: Option<RawFunctions>,
}

/// `C_DecryptInit` / `C_Decrypt` taken from the module's own function list. cryptoki's
/// `Session::decrypt` always asks the output length first (`pData = NULL`), which kryoptic 1.5.4
/// answers with CKR_GENERAL_ERROR for CKM_RSA_X_509; raw RSA output is exactly k bytes, so the
/// fallback path calls `C_Decrypt` once with a k-byte buffer instead.
pub struct RawFunctions {
    // Keeps the dlopen reference alive (same library instance as cryptoki's: same state).
    _lib: cryptoki_sys::Pkcs11,
    pub decrypt_init: unsafe extern "C" fn(
        cryptoki_sys::CK_SESSION_HANDLE,
        *mut cryptoki_sys::CK_MECHANISM,
        cryptoki_sys::CK_OBJECT_HANDLE,
    ) -> cryptoki_sys::CK_RV,
    pub decrypt: unsafe extern "C" fn(
        cryptoki_sys::CK_SESSION_HANDLE,
        *mut u8,
        cryptoki_sys::CK_ULONG,
        *mut u8,
        *mut cryptoki_sys::CK_ULONG,
    ) -> cryptoki_sys::CK_RV,
}

fn load_raw_functions(path: &Path) -> Option<RawFunctions> {
    // SAFETY: the same module cryptoki already loaded and initialised; dlopen returns the same
    // instance, and C_GetFunctionList only fills in a pointer to a static table.
    unsafe {
        let lib = cryptoki_sys::Pkcs11::new(path).ok()?;
        let mut list: *mut cryptoki_sys::CK_FUNCTION_LIST = std::ptr::null_mut();
        if lib.C_GetFunctionList.is_err()
            || lib.C_GetFunctionList(&mut list) != cryptoki_sys::CKR_OK
            || list.is_null()
        {
            return None;
        }
        let decrypt_init = (*list).C_DecryptInit?;
        let decrypt = (*list).C_Decrypt?;
        Some(RawFunctions {
            _lib: lib,
            decrypt_init,
            decrypt,
        })
    }
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module").field("path", &self.path).finish()
    }
}

fn modules() -> &'static Mutex<HashMap<PathBuf, Arc<Module>>> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Arc<Module>>>> = OnceLock::new();
    MODULES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Loads and initialises the module at `path`, or returns the already loaded one.
pub fn load_module(path: &Path) -> Result<Arc<Module>, TokenError> {
    if !path.is_file() {
        return Err(TokenError::ModuleNotFound(format!(
            "{} does not exist",
            path.display()
        )));
    }
    let key = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mut cache = modules().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = cache.get(&key) {
        return Ok(m.clone());
    }
    let ctx = Pkcs11::new(&key).map_err(|e| TokenError::ModuleLoad {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(TokenError::ModuleLoad {
                path: path.display().to_string(),
                reason: format!("C_Initialize failed: {e}"),
            })
        }
    }
    let module = Arc::new(Module {
        raw: load_raw_functions(&key),
        profile: profile::profile_for_module(&key),
        path: key.clone(),
        ctx,
    });
    cache.insert(key, module.clone());
    Ok(module)
}

/// The module paths a URI designates: `module-path`, else the profile of `module-name`, else
/// [`MODULE_ENV`], else every profile's module that is present on this machine.
pub fn module_candidates(uri: &Pkcs11Uri) -> Result<Vec<PathBuf>, TokenError> {
    if let Some(path) = &uri.module_path {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(TokenError::ModuleNotFound(format!(
                "{} does not exist (module-path)",
                path.display()
            )));
        }
        return Ok(vec![path]);
    }
    if let Some(name) = &uri.module_name {
        let profile = profile::find_profile(name)?;
        return profile.present_module().map(|p| vec![p]).ok_or_else(|| {
            TokenError::ModuleNotFound(format!(
                "profile `{name}`: none of its module paths exists ({})",
                profile
                    .expanded_module_paths()
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        });
    }
    if let Some(path) = std::env::var_os(MODULE_ENV) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(TokenError::ModuleNotFound(format!(
                "{} does not exist ({MODULE_ENV})",
                path.display()
            )));
        }
        return Ok(vec![path]);
    }
    let mut found: Vec<PathBuf> = Vec::new();
    for p in profile::all_profiles()? {
        if let Some(m) = p.present_module() {
            let canon = m.canonicalize().unwrap_or(m);
            if !found.contains(&canon) {
                found.push(canon);
            }
        }
    }
    if found.is_empty() {
        return Err(TokenError::ModuleNotFound(
            "no module-path or module-name in the URI, and no profile's module is installed".into(),
        ));
    }
    Ok(found)
}

/// A token selected on a loaded module.
#[derive(Debug, Clone)]
pub struct TokenRef {
    pub module: Arc<Module>,
    pub slot: Slot,
    pub description: TokenDescription,
}

impl TokenRef {
    pub fn info(&self) -> Result<TokenInfo, TokenError> {
        self.module
            .ctx
            .get_token_info(self.slot)
            .map_err(|e| ck_error("C_GetTokenInfo", e))
    }

    /// A URI selecting this token again (serial + label + module path).
    pub fn uri(&self) -> Pkcs11Uri {
        token_uri(&self.module.path, &self.description)
    }
}

/// A URI selecting a token by label and serial on the module at `module_path`.
pub fn token_uri(module_path: &Path, description: &TokenDescription) -> Pkcs11Uri {
    Pkcs11Uri {
        token: Some(description.label.clone()),
        serial: Some(description.serial.clone()).filter(|s| !s.is_empty()),
        module_path: Some(module_path.display().to_string()),
        ..Default::default()
    }
}

pub fn describe(info: &TokenInfo) -> TokenDescription {
    TokenDescription {
        backend: "pkcs11".into(),
        manufacturer: info.manufacturer_id().trim_end().to_string(),
        model: info.model().trim_end().to_string(),
        serial: info.serial_number().trim_end().to_string(),
        label: info.label().trim_end().to_string(),
    }
}

fn matches(uri: &Pkcs11Uri, slot: Slot, d: &TokenDescription) -> bool {
    // `Option::is_none_or` needs Rust 1.82; the crate supports 1.80.
    fn ok<T: PartialEq<U>, U: ?Sized>(want: &Option<T>, have: &U) -> bool {
        want.as_ref().map_or(true, |w| w == have)
    }
    ok(&uri.token, d.label.as_str())
        && ok(&uri.serial, d.serial.as_str())
        && ok(&uri.manufacturer, d.manufacturer.as_str())
        && ok(&uri.model, d.model.as_str())
        && ok(&uri.slot_id, &slot.id())
}

/// Selects exactly one initialised token matching the URI's token attributes.
pub fn select_token(uri: &Pkcs11Uri) -> Result<TokenRef, TokenError> {
    let candidates = module_candidates(uri)?;
    let explicit = uri.module_path.is_some() || uri.module_name.is_some();
    let mut matched = Vec::new();
    let mut load_errors = Vec::new();
    for path in candidates {
        let module = match load_module(&path) {
            Ok(m) => m,
            // When searching every installed module, one broken module must not hide the others.
            Err(e) if !explicit => {
                load_errors.push(e.to_string());
                continue;
            }
            Err(e) => return Err(e),
        };
        let slots = module
            .ctx
            .get_slots_with_initialized_token()
            .map_err(|e| ck_error("C_GetSlotList", e))?;
        for slot in slots {
            let info = module
                .ctx
                .get_token_info(slot)
                .map_err(|e| ck_error("C_GetTokenInfo", e))?;
            let description = describe(&info);
            if matches(uri, slot, &description) {
                matched.push(TokenRef {
                    module: module.clone(),
                    slot,
                    description,
                });
            }
        }
    }
    match matched.len() {
        0 => {
            let mut what = uri.token_selector();
            if !load_errors.is_empty() {
                what.push_str(&format!(
                    " (modules that failed to load: {})",
                    load_errors.join("; ")
                ));
            }
            Err(TokenError::NoSuchToken(what))
        }
        1 => Ok(matched.remove(0)),
        count => Err(TokenError::AmbiguousToken {
            selector: uri.token_selector(),
            count,
        }),
    }
}

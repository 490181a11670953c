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
use super::{ck_error, registry};

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

/// `C_Decrypt` / `C_Sign` taken from the module's own function list. cryptoki's
/// `Session::decrypt` always asks the output length first (`pData = NULL`), which kryoptic 1.5.4
/// answers with CKR_GENERAL_ERROR for CKM_RSA_X_509; raw RSA output is exactly k bytes, so the
/// fallback path calls `C_Decrypt` once with a k-byte buffer instead. And `Session::sign` /
/// `decrypt` run the `*Init` call and the operation together, leaving no room for the
/// context-specific login a `CKA_ALWAYS_AUTHENTICATE` key needs in between.
///
/// The pointers come from the very function list cryptoki obtained and initialised, never from
/// a second `C_GetFunctionList` call: p11-kit's client and proxy modules build a new,
/// uninitialised instance for every call (each client instance is its own connection to
/// `p11-kit server`), so a second list answers `CKR_CRYPTOKI_NOT_INITIALIZED` and does not
/// know cryptoki's sessions. The pointers stay valid as long as the module's [`Pkcs11`] does,
/// which [`Module`] owns alongside them.
#[derive(Clone, Copy)]
pub struct RawFunctions {
    pub decrypt: SinglePartFn,
    pub sign: SinglePartFn,
}

/// `C_Decrypt` and `C_Sign` share this signature (session, input, input length, output,
/// output length).
pub(crate) type SinglePartFn = unsafe extern "C" fn(
    cryptoki_sys::CK_SESSION_HANDLE,
    *mut u8,
    cryptoki_sys::CK_ULONG,
    *mut u8,
    *mut cryptoki_sys::CK_ULONG,
) -> cryptoki_sys::CK_RV;

/// `C_Decrypt` and `C_Sign` of the function list cryptoki holds for `ctx`.
///
/// cryptoki 0.12 keeps that list private; its only public view is the derived `Debug` output
/// (`C_Decrypt: Some(0x7f…)`), which prints each entry's address. Reading the two addresses
/// from there is what takes the entries from the same list rather than a second one. A format
/// cryptoki might change is guarded twice: the parse must find exactly the expected fields, and
/// `raw_functions_are_cryptokis` checks the result against the module's static list (SoftHSM2).
fn raw_functions(ctx: &Pkcs11) -> Option<RawFunctions> {
    let text = format!("{ctx:?}");
    let decrypt = function_address(&text, "C_Decrypt")?;
    let sign = function_address(&text, "C_Sign")?;
    // SAFETY: both addresses are entries of the module's CK_FUNCTION_LIST (C_Decrypt and C_Sign,
    // whose signature is SinglePartFn), printed by cryptoki from the list it calls itself.
    unsafe {
        Some(RawFunctions {
            decrypt: std::mem::transmute::<usize, SinglePartFn>(decrypt),
            sign: std::mem::transmute::<usize, SinglePartFn>(sign),
        })
    }
}

/// The address printed for `field` (`field: Some(0x…)`) in a `Debug` dump; `None` when the
/// field is absent, `None` in the list, or appears more than once.
fn function_address(debug: &str, field: &str) -> Option<usize> {
    let needle = format!(" {field}: Some(0x");
    let mut hits = debug.match_indices(&needle);
    let (at, _) = hits.next()?;
    if hits.next().is_some() {
        return None;
    }
    let digits: String = debug[at + needle.len()..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit())
        .collect();
    let address = usize::from_str_radix(&digits, 16).ok()?;
    (address != 0 && debug[at + needle.len() + digits.len()..].starts_with(')')).then_some(address)
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
pub(crate) fn load_module(path: &Path) -> Result<Arc<Module>, TokenError> {
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
        raw: raw_functions(&ctx),
        profile: profile::profile_for_module(&key),
        path: key.clone(),
        ctx,
    });
    cache.insert(key, module.clone());
    Ok(module)
}

/// The library `module-name=NAME` designates: the installed module of the HSM profile of that
/// name, else the module p11-kit registers under that name (see [`registry`]).
pub(crate) fn module_by_name(name: &str) -> Result<PathBuf, TokenError> {
    let profile = profile::all_profiles()?
        .into_iter()
        .rev()
        .find(|p| p.name == name);
    if let Some(path) = profile.as_ref().and_then(Profile::present_module) {
        return Ok(path);
    }
    if let Some(path) = registry::resolve_module_name(name)? {
        return Ok(path);
    }
    Err(TokenError::ModuleNotFound(match profile {
        Some(profile) => format!(
            "profile `{name}`: none of its module paths exists ({}), and p11-kit registers no \
             module of that name",
            profile
                .expanded_module_paths()
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => format!(
            "no HSM profile named `{name}`, and no p11-kit module of that name (module-name=; \
             p11-kit reads {}/*.module, {}/*.module and ~/.config/pkcs11/modules/*.module)",
            registry::PACKAGE_MODULE_CONFIGS,
            registry::ADMIN_MODULE_CONFIGS
        ),
    }))
}

/// The module paths a URI designates: `module-path`, else `module-name` (an HSM profile or
/// p11-kit's registry), else [`MODULE_ENV`], else every profile's module that is present on
/// this machine.
pub(crate) fn module_candidates(uri: &Pkcs11Uri) -> Result<Vec<PathBuf>, TokenError> {
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
        return module_by_name(name).map(|p| vec![p]);
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
    pub(crate) fn info(&self) -> Result<TokenInfo, TokenError> {
        self.module
            .ctx
            .get_token_info(self.slot)
            .map_err(|e| ck_error("C_GetTokenInfo", e))
    }

    /// A URI selecting this token again (serial + label + module path).
    pub(crate) fn uri(&self) -> Pkcs11Uri {
        token_uri(&self.module.path, &self.description)
    }
}

/// A URI selecting a token by label and serial on the module at `module_path`.
pub(crate) fn token_uri(module_path: &Path, description: &TokenDescription) -> Pkcs11Uri {
    Pkcs11Uri {
        token: Some(description.label.clone()),
        serial: Some(description.serial.clone()).filter(|s| !s.is_empty()),
        module_path: Some(module_path.display().to_string()),
        ..Default::default()
    }
}

pub(crate) fn describe(info: &TokenInfo) -> TokenDescription {
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
        // Likewise a module that loads but cannot enumerate (e.g. a smartcard module whose
        // pcscd is not running answers C_GetSlotList with CKR_DEVICE_ERROR) is skipped when
        // searching, and reported only if no token matches.
        let slots = match module.ctx.get_slots_with_initialized_token() {
            Ok(slots) => slots,
            Err(e) if !explicit => {
                load_errors.push(format!(
                    "{}: {}",
                    path.display(),
                    ck_error("C_GetSlotList", e)
                ));
                continue;
            }
            Err(e) => return Err(ck_error("C_GetSlotList", e)),
        };
        for slot in slots {
            let info = match module.ctx.get_token_info(slot) {
                Ok(info) => info,
                Err(e) if !explicit => {
                    load_errors.push(format!(
                        "{}: {}",
                        path.display(),
                        ck_error("C_GetTokenInfo", e)
                    ));
                    continue;
                }
                Err(e) => return Err(ck_error("C_GetTokenInfo", e)),
            };
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
                what.push_str(&format!(" (modules skipped: {})", load_errors.join("; ")));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_addresses_are_read_exactly() {
        let dump = "L { C_Decrypt: Some(0x7f00aa), C_DecryptInit: Some(0x10), C_Sign: None }";
        assert_eq!(function_address(dump, "C_Decrypt"), Some(0x7f00aa));
        assert_eq!(function_address(dump, "C_DecryptInit"), Some(0x10));
        assert_eq!(function_address(dump, "C_Sign"), None);
        assert_eq!(
            function_address("{ C_Sign: Some(0x1), C_Sign: Some(0x2) }", "C_Sign"),
            None
        );
        assert_eq!(function_address("{ C_Sign: Some(0x12z) }", "C_Sign"), None);
    }

    /// SoftHSM2's C_GetFunctionList returns one static list, so the entries cryptoki holds must
    /// be the ones a direct call returns: this catches a change in cryptoki's Debug output.
    #[test]
    fn raw_functions_are_cryptokis() {
        let Some(module) = [
            "/usr/lib/softhsm/libsofthsm2.so",
            "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        ]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file()) else {
            assert!(
                std::env::var_os("SEQUESTER_TEST_REQUIRE_ALL").is_none(),
                "SoftHSM2 is not installed"
            );
            eprintln!("SKIPPED raw_functions_are_cryptokis: SoftHSM2 not installed");
            return;
        };
        let ctx = Pkcs11::new(module).unwrap();
        let raw = raw_functions(&ctx).expect("C_Decrypt and C_Sign read from cryptoki's list");
        // SAFETY: the SoftHSM2 library; C_GetFunctionList only stores a pointer to its table.
        unsafe {
            let lib = cryptoki_sys::Pkcs11::new(module).unwrap();
            let mut list: *mut cryptoki_sys::CK_FUNCTION_LIST = std::ptr::null_mut();
            assert_eq!(lib.C_GetFunctionList(&mut list), cryptoki_sys::CKR_OK);
            assert_eq!(raw.decrypt as usize, (*list).C_Decrypt.unwrap() as usize);
            assert_eq!(raw.sign as usize, (*list).C_Sign.unwrap() as usize);
        }
    }
}

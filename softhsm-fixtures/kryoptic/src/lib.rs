//! The PKCS#11 entry points of kryoptic, exported under their standard C names.
//!
//! kryoptic-lib implements everything as `fn_*` functions; a PKCS#11 module only has to export
//! `C_GetFunctionList` (2.40) and `C_GetInterfaceList` / `C_GetInterface` (3.x), which hand the
//! caller the vtables.

use kryoptic_lib::fns::general::{fn_get_function_list, fn_get_interface, fn_get_interface_list};
use kryoptic_lib::pkcs11::{
    CK_FLAGS, CK_FUNCTION_LIST, CK_INTERFACE, CK_RV, CK_ULONG, CK_UTF8CHAR, CK_VERSION,
};

/// # Safety
/// Called by PKCS#11 applications with a valid out-pointer.
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(fnlist: *mut *const CK_FUNCTION_LIST) -> CK_RV {
    fn_get_function_list(fnlist as _)
}

/// # Safety
/// Called by PKCS#11 applications with valid pointers.
#[no_mangle]
pub unsafe extern "C" fn C_GetInterfaceList(
    interfaces_list: *mut CK_INTERFACE,
    count: *mut CK_ULONG,
) -> CK_RV {
    fn_get_interface_list(interfaces_list as _, count)
}

/// # Safety
/// Called by PKCS#11 applications with valid pointers.
#[no_mangle]
pub unsafe extern "C" fn C_GetInterface(
    interface_name: *mut CK_UTF8CHAR,
    version: *mut CK_VERSION,
    interface: *mut *mut CK_INTERFACE,
    flags: CK_FLAGS,
) -> CK_RV {
    fn_get_interface(interface_name as _, version as _, interface as _, flags)
}

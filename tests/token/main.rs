//! Token tests: SoftHSM2, kryoptic and p11-kit through their real PKCS#11 modules.
//! One test binary (the crate links once); one module per area, sharing `tests/common`.

#[path = "../common/mod.rs"]
mod common;

mod p11kit;
mod token_crypto;
mod token_errors;
mod token_hardening;
mod token_import;
mod token_keygen;
mod token_list;

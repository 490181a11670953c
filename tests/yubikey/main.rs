//! YubiKey PIV tests on virtual cards (pcscd + vpcd); real-hardware tests are ignored.
//! One test binary (the crate links once); one module per area, sharing `tests/common`.

#[path = "../common/mod.rs"]
mod common;

mod yubikey_attestation;
mod yubikey_card;
mod yubikey_hardware;
mod yubikey_interop;
mod yubikey_parsec;
mod yubikey_pkcs11;
mod yubikey_token_list;

//! pcscd not reachable -> a clear error that names pcscd. Its own test binary: the PC/SC
//! client library reads `PCSCLITE_CSOCK_NAME` once per process, and pointing it at a socket
//! nobody listens on is exactly what a client sees when pcscd is stopped (without stopping the
//! pcscd other test binaries share).
#![cfg(feature = "yubikey")] // the YubiKey PIV backend

use sequester_custody::token::{yubikey, TokenError};

#[test]
fn pcscd_not_running_is_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    // Set before any PC/SC call in this process (this is the binary's only test).
    std::env::set_var("PCSCLITE_CSOCK_NAME", dir.path().join("no-pcscd.comm"));
    for result in [
        yubikey::card_info("yubikey:").map(|_| ()),
        yubikey::open_key(
            "yubikey:serial=12345678;slot=9d",
            &sequester_custody::token::NonInteractive,
        )
        .map(|_| ()),
        yubikey::list_keys("yubikey:").map(|_| ()),
    ] {
        match result {
            Err(e @ TokenError::Backend { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains("pcscd") && text.contains("not running"),
                    "{text}"
                );
            }
            other => panic!("expected a pcscd error, got {:?}", other.err()),
        }
    }
}

//! YubiKey PIV backend (issue 6).

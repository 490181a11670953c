//! PKCS#11 backend (issue 2).

//! Host-side RSA padding for tokens that only do raw RSA: constant-time EME-OAEP decoding
//! (SHA-256, MGF1-SHA-256, empty label) and EMSA-PSS encoding (SHA-256, salt 32).
//! Owned by the token foundation (issue 2).

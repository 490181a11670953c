//! Reading a legacy openssl RSA private key for `key import`: PKCS#8 (`PRIVATE KEY`), PKCS#1
//! (`RSA PRIVATE KEY`) and passphrase-protected PKCS#8 (`ENCRYPTED PRIVATE KEY`, what
//! `openssl genrsa -aes256` writes with OpenSSL 3). The parsed key zeroizes itself on drop.

use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::RsaPrivateKey;
use zeroize::Zeroizing;

use super::super::TokenError;

fn bad(reason: impl Into<String>) -> TokenError {
    TokenError::UnsupportedKey(reason.into())
}

/// Parses `text`; `passphrase` is called only for an encrypted key.
pub fn parse_private_key_pem(
    text: &str,
    passphrase: impl FnOnce() -> Result<Zeroizing<String>, TokenError>,
) -> Result<RsaPrivateKey, TokenError> {
    let doc = pem::parse(text).map_err(|e| bad(format!("not a PEM private key: {e}")))?;
    let tag = doc.tag().to_string();
    let legacy_encrypted =
        doc.headers().get("Proc-Type").is_some() || doc.headers().get("DEK-Info").is_some();
    // Take the DER out of the PEM object so that it is zeroized when dropped.
    let der = Zeroizing::new(doc.into_contents());
    match tag.as_str() {
        "PRIVATE KEY" => RsaPrivateKey::from_pkcs8_der(&der)
            .map_err(|e| bad(format!("PKCS#8 key is not a valid RSA key: {e}"))),
        "RSA PRIVATE KEY" => {
            if legacy_encrypted {
                return Err(bad(
                    "legacy encrypted PEM (Proc-Type/DEK-Info) is not supported: convert it with \
                     `openssl pkcs8 -topk8 -v2 aes-256-cbc` first",
                ));
            }
            RsaPrivateKey::from_pkcs1_der(&der)
                .map_err(|e| bad(format!("PKCS#1 key is not a valid RSA key: {e}")))
        }
        "ENCRYPTED PRIVATE KEY" => {
            let info = pkcs8::EncryptedPrivateKeyInfo::try_from(der.as_slice())
                .map_err(|e| bad(format!("malformed encrypted PKCS#8: {e}")))?;
            let pass = passphrase()?;
            let plain = info.decrypt(pass.as_bytes()).map_err(|_| {
                TokenError::Refused(
                    "cannot decrypt the key: wrong passphrase (or unsupported encryption)".into(),
                )
            })?;
            RsaPrivateKey::from_pkcs8_der(plain.as_bytes())
                .map_err(|e| bad(format!("decrypted PKCS#8 key is not a valid RSA key: {e}")))
        }
        other => Err(bad(format!(
            "PEM label `{other}` is not an RSA private key (PRIVATE KEY, RSA PRIVATE KEY or \
             ENCRYPTED PRIVATE KEY)"
        ))),
    }
}

//! Parsec's PEM text files for sequester service and revocation certificates (docs/formats.md
//! §4.4).
//!
//! Writing: standard base64 with padding, 64 characters per line, LF, one LF after the footer.
//! Reading: like Parsec's server CLI (trim, split lines on LF/CRLF/CR, exact header and footer,
//! lenient base64 between them).

use base64::Engine;

use super::sequester::ServiceId;
use super::{DateTime, FormatError};

/// Which certificate file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertificateKind {
    Service,
    Revocation,
}

impl CertificateKind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Service => "PARSEC SEQUESTER SERVICE CERTIFICATE",
            Self::Revocation => "PARSEC SEQUESTER SERVICE REVOCATION CERTIFICATE",
        }
    }

    pub(crate) fn header(self) -> String {
        format!("-----BEGIN {}-----", self.label())
    }

    pub(crate) fn footer(self) -> String {
        format!("-----END {}-----", self.label())
    }

    /// The name Parsec's CLI gives the file when the output is a directory.
    pub(crate) fn file_name(self, service_id: ServiceId, timestamp: DateTime) -> String {
        let prefix = match self {
            Self::Service => "sequester_service_certificate",
            Self::Revocation => "sequester_service_revocation_certificate",
        };
        format!(
            "{prefix}-{}-{}.pem",
            service_id.hex(),
            timestamp.to_rfc3339()
        )
    }
}

impl std::fmt::Display for CertificateKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Service => "service certificate",
            Self::Revocation => "revocation certificate",
        })
    }
}

/// The PEM text of a signed certificate.
pub fn encode(kind: CertificateKind, signed: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(signed);
    let mut out = kind.header();
    out.push('\n');
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&kind.footer());
    out.push('\n');
    out
}

/// Reads a certificate file. With `expected`, only that kind is accepted (as the server's
/// `create_service` / `revoke_service` do); without, either kind is recognised by its header.
pub fn decode(
    text: &str,
    expected: Option<CertificateKind>,
) -> Result<(CertificateKind, Vec<u8>), FormatError> {
    let text = text.trim_start_matches('\u{feff}').trim();
    let lines: Vec<&str> = text.lines().flat_map(|l| l.split('\r')).collect();
    if lines.len() < 2 {
        return Err(FormatError::Pem(
            "not a valid Parsec certificate PEM file: fewer than 2 lines".into(),
        ));
    }
    let first = lines[0];
    let last = lines[lines.len() - 1];
    let kinds = match expected {
        Some(k) => vec![k],
        None => vec![CertificateKind::Service, CertificateKind::Revocation],
    };
    let Some(kind) = kinds.into_iter().find(|k| first == k.header()) else {
        let wanted = match expected {
            Some(k) => format!("`{}`", k.header()),
            None => format!(
                "`{}` or `{}`",
                CertificateKind::Service.header(),
                CertificateKind::Revocation.header()
            ),
        };
        let other = [CertificateKind::Service, CertificateKind::Revocation]
            .into_iter()
            .find(|k| first == k.header());
        let hint = match other {
            Some(k) => format!(" (this file is a {k})"),
            None => String::new(),
        };
        return Err(FormatError::Pem(format!(
            "wrong PEM header `{}`: expected {wanted}{hint}",
            truncate(first)
        )));
    };
    if last != kind.footer() {
        return Err(FormatError::Pem(format!(
            "wrong PEM footer `{}`: expected `{}` (file truncated?)",
            truncate(last),
            kind.footer()
        )));
    }
    // Lenient like Python's base64.b64decode: characters outside the alphabet are discarded.
    let body: String = lines[1..lines.len() - 1]
        .concat()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
        .collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireCanonical)
            .with_decode_allow_trailing_bits(true),
    );
    let bytes = engine.decode(body.as_bytes()).map_err(|e| {
        FormatError::Pem(format!(
            "invalid base64 in the certificate body ({e}); the file is truncated or damaged"
        ))
    })?;
    if bytes.is_empty() {
        return Err(FormatError::Pem("empty certificate body".into()));
    }
    Ok((kind, bytes))
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parsec::armor::tests::V5_ARMORED;

    const V5_PEM: &str = "-----BEGIN PARSEC SEQUESTER SERVICE REVOCATION CERTIFICATE-----
UlNBU1NBLVBTUy1TSEEyNTY6KzjRBt3Gup3s/HDpXaydo7vfaj4gKgpvgZ1KUsTJ
f0LXpfWtlcj/CodtHMwZ7tlDtbp/S5hCz62lRpV0PbRH6MmTV5P1cMcnsCusBlG8
buhnfHilPa6o1jb2lFe/LksRI/8DBrwtYpFoZFdjcU8dkmayIKleJeVwbSfaL73R
t48AKLUv/QBYlQIAhASDpHR5cGXZJXNlcXVlc3Rlcl9yZXZva2VkX3NlcnZpY2Vf
Y2VydGlmaWNhdGWpdGltZXN0YW1w1wEAA14u+taAAKppZNgCAAECADipwnrVGQ==
-----END PARSEC SEQUESTER SERVICE REVOCATION CERTIFICATE-----
";

    #[test]
    fn v5_pem_text_and_file_name() {
        let signed = hex::decode(V5_ARMORED).unwrap();
        assert_eq!(encode(CertificateKind::Revocation, &signed), V5_PEM);
        let (kind, bytes) = decode(V5_PEM, None).unwrap();
        assert_eq!((kind, bytes), (CertificateKind::Revocation, signed.clone()));
        let id: ServiceId = "00000000000000000000000000000001".parse().unwrap();
        assert_eq!(
            CertificateKind::Revocation.file_name(id, DateTime(947980800000000)),
            "sequester_service_revocation_certificate-00000000000000000000000000000001-2000-01-16T00:00:00Z.pem"
        );
        assert_eq!(
            CertificateKind::Service.file_name(id, DateTime(1739749097449003)),
            "sequester_service_certificate-00000000000000000000000000000001-2025-02-16T23:38:17.449003Z.pem"
        );
        // Lenient reading: CRLF, other widths, surrounding blank lines, stray characters.
        let crlf = format!("\n\n{}\r\n", V5_PEM.replace('\n', "\r\n"));
        assert_eq!(decode(&crlf, None).unwrap().1, signed);
        let b64: String = V5_PEM.lines().skip(1).take(5).collect();
        let wide = format!(
            "{}\n{} \n{}\n",
            CertificateKind::Revocation.header(),
            b64.replace('A', "A*"),
            CertificateKind::Revocation.footer()
        );
        assert_eq!(decode(&wide, None).unwrap().1, signed);
    }

    #[test]
    fn refusals_have_specific_messages() {
        let err = |text: &str, expected| decode(text, expected).unwrap_err().to_string();
        assert!(err("", None).contains("fewer than 2 lines"));
        assert!(err(
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            None
        )
        .contains("wrong PEM header"));
        let e = err(V5_PEM, Some(CertificateKind::Service));
        assert!(e.contains("this file is a revocation certificate"), "{e}");
        let no_footer: String = V5_PEM.lines().take(4).collect::<Vec<_>>().join("\n");
        assert!(err(&no_footer, None).contains("wrong PEM footer"));
        // Truncated base64 (the padding is cut off).
        let truncated = V5_PEM.replace("nrVGQ==", "nrVGQ");
        let e = err(&truncated, None);
        assert!(e.contains("invalid base64"), "{e}");
    }
}

//! Trust anchor (docs/formats.md §11): an export carries its own root verify key, so the
//! chain it verifies proves only self-consistency. What binds it to *the* organisation is that
//! key compared with one obtained out of band: an organisation address (`--org`), a key given as
//! hex (`--root-key`), or a pin recorded once per organisation ID (`org pin`).
//!
//! [`check`] is called right after the export is opened and before any token operation: a
//! mismatch is an [`AnchorError::Mismatch`] (exit code `EXIT_ANCHOR_MISMATCH`), no anchor at
//! all is a [`TrustReport`] whose `anchored` is false.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::db::ExportInfo;
use crate::parsec::DateTime;

/// `export verify`: internally consistent, but no pin, `--org` or `--root-key` anchors it.
pub const EXIT_NOT_ANCHORED: u8 = 3;
/// Any export command: the export's root key or organisation ID differs from the anchor.
pub(crate) const EXIT_ANCHOR_MISMATCH: u8 = 4;

#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    #[error("`{address}` is not a Parsec organisation address: {reason}")]
    BadAddress { address: String, reason: String },
    #[error("--root-key: {0}")]
    BadRootKey(String),
    #[error(
        "REFUSED: this export does not belong to the organisation you anchored. {detail}. \
         Nothing was decrypted and the token was not used."
    )]
    Mismatch { detail: String },
    #[error("pin file {path}: {reason}")]
    PinFile { path: PathBuf, reason: String },
    #[error(
        "organisation `{organization_id}` is already pinned to root key {pinned} (SHA-256 \
         {pinned_fingerprint}) in {path}; `org unpin {organization_id}` first if the organisation \
         really changed its root key"
    )]
    AlreadyPinned {
        organization_id: String,
        pinned: String,
        pinned_fingerprint: String,
        path: PathBuf,
    },
    #[error("organisation `{0}` has no pin")]
    NotPinned(String),
}

impl AnchorError {
    /// The process exit code documented for this error (docs/investigation.md).
    pub fn exit_code(&self) -> u8 {
        match self {
            AnchorError::Mismatch { .. } => EXIT_ANCHOR_MISMATCH,
            _ => 1,
        }
    }
}

/// SHA-256 of the 32 raw key bytes, hex: how a root key is named on screen and in records.
pub fn fingerprint(root_verify_key: &[u8; 32]) -> String {
    crate::crypto::sha256_hex(root_verify_key)
}

/// A Parsec organisation address: `parsec3://HOST[:PORT]/ORG?[no_ssl=true&]p=ROOT` (docs/formats.md
/// §11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrganizationAddr {
    pub host: String,
    pub port: Option<u16>,
    pub no_ssl: bool,
    pub organization_id: String,
    pub root_verify_key: [u8; 32],
}

/// Parsec's organisation ID alphabet (1..32 of `[A-Za-z0-9_-]`).
fn valid_organization_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl OrganizationAddr {
    pub fn parse(address: &str) -> Result<Self, AnchorError> {
        let bad = |reason: &str| AnchorError::BadAddress {
            address: address.to_string(),
            reason: reason.to_string(),
        };
        let rest = address
            .strip_prefix("parsec3://")
            .ok_or_else(|| bad("it does not start with parsec3://"))?;
        let (authority, rest) = rest
            .split_once('/')
            .ok_or_else(|| bad("no /ORGANIZATION after the host"))?;
        // `[v6]:port`, `host:port` or a bare host.
        let port_sep = match authority.rfind(']') {
            Some(end) => authority[end..].find(':').map(|i| end + i),
            None => authority.rfind(':'),
        };
        let (host, port) = match port_sep {
            Some(i) => {
                let p = &authority[i + 1..];
                let port = p
                    .parse::<u16>()
                    .map_err(|_| bad(&format!("port `{p}` is not a number 0..65535")))?;
                (&authority[..i], Some(port))
            }
            None => (authority, None),
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        let (organization_id, query) = rest
            .split_once('?')
            .ok_or_else(|| bad("no ?p=ROOT_KEY parameter (an organisation address carries it)"))?;
        if !valid_organization_id(organization_id) {
            return Err(bad(&format!(
                "organisation ID `{organization_id}` is not 1..32 characters of [A-Za-z0-9_-]"
            )));
        }
        let mut no_ssl = false;
        let mut p: Option<&str> = None;
        for param in query.split('&') {
            let (k, v) = param.split_once('=').unwrap_or((param, ""));
            match k {
                "p" if p.is_some() => return Err(bad("parameter p appears twice")),
                "p" => p = Some(v),
                "no_ssl" => no_ssl = v.eq_ignore_ascii_case("true"),
                "a" => {
                    return Err(bad(
                        "this is an action address (a=…: bootstrap, claim, …), not an \
                         organisation address; ask for the organisation address",
                    ))
                }
                _ => {}
            }
        }
        let p = p.ok_or_else(|| bad("no p=ROOT_KEY parameter"))?;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .map_err(|e| bad(&format!("p is not unpadded base64url ({e})")))?;
        // msgpack bin 8 of 32 bytes: c4 20 + key.
        let key: [u8; 32] = match raw.as_slice() {
            [0xc4, 0x20, key @ ..] if key.len() == 32 => key.try_into().expect("32 bytes"),
            _ => {
                return Err(bad(&format!(
                    "p decodes to {} bytes, not the 34-byte msgpack bin `c4 20` + 32-byte key",
                    raw.len()
                )))
            }
        };
        Ok(OrganizationAddr {
            host: host.to_string(),
            port,
            no_ssl,
            organization_id: organization_id.to_string(),
            root_verify_key: key,
        })
    }

    /// The address as Parsec prints it.
    pub fn to_url(&self) -> String {
        let mut p = vec![0xc4, 0x20];
        p.extend_from_slice(&self.root_verify_key);
        format!(
            "parsec3://{}{}/{}?{}p={}",
            self.host,
            self.port.map(|p| format!(":{p}")).unwrap_or_default(),
            self.organization_id,
            if self.no_ssl { "no_ssl=true&" } else { "" },
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(p)
        )
    }
}

/// `--root-key`: 64 hex digits (spaces and colons allowed between them).
pub fn parse_root_key(text: &str) -> Result<[u8; 32], AnchorError> {
    let clean: String = text
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    let bytes = hex::decode(&clean)
        .map_err(|_| AnchorError::BadRootKey(format!("`{text}` is not hexadecimal")))?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        AnchorError::BadRootKey(format!(
            "{} bytes; a root verify key is 32 bytes (64 hex digits)",
            b.len()
        ))
    })
}

/// One recorded pin.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pin {
    /// Root verify key, 64 hex digits.
    pub root_verify_key: String,
    /// Where the key came from (the organisation address, without secrets: it has none).
    pub source: String,
    pub pinned_at: String,
}

/// The pins, one per organisation ID: `pins.json` beside the ceremony journal.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PinStore {
    pub version: u32,
    #[serde(default)]
    pub organizations: BTreeMap<String, Pin>,
    #[serde(skip)]
    path: PathBuf,
}

/// `pins.json` in the directory of the ceremony journal (`$XDG_STATE_HOME/sequester-custody/`).
pub fn default_pin_path() -> PathBuf {
    crate::ceremony::journal::default_path().with_file_name("pins.json")
}

impl PinStore {
    /// Loads the pins (none if the file does not exist yet).
    pub fn load(path: &Path) -> Result<Self, AnchorError> {
        let err = |reason: String| AnchorError::PinFile {
            path: path.to_path_buf(),
            reason,
        };
        let mut store = match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str::<PinStore>(&text)
                .map_err(|e| err(format!("not a pin file ({e})")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => PinStore {
                version: 1,
                ..Default::default()
            },
            Err(e) => return Err(err(e.to_string())),
        };
        for (org, pin) in &store.organizations {
            parse_root_key(&pin.root_verify_key)
                .map_err(|e| err(format!("pin of `{org}`: {e}")))?;
        }
        store.path = path.to_path_buf();
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pinned key of `organization_id`.
    pub fn get(&self, organization_id: &str) -> Option<[u8; 32]> {
        self.organizations
            .get(organization_id)
            .and_then(|p| parse_root_key(&p.root_verify_key).ok())
    }

    /// Records `addr`; re-pinning the same key is a no-op, another key is refused.
    pub fn pin(&mut self, addr: &OrganizationAddr) -> Result<bool, AnchorError> {
        if let Some(existing) = self.get(&addr.organization_id) {
            if existing == addr.root_verify_key {
                return Ok(false);
            }
            return Err(AnchorError::AlreadyPinned {
                organization_id: addr.organization_id.clone(),
                pinned: hex::encode(existing),
                pinned_fingerprint: fingerprint(&existing),
                path: self.path.clone(),
            });
        }
        self.organizations.insert(
            addr.organization_id.clone(),
            Pin {
                root_verify_key: hex::encode(addr.root_verify_key),
                source: addr.to_url(),
                pinned_at: DateTime::now().to_rfc3339(),
            },
        );
        self.save()?;
        Ok(true)
    }

    pub fn unpin(&mut self, organization_id: &str) -> Result<Pin, AnchorError> {
        let pin = self
            .organizations
            .remove(organization_id)
            .ok_or_else(|| AnchorError::NotPinned(organization_id.to_string()))?;
        self.save()?;
        Ok(pin)
    }

    fn save(&self) -> Result<(), AnchorError> {
        let err = |reason: String| AnchorError::PinFile {
            path: self.path.clone(),
            reason,
        };
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let text = serde_json::to_string_pretty(self).map_err(|e| err(e.to_string()))? + "\n";
        crate::fsutil::write_atomic(
            &self.path,
            text.as_bytes(),
            crate::fsutil::Existing::Replace,
        )
        .map_err(|e| err(e.to_string()))
    }
}

/// What the operator gave on the command line.
#[derive(Debug, Clone, Default)]
pub struct AnchorInputs {
    pub org: Option<OrganizationAddr>,
    pub root_key: Option<[u8; 32]>,
}

/// How the export's root key was anchored.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AnchorSource {
    /// A pin recorded with `org pin`.
    Pin,
    /// `--org ADDR`.
    OrgAddress,
    /// `--root-key HEX`.
    RootKey,
}

impl std::fmt::Display for AnchorSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AnchorSource::Pin => "the pin",
            AnchorSource::OrgAddress => "--org",
            AnchorSource::RootKey => "--root-key",
        })
    }
}

/// The anchoring verdict, shown by every command and kept in the custody record.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TrustReport {
    pub organization_id: String,
    /// The export's `info.root_verify_key`, hex.
    pub root_verify_key: String,
    /// SHA-256 of the 32 key bytes, hex.
    pub root_key_fingerprint: String,
    pub anchored: bool,
    /// Every anchor that matched (all given anchors must match).
    pub anchored_by: Vec<AnchorSource>,
    /// The pin file consulted (when it had a pin for this organisation).
    pub pin_file: Option<String>,
}

impl TrustReport {
    /// The anchors that matched, in words (`the pin and --org`).
    pub fn anchored_by_text(&self) -> String {
        self.anchored_by
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(" and ")
    }

    /// One line for stderr.
    pub fn summary(&self) -> String {
        if self.anchored {
            format!(
                "Root key SHA-256 {} of organisation `{}`: ANCHORED (matches {})",
                self.root_key_fingerprint,
                self.organization_id,
                self.anchored_by_text()
            )
        } else {
            format!(
                "Root key SHA-256 {} of organisation `{}`: NOT ANCHORED (no pin, --org or \
                 --root-key): the export is checked only against the root key it carries itself",
                self.root_key_fingerprint, self.organization_id
            )
        }
    }

    /// How to anchor an unanchored export.
    pub fn how_to_pin(&self) -> String {
        format!(
            "The export claims root verify key {} (SHA-256 {}). Obtain the organisation address \
             (parsec3://…/{}?p=…) from the organisation itself, out of band (not from this \
             export), then run `sequester-custody org pin ADDRESS`, or pass --org ADDRESS or \
             --root-key HEX to this command.",
            self.root_verify_key, self.root_key_fingerprint, self.organization_id
        )
    }
}

/// Compares the export with every anchor given and the pin of its organisation (if any). All
/// must match; with none, the report says `anchored: false`. A root key pinned under another
/// organisation ID is a mismatch too (a renamed organisation ID must not dodge its pin).
pub fn check(
    info: &ExportInfo,
    inputs: &AnchorInputs,
    pins: &PinStore,
) -> Result<TrustReport, AnchorError> {
    let key = &info.root_verify_key;
    let org = &info.organization_id;
    let ours = || format!("root key SHA-256 {}", fingerprint(key));
    let mut anchored_by = Vec::new();
    if let Some(addr) = &inputs.org {
        if &addr.organization_id != org {
            return Err(AnchorError::Mismatch {
                detail: format!(
                    "--org names organisation `{}`, the export says `{org}`",
                    addr.organization_id
                ),
            });
        }
        if &addr.root_verify_key != key {
            return Err(AnchorError::Mismatch {
                detail: format!(
                    "--org carries root key SHA-256 {}, the export has {}",
                    fingerprint(&addr.root_verify_key),
                    ours()
                ),
            });
        }
        anchored_by.push(AnchorSource::OrgAddress);
    }
    if let Some(given) = &inputs.root_key {
        if given != key {
            return Err(AnchorError::Mismatch {
                detail: format!(
                    "--root-key has SHA-256 {}, the export has {}",
                    fingerprint(given),
                    ours()
                ),
            });
        }
        anchored_by.push(AnchorSource::RootKey);
    }
    let mut pin_file = None;
    if let Some(pinned) = pins.get(org) {
        pin_file = Some(pins.path().display().to_string());
        if &pinned != key {
            return Err(AnchorError::Mismatch {
                detail: format!(
                    "organisation `{org}` is pinned (in {}) to root key SHA-256 {}, the export \
                     has {}",
                    pins.path().display(),
                    fingerprint(&pinned),
                    ours()
                ),
            });
        }
        anchored_by.push(AnchorSource::Pin);
    }
    for (other, pin) in &pins.organizations {
        if other != org && parse_root_key(&pin.root_verify_key).ok().as_ref() == Some(key) {
            return Err(AnchorError::Mismatch {
                detail: format!(
                    "the export says organisation `{org}`, but its {} is pinned (in {}) for \
                     organisation `{other}`",
                    ours(),
                    pins.path().display()
                ),
            });
        }
    }
    Ok(TrustReport {
        organization_id: org.clone(),
        root_verify_key: hex::encode(key),
        root_key_fingerprint: fingerprint(key),
        anchored: !anchored_by.is_empty(),
        anchored_by,
        pin_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_HEX: &str = "1ac0f1aa7a087b900bd71475d760bc14f3836539ad977d15788ba54d0f8b3c8a";

    #[test]
    fn spec_examples_parse_and_round_trip() {
        // docs/formats.md §11, produced by parsec._parsec.ParsecOrganizationAddr of parsec-cloud
        // 3.9.3.
        for (url, host, port, no_ssl) in [
            (
                "parsec3://parsec.example/Org1?p=xCAawPGqegh7kAvXFHXXYLwU84NlOa2XfRV4i6VND4s8ig",
                "parsec.example",
                None,
                false,
            ),
            (
                "parsec3://127.0.0.1:6777/Org1?no_ssl=true&p=xCAawPGqegh7kAvXFHXXYLwU84NlOa2XfRV4i6VND4s8ig",
                "127.0.0.1",
                Some(6777),
                true,
            ),
        ] {
            let a = OrganizationAddr::parse(url).unwrap();
            assert_eq!(a.host, host);
            assert_eq!(a.port, port);
            assert_eq!(a.no_ssl, no_ssl);
            assert_eq!(a.organization_id, "Org1");
            assert_eq!(hex::encode(a.root_verify_key), KEY_HEX);
            assert_eq!(a.to_url(), url);
        }
    }

    #[test]
    fn malformed_addresses_are_refused_with_the_reason() {
        let p = "xCAawPGqegh7kAvXFHXXYLwU84NlOa2XfRV4i6VND4s8ig";
        for (url, needle) in [
            (format!("https://h/Org1?p={p}"), "parsec3://"),
            (format!("parsec3://h?p={p}"), "/ORGANIZATION"),
            ("parsec3://h/Org1".to_string(), "p=ROOT_KEY"),
            ("parsec3://h/Org1?no_ssl=true".to_string(), "no p="),
            (format!("parsec3:///Org1?p={p}"), "empty host"),
            (format!("parsec3://h:99999/Org1?p={p}"), "port"),
            (format!("parsec3://h/Org 1?p={p}"), "organisation ID"),
            (
                format!("parsec3://h/{}?p={p}", "O".repeat(33)),
                "organisation ID",
            ),
            (format!("parsec3://h/Org1?p={p}&p={p}"), "twice"),
            (
                format!("parsec3://h/Org1?a=claim_user&p={p}"),
                "action address",
            ),
            // Padded / standard alphabet / truncated / a bare 32-byte key (no c4 20 prefix).
            (format!("parsec3://h/Org1?p={p}=="), "base64url"),
            (
                "parsec3://h/Org1?p=xCAawPGqegh7kAvXFHXXYLwU84NlOa2XfRV4i6VND4s8".to_string(),
                "bytes",
            ),
            (
                format!(
                    "parsec3://h/Org1?p={}",
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32])
                ),
                "c4 20",
            ),
            (
                format!(
                    "parsec3://h/Org1?p={}",
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .encode([&[0xc4u8, 0x21][..], &[7u8; 33]].concat())
                ),
                "c4 20",
            ),
        ] {
            let err = OrganizationAddr::parse(&url).unwrap_err().to_string();
            assert!(err.contains(needle), "{url}: {err}");
        }
    }

    #[test]
    fn root_key_hex_is_checked() {
        assert_eq!(hex::encode(parse_root_key(KEY_HEX).unwrap()), KEY_HEX);
        assert!(parse_root_key(&KEY_HEX[2..]).is_err());
        assert!(parse_root_key("zz").is_err());
    }

    fn info(org: &str, key: [u8; 32]) -> ExportInfo {
        ExportInfo {
            organization_id: org.into(),
            realm_id: [1; 16],
            root_verify_key: key,
            snapshot_timestamp: DateTime(0),
            vlobs_total_bytes: 0,
            blocks_total_bytes: 0,
            certificates_export_done: true,
            vlobs_export_done: true,
            blocks_metadata_export_done: true,
            blocks_data_export_done: true,
        }
    }

    #[test]
    fn check_needs_every_anchor_to_match() {
        let dir = tempfile::tempdir().unwrap();
        let mut pins = PinStore::load(&dir.path().join("s/pins.json")).unwrap();
        let good = [1u8; 32];
        let forged = [2u8; 32];
        let none = AnchorInputs::default();
        let r = check(&info("Org", good), &none, &pins).unwrap();
        assert!(!r.anchored);
        assert!(r.summary().contains("NOT ANCHORED"));
        let addr = OrganizationAddr {
            host: "h".into(),
            port: None,
            no_ssl: false,
            organization_id: "Org".into(),
            root_verify_key: good,
        };
        assert!(pins.pin(&addr).unwrap());
        assert!(!pins.pin(&addr).unwrap(), "same pin twice is a no-op");
        let pins = PinStore::load(pins.path()).unwrap();
        let r = check(&info("Org", good), &none, &pins).unwrap();
        assert_eq!(r.anchored_by, vec![AnchorSource::Pin]);
        let e = check(&info("Org", forged), &none, &pins).unwrap_err();
        assert_eq!(e.exit_code(), EXIT_ANCHOR_MISMATCH);
        // The same forged key under another organisation ID is not anchored; the genuine key
        // under another ID is a mismatch.
        assert!(
            !check(&info("Other", forged), &none, &pins)
                .unwrap()
                .anchored
        );
        assert!(check(&info("Other", good), &none, &pins).is_err());
        let with_key = AnchorInputs {
            root_key: Some(good),
            ..Default::default()
        };
        let r = check(&info("Org", good), &with_key, &pins).unwrap();
        assert_eq!(
            r.anchored_by,
            vec![AnchorSource::RootKey, AnchorSource::Pin]
        );
        let with_org = AnchorInputs {
            org: Some(OrganizationAddr {
                organization_id: "Org2".into(),
                ..addr.clone()
            }),
            ..Default::default()
        };
        let e = check(&info("Org", good), &with_org, &pins).unwrap_err();
        assert!(e.to_string().contains("Org2"), "{e}");
        let mut pins = pins;
        let other = OrganizationAddr {
            root_verify_key: forged,
            ..addr
        };
        assert!(matches!(
            pins.pin(&other),
            Err(AnchorError::AlreadyPinned { .. })
        ));
        pins.unpin("Org").unwrap();
        assert!(PinStore::load(pins.path())
            .unwrap()
            .organizations
            .is_empty());
    }
}

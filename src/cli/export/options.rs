//! The clap arguments every `export` command shares: the trust anchor and the token key.

use std::path::PathBuf;

use sequester_custody::export::anchor;

/// The trust anchor (shared by every export command and `mount`): what the export's root key must
/// match. A pin recorded with `org pin` for the export's organisation is used as well.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct AnchorArgs {
    /// The organisation address as Parsec shows it (`parsec3://HOST/ORG?p=…`), obtained from the
    /// organisation out of band: the export must be of that organisation and root key.
    #[arg(long, value_name = "ADDR")]
    pub(crate) org: Option<String>,
    /// The organisation's root verify key, 64 hex digits, obtained out of band.
    #[arg(long, value_name = "HEX64")]
    pub(crate) root_key: Option<String>,
    /// Pin file (default: pins.json beside the ceremony journal,
    /// $XDG_STATE_HOME/sequester-custody/pins.json).
    #[arg(long, value_name = "FILE", env = "SEQUESTER_CUSTODY_PINS")]
    pub(crate) pins: Option<PathBuf>,
}

impl AnchorArgs {
    pub(crate) fn pin_path(&self) -> PathBuf {
        self.pins.clone().unwrap_or_else(anchor::default_pin_path)
    }
}

/// Arguments shared by every command that reads content.
#[derive(Debug, clap::Args)]
pub(crate) struct KeyArgs {
    /// The service private key on a token: `pkcs11:…` or `yubikey:…` URI.
    #[arg(long, env = "SEQUESTER_CUSTODY_KEY")]
    pub(crate) key: String,
    /// Service ID (32 hex digits), only when the token key matches several services.
    #[arg(long)]
    pub(crate) service_id: Option<String>,
    /// Read an export whose `*_done` flags are not all set.
    #[arg(long)]
    pub(crate) allow_incomplete: bool,
    #[command(flatten)]
    pub(crate) anchor: AnchorArgs,
}

//! `org` commands: the organisation trust anchors (pins) used by every `export` command.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;

use super::{CommandResult, GlobalOpts};
use sequester_custody::export::anchor::{self, OrganizationAddr, PinStore};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum OrgCommand {
    /// Record the root verify key of an organisation from its address (`parsec3://HOST/ORG?p=…`),
    /// obtained from the organisation out of band. Every later export of that organisation ID
    /// must carry that root key, or is refused.
    Pin {
        /// The organisation address (`parsec3://HOST/ORG?p=…`).
        address: String,
        /// Pin file (default: pins.json beside the ceremony journal,
        /// $XDG_STATE_HOME/sequester-custody/pins.json).
        #[arg(long, value_name = "FILE", env = "SEQUESTER_CUSTODY_PINS")]
        pins: Option<PathBuf>,
    },
    /// List the pinned organisations.
    List {
        /// Pin file (default: pins.json beside the ceremony journal,
        /// $XDG_STATE_HOME/sequester-custody/pins.json).
        #[arg(long, value_name = "FILE", env = "SEQUESTER_CUSTODY_PINS")]
        pins: Option<PathBuf>,
    },
    /// Remove the pin of an organisation ID.
    Unpin {
        /// The organisation ID, as `org list` shows it.
        organization_id: String,
        /// Pin file (default: pins.json beside the ceremony journal,
        /// $XDG_STATE_HOME/sequester-custody/pins.json).
        #[arg(long, value_name = "FILE", env = "SEQUESTER_CUSTODY_PINS")]
        pins: Option<PathBuf>,
    },
}

fn load(pins: Option<PathBuf>) -> anyhow::Result<PinStore> {
    Ok(PinStore::load(
        &pins.unwrap_or_else(anchor::default_pin_path),
    )?)
}

pub(crate) fn run(cmd: OrgCommand, global: &GlobalOpts) -> CommandResult {
    match cmd {
        OrgCommand::Pin { address, pins } => {
            let addr = OrganizationAddr::parse(address.trim())?;
            let mut store = load(pins)?;
            let new = store.pin(&addr)?;
            let fp = anchor::fingerprint(&addr.root_verify_key);
            if global.json {
                println!(
                    "{}",
                    json!({"organization_id": addr.organization_id, "root_verify_key":
                        hex::encode(addr.root_verify_key), "root_key_fingerprint": fp,
                        "new": new, "pin_file": store.path()})
                );
            } else {
                println!(
                    "{} organisation `{}`: root key {} (SHA-256 {fp}) in {}",
                    if new { "Pinned" } else { "Already pinned:" },
                    addr.organization_id,
                    hex::encode(addr.root_verify_key),
                    store.path().display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        OrgCommand::List { pins } => {
            let store = load(pins)?;
            if global.json {
                let list: Vec<_> = store
                    .organizations
                    .iter()
                    .map(|(org, pin)| {
                        let fp = store.get(org).map(|k| anchor::fingerprint(&k));
                        json!({"organization_id": org, "root_verify_key": pin.root_verify_key,
                            "root_key_fingerprint": fp, "source": pin.source,
                            "pinned_at": pin.pinned_at})
                    })
                    .collect();
                println!("{}", json!({"pin_file": store.path(), "pins": list}));
            } else if store.organizations.is_empty() {
                println!("No pinned organisation ({}).", store.path().display());
            } else {
                for (org, pin) in &store.organizations {
                    let fp = store
                        .get(org)
                        .map(|k| anchor::fingerprint(&k))
                        .unwrap_or_default();
                    println!(
                        "{org}: root key SHA-256 {fp}, pinned {} from {}",
                        pin.pinned_at, pin.source
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        OrgCommand::Unpin {
            organization_id,
            pins,
        } => {
            let mut store = load(pins)?;
            let pin = store.unpin(&organization_id)?;
            if global.json {
                println!(
                    "{}",
                    json!({"organization_id": organization_id, "removed": pin})
                );
            } else {
                println!(
                    "Unpinned organisation `{organization_id}` (root key {})",
                    pin.root_verify_key
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

//! The trust-anchor check every `export` command (and `mount`) runs before any token operation.

use sequester_custody::export::anchor::{self, AnchorInputs, TrustReport};
use sequester_custody::export::{terminal, ExportFile};

use super::options::AnchorArgs;
use crate::cli::GlobalOpts;

/// Checks the export against the anchors (before any token operation) and shows the verdict on
/// stderr. A mismatch is an [`anchor::AnchorError`], which the binary turns into exit code 4.
pub(crate) fn check_anchor(
    export: &ExportFile,
    args: &AnchorArgs,
    global: &GlobalOpts,
) -> anyhow::Result<TrustReport> {
    let inputs = AnchorInputs {
        org: args
            .org
            .as_deref()
            .map(anchor::OrganizationAddr::parse)
            .transpose()?,
        root_key: args
            .root_key
            .as_deref()
            .map(anchor::parse_root_key)
            .transpose()?,
    };
    let pins = anchor::PinStore::load(&args.pin_path())?;
    let report = anchor::check(export.info(), &inputs, &pins)?;
    if !global.json {
        eprintln!("{}", terminal::escape(&report.summary()));
    }
    Ok(report)
}

//! `key generate`, `key show` for `yubikey:` URIs: the output of `key` for PIV
//! keys, including the attestation verdict.

use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;

use super::{CommandResult, GlobalOpts};
use sequester_custody::fsutil::{self, Existing};
use sequester_custody::parsec::spki;
use sequester_custody::token::yubikey::{self, attestation::AttestationReport, YubikeyKey};
use sequester_custody::token::{KeyHandle, KeyInfo, KeySpec, TokenDescription};

#[derive(Serialize)]
struct ShownYubikeyKey<'a> {
    #[serde(flatten)]
    info: &'a KeyInfo,
    public_key_pem: String,
    token: TokenDescription,
    firmware: String,
    attestation: Option<&'a AttestationReport>,
    attestation_error: Option<String>,
    management_key: Option<String>,
}

fn print(
    key: &YubikeyKey,
    info: &KeyInfo,
    attestation: Result<AttestationReport, String>,
    management_key: Option<String>,
    global: &GlobalOpts,
    public_out: Option<&Path>,
) -> CommandResult {
    let pem = spki::spki_pem(&info.spki_der);
    if let Some(path) = public_out {
        fsutil::write_atomic(path, pem.as_bytes(), Existing::Keep)?;
    }
    let (fw0, fw1, fw2) = key.firmware();
    let firmware = format!("{fw0}.{fw1}.{fw2}");
    if global.json {
        let shown = ShownYubikeyKey {
            info,
            public_key_pem: pem,
            token: key.token(),
            firmware,
            attestation: attestation.as_ref().ok(),
            attestation_error: attestation.as_ref().err().cloned(),
            management_key,
        };
        println!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(ExitCode::SUCCESS);
    }
    let token = key.token();
    println!("key:         {}", info.label);
    println!("uri:         {}", info.uri);
    println!("token:       {} ({})", token.label, token.model);
    println!("slot:        {}", info.id);
    println!(
        "role:        {}",
        info.role
            .map(|r| r.to_string())
            .unwrap_or_else(|| "none".into())
    );
    println!("size:        {} bits", info.bits);
    println!("fingerprint: SHA256:{}", info.fingerprint);
    match &attestation {
        Ok(report) => {
            println!("attestation: {}", report.summary());
            let f = &report.facts;
            if let Some((a, b, c)) = f.firmware {
                println!("             firmware {a}.{b}.{c}");
            }
            if let Some(s) = f.serial {
                println!("             serial {s}");
            }
            if let (Some(p), Some(t)) = (f.pin_policy, f.touch_policy) {
                println!("             PIN policy {p:?}, touch policy {t:?}");
            }
        }
        Err(e) => println!("attestation: not available: {e}"),
    }
    if global.verbose > 0 {
        for e in &info.provenance.evidence {
            println!("             {e}");
        }
    }
    if let Some(m) = management_key {
        println!("mgm key:     {m}");
    }
    println!("mechanisms:  sign: host EMSA-PSS + raw RSA on card; decrypt: raw RSA on card + host EME-OAEP");
    println!("{pem}");
    Ok(ExitCode::SUCCESS)
}

/// `key generate --token yubikey:…`: shows the generated key and its attestation.
pub(crate) fn generate(
    rec: &mut super::ceremony::Recorder,
    generated: yubikey::Generated,
    spec: &KeySpec,
    global: &GlobalOpts,
    public_out: Option<&Path>,
) -> CommandResult {
    rec.add_key(&spec.role.to_string(), &generated.key);
    let info = generated.key.info()?;
    let attestation = generated.key.attest(None).map_err(|e| e.to_string());
    let mgm = format!("{:?}", generated.mgm_key);
    print(
        &generated.key,
        &info,
        attestation,
        Some(mgm),
        global,
        public_out,
    )
}

/// `key show yubikey:…;slot=… [--attestation-root FILE]` (opened without a PIN).
pub(crate) fn show(
    key: &YubikeyKey,
    attestation_root: Option<&Path>,
    global: &GlobalOpts,
    public_out: Option<&Path>,
) -> CommandResult {
    let roots = attestation_root
        .map(yubikey::attestation::load_roots)
        .transpose()?;
    let attestation = key.attest(roots.as_deref()).map_err(|e| e.to_string());
    let mut info = key.info()?;
    if let Ok(report) = &attestation {
        // `info()` attested without the root; the verdict with the root is the one to show.
        info.provenance.verdict = if report.generated_on_device {
            sequester_custody::token::ProvenanceVerdict::GeneratedOnToken
        } else {
            sequester_custody::token::ProvenanceVerdict::Unknown
        };
    }
    print(key, &info, attestation, None, global, public_out)
}

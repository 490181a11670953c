//! `cert` commands: sign service / revocation certificates through the token, show any
//! certificate file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::json;

use super::ceremony::{CeremonyArgs, Recorder};
use super::{CommandResult, GlobalOpts};
use sequester_custody::ceremony::journal::Journal;
use sequester_custody::ceremony::plan::write_certificate;
use sequester_custody::ceremony::sign::{
    self, RevocationRequest, ServiceCertificateRequest, SigningPolicy,
};
use sequester_custody::ceremony::topic::{self, CeremonyTopic};
use sequester_custody::ceremony::transcript::KeyRecord;
use sequester_custody::ceremony::CeremonyError;
use sequester_custody::parsec::sequester::{SequesterCertificate, ServiceId};
use sequester_custody::parsec::spki::{RsaPublicKeyDer, MIN_SIGNING_BITS};
use sequester_custody::parsec::DateTime;
use sequester_custody::token::open_key;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum CertCommand {
    /// Sign a sequester service certificate with the authority key held on a token.
    Service(ServiceArgs),
    /// Sign a sequester service revocation certificate with the authority key on a token.
    Revoke(RevokeArgs),
    /// Decode and print a sequester service, revocation or authority certificate file; verify
    /// it with --authority-public (--root-verify-key for a raw authority certificate).
    Show(ShowArgs),
}

/// Options shared by the signing commands.
#[derive(Debug, clap::Args)]
pub(crate) struct SigningArgs {
    /// The authority private key: `pkcs11:…;object=…` or `yubikey:serial=…;slot=…` URI.
    #[arg(long)]
    pub(crate) authority: String,
    /// Refuse to sign unless the token's authority key equals this public key (PEM).
    #[arg(long, value_name = "FILE")]
    pub(crate) authority_public: Option<PathBuf>,
    /// Certificate timestamp (RFC 3339; default: now).
    #[arg(long)]
    pub(crate) timestamp: Option<DateTime>,
    /// Accept a timestamp more than 5 minutes in the future.
    #[arg(long)]
    pub(crate) allow_future: bool,
    /// Output file, or directory (Parsec's file name is used). Default: current directory.
    #[arg(short, long, value_name = "DIR|FILE")]
    pub(crate) output: Option<PathBuf>,
    /// Organisation the certificate is for: checks and updates the local journal of the last
    /// signed timestamp and the services signed.
    #[arg(long)]
    pub(crate) organization: Option<String>,
    /// A realm export of the organisation: its sequester topic (verified with the authority
    /// key) gives the timestamp to exceed and, for revocations, the services that exist.
    #[arg(long, value_name = "EXPORT.sqlite")]
    pub(crate) export: Option<PathBuf>,
    /// Journal file (default: $XDG_STATE_HOME/sequester-custody/journal.json).
    #[arg(long, value_name = "FILE", requires = "organization")]
    pub(crate) journal: Option<PathBuf>,
    /// TEST ONLY: accept keys down to this size, never below 1024 (the published Parsec fixture
    /// keys are 1024-bit).
    #[arg(long, hide = true)]
    pub(crate) insecure_min_bits: Option<usize>,
    #[command(flatten)]
    pub(crate) ceremony: CeremonyArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ServiceArgs {
    #[command(flatten)]
    pub(crate) signing: SigningArgs,
    /// The service public key as a `BEGIN PUBLIC KEY` PEM file.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "service_key",
        required_unless_present = "service_key"
    )]
    pub(crate) service_public_key: Option<PathBuf>,
    /// Read the service public key from a key on a token (`pkcs11:` or `yubikey:` URI).
    #[arg(long, value_name = "URI")]
    pub(crate) service_key: Option<String>,
    /// Human name of the service (shown by Parsec clients).
    #[arg(long)]
    pub(crate) label: String,
    /// Service ID (32 hex digits or a UUID; default: random).
    #[arg(long)]
    pub(crate) service_id: Option<ServiceId>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RevokeArgs {
    #[command(flatten)]
    pub(crate) signing: SigningArgs,
    /// The service to revoke.
    #[arg(long, required_unless_present = "service_certificate")]
    pub(crate) service_id: Option<ServiceId>,
    /// The service's certificate file (its ID is revoked; verified with --authority-public or
    /// the token's authority key).
    #[arg(long, value_name = "FILE", conflicts_with = "service_id")]
    pub(crate) service_certificate: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ShowArgs {
    /// Certificate file: Parsec PEM, or the raw signed bytes.
    pub(crate) file: PathBuf,
    /// Authority public key (PEM) to verify the signature with (for an authority certificate:
    /// to compare with the key it carries).
    #[arg(long, value_name = "FILE")]
    pub(crate) authority_public: Option<PathBuf>,
    /// Organisation root verify key (64 hex digits) to verify a raw authority certificate.
    #[arg(long, value_name = "HEX")]
    pub(crate) root_verify_key: Option<String>,
}

pub(crate) fn run(cmd: CertCommand, global: &GlobalOpts) -> CommandResult {
    match cmd {
        CertCommand::Service(args) => service(args, global),
        CertCommand::Revoke(args) => revoke(args, global),
        CertCommand::Show(args) => show(args, global),
    }
}

fn read_public_key(path: &Path) -> anyhow::Result<RsaPublicKeyDer> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read public key {}", path.display()))?;
    RsaPublicKeyDer::from_pem(&text).with_context(|| format!("{}", path.display()))
}

fn policy(args: &SigningArgs) -> SigningPolicy {
    SigningPolicy {
        min_bits: args.insecure_min_bits.unwrap_or(MIN_SIGNING_BITS).max(1024),
        allow_future: args.allow_future,
        not_after: None,
    }
}

fn service(args: ServiceArgs, global: &GlobalOpts) -> CommandResult {
    let mut rec = Recorder::start("cert service", &args.signing.ceremony, global)?;
    let result = sign_service(&args, &mut rec);
    finish_signing(rec, result, global)
}

fn revoke(args: RevokeArgs, global: &GlobalOpts) -> CommandResult {
    let mut rec = Recorder::start("cert revoke", &args.signing.ceremony, global)?;
    let result = sign_revocation(&args, &mut rec);
    finish_signing(rec, result, global)
}

struct Written {
    signed: sign::SignedCertificate,
    path: PathBuf,
}

/// Writes the signed certificate (`--output` or a default name in the current directory) and
/// records it in the organisation journal, if any.
fn save_signed(
    signed: sign::SignedCertificate,
    s: &SigningArgs,
    rec: &mut Recorder,
    journal: Option<&mut (Journal, String)>,
) -> anyhow::Result<Written> {
    let base = std::env::current_dir()?;
    let path = write_certificate(&signed, &base, s.output.as_deref(), &mut rec.entry)?;
    if let Some((j, org)) = journal {
        j.record(org, &signed.certificate)?;
    }
    Ok(Written { signed, path })
}

fn load_journal(args: &SigningArgs) -> anyhow::Result<Option<(Journal, String)>> {
    match &args.organization {
        None => Ok(None),
        Some(org) => {
            let path = args
                .journal
                .clone()
                .unwrap_or_else(sequester_custody::ceremony::journal::default_path);
            Ok(Some((Journal::load(&path)?, org.clone())))
        }
    }
}

/// The sequester topic of `--export`, checked against `--organization`.
fn load_topic(
    args: &SigningArgs,
    authority: &dyn sequester_custody::token::KeyHandle,
    rec: &mut Recorder,
) -> anyhow::Result<Option<CeremonyTopic>> {
    let Some(path) = &args.export else {
        return Ok(None);
    };
    rec.entry.add_input(path)?;
    let key = RsaPublicKeyDer::from_der(authority.public_key_spki())?;
    let topic = CeremonyTopic::from_export(path, &key)?;
    if let Some(org) = &args.organization {
        if *org != topic.organization {
            return Err(CeremonyError::OrganizationMismatch(format!(
                "--organization is `{org}` but {} is an export of `{}`",
                path.display(),
                topic.organization
            ))
            .into());
        }
    }
    Ok(Some(topic))
}

fn sign_service(args: &ServiceArgs, rec: &mut Recorder) -> anyhow::Result<Written> {
    let s = &args.signing;
    let expected = match &s.authority_public {
        Some(p) => {
            rec.entry.add_input(p)?;
            Some(read_public_key(p)?)
        }
        None => None,
    };
    let service_key = match (&args.service_public_key, &args.service_key) {
        (Some(p), _) => {
            rec.entry.add_input(p)?;
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read service public key {}", p.display()))?;
            RsaPublicKeyDer::from_pem(&text)
                .map_err(|e| CeremonyError::ServiceKeyPolicy(format!("{}: {e}", p.display())))?
        }
        (None, Some(uri)) => {
            let handle = open_key(uri, super::token::terminal())?;
            rec.entry.add_token(handle.token());
            RsaPublicKeyDer::from_der(handle.public_key_spki())
                .map_err(|e| CeremonyError::ServiceKeyPolicy(e.to_string()))?
        }
        (None, None) => anyhow::bail!("give --service-public-key FILE or --service-key URI"),
    };
    rec.entry.keys.push(KeyRecord {
        role: "service".into(),
        uri: args
            .service_key
            .as_deref()
            .map(sequester_custody::ceremony::transcript::redact_args_one),
        label: None,
        bits: service_key.bits(),
        fingerprint: service_key.fingerprint(),
    });
    let mut journal = load_journal(s)?;
    let mut policy = policy(s);
    if let Some((j, org)) = &journal {
        policy.not_after = j.not_after(org);
    }
    let request = ServiceCertificateRequest {
        service_key,
        label: args.label.clone(),
        service_id: args.service_id,
        timestamp: s.timestamp,
    };
    let now = DateTime::now();
    // Cheap refusals first: no token PIN is asked for a request that would be refused anyway.
    if request.label.trim().is_empty() {
        return Err(CeremonyError::EmptyLabel.into());
    }
    request
        .service_key
        .check_signing_policy(policy.min_bits)
        .map_err(|e| CeremonyError::ServiceKeyPolicy(e.to_string()))?;
    sign::check_timestamp(request.timestamp.unwrap_or(now), now, &policy)?;
    let authority = open_key(&s.authority, super::token::terminal())?;
    rec.add_authority(authority.as_ref(), &s.authority);
    if let Some(topic) = load_topic(s, authority.as_ref(), rec)? {
        policy.not_after = topic::latest(policy.not_after.take(), Some(topic.not_after()));
    }
    let signed = sign::sign_service_certificate(
        authority.as_ref(),
        expected.as_ref(),
        &request,
        &policy,
        now,
    )?;
    save_signed(signed, s, rec, journal.as_mut())
}

fn sign_revocation(args: &RevokeArgs, rec: &mut Recorder) -> anyhow::Result<Written> {
    let s = &args.signing;
    let expected = match &s.authority_public {
        Some(p) => {
            rec.entry.add_input(p)?;
            Some(read_public_key(p)?)
        }
        None => None,
    };
    let mut journal = load_journal(s)?;
    let mut policy = policy(s);
    let now = DateTime::now();
    if let Some(t) = s.timestamp {
        sign::check_timestamp(
            t,
            now,
            &SigningPolicy {
                not_after: None,
                ..policy.clone()
            },
        )?;
    }
    let authority = open_key(&s.authority, super::token::terminal())?;
    rec.add_authority(authority.as_ref(), &s.authority);
    let service_id = match (&args.service_id, &args.service_certificate) {
        (Some(id), _) => *id,
        (None, Some(p)) => {
            rec.entry.add_input(p)?;
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            let key = match &expected {
                Some(k) => k.clone(),
                None => RsaPublicKeyDer::from_der(authority.public_key_spki())?,
            };
            let shown = sign::read_certificate(&text, Some(&key))
                .with_context(|| format!("service certificate {}", p.display()))?;
            match shown.certificate {
                SequesterCertificate::Service(c) => c.service_id,
                SequesterCertificate::Revoked(_) => anyhow::bail!(
                    "{} is a revocation certificate, not a service certificate",
                    p.display()
                ),
            }
        }
        (None, None) => anyhow::bail!("give --service-id ID or --service-certificate FILE"),
    };
    if journal.is_none() && args.service_certificate.is_none() && s.export.is_none() {
        eprintln!(
            "note: service {service_id} is not checked against a service certificate; give \
             --service-certificate FILE, --export FILE or --organization ORG to tie it to a known service"
        );
    }
    if let Some((j, org)) = &journal {
        if args.service_certificate.is_none() {
            j.check_known_service(org, service_id)?;
        }
        policy.not_after = j.not_after(org);
    }
    if let Some(topic) = load_topic(s, authority.as_ref(), rec)? {
        topic.check_revocable(service_id)?;
        policy.not_after = topic::latest(policy.not_after.take(), Some(topic.not_after()));
    }
    let request = RevocationRequest {
        service_id,
        timestamp: s.timestamp,
    };
    let signed = sign::sign_revocation_certificate(
        authority.as_ref(),
        expected.as_ref(),
        &request,
        &policy,
        now,
    )?;
    save_signed(signed, s, rec, journal.as_mut())
}

fn finish_signing(
    mut rec: Recorder,
    result: anyhow::Result<Written>,
    global: &GlobalOpts,
) -> CommandResult {
    let written = match result {
        Ok(w) => w,
        Err(e) => {
            rec.fail(&e)?;
            return Err(e);
        }
    };
    let head = rec.ok()?;
    let summary = written.signed.summary();
    if global.json {
        let mut value = serde_json::to_value(&summary)?;
        let obj = value.as_object_mut().expect("summary is an object");
        obj.insert("file".into(), json!(written.path.display().to_string()));
        obj.insert("mechanism".into(), json!(written.signed.mechanism));
        obj.insert("transcript".into(), json!(rec.path().display().to_string()));
        obj.insert("transcript_head".into(), json!(head));
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{} written: {}", summary.kind, written.path.display());
        print_summary_lines(&summary);
        if global.verbose > 0 {
            println!("  mechanism:      {}", written.signed.mechanism);
        }
        println!("  transcript:     {} (head {head})", rec.path().display());
    }
    Ok(ExitCode::SUCCESS)
}

fn print_summary_lines(s: &sign::CertificateSummary) {
    println!("  service id:     {}", s.service_id);
    if let Some(label) = &s.label {
        println!("  label:          {label}");
    }
    println!("  timestamp:      {} ({} us)", s.timestamp, s.timestamp_us);
    if let (Some(fp), Some(bits)) = (&s.service_key_fingerprint, s.service_key_bits) {
        println!("  service key:    sha256 {fp} (RSA {bits})");
    }
    println!(
        "  authority key:  sha256 {} (RSA {})",
        s.authority_key_fingerprint, s.authority_key_bits
    );
}

fn show(args: ShowArgs, global: &GlobalOpts) -> CommandResult {
    let data = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let authority = args
        .authority_public
        .as_deref()
        .map(read_public_key)
        .transpose()?;
    let root = args
        .root_verify_key
        .as_deref()
        .map(|h| -> anyhow::Result<[u8; 32]> {
            hex::decode(h.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| anyhow::anyhow!("--root-verify-key: expected 64 hex digits"))
        })
        .transpose()?;
    let any = sign::read_any_certificate(&data, authority.as_ref(), root.as_ref())
        .with_context(|| format!("{}", args.file.display()))?;
    let shown = match any {
        sign::AnyCertificate::Sequester(shown) => shown,
        sign::AnyCertificate::Authority {
            certificate,
            verified,
        } => return show_authority(&args, &certificate, verified, authority.is_some(), global),
    };
    let (label, service_key) = match &shown.certificate {
        SequesterCertificate::Service(c) => {
            (Some(c.service_label.clone()), Some(c.encryption_key()))
        }
        SequesterCertificate::Revoked(_) => (None, None),
    };
    let service_key_json = match &service_key {
        Some(Ok(k)) => json!({"fingerprint": k.fingerprint(), "bits": k.bits()}),
        Some(Err(e)) => json!({"error": e.to_string()}),
        None => serde_json::Value::Null,
    };
    let ts = shown.certificate.timestamp();
    if global.json {
        let value = json!({
            "file": args.file.display().to_string(),
            "kind": shown.kind,
            "service_id": shown.certificate.service_id(),
            "label": label,
            "timestamp": ts,
            "timestamp_us": ts.as_micros(),
            "service_key": service_key_json,
            "signature_bytes": shown.signature_len,
            "verified": shown.verified_with.is_some(),
            "authority_key_fingerprint": shown.verified_with.as_ref().map(|k| k.fingerprint()),
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{}: {}", args.file.display(), shown.kind);
        println!("  service id:     {}", shown.certificate.service_id());
        if let Some(label) = &label {
            println!("  label:          {label}");
        }
        println!("  timestamp:      {ts} ({} us)", ts.as_micros());
        match &service_key {
            Some(Ok(k)) => println!(
                "  service key:    sha256 {} (RSA {})",
                k.fingerprint(),
                k.bits()
            ),
            Some(Err(e)) => println!("  service key:    INVALID: {e}"),
            None => {}
        }
        match &shown.verified_with {
            Some(k) => println!(
                "  signature:      VERIFIED with authority key sha256 {} (RSA {})",
                k.fingerprint(),
                k.bits()
            ),
            None => println!(
                "  signature:      NOT VERIFIED ({}-byte signature; give --authority-public to verify)",
                shown.signature_len
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn show_authority(
    args: &ShowArgs,
    cert: &sequester_custody::parsec::sequester::AuthorityCertificate,
    verified: bool,
    matched_authority: bool,
    global: &GlobalOpts,
) -> CommandResult {
    let key = cert.verify_key();
    if global.json {
        let value = json!({
            "file": args.file.display().to_string(),
            "kind": "authority",
            "timestamp": cert.timestamp,
            "timestamp_us": cert.timestamp.as_micros(),
            "authority_key": match &key {
                Ok(k) => json!({"fingerprint": k.fingerprint(), "bits": k.bits()}),
                Err(e) => json!({"error": e.to_string()}),
            },
            "verified": verified,
            "matches_authority_public": matched_authority,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{}: sequester authority certificate", args.file.display());
        println!(
            "  timestamp:      {} ({} us)",
            cert.timestamp,
            cert.timestamp.as_micros()
        );
        match &key {
            Ok(k) => println!(
                "  authority key:  sha256 {} (RSA {}){}",
                k.fingerprint(),
                k.bits(),
                if matched_authority {
                    ", equal to --authority-public"
                } else {
                    ""
                }
            ),
            Err(e) => println!("  authority key:  INVALID: {e}"),
        }
        if verified {
            println!("  signature:      VERIFIED with the organisation root verify key");
        } else {
            println!("  signature:      NOT VERIFIED (give --root-verify-key to verify)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

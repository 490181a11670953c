//! `export` commands: read a realm export through the token (issue 4).
//!
//! Output: human text on stdout (file content only for `cat`), context and warnings on stderr;
//! `--json` puts one JSON document on stdout.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::{CommandResult, GlobalOpts};
use crate::export::anchor::{self, AnchorInputs, TrustReport};
use crate::export::extract::{self, CustodyRecord, ExtractOptions, Progress};
use crate::export::walk::{self, Walk, WalkProblem, WalkStep};
use crate::export::{
    parallel, parse_id, terminal, timeline, verify, EntryVersion, ExportFile, OpenOptions, Realm,
    UnlockOptions, VersionContent,
};
use crate::parsec::manifest::Manifest;
use crate::parsec::DateTime;

/// The trust anchor (shared by every export command and `mount`): what the export's root key must
/// match. A pin recorded with `org pin` for the export's organisation is used as well.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AnchorArgs {
    /// The organisation address as Parsec shows it (`parsec3://HOST/ORG?p=…`), obtained from the
    /// organisation out of band: the export must be of that organisation and root key.
    #[arg(long, value_name = "ADDR")]
    pub org: Option<String>,
    /// The organisation's root verify key, 64 hex digits, obtained out of band.
    #[arg(long, value_name = "HEX64")]
    pub root_key: Option<String>,
    /// Pin file (default: pins.json beside the ceremony journal,
    /// $XDG_STATE_HOME/sequester-custody/pins.json).
    #[arg(long, value_name = "FILE", env = "SEQUESTER_CUSTODY_PINS")]
    pub pins: Option<PathBuf>,
}

impl AnchorArgs {
    pub fn pin_path(&self) -> PathBuf {
        self.pins.clone().unwrap_or_else(anchor::default_pin_path)
    }
}

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

/// `writeln!` of one line with attacker-chosen text (names, labels) escaped for a terminal.
macro_rules! safe_line {
    ($o:expr, $($arg:tt)*) => {
        writeln!($o, "{}", terminal::escape(&format!($($arg)*)))
    };
}

/// `println!` of one escaped line (see [`safe_line`]).
macro_rules! safe_println {
    ($($arg:tt)*) => {
        println!("{}", terminal::escape(&format!($($arg)*)))
    };
}

/// Arguments shared by every command that reads content.
#[derive(Debug, clap::Args)]
pub struct KeyArgs {
    /// The service private key on a token: `pkcs11:…` or `yubikey:…` URI.
    #[arg(long, env = "SEQUESTER_CUSTODY_KEY")]
    pub key: String,
    /// Service ID (32 hex digits), only when the token key matches several services.
    #[arg(long)]
    pub service_id: Option<String>,
    /// Read an export whose `*_done` flags are not all set.
    #[arg(long)]
    pub allow_incomplete: bool,
    #[command(flatten)]
    pub anchor: AnchorArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum ExportCommand {
    /// Organisation, realm, snapshot, sizes, completeness, sequester services and key indexes (no
    /// key needed).
    Info {
        file: PathBuf,
        #[arg(long)]
        allow_incomplete: bool,
        #[command(flatten)]
        anchor: AnchorArgs,
    },
    /// Verify every signature and block digest reachable with the key; exit 0 only if nothing is
    /// wrong AND the root key is anchored (pin, --org or --root-key); 2 = problems found, 3 =
    /// consistent but not anchored, 4 = the anchor does not match.
    Verify {
        file: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// List a folder as it was at T.
    Ls {
        file: PathBuf,
        /// Folder (or file) path inside the workspace; default `/`.
        path: Option<String>,
        #[command(flatten)]
        key: KeyArgs,
        /// Time of interest (RFC 3339); default: the snapshot time.
        #[arg(long)]
        at: Option<String>,
        /// Long format: kind, size, version, key index, modification time, author.
        #[arg(short = 'l')]
        long: bool,
        /// Recursive.
        #[arg(short = 'R')]
        recursive: bool,
    },
    /// Write a file's content at T to stdout.
    Cat {
        file: PathBuf,
        path: String,
        #[command(flatten)]
        key: KeyArgs,
        #[arg(long)]
        at: Option<String>,
    },
    /// Every version of an entry (found by its path at T, or `id:<hex>`).
    History {
        file: PathBuf,
        path: String,
        #[command(flatten)]
        key: KeyArgs,
        /// Time at which PATH is resolved; default: the snapshot time.
        #[arg(long)]
        at: Option<String>,
    },
    /// Every change in time order.
    Timeline {
        file: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Write the tree at T to DEST (atomically) and DEST.custody.json beside it.
    Extract {
        file: PathBuf,
        dest: PathBuf,
        /// Sub-tree to extract; default `/`.
        path: Option<String>,
        #[command(flatten)]
        key: KeyArgs,
        #[arg(long)]
        at: Option<String>,
        /// Worker threads decrypting blocks (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Create files and folders with the usual modes (0666/0777 minus the umask) instead of
        /// owner-only 0600/0700.
        #[arg(long)]
        mode_from_umask: bool,
    },
    /// Mount the workspace read-only (FUSE) as it was at T; `/.history/<T>/` for other instants.
    Mount(super::mount::MountArgs),
}

pub fn run(cmd: ExportCommand, global: &GlobalOpts) -> CommandResult {
    match cmd {
        ExportCommand::Mount(args) => super::mount::run(args, global),
        ExportCommand::Info {
            file,
            allow_incomplete,
            anchor,
        } => info(&file, allow_incomplete, &anchor, global),
        ExportCommand::Verify { file, key } => verify_cmd(&file, &key, global),
        ExportCommand::Ls {
            file,
            path,
            key,
            at,
            long,
            recursive,
        } => ls(
            &file,
            path.as_deref().unwrap_or("/"),
            &key,
            at.as_deref(),
            long,
            recursive,
            global,
        ),
        ExportCommand::Cat {
            file,
            path,
            key,
            at,
        } => cat(&file, &path, &key, at.as_deref(), global),
        ExportCommand::History {
            file,
            path,
            key,
            at,
        } => history(&file, &path, &key, at.as_deref(), global),
        ExportCommand::Timeline { file, key } => timeline_cmd(&file, &key, global),
        ExportCommand::Extract {
            file,
            dest,
            path,
            key,
            at,
            threads,
            mode_from_umask,
        } => extract_cmd(
            &file,
            &dest,
            path.as_deref().unwrap_or("/"),
            &key,
            at.as_deref(),
            threads,
            mode_from_umask,
            global,
        ),
    }
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

fn open(file: &std::path::Path, allow_incomplete: bool) -> anyhow::Result<Arc<ExportFile>> {
    let export = ExportFile::open(file, &OpenOptions { allow_incomplete })?;
    if !export.info().is_complete() {
        eprintln!(
            "WARNING: {} is a PARTIAL export (not done: {}); what follows may be missing data",
            file.display(),
            export.info().missing_parts().join(", ")
        );
    }
    Ok(export)
}

/// Opens the export, checks its anchor, opens the token key and runs the chain. Prints the
/// context to stderr.
fn unlock(
    file: &std::path::Path,
    args: &KeyArgs,
    global: &GlobalOpts,
) -> anyhow::Result<(Realm, TrustReport)> {
    let started = std::time::Instant::now();
    let export = open(file, args.allow_incomplete)?;
    let trust = check_anchor(&export, &args.anchor, global)?;
    let opened = started.elapsed();
    let service_id = args
        .service_id
        .as_deref()
        .map(parse_id)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    // Checked before touching the token: a non-sequestered export needs no PIN.
    if export.sequester_topic()?.is_none() {
        return Err(crate::export::ExportError::NotSequestered.into());
    }
    let key = crate::token::open_key(&args.key, super::token::terminal())
        .context("opening the service key")?;
    let key_opened = started.elapsed();
    let realm = export.unlock(key.as_ref(), &UnlockOptions { service_id })?;
    if global.verbose > 0 && !global.json {
        eprintln!(
            "Timings: export opened in {:.1} ms, token key opened in {:.1} ms, chain verified and \
             keys recovered in {:.1} ms",
            opened.as_secs_f64() * 1e3,
            (key_opened - opened).as_secs_f64() * 1e3,
            (started.elapsed() - key_opened).as_secs_f64() * 1e3
        );
    }
    let r = realm.recovery();
    let service = realm.service();
    if !global.json {
        eprintln!(
            "Service `{}` ({}){}; token operations: {}; realm keys obtained: {:?} of {}",
            service.label,
            hex::encode(service.service_id),
            service
                .revoked
                .map(|t| format!(", revoked {t}"))
                .unwrap_or_default(),
            r.token_operations,
            r.obtained_key_indexes,
            realm.latest_key_index(),
        );
        if global.verbose > 0 {
            if let Some(m) = r.mechanism {
                eprintln!("Token mechanism: {m}");
            }
            for p in &r.problems {
                eprintln!("note: {p}");
            }
        }
        if r.obtained_key_indexes.is_empty() {
            eprintln!("{}", nothing_readable_message(&realm));
        } else if !r.missing_key_indexes.is_empty() {
            let (unusable, never): (Vec<u64>, Vec<u64>) = r
                .missing_key_indexes
                .iter()
                .partition(|k| r.unusable_key_indexes.contains_key(k));
            if !never.is_empty() {
                eprintln!(
                    "Note: data encrypted with key index(es) {never:?} is not readable by this \
                     service (it was never given those keys); such entries are shown as \
                     UNREADABLE."
                );
            }
            if !unusable.is_empty() {
                eprintln!(
                    "WARNING: key index(es) {unusable:?} were given to this service but their \
                     keys-bundle access or bundle is unusable (damaged or forged, see the notes \
                     above); such entries are shown as UNREADABLE."
                );
            }
        }
    }
    Ok((realm, trust))
}

fn nothing_readable_message(realm: &Realm) -> String {
    let r = realm.recovery();
    if realm.latest_key_index() == 0 {
        "NOTHING IS READABLE: this export has no valid key rotation certificate, so no realm key \
         can be checked (see the certificate problems with `export verify`)."
            .to_string()
    } else if r.access_key_indexes.is_empty() {
        format!(
            "NOTHING IS READABLE with this key: service `{}` has no keys bundle access in this \
             export (it received no key rotation while active), so no realm key could be \
             recovered (0 token operations).",
            realm.service().label
        )
    } else {
        format!(
            "NOTHING IS READABLE with this key: the access rows for key index(es) {:?} did not \
             yield a usable realm key ({}).",
            r.access_key_indexes,
            r.problems.join("; ")
        )
    }
}

fn parse_at(realm: &Realm, at: Option<&str>) -> anyhow::Result<DateTime> {
    let snapshot = realm.snapshot();
    let Some(at) = at else { return Ok(snapshot) };
    let t = DateTime::parse_rfc3339(at).map_err(anyhow::Error::msg)?;
    if t > snapshot {
        bail!(
            "--at {t} is after the export's snapshot time {snapshot}: the export knows nothing \
             after it"
        );
    }
    Ok(t)
}

fn service_json(realm: &Realm) -> Value {
    let s = realm.service();
    json!({
        "service_id": hex::encode(s.service_id),
        "label": s.label,
        "revoked": s.revoked,
        "key_fingerprint": s.key_fingerprint,
        "token_operations": realm.token_operations(),
        "recovery": realm.recovery(),
        "token": realm.token(),
    })
}

fn context_json(realm: &Realm, trust: &TrustReport, at: DateTime) -> Value {
    json!({
        "trust": trust,
        "export": realm.file().display_path(),
        "complete": realm.info().is_complete(),
        "organization_id": realm.info().organization_id,
        "realm_id": hex::encode(realm.realm_id()),
        "realm_name": realm.realm_name_at(at),
        "snapshot_timestamp": realm.snapshot(),
        "at": at,
        "service": service_json(realm),
    })
}

// ---------------------------------------------------------------- info

fn info(
    file: &std::path::Path,
    allow_incomplete: bool,
    anchor_args: &AnchorArgs,
    global: &GlobalOpts,
) -> CommandResult {
    let export = open(file, allow_incomplete)?;
    let trust = check_anchor(&export, anchor_args, global)?;
    let i = export.info();
    let counts = export.table_counts()?;
    // A broken authority certificate is reported, not fatal: the rest of `info` still helps.
    let (topic, topic_error) = match export.sequester_topic() {
        Ok(t) => (t, None),
        Err(e) => (None, Some(e.to_string())),
    };
    let access = export.sequester_access_rows()?;
    let org = export.organization()?;
    let certs = export.realm_certificates(&org)?;
    let range = export.time_range()?;
    let file_size = std::fs::metadata(file)?.len();
    let key_indexes: Vec<Value> = certs
        .rotations
        .values()
        .map(|r| {
            let services: Vec<String> = access
                .iter()
                .filter(|a| a.key_index == r.key_index)
                .map(|a| hex::encode(a.service_id))
                .collect();
            json!({"key_index": r.key_index, "rotated_at": r.timestamp,
                   "author": org.describe_device(&r.author), "services_with_access": services})
        })
        .collect();
    let services: Vec<Value> = topic
        .as_ref()
        .map(|t| {
            t.services
                .iter()
                .map(|s| {
                    let idx: Vec<u64> = access
                        .iter()
                        .filter(|a| a.service_id == s.service_id)
                        .map(|a| a.key_index)
                        .collect();
                    json!({"service_id": hex::encode(s.service_id), "label": s.label,
                       "status": if s.revoked.is_some() {"revoked"} else {"active"},
                       "created": s.created, "revoked": s.revoked,
                       "key_fingerprint": s.key_fingerprint, "key_bits": s.key_bits,
                       "access_key_indexes": idx})
                })
                .collect()
        })
        .unwrap_or_default();
    if global.json {
        print_json(&json!({
            "file": file.display().to_string(),
            "file_size": file_size,
            "trust": trust,
            "info": i,
            "complete": i.is_complete(),
            "sequestered": topic.is_some() || topic_error.is_some(),
            "sequester_error": topic_error,
            "sequester_authority": topic.as_ref().map(|t| json!({
                "created": t.authority_timestamp, "key_fingerprint": t.authority_key_fingerprint,
            })),
            "sequester_services": services,
            "sequester_problems": topic.as_ref().map(|t| t.problems.clone()).unwrap_or_default(),
            "key_indexes": key_indexes,
            "latest_key_index": certs.latest_key_index,
            "time_range": range.map(|(a, b)| json!({"from": a, "to": b})),
            "devices": org.devices.len(),
            "users": org.users.len(),
            "tables": counts.iter().map(|(t, n)| (t.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        }))?;
        return Ok(if topic_error.is_some() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        });
    }
    let mut o = std::io::stdout().lock();
    writeln!(o, "File:          {} ({file_size} bytes)", file.display())?;
    writeln!(o, "Organization:  {}", i.organization_id)?;
    writeln!(
        o,
        "Root key:      SHA-256 {} ({})",
        trust.root_key_fingerprint,
        if trust.anchored {
            format!("ANCHORED: matches {}", trust.anchored_by_text())
        } else {
            "NOT ANCHORED: no pin, --org or --root-key".to_string()
        }
    )?;
    writeln!(o, "Realm ID:      {}", hex::encode(i.realm_id))?;
    writeln!(o, "Snapshot:      {}", i.snapshot_timestamp)?;
    if let Some((from, to)) = range {
        writeln!(o, "Time range:    {from} .. {to}")?;
    }
    writeln!(
        o,
        "Complete:      {}",
        if i.is_complete() {
            "yes".to_string()
        } else {
            format!("NO (not done: {})", i.missing_parts().join(", "))
        }
    )?;
    writeln!(
        o,
        "Sizes:         vlobs {} bytes, blocks {} bytes (encrypted)",
        i.vlobs_total_bytes, i.blocks_total_bytes
    )?;
    writeln!(
        o,
        "Rows:          {}",
        counts
            .iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    writeln!(
        o,
        "Users/devices: {} users, {} devices verified",
        org.users.len(),
        org.devices.len()
    )?;
    match &topic {
        None if topic_error.is_some() => writeln!(
            o,
            "Sequester:     INVALID: {}",
            topic_error.as_deref().unwrap_or_default()
        )?,
        None => writeln!(
            o,
            "Sequester:     NOT SEQUESTERED (no sequester authority): no sequester service key can read this export"
        )?,
        Some(t) => {
            writeln!(
                o,
                "Sequester:     authority created {}, key SHA-256 {}",
                t.authority_timestamp, t.authority_key_fingerprint
            )?;
            for s in &t.services {
                let idx: Vec<u64> = access
                    .iter()
                    .filter(|a| a.service_id == s.service_id)
                    .map(|a| a.key_index)
                    .collect();
                writeln!(
                    o,
                    "  service {} `{}`: {} (created {}{}), RSA {} bits, key SHA-256 {}, access to key index(es) {:?}",
                    hex::encode(s.service_id),
                    s.label,
                    if s.revoked.is_some() { "REVOKED" } else { "active" },
                    s.created,
                    s.revoked.map(|r| format!(", revoked {r}")).unwrap_or_default(),
                    s.key_bits,
                    s.key_fingerprint,
                    idx
                )?;
            }
            for p in &t.problems {
                writeln!(o, "  problem: {p}")?;
            }
        }
    }
    writeln!(o, "Key indexes:   latest {}", certs.latest_key_index)?;
    for k in &key_indexes {
        writeln!(
            o,
            "  key index {}: rotated {} by {}; services with access: {}",
            k["key_index"],
            k["rotated_at"].as_str().unwrap_or(""),
            k["author"].as_str().unwrap_or(""),
            k["services_with_access"]
                .as_array()
                .map(|a| if a.is_empty() {
                    "none".to_string()
                } else {
                    a.iter()
                        .filter_map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default()
        )?;
    }
    Ok(if topic_error.is_some() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

// ---------------------------------------------------------------- ls

fn kind_of(v: &EntryVersion) -> &'static str {
    match v.manifest().map(|m| &**m) {
        Some(Manifest::Folder(_)) => "folder",
        Some(Manifest::File(_)) => "file",
        None => "unknown",
    }
}

fn entry_json(realm: &Realm, path: &str, v: &EntryVersion) -> Value {
    let mut e = json!({
        "path": path,
        "id": hex::encode(v.meta.vlob_id),
        "kind": kind_of(v),
        "version": v.meta.version,
        "key_index": v.meta.key_index,
        "timestamp": v.meta.timestamp,
        "author": realm.describe_author(&v.meta.author),
        "readable": v.manifest().is_some(),
    });
    match &v.content {
        VersionContent::Readable(m) => {
            e["created"] = json!(m.header().created);
            e["updated"] = json!(m.header().updated);
            if let Manifest::File(f) = &**m {
                e["size"] = json!(f.size);
            }
        }
        VersionContent::Unreadable { key_index, .. } => {
            e["needs_key_index"] = json!(key_index);
            e["reason"] = json!(v.problem());
        }
        VersionContent::Invalid { reason } => {
            e["invalid"] = json!(true);
            e["reason"] = json!(reason);
        }
    }
    e
}

fn entry_line(realm: &Realm, name: &str, v: &EntryVersion, long: bool) -> String {
    let suffix = if kind_of(v) == "folder" { "/" } else { "" };
    let problem = v.problem().map(|p| format!("  [UNREADABLE: {p}]"));
    let problem = match &v.content {
        VersionContent::Invalid { reason } => Some(format!("  [INVALID: {reason}]")),
        _ => problem,
    };
    if !long {
        return format!("{name}{suffix}{}", problem.unwrap_or_default());
    }
    let (size, updated) = match v.manifest().map(|m| &**m) {
        Some(Manifest::File(f)) => (f.size.to_string(), f.header.updated.to_string()),
        Some(Manifest::Folder(f)) => ("-".into(), f.header.updated.to_string()),
        None => ("?".into(), "?".into()),
    };
    format!(
        "{:<7} {:>12}  v{:<4} key {:<3} {:<27} {:<40} {name}{suffix}{}",
        kind_of(v),
        size,
        v.meta.version,
        v.meta.key_index,
        updated,
        realm.describe_author(&v.meta.author),
        problem.unwrap_or_default()
    )
}

fn normalize(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    format!("/{}", parts.join("/"))
}

fn ls(
    file: &std::path::Path,
    path: &str,
    args: &KeyArgs,
    at: Option<&str>,
    long: bool,
    recursive: bool,
    global: &GlobalOpts,
) -> CommandResult {
    let (realm, trust) = unlock(file, args, global)?;
    let t = parse_at(&realm, at)?;
    let path = normalize(path);
    let start = match realm.resolve(&path, t) {
        Ok(v) => v,
        Err(crate::export::ExportError::NoSuchPath(_)) if path == "/" => {
            let first = realm.file().time_range()?.map(|(a, _)| a);
            bail!(
                "the workspace did not exist yet at {t}{}",
                first
                    .map(|f| format!(" (its first version is at {f})"))
                    .unwrap_or_default()
            );
        }
        Err(e) => return Err(e.into()),
    };
    if start.manifest().is_none() {
        // The path itself is unreadable or invalid: say so, exit non-zero.
        if global.json {
            print_json(
                &json!({"context": context_json(&realm, &trust, t), "path": path,
                               "entry": entry_json(&realm, &path, &start)}),
            )?;
        } else {
            println!(
                "{}",
                terminal::escape(&entry_line(&realm, &path, &start, long))
            );
        }
        return Ok(ExitCode::from(2));
    }
    // Printed as the walk goes (bounded memory whatever the tree's size): text lines in walk
    // order, problems where the entry was listed; with --json, one document whose `entries`
    // array is streamed and whose `problems` keeps the first MAX_LISTED_PROBLEMS (with
    // `problems_total`).
    let mut o = std::io::BufWriter::new(std::io::stdout().lock());
    let shown = |p: &str| -> String {
        if recursive {
            p.to_string()
        } else {
            p.rsplit('/').next().unwrap_or(p).to_string()
        }
    };
    if global.json {
        let head = serde_json::to_string_pretty(
            &json!({"context": context_json(&realm, &trust, t), "path": path}),
        )?;
        let head = head
            .trim_end()
            .strip_suffix('}')
            .unwrap_or(&head)
            .trim_end();
        write!(o, "{head},\n  \"entries\": [")?;
    } else {
        eprintln!(
            "{}",
            terminal::escape(&format!(
                "Workspace `{}` ({}) as of {t}",
                realm.realm_name_at(t),
                hex::encode(realm.realm_id())
            ))
        );
    }
    let mut entries = 0u64;
    let mut unreadable = 0u64;
    let mut strays = 0u64;
    let mut problems_total = 0u64;
    let mut problems: Vec<Value> = Vec::new();
    let mut entry = |o: &mut dyn Write, p: &str, v: &EntryVersion| -> anyhow::Result<()> {
        if v.manifest().is_none() {
            unreadable += 1;
        }
        if global.json {
            let sep = if entries == 0 { "\n    " } else { ",\n    " };
            write!(
                o,
                "{sep}{}",
                serde_json::to_string(&entry_json(&realm, p, v))?
            )?;
        } else {
            writeln!(
                o,
                "{}",
                terminal::escape(&entry_line(&realm, &shown(p), v, long))
            )?;
        }
        entries += 1;
        Ok(())
    };
    if start.folder().is_some() {
        // Depth-first, children in name order, through the shared walk rules.
        let depth = if recursive { walk::MAX_DEPTH } else { 0 };
        let mut walk = Walk::new(&realm, t, &path, start, depth);
        while let Some(step) = walk.next_step()? {
            match step {
                WalkStep::Entry(e) => entry(&mut o, &e.path, &e.child.version)?,
                WalkStep::Problem(p) => {
                    problems_total += 1;
                    if p.rule == walk::WalkRule::ParentMismatch {
                        strays += 1;
                    }
                    if global.json {
                        if problems.len() < MAX_LISTED_PROBLEMS {
                            problems.push(problem_json(&p));
                        }
                    } else {
                        let text = format!("{}  [NOT SHOWN: {}]", shown(&p.path), p.reason);
                        writeln!(o, "{}", terminal::escape(&text))?;
                    }
                }
            }
        }
    } else {
        entry(&mut o, &path, &start)?;
    }
    if global.json {
        let problems = serde_json::to_string_pretty(&problems)?.replace('\n', "\n  ");
        let close = if entries == 0 { "]" } else { "\n  ]" };
        writeln!(
            o,
            "{close},\n  \"unreadable_entries\": {unreadable},\n  \"problems\": {problems},\n  \
             \"problems_total\": {problems_total}\n}}"
        )?;
        o.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    o.flush()?;
    drop(o);
    if unreadable > 0 {
        eprintln!(
            "{unreadable} entr{} UNREADABLE with this service's keys",
            if unreadable == 1 { "y is" } else { "ies are" }
        );
    }
    let entries = |n: u64| if n == 1 { "y is" } else { "ies are" };
    if strays > 0 {
        eprintln!(
            "{strays} listed entr{} NOT SHOWN: their manifest names another parent folder \
             (Parsec's client skips them too; see above)",
            entries(strays)
        );
    }
    if problems_total > strays {
        eprintln!(
            "{} listed entr{} NOT SHOWN: the export's tree structure is inconsistent (see above)",
            problems_total - strays,
            entries(problems_total - strays)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Problems kept in memory for one JSON listing, verify or timeline report (the rest are counted).
pub(crate) const MAX_LISTED_PROBLEMS: usize = 10_000;

fn problem_json(p: &WalkProblem) -> Value {
    json!({
        "path": p.path,
        "id": hex::encode(p.id),
        "version": p.version,
        "rule": p.rule,
        "reason": p.reason,
    })
}

// ---------------------------------------------------------------- cat

fn cat(
    file: &std::path::Path,
    path: &str,
    args: &KeyArgs,
    at: Option<&str>,
    global: &GlobalOpts,
) -> CommandResult {
    let (realm, trust) = unlock(file, args, global)?;
    let t = parse_at(&realm, at)?;
    let path = normalize(path);
    let v = realm.resolve(&path, t)?;
    let f = match (&v.content, v.manifest().map(|m| &**m)) {
        (_, Some(Manifest::File(f))) => f,
        (_, Some(Manifest::Folder(_))) => bail!("{path}: is a folder (at {t})"),
        (VersionContent::Unreadable { .. }, _) => bail!(
            "{path}: version {} at {t} is UNREADABLE: {} (an older version is NOT shown in its place)",
            v.meta.version,
            v.problem().unwrap_or_default()
        ),
        _ => bail!("{path}: version {} at {t}: {}", v.meta.version, v.problem().unwrap_or_default()),
    };
    if global.json {
        // JSON carries the content in base64: meant for small files (use `extract` otherwise).
        const JSON_MAX: u64 = 64 << 20;
        if f.size > JSON_MAX {
            bail!(
                "{path}: {} bytes is too large for `cat --json`; use `export extract`",
                f.size
            );
        }
        let data = realm
            .read_range_with(f, 0, f.size, parallel::default_threads())
            .map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        use base64::Engine;
        print_json(&json!({
            "context": context_json(&realm, &trust, t),
            "entry": entry_json(&realm, &path, &v),
            "sha256": crate::crypto::sha256_hex(&data),
            "content_base64": base64::engine::general_purpose::STANDARD.encode(&data),
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    // Stream block runs so that huge files do not sit in memory.
    const CHUNK: u64 = 8 << 20;
    let mut offset = 0;
    let threads = parallel::default_threads();
    while offset < f.size {
        let data = realm
            .read_range_with(f, offset, CHUNK, threads)
            .map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        out.write_all(&data)?;
        offset += data.len() as u64;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------- history

fn history(
    file: &std::path::Path,
    path: &str,
    args: &KeyArgs,
    at: Option<&str>,
    global: &GlobalOpts,
) -> CommandResult {
    let (realm, trust) = unlock(file, args, global)?;
    let t = parse_at(&realm, at)?;
    let (id, shown) = if let Some(hex_id) = path.strip_prefix("id:") {
        (
            parse_id(hex_id).map_err(anyhow::Error::msg)?,
            path.to_string(),
        )
    } else {
        let p = normalize(path);
        (realm.resolve(&p, t)?.meta.vlob_id, p)
    };
    let versions = realm.versions(&id)?;
    if global.json {
        print_json(&json!({
            "context": context_json(&realm, &trust, t),
            "path": shown,
            "id": hex::encode(id),
            "versions": versions.iter().map(|v| {
                let mut e = entry_json(&realm, &shown, v);
                e["user_id"] = json!(realm.organization().devices.get(&v.meta.author).map(|d| hex::encode(d.user_id)));
                e["path_at_version"] = json!(realm.path_of(&v.meta.vlob_id, v.meta.timestamp).ok().flatten());
                e
            }).collect::<Vec<_>>(),
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut o = std::io::stdout().lock();
    safe_line!(o, "History of {shown} (entry {}):", hex::encode(id))?;
    for v in &versions {
        let size = match v.manifest().map(|m| &**m) {
            Some(Manifest::File(f)) => format!("{} bytes", f.size),
            Some(Manifest::Folder(f)) => format!("{} children", f.children.len()),
            None => "-".into(),
        };
        let at_path = realm
            .path_of(&v.meta.vlob_id, v.meta.timestamp)?
            .map(|p| format!(" as {p}"))
            .unwrap_or_default();
        safe_line!(
            o,
            "  v{:<4} {}  key {:<3} {:<14} by {}{}{}",
            v.meta.version,
            v.meta.timestamp,
            v.meta.key_index,
            size,
            realm.describe_author(&v.meta.author),
            at_path,
            match v.problem() {
                Some(p) => format!(
                    "  [{}]",
                    p.replacen("encrypted", "UNREADABLE: encrypted", 1)
                ),
                None => "  [readable]".into(),
            }
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------- timeline

fn timeline_cmd(file: &std::path::Path, args: &KeyArgs, global: &GlobalOpts) -> CommandResult {
    let (realm, trust) = unlock(file, args, global)?;
    // Printed as the versions are read (bounded memory whatever the number of versions); with
    // --json, one document whose `events` array is streamed.
    let mut o = std::io::BufWriter::new(std::io::stdout().lock());
    if global.json {
        let head = serde_json::to_string_pretty(
            &json!({"context": context_json(&realm, &trust, realm.snapshot())}),
        )?;
        let head = head
            .trim_end()
            .strip_suffix('}')
            .unwrap_or(&head)
            .trim_end();
        write!(o, "{head},\n  \"events\": [")?;
    }
    let mut n = 0u64;
    let streamed = timeline::for_each_event(&realm, |e| {
        let written = if global.json {
            let sep = if n == 0 { "\n    " } else { ",\n    " };
            serde_json::to_string(&e)
                .map_err(std::io::Error::other)
                .and_then(|j| write!(o, "{sep}{j}"))
        } else {
            let line = format!(
                "{}  {:<20} {}{}{}",
                e.timestamp,
                e.kind,
                e.path
                    .as_deref()
                    .map(|p| format!("{p}: "))
                    .unwrap_or_default(),
                e.description,
                e.author
                    .as_deref()
                    .map(|a| format!("  (by {a})"))
                    .unwrap_or_default()
            );
            writeln!(o, "{}", terminal::escape(&line))
        };
        n += 1;
        written.map_err(|e| crate::export::ExportError::Io(format!("cannot write: {e}")))
    });
    streamed?;
    if global.json {
        let close = if n == 0 { "]" } else { "\n  ]" };
        writeln!(o, "{close}\n}}")?;
    }
    o.flush()?;
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------- verify

fn verify_cmd(file: &std::path::Path, args: &KeyArgs, global: &GlobalOpts) -> CommandResult {
    let (realm, trust) = unlock(file, args, global)?;
    let report = verify::verify(&realm, parallel::default_threads())?;
    // Problems outrank the missing anchor: exit 2 whether anchored or not.
    let consistent = report.ok();
    let (result, code) = match (consistent, trust.anchored) {
        (false, _) => ("problems", 2),
        (true, false) => ("not_anchored", anchor::EXIT_NOT_ANCHORED),
        (true, true) => ("ok", 0),
    };
    if global.json {
        print_json(&json!({
            "context": context_json(&realm, &trust, realm.snapshot()),
            "ok": code == 0,
            "consistent": consistent,
            "anchored": trust.anchored,
            "result": result,
            "report": report,
        }))?;
    } else {
        let mut o = std::io::stdout().lock();
        safe_line!(
            o,
            "Entries:   {} ({} folders, {} files seen readable)",
            report.entries,
            report.folders,
            report.files
        )?;
        safe_line!(
            o,
            "Versions:  {} ({} readable and verified, {} unreadable by this service, {} invalid)",
            report.versions,
            report.readable_versions,
            report.unreadable_versions,
            report.invalid_versions
        )?;
        for (k, n) in &report.unreadable_versions_by_key_index {
            let why = match realm.key_unusable(*k) {
                Some(_) => {
                    "whose keys-bundle access for this service is present but unusable \
                            (damaged or forged, see the problems below)"
                }
                None => "which this service was never given",
            };
            safe_line!(o, "           {n} version(s) need key index {k}, {why}")?;
        }
        safe_line!(
            o,
            "Blocks:    {} verified ({} bytes), {} unreadable by this service",
            report.blocks_checked,
            report.block_bytes_checked,
            report.blocks_unreadable
        )?;
        safe_line!(o, "Token operations: {}", realm.token_operations())?;
        if consistent && trust.anchored {
            safe_line!(
                o,
                "Result:    OK — every signature and digest reachable with this key verifies, \
                 from the root key anchored by {}",
                trust.anchored_by_text()
            )?;
        } else if consistent {
            writeln!(
                o,
                "Result:    NOT ANCHORED — internally consistent (every signature and digest \
                 reachable with this key verifies against the root key the export carries), but \
                 nothing ties that root key to the organisation: a forged export would look the \
                 same."
            )?;
            safe_line!(o, "           {}", trust.how_to_pin())?;
        } else {
            safe_line!(o, "Result:    {} PROBLEM(S)", report.problems_total)?;
            for p in &report.problems {
                safe_line!(o, "{}", problem_line(p))?;
            }
            if report.problems_total > report.problems.len() as u64 {
                safe_line!(
                    o,
                    "           ... and {} more (only the first {} are kept)",
                    report.problems_total - report.problems.len() as u64,
                    verify::MAX_KEPT_PROBLEMS
                )?;
            }
        }
        if !consistent && !trust.anchored {
            safe_line!(o, "Also NOT ANCHORED: {}", trust.how_to_pin())?;
        }
        if !report.notices.is_empty() {
            safe_line!(
                o,
                "Notices:   {} listed entr{} NOT SHOWN by listings and extraction (not counted \
                 as problems: Parsec's client skips them too):",
                report.notices_total,
                if report.notices_total == 1 {
                    "y is"
                } else {
                    "ies are"
                }
            )?;
            for p in &report.notices {
                safe_line!(o, "{}", problem_line(p))?;
            }
        }
    }
    Ok(ExitCode::from(code))
}

/// One indented line of a `verify` problem or notice: where, which version, when, by whom, why.
fn problem_line(p: &verify::Problem) -> String {
    let location = match (&p.path, &p.entry_id) {
        (Some(path), Some(id)) => format!("{path} (entry {id})"),
        (None, Some(id)) => format!("entry {id}"),
        (Some(path), None) => path.clone(),
        (None, None) => String::new(),
    };
    let details = format!(
        "{location}{}{}{}",
        p.version.map(|v| format!(" v{v}")).unwrap_or_default(),
        p.timestamp.map(|t| format!(" at {t}")).unwrap_or_default(),
        p.author
            .as_deref()
            .map(|a| format!(" by {a}"))
            .unwrap_or_default(),
    );
    if details.is_empty() {
        format!("  [{}] {}", p.kind, p.reason)
    } else {
        format!("  [{}] {details}: {}", p.kind, p.reason)
    }
}

// ---------------------------------------------------------------- extract

struct Bar(Option<indicatif::ProgressBar>);

impl Progress for Bar {
    fn start(&self, total: u64) {
        if let Some(b) = &self.0 {
            b.set_length(total);
        }
    }
    fn advance(&self, bytes: u64) {
        if let Some(b) = &self.0 {
            b.inc(bytes);
        }
    }
    fn grow(&self, bytes: u64) {
        if let Some(b) = &self.0 {
            b.inc_length(bytes);
        }
    }
    fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

fn custody_path(dest: &std::path::Path) -> PathBuf {
    let mut name = dest
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".custody.json");
    dest.with_file_name(name)
}

#[allow(clippy::too_many_arguments)] // one parameter per CLI option
fn extract_cmd(
    file: &std::path::Path,
    dest: &std::path::Path,
    path: &str,
    args: &KeyArgs,
    at: Option<&str>,
    threads: Option<usize>,
    mode_from_umask: bool,
    global: &GlobalOpts,
) -> CommandResult {
    let dest = dest.to_path_buf();
    if dest.file_name().is_none() {
        bail!("{}: not a valid destination directory name", dest.display());
    }
    let record_path = custody_path(&dest);
    if dest.symlink_metadata().is_ok() {
        bail!(
            "{} already exists; extraction needs a new destination",
            dest.display()
        );
    }
    if record_path.symlink_metadata().is_ok() {
        bail!(
            "{} already exists; refusing to overwrite a custody record",
            record_path.display()
        );
    }
    let (realm, trust) = unlock(file, args, global)?;
    let t = parse_at(&realm, at)?;
    let path = normalize(path);
    let bar = if !global.json && std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Bar(Some(b))
    } else {
        Bar(None)
    };
    let options = ExtractOptions {
        at: t,
        path: path.clone(),
        threads: threads.unwrap_or_else(parallel::default_threads),
        cancel: Some(install_interrupt_flag()),
        file_mode: if mode_from_umask {
            0o666
        } else {
            extract::PRIVATE_FILE_MODE
        },
        dir_mode: if mode_from_umask {
            0o777
        } else {
            extract::PRIVATE_DIR_MODE
        },
    };
    // The export's own SHA-256 (for the record) is computed alongside the extraction: one more
    // core's worth of work that would otherwise come first.
    // It stops as soon as the extraction is interrupted or fails (no wait for a full pass).
    let extraction_over = std::sync::atomic::AtomicBool::new(false);
    // The record's per-entry lists are spooled beside it as entries complete (bounded memory).
    let record_dir = record_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf();
    let mut record_writer = extract::CustodyRecordWriter::new(&record_dir)?;
    let (extracted, hashed) = std::thread::scope(|scope| {
        let interrupted = options.cancel;
        let stop = &extraction_over;
        let realm = &realm;
        let hasher = scope.spawn(move || {
            let mut flags = vec![stop];
            flags.extend(interrupted);
            extract::export_sha256_unless(realm, &flags)
        });
        let extracted = extract::extract_to(realm, &dest, &options, &bar, &mut record_writer);
        if extracted.is_err() {
            extraction_over.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        (extracted, hasher.join())
    });
    let report = match extracted {
        Ok(r) => r,
        Err(crate::export::ExportError::Interrupted) => {
            bar.finish();
            eprintln!("interrupted: nothing was written to {}", dest.display());
            return Ok(ExitCode::from(130));
        }
        Err(e) => return Err(e.into()),
    };
    let (export_sha256, export_size) = match hashed {
        Ok(Ok(h)) => h,
        Ok(Err(crate::export::ExportError::Interrupted)) => {
            // Ctrl-C after the extraction, while the export was still being hashed.
            let _ = std::fs::remove_dir_all(&dest);
            bar.finish();
            eprintln!("interrupted: nothing was written to {}", dest.display());
            return Ok(ExitCode::from(130));
        }
        Ok(Err(e)) => {
            let _ = std::fs::remove_dir_all(&dest);
            return Err(e.into());
        }
        Err(_) => {
            let _ = std::fs::remove_dir_all(&dest);
            bail!("hashing the export file failed");
        }
    };
    let service = realm.service();
    let record = CustodyRecord {
        tool: "sequester-custody".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        created_at: DateTime::now(),
        export_file: std::fs::canonicalize(file)?.display().to_string(),
        export_sha256: export_sha256.clone(),
        export_size,
        organization_id: realm.info().organization_id.clone(),
        realm_id: realm.realm_id(),
        realm_name: realm.realm_name_at(t).to_string(),
        snapshot_timestamp: realm.snapshot(),
        export_complete: realm.info().is_complete(),
        time_of_interest: t,
        extracted_path: path.clone(),
        destination: std::fs::canonicalize(&dest)?.display().to_string(),
        service_id: service.service_id,
        service_label: service.label.clone(),
        service_revoked: service.revoked,
        key_fingerprint_sha256: realm.token_key_fingerprint().to_string(),
        trust_anchor: trust.clone(),
        token: realm.token().clone(),
        token_operations: realm.token_operations(),
        realm_key_indexes_obtained: realm.recovery().obtained_key_indexes.clone(),
        realm_key_indexes_missing: realm.recovery().missing_key_indexes.clone(),
        files_extracted: report.files,
        bytes_extracted: report.bytes,
    };
    let problems = verify::export_problems(&realm);
    let unreadable_sample = std::mem::take(&mut record_writer.unreadable_sample);
    if let Err(e) = record_writer.publish(&record_path, &record, &problems) {
        // No tree without its record: undo the extraction.
        let _ = std::fs::remove_dir_all(&dest);
        return Err(e.into());
    }
    if global.json {
        // The record itself is in the custody file: the per-entry lists are not repeated here
        // (they would cost memory per entry), only the first unreadable entries and the counts.
        print_json(&json!({
            "destination": dest.display().to_string(),
            "custody_record": record_path.display().to_string(),
            "record": record,
            "folders_extracted": report.folders,
            "unreadable_total": report.unreadable,
            "unreadable": unreadable_sample,
            "problems": problems,
        }))?;
    } else {
        safe_println!(
            "Extracted {} file(s), {} folder(s), {} bytes of `{}` as of {t} to {}",
            report.files,
            report.folders,
            report.bytes,
            realm.realm_name_at(t),
            dest.display()
        );
        if report.unreadable > 0 {
            safe_println!("{} entr(y/ies) NOT extracted:", report.unreadable);
            for u in &unreadable_sample {
                safe_println!("  {} ({}, v{}): {}", u.path, u.kind, u.version, u.reason);
            }
            if report.unreadable > unreadable_sample.len() as u64 {
                safe_println!(
                    "  ... and {} more: see the custody record",
                    report.unreadable - unreadable_sample.len() as u64
                );
            }
        }
        if !problems.is_empty() {
            safe_println!(
                "{} problem(s) of the export as a whole (see `export verify`):",
                problems.len()
            );
            for p in &problems {
                safe_println!("  [{}] {}", p.kind, p.reason);
            }
        }
        safe_println!("Custody record: {}", record_path.display());
        safe_println!("Export SHA-256: {export_sha256}");
    }
    Ok(ExitCode::SUCCESS)
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    // Async-signal-safe: only an atomic store.
    INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// SIGINT / SIGTERM set a flag that the extraction polls, so that an interrupted run removes its
/// temporary tree instead of leaving it behind.
fn install_interrupt_flag() -> &'static std::sync::atomic::AtomicBool {
    let handler = on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
    &INTERRUPTED
}

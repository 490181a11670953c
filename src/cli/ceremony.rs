//! `ceremony` commands (transcript verification, plans) and the transcript recorder used by
//! every command that uses or creates a private key.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use super::{CommandResult, GlobalOpts};
use sequester_custody::ceremony::plan::{self, CeremonyPlan, KeyProvider, RunOptions, StepStatus};
use sequester_custody::ceremony::sign::SigningPolicy;
use sequester_custody::ceremony::transcript::{self, EntryContent, KeyRecord, Transcript};
use sequester_custody::parsec::spki::{RsaPublicKeyDer, MIN_SIGNING_BITS};
use sequester_custody::token::{KeyHandle, Role, TokenError};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum CeremonyCommand {
    /// Check a transcript's hash chain and print its head digest (write it on the paper record).
    Verify(VerifyArgs),
    /// Execute a ceremony plan (TOML) step by step, confirming each step.
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    /// Transcript file (JSON lines).
    pub(crate) file: PathBuf,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// The plan (TOML); relative paths in it are relative to its directory.
    pub(crate) plan: PathBuf,
    /// Do not ask for confirmation before each step.
    #[arg(long)]
    pub(crate) yes: bool,
    /// Operator names (added to those in the plan).
    #[arg(long = "operator", value_name = "NAME")]
    pub(crate) operators: Vec<String>,
    /// Accept timestamps more than 5 minutes in the future.
    #[arg(long)]
    pub(crate) allow_future: bool,
    /// TEST ONLY: accept keys down to this size.
    #[arg(long, hide = true)]
    pub(crate) insecure_min_bits: Option<usize>,
}

/// Transcript options of the commands that use or create private keys.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct CeremonyArgs {
    /// Ceremony transcript to append to (default: ./sequester-custody-transcript.jsonl).
    #[arg(long, value_name = "FILE", env = "SEQUESTER_CUSTODY_TRANSCRIPT")]
    pub(crate) transcript: Option<PathBuf>,
    /// Name of an operator present (repeatable); recorded in the transcript.
    #[arg(long = "operator", value_name = "NAME")]
    pub(crate) operators: Vec<String>,
}

/// Builds one transcript entry while a command runs, and appends it at the end (success or
/// failure). Announces the transcript location on stderr.
pub(crate) struct Recorder {
    transcript: Transcript,
    pub(crate) entry: EntryContent,
}

impl Recorder {
    pub(crate) fn start(
        command: &str,
        args: &CeremonyArgs,
        _global: &GlobalOpts,
    ) -> anyhow::Result<Self> {
        let path = args
            .transcript
            .clone()
            .unwrap_or_else(|| PathBuf::from(transcript::DEFAULT_FILE));
        eprintln!("transcript: {}", path.display());
        // Refuse to start on a broken chain or an unwritable file: better now than after the
        // token signed.
        if path.exists() {
            transcript::verify(&path)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot write the transcript {}", path.display()))?;
        let argv: Vec<String> = std::env::args().skip(1).collect();
        Ok(Self {
            transcript: Transcript::new(path),
            entry: EntryContent::new(command, &argv, &args.operators),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.transcript.path
    }

    /// Records the authority key and its token.
    pub(crate) fn add_authority(&mut self, key: &dyn KeyHandle, uri: &str) {
        self.entry.add_token(key.token());
        if let Ok(k) = RsaPublicKeyDer::from_der(key.public_key_spki()) {
            self.entry.keys.push(KeyRecord {
                role: "authority".into(),
                uri: Some(transcript::redact_args_one(uri)),
                label: key.info().ok().map(|i| i.label),
                bits: k.bits(),
                fingerprint: k.fingerprint(),
            });
        }
    }

    /// Records any key used or created (role `authority`, `service`, …) and its token.
    pub(crate) fn add_key(&mut self, role: &str, key: &dyn KeyHandle) {
        self.entry.add_token(key.token());
        if let Ok(k) = RsaPublicKeyDer::from_der(key.public_key_spki()) {
            let info = key.info().ok();
            self.entry.keys.push(KeyRecord {
                role: role.into(),
                uri: info.as_ref().map(|i| transcript::redact_args_one(&i.uri)),
                label: info.map(|i| i.label),
                bits: k.bits(),
                fingerprint: k.fingerprint(),
            });
        }
    }

    pub(crate) fn ok(&mut self) -> anyhow::Result<String> {
        self.entry.result = "ok".into();
        Ok(self.transcript.append(self.entry.clone())?)
    }

    pub(crate) fn fail(&mut self, err: &anyhow::Error) -> anyhow::Result<String> {
        self.entry.result = format!("failed: {err:#}");
        Ok(self.transcript.append(self.entry.clone())?)
    }
}

/// Runs `body` and appends its outcome (success or failure) to the transcript; returns the
/// body's value and the new head digest. For commands that create or use a private key, e.g.
/// `key generate`: `recorded("key generate", &args.ceremony, global, |rec| { …;
/// rec.add_key("authority", key.as_ref()); rec.entry.add_output(path)?; Ok(value) })`.
pub(crate) fn recorded<T>(
    command: &str,
    args: &CeremonyArgs,
    global: &GlobalOpts,
    body: impl FnOnce(&mut Recorder) -> anyhow::Result<T>,
) -> anyhow::Result<(T, String)> {
    let mut rec = Recorder::start(command, args, global)?;
    match body(&mut rec) {
        Ok(value) => {
            let head = rec.ok()?;
            Ok((value, head))
        }
        Err(e) => {
            rec.fail(&e)?;
            Err(e)
        }
    }
}

pub(crate) fn run(cmd: CeremonyCommand, global: &GlobalOpts) -> CommandResult {
    match cmd {
        CeremonyCommand::Verify(args) => verify(args, global),
        CeremonyCommand::Run(args) => run_plan(args, global),
    }
}

fn verify(args: VerifyArgs, global: &GlobalOpts) -> CommandResult {
    let report = transcript::verify(&args.file)?;
    if global.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "transcript {}: chain OK, {} entries{}",
            args.file.display(),
            report.entries,
            report
                .last_time
                .as_ref()
                .map(|t| format!(", last at {t}"))
                .unwrap_or_default()
        );
        println!("head digest: {}", report.head);
    }
    Ok(ExitCode::SUCCESS)
}

/// Token operations for plans, through the token layer.
struct TokenProvider;

impl KeyProvider for TokenProvider {
    fn open_key(&self, uri: &str) -> Result<Box<dyn KeyHandle>, TokenError> {
        sequester_custody::token::open_key(uri, super::token::terminal())
    }

    fn generate_key(
        &self,
        token_uri: &str,
        role: Role,
        label: &str,
        bits: usize,
    ) -> Result<Box<dyn KeyHandle>, TokenError> {
        sequester_custody::token::generate_key(
            token_uri,
            &sequester_custody::token::KeySpec {
                role,
                label: label.to_string(),
                bits,
                allow_insecure_test_size: false,
                always_authenticate: false,
            },
            super::token::terminal(),
        )
    }
}

fn run_plan(args: RunArgs, global: &GlobalOpts) -> CommandResult {
    let mut plan = CeremonyPlan::load(&args.plan)?;
    plan.operators.extend(args.operators.iter().cloned());
    plan.check()?;
    let plan_dir = args
        .plan
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let (_, transcript_path) = plan::resolve_paths(&plan, &plan_dir);
    eprintln!("transcript: {}", transcript_path.display());
    if !args.yes && !std::io::stdin().is_terminal() {
        eprintln!("note: stdin is not a terminal; answer each step with `y` on stdin or use --yes");
    }
    let yes = args.yes;
    let mut confirm = |description: &str| -> bool {
        if yes {
            return true;
        }
        eprint!("run step: {description}? [y/N] ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        match std::io::stdin().lock().read_line(&mut line) {
            Ok(0) | Err(_) => false,
            Ok(_) => matches!(line.trim(), "y" | "Y" | "yes" | "YES"),
        }
    };
    let mut progress = |line: &str| eprintln!("{line}");
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let report = plan::run(
        &plan,
        &plan_dir,
        &TokenProvider,
        RunOptions {
            policy: SigningPolicy {
                min_bits: args.insecure_min_bits.unwrap_or(MIN_SIGNING_BITS).max(1024),
                allow_future: args.allow_future,
                not_after: None,
            },
            args: argv,
            confirm: &mut confirm,
            progress: &mut progress,
        },
    )
    .context("ceremony plan")?;
    if global.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for s in &report.steps {
            let status = match s.status {
                StepStatus::Done => "DONE    ",
                StepStatus::Failed => "FAILED  ",
                StepStatus::Declined => "DECLINED",
                StepStatus::NotRun => "NOT RUN ",
            };
            println!("{status} step {}: {}", s.step, s.description);
            for o in &s.outputs {
                println!("           wrote {o}");
            }
            if let Some(m) = &s.message {
                println!("           {m}");
            }
        }
        println!(
            "transcript: {}{}",
            report.transcript.display(),
            report
                .transcript_head
                .as_ref()
                .map(|h| format!(" (head {h})"))
                .unwrap_or_default()
        );
    }
    if report.completed {
        Ok(ExitCode::SUCCESS)
    } else {
        let done = report
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::Done)
            .count();
        eprintln!(
            "error: the plan stopped: {done} of {} steps done (see above); nothing after the \
             failed step was run",
            report.steps.len()
        );
        Ok(ExitCode::from(1))
    }
}

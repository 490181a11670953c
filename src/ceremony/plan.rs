//! Declarative ceremony plans (`ceremony run PLAN.toml`): which keys to generate (or use) on
//! which tokens, which certificates to sign, where to write public files. The plan is checked
//! completely before the first step; steps run in order, each confirmed (unless `--yes`) and
//! recorded in the transcript; the run stops at the first failure or refusal and reports exactly
//! which steps were done and which were not.
//!
//! ```toml
//! operators = ["Alice Martin", "Bob Durand"]
//! output_dir = "out"                   # relative to the plan file; created if missing
//! transcript = "transcript.jsonl"      # relative to output_dir (default: transcript in output_dir)
//! organization = "Org1"                # optional: check/update the timestamp journal
//!
//! [[step]]
//! action = "generate-key"              # or "use-key" with `uri = "pkcs11:...;object=..."`
//! name = "authority"                   # how later steps refer to this key
//! role = "authority"
//! token = "pkcs11:token=Authority?module-path=/usr/lib/softhsm/libsofthsm2.so"
//! label = "org1-authority"
//! bits = 2048
//! public_out = "authority.pub.pem"
//!
//! [[step]]
//! action = "service-certificate"
//! authority = "authority"              # a key name from an earlier step
//! service_key = "svc1"                 # a key name, or `service_public_key = "file.pem"`
//! label = "Service 1"
//! output = "."                          # directory (Parsec file name) or file
//!
//! [[step]]
//! action = "revocation-certificate"
//! authority = "authority"
//! service_id = "0123…"
//! output = "."
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::sign::{
    self, RevocationRequest, ServiceCertificateRequest, SignedCertificate, SigningPolicy,
};
use super::transcript::{EntryContent, KeyRecord, Transcript};
use super::{files, journal::Journal, CeremonyError};
use crate::fsutil::{self, Existing};
use crate::parsec::sequester::ServiceId;
use crate::parsec::spki::RsaPublicKeyDer;
use crate::parsec::DateTime;
use crate::token::{KeyHandle, Role, TokenError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CeremonyPlan {
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub operators: Vec<String>,
    #[serde(default)]
    pub output_dir: Option<PathBuf>,
    #[serde(default)]
    pub transcript: Option<PathBuf>,
    #[serde(default)]
    pub organization: Option<String>,
    #[serde(default)]
    pub journal: Option<PathBuf>,
    #[serde(rename = "step", default)]
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Step {
    GenerateKey(GenerateKey),
    UseKey(UseKey),
    ServiceCertificate(ServiceCertificateStep),
    RevocationCertificate(RevocationStep),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateKey {
    pub name: String,
    pub role: String,
    pub token: String,
    pub label: String,
    pub bits: usize,
    #[serde(default)]
    pub public_out: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UseKey {
    pub name: String,
    pub uri: String,
    #[serde(default)]
    pub public_out: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceCertificateStep {
    pub authority: String,
    #[serde(default)]
    pub service_key: Option<String>,
    #[serde(default)]
    pub service_public_key: Option<PathBuf>,
    pub label: String,
    #[serde(default)]
    pub service_id: Option<String>,
    #[serde(default)]
    pub timestamp: Option<String>,
    #[serde(default)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationStep {
    pub authority: String,
    pub service_id: String,
    #[serde(default)]
    pub timestamp: Option<String>,
    #[serde(default)]
    pub output: Option<PathBuf>,
}

/// Key sizes a plan may generate.
pub(crate) const PLAN_KEY_SIZES: [usize; 3] = [2048, 3072, 4096];

impl CeremonyPlan {
    pub(crate) fn parse(text: &str) -> Result<Self, CeremonyError> {
        toml::from_str(text).map_err(|e| CeremonyError::Plan(format!("invalid plan: {e}")))
    }

    pub fn load(path: &Path) -> Result<Self, CeremonyError> {
        let text = std::fs::read_to_string(path).map_err(|e| CeremonyError::io(path, e))?;
        Self::parse(&text)
    }

    /// Static checks done before anything runs: names, references, sizes, labels, timestamps.
    pub fn check(&self) -> Result<(), CeremonyError> {
        let fail = |i: usize, msg: String| CeremonyError::Plan(format!("step {}: {msg}", i + 1));
        if self.steps.is_empty() {
            return Err(CeremonyError::Plan("the plan has no [[step]]".into()));
        }
        let mut names: HashMap<&str, Role> = HashMap::new();
        for (i, step) in self.steps.iter().enumerate() {
            match step {
                Step::GenerateKey(g) => {
                    let role: Role = g.role.parse().map_err(|e: String| fail(i, e))?;
                    if !PLAN_KEY_SIZES.contains(&g.bits) {
                        return Err(fail(
                            i,
                            format!("bits = {} (use 2048, 3072 or 4096)", g.bits),
                        ));
                    }
                    if g.label.trim().is_empty() {
                        return Err(fail(i, "empty key label".into()));
                    }
                    if names.insert(&g.name, role).is_some() {
                        return Err(fail(i, format!("key name `{}` used twice", g.name)));
                    }
                }
                Step::UseKey(u) => {
                    if names.insert(&u.name, Role::Service).is_some() {
                        return Err(fail(i, format!("key name `{}` used twice", u.name)));
                    }
                }
                Step::ServiceCertificate(s) => {
                    if !names.contains_key(s.authority.as_str()) {
                        return Err(fail(
                            i,
                            format!(
                                "authority `{}` is not a key named by an earlier step",
                                s.authority
                            ),
                        ));
                    }
                    match (&s.service_key, &s.service_public_key) {
                        (Some(k), None) => {
                            if !names.contains_key(k.as_str()) {
                                return Err(fail(
                                    i,
                                    format!(
                                        "service_key `{k}` is not a key named by an earlier step"
                                    ),
                                ));
                            }
                        }
                        (None, Some(_)) => {}
                        _ => {
                            return Err(fail(
                                i,
                                "give exactly one of service_key and service_public_key".into(),
                            ))
                        }
                    }
                    if s.label.trim().is_empty() {
                        return Err(fail(i, "empty service label".into()));
                    }
                    if let Some(id) = &s.service_id {
                        id.parse::<ServiceId>().map_err(|e| fail(i, e))?;
                    }
                    if let Some(t) = &s.timestamp {
                        t.parse::<DateTime>().map_err(|e| fail(i, e))?;
                    }
                }
                Step::RevocationCertificate(r) => {
                    if !names.contains_key(r.authority.as_str()) {
                        return Err(fail(
                            i,
                            format!(
                                "authority `{}` is not a key named by an earlier step",
                                r.authority
                            ),
                        ));
                    }
                    r.service_id.parse::<ServiceId>().map_err(|e| fail(i, e))?;
                    if let Some(t) = &r.timestamp {
                        t.parse::<DateTime>().map_err(|e| fail(i, e))?;
                    }
                }
            }
        }
        Ok(())
    }
}

impl Step {
    /// One line shown before confirmation and in the report.
    pub(crate) fn describe(&self) -> String {
        match self {
            Step::GenerateKey(g) => format!(
                "generate {} key `{}` (RSA {}, label `{}`) on {}",
                g.role, g.name, g.bits, g.label, g.token
            ),
            Step::UseKey(u) => format!("use existing key `{}` at {}", u.name, u.uri),
            Step::ServiceCertificate(s) => format!(
                "sign service certificate `{}` for {} with authority `{}`",
                s.label,
                s.service_key
                    .clone()
                    .map(|k| format!("key `{k}`"))
                    .or_else(|| s
                        .service_public_key
                        .as_ref()
                        .map(|p| p.display().to_string()))
                    .unwrap_or_default(),
                s.authority
            ),
            Step::RevocationCertificate(r) => format!(
                "sign revocation of service {} with authority `{}`",
                r.service_id, r.authority
            ),
        }
    }
}

/// Token operations a plan needs; the application layer provides them (PKCS#11 backend).
pub trait KeyProvider {
    fn open_key(&self, uri: &str) -> Result<Box<dyn KeyHandle>, TokenError>;
    /// Generates a key on the token and returns a handle to it.
    fn generate_key(
        &self,
        token_uri: &str,
        role: Role,
        label: &str,
        bits: usize,
    ) -> Result<Box<dyn KeyHandle>, TokenError>;
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum StepStatus {
    Done,
    Failed,
    Declined,
    NotRun,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub step: usize,
    pub description: String,
    pub status: StepStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub outputs: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    pub steps: Vec<StepReport>,
    pub completed: bool,
    pub transcript: PathBuf,
    pub transcript_head: Option<String>,
}

/// Options of one run.
pub struct RunOptions<'a> {
    pub policy: SigningPolicy,
    /// The command line, for the transcript.
    pub args: Vec<String>,
    /// Asked before each step with its description; `false` stops the run.
    pub confirm: &'a mut dyn FnMut(&str) -> bool,
    /// Progress lines (stderr in the CLI).
    pub progress: &'a mut dyn FnMut(&str),
}

/// Where the plan's outputs and transcript go.
pub fn resolve_paths(plan: &CeremonyPlan, plan_dir: &Path) -> (PathBuf, PathBuf) {
    let out = plan_dir.join(
        plan.output_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(".")),
    );
    let transcript = out.join(
        plan.transcript
            .clone()
            .unwrap_or_else(|| PathBuf::from(super::transcript::DEFAULT_FILE)),
    );
    (out, transcript)
}

struct NamedKey {
    handle: Box<dyn KeyHandle>,
    public: RsaPublicKeyDer,
}

/// Runs a checked plan.
pub fn run(
    plan: &CeremonyPlan,
    plan_dir: &Path,
    provider: &dyn KeyProvider,
    opts: RunOptions,
) -> Result<PlanReport, CeremonyError> {
    plan.check()?;
    let (out_dir, transcript_path) = resolve_paths(plan, plan_dir);
    std::fs::create_dir_all(&out_dir).map_err(|e| CeremonyError::io(&out_dir, e))?;
    let transcript = Transcript::new(&transcript_path);
    let mut journal = match &plan.organization {
        Some(_) => Some(Journal::load(
            &plan
                .journal
                .as_ref()
                .map(|j| plan_dir.join(j))
                .unwrap_or_else(super::journal::default_path),
        )?),
        None => None,
    };
    let mut reports: Vec<StepReport> = plan
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| StepReport {
            step: i + 1,
            description: s.describe(),
            status: StepStatus::NotRun,
            message: None,
            outputs: vec![],
        })
        .collect();
    let mut keys: HashMap<String, NamedKey> = HashMap::new();
    let mut head = None;
    let mut completed = true;
    for (i, step) in plan.steps.iter().enumerate() {
        let description = step.describe();
        (opts.progress)(&format!(
            "step {}/{}: {description}",
            i + 1,
            plan.steps.len()
        ));
        if !(opts.confirm)(&description) {
            reports[i].status = StepStatus::Declined;
            reports[i].message = Some("declined by the operator".into());
            completed = false;
            break;
        }
        let mut entry = EntryContent::new(
            &format!("ceremony run: step {}", i + 1),
            &opts.args,
            &plan.operators,
        );
        entry.detail("step", &description);
        let result = run_step(
            step,
            &out_dir,
            plan_dir,
            provider,
            &opts.policy,
            &mut keys,
            journal.as_mut().zip(plan.organization.as_deref()),
            &mut entry,
        );
        match result {
            Ok(outputs) => {
                entry.result = "ok".into();
                reports[i].status = StepStatus::Done;
                reports[i].outputs = outputs.iter().map(|p| p.display().to_string()).collect();
                head = Some(transcript.append(entry)?);
            }
            Err(e) => {
                entry.result = format!("failed: {e}");
                reports[i].status = StepStatus::Failed;
                reports[i].message = Some(e.to_string());
                head = Some(transcript.append(entry)?);
                completed = false;
                break;
            }
        }
    }
    Ok(PlanReport {
        steps: reports,
        completed,
        transcript: transcript_path,
        transcript_head: head,
    })
}

fn key_record(
    role: &str,
    uri: Option<&str>,
    label: Option<&str>,
    key: &RsaPublicKeyDer,
) -> KeyRecord {
    KeyRecord {
        role: role.into(),
        uri: uri.map(crate::ceremony::transcript::redact_args_one),
        label: label.map(str::to_string),
        bits: key.bits(),
        fingerprint: key.fingerprint(),
    }
}

#[allow(clippy::too_many_arguments)]
fn run_step(
    step: &Step,
    out_dir: &Path,
    plan_dir: &Path,
    provider: &dyn KeyProvider,
    policy: &SigningPolicy,
    keys: &mut HashMap<String, NamedKey>,
    journal: Option<(&mut Journal, &str)>,
    entry: &mut EntryContent,
) -> Result<Vec<PathBuf>, CeremonyError> {
    let mut outputs = Vec::new();
    match step {
        Step::GenerateKey(g) => {
            let role: Role = g.role.parse().map_err(CeremonyError::Plan)?;
            // Refuse to clobber before the token creates anything.
            let public_path = g.public_out.as_ref().map(|p| out_dir.join(p));
            if let Some(p) = &public_path {
                if p.exists() {
                    return Err(CeremonyError::io(
                        p,
                        "already exists; refusing to overwrite",
                    ));
                }
            }
            let handle = provider.generate_key(&g.token, role, &g.label, g.bits)?;
            let public = RsaPublicKeyDer::from_der(handle.public_key_spki())?;
            entry.add_token(handle.token());
            entry
                .keys
                .push(key_record(&g.role, None, Some(&g.label), &public));
            if let Ok(info) = handle.info() {
                entry.detail(
                    "key_uri",
                    crate::ceremony::transcript::redact_args_one(&info.uri),
                );
                entry.detail("provenance", info.provenance.verdict);
            }
            if let Some(p) = public_path {
                let written = fsutil::write_atomic(&p, public.to_pem().as_bytes(), Existing::Keep)
                    .map_err(CeremonyError::from)
                    .and_then(|_| entry.add_output(&p));
                if let Err(e) = written {
                    return Err(CeremonyError::Plan(format!(
                        "the key `{}` WAS generated on the token (sha256 {}), but its public key \
                         could not be written: {e}",
                        g.label,
                        public.fingerprint()
                    )));
                }
                outputs.push(p);
            }
            keys.insert(g.name.clone(), NamedKey { handle, public });
        }
        Step::UseKey(u) => {
            let handle = provider.open_key(&u.uri)?;
            let public = RsaPublicKeyDer::from_der(handle.public_key_spki())?;
            entry.add_token(handle.token());
            entry
                .keys
                .push(key_record("existing", Some(&u.uri), None, &public));
            if let Some(p) = &u.public_out {
                let p = out_dir.join(p);
                fsutil::write_atomic(&p, public.to_pem().as_bytes(), Existing::Keep)?;
                entry.add_output(&p)?;
                outputs.push(p);
            }
            keys.insert(u.name.clone(), NamedKey { handle, public });
        }
        Step::ServiceCertificate(s) => {
            let authority = keys
                .get(&s.authority)
                .ok_or_else(|| CeremonyError::Plan(format!("no key `{}`", s.authority)))?;
            let service_key = match (&s.service_key, &s.service_public_key) {
                (Some(name), _) => keys
                    .get(name)
                    .ok_or_else(|| CeremonyError::Plan(format!("no key `{name}`")))?
                    .public
                    .clone(),
                (None, Some(file)) => {
                    let p = plan_dir.join(file);
                    let text = std::fs::read_to_string(&p).map_err(|e| CeremonyError::io(&p, e))?;
                    entry.add_input(&p)?;
                    RsaPublicKeyDer::from_pem(&text)
                        .map_err(|e| CeremonyError::ServiceKeyPolicy(e.to_string()))?
                }
                (None, None) => unreachable!("checked"),
            };
            let request = ServiceCertificateRequest {
                service_key,
                label: s.label.clone(),
                service_id: s
                    .service_id
                    .as_deref()
                    .map(str::parse)
                    .transpose()
                    .map_err(CeremonyError::Plan)?,
                timestamp: s
                    .timestamp
                    .as_deref()
                    .map(str::parse)
                    .transpose()
                    .map_err(CeremonyError::Plan)?,
            };
            let mut policy = policy.clone();
            if let Some((j, org)) = &journal {
                policy.not_after = j.not_after(org);
            }
            entry.add_token(authority.handle.token());
            entry
                .keys
                .push(key_record("authority", None, None, &authority.public));
            entry
                .keys
                .push(key_record("service", None, None, &request.service_key));
            let signed = sign::sign_service_certificate(
                authority.handle.as_ref(),
                None,
                &request,
                &policy,
                DateTime::now(),
            )?;
            let path = write_certificate(&signed, out_dir, s.output.as_deref(), entry)?;
            if let Some((j, org)) = journal {
                j.record(org, &signed.certificate)?;
            }
            outputs.push(path);
        }
        Step::RevocationCertificate(r) => {
            let authority = keys
                .get(&r.authority)
                .ok_or_else(|| CeremonyError::Plan(format!("no key `{}`", r.authority)))?;
            let request = RevocationRequest {
                service_id: r.service_id.parse().map_err(CeremonyError::Plan)?,
                timestamp: r
                    .timestamp
                    .as_deref()
                    .map(str::parse)
                    .transpose()
                    .map_err(CeremonyError::Plan)?,
            };
            let mut policy = policy.clone();
            if let Some((j, org)) = &journal {
                j.check_known_service(org, request.service_id)?;
                policy.not_after = j.not_after(org);
            }
            entry.add_token(authority.handle.token());
            entry
                .keys
                .push(key_record("authority", None, None, &authority.public));
            let signed = sign::sign_revocation_certificate(
                authority.handle.as_ref(),
                None,
                &request,
                &policy,
                DateTime::now(),
            )?;
            let path = write_certificate(&signed, out_dir, r.output.as_deref(), entry)?;
            if let Some((j, org)) = journal {
                j.record(org, &signed.certificate)?;
            }
            outputs.push(path);
        }
    }
    Ok(outputs)
}

/// Writes a signed certificate atomically (no overwrite) and records it in the entry.
pub fn write_certificate(
    signed: &SignedCertificate,
    base_dir: &Path,
    output: Option<&Path>,
    entry: &mut EntryContent,
) -> Result<PathBuf, CeremonyError> {
    let target = output.map(|o| base_dir.join(o));
    let path = files::resolve_output(
        Some(target.as_deref().unwrap_or(base_dir)),
        &signed.file_name,
    );
    fsutil::write_atomic(&path, signed.pem.as_bytes(), Existing::Keep)?;
    let summary = signed.summary();
    entry.detail("certificate", &summary);
    entry.detail("mechanism", signed.mechanism);
    entry.add_output(&path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: &str = r#"
operators = ["Alice", "Bob"]
output_dir = "out"

[[step]]
action = "generate-key"
name = "authority"
role = "authority"
token = "pkcs11:token=A"
label = "auth"
bits = 2048
public_out = "authority.pub.pem"

[[step]]
action = "generate-key"
name = "svc1"
role = "service"
token = "pkcs11:token=S"
label = "svc"
bits = 4096

[[step]]
action = "service-certificate"
authority = "authority"
service_key = "svc1"
label = "Service 1"
output = "."

[[step]]
action = "revocation-certificate"
authority = "authority"
service_id = "00000000000000000000000000000001"
"#;

    #[test]
    fn plan_parses_and_checks() {
        let plan = CeremonyPlan::parse(PLAN).unwrap();
        plan.check().unwrap();
        assert_eq!(plan.steps.len(), 4);
        assert!(plan.steps[2].describe().contains("Service 1"));

        let bad = |from: &str, to: &str| {
            CeremonyPlan::parse(&PLAN.replacen(from, to, 1))
                .and_then(|p| p.check())
                .unwrap_err()
                .to_string()
        };
        assert!(bad("bits = 2048", "bits = 1024").contains("step 1: bits = 1024"));
        assert!(bad("authority = \"authority\"", "authority = \"nope\"").contains("step 3"));
        assert!(bad("label = \"Service 1\"", "label = \"  \"").contains("empty service label"));
        assert!(bad("role = \"service\"", "role = \"boss\"").contains("unknown role"));
        assert!(bad("00000000000000000000000000000001", "zz").contains("step 4"));
        assert!(bad("label = \"auth\"", "label = \"auth\"\ncolour = 1").contains("invalid plan"));
    }
}

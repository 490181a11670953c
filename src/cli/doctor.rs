//! `doctor`: is this machine ready? One line per check — verdict, what was checked, and the fix —
//! for the smartcard service (pcscd), the PKCS#11 modules and their tokens, FUSE, the clock, the
//! HSM profiles and the journal and transcript locations. Exit status 1 when any check fails.
//! Nothing is written, no PIN is asked, no token is logged into.

use std::ffi::CString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::{CommandResult, GlobalOpts};
use sequester_custody::ceremony::{journal, transcript};
use sequester_custody::token::pkcs11::{self, module, registry};
use sequester_custody::token::profile;
use sequester_custody::token::uri::Pkcs11Uri;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct DoctorArgs {
    /// Also check this PKCS#11 module (repeatable).
    #[arg(long = "module", value_name = "PATH")]
    pub(crate) modules: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Verdict {
    Ok,
    Warn,
    Fail,
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    pub(crate) verdict: Verdict,
    /// Which area: build, pcscd, pkcs11, fuse, clock, profiles, journal, transcript.
    pub(crate) area: &'static str,
    /// What was found.
    pub(crate) what: String,
    /// What to do about it (empty when nothing is to be done).
    pub(crate) fix: String,
}

impl Check {
    fn new(verdict: Verdict, area: &'static str, what: impl Into<String>, fix: &str) -> Self {
        Check {
            verdict,
            area,
            what: what.into(),
            fix: fix.to_string(),
        }
    }
}

pub(crate) fn run(args: DoctorArgs, global: &GlobalOpts) -> CommandResult {
    let checks = checks(&args.modules);
    let failed = checks.iter().any(|c| c.verdict == Verdict::Fail);
    let mut out = std::io::stdout().lock();
    if global.json {
        serde_json::to_writer_pretty(&mut out, &serde_json::json!({ "checks": checks }))?;
        writeln!(out)?;
    } else {
        for c in &checks {
            let verdict = match c.verdict {
                Verdict::Ok => "ok  ",
                Verdict::Warn => "warn",
                Verdict::Fail => "FAIL",
            };
            if c.fix.is_empty() {
                writeln!(out, "{verdict} {:<10} {}", c.area, c.what)?;
            } else {
                writeln!(out, "{verdict} {:<10} {} — fix: {}", c.area, c.what, c.fix)?;
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Every check, in display order.
pub(crate) fn checks(extra_modules: &[PathBuf]) -> Vec<Check> {
    let mut checks = vec![build_features()];
    #[cfg(feature = "yubikey")]
    checks.extend(pcscd());
    checks.extend(pkcs11_modules(extra_modules));
    #[cfg(feature = "mount")]
    checks.extend(fuse());
    checks.push(clock());
    checks.push(profiles());
    checks.push(writable(
        "journal",
        &journal::default_path(),
        "set XDG_STATE_HOME to a writable directory, or pass --journal FILE",
    ));
    let transcript = std::env::var_os("SEQUESTER_CUSTODY_TRANSCRIPT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(transcript::DEFAULT_FILE));
    checks.push(writable(
        "transcript",
        &transcript,
        "run from a writable directory, or set SEQUESTER_CUSTODY_TRANSCRIPT / pass --transcript FILE",
    ));
    checks
}

/// The cargo features this binary was built with: a PKCS#11-only build has no `yubikey:`
/// backend (no pcscd check) and no `export mount` (no FUSE check).
fn build_features() -> Check {
    let built: Vec<&str> = [
        ("yubikey", cfg!(feature = "yubikey")),
        ("mount", cfg!(feature = "mount")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    let what = if built.is_empty() {
        "features: none (PKCS#11 only: no `yubikey:` backend, no `export mount`)".to_string()
    } else {
        format!("features: {}", built.join(", "))
    };
    Check::new(Verdict::Ok, "build", what, "")
}

/// pcscd reachable, its readers and the cards in them (ATR), without connecting to a card.
#[cfg(feature = "yubikey")]
fn pcscd() -> Vec<Check> {
    use pcsc::{Context, ReaderState, Scope, State};
    const FIX_PCSCD: &str =
        "apt-get install pcscd (then: systemctl enable --now pcscd.socket); needed for \
         smartcards and YubiKeys only";
    let ctx = match Context::establish(Scope::User) {
        Ok(ctx) => ctx,
        Err(e) => {
            return vec![Check::new(
                Verdict::Warn,
                "pcscd",
                format!("PC/SC service not reachable ({e})"),
                FIX_PCSCD,
            )]
        }
    };
    let readers: Vec<CString> = match ctx.list_readers_owned() {
        Ok(readers) => readers,
        Err(pcsc::Error::NoReadersAvailable) => Vec::new(),
        Err(e) => {
            return vec![Check::new(
                Verdict::Warn,
                "pcscd",
                format!("pcscd answers but cannot list readers ({e})"),
                FIX_PCSCD,
            )]
        }
    };
    if readers.is_empty() {
        return vec![Check::new(
            Verdict::Warn,
            "pcscd",
            "pcscd is reachable but sees no reader",
            "plug in the smartcard reader or YubiKey (only needed for those tokens)",
        )];
    }
    let mut states: Vec<ReaderState> = readers
        .iter()
        .map(|r| ReaderState::new(r.clone(), State::UNAWARE))
        .collect();
    let status = ctx.get_status_change(Duration::from_millis(500), &mut states);
    let mut checks = vec![Check::new(
        Verdict::Ok,
        "pcscd",
        format!("pcscd is reachable, {} reader(s)", readers.len()),
        "",
    )];
    for state in &states {
        let name = state.name().to_string_lossy();
        let what = match &status {
            Err(e) => format!("reader `{name}`: state unknown ({e})"),
            Ok(()) if state.event_state().contains(State::PRESENT) => {
                format!(
                    "reader `{name}`: card present, ATR {}",
                    hex::encode(state.atr())
                )
            }
            Ok(()) => format!("reader `{name}`: no card"),
        };
        checks.push(Check::new(Verdict::Ok, "pcscd", what, ""));
    }
    checks
}

/// Every module a URI can reach: profiles' installed modules, p11-kit's registered ones,
/// SEQUESTER_CUSTODY_MODULE and `--module`; whether each loads, its tokens and their paths.
fn pkcs11_modules(extra_modules: &[PathBuf]) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut extra: Vec<PathBuf> = extra_modules.to_vec();
    if let Some(path) = std::env::var_os(module::MODULE_ENV) {
        extra.push(PathBuf::from(path));
    }
    for (name, m) in registry::registered_modules() {
        if !m.enabled {
            checks.push(Check::new(
                Verdict::Ok,
                "pkcs11",
                format!(
                    "p11-kit module `{name}` is disabled for this program ({})",
                    m.config.display()
                ),
                "",
            ));
            continue;
        }
        match (&m.library, &m.remote) {
            (Some(library), _) if library.is_file() => extra.push(library.clone()),
            (Some(library), _) => checks.push(Check::new(
                Verdict::Warn,
                "pkcs11",
                format!(
                    "p11-kit module `{name}` ({}): {} does not exist",
                    m.config.display(),
                    library.display()
                ),
                "install the module's package, or remove the stale .module file",
            )),
            (None, Some(remote)) => checks.push(Check::new(
                Verdict::Ok,
                "pkcs11",
                format!("p11-kit module `{name}` is remote ({remote}): reached through p11-kit-proxy.so"),
                "",
            )),
            (None, None) => {}
        }
    }
    let mut missing_explicit = Vec::new();
    extra.retain(|p| {
        let present = p.is_file();
        if !present {
            missing_explicit.push(p.clone());
        }
        present
    });
    for path in missing_explicit {
        checks.push(Check::new(
            Verdict::Fail,
            "pkcs11",
            format!("module {} does not exist", path.display()),
            "correct the path (--module or SEQUESTER_CUSTODY_MODULE)",
        ));
    }
    let listings = match pkcs11::list_modules(&extra) {
        Ok(l) => l,
        Err(e) => {
            checks.push(Check::new(
                Verdict::Fail,
                "pkcs11",
                format!("cannot list modules: {e}"),
                "check SEQUESTER_CUSTODY_PROFILES and the module paths",
            ));
            return checks;
        }
    };
    let mut loaded = 0;
    for listing in listings {
        let name = listing
            .profile
            .clone()
            .map(|p| format!("profile `{p}`"))
            .unwrap_or_else(|| "module".into());
        let Some(path) = &listing.module_path else {
            // A profile whose product is not installed here: not a problem, only a fact.
            continue;
        };
        if let Some(error) = &listing.error {
            checks.push(Check::new(
                Verdict::Warn,
                "pkcs11",
                format!("{name} {}: {error}", path.display()),
                "check the module's own service (pcscd for smartcard modules, \
                 P11_KIT_SERVER_ADDRESS for p11-kit-client.so, the vendor's config file)",
            ));
            continue;
        }
        loaded += 1;
        checks.push(Check::new(
            Verdict::Ok,
            "pkcs11",
            format!(
                "{name} {} loads ({}), {} token(s), {} free slot(s)",
                path.display(),
                listing.library.as_deref().unwrap_or("no C_GetInfo"),
                listing.tokens.len(),
                listing.free_slots
            ),
            "",
        ));
        for token in &listing.tokens {
            checks.push(token_check(&token.uri, &token.description.label));
        }
    }
    if loaded == 0 {
        checks.push(Check::new(
            Verdict::Fail,
            "pkcs11",
            "no PKCS#11 module loads on this machine",
            "install your token's module (e.g. opensc, ykcs11, softhsm2 for tests), or name it \
             with --module / SEQUESTER_CUSTODY_MODULE",
        ));
    }
    checks
}

fn token_check(uri: &str, label: &str) -> Check {
    // A token offering no mechanism at all (p11-kit's trust store) holds no keys: asking it for
    // each mechanism's details only makes its module log complaints.
    let uri = match Pkcs11Uri::parse(uri) {
        Ok(uri) => uri,
        Err(e) => {
            return Check::new(
                Verdict::Warn,
                "pkcs11",
                format!("  token `{label}`: {e}"),
                "report this: the listed URI does not parse",
            )
        }
    };
    if let Ok(token) = module::select_token(&uri) {
        if token
            .module
            .ctx
            .get_mechanism_list(token.slot)
            .is_ok_and(|m| m.is_empty())
        {
            return Check::new(
                Verdict::Ok,
                "pkcs11",
                format!("  token `{label}`: no mechanisms (a certificate store, not for keys)"),
                "",
            );
        }
    }
    let details = pkcs11::token_details(&uri);
    match details {
        Ok(d) => {
            let paths = |p: &[sequester_custody::token::MechanismPath]| {
                if p.is_empty() {
                    "none".to_string()
                } else {
                    p.iter()
                        .map(|m| m.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            };
            Check::new(
                Verdict::Ok,
                "pkcs11",
                format!(
                    "  token `{label}` (serial {}): decrypt paths [{}], sign paths [{}]",
                    d.summary.description.serial,
                    paths(&d.mechanisms.decrypt),
                    paths(&d.mechanisms.sign)
                ),
                "",
            )
        }
        Err(e) => Check::new(
            Verdict::Warn,
            "pkcs11",
            format!("  token `{label}`: {e}"),
            "check the token is still inserted and the module's service is running",
        ),
    }
}

/// `/dev/fuse` openable and `fusermount3` installed (setuid when not root).
#[cfg(feature = "mount")]
fn fuse() -> Vec<Check> {
    let mut checks = Vec::new();
    let dev = Path::new("/dev/fuse");
    checks.push(
        match std::fs::OpenOptions::new().read(true).write(true).open(dev) {
            Ok(_) => Check::new(Verdict::Ok, "fuse", "/dev/fuse can be opened", ""),
            Err(e) => Check::new(
                Verdict::Fail,
                "fuse",
                format!("/dev/fuse cannot be opened ({e})"),
                "modprobe fuse; in a container, run it with --device /dev/fuse",
            ),
        },
    );
    let fusermount = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("fusermount3"))
                .find(|p| p.is_file())
        })
        .unwrap_or(None);
    checks.push(match fusermount {
        None => Check::new(
            Verdict::Fail,
            "fuse",
            "fusermount3 not found on PATH (export mount needs it)",
            "apt-get install fuse3",
        ),
        Some(path) => {
            use std::os::unix::fs::PermissionsExt;
            let setuid = std::fs::metadata(&path)
                .map(|m| m.permissions().mode() & 0o4000 != 0)
                .unwrap_or(false);
            // SAFETY: geteuid has no preconditions.
            let root = unsafe { libc::geteuid() } == 0;
            if setuid || root {
                Check::new(
                    Verdict::Ok,
                    "fuse",
                    format!("{} is installed", path.display()),
                    "",
                )
            } else {
                Check::new(
                    Verdict::Fail,
                    "fuse",
                    format!("{} is not setuid root: users cannot mount", path.display()),
                    "dpkg-reconfigure fuse3, or chmod u+s on it",
                )
            }
        }
    });
    checks
}

/// The date the clock must be past: certificates are dated by it, and Parsec refuses a
/// certificate older than the last one. Earlier than this release means a reset clock.
const EARLIEST_SANE: &str = "2025-01-01T00:00:00Z";

fn clock() -> Check {
    let now = time::OffsetDateTime::now_utc();
    let earliest = time::OffsetDateTime::parse(
        EARLIEST_SANE,
        &time::format_description::well_known::Rfc3339,
    )
    .expect("constant date");
    let shown = now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    if now < earliest {
        return Check::new(
            Verdict::Fail,
            "clock",
            format!("the clock says {shown}, before {EARLIEST_SANE}"),
            "set the date (date -u -s 'YYYY-MM-DD HH:MM:SS') from a trusted clock before signing",
        );
    }
    // The installed binary's modification time is its package's build time: a clock behind it
    // has been set back.
    let binary_time = std::env::current_exe()
        .and_then(|p| std::fs::metadata(p)?.modified())
        .ok();
    if let Some(built) = binary_time {
        if built > SystemTime::now() + Duration::from_secs(24 * 3600) {
            return Check::new(
                Verdict::Warn,
                "clock",
                format!("the clock says {shown}, earlier than this program's installation"),
                "compare the date with a trusted clock before signing certificates",
            );
        }
    }
    let synced = Path::new("/run/systemd/timesync/synchronized").exists();
    Check::new(
        Verdict::Ok,
        "clock",
        format!(
            "the clock says {shown} (UTC){}",
            if synced {
                ", NTP-synchronised"
            } else {
                "; not NTP-synchronised (expected offline): compare with a trusted clock before a ceremony"
            }
        ),
        "",
    )
}

fn profiles() -> Check {
    match profile::all_profiles() {
        Ok(all) => {
            let dirs = profile::profile_directories()
                .into_iter()
                .filter(|d| d.is_dir())
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>();
            Check::new(
                Verdict::Ok,
                "profiles",
                format!(
                    "{} HSM profiles (built in{})",
                    all.len(),
                    if dirs.is_empty() {
                        String::new()
                    } else {
                        format!(", and from {}", dirs.join(", "))
                    }
                ),
                "",
            )
        }
        Err(e) => Check::new(
            Verdict::Fail,
            "profiles",
            format!("HSM profiles cannot be read: {e}"),
            "fix or remove the profile file named in the error",
        ),
    }
}

/// Whether `file` can be created or appended to, without creating or changing it: an existing
/// file must be writable, else its nearest existing ancestor directory (commands create the
/// missing directories).
fn writable(area: &'static str, file: &Path, fix: &str) -> Check {
    let shown = file.display();
    if file.exists() {
        return if access_w(file) {
            Check::new(Verdict::Ok, area, format!("{shown} is writable"), "")
        } else {
            Check::new(Verdict::Fail, area, format!("{shown} is not writable"), fix)
        };
    }
    let mut dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.as_os_str().is_empty() {
        dir = PathBuf::from(".");
    }
    while !dir.exists() {
        match dir.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => dir = parent.to_path_buf(),
            _ => break,
        }
    }
    if dir.is_dir() && access_w(&dir) {
        Check::new(
            Verdict::Ok,
            area,
            format!("{shown} can be created ({} is writable)", dir.display()),
            "",
        )
    } else {
        Check::new(
            Verdict::Fail,
            area,
            format!(
                "{shown} cannot be created ({} is not writable)",
                dir.display()
            ),
            fix,
        )
    }
}

fn access_w(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path; access() only reads it.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

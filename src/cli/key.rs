//! `key` commands: generate, list, show, import, test.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use rsa::rand_core::{OsRng, RngCore};
use serde::Serialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use sequester_custody::parsec::spki;
use sequester_custody::token::pkcs11::{keygen, pem_key, Pkcs11Key};
use sequester_custody::token::uri::Pkcs11Uri;
use sequester_custody::token::{
    self, Access, GeneratedKey, KeyHandle, KeyInfo, KeySpec, MechanismPath, OpenedKey, Role,
    TokenError,
};

use super::ceremony::{recorded, CeremonyArgs, Recorder};
use super::token::mechanism_paths;
use super::{CommandResult, GlobalOpts};
use sequester_custody::fsutil::{self, Existing};

/// Environment variable holding the passphrase of an encrypted key file for `key import`.
pub(crate) const KEY_PASSPHRASE_ENV: &str = "SEQUESTER_CUSTODY_KEY_PASSPHRASE";

#[derive(Debug, clap::Subcommand)]
pub(crate) enum KeyCommand {
    /// Generate an RSA key pair on a token for a role.
    Generate {
        /// `authority` (signs certificates) or `service` (decrypts realm exports).
        #[arg(long)]
        role: Role,
        /// Label (CKA_LABEL) of the new key.
        #[arg(long)]
        label: String,
        /// Modulus size: 2048, 3072 or 4096.
        #[arg(long, default_value_t = token::DEFAULT_KEY_BITS)]
        bits: usize,
        /// The token: `pkcs11:token=…?module-path=…`, or a YubiKey PIV slot
        /// `yubikey:serial=…;slot=9c` (authority) / `slot=9d` (service).
        #[arg(long = "token", value_name = "URI")]
        token_uri: String,
        /// Write the public key (SPKI PEM, as Parsec loads it) to FILE.
        #[arg(long, value_name = "FILE")]
        public_out: Option<PathBuf>,
        /// TEST TOKENS ONLY: allow keys smaller than 2048 bits.
        #[arg(long)]
        allow_insecure_test_size: bool,
        /// PKCS#11 authority keys: set CKA_ALWAYS_AUTHENTICATE (the PIN is presented again,
        /// as a context-specific login, before every signature).
        #[arg(long)]
        always_authenticate: bool,
        #[command(flatten)]
        ceremony: CeremonyArgs,
    },
    /// List the RSA private keys on a token.
    List {
        /// The token: `pkcs11:token=…?module-path=…` or `yubikey:serial=…`.
        #[arg(long = "token", value_name = "URI")]
        token_uri: String,
    },
    /// Show a key: public key (SPKI PEM), fingerprint, size, usage, provenance, mechanism paths.
    Show {
        /// The key: `pkcs11:token=…;object=…;type=private?module-path=…` or
        /// `yubikey:serial=…;slot=…`.
        uri: String,
        /// Also write the public key (SPKI PEM) to FILE.
        #[arg(long, value_name = "FILE")]
        public_out: Option<PathBuf>,
        /// YubiKey keys: check the attestation chain up to this root (Yubico's PIV CA, PEM or
        /// DER; a PEM file may add intermediates).
        #[arg(long, value_name = "FILE")]
        attestation_root: Option<PathBuf>,
    },
    /// Import a legacy openssl RSA private key (PKCS#8, PKCS#1 or encrypted PKCS#8 PEM) as a
    /// sensitive, non-extractable token key. The passphrase of an encrypted key comes from
    /// --passphrase-file, SEQUESTER_CUSTODY_KEY_PASSPHRASE or a prompt.
    Import {
        /// `authority` (signs certificates) or `service` (decrypts realm exports).
        #[arg(long)]
        role: Role,
        /// Label (CKA_LABEL) of the imported key.
        #[arg(long)]
        label: String,
        /// The PKCS#11 token: `pkcs11:token=…?module-path=…` (no import into a YubiKey).
        #[arg(long = "token", value_name = "URI")]
        token_uri: String,
        /// The PEM key file.
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
        /// File holding the passphrase of an encrypted key (first line).
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
        /// Write the public key (SPKI PEM) to FILE.
        #[arg(long, value_name = "FILE")]
        public_out: Option<PathBuf>,
        /// TEST TOKENS ONLY: allow keys smaller than 2048 bits (e.g. Parsec's fixture keys).
        #[arg(long)]
        allow_insecure_test_size: bool,
        /// PKCS#11 authority keys: set CKA_ALWAYS_AUTHENTICATE (the PIN is presented again,
        /// as a context-specific login, before every signature).
        #[arg(long)]
        always_authenticate: bool,
        #[command(flatten)]
        ceremony: CeremonyArgs,
    },
    /// Round trip through the token for the key's role (service: host OAEP encrypt, token
    /// decrypt; authority: token sign, host verify), with mechanism path and latency.
    Test {
        /// The key: `pkcs11:…;object=…` or `yubikey:serial=…;slot=…`.
        uri: String,
        /// Number of operations to time.
        #[arg(long, default_value_t = 1)]
        rounds: u32,
        #[command(flatten)]
        ceremony: CeremonyArgs,
    },
}

#[derive(Serialize)]
struct ShownKey<'a> {
    #[serde(flatten)]
    info: &'a KeyInfo,
    public_key_pem: String,
    token: sequester_custody::token::TokenDescription,
    mechanisms: Option<sequester_custody::token::pkcs11::Negotiated>,
}

#[derive(Serialize)]
struct TestReport {
    uri: String,
    role: Option<Role>,
    operation: &'static str,
    mechanism_path: MechanismPath,
    mechanism: String,
    rounds: u32,
    ok: bool,
    latency_ms_mean: f64,
    latency_ms_min: f64,
    latency_ms_max: f64,
}

fn print_key(key: &Pkcs11Key, global: &GlobalOpts, public_out: Option<&Path>) -> CommandResult {
    print_any_key(key, Some(key.negotiated()), global, public_out)
}

/// Shows any backend's key; `negotiated` is known for PKCS#11 keys.
fn print_any_key(
    key: &dyn KeyHandle,
    negotiated: Option<sequester_custody::token::pkcs11::Negotiated>,
    global: &GlobalOpts,
    public_out: Option<&Path>,
) -> CommandResult {
    let info = key.info()?;
    let pem = spki::spki_pem(&info.spki_der);
    if let Some(path) = public_out {
        fsutil::write_atomic(path, pem.as_bytes(), Existing::Keep)?;
    }
    if global.json {
        let shown = ShownKey {
            info: &info,
            public_key_pem: pem,
            token: key.token(),
            mechanisms: negotiated,
        };
        println!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(ExitCode::SUCCESS);
    }
    print_key_text(&info, &key.token(), negotiated.as_ref());
    println!("{pem}");
    if let Some(path) = public_out {
        println!("public key written to {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// One line: hardened, or UNSAFE and refused.
fn custody_verdict(p: &sequester_custody::token::Provenance) -> String {
    if p.weaknesses.is_empty() {
        "hardened: not extractable, not modifiable, no sign-recover".into()
    } else if token::unsafe_keys_allowed() {
        format!(
            "UNSAFE ({} problem(s)) — used only because {}=1 (test tokens)",
            p.weaknesses.len(),
            token::ALLOW_UNSAFE_KEYS_ENV
        )
    } else {
        format!(
            "UNSAFE ({} problem(s)) — refused for signing and decryption",
            p.weaknesses.len()
        )
    }
}

fn print_key_text(
    info: &KeyInfo,
    token: &sequester_custody::token::TokenDescription,
    negotiated: Option<&sequester_custody::token::pkcs11::Negotiated>,
) {
    println!("key:         {}", info.label);
    println!("uri:         {}", info.uri);
    println!("token:       {} (serial {})", token.label, token.serial);
    println!("id:          {}", info.id);
    println!(
        "role:        {}",
        info.role
            .map(|r| r.to_string())
            .unwrap_or_else(|| "none (usage flags do not match a single role)".into())
    );
    println!("size:        {} bits", info.bits);
    println!(
        "usage:       sign={} decrypt={}",
        info.can_sign, info.can_decrypt
    );
    println!("fingerprint: SHA256:{}", info.fingerprint);
    println!("provenance:  {}", info.provenance.verdict);
    println!("custody:     {}", custody_verdict(&info.provenance));
    for w in &info.provenance.weaknesses {
        println!("             UNSAFE: {w}");
    }
    // Every attribute behind the verdicts (PKCS#11: one CKA_* per line).
    for (i, e) in info.provenance.evidence.iter().enumerate() {
        let head = if i == 0 { "attributes:" } else { "" };
        println!("{head:<12} {e}");
    }
    if let Some(n) = negotiated {
        if info.can_decrypt {
            println!("decrypt via: {}", mechanism_paths(&n.decrypt));
        }
        if info.can_sign {
            println!("sign via:    {}", mechanism_paths(&n.sign));
        }
    }
}

fn read_passphrase(file: Option<&Path>) -> Result<Zeroizing<String>, TokenError> {
    if let Some(file) = file {
        token::pin::check_secret_file_mode(file, "passphrase file")?;
        let text = Zeroizing::new(std::fs::read_to_string(file).map_err(|e| {
            TokenError::PinSource(format!(
                "cannot read passphrase file {}: {e}",
                file.display()
            ))
        })?);
        let line = text.lines().next().unwrap_or("");
        return Ok(Zeroizing::new(line.to_string()));
    }
    if let Some(p) = token::pin::take_environment_secret(KEY_PASSPHRASE_ENV)? {
        return Ok(p);
    }
    rpassword::prompt_password("Passphrase of the key file: ")
        .map(Zeroizing::new)
        .map_err(|e| {
            TokenError::PinSource(format!(
                "no passphrase: no terminal to prompt on ({e}); use --passphrase-file or {KEY_PASSPHRASE_ENV}"
            ))
        })
}

fn millis(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn run(cmd: KeyCommand, global: &GlobalOpts) -> CommandResult {
    match cmd {
        KeyCommand::Generate {
            role,
            label,
            bits,
            token_uri,
            public_out,
            allow_insecure_test_size,
            always_authenticate,
            ceremony,
        } => {
            let (code, _head) = recorded("key generate", &ceremony, global, |rec| {
                let spec = KeySpec {
                    role,
                    label,
                    bits,
                    allow_insecure_test_size,
                    always_authenticate,
                };
                let code = generate(rec, &spec, &token_uri, public_out.as_deref(), global)?;
                if let Some(p) = &public_out {
                    rec.entry.add_output(p)?;
                }
                Ok(code)
            })?;
            Ok(code)
        }
        KeyCommand::List { token_uri } => {
            let keys = token::list_keys(&token_uri, &super::token::TerminalInteraction)?;
            if global.json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
                return Ok(ExitCode::SUCCESS);
            }
            if keys.is_empty() {
                println!("no RSA private keys on this token");
            }
            for k in &keys {
                println!(
                    "{}  {} bits  role={}  SHA256:{}  {}",
                    k.label,
                    k.bits,
                    k.role
                        .map(|r| r.to_string())
                        .unwrap_or_else(|| "none".into()),
                    k.fingerprint,
                    k.provenance.verdict
                );
                if !k.provenance.weaknesses.is_empty() {
                    println!("  UNSAFE: {}", k.provenance.weaknesses.join("; "));
                }
                println!("  {}", k.uri);
            }
            Ok(ExitCode::SUCCESS)
        }
        KeyCommand::Show {
            uri,
            public_out,
            attestation_root,
        } => {
            // Only a YubiKey key has an attestation to check.
            #[cfg(not(feature = "yubikey"))]
            let _ = attestation_root;
            match token::open_backend_key(&uri, Access::Inspect, super::token::terminal())? {
                #[cfg(feature = "yubikey")]
                OpenedKey::Yubikey(key) => super::key_yubikey::show(
                    &key,
                    attestation_root.as_deref(),
                    global,
                    public_out.as_deref(),
                ),
                OpenedKey::Pkcs11(key) => print_key(&key, global, public_out.as_deref()),
            }
        }
        KeyCommand::Import {
            role,
            label,
            token_uri,
            input,
            passphrase_file,
            public_out,
            allow_insecure_test_size,
            always_authenticate,
            ceremony,
        } => {
            let (code, _head) = recorded("key import", &ceremony, global, |rec| {
                let spec = KeySpec {
                    role,
                    label,
                    bits: 0,
                    allow_insecure_test_size,
                    always_authenticate,
                };
                let code = import(
                    rec,
                    &spec,
                    &token_uri,
                    &input,
                    passphrase_file.as_deref(),
                    public_out.as_deref(),
                    global,
                )?;
                if let Some(p) = &public_out {
                    rec.entry.add_output(p)?;
                }
                Ok(code)
            })?;
            Ok(code)
        }
        KeyCommand::Test {
            uri,
            rounds,
            ceremony,
        } => {
            let (code, _head) = recorded("key test", &ceremony, global, |rec| {
                round_trip(rec, &uri, rounds, global)
            })?;
            Ok(code)
        }
    }
}

/// `key generate`: checks, generation on the token, output; records the new key.
fn generate(
    rec: &mut Recorder,
    spec: &KeySpec,
    token_uri: &str,
    public_out: Option<&Path>,
    global: &GlobalOpts,
) -> CommandResult {
    if let Some(p) = public_out {
        if p.exists() {
            bail!("{} already exists; not overwriting it", p.display());
        }
    }
    token::check_key_size(spec.bits, spec.allow_insecure_test_size)?;
    let start = Instant::now();
    let key = match token::generate(token_uri, spec, super::token::terminal())? {
        #[cfg(feature = "yubikey")]
        GeneratedKey::Yubikey(generated) => {
            return super::key_yubikey::generate(rec, *generated, spec, global, public_out);
        }
        GeneratedKey::Pkcs11(key) => *key,
    };
    rec.add_key(&spec.role.to_string(), &key);
    if global.verbose > 0 && !global.json {
        eprintln!("generated in {:.0} ms", millis(start.elapsed()));
    }
    print_key(&key, global, public_out)
}

/// `key import`: reads the PEM (passphrase from file, env or prompt), creates the token object,
/// zeroizes the host copy; records the imported key.
fn import(
    rec: &mut Recorder,
    spec: &KeySpec,
    token_uri: &str,
    input: &Path,
    passphrase_file: Option<&Path>,
    public_out: Option<&Path>,
    global: &GlobalOpts,
) -> CommandResult {
    if let Some(p) = public_out {
        if p.exists() {
            bail!("{} already exists; not overwriting it", p.display());
        }
    }
    let token_uri = Pkcs11Uri::parse(token_uri)?;
    let text = Zeroizing::new(
        std::fs::read_to_string(input)
            .with_context(|| format!("cannot read {}", input.display()))?,
    );
    // The digest identifies the file that was imported (and then, ideally, destroyed).
    rec.entry.add_input(input)?;
    let host_key = pem_key::parse_private_key_pem(&text, || read_passphrase(passphrase_file))?;
    drop(text);
    let key = keygen::import(&token_uri, &host_key, spec, super::token::terminal())?;
    drop(host_key);
    rec.add_key(&spec.role.to_string(), &key);
    print_key(&key, global, public_out)
}

/// `key test`: a round trip through the token for the key's role.
fn round_trip(rec: &mut Recorder, uri: &str, rounds: u32, global: &GlobalOpts) -> CommandResult {
    let rounds = rounds.max(1);
    let key = token::open_key(uri, super::token::terminal())?;
    let info = key.info()?;
    rec.add_key(
        &info
            .role
            .map(|r| r.to_string())
            .unwrap_or_else(|| "unknown".into()),
        key.as_ref(),
    );
    let public = spki::parse_spki_der_lenient(key.public_key_spki())?;
    let mut times = Vec::new();
    let mut path = None;
    let operation;
    if info.can_decrypt {
        operation = "decrypt";
        for _ in 0..rounds {
            let mut secret = Zeroizing::new([0u8; 32]);
            OsRng.fill_bytes(&mut *secret);
            let block = public
                .encrypt(&mut OsRng, rsa::Oaep::new::<Sha256>(), &*secret)
                .context("host OAEP encryption")?;
            let start = Instant::now();
            let (plain, p) = key.decrypt_oaep_sha256(&block)?;
            times.push(start.elapsed());
            if plain.as_slice() != secret.as_slice() {
                bail!("round trip FAILED: the token decrypted a different value");
            }
            path = Some(p);
        }
    } else if info.can_sign {
        operation = "sign";
        for _ in 0..rounds {
            let mut message = vec![0u8; 64];
            OsRng.fill_bytes(&mut message);
            let start = Instant::now();
            let (sig, p) = key.sign_pss_sha256(&message)?;
            times.push(start.elapsed());
            public
                .verify(rsa::Pss::new::<Sha256>(), &Sha256::digest(&message), &sig)
                .map_err(|_| {
                    anyhow::anyhow!("round trip FAILED: signature does not verify on the host")
                })?;
            path = Some(p);
        }
    } else {
        bail!("the key allows neither signing nor decryption");
    }
    let path = path.expect("at least one round");
    let ms: Vec<f64> = times.iter().map(|d| millis(*d)).collect();
    let report = TestReport {
        uri: info.uri.clone(),
        role: info.role,
        operation,
        mechanism_path: path,
        mechanism: path.to_string(),
        rounds,
        ok: true,
        latency_ms_mean: ms.iter().sum::<f64>() / ms.len() as f64,
        latency_ms_min: ms.iter().cloned().fold(f64::INFINITY, f64::min),
        latency_ms_max: ms.iter().cloned().fold(0.0, f64::max),
    };
    if global.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "OK: {} round trip through the token ({} x {})",
            operation, rounds, info.label
        );
        println!("mechanism path: {}", report.mechanism);
        println!(
            "latency: mean {:.1} ms (min {:.1}, max {:.1})",
            report.latency_ms_mean, report.latency_ms_min, report.latency_ms_max
        );
    }
    Ok(ExitCode::SUCCESS)
}

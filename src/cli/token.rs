//! `token` commands: `token list`, `token info URI`; and the terminal side of the token
//! layer's [`Interaction`] (PIN prompts without echo, touch requests and warnings on stderr).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use zeroize::Zeroizing;

use sequester_custody::token::interaction::{PinKind, PinRequest};
use sequester_custody::token::pkcs11::{list_modules, token_details, ModuleListing};
use sequester_custody::token::uri::Pkcs11Uri;
#[cfg(feature = "yubikey")]
use sequester_custody::token::yubikey;
use sequester_custody::token::{Backend, Interaction, SharedInteraction, TokenError};

/// The CLI's [`Interaction`]: asks on the terminal, tells on stderr.
pub(crate) struct TerminalInteraction;

impl Interaction for TerminalInteraction {
    fn ask_pin(&self, request: &PinRequest<'_>) -> Result<Zeroizing<String>, TokenError> {
        let which = match request.kind {
            PinKind::User => "PIN",
            PinKind::ContextSpecific => "PIN (for this operation)",
        };
        let retries = match request.retries_left {
            Some(1) => " [last attempt before the PIN locks]".to_string(),
            Some(n) => format!(" [{n} attempts left]"),
            None => String::new(),
        };
        let prompt = format!("{which} for token `{}`{retries}: ", request.token_label);
        let pin = rpassword::prompt_password(prompt).map_err(|e| {
            TokenError::PinSource(format!(
                "no PIN: no terminal to prompt on ({e}); use `pin-source=file:…` in the URI or \
                 set {}",
                sequester_custody::token::pin::PIN_ENV
            ))
        })?;
        Ok(Zeroizing::new(pin))
    }

    fn touch_needed(&self, token_label: &str, what: &str) {
        eprintln!("Touch the {token_label} now ({what})");
    }

    fn warn(&self, message: &str) {
        eprintln!("WARNING: {message}");
    }
}

/// The CLI's interaction, shared with the key handles it opens.
pub(crate) fn terminal() -> SharedInteraction {
    Arc::new(TerminalInteraction)
}

use super::{CommandResult, GlobalOpts};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum TokenCommand {
    /// Modules of the HSM profiles that are installed, their tokens, flags and free slots; and
    /// the YubiKeys reachable over PC/SC (native `yubikey:` backend).
    List {
        /// Also list this PKCS#11 module (repeatable).
        #[arg(long = "module", value_name = "PATH")]
        modules: Vec<PathBuf>,
    },
    /// One token: identity, flags, PIN counter state, negotiated mechanism paths.
    Info {
        /// `pkcs11:token=…` or `pkcs11:serial=…` (with `?module-path=…` or `?module-name=…`),
        /// or `yubikey:serial=…`.
        uri: String,
    },
}

pub(crate) fn run(cmd: TokenCommand, global: &GlobalOpts) -> CommandResult {
    match cmd {
        TokenCommand::List { modules } => {
            let listing = list_modules(&modules)?;
            // pcscd not running must not hide the PKCS#11 tokens: it becomes one line.
            #[cfg(feature = "yubikey")]
            let yubikeys = yubikey::list_cards();
            if global.json {
                let json = json_listing(
                    &listing,
                    #[cfg(feature = "yubikey")]
                    &yubikeys,
                )?;
                println!("{}", serde_json::to_string_pretty(&json)?);
                return Ok(ExitCode::SUCCESS);
            }
            for m in &listing {
                let name = m.profile.as_deref().unwrap_or("(no profile)");
                let tested = match m.tested {
                    Some(true) => "tested",
                    Some(false) => "untested",
                    None => "",
                };
                match &m.module_path {
                    Some(p) if m.error.is_none() => {
                        println!("{name} [{tested}]: {}", p.display());
                        if let Some(lib) = &m.library {
                            println!("  library: {lib}");
                        }
                        for t in &m.tokens {
                            println!(
                                "  slot {}: token `{}` serial {} ({} {})",
                                t.slot_id,
                                t.description.label,
                                t.description.serial,
                                t.description.manufacturer,
                                t.description.model
                            );
                            println!("    uri: {}", t.uri);
                            println!("    flags: {}", t.flags.join(" "));
                        }
                        println!("  tokens: {}, free slots: {}", m.tokens.len(), m.free_slots);
                    }
                    _ => {
                        if global.verbose > 0 || m.module_path.is_some() {
                            println!(
                                "{name} [{tested}]: {}",
                                m.error.as_deref().unwrap_or("unavailable")
                            );
                        }
                    }
                }
            }
            #[cfg(feature = "yubikey")]
            print_yubikeys(&yubikeys);
            #[cfg(not(feature = "yubikey"))]
            println!(
                "yubikey (PIV over PC/SC): not compiled into this build (cargo feature `yubikey`)"
            );
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "yubikey")]
        TokenCommand::Info { uri } if matches!(Backend::of_uri(&uri), Ok(Backend::Yubikey)) => {
            let card = yubikey::card_info(&uri)?;
            if global.json {
                let mut v = serde_json::to_value(&card)?;
                v["backend"] = "yubikey".into();
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("YubiKey:      serial {}", card.serial);
            println!("firmware:     {}", card.firmware);
            println!("reader:       {}", card.reader);
            println!("PIN retries:  {}", card.pin_retries);
            println!("uri:          {}", card.uri);
            println!(
                "backend:      yubikey (PIV over PC/SC; raw RSA on the card, padding on the host)"
            );
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Info { uri } => {
            // A `yubikey:` URI in a build without that backend: the clear error, not a parse one.
            Backend::of_uri(&uri)?;
            let parsed = Pkcs11Uri::parse(&uri)?;
            let d = token_details(&parsed)?;
            if global.json {
                println!("{}", serde_json::to_string_pretty(&d)?);
                return Ok(ExitCode::SUCCESS);
            }
            let s = &d.summary;
            println!("token:        {}", s.description.label);
            println!("serial:       {}", s.description.serial);
            println!("manufacturer: {}", s.description.manufacturer);
            println!("model:        {}", s.description.model);
            println!("slot id:      {}", s.slot_id);
            println!("module:       {}", d.module_path.display());
            println!("profile:      {}", d.profile.as_deref().unwrap_or("(none)"));
            println!("uri:          {}", s.uri);
            println!("flags:        {}", s.flags.join(" "));
            println!(
                "PIN:          {} (length {}..{})",
                d.pin_state, d.min_pin_length, d.max_pin_length
            );
            println!("decrypt:      {}", mechanism_paths(&d.mechanisms.decrypt));
            println!("sign:         {}", mechanism_paths(&d.mechanisms.sign));
            for q in &d.quirks {
                println!("quirk:        {q}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `token list --json`: one array entry per PKCS#11 module (`"backend": "pkcs11"`), then one
/// entry for the YubiKeys seen over PC/SC (`"backend": "yubikey"`, with `cards`, or `error`
/// when PC/SC is unreachable).
fn json_listing(
    modules: &[ModuleListing],
    #[cfg(feature = "yubikey")] yubikeys: &Result<yubikey::CardListing, TokenError>,
) -> serde_json::Result<serde_json::Value> {
    let mut entries = Vec::new();
    for m in modules {
        let mut v = serde_json::to_value(m)?;
        v["backend"] = "pkcs11".into();
        entries.push(v);
    }
    #[cfg(feature = "yubikey")]
    entries.push(json_yubikeys(yubikeys)?);
    Ok(serde_json::Value::Array(entries))
}

/// The `token list --json` entry of the YubiKeys seen over PC/SC.
#[cfg(feature = "yubikey")]
fn json_yubikeys(
    yubikeys: &Result<yubikey::CardListing, TokenError>,
) -> serde_json::Result<serde_json::Value> {
    let mut v = match yubikeys {
        Ok(listing) => {
            let mut v = serde_json::to_value(listing)?;
            v["error"] = serde_json::Value::Null;
            v
        }
        Err(e) => serde_json::json!({
            "cards": [],
            "unreadable": [],
            "readers": null,
            "error": e.to_string(),
        }),
    };
    v["backend"] = "yubikey".into();
    Ok(v)
}

#[cfg(feature = "yubikey")]
fn print_yubikeys(yubikeys: &Result<yubikey::CardListing, TokenError>) {
    let listing = match yubikeys {
        Ok(listing) => listing,
        Err(e) => {
            println!("yubikey (PIV over PC/SC): not listed: {e}");
            return;
        }
    };
    println!(
        "yubikey (PIV over PC/SC): {} card(s), {} reader(s)",
        listing.cards.len(),
        listing.readers
    );
    for c in &listing.cards {
        println!(
            "  YubiKey {} firmware {} in reader `{}`, PIN retries {}",
            c.serial, c.firmware, c.reader, c.pin_retries
        );
        println!("    uri: {}", c.uri);
    }
    for u in &listing.unreadable {
        println!("  reader `{}`: {}", u.reader, u.error);
    }
}

/// Mechanism paths in preference order, `a > b`, or `NONE`.
pub(crate) fn mechanism_paths(v: &[sequester_custody::token::MechanismPath]) -> String {
    if v.is_empty() {
        "NONE".to_string()
    } else {
        v.iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(" > ")
    }
}

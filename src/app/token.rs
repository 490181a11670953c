//! `token` commands: `token list`, `token info URI`.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::token::pkcs11::{list_modules, token_details};
use crate::token::uri::Pkcs11Uri;

use super::{CommandResult, GlobalOpts};

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Modules of the HSM profiles that are installed, their tokens, flags and free slots.
    List {
        /// Also list this PKCS#11 module (repeatable).
        #[arg(long = "module", value_name = "PATH")]
        modules: Vec<PathBuf>,
    },
    /// One token: identity, flags, PIN counter state, negotiated mechanism paths.
    Info {
        /// `pkcs11:token=…` or `pkcs11:serial=…` (with `?module-path=…` or `?module-name=…`).
        uri: String,
    },
}

pub fn run(cmd: TokenCommand, global: &GlobalOpts) -> CommandResult {
    match cmd {
        TokenCommand::List { modules } => {
            let listing = list_modules(&modules)?;
            if global.json {
                println!("{}", serde_json::to_string_pretty(&listing)?);
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
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Info { uri } => {
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
            let paths = |v: &[crate::token::MechanismPath]| {
                if v.is_empty() {
                    "NONE".to_string()
                } else {
                    v.iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(" > ")
                }
            };
            println!("decrypt:      {}", paths(&d.mechanisms.decrypt));
            println!("sign:         {}", paths(&d.mechanisms.sign));
            for q in &d.quirks {
                println!("quirk:        {q}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

//! p11-kit's module registry: what `module-name=NAME` means to every other p11-kit-aware tool
//! (RFC 7512 §2.3). A module is registered by a `NAME.module` file in one of p11-kit's
//! configuration directories (pkcs11.conf(5)); its `module:` line names the library, relative
//! to p11-kit's module directory when it is not absolute. The files are read directly (no
//! `p11-kit` binary needed, none spawned), in p11-kit's order: user over admin over package.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::super::TokenError;

/// Modules shipped by packages (`p11-kit-modules`, `softhsm2`, `opensc`, …).
pub(crate) const PACKAGE_MODULE_CONFIGS: &str = "/usr/share/p11-kit/modules";
/// Modules registered by the administrator.
pub(crate) const ADMIN_MODULE_CONFIGS: &str = "/etc/pkcs11/modules";
/// The administrator's global settings (`user-config: none | merge | only`).
pub(crate) const GLOBAL_CONFIG: &str = "/etc/pkcs11/pkcs11.conf";

/// p11-kit's directory for relative `module:` paths (Debian's multiarch layout), then the
/// layouts of other distributions.
pub fn module_directories() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(triplet) = debian_multiarch() {
        dirs.push(PathBuf::from(format!("/usr/lib/{triplet}/pkcs11")));
    }
    dirs.push(PathBuf::from("/usr/lib64/pkcs11"));
    dirs.push(PathBuf::from("/usr/lib/pkcs11"));
    dirs
}

fn debian_multiarch() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => Some("x86_64-linux-gnu"),
        "aarch64" => Some("aarch64-linux-gnu"),
        "arm" => Some("arm-linux-gnueabihf"),
        "x86" => Some("i386-linux-gnu"),
        "powerpc64" => Some("powerpc64le-linux-gnu"),
        "s390x" => Some("s390x-linux-gnu"),
        _ => None,
    }
}

/// One registered module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredModule {
    /// The name `module-name=` selects: the config file's name without `.module`.
    pub name: String,
    /// The `module:` library, made absolute; `None` for a `remote:` module.
    pub library: Option<PathBuf>,
    /// The `remote:` address, when the module is reached through p11-kit's RPC.
    pub remote: Option<String>,
    /// The config file that decided the entry.
    pub config: PathBuf,
    /// False when `enable-in:` / `disable-in:` keep it from this program, as p11-kit does.
    pub enabled: bool,
}

/// The program name p11-kit compares with `enable-in:` and `disable-in:`.
const PROGRAM: &str = "sequester-custody";

fn lists_program(value: &str) -> bool {
    value
        .split([',', ' ', '\t'])
        .any(|name| name.trim() == PROGRAM)
}

/// The user's configuration directory, as p11-kit expands `~/.config/pkcs11/modules`.
fn user_module_configs() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })?;
    Some(base.join("pkcs11/modules"))
}

/// `user-config` of the global config file: `none`, `merge` (p11-kit's default) or `only`.
fn user_config_mode() -> String {
    std::fs::read_to_string(GLOBAL_CONFIG)
        .ok()
        .and_then(|text| config_value(&text, "user-config"))
        .unwrap_or_else(|| "merge".into())
}

/// The value of `key:` in a p11-kit config file (`#` comments, last occurrence wins).
fn config_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .rev()
        .filter_map(|line| {
            let line = line.trim();
            if line.starts_with('#') {
                return None;
            }
            let (k, v) = line.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
        .next()
}

/// The configuration directories in increasing precedence, as `user-config` allows.
pub(crate) fn config_directories() -> Vec<PathBuf> {
    let mode = user_config_mode();
    let mut dirs = Vec::new();
    if mode != "only" {
        dirs.push(PathBuf::from(PACKAGE_MODULE_CONFIGS));
        dirs.push(PathBuf::from(ADMIN_MODULE_CONFIGS));
    }
    if mode != "none" {
        dirs.extend(user_module_configs());
    }
    dirs
}

/// Every registered module, by name, enabled for this program or not. A file in a later
/// directory replaces the settings it names of one of the same name from an earlier directory
/// (p11-kit merges them).
pub fn registered_modules() -> BTreeMap<String, RegisteredModule> {
    let mut modules: BTreeMap<String, RegisteredModule> = BTreeMap::new();
    for dir in config_directories() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "module"))
            .collect();
        files.sort();
        for config in files {
            let Some(name) = config.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            // Config files are small; a larger one is not a module config.
            if std::fs::metadata(&config).map_or(true, |m| m.len() > 64 * 1024) {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&config) else {
                continue;
            };
            let library = config_value(&text, "module").map(|m| absolute_library(&m));
            let remote = config_value(&text, "remote");
            let entry = modules
                .entry(name.to_string())
                .or_insert_with(|| RegisteredModule {
                    name: name.to_string(),
                    library: None,
                    remote: None,
                    config: config.clone(),
                    enabled: true,
                });
            if let Some(list) = config_value(&text, "enable-in") {
                entry.enabled = lists_program(&list);
            }
            if let Some(list) = config_value(&text, "disable-in") {
                entry.enabled = !lists_program(&list);
            }
            if library.is_some() || remote.is_some() {
                entry.library = library;
                entry.remote = remote;
                entry.config = config.clone();
            }
        }
    }
    modules
}

/// A `module:` value made absolute: relative names live in p11-kit's module directory.
fn absolute_library(module: &str) -> PathBuf {
    let path = Path::new(module);
    if path.is_absolute() {
        return path.to_path_buf();
    }
    let dirs = module_directories();
    dirs.iter()
        .map(|d| d.join(path))
        .find(|p| p.is_file())
        .unwrap_or_else(|| dirs[0].join(path))
}

/// The library `module-name=NAME` designates in p11-kit's registry: a registered module of that
/// name, else a library `NAME.so` or `libNAME.so` in p11-kit's module directory (RFC 7512's
/// "library name without path and extension", e.g. `module-name=p11-kit-client`).
/// `Ok(None)` when p11-kit knows no such name.
pub(crate) fn resolve_module_name(name: &str) -> Result<Option<PathBuf>, TokenError> {
    if let Some(module) = registered_modules().remove(name) {
        if !module.enabled {
            return Err(TokenError::ModuleNotFound(format!(
                "p11-kit module `{name}` is disabled for {PROGRAM} (enable-in/disable-in in {})",
                module.config.display()
            )));
        }
        return match (module.library, module.remote) {
            (Some(library), _) if library.is_file() => Ok(Some(library)),
            (Some(library), _) => Err(TokenError::ModuleNotFound(format!(
                "p11-kit module `{name}` ({}) names {}, which does not exist",
                module.config.display(),
                library.display()
            ))),
            (None, Some(remote)) => Err(TokenError::ModuleNotFound(format!(
                "p11-kit module `{name}` ({}) is a remote module ({remote}); use \
                 module-path=…/p11-kit-proxy.so, which reaches it, or p11-kit-client.so with \
                 P11_KIT_SERVER_ADDRESS",
                module.config.display()
            ))),
            (None, None) => Err(TokenError::ModuleNotFound(format!(
                "p11-kit module `{name}` ({}) has no `module:` line",
                module.config.display()
            ))),
        };
    }
    if name.is_empty() || name.contains('/') || name.contains("..") {
        return Ok(None);
    }
    Ok(module_directories()
        .iter()
        .flat_map(|d| {
            [
                d.join(format!("{name}.so")),
                d.join(format!("lib{name}.so")),
            ]
        })
        .find(|p| p.is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_values_follow_pkcs11_conf() {
        let text = "# comment: module: nope\nmodule: a.so\n  remote : unix:path=/x\nmodule: b.so\n";
        assert_eq!(config_value(text, "module").as_deref(), Some("b.so"));
        assert_eq!(
            config_value(text, "remote").as_deref(),
            Some("unix:path=/x")
        );
        assert_eq!(config_value(text, "priority"), None);
    }

    #[test]
    fn program_lists() {
        assert!(lists_program("firefox, sequester-custody"));
        assert!(lists_program("sequester-custody"));
        assert!(!lists_program("firefox,sequester-custody-old"));
    }

    #[test]
    fn relative_modules_live_in_the_module_directory() {
        let p = absolute_library("p11-kit-client.so");
        assert!(p.is_absolute());
        assert!(p.ends_with("pkcs11/p11-kit-client.so"), "{}", p.display());
        assert_eq!(absolute_library("/opt/x.so"), PathBuf::from("/opt/x.so"));
    }

    #[test]
    fn names_never_escape_the_module_directory() {
        assert_eq!(resolve_module_name("../../bin/sh").unwrap(), None);
        assert_eq!(resolve_module_name("").unwrap(), None);
    }
}

//! HSM profiles (`hsm-profiles/*.toml`): per product, the candidate module paths, known quirks
//! and the mechanism paths to try, in order. The shipped profiles are compiled in; the profile
//! directories ([`profile_directories`]: the installed package's, the administrator's, then
//! `SEQUESTER_CUSTODY_PROFILES`) add profiles or replace earlier ones of the same name.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{MechanismPath, TokenError};

/// Environment variable naming a directory of extra `*.toml` profiles.
pub(crate) const PROFILES_ENV: &str = "SEQUESTER_CUSTODY_PROFILES";

const SHIPPED: &[(&str, &str)] = &[
    ("softhsm2", include_str!("../../hsm-profiles/softhsm2.toml")),
    ("kryoptic", include_str!("../../hsm-profiles/kryoptic.toml")),
    ("yubihsm2", include_str!("../../hsm-profiles/yubihsm2.toml")),
    (
        "yubikey-ykcs11",
        include_str!("../../hsm-profiles/yubikey-ykcs11.toml"),
    ),
    ("opensc", include_str!("../../hsm-profiles/opensc.toml")),
    (
        "p11-kit-client",
        include_str!("../../hsm-profiles/p11-kit-client.toml"),
    ),
    (
        "thales-luna",
        include_str!("../../hsm-profiles/thales-luna.toml"),
    ),
    (
        "entrust-nshield",
        include_str!("../../hsm-profiles/entrust-nshield.toml"),
    ),
    (
        "aws-cloudhsm",
        include_str!("../../hsm-profiles/aws-cloudhsm.toml"),
    ),
];

/// Mechanism paths a profile allows, in order of preference.
#[derive(Debug, Clone, Deserialize)]
pub struct MechanismPreferences {
    pub decrypt: Vec<MechanismPath>,
    pub sign: Vec<MechanismPath>,
}

impl Default for MechanismPreferences {
    fn default() -> Self {
        MechanismPreferences {
            decrypt: vec![
                MechanismPath::NativeOaepSha256,
                MechanismPath::RawRsaHostOaep,
            ],
            sign: vec![
                MechanismPath::NativeSha256Pss,
                MechanismPath::HostDigestPss,
                MechanismPath::RawRsaHostPss,
            ],
        }
    }
}

/// One HSM profile.
#[derive(Debug, Clone, Deserialize)]
pub struct Profile {
    pub name: String,
    pub description: String,
    /// True only when this project's test suite runs against the product.
    pub tested: bool,
    /// What was tested, or why not.
    #[serde(default)]
    pub status: String,
    /// Candidate module paths; `${VAR}` is replaced by the environment variable VAR.
    pub module_paths: Vec<String>,
    #[serde(default)]
    pub documentation: Vec<String>,
    #[serde(default)]
    pub quirks: Vec<String>,
    #[serde(default)]
    pub mechanisms: MechanismPreferences,
    /// Key attributes (e.g. `CKA_SIGN_RECOVER`) this product refuses in a template or cannot
    /// enforce: left out of the templates and not held against its keys. Each needs a quirk
    /// line saying why.
    #[serde(default)]
    pub unenforced_key_attributes: Vec<String>,
    /// Largest RSA modulus the product generates, when the vendor documents it.
    #[serde(default)]
    pub max_rsa_bits: Option<usize>,
}

impl Profile {
    /// Candidate module paths with `${VAR}` expanded; unset variables drop the candidate.
    pub(crate) fn expanded_module_paths(&self) -> Vec<PathBuf> {
        self.module_paths
            .iter()
            .filter_map(|p| expand_env(p))
            .map(PathBuf::from)
            .collect()
    }

    /// The first candidate module present on this machine.
    pub(crate) fn present_module(&self) -> Option<PathBuf> {
        self.expanded_module_paths()
            .into_iter()
            .find(|p| p.is_file())
    }

    /// True when `module` is one of this profile's candidates (same file).
    pub(crate) fn matches_module(&self, module: &Path) -> bool {
        let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
        let module = canon(module);
        self.expanded_module_paths()
            .iter()
            .any(|p| canon(p) == module)
    }
}

fn expand_env(s: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}')? + start;
        let var = &rest[start + 2..end];
        let value = std::env::var(var).ok().filter(|v| !v.is_empty())?;
        out.push_str(&value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

fn parse(name: &str, text: &str) -> Result<Profile, TokenError> {
    toml::from_str(text).map_err(|e| TokenError::Backend {
        backend: "profile",
        operation: format!("reading profile {name}"),
        reason: e.to_string(),
    })
}

/// The administrator's profiles (Debian's place for local configuration).
pub(crate) const ADMIN_PROFILES: &str = "/etc/sequester-custody/hsm-profiles";

/// The installed package's profiles: `../share/sequester-custody/hsm-profiles` from the
/// binary's directory (`/usr/share/...` for `/usr/bin/sequester-custody`, `/usr/local/share/...`
/// for a `/usr/local` install). A binary run from a build directory finds none there and uses
/// the compiled-in copies of the same files.
pub(crate) fn package_profiles() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let prefix = exe.parent()?.parent()?;
    Some(prefix.join("share/sequester-custody/hsm-profiles"))
}

/// Profile directories in increasing precedence: the package's and the administrator's (read
/// when they exist), then `PROFILES_ENV` (which must exist when set).
pub fn profile_directories() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = package_profiles().into_iter().collect();
    dirs.push(PathBuf::from(ADMIN_PROFILES));
    dirs.extend(std::env::var_os(PROFILES_ENV).map(PathBuf::from));
    dirs
}

/// All profiles: shipped ones, then those of each [`profile_directories`] entry (same name =
/// replacement).
pub fn all_profiles() -> Result<Vec<Profile>, TokenError> {
    let mut profiles = Vec::new();
    for (name, text) in SHIPPED {
        profiles.push(parse(name, text)?);
    }
    let explicit = std::env::var_os(PROFILES_ENV).map(PathBuf::from);
    for dir in profile_directories() {
        if Some(&dir) != explicit.as_ref() && !dir.is_dir() {
            continue;
        }
        let entries = std::fs::read_dir(&dir).map_err(|e| TokenError::Backend {
            backend: "profile",
            operation: format!("reading {}", dir.display()),
            reason: e.to_string(),
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|e| TokenError::Backend {
                backend: "profile",
                operation: format!("reading {}", path.display()),
                reason: e.to_string(),
            })?;
            let profile = parse(&path.display().to_string(), &text)?;
            profiles.retain(|p: &Profile| p.name != profile.name);
            profiles.push(profile);
        }
    }
    Ok(profiles)
}

/// The profile whose candidates include `module`, if any (for quirks and preferences).
pub(crate) fn profile_for_module(module: &Path) -> Option<Profile> {
    // A profile from PROFILES_ENV replaces a shipped one, and wins when both match.
    all_profiles()
        .ok()?
        .into_iter()
        .rev()
        .find(|p| p.matches_module(module))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_profiles_parse_and_are_honest() {
        let profiles = all_profiles().unwrap();
        assert_eq!(profiles.len(), SHIPPED.len());
        for p in &profiles {
            assert!(!p.module_paths.is_empty(), "{}", p.name);
            assert!(!p.mechanisms.decrypt.is_empty(), "{}", p.name);
            assert!(!p.mechanisms.sign.is_empty(), "{}", p.name);
            if !p.tested {
                assert!(
                    p.status.to_lowercase().contains("untested"),
                    "{}: untested profiles must say so",
                    p.name
                );
            }
            // An attribute left out of the hardening needs a quirk saying why.
            for a in &p.unenforced_key_attributes {
                assert!(
                    p.quirks.iter().any(|q| q.contains(a.as_str())),
                    "{}: {a} is unenforced without a quirk explaining it",
                    p.name
                );
            }
        }
        let tested: Vec<_> = profiles
            .iter()
            .filter(|p| p.tested)
            .map(|p| &p.name)
            .collect();
        assert_eq!(tested, ["softhsm2", "kryoptic", "p11-kit-client"]);
    }

    #[test]
    fn env_expansion() {
        std::env::set_var("SEQ_TEST_EXPAND", "/x/y");
        assert_eq!(
            expand_env("${SEQ_TEST_EXPAND}/lib.so").unwrap(),
            "/x/y/lib.so"
        );
        assert_eq!(expand_env("${SEQ_TEST_UNSET_VAR_XYZ}/lib.so"), None);
        assert_eq!(expand_env("/plain").unwrap(), "/plain");
    }
}

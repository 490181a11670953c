//! The one package list (scripts/packages.sh) against Cargo.lock: every crate that links a
//! system library must be mapped to the Debian package providing it, and that package must be
//! in the build list — CI's machine has every package already, so only this catches a missing
//! install step. Crates are found by name (`*-sys`) and by a `links` key in their manifest.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// An array of scripts/packages.sh, read by bash itself (no second parser of the file).
fn bash_array(name: &str) -> Vec<String> {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -euo pipefail; source scripts/packages.sh; printf '%s\\n' \"${{{name}[@]}}\""
        ))
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// (name, version) of every package in Cargo.lock.
fn locked_crates() -> Vec<(String, String)> {
    let lock: toml::Value =
        toml::from_str(&std::fs::read_to_string(repo().join("Cargo.lock")).unwrap()).unwrap();
    lock["package"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["version"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The `links` key of a crate's manifest in cargo's registry cache, when it is there.
fn links_key(name: &str, version: &str) -> Option<String> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let src = std::fs::read_dir(home.join("registry/src")).ok()?;
    for index in src.filter_map(Result::ok) {
        let manifest = index.path().join(format!("{name}-{version}/Cargo.toml"));
        if let Ok(text) = std::fs::read_to_string(&manifest) {
            let v: toml::Value = toml::from_str(&text).ok()?;
            return v["package"]
                .get("links")
                .and_then(|l| l.as_str())
                .map(str::to_string);
        }
    }
    None
}

fn mapping() -> BTreeMap<String, String> {
    bash_array("SYS_CRATE_PACKAGES")
        .into_iter()
        .map(|entry| {
            let (krate, package) = entry
                .split_once('=')
                .unwrap_or_else(|| panic!("`{entry}` is not crate=package"));
            (krate.to_string(), package.to_string())
        })
        .collect()
}

#[test]
fn every_linking_crate_maps_to_a_build_package() {
    let build = bash_array("PACKAGES_BUILD");
    let map = mapping();
    let mut problems = Vec::new();
    let mut checked = 0;
    for (name, version) in locked_crates() {
        let links = links_key(&name, &version);
        if !name.ends_with("-sys") && links.is_none() {
            continue;
        }
        checked += 1;
        match map.get(&name) {
            None => problems.push(format!(
                "{name} {version} (links: {}) is not in SYS_CRATE_PACKAGES of scripts/packages.sh",
                links.as_deref().unwrap_or("-")
            )),
            Some(package) if package.starts_with("none:") => {}
            Some(package) if !build.contains(package) => problems.push(format!(
                "{name} maps to `{package}`, which PACKAGES_BUILD does not install"
            )),
            Some(_) => {}
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // pcsc-sys, libsqlite3-sys, zstd-sys, cryptoki-sys at least.
    assert!(checked >= 4, "only {checked} linking crates found");
    assert_eq!(map["pcsc-sys"], "libpcsclite-dev");
}

/// With every package of the lists installed (CI, developers after scripts/test.sh), each named
/// package must really be installed: a misspelt name would otherwise pass unnoticed here.
#[test]
fn listed_packages_exist_and_are_installed() {
    let out = Command::new("bash")
        .arg("-c")
        .arg("source scripts/packages.sh; packages_for build runtime demo tests bench deb")
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let packages: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert!(packages.contains(&"libpcsclite-dev".to_string()));
    let dpkg = Command::new("dpkg-query").arg("--version").output();
    if !common::available("dpkg-query (Debian)", dpkg.is_ok()) {
        return;
    }
    let missing: Vec<&String> = packages
        .iter()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if common::require_all() {
        assert!(missing.is_empty(), "not installed: {missing:?}");
    } else if !missing.is_empty() {
        common::skip(&format!(
            "not installed here (scripts/test.sh installs them): {missing:?}"
        ));
    }
    // An unknown purpose is an error, not an empty list.
    let out = Command::new("bash")
        .arg("-c")
        .arg("source scripts/packages.sh; packages_for nonsense")
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// Every script that installs or needs packages takes them from the one list.
#[test]
fn every_script_sources_the_list() {
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(repo().join("scripts"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sh") && !p.ends_with("packages.sh"))
        .collect();
    for dir in std::fs::read_dir(repo().join("softhsm-fixtures")).unwrap() {
        let setup = dir.unwrap().path().join("setup.sh");
        if setup.is_file() {
            scripts.push(setup);
        }
    }
    assert!(scripts.len() >= 6, "{scripts:?}");
    for script in scripts {
        let text = std::fs::read_to_string(&script).unwrap();
        assert!(
            text.contains("scripts/packages.sh") && text.contains("packages_ensure"),
            "{} does not use scripts/packages.sh",
            script.display()
        );
        // Installing the project's own .deb (scripts/deb-check.sh) is not a package list.
        let own = text
            .lines()
            .filter(|l| l.contains("apt-get install") && !l.contains("deb"))
            .collect::<Vec<_>>();
        assert!(
            own.is_empty(),
            "{} installs packages itself: {own:?}",
            script.display()
        );
    }
}

//! `doctor` on this machine: one line per check with a verdict and a fix, `--json`, and a
//! non-zero exit exactly when a check fails. Real SoftHSM2 token, real /dev/fuse.

use crate::common;

use crate::common::{run_cli, stderr, stdout, SoftHsm};
use serde_json::Value;

fn doctor_json(args: &[&str], env: &[(String, String)]) -> (bool, Vec<Value>) {
    let mut full = vec!["--json", "doctor"];
    full.extend_from_slice(args);
    let out = run_cli(&full, env);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&out), stderr(&out)));
    let checks = v["checks"].as_array().unwrap().clone();
    for c in &checks {
        let verdict = c["verdict"].as_str().unwrap();
        assert!(["ok", "warn", "fail"].contains(&verdict), "{c}");
        assert!(!c["what"].as_str().unwrap().is_empty(), "{c}");
        if verdict != "ok" {
            assert!(!c["fix"].as_str().unwrap().is_empty(), "no fix: {c}");
        }
    }
    let any_fail = checks.iter().any(|c| c["verdict"] == "fail");
    assert_eq!(
        out.status.success(),
        !any_fail,
        "exit status vs verdicts: {v}"
    );
    (out.status.success(), checks)
}

fn find<'a>(checks: &'a [Value], area: &str, needle: &str) -> Option<&'a Value> {
    checks
        .iter()
        .find(|c| c["area"] == area && c["what"].as_str().unwrap().contains(needle))
}

#[test]
fn a_softhsm_token_its_mechanism_paths_and_fuse() {
    let Some(hsm) = SoftHsm::new("doctor-token") else {
        return;
    };
    let module = hsm.module.display().to_string();
    let (_, checks) = doctor_json(&["--module", &module], &hsm.env());
    let loads = find(&checks, "pkcs11", &format!("{module} loads"))
        .or_else(|| find(&checks, "pkcs11", "libsofthsm2.so loads"))
        .unwrap_or_else(|| panic!("{checks:#?}"));
    assert_eq!(loads["verdict"], "ok");
    let token = find(&checks, "pkcs11", "token `doctor-token`").expect("the token line");
    assert_eq!(token["verdict"], "ok");
    let what = token["what"].as_str().unwrap();
    // SoftHSM2 2.6: raw RSA decryption, native PSS signing.
    assert!(
        what.contains("decrypt paths [") && what.contains("raw"),
        "{what}"
    );
    let features = find(&checks, "build", "features: ").expect("the build line");
    assert_eq!(features["verdict"], "ok");
    let built: Vec<&str> = [
        ("yubikey", cfg!(feature = "yubikey")),
        ("mount", cfg!(feature = "mount")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    let expected = match built.len() {
        0 => "features: none".to_string(),
        _ => format!("features: {}", built.join(", ")),
    };
    let what = features["what"].as_str().unwrap();
    assert_eq!(what.split(" (").next(), Some(expected.as_str()), "{what}");
    // The pcscd check comes with the YubiKey backend, the FUSE one with `export mount`.
    let areas = [
        ("pcscd", cfg!(feature = "yubikey")),
        ("fuse", cfg!(feature = "mount")),
        ("clock", true),
        ("profiles", true),
        ("journal", true),
        ("transcript", true),
    ];
    for (area, built) in areas {
        assert_eq!(
            checks.iter().any(|c| c["area"] == area),
            built,
            "{area} check: {checks:#?}"
        );
    }
    let fuse_ok = std::path::Path::new("/dev/fuse").exists();
    if cfg!(feature = "mount") && common::available("FUSE (/dev/fuse)", fuse_ok) {
        let dev = find(&checks, "fuse", "/dev/fuse").unwrap();
        assert_eq!(dev["verdict"], "ok", "{dev}");
    }
    let clock = find(&checks, "clock", "the clock says").unwrap();
    assert_eq!(clock["verdict"], "ok", "{clock}");
}

#[test]
fn failures_exit_non_zero_with_a_fix() {
    let Some(hsm) = SoftHsm::new("doctor-fail") else {
        return;
    };
    let mut env = hsm.env();
    // A transcript location that cannot be created (its parent is a device, not a directory:
    // unwritable even for root).
    env.retain(|(k, _)| k != "SEQUESTER_CUSTODY_TRANSCRIPT");
    env.push((
        "SEQUESTER_CUSTODY_TRANSCRIPT".into(),
        "/dev/null/transcript.jsonl".into(),
    ));
    let (ok, checks) = doctor_json(&["--module", "/nonexistent/module.so"], &env);
    assert!(!ok);
    let missing = find(&checks, "pkcs11", "/nonexistent/module.so does not exist").unwrap();
    assert_eq!(missing["verdict"], "fail");
    let transcript = find(&checks, "transcript", "/dev/null/transcript.jsonl").unwrap();
    assert_eq!(transcript["verdict"], "fail", "{transcript}");

    // Text mode: one line per check, verdict first, the fix on the same line.
    let out = run_cli(&["doctor", "--module", "/nonexistent/module.so"], &env);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(!text.is_empty());
    for line in text.lines() {
        assert!(
            line.starts_with("ok ") || line.starts_with("warn ") || line.starts_with("FAIL "),
            "{line}"
        );
        if !line.starts_with("ok ") {
            assert!(line.contains(" — fix: "), "{line}");
        }
    }
}

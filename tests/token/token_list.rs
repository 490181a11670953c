//! `token list` and `token info` against real SoftHSM2 and kryoptic tokens.

use crate::common::*;

#[test]
fn token_list_and_info() {
    for t in TestToken::both("listed") {
        let module = t.module().display().to_string();
        let out = run_cli(&["--json", "token", "list", "--module", &module], &t.env());
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let modules = v.as_array().unwrap();
        // Every shipped profile appears, tested or not.
        for name in [
            "softhsm2",
            "kryoptic",
            "yubihsm2",
            "yubikey-ykcs11",
            "opensc",
            "thales-luna",
            "entrust-nshield",
            "aws-cloudhsm",
        ] {
            assert!(
                modules.iter().any(|m| m["profile"] == name),
                "profile {name} missing from {v}"
            );
        }
        assert!(modules
            .iter()
            .any(|m| m["profile"] == "thales-luna" && m["tested"] == false));
        let ours = modules
            .iter()
            .find(|m| m["profile"] == t.name() && m["error"].is_null())
            .unwrap_or_else(|| panic!("{} not listed: {v}", t.name()));
        let tokens = ours["tokens"].as_array().unwrap();
        assert_eq!(tokens.len(), 1, "{ours}");
        assert_eq!(tokens[0]["label"], "listed");
        let flags: Vec<_> = tokens[0]["flags"].as_array().unwrap().iter().collect();
        assert!(flags.iter().any(|f| *f == "TOKEN_INITIALIZED"));
        assert!(flags.iter().any(|f| *f == "LOGIN_REQUIRED"));
        if let TestToken::SoftHsm(_) = t {
            // SoftHSM always offers one uninitialised slot.
            assert_eq!(ours["free_slots"], 1, "{ours}");
        }
        // Text output.
        let out = run_cli(&["token", "list", "--module", &module], &t.env());
        assert!(stdout(&out).contains("token `listed`"), "{}", stdout(&out));

        // token info: identity, PIN state, negotiated paths per token.
        let out = run_cli(&["--json", "token", "info", &t.token_uri()], &t.env());
        assert!(out.status.success(), "{}", stderr(&out));
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(info["label"], "listed");
        assert_eq!(info["profile"], t.name());
        assert!(info["pin_state"]
            .as_str()
            .unwrap()
            .contains("counter state"));
        let decrypt = info["mechanisms"]["decrypt"].as_array().unwrap();
        let sign = info["mechanisms"]["sign"].as_array().unwrap();
        assert_eq!(sign[0], "native-sha256-pss");
        match t {
            TestToken::SoftHsm(_) => assert_eq!(decrypt[0], "raw-rsa-host-oaep"),
            TestToken::Kryoptic(_) => assert_eq!(decrypt[0], "native-oaep-sha256"),
        }
        // The URI `token info` prints selects the token by serial.
        assert!(info["uri"].as_str().unwrap().contains("serial="));
        let out = run_cli(&["token", "info", &t.token_uri()], &t.env());
        assert!(stdout(&out).contains("decrypt:"), "{}", stdout(&out));
    }
}

#[test]
fn token_selection_by_module_name() {
    let Some(hsm) = SoftHsm::new("byname") else {
        return;
    };
    let out = run_cli(
        &[
            "--json",
            "token",
            "info",
            "pkcs11:token=byname?module-name=softhsm2",
        ],
        &hsm.env(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["label"], "byname");
    // No module at all: every installed profile's module is searched.
    let out = run_cli(
        &["--json", "token", "info", "pkcs11:token=byname"],
        &hsm.env(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["profile"], "softhsm2");
    // SEQUESTER_CUSTODY_MODULE names a default module.
    let mut env = hsm.env();
    env.push((
        "SEQUESTER_CUSTODY_MODULE".into(),
        hsm.module.display().to_string(),
    ));
    let out = run_cli(&["--json", "token", "info", "pkcs11:token=byname"], &env);
    assert!(out.status.success(), "{}", stderr(&out));
}

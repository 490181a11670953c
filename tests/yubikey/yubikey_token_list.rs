//! `token list` / `token info` show the YubiKeys reachable over PC/SC (virtual PIV cards), and
//! a stopped pcscd costs one line of `token list`, not the PKCS#11 listing.
#![cfg(feature = "yubikey")] // the YubiKey PIV backend

use crate::common::yubikey as yubikey_common;

use crate::common::{run_cli, stderr, stdout, SoftHsm};
use sequester_custody::token::{yubikey as yk, KeySpec, Role, TokenError};

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn yubikey_entry(listing: &serde_json::Value) -> serde_json::Value {
    let entries: Vec<_> = listing
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["backend"] == "yubikey")
        .collect();
    assert_eq!(entries.len(), 1, "{listing}");
    entries[0].clone()
}

#[test]
fn token_list_and_info_show_yubikeys_with_serial_firmware_reader_and_pin_retries() {
    let Some(session) = yubikey_common::start(&["5.4.3", "5.7.1"]) else {
        return;
    };
    let (a, b) = (&session.cards[0], &session.cards[1]);

    // Spend one PIN try on card b so the counters differ (3 vs 2): read from the card, not
    // assumed.
    let wrong = session.pin_file("wrong", "654321");
    let wrong_uri = format!("{}?pin-source=file:{}", b.uri(), wrong.display());
    let spec = KeySpec {
        role: Role::Service,
        label: "service".into(),
        bits: 2048,
        allow_insecure_test_size: false,
        always_authenticate: false,
    };
    match yk::generate(&wrong_uri, &spec, &sequester_custody::token::NonInteractive) {
        Err(TokenError::WrongPin { .. }) => {}
        other => panic!("expected a wrong PIN, got {:?}", other.err()),
    }

    let listing = json(&run_cli(&["--json", "token", "list"], &[]));
    let entry = yubikey_entry(&listing);
    assert!(entry["error"].is_null(), "{entry}");
    let cards = entry["cards"].as_array().unwrap();
    let find = |serial: u32| {
        cards
            .iter()
            .find(|c| c["serial"] == serial)
            .unwrap_or_else(|| panic!("card {serial} missing from {entry}"))
            .clone()
    };
    let (ca, cb) = (find(a.serial), find(b.serial));
    assert_eq!(ca["firmware"], "5.4.3");
    assert_eq!(cb["firmware"], "5.7.1");
    assert_eq!(ca["pin_retries"], 3, "{ca}");
    assert_eq!(cb["pin_retries"], 2, "{cb}");
    assert_ne!(ca["reader"], cb["reader"], "two cards in two reader slots");
    assert!(ca["reader"].as_str().unwrap().contains("Yubico"), "{ca}");
    assert_eq!(ca["uri"], format!("yubikey:serial={}", a.serial));
    // PKCS#11 entries are still there and say so.
    assert!(listing
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["backend"] == "pkcs11" && m["profile"] == "softhsm2"));

    // Text output: one line per card and its URI.
    let out = run_cli(&["token", "list"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "YubiKey {} firmware 5.7.1 in reader `{}`, PIN retries 2",
            b.serial,
            cb["reader"].as_str().unwrap()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("uri: yubikey:serial={}", a.serial)),
        "{text}"
    );

    // The listed URI selects the card again in `token info`.
    let info = json(&run_cli(
        &["--json", "token", "info", cb["uri"].as_str().unwrap()],
        &[],
    ));
    assert_eq!(info["serial"], b.serial);
    assert_eq!(info["firmware"], "5.7.1");
    assert_eq!(info["pin_retries"], 2);
    assert_eq!(info["backend"], "yubikey");
    let out = run_cli(&["token", "info", &a.uri()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains(&format!("serial {}", a.serial)), "{text}");
    assert!(text.contains("PIN retries:  3"), "{text}");

    // Listing and info spend no PIN try.
    let after = yk::card_info(&b.uri()).unwrap();
    assert_eq!(after.pin_retries, 2);

    // A serial nobody has: a clean, specific failure.
    let out = run_cli(&["token", "info", "yubikey:serial=99999999"], &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no YubiKey with serial 99999999"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}

#[test]
fn pcscd_not_running_is_one_line_of_token_list() {
    // The PC/SC client reads PCSCLITE_CSOCK_NAME; a socket nobody listens on is what it sees
    // when pcscd is stopped (without stopping the pcscd other tests share).
    let dir = tempfile::tempdir().unwrap();
    let mut env = vec![(
        "PCSCLITE_CSOCK_NAME".to_string(),
        dir.path().join("no-pcscd.comm").display().to_string(),
    )];
    let softhsm = SoftHsm::new("beside-pcscd");
    let mut args = vec!["token", "list"];
    let module;
    if let Some(t) = &softhsm {
        env.extend(t.env());
        module = t.module.display().to_string();
        args.extend(["--module", module.as_str()]);
    }

    let out = run_cli(&args, &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<_> = text
        .lines()
        .filter(|l| l.starts_with("yubikey (PIV over PC/SC)"))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(
        lines[0].contains("not listed") && lines[0].contains("pcscd"),
        "{text}"
    );
    if softhsm.is_some() {
        assert!(text.contains("token `beside-pcscd`"), "{text}");
    }

    let mut json_args = vec!["--json"];
    json_args.extend(&args);
    let listing = json(&run_cli(&json_args, &env));
    let entry = yubikey_entry(&listing);
    assert!(
        entry["error"].as_str().unwrap().contains("pcscd"),
        "{entry}"
    );
    assert_eq!(entry["cards"].as_array().unwrap().len(), 0);

    // `token info` on a YubiKey, on the other hand, fails: it needs the card.
    let out = run_cli(&["token", "info", "yubikey:serial=12345678"], &env);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("pcscd"), "{}", stderr(&out));
}

//! Trust anchor: a forged export (the same tree under a fresh root key, written by the
//! project's export writer) is refused when the genuine root is pinned or given with --org /
//! --root-key, and reported NOT ANCHORED (exit 3) when nothing anchors it. Also: careful-client
//! verdicts (revoked author, READER author) through the CLI with the key in SoftHSM2.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::{run_cli, stderr, stdout, SoftHsm};
use rsa::RsaPrivateKey;
use sequester_custody::export::anchor::{fingerprint, OrganizationAddr};
use sequester_export_writer::{Content, ExportWriter, WriterConfig};
use serde_json::Value;

const ORG: &str = "GeneratedOrg";

fn service_key() -> RsaPrivateKey {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1010);
    RsaPrivateKey::new(&mut rng, 1024).unwrap()
}

/// The same workspace history; `forged_root` replaces only the organisation root key.
fn write_export(path: &Path, key: &RsaPrivateKey, forged_root: Option<u64>) -> [u8; 32] {
    let config = WriterConfig {
        blocksize: 4096,
        seed: 77,
        authority_bits: 1024,
        root_key_seed: forged_root,
        ..WriterConfig::default()
    };
    let mut w = ExportWriter::create(path, config).unwrap();
    w.add_service("investigation", &common::spki_der(key))
        .unwrap();
    w.rotate_key().unwrap();
    w.write_file("/report.txt", Content::bytes(b"quarterly figures".to_vec()))
        .unwrap();
    w.write_file("/a/b.txt", Content::bytes(b"nested".to_vec()))
        .unwrap();
    w.checkpoint("all").unwrap();
    let root = w.root_verify_key();
    w.finish().unwrap();
    root
}

fn address(root: [u8; 32], org: &str) -> String {
    OrganizationAddr {
        host: "parsec.example".into(),
        port: None,
        no_ssl: false,
        organization_id: org.into(),
        root_verify_key: root,
    }
    .to_url()
}

struct Case {
    dir: tempfile::TempDir,
    hsm: SoftHsm,
    genuine: PathBuf,
    forged: PathBuf,
    genuine_root: [u8; 32],
    forged_root: [u8; 32],
}

impl Case {
    fn new(label: &str) -> Option<Case> {
        let dir = tempfile::tempdir().unwrap();
        let key = service_key();
        let genuine = dir.path().join("genuine.sqlite");
        let forged = dir.path().join("forged.sqlite");
        let genuine_root = write_export(&genuine, &key, None);
        let forged_root = write_export(&forged, &key, Some(666));
        assert_ne!(genuine_root, forged_root);
        let hsm = SoftHsm::with_service_key(&key, label)?;
        Some(Case {
            dir,
            hsm,
            genuine,
            forged,
            genuine_root,
            forged_root,
        })
    }

    fn pins(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Runs the CLI with the token and `pins` as the pin file; checks the exports are unchanged.
    fn run(&self, pins: &str, args: &[&str]) -> Output {
        let before = [&self.genuine, &self.forged].map(|p| common::file_sha256(p));
        let mut env = self.hsm.env();
        env.push(("SEQUESTER_CUSTODY_PINS".into(), pins.into()));
        let out = run_cli(args, &env);
        let after = [&self.genuine, &self.forged].map(|p| common::file_sha256(p));
        assert_eq!(before, after, "an export was modified by {args:?}");
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
        out
    }
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn both(out: &Output) -> String {
    format!("{}{}", stdout(out), stderr(out))
}

#[test]
fn a_forged_export_is_refused_when_anchored_and_not_anchored_when_nothing_is_pinned() {
    let Some(c) = Case::new("trust-forged") else {
        return;
    };
    let key = c.hsm.key_uri("svc");
    let genuine = c.genuine.to_str().unwrap();
    let forged = c.forged.to_str().unwrap();
    let genuine_fp = fingerprint(&c.genuine_root);
    let forged_fp = fingerprint(&c.forged_root);
    let no_pins = c.pins("none.json");

    // Nothing pinned: both verify as internally consistent, neither says OK; exit 3.
    for (file, fp, root) in [
        (forged, &forged_fp, c.forged_root),
        (genuine, &genuine_fp, c.genuine_root),
    ] {
        let out = c.run(&no_pins, &["export", "verify", file, "--key", &key]);
        let text = both(&out);
        assert_eq!(code(&out), 3, "{text}");
        assert!(text.contains("NOT ANCHORED"), "{text}");
        assert!(!text.contains("Result:    OK"), "{text}");
        assert!(text.contains(fp.as_str()), "{text}");
        assert!(text.contains(&hex::encode(root)), "{text}");
        assert!(text.contains("org pin"), "{text}");
        let out = c.run(
            &no_pins,
            &["--json", "export", "verify", file, "--key", &key],
        );
        assert_eq!(code(&out), 3);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["consistent"], true);
        assert_eq!(v["anchored"], false);
        assert_eq!(v["result"], "not_anchored");
        assert_eq!(v["context"]["trust"]["root_key_fingerprint"], fp.as_str());
    }

    // The genuine organisation address pinned.
    let pins = c.pins("pins.json");
    let addr = address(c.genuine_root, ORG);
    let out = c.run(&pins, &["org", "pin", &addr]);
    assert!(out.status.success(), "{}", both(&out));
    assert!(stdout(&out).contains(&genuine_fp));
    let out = c.run(&pins, &["--json", "org", "list"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pins"][0]["organization_id"], ORG);

    let out = c.run(&pins, &["export", "verify", genuine, "--key", &key]);
    assert_eq!(code(&out), 0, "{}", both(&out));
    assert!(stdout(&out).contains("Result:    OK"), "{}", both(&out));
    assert!(stderr(&out).contains("ANCHORED (matches the pin)"));

    // Refused before any token operation: a key URI naming no token at all proves the token
    // was never reached (opening it would fail with another error).
    let no_token = "pkcs11:token=no-such-token;object=svc";
    let dest = c.dir.path().join("out");
    let mountpoint = c.dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let mut commands: Vec<Vec<&str>> = vec![
        vec!["export", "info", forged],
        vec!["export", "verify", forged, "--key", no_token],
        vec!["export", "ls", forged, "-R", "--key", no_token],
        vec!["export", "cat", forged, "/report.txt", "--key", no_token],
        vec![
            "export",
            "history",
            forged,
            "/report.txt",
            "--key",
            no_token,
        ],
        vec!["export", "timeline", forged, "--key", no_token],
        vec![
            "export",
            "extract",
            forged,
            dest.to_str().unwrap(),
            "--key",
            no_token,
        ],
    ];
    if cfg!(feature = "mount") {
        commands.push(vec![
            "export",
            "mount",
            forged,
            mountpoint.to_str().unwrap(),
            "--key",
            no_token,
        ]);
    }
    for args in &commands {
        let out = c.run(&pins, args);
        let err = stderr(&out);
        assert_eq!(code(&out), 4, "{args:?}: {}", both(&out));
        assert!(err.contains("REFUSED"), "{args:?}: {err}");
        assert!(
            err.contains(&forged_fp) && err.contains(&genuine_fp),
            "{err}"
        );
        assert!(stdout(&out).is_empty(), "{args:?}: {}", stdout(&out));
    }
    assert!(!dest.exists());
    assert!(!c.dir.path().join("out.custody.json").exists());

    // --org and --root-key without any pin: the same verdicts.
    let hex_root = hex::encode(c.genuine_root);
    for anchor in [["--org", addr.as_str()], ["--root-key", hex_root.as_str()]] {
        let mut args = vec!["export", "verify", forged, "--key", &key];
        args.extend(anchor);
        let out = c.run(&no_pins, &args);
        assert_eq!(code(&out), 4, "{anchor:?}: {}", both(&out));
        assert!(stderr(&out).contains("REFUSED"));
        let mut args = vec!["export", "verify", genuine, "--key", &key];
        args.extend(anchor);
        let out = c.run(&no_pins, &args);
        assert_eq!(code(&out), 0, "{anchor:?}: {}", both(&out));
    }
    // An address of another organisation ID with the genuine key is a mismatch too.
    let other = address(c.genuine_root, "OtherOrg");
    let out = c.run(
        &no_pins,
        &["export", "info", genuine, "--org", other.as_str()],
    );
    assert_eq!(code(&out), 4, "{}", both(&out));
    assert!(stderr(&out).contains("OtherOrg"));

    // The custody record of an anchored extraction names the key and how it was anchored.
    let dest = c.dir.path().join("genuine-out");
    let out = c.run(
        &pins,
        &[
            "export",
            "extract",
            genuine,
            dest.to_str().unwrap(),
            "--key",
            &key,
            "--root-key",
            &hex_root,
        ],
    );
    assert!(out.status.success(), "{}", both(&out));
    let record: Value = serde_json::from_slice(
        &std::fs::read(c.dir.path().join("genuine-out.custody.json")).unwrap(),
    )
    .unwrap();
    let trust = &record["trust_anchor"];
    assert_eq!(trust["anchored"], true, "{record}");
    assert_eq!(trust["organization_id"], ORG);
    assert_eq!(trust["root_verify_key"], hex_root.as_str());
    assert_eq!(trust["root_key_fingerprint"], genuine_fp.as_str());
    assert_eq!(trust["anchored_by"], serde_json::json!(["root_key", "pin"]));

    // `info --json` carries the verdict; unpinning returns to NOT ANCHORED.
    let out = c.run(&pins, &["--json", "export", "info", genuine]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["trust"]["anchored"], true);
    let out = c.run(&pins, &["org", "unpin", ORG]);
    assert!(out.status.success(), "{}", both(&out));
    let out = c.run(&pins, &["export", "verify", forged, "--key", &key]);
    assert_eq!(code(&out), 3, "{}", both(&out));
}

#[test]
fn pinning_refuses_bad_addresses_and_a_second_key() {
    let dir = tempfile::tempdir().unwrap();
    let pins = dir.path().join("pins.json").display().to_string();
    let env = vec![("SEQUESTER_CUSTODY_PINS".to_string(), pins.clone())];
    for bad in [
        "https://parsec.example/Org1?p=xCAawPGqegh7kAvXFHXXYLwU84NlOa2XfRV4i6VND4s8ig",
        "parsec3://parsec.example/Org1",
        "parsec3://parsec.example/Org1?p=AAAA",
    ] {
        let out = run_cli(&["org", "pin", bad], &env);
        common::assert_clean_failure(&out, "organisation address");
    }
    assert!(!Path::new(&pins).exists(), "a refused pin wrote the file");
    let out = run_cli(
        &[
            "org",
            "pin",
            "parsec3://127.0.0.1:6777/Org1?no_ssl=true&p=xCAawPGqegh7kAvXFHXXYLwU84NlOa2XfRV4i6VND4s8ig",
        ],
        &env,
    );
    assert!(out.status.success(), "{}", both(&out));
    let other = address([9; 32], "Org1");
    let out = run_cli(&["org", "pin", &other], &env);
    common::assert_clean_failure(&out, "already pinned");
}

#[test]
fn revoked_and_reader_authors_are_flagged_by_verify_ls_and_extract() {
    let dir = tempfile::tempdir().unwrap();
    let key = service_key();
    let path = dir.path().join("authors.sqlite");
    let config = WriterConfig {
        blocksize: 4096,
        seed: 78,
        authority_bits: 1024,
        users: 3,
        ..WriterConfig::default()
    };
    let mut w = ExportWriter::create(&path, config).unwrap();
    w.add_service("investigation", &common::spki_der(&key))
        .unwrap();
    w.rotate_key().unwrap();
    w.write_file("/bob.txt", Content::bytes(b"alice".to_vec()))
        .unwrap();
    w.write_file("/carol.txt", Content::bytes(b"alice".to_vec()))
        .unwrap();
    w.write_file("/alice.txt", Content::bytes(b"alice".to_vec()))
        .unwrap();
    w.sync().unwrap();
    w.revoke_user(1).unwrap();
    w.set_realm_role(2, Some("READER")).unwrap();
    w.set_author(1);
    w.write_file("/bob.txt", Content::bytes(b"revoked bob".to_vec()))
        .unwrap();
    w.sync().unwrap();
    w.set_author(2);
    w.write_file("/carol.txt", Content::bytes(b"reader carol".to_vec()))
        .unwrap();
    w.sync().unwrap();
    let root = w.root_verify_key();
    w.finish().unwrap();
    let Some(hsm) = SoftHsm::with_service_key(&key, "trust-authors") else {
        return;
    };
    let uri = hsm.key_uri("svc");
    let export = path.to_str().unwrap();
    let root_hex = hex::encode(root);
    let mut env = hsm.env();
    env.push((
        "SEQUESTER_CUSTODY_PINS".into(),
        dir.path().join("pins.json").display().to_string(),
    ));
    let anchored = |args: &[&str]| {
        let mut full = args.to_vec();
        full.extend(["--key", &uri, "--root-key", &root_hex]);
        run_cli(&full, &env)
    };
    let out = anchored(&["export", "verify", export]);
    let text = both(&out);
    assert_eq!(code(&out), 2, "{text}");
    assert!(text.contains("whose user was revoked"), "{text}");
    assert!(
        text.contains("had role READER, which cannot write"),
        "{text}"
    );

    let out = anchored(&["--json", "export", "ls", export, "/"]);
    assert!(out.status.success(), "{}", both(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = |p: &str| {
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"] == p)
            .unwrap()
            .clone()
    };
    for p in ["/bob.txt", "/carol.txt"] {
        assert_eq!(entry(p)["invalid"], true, "{p}: {v}");
        assert_eq!(entry(p)["readable"], false, "{p}");
    }
    assert_eq!(entry("/alice.txt")["readable"], true);

    let dest = dir.path().join("x");
    let out = anchored(&["export", "extract", export, dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", both(&out));
    assert!(dest.join("alice.txt").exists());
    assert!(!dest.join("bob.txt").exists(), "invalid version written");
    assert!(!dest.join("carol.txt").exists(), "invalid version written");
    let record: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("x.custody.json")).unwrap()).unwrap();
    let unreadable: Vec<&str> = record["unreadable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["path"].as_str().unwrap())
        .collect();
    assert_eq!(unreadable, vec!["/bob.txt", "/carol.txt"], "{record}");
}

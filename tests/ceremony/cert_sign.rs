//! `cert service` / `cert revoke` / `ceremony verify` with keys generated on a real SoftHSM2
//! token: the certificate verifies with the authority public key, refusals happen before
//! anything is signed or written, and every attempt lands in the transcript chain.

use crate::common;

use std::path::{Path, PathBuf};

use crate::common::{key_generate_args, run_cli, stderr, stdout, SoftHsm};
use sequester_custody::ceremony::transcript;
use sequester_custody::parsec::spki::RsaPublicKeyDer;

fn keygen(hsm: &SoftHsm, role: &str, label: &str, bits: usize, public_out: &Path) {
    let bits = bits.to_string();
    let token = hsm.token_uri();
    let out = run_cli(
        &key_generate_args(
            role,
            label,
            &bits,
            &token,
            &["--public-out", public_out.to_str().unwrap()],
        ),
        &hsm.env(),
    );
    assert!(out.status.success(), "key generate: {}", stderr(&out));
}

struct Setup {
    hsm: SoftHsm,
    dir: tempfile::TempDir,
    authority_pub: PathBuf,
    service_pub: PathBuf,
    transcript: PathBuf,
}

impl Setup {
    fn new() -> Option<Setup> {
        let hsm = SoftHsm::new("ceremony")?;
        let dir = tempfile::tempdir().unwrap();
        let authority_pub = dir.path().join("authority.pub.pem");
        let service_pub = dir.path().join("service.pub.pem");
        keygen(&hsm, "authority", "auth", 2048, &authority_pub);
        keygen(&hsm, "service", "svc", 2048, &service_pub);
        let transcript = dir.path().join("transcript.jsonl");
        Some(Setup {
            hsm,
            dir,
            authority_pub,
            service_pub,
            transcript,
        })
    }

    fn p(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut full: Vec<&str> = args.to_vec();
        let t = self.transcript.display().to_string();
        full.extend([
            "--transcript",
            &t,
            "--operator",
            "Alice",
            "--operator",
            "Bob",
        ]);
        let out = run_cli(&full, &self.hsm.env());
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
        out
    }

    fn cert_service(&self, extra: &[&str]) -> std::process::Output {
        let auth = self.hsm.key_uri("auth");
        let mut args = vec!["cert", "service", "--authority", &auth];
        args.extend_from_slice(extra);
        self.cli(&args)
    }

    fn outputs(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".pem") && !n.ends_with(".pub.pem"))
            .collect();
        names.sort();
        names
    }
}

#[test]
fn service_and_revocation_signed_on_softhsm_verify_and_are_transcripted() {
    let Some(s) = Setup::new() else { return };
    let out_dir = s.dir.path().display().to_string() + "/";
    let out = s.cert_service(&[
        "--service-public-key",
        s.service_pub.to_str().unwrap(),
        "--label",
        "Service One",
        "--service-id",
        "00112233445566778899aabbccddeeff",
        "--timestamp",
        "2026-01-02T03:04:05.123456Z",
        "--authority-public",
        s.authority_pub.to_str().unwrap(),
        "-o",
        &out_dir,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("transcript: "), "{}", stderr(&out));
    let name = "sequester_service_certificate-00112233445566778899aabbccddeeff-2026-01-02T03:04:05.123456Z.pem";
    assert_eq!(s.outputs(), [name]);
    let text = stdout(&out);
    let authority =
        RsaPublicKeyDer::from_pem(&std::fs::read_to_string(&s.authority_pub).unwrap()).unwrap();
    let service =
        RsaPublicKeyDer::from_pem(&std::fs::read_to_string(&s.service_pub).unwrap()).unwrap();
    for expected in [
        "00112233445566778899aabbccddeeff",
        "Service One",
        "2026-01-02T03:04:05.123456Z",
        &service.fingerprint(),
        &authority.fingerprint(),
    ] {
        assert!(text.contains(expected), "missing {expected} in {text}");
    }

    // The file verifies with the authority public key.
    let cert = s.p(name);
    let shown = run_cli(
        &[
            "--json",
            "cert",
            "show",
            &cert,
            "--authority-public",
            s.authority_pub.to_str().unwrap(),
        ],
        &[],
    );
    assert!(shown.status.success(), "{}", stderr(&shown));
    let v: serde_json::Value = serde_json::from_str(&stdout(&shown)).unwrap();
    assert_eq!(v["verified"], true);
    assert_eq!(v["label"], "Service One");
    assert_eq!(v["service_key"]["fingerprint"], service.fingerprint());
    assert_eq!(v["signature_bytes"], 256);

    // Revocation from the service certificate file, JSON output.
    let auth = s.hsm.key_uri("auth");
    let out = s.cli(&[
        "--json",
        "cert",
        "revoke",
        "--authority",
        &auth,
        "--service-certificate",
        &cert,
        "--timestamp",
        "2026-01-03T00:00:00Z",
        "-o",
        &s.p("revocation.pem"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["kind"], "revocation");
    assert_eq!(v["service_id"], "00112233445566778899aabbccddeeff");
    assert_eq!(v["authority_key_fingerprint"], authority.fingerprint());
    let head = v["transcript_head"].as_str().unwrap().to_string();
    let shown = run_cli(
        &[
            "cert",
            "show",
            &s.p("revocation.pem"),
            "--authority-public",
            s.authority_pub.to_str().unwrap(),
        ],
        &[],
    );
    assert!(stdout(&shown).contains("VERIFIED"), "{}", stdout(&shown));

    // Transcript: 2 entries, chain OK, head printed by `ceremony verify` equals the last one.
    let out = run_cli(&["ceremony", "verify", s.transcript.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("head digest: {head}")),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("2 entries"));
    let text = std::fs::read_to_string(&s.transcript).unwrap();
    let entry: transcript::Entry = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let c = &entry.content;
    assert_eq!(c.command, "cert service");
    assert_eq!(c.operators, ["Alice", "Bob"]);
    assert_eq!(c.result, "ok");
    assert_eq!(c.tokens[0].label, "ceremony");
    assert!(
        c.tokens[0].manufacturer.contains("SoftHSM"),
        "{:?}",
        c.tokens
    );
    assert!(c
        .keys
        .iter()
        .any(|k| k.role == "authority" && k.fingerprint == authority.fingerprint()));
    assert!(c
        .keys
        .iter()
        .any(|k| k.role == "service" && k.fingerprint == service.fingerprint()));
    assert_eq!(c.outputs[0].sha256, common::file_sha256(Path::new(&cert)));
    assert!(c
        .inputs
        .iter()
        .any(|f| f.sha256 == common::file_sha256(&s.service_pub)));
    assert!(
        !text.contains(&format!("\"{}\"", common::USER_PIN)) && !text.contains("pin-value"),
        "the PIN leaked into the transcript"
    );

    // Tampering with the transcript is detected.
    std::fs::write(
        &s.transcript,
        text.replacen("Service One", "Service Two", 1),
    )
    .unwrap();
    let out = run_cli(&["ceremony", "verify", s.transcript.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("chain broken at line 2"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn refusals_happen_before_signing_and_write_nothing() {
    let Some(s) = Setup::new() else { return };
    let svc = s.service_pub.to_str().unwrap().to_string();
    let auth_pub = s.authority_pub.to_str().unwrap().to_string();
    let fixture_auth = common::fixture("sequester_authority.public.pem")
        .display()
        .to_string();
    let small = common::fixture("sequester_service_3.00000000000000000000000000000003.public.pem")
        .display()
        .to_string();
    let private = common::fixture("sequester_authority.private.pem")
        .display()
        .to_string();
    let future = sequester_custody::parsec::DateTime(
        sequester_custody::parsec::DateTime::now().as_micros() + 3600 * 1_000_000,
    )
    .to_rfc3339();
    let dir = s.dir.path().display().to_string() + "/";
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "empty label",
            vec!["--service-public-key", &svc, "--label", " "],
            "label is empty",
        ),
        (
            "1024-bit service key",
            vec!["--service-public-key", &small, "--label", "S"],
            "1024 bits; at least 2048",
        ),
        (
            "future timestamp",
            vec![
                "--service-public-key",
                &svc,
                "--label",
                "S",
                "--timestamp",
                &future,
            ],
            "refuses every later sequester certificate",
        ),
        (
            "authority mismatch",
            vec![
                "--service-public-key",
                &svc,
                "--label",
                "S",
                "--authority-public",
                &fixture_auth,
            ],
            "does not match the expected authority",
        ),
        (
            "service key is the authority key",
            vec!["--service-public-key", &auth_pub, "--label", "S"],
            "the service key is the authority key",
        ),
        (
            "private key file as service key",
            vec!["--service-public-key", &private, "--label", "S"],
            "private key",
        ),
    ];
    let n = cases.len();
    for (name, mut args, expected) in cases {
        args.extend(["-o", dir.as_str()]);
        let out = s.cert_service(&args);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", stdout(&out));
        let err = stderr(&out);
        assert!(
            err.contains(expected),
            "{name}: expected `{expected}` in {err}"
        );
        assert!(s.outputs().is_empty(), "{name}: a file was written");
    }
    // The future message explains why.
    let out = s.cert_service(&[
        "--service-public-key",
        &svc,
        "--label",
        "S",
        "--timestamp",
        &future,
    ]);
    assert!(
        stderr(&out).contains("refuses every later sequester certificate"),
        "{}",
        stderr(&out)
    );
    // --allow-future lets it through.
    let out = s.cert_service(&[
        "--service-public-key",
        &svc,
        "--label",
        "S",
        "--timestamp",
        &future,
        "--allow-future",
        "-o",
        &dir,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(s.outputs().len(), 1);
    // Every attempt is in the transcript, failures with their reason.
    let report = transcript::verify(&s.transcript).unwrap();
    assert_eq!(report.entries as usize, n + 2);
    let text = std::fs::read_to_string(&s.transcript).unwrap();
    assert!(text.contains("failed: refused: the service label is empty"));
}

#[test]
fn journal_orders_timestamps_and_knows_services() {
    let Some(s) = Setup::new() else { return };
    let svc = s.service_pub.to_str().unwrap().to_string();
    let journal = s.p("journal.json");
    let auth = s.hsm.key_uri("auth");
    let first = s.cert_service(&[
        "--service-public-key",
        &svc,
        "--label",
        "S1",
        "--timestamp",
        "2026-01-01T00:00:00Z",
        "--organization",
        "Org1",
        "--journal",
        &journal,
        "-o",
        &s.p("s1.pem"),
    ]);
    assert!(first.status.success(), "{}", stderr(&first));
    // Same timestamp again: the server would refuse it, so do we.
    let again = s.cert_service(&[
        "--service-public-key",
        &svc,
        "--label",
        "S2",
        "--timestamp",
        "2026-01-01T00:00:00Z",
        "--organization",
        "Org1",
        "--journal",
        &journal,
        "-o",
        &s.p("s2.pem"),
    ]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("is not after 2026-01-01T00:00:00Z"),
        "{}",
        stderr(&again)
    );
    assert!(!Path::new(&s.p("s2.pem")).exists());
    // Another organisation is independent.
    let other = s.cert_service(&[
        "--service-public-key",
        &svc,
        "--label",
        "S2",
        "--timestamp",
        "2026-01-01T00:00:00Z",
        "--organization",
        "Org2",
        "--journal",
        &journal,
        "-o",
        &s.p("s2.pem"),
    ]);
    assert!(other.status.success(), "{}", stderr(&other));
    // Revoking an unknown service of Org1 is refused; the known one is accepted.
    let unknown = s.cli(&[
        "cert",
        "revoke",
        "--authority",
        &auth,
        "--service-id",
        "ffffffffffffffffffffffffffffffff",
        "--organization",
        "Org1",
        "--journal",
        &journal,
        "-o",
        &s.p("r0.pem"),
    ]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("is not among the known services"),
        "{}",
        stderr(&unknown)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&run_cli(
        &["--json", "cert", "show", &s.p("s1.pem")],
        &[],
    )))
    .unwrap();
    let id = v["service_id"].as_str().unwrap().to_string();
    let ok = s.cli(&[
        "cert",
        "revoke",
        "--authority",
        &auth,
        "--service-id",
        &id,
        "--organization",
        "Org1",
        "--journal",
        &journal,
        "-o",
        &s.p("r1.pem"),
    ]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    // Existing output files are never overwritten.
    let clobber = s.cli(&[
        "cert",
        "revoke",
        "--authority",
        &auth,
        "--service-id",
        &id,
        "-o",
        &s.p("r1.pem"),
    ]);
    assert_eq!(clobber.status.code(), Some(1));
    assert!(
        stderr(&clobber).contains("refusing to overwrite"),
        "{}",
        stderr(&clobber)
    );
}

/// The published 1024-bit fixture authority key imported into SoftHSM (test only): refused by
/// default, accepted with the hidden test allowance, and the token-signed revocation carries
/// exactly the envelope Parsec wrote into the fixture (docs/formats.md §10 V4), verified by the
/// fixture key.
#[test]
fn fixture_authority_key_on_softhsm_reproduces_the_parsec_envelope() {
    let Some(hsm) = SoftHsm::new("fixture") else {
        return;
    };
    hsm.import_with_softhsm_util(
        &common::fixture("sequester_authority.private.pem"),
        "fixture-auth",
        "01",
    );
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t.jsonl").display().to_string();
    let out_file = dir.path().join("rev.pem").display().to_string();
    let auth = hsm.key_uri("fixture-auth");
    let fixture_pub = common::fixture("sequester_authority.public.pem")
        .display()
        .to_string();
    let args = [
        "cert",
        "revoke",
        "--authority",
        auth.as_str(),
        "--service-id",
        "00000000000000000000000000000001",
        "--timestamp",
        "2000-01-16T00:00:00Z",
        "--authority-public",
        fixture_pub.as_str(),
        "--transcript",
        t.as_str(),
        "-o",
        out_file.as_str(),
    ];
    let refused = run_cli(&args, &hsm.env());
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains(
            "refused: authority key: invalid RSA public key: key is 1024 bits; at least 2048"
        ),
        "{}",
        stderr(&refused)
    );
    assert!(!Path::new(&out_file).exists());

    let mut allowed = args.to_vec();
    allowed.extend(["--insecure-min-bits", "1024"]);
    let out = run_cli(&allowed, &hsm.env());
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&out_file).unwrap();
    let (_, body) = sequester_custody::parsec::cert_pem::decode(&text, None).unwrap();
    let authority =
        RsaPublicKeyDer::from_pem(&std::fs::read_to_string(&fixture_pub).unwrap()).unwrap();
    let payload = sequester_custody::parsec::armor::verify_pss_armored(&authority, &body).unwrap();
    assert_eq!(
        hex::encode(payload),
        "0028b52ffd0058950200840483a474797065d9257365717565737465725f7265766f6b65645f736572766963655f6365727469666963617465a974696d657374616d70d70100035e2efad68000aa6964d8020001020038a9c27ad519"
    );
}

/// `--export`: the fixture export's sequester topic (verified with the token's authority key)
/// decides which timestamps and revocations are acceptable; the export stays byte-identical.
#[test]
fn export_sequester_topic_guards_timestamps_and_revocations() {
    let Some(hsm) = SoftHsm::new("topic") else {
        return;
    };
    hsm.import_with_softhsm_util(
        &common::fixture("sequester_authority.private.pem"),
        "fixture-auth",
        "01",
    );
    let dir = tempfile::tempdir().unwrap();
    let export = common::fixture("sequestered_export.sqlite");
    let before = common::file_sha256(&export);
    let t = dir.path().join("t.jsonl").display().to_string();
    let auth = hsm.key_uri("fixture-auth");
    let export_s = export.display().to_string();
    let revoke = |id: &str, ts: &str, out: &str| {
        let out_path = dir.path().join(out).display().to_string();
        let args = [
            "cert",
            "revoke",
            "--authority",
            &auth,
            "--service-id",
            id,
            "--timestamp",
            ts,
            "--export",
            &export_s,
            "--transcript",
            &t,
            "--insecure-min-bits",
            "1024",
            "-o",
            &out_path,
        ];
        run_cli(&args, &hsm.env())
    };
    // Service 1 is already revoked in the export.
    let out = revoke(
        "00000000000000000000000000000001",
        "2001-01-01T00:00:00Z",
        "a.pem",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("was already revoked at 2000-01-16T00:00:00Z"),
        "{}",
        stderr(&out)
    );
    // Service 3 is unknown to the organisation.
    let out = revoke(
        "00000000000000000000000000000003",
        "2001-01-01T00:00:00Z",
        "b.pem",
    );
    assert!(
        stderr(&out).contains("is not among the known services of organisation `Org1`"),
        "{}",
        stderr(&out)
    );
    // Service 2 with a timestamp older than the topic: the server would refuse it.
    let out = revoke(
        "00000000000000000000000000000002",
        "2000-01-03T00:00:00Z",
        "c.pem",
    );
    assert!(stderr(&out).contains("is not after"), "{}", stderr(&out));
    // Service 2, later timestamp: signed.
    let out = revoke(
        "00000000000000000000000000000002",
        "2001-01-01T00:00:00Z",
        "d.pem",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.path().join("d.pem").exists());
    for f in ["a.pem", "b.pem", "c.pem"] {
        assert!(!dir.path().join(f).exists(), "{f}");
    }
    // A wrong organisation name is refused.
    let args = [
        "cert",
        "revoke",
        "--authority",
        &auth,
        "--service-id",
        "00000000000000000000000000000002",
        "--export",
        &export_s,
        "--organization",
        "Org9",
        "--journal",
        &dir.path().join("j.json").display().to_string(),
        "--transcript",
        &t,
        "--insecure-min-bits",
        "1024",
        "-o",
        &dir.path().join("e.pem").display().to_string(),
    ];
    let out = run_cli(&args, &hsm.env());
    assert!(
        stderr(&out).contains("is an export of `Org1`"),
        "{}",
        stderr(&out)
    );
    assert_eq!(common::file_sha256(&export), before);
}

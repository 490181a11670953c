//! The real Parsec server (parsec-cloud 3.9.3, `../shared/interop`) judges certificates our CLI
//! signs with keys generated on real tokens (SoftHSM2, kryoptic) at 2048 and 4096 bits:
//! service certificate accepted with its fields read back equal, revocation accepted, a tampered
//! certificate rejected; and one `make_export.py` run in hook mode (service registered through
//! our CLI, then revoked through our CLI) that exits 0.
//!
//! Without the oracle venv a local run skips; CI (SEQUESTER_TEST_REQUIRE_ALL=1) fails instead.

use crate::common;

use std::path::Path;
use std::process::Command;

use crate::common::{key_generate_args, run_cli, sh_quote, shared_dir, stderr, stdout};
use sequester_custody::parsec::cert_pem;
use sequester_custody::parsec::spki::RsaPublicKeyDer;

/// The venv Python with parsec-cloud 3.9.3 (`PARSEC_ORACLE_PY`, set by scripts/test.sh).
/// One test token: environment, URIs. Keeps the token alive.
struct Token {
    name: &'static str,
    env: Vec<(String, String)>,
    token_uri: String,
    key_uri: Box<dyn Fn(&str) -> String>,
    _keep: Box<dyn std::any::Any>,
}

fn softhsm(label: &str) -> Option<Token> {
    let hsm = common::SoftHsm::new(label)?;
    let module = hsm.module.display().to_string();
    let label2 = label.to_string();
    Some(Token {
        name: "softhsm2",
        env: hsm.env(),
        token_uri: hsm.token_uri(),
        key_uri: Box::new(move |o| {
            format!("pkcs11:token={label2};object={o};type=private?module-path={module}")
        }),
        _keep: Box::new(hsm),
    })
}

fn kryoptic(label: &str) -> Option<Token> {
    let k = common::Kryoptic::new(label)?;
    Some(Token {
        name: "kryoptic",
        env: k.env(),
        token_uri: k.token_uri(),
        key_uri: {
            let module = k.module.display().to_string();
            let label = label.to_string();
            Box::new(move |o| {
                format!("pkcs11:token={label};object={o};type=private?module-path={module}")
            })
        },
        _keep: Box::new(k),
    })
}

impl Token {
    fn keygen(&self, role: &str, label: &str, bits: usize, public_out: &Path) -> RsaPublicKeyDer {
        let out = run_cli(
            &key_generate_args(
                role,
                label,
                &bits.to_string(),
                &self.token_uri,
                &["--public-out", public_out.to_str().unwrap()],
            ),
            &self.env,
        );
        assert!(
            out.status.success(),
            "{} key generate: {}",
            self.name,
            stderr(&out)
        );
        RsaPublicKeyDer::from_pem(&std::fs::read_to_string(public_out).unwrap()).unwrap()
    }
}

fn oracle(py: &Path, script: &str, args: &[&str]) -> (i32, serde_json::Value) {
    let out = Command::new(py)
        .arg(shared_dir().join("interop").join(script))
        .args(args)
        .output()
        .unwrap();
    let text = stdout(&out);
    let line = text.lines().last().unwrap_or("{}");
    let value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("{script}: not JSON ({e}): {text} {}", stderr(&out)));
    (out.status.code().unwrap_or(-1), value)
}

fn judge_token(token: Token, bits: usize) {
    let Some(py) = common::oracle_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).display().to_string();
    let authority = token.keygen(
        "authority",
        "auth",
        bits,
        Path::new(&p("authority.pub.pem")),
    );
    let service = token.keygen("service", "svc", bits, Path::new(&p("service.pub.pem")));
    let transcript = p("transcript.jsonl");
    let auth_uri = (token.key_uri)("auth");
    let svc_uri = (token.key_uri)("svc");
    let label = format!("Service {} {bits} é", token.name);

    // Service certificate, service key read from the token.
    let out = run_cli(
        &[
            "--json",
            "cert",
            "service",
            "--authority",
            &auth_uri,
            "--service-key",
            &svc_uri,
            "--label",
            &label,
            "--authority-public",
            &p("authority.pub.pem"),
            "--transcript",
            &transcript,
            "-o",
            &p("service.pem"),
        ],
        &token.env,
    );
    assert!(
        out.status.success(),
        "{} cert service: {}",
        token.name,
        stderr(&out)
    );
    let ours: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();

    let (code, v) = oracle(
        &py,
        "verify_service_cert.py",
        &[&p("authority.pub.pem"), &p("service.pem")],
    );
    assert_eq!(
        code, 0,
        "{} {bits}: server rejected our service certificate: {v}",
        token.name
    );
    assert_eq!(v["accepted"], true);
    assert_eq!(v["service_id"], ours["service_id"]);
    assert_eq!(v["label"], label.as_str());
    assert_eq!(v["timestamp_us"], ours["timestamp_us"]);
    assert_eq!(v["public_key_der_sha256"], service.fingerprint());
    assert_eq!(v["public_key_bits"], bits);
    assert_eq!(
        v["authority_public_key_der_sha256"],
        authority.fingerprint()
    );

    let ts = ours["timestamp"].as_str().unwrap();

    // Tampered: one byte of the signed payload changed (the label) -> rejected by the server.
    let text = std::fs::read_to_string(p("service.pem")).unwrap();
    let (kind, mut body) = cert_pem::decode(&text, None).unwrap();
    let last = body.len() - 1;
    body[last] ^= 0x01;
    std::fs::write(p("tampered.pem"), cert_pem::encode(kind, &body)).unwrap();
    let (code, v) = oracle(
        &py,
        "verify_service_cert.py",
        &[&p("authority.pub.pem"), &p("tampered.pem")],
    );
    assert_eq!(
        code, 1,
        "{} {bits}: server accepted a tampered certificate: {v}",
        token.name
    );
    assert_eq!(v["accepted"], false);

    // Revocation of that service.
    let id = ours["service_id"].as_str().unwrap();
    let out = run_cli(
        &[
            "cert",
            "revoke",
            "--authority",
            &auth_uri,
            "--service-id",
            id,
            "--transcript",
            &transcript,
            "-o",
            &p("revocation.pem"),
        ],
        &token.env,
    );
    assert!(
        out.status.success(),
        "{} cert revoke: {}",
        token.name,
        stderr(&out)
    );
    let (code, v) = oracle(
        &py,
        "verify_revocation_cert.py",
        &[
            &p("authority.pub.pem"),
            &p("revocation.pem"),
            "--service-cert",
            &p("service.pem"),
            "--after",
            ts,
        ],
    );
    assert_eq!(
        code, 0,
        "{} {bits}: server rejected our revocation: {v}",
        token.name
    );
    assert_eq!(v["accepted"], true);
    let chain = sequester_custody::ceremony::transcript::verify(Path::new(&transcript)).unwrap();
    assert_eq!(chain.entries, 2);
}

#[test]
fn softhsm_2048_certificates_judged_by_the_server() {
    if let Some(t) = softhsm("interop2048") {
        judge_token(t, 2048);
    }
}

#[test]
fn softhsm_4096_certificates_judged_by_the_server() {
    if let Some(t) = softhsm("interop4096") {
        judge_token(t, 4096);
    }
}

#[test]
fn kryoptic_2048_certificates_judged_by_the_server() {
    if let Some(t) = kryoptic("interop2048") {
        judge_token(t, 2048);
    }
}

#[test]
fn kryoptic_4096_certificates_judged_by_the_server() {
    if let Some(t) = kryoptic("interop4096") {
        judge_token(t, 4096);
    }
}

/// Single quotes for `sh -c`.
#[test]
fn make_export_hook_mode_registers_then_revokes_a_service_signed_on_softhsm() {
    let Some(py) = common::oracle_python() else {
        return;
    };
    let Some(token) = softhsm("hook") else { return };
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).display().to_string();
    token.keygen(
        "authority",
        "auth",
        2048,
        Path::new(&p("authority.pub.pem")),
    );
    let service = token.keygen("service", "svc", 2048, Path::new(&p("service.pub.pem")));
    let bin = env!("CARGO_BIN_EXE_sequester-custody");
    let common_args = format!(
        "--authority {} --transcript {} --organization \"$ORACLE_ORGANIZATION_ID\" --journal {} --operator CI",
        sh_quote(&(token.key_uri)("auth")),
        sh_quote(&p("transcript.jsonl")),
        sh_quote(&p("journal.json")),
    );
    let service_cmd = format!(
        "{} cert service {common_args} --service-key {} --label 'Hook Service' -o \"$ORACLE_OUT\"",
        sh_quote(bin),
        sh_quote(&(token.key_uri)("svc")),
    );
    let revoke_cmd = format!(
        "{} cert revoke {common_args} --service-id \"$ORACLE_SERVICE_ID\" -o \"$ORACLE_OUT\"",
        sh_quote(bin),
    );
    let mut cmd = Command::new(&py);
    cmd.arg(shared_dir().join("interop/make_export.py"))
        .args(["--authority-pub", &p("authority.pub.pem")])
        .args(["--service-cert-cmd", &service_cmd])
        .args(["--revoke-cert-cmd", &revoke_cmd])
        .args([
            "--out",
            &p("export.sqlite"),
            "--expected",
            &p("expected.json"),
        ]);
    for (k, v) in &token.env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "make_export.py failed:\nstdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("expected.json")).unwrap()).unwrap();
    let services = expected["sequester_services"].as_array().unwrap();
    assert_eq!(services.len(), 1, "{services:?}");
    assert_eq!(services[0]["label"], "Hook Service");
    assert_eq!(services[0]["revoked"], true);
    assert_eq!(services[0]["public_key_der_sha256"], service.fingerprint());
    // Our transcript holds both signatures, chained; the journal knows the organisation.
    let chain =
        sequester_custody::ceremony::transcript::verify(Path::new(&p("transcript.jsonl"))).unwrap();
    assert_eq!(chain.entries, 2);
    let journal = std::fs::read_to_string(p("journal.json")).unwrap();
    assert!(
        journal.contains(expected["organization_id"].as_str().unwrap()),
        "{journal}"
    );
}

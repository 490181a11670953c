//! `ceremony run PLAN.toml` on real SoftHSM2 tokens: keys generated on two tokens, a service
//! certificate and its revocation signed, public files written; confirmations, refusals and
//! failures stop the run and the report says exactly what was and was not done.

use crate::common;

use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use crate::common::{run_cli, stderr, stdout, SoftHsm};
use sequester_custody::ceremony::transcript;

const SERVICE_ID: &str = "5e1ec7ed000000000000000000000001";

fn plan_text(hsm: &SoftHsm, service_step: &str) -> String {
    let module = hsm.module.display();
    format!(
        r#"
title = "test ceremony"
operators = ["Alice"]
output_dir = "out"
organization = "Org1"
journal = "journal.json"

[[step]]
action = "generate-key"
name = "authority"
role = "authority"
token = "pkcs11:token=plan-auth?module-path={module}"
label = "org1-authority"
bits = 2048
public_out = "authority.pub.pem"

[[step]]
action = "generate-key"
name = "svc1"
role = "service"
token = "pkcs11:token=plan-svc?module-path={module}"
label = "org1-service-1"
bits = 2048
public_out = "service-1.pub.pem"

{service_step}

[[step]]
action = "revocation-certificate"
authority = "authority"
service_id = "{SERVICE_ID}"
output = "revocation.pem"
"#
    )
}

const SERVICE_STEP: &str = r#"
[[step]]
action = "service-certificate"
authority = "authority"
service_key = "svc1"
label = "Service 1"
service_id = "5e1ec7ed000000000000000000000001"
output = "service-1.pem"
"#;

fn tokens() -> Option<SoftHsm> {
    let hsm = SoftHsm::new("plan-auth")?;
    hsm.init_token("plan-svc");
    Some(hsm)
}

fn run_plan(hsm: &SoftHsm, plan: &Path, extra: &[&str], stdin: &str) -> std::process::Output {
    let mut cmd = common::cli();
    cmd.args([
        "ceremony",
        "run",
        plan.to_str().unwrap(),
        "--operator",
        "Bob",
    ])
    .args(extra)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    for (k, v) in hsm.env() {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn full_plan_with_yes() {
    let Some(hsm) = tokens() else { return };
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(&plan, plan_text(&hsm, SERVICE_STEP)).unwrap();
    let out = run_plan(&hsm, &plan, &["--yes"], "");
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.matches("DONE").count(), 4, "{text}");
    let o = dir.path().join("out");
    for f in [
        "authority.pub.pem",
        "service-1.pub.pem",
        "service-1.pem",
        "revocation.pem",
    ] {
        assert!(o.join(f).is_file(), "{f} missing");
    }
    // The certificates verify with the authority public key the plan wrote.
    for f in ["service-1.pem", "revocation.pem"] {
        let shown = run_cli(
            &[
                "cert",
                "show",
                o.join(f).to_str().unwrap(),
                "--authority-public",
                o.join("authority.pub.pem").to_str().unwrap(),
            ],
            &[],
        );
        assert!(
            stdout(&shown).contains("VERIFIED with"),
            "{f}: {}",
            stderr(&shown)
        );
        assert!(stdout(&shown).contains(SERVICE_ID));
    }
    // Transcript: one entry per step, both operators, the tokens named.
    let t = o.join(transcript::DEFAULT_FILE);
    let report = transcript::verify(&t).unwrap();
    assert_eq!(report.entries, 4);
    assert!(text.contains(&report.head), "{text}");
    let lines = std::fs::read_to_string(&t).unwrap();
    let first: transcript::Entry = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(first.content.operators, ["Alice", "Bob"]);
    assert_eq!(first.content.tokens[0].label, "plan-auth");
    assert_eq!(
        first.content.outputs[0].sha256,
        common::file_sha256(&o.join("authority.pub.pem"))
    );
    // The journal recorded the organisation.
    let journal = std::fs::read_to_string(dir.path().join("journal.json")).unwrap();
    assert!(journal.contains(SERVICE_ID), "{journal}");
}

#[test]
fn declined_step_stops_the_run_and_reports_what_was_done() {
    let Some(hsm) = tokens() else { return };
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(&plan, plan_text(&hsm, SERVICE_STEP)).unwrap();
    let out = run_plan(&hsm, &plan, &[], "y\nyes\nn\n");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("DONE     step 1"), "{text}");
    assert!(text.contains("DONE     step 2"), "{text}");
    assert!(text.contains("DECLINED step 3"), "{text}");
    assert!(text.contains("NOT RUN  step 4"), "{text}");
    assert!(
        stderr(&out).contains("2 of 4 steps done"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("out/service-1.pem").exists());
    let t = dir.path().join("out").join(transcript::DEFAULT_FILE);
    assert_eq!(transcript::verify(&t).unwrap().entries, 2);
}

#[test]
fn failing_step_stops_the_run_and_bad_plans_touch_nothing() {
    let Some(hsm) = tokens() else { return };
    let dir = tempfile::tempdir().unwrap();
    // A 1024-bit service key file: refused at step 3, step 4 never runs.
    let small = common::fixture("sequester_service_3.00000000000000000000000000000003.public.pem");
    let step = format!(
        "[[step]]\naction = \"service-certificate\"\nauthority = \"authority\"\nservice_public_key = \"{}\"\nlabel = \"Small\"\n",
        small.display()
    );
    let plan = dir.path().join("plan.toml");
    std::fs::write(&plan, plan_text(&hsm, &step)).unwrap();
    let out = run_plan(&hsm, &plan, &["--yes", "--json"], "");
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let statuses: Vec<&str> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["done", "done", "failed", "not-run"]);
    assert!(v["steps"][2]["message"]
        .as_str()
        .unwrap()
        .contains("at least 2048"));
    assert_eq!(v["completed"], false);
    let t = dir.path().join("out").join(transcript::DEFAULT_FILE);
    let lines = std::fs::read_to_string(&t).unwrap();
    assert!(lines
        .lines()
        .nth(2)
        .unwrap()
        .contains("failed: refused: service key"));

    // A plan that refers to an unknown key is rejected before anything runs.
    let dir2 = tempfile::tempdir().unwrap();
    let plan2 = dir2.path().join("plan.toml");
    std::fs::write(
        &plan2,
        plan_text(&hsm, SERVICE_STEP).replace("service_key = \"svc1\"", "service_key = \"svc9\""),
    )
    .unwrap();
    let out = run_plan(&hsm, &plan2, &["--yes"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("step 3: service_key `svc9`"),
        "{}",
        stderr(&out)
    );
    assert!(!dir2.path().join("out").exists());
}

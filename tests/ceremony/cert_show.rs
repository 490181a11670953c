//! `cert show` on Parsec-made certificates (docs/formats.md §10 vector V5, the fixture's sequester
//! topic) and on damaged files: each damage has its own message, and nothing is ever written.

use std::path::{Path, PathBuf};

use crate::common::{fixture, run_cli, stderr, stdout};
use sequester_custody::parsec::cert_pem::{self, CertificateKind};

const V5_PEM: &str = "-----BEGIN PARSEC SEQUESTER SERVICE REVOCATION CERTIFICATE-----
UlNBU1NBLVBTUy1TSEEyNTY6KzjRBt3Gup3s/HDpXaydo7vfaj4gKgpvgZ1KUsTJ
f0LXpfWtlcj/CodtHMwZ7tlDtbp/S5hCz62lRpV0PbRH6MmTV5P1cMcnsCusBlG8
buhnfHilPa6o1jb2lFe/LksRI/8DBrwtYpFoZFdjcU8dkmayIKleJeVwbSfaL73R
t48AKLUv/QBYlQIAhASDpHR5cGXZJXNlcXVlc3Rlcl9yZXZva2VkX3NlcnZpY2Vf
Y2VydGlmaWNhdGWpdGltZXN0YW1w1wEAA14u+taAAKppZNgCAAECADipwnrVGQ==
-----END PARSEC SEQUESTER SERVICE REVOCATION CERTIFICATE-----
";

fn authority() -> String {
    fixture("sequester_authority.public.pem")
        .display()
        .to_string()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn show(file: &Path, with_authority: bool, json: bool) -> std::process::Output {
    let f = file.display().to_string();
    let a = authority();
    let mut args = vec!["cert", "show", f.as_str()];
    if with_authority {
        args.extend(["--authority-public", a.as_str()]);
    }
    if json {
        args.insert(0, "--json");
    }
    run_cli(&args, &[])
}

fn fixture_rows() -> Vec<Vec<u8>> {
    let conn = rusqlite::Connection::open_with_flags(
        fixture("sequestered_export.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = conn
        .prepare("SELECT certificate FROM sequester_certificate ORDER BY _id")
        .unwrap();
    let rows = stmt
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    rows
}

#[test]
fn v5_revocation_shown_unverified_then_verified() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "v5.pem", V5_PEM);
    let out = show(&f, false, false);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("revocation certificate"), "{text}");
    assert!(text.contains("00000000000000000000000000000001"), "{text}");
    assert!(text.contains("2000-01-16T00:00:00Z"), "{text}");
    assert!(text.contains("NOT VERIFIED"), "{text}");

    let out = show(&f, true, true);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["kind"], "revocation");
    assert_eq!(v["verified"], true);
    assert_eq!(v["timestamp_us"], 947980800000000i64);
    assert_eq!(v["signature_bytes"], 128);
    let authority_key = sequester_custody::parsec::spki::RsaPublicKeyDer::from_pem(
        &std::fs::read_to_string(fixture("sequester_authority.public.pem")).unwrap(),
    )
    .unwrap();
    assert_eq!(v["authority_key_fingerprint"], authority_key.fingerprint());
}

#[test]
fn fixture_service_certificates_verify_with_the_fixture_authority() {
    let dir = tempfile::tempdir().unwrap();
    let rows = fixture_rows();
    for (i, kind, label) in [
        (1, CertificateKind::Service, Some("Sequester Service 1")),
        (2, CertificateKind::Revocation, None),
        (3, CertificateKind::Service, Some("Sequester Service 2")),
    ] {
        let f = write(
            dir.path(),
            &format!("row{i}.pem"),
            &cert_pem::encode(kind, &rows[i]),
        );
        let out = show(&f, true, false);
        assert!(out.status.success(), "row {i}: {}", stderr(&out));
        let text = stdout(&out);
        assert!(text.contains("VERIFIED with authority key"), "{text}");
        if let Some(label) = label {
            assert!(text.contains(label), "{text}");
            assert!(text.contains("(RSA 1024)"), "{text}");
        }
    }
    // A service certificate under the revocation header: header/content mismatch.
    let f = write(
        dir.path(),
        "mislabelled.pem",
        &cert_pem::encode(CertificateKind::Revocation, &rows[1]),
    );
    let out = show(&f, true, false);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the PEM header says revocation certificate"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn damaged_files_each_get_their_own_message() {
    let dir = tempfile::tempdir().unwrap();
    let body = cert_pem::decode(V5_PEM, None).unwrap().1;
    let reencode = |bytes: &[u8]| cert_pem::encode(CertificateKind::Revocation, bytes);

    let mut tampered = body.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let mut wrong_alg = b"RSASSA-PSS-SHA512".to_vec();
    wrong_alg.extend_from_slice(&body[17..]);
    let short = body[..18 + 100].to_vec();
    let cases: Vec<(&str, String, bool, &str)> = vec![
        ("not PEM", "hello".into(), false, "fewer than 2 lines"),
        (
            "public key",
            std::fs::read_to_string(fixture("sequester_authority.public.pem")).unwrap(),
            false,
            "wrong PEM header",
        ),
        (
            "truncated base64",
            V5_PEM.replace("nrVGQ==", "nrVGQ"),
            false,
            "invalid base64",
        ),
        (
            "no footer",
            V5_PEM.lines().take(4).collect::<Vec<_>>().join("\n"),
            false,
            "wrong PEM footer",
        ),
        (
            "wrong algorithm",
            reencode(&wrong_alg),
            false,
            "unsupported algorithm `RSASSA-PSS-SHA512`",
        ),
        ("too short", reencode(&short), true, "invalid data size"),
        (
            "bad signature",
            reencode(&tampered),
            true,
            "signature does not verify",
        ),
    ];
    for (name, text, with_authority, expected) in cases {
        let f = write(dir.path(), "bad.pem", &text);
        let before = std::fs::read(&f).unwrap();
        let out = show(&f, with_authority, false);
        assert_eq!(out.status.code(), Some(1), "{name}: {out:?}");
        let err = stderr(&out);
        assert!(
            err.contains(expected),
            "{name}: expected `{expected}` in: {err}"
        );
        assert!(!err.contains("panicked"), "{name}: {err}");
        assert_eq!(std::fs::read(&f).unwrap(), before, "{name}: file modified");
    }
}

#[test]
fn raw_rows_from_an_export_show_all_three_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let rows = fixture_rows();
    let root = "c118b50c90876d8feac2ffe02d59c26f447064289091c1993d3aec170fd6a9c2";
    let authority_key = sequester_custody::parsec::spki::RsaPublicKeyDer::from_pem(
        &std::fs::read_to_string(fixture("sequester_authority.public.pem")).unwrap(),
    )
    .unwrap();
    // Row 0: the authority certificate (Ed25519 by the root key).
    let f = dir.path().join("row0.bin");
    std::fs::write(&f, &rows[0]).unwrap();
    let a = authority();
    let out = run_cli(
        &[
            "--json",
            "cert",
            "show",
            f.to_str().unwrap(),
            "--root-verify-key",
            root,
            "--authority-public",
            &a,
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["kind"], "authority");
    assert_eq!(v["verified"], true);
    assert_eq!(v["timestamp"], "2000-01-02T00:00:00Z");
    assert_eq!(
        v["authority_key"]["fingerprint"],
        authority_key.fingerprint()
    );
    let out = run_cli(&["cert", "show", f.to_str().unwrap()], &[]);
    assert!(stdout(&out).contains("NOT VERIFIED"), "{}", stdout(&out));
    // A wrong root key is refused.
    let wrong = "00".repeat(32).replacen("00", "01", 1);
    let out = run_cli(
        &[
            "cert",
            "show",
            f.to_str().unwrap(),
            "--root-verify-key",
            &wrong,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    // Row 1: raw armored service certificate.
    let f = dir.path().join("row1.bin");
    std::fs::write(&f, &rows[1]).unwrap();
    let out = show(&f, true, false);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("Sequester Service 1"));
    assert!(stdout(&out).contains("VERIFIED with"));
}

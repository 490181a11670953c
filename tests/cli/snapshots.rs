//! What the CLI prints, as `trycmd` snapshots under `tests/cli/snapshots/`: every `--help`, the
//! main outputs on the real Parsec fixture export, and the main error messages. The commands run
//! from the repository root, so the fixture is `../shared/fixtures/parsec/…` in every snapshot.
//!
//! Regenerate after a deliberate change with
//! `TRYCMD=overwrite cargo test --test cli snapshots`, then review every changed line.

use crate::common::{fixture, SoftHsm, USER_PIN};

const BIN: &str = "sequester-custody";
/// The fixture's published 1024-bit test service keys (see `../shared/fixtures/parsec/README.md`).
const SERVICE_KEYS: [(&str, &str, &str); 3] = [
    (
        "sequester_service_1.00000000000000000000000000000001.private.pem",
        "svc1",
        "01",
    ),
    (
        "sequester_service_2.00000000000000000000000000000002.private.pem",
        "svc2",
        "02",
    ),
    (
        "sequester_service_3.00000000000000000000000000000003.private.pem",
        "svc3",
        "03",
    ),
];
const EXPORT: &str = "sequestered_export.sqlite";
const EXPORT_SHA256: &str = "db1cd159724b448569b9697f7a4ab21d6b770da78bb78dcaaf340d452c528ecf";

fn cases() -> trycmd::TestCases {
    let cases = trycmd::TestCases::new();
    cases.register_bin(
        BIN,
        std::path::Path::new(env!("CARGO_BIN_EXE_sequester-custody")),
    );
    cases.env("NO_COLOR", "1").env("COLUMNS", "100");
    cases
}

/// `--help` of the tool and of every subcommand (hidden ones included).
/// Only in the default build (both features): a build without `mount` or `yubikey` says
/// so in its help and is checked by `export_errors` / `token_errors` instead.
#[cfg(all(feature = "mount", feature = "yubikey"))]
#[test]
fn help_snapshots() {
    let cases = cases();
    // Help shows `[env: NAME=value]`: the developer's environment must not leak into it.
    for var in [
        "SEQUESTER_CUSTODY_PIN",
        "SEQUESTER_CUSTODY_KEY",
        "SEQUESTER_CUSTODY_MODULE",
        "SEQUESTER_CUSTODY_PINS",
        "SEQUESTER_CUSTODY_TRANSCRIPT",
        "SOFTHSM2_CONF",
        "KRYOPTIC_CONF",
    ] {
        cases.env(var, "");
    }
    cases.case("tests/cli/snapshots/help.trycmd").run();
}

/// `export info/verify/ls/ls -R/cat/history/timeline` on the fixture, and the main errors, with
/// the fixture's service keys in a fresh SoftHSM2 token labelled `snapshots`.
#[test]
fn fixture_and_error_snapshots() {
    let Some(hsm) = SoftHsm::new("snapshots") else {
        return;
    };
    assert_eq!(
        USER_PIN, "123456",
        "the snapshots give this PIN on their command lines"
    );
    for (pem, label, id) in SERVICE_KEYS {
        hsm.import_with_softhsm_util(&fixture(pem), label, id);
    }
    // One file at a time: trycmd runs case files in parallel, and concurrent processes on one
    // SoftHSM2 token directory occasionally fail to find the token. Steps of a file run in order.
    for file in ["export.trycmd", "errors.trycmd"] {
        let cases = cases();
        // The PIN is on each command line instead (`SEQUESTER_CUSTODY_PIN=… cmd`): trycmd lets
        // the environment set here win over a command's own, and one command needs a wrong PIN.
        for (key, value) in hsm.env() {
            if key != "SEQUESTER_CUSTODY_PIN" {
                cases.env(key, value);
            }
        }
        // No pin file: verify is unanchored unless the command names the root key.
        let pins = hsm.dir.path().join("pins.json");
        cases.env("SEQUESTER_CUSTODY_PINS", pins.display().to_string());
        cases
            .insert_var("[TOKENDIR]", hsm.dir.path().display().to_string())
            .unwrap();
        cases.case(format!("tests/cli/snapshots/{file}")).run();
    }
    assert_eq!(
        crate::common::file_sha256(&fixture(EXPORT)),
        EXPORT_SHA256,
        "a snapshot command modified the fixture export"
    );
}

//! `generate-assets DIR`: one man page per visible command and subcommand, generated from the
//! CLI definition itself, and bash/zsh/fish completions (the Debian package ships them).

use crate::common::{run_cli, stderr};

#[test]
fn man_pages_and_completions_follow_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_cli(&["generate-assets", dir.path().to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let man = dir.path().join("man");
    let mut pages: Vec<String> = std::fs::read_dir(&man)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for page in [
        "sequester-custody.1",
        "sequester-custody-doctor.1",
        "sequester-custody-export.1",
        "sequester-custody-export-mount.1",
        "sequester-custody-key-test.1",
        "sequester-custody-cert-service.1",
        "sequester-custody-token-list.1",
    ] {
        assert!(pages.contains(&page.to_string()), "{page} not in {pages:?}");
    }
    // Hidden tools have no page.
    assert!(!pages.iter().any(|p| p.contains("generate-")), "{pages:?}");
    let export = std::fs::read_to_string(man.join("sequester-custody-export.1")).unwrap();
    assert!(
        export.starts_with(".ie") || export.contains(".TH"),
        "not roff"
    );
    assert!(
        export.contains("sequester\\-custody\\-export\\-mount"),
        "{export}"
    );

    let completions = dir.path().join("completions");
    let bash = std::fs::read_to_string(completions.join("sequester-custody.bash")).unwrap();
    assert!(
        bash.contains("complete ") && bash.contains("doctor"),
        "{bash}"
    );
    let zsh = std::fs::read_to_string(completions.join("_sequester-custody")).unwrap();
    assert!(zsh.starts_with("#compdef sequester-custody"), "{zsh}");
    let fish = std::fs::read_to_string(completions.join("sequester-custody.fish")).unwrap();
    assert!(fish.contains("complete -c sequester-custody"), "{fish}");
    let check = std::process::Command::new("bash")
        .arg("-n")
        .arg(completions.join("sequester-custody.bash"))
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
}

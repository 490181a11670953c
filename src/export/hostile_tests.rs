//! Hostile exports (forged manifests and tree shapes): real SQLite exports made by the writer, with
//! forged manifest versions (`sequester_export_writer::forge`), read through the library. Each
//! operation must end quickly, report the forged entries as per-entry problems, and still give the
//! valid rest.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use super::extract::{self, ExtractOptions, NoProgress, PRIVATE_DIR_MODE, PRIVATE_FILE_MODE};
use super::tests::SoftwareKey;
use super::walk::{Walk, WalkRule, WalkStep, MAX_DEPTH};
use super::{timeline, verify, ExportFile, OpenOptions, Realm, UnlockOptions};
use crate::parsec::device::Id;
use crate::parsec::DateTime;
// The writer (a dev-dependency) links its own copy of this library: only bytes, files, IDs and
// instants (as microseconds) cross between the two.
use sequester_export_writer::forge::ForgedManifest;
use sequester_export_writer::{Content, ExportWriter, ServiceId, WriterConfig};

const SERVICE1: &str = "sequester_service_1.00000000000000000000000000000001.private.pem";

/// Runs `f` on its own thread; fails the test if it takes longer than `secs`.
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{what} did not finish within {secs} s"))
}

/// The legitimate tree every hostile export starts from.
const GOOD: [(&str, &[u8]); 3] = [
    ("/good/a.txt", b"alpha"),
    ("/good/sub/b.txt", b"bravo"),
    ("/docs/c.txt", b"charlie"),
];

struct Hostile {
    _dir: tempfile::TempDir,
    path: PathBuf,
    key: SoftwareKey,
}

impl Hostile {
    fn unlock(&self) -> Realm {
        let file = ExportFile::open(&self.path, &OpenOptions::default()).unwrap();
        file.unlock(&self.key, &UnlockOptions::default()).unwrap()
    }
}

/// Writes the good tree, then lets `attack` forge versions (the root's children are passed:
/// `(name, id)` of `docs` and `good`).
fn hostile(attack: impl FnOnce(&mut ExportWriter, Id, Vec<(String, Id)>, ServiceId)) -> Hostile {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hostile.sqlite");
    let key = SoftwareKey::from_fixture(SERVICE1);
    let config = WriterConfig {
        blocksize: 512,
        authority_bits: 1024,
        threads: 2,
        ..WriterConfig::default()
    };
    let mut w = ExportWriter::create(&path, config).unwrap();
    let svc = w
        .add_service("svc", crate::token::KeyHandle::public_key_spki(&key))
        .unwrap();
    w.rotate_key().unwrap();
    for (p, data) in GOOD {
        w.write_file(p, Content::bytes(data.to_vec())).unwrap();
    }
    w.sync().unwrap();
    let root = w.realm_id();
    let children = ["docs", "good"]
        .iter()
        .map(|n| {
            (
                n.to_string(),
                w.entry_id(&format!("/{n}")).unwrap().unwrap(),
            )
        })
        .collect();
    attack(&mut w, root, children, svc);
    w.finish().unwrap();
    Hostile {
        _dir: dir,
        path,
        key,
    }
}

fn extract_all(realm: &Realm, dest: &Path) -> extract::ExtractReport {
    let options = ExtractOptions {
        at: realm.snapshot(),
        path: "/".into(),
        threads: 2,
        cancel: None,
        file_mode: PRIVATE_FILE_MODE,
        dir_mode: PRIVATE_DIR_MODE,
    };
    extract::extract(realm, dest, &options, &NoProgress).unwrap()
}

/// Every step of a full walk at the snapshot.
fn walk_all(realm: &Realm) -> Vec<WalkStep> {
    let t = realm.snapshot();
    let root = realm.root_at(t).unwrap().unwrap();
    let mut walk = Walk::new(realm, t, "/", root, MAX_DEPTH);
    let mut steps = Vec::new();
    while let Some(s) = walk.next_step().unwrap() {
        steps.push(s);
    }
    steps
}

fn problems(steps: &[WalkStep]) -> Vec<(String, WalkRule)> {
    steps
        .iter()
        .filter_map(|s| match s {
            WalkStep::Problem(p) => Some((p.path.clone(), p.rule)),
            _ => None,
        })
        .collect()
}

fn assert_good_tree_extracted(dest: &Path, report: &extract::ExtractReport) {
    for (p, data) in GOOD {
        let on_disk = dest.join(p.trim_start_matches('/'));
        assert_eq!(std::fs::read(&on_disk).unwrap(), data, "{p}");
        assert!(
            report.files.iter().any(|f| f.path == p),
            "{p} not in report"
        );
    }
}

#[test]
fn a_root_listing_itself_is_a_cycle_reported_once_and_everything_else_is_extracted() {
    let h = hostile(|w, root, mut children, _| {
        children.push(("loop".into(), root));
        w.forge_manifest(root, root, ForgedManifest::Folder(children))
            .unwrap();
    });
    let realm = std::sync::Arc::new(h.unlock());
    let r = realm.clone();
    let steps = within(30, "walk", move || walk_all(&r));
    assert_eq!(
        problems(&steps),
        vec![("/loop".to_string(), WalkRule::Cycle)]
    );
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out");
    let (r, d) = (realm.clone(), dest.clone());
    let report = within(30, "extract", move || extract_all(&r, &d));
    assert_good_tree_extracted(&dest, &report);
    assert!(!dest.join("loop").exists());
    let looped: Vec<_> = report
        .unreadable
        .iter()
        .filter(|u| u.path == "/loop")
        .collect();
    assert_eq!(looped.len(), 1, "{:?}", report.unreadable);
    assert!(looped[0].reason.contains("cycle"), "{}", looped[0].reason);
    // verify says so (it said OK before).
    let r = realm.clone();
    let v = within(30, "verify", move || verify::verify(&r, 2).unwrap());
    assert!(!v.ok());
    assert!(
        v.problems
            .iter()
            .any(|p| p.kind == "structure" && p.reason.contains("cycle")),
        "{:?}",
        v.problems
    );
    let r = realm.clone();
    within(30, "timeline", move || timeline::timeline(&r).unwrap());
    // A path through the cycle does not resolve either.
    let t = realm.snapshot();
    assert!(realm.resolve("/good/a.txt", t).is_ok());
    let err = realm
        .resolve("/loop/good/a.txt", t)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cycle"), "{err}");
}

/// Nine folder levels, each listing the next under eight names (every link valid): 8^9 paths
/// through 9 folders. Each folder is expanded once; the other names are reported.
#[test]
fn an_eight_way_fan_out_nine_levels_deep_is_walked_once_per_folder() {
    let h = hostile(|w, root, mut children, _| {
        let levels: Vec<Id> = (0..9).map(|_| w.new_entry_id()).collect();
        let names = |k: usize| (0..8).map(move |i| format!("l{k}-{i}"));
        children.extend(names(1).map(|n| (n, levels[0])));
        for k in 0..9 {
            let parent = if k == 0 { root } else { levels[k - 1] };
            let listed: Vec<(String, Id)> = if k + 1 < 9 {
                names(k + 2).map(|n| (n, levels[k + 1])).collect()
            } else {
                vec![]
            };
            w.forge_manifest(levels[k], parent, ForgedManifest::Folder(listed))
                .unwrap();
        }
        w.forge_manifest(root, root, ForgedManifest::Folder(children))
            .unwrap();
    });
    let realm = std::sync::Arc::new(h.unlock());
    let r = realm.clone();
    let steps = within(30, "walk", move || walk_all(&r));
    let dups = problems(&steps)
        .into_iter()
        .filter(|(_, rule)| *rule == WalkRule::DuplicateId)
        .count();
    assert_eq!(dups, 9 * 7, "7 extra names at each of 9 levels");
    let entries = steps
        .iter()
        .filter(|s| matches!(s, WalkStep::Entry(_)))
        .count();
    // docs, docs/c.txt, good, good/a.txt, good/sub, good/sub/b.txt and one name per level.
    assert_eq!(entries, 6 + 9);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out");
    let (r, d) = (realm.clone(), dest.clone());
    let report = within(30, "extract", move || extract_all(&r, &d));
    assert_good_tree_extracted(&dest, &report);
    assert_eq!(report.folders.len(), 1 + 3 + 9);
    assert!(dest
        .join("l1-0/l2-0/l3-0/l4-0/l5-0/l6-0/l7-0/l8-0/l9-0")
        .is_dir());
    assert!(!dest.join("l1-1").exists());
    // Only the name shown resolves.
    let t = realm.snapshot();
    assert!(realm.resolve("/l1-0/l2-0", t).is_ok());
    assert!(realm.resolve("/l1-0/l2-5", t).is_err());
    let r = realm.clone();
    let v = within(30, "verify", move || verify::verify(&r, 2).unwrap());
    let listed_twice = v
        .problems
        .iter()
        .filter(|p| p.kind == "structure" && p.reason.contains("under 8 names"))
        .count();
    assert_eq!(listed_twice, 9, "{:?}", v.problems);
}

#[test]
fn folders_nested_deeper_than_the_limit_are_shown_but_not_entered() {
    let levels = MAX_DEPTH + 12;
    let h = hostile(|w, root, mut children, _| {
        let ids: Vec<Id> = (0..levels).map(|_| w.new_entry_id()).collect();
        children.push(("d".into(), ids[0]));
        for k in 0..levels {
            let parent = if k == 0 { root } else { ids[k - 1] };
            let listed = if k + 1 < levels {
                vec![("d".to_string(), ids[k + 1])]
            } else {
                vec![]
            };
            w.forge_manifest(ids[k], parent, ForgedManifest::Folder(listed))
                .unwrap();
        }
        w.forge_manifest(root, root, ForgedManifest::Folder(children))
            .unwrap();
    });
    let realm = std::sync::Arc::new(h.unlock());
    let r = realm.clone();
    let steps = within(60, "walk", move || walk_all(&r));
    let deep = format!("/{}", vec!["d"; MAX_DEPTH + 1].join("/"));
    assert_eq!(problems(&steps), vec![(deep.clone(), WalkRule::TooDeep)]);
    let r = realm.clone();
    let v = within(60, "verify", move || verify::verify(&r, 2).unwrap());
    let too_deep: Vec<_> = v
        .problems
        .iter()
        .filter(|p| p.reason.contains("levels deep"))
        .collect();
    assert_eq!(too_deep.len(), 1, "{:?}", v.problems);
    // Extraction writes the allowed levels and reports the rest.
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out");
    let (r, d) = (realm.clone(), dest.clone());
    let report = within(60, "extract", move || extract_all(&r, &d));
    assert_good_tree_extracted(&dest, &report);
    assert!(
        report.unreadable.iter().any(|u| u.path == deep),
        "{:?}",
        report.unreadable
    );
}

#[test]
fn an_entry_in_two_folders_and_a_stale_parent_are_reported_and_nfc_twins_hidden() {
    let h = hostile(|w, _root, children, _| {
        let docs = children[0].1;
        let good = children[1].1;
        let a = w.entry_id("/good/a.txt").unwrap().unwrap();
        // `docs` lists good/a.txt (whose parent is `good`), and a file claiming `docs` as its
        // parent is listed in `good`... under a name that collides after NFC with another.
        let c = w.entry_id("/docs/c.txt").unwrap().unwrap();
        let stray = w.new_entry_id();
        w.forge_manifest(
            stray,
            docs,
            ForgedManifest::File {
                size: 0,
                blocksize: 512,
                blocks: vec![],
            },
        )
        .unwrap();
        w.forge_manifest(
            docs,
            _root,
            ForgedManifest::Folder(vec![
                ("alias".into(), a),
                ("c.txt".into(), c),
                ("e\u{301}".into(), c),
                ("\u{e9}".into(), c),
            ]),
        )
        .unwrap();
        let a2 = w.entry_id("/good/a.txt").unwrap().unwrap();
        let sub = w.entry_id("/good/sub").unwrap().unwrap();
        w.forge_manifest(
            good,
            _root,
            ForgedManifest::Folder(vec![
                ("a.txt".into(), a2),
                ("stray".into(), stray),
                ("sub".into(), sub),
            ]),
        )
        .unwrap();
    });
    let realm = h.unlock();
    let steps = walk_all(&realm);
    let mut got = problems(&steps);
    got.sort();
    assert_eq!(
        got,
        vec![
            ("/docs/alias".to_string(), WalkRule::ParentMismatch),
            ("/docs/\u{e9}".to_string(), WalkRule::NameCollision),
            ("/docs/\u{e9}".to_string(), WalkRule::NameCollision),
            ("/good/stray".to_string(), WalkRule::ParentMismatch),
        ]
    );
    let reason = |path: &str| {
        steps.iter().find_map(|s| match s {
            WalkStep::Problem(p) if p.path == path => Some(p.reason.clone()),
            _ => None,
        })
    };
    assert!(reason("/docs/alias")
        .unwrap()
        .contains("which lists it too"));
    assert!(reason("/good/stray").unwrap().contains("does not list it"));
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out");
    let report = extract_all(&realm, &dest);
    assert_good_tree_extracted(&dest, &report);
    assert!(!dest.join("docs/alias").exists());
    // `stray` names `docs`, which does not list it: a stale link, not extracted but reported
    // (nothing is hidden silently).
    assert!(!dest.join("good/stray").exists());
    assert!(report
        .unreadable
        .iter()
        .any(|u| u.path == "/good/stray" && u.reason.contains("parent mismatch")));
    assert!(report.unreadable.iter().any(|u| u.path == "/docs/alias"));
}

#[test]
fn absurd_declared_sizes_and_overlapping_blocks_are_per_entry_problems() {
    let h = hostile(|w, root, mut children, _| {
        let mut forge_file = |w: &mut ExportWriter, name: &str, size: u64, blocks| {
            let id = w.new_entry_id();
            w.forge_manifest(
                id,
                root,
                ForgedManifest::File {
                    size,
                    blocksize: 512,
                    blocks,
                },
            )
            .unwrap();
            children.push((name.to_string(), id));
        };
        forge_file(w, "tebibyte", 1 << 40, vec![]);
        forge_file(w, "two-pow-50", 1 << 50, vec![]);
        let blocks = vec![w.phantom_block(0, 100), w.phantom_block(50, 100)];
        forge_file(w, "overlap", 1000, blocks);
        let blocks = vec![w.phantom_block(0, 100)];
        forge_file(w, "mostly-zeros", 1000, blocks);
        w.forge_manifest(root, root, ForgedManifest::Folder(children))
            .unwrap();
    });
    let realm = std::sync::Arc::new(h.unlock());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out");
    let (r, d) = (realm.clone(), dest.clone());
    let report = within(30, "extract", move || extract_all(&r, &d));
    assert_good_tree_extracted(&dest, &report);
    for name in ["tebibyte", "two-pow-50", "overlap", "mostly-zeros"] {
        let path = format!("/{name}");
        let u = report
            .unreadable
            .iter()
            .find(|u| u.path == path)
            .unwrap_or_else(|| panic!("{path} not reported: {:?}", report.unreadable));
        assert!(!dest.join(name).exists(), "{name} was written");
        assert!(u.reason.contains("invalid"), "{}", u.reason);
    }
    let reason = |name: &str| {
        report
            .unreadable
            .iter()
            .find(|u| u.path == format!("/{name}"))
            .unwrap()
            .reason
            .clone()
    };
    assert!(
        reason("two-pow-50").contains("maximum"),
        "{}",
        reason("two-pow-50")
    );
    assert!(
        reason("tebibyte").contains("absurd"),
        "{}",
        reason("tebibyte")
    );
    assert!(reason("mostly-zeros").contains("absurd"));
    assert!(
        reason("overlap").contains("overlap"),
        "{}",
        reason("overlap")
    );
    let r = realm.clone();
    let v = within(30, "verify", move || verify::verify(&r, 2).unwrap());
    assert_eq!(
        v.problems.iter().filter(|p| p.kind == "manifest").count(),
        4,
        "{:?}",
        v.problems
    );
}

#[test]
fn extracted_files_are_0600_and_folders_0700_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let h = hostile(|_, _, _, _| {});
    let realm = h.unlock();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out");
    extract_all(&realm, &dest);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&dest), 0o700);
    assert_eq!(mode(&dest.join("good/sub")), 0o700);
    assert_eq!(mode(&dest.join("good/sub/b.txt")), 0o600);
    assert_eq!(mode(&dest.join("docs/c.txt")), 0o600);
}

/// TEST DOUBLE (a fault that cannot be caused for real on demand): a token pulled out during
/// the first decryption. Wraps the software key and answers `TokenRemoved` from then on.
struct RemovedToken(SoftwareKey);

impl crate::token::KeyHandle for RemovedToken {
    fn public_key_spki(&self) -> &[u8] {
        self.0.public_key_spki()
    }
    fn sign_pss_sha256(
        &self,
        m: &[u8],
    ) -> Result<(Vec<u8>, crate::token::MechanismPath), crate::token::TokenError> {
        self.0.sign_pss_sha256(m)
    }
    fn decrypt_oaep_sha256(
        &self,
        _: &[u8],
    ) -> Result<(zeroize::Zeroizing<Vec<u8>>, crate::token::MechanismPath), crate::token::TokenError>
    {
        self.0.ops.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Err(crate::token::TokenError::TokenRemoved(
            "card pulled out".into(),
        ))
    }
    fn provenance(&self) -> Result<crate::token::Provenance, crate::token::TokenError> {
        self.0.provenance()
    }
    fn token(&self) -> crate::token::TokenDescription {
        self.0.token()
    }
    fn info(&self) -> Result<crate::token::KeyInfo, crate::token::TokenError> {
        self.0.info()
    }
}

#[test]
fn a_fatal_token_error_stops_key_recovery_at_once() {
    // Two access rows of this service (key indexes 1 and 2): a removed card must not be asked
    // again for the second (with a PIN-per-operation card, each try would spend a retry).
    let h = hostile(|w, _, _, _| {
        w.rotate_key().unwrap();
    });
    let file = ExportFile::open(&h.path, &OpenOptions::default()).unwrap();
    let removed = RemovedToken(SoftwareKey::from_fixture(SERVICE1));
    let err = match file.unlock(&removed, &UnlockOptions::default()) {
        Ok(_) => panic!("unlock succeeded with a removed token"),
        Err(e) => e,
    };
    assert!(
        matches!(
            err,
            super::ExportError::Token(crate::token::TokenError::TokenRemoved(_))
        ),
        "{err}"
    );
    assert_eq!(removed.0.ops.load(std::sync::atomic::Ordering::SeqCst), 1);
    // The same export with a working key needs one operation and gets both keys.
    let realm = h.unlock();
    assert_eq!(realm.token_operations(), 1);
    assert!(realm.has_key(1) && realm.has_key(2));
}

#[test]
fn many_access_rows_for_one_key_index_cost_one_token_operation() {
    let h = hostile(|w, _, _, svc| {
        // Key index 2 is rotated without this service; then 50 garbage rows claim to be its
        // access to it. Recovery tries index 2 once (fails) and index 1 once (works).
        w.rotate_key_excluding(&[svc]).unwrap();
        for i in 0..50u8 {
            // Well-formed armor (so each row would reach the token), garbage inside.
            let mut row = b"RSAES-OAEP-SHA256-XSALSA20-POLY1305:".to_vec();
            row.extend(std::iter::repeat(i | 1).take(128 + 72));
            w.forge_sequester_access(&svc, 2, &row).unwrap();
        }
    });
    let realm = h.unlock();
    assert_eq!(realm.token_operations(), 2);
    assert!(realm.has_key(1));
    assert!(
        realm
            .recovery()
            .problems
            .iter()
            .any(|p| p.contains("50 access rows for key index 2")),
        "{:?}",
        realm.recovery().problems
    );
}

#[test]
fn time_is_bounded_even_at_other_instants() {
    // The walk rules apply per instant: at an instant before the forged root version the tree is
    // the good one and nothing is reported.
    let mut before = DateTime(0);
    let h = hostile(|w, root, mut children, _| {
        before = DateTime(w.now().0);
        children.push(("loop".into(), root));
        w.forge_manifest(root, root, ForgedManifest::Folder(children))
            .unwrap();
    });
    let realm = h.unlock();
    let root = realm.root_at(before).unwrap().unwrap();
    let mut walk = Walk::new(&realm, before, "/", root, MAX_DEPTH);
    let mut n = 0;
    while let Some(s) = walk.next_step().unwrap() {
        assert!(matches!(s, WalkStep::Entry(_)));
        n += 1;
    }
    assert_eq!(n, 6);
}

#[test]
fn paths_too_long_to_write_are_reported_and_the_rest_is_extracted() {
    // 20 levels of 250-byte names: legal in Parsec, 5000 bytes of path.
    let h = hostile(|w, root, mut children, _| {
        let ids: Vec<Id> = (0..20).map(|_| w.new_entry_id()).collect();
        let name = |k: usize| format!("{k:02}{}", "n".repeat(248));
        children.push((name(0), ids[0]));
        for k in 0..20 {
            let parent = if k == 0 { root } else { ids[k - 1] };
            let listed = if k + 1 < 20 {
                vec![(name(k + 1), ids[k + 1])]
            } else {
                vec![]
            };
            w.forge_manifest(ids[k], parent, ForgedManifest::Folder(listed))
                .unwrap();
        }
        w.forge_manifest(root, root, ForgedManifest::Folder(children))
            .unwrap();
    });
    let realm = h.unlock();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out");
    let report = extract_all(&realm, &dest);
    assert_good_tree_extracted(&dest, &report);
    let too_long: Vec<_> = report
        .unreadable
        .iter()
        .filter(|u| u.reason.contains("too long to write"))
        .collect();
    assert!(
        !too_long.is_empty() && too_long.len() < 20,
        "{:?}",
        report.unreadable
    );
    assert!(too_long
        .iter()
        .all(|u| u.kind == "folder" && u.vlob_id != [0; 16]));
}

#[test]
fn verify_reports_an_ancestor_as_a_problem_and_a_child_naming_another_parent_as_a_notice() {
    let h = hostile(|w, root, children, _| {
        let good = children[1].1;
        // `/good/sub` lists its parent `good` (an ancestor cycle); the root lists a file whose
        // manifest names `docs` as its parent (a stale link, not tampering by itself).
        let sub = w.entry_id("/good/sub").unwrap().unwrap();
        let b = w.entry_id("/good/sub/b.txt").unwrap().unwrap();
        w.forge_manifest(
            sub,
            good,
            ForgedManifest::Folder(vec![("b.txt".into(), b), ("up".into(), good)]),
        )
        .unwrap();
        let docs = children[0].1;
        let stray = w.new_entry_id();
        w.forge_manifest(
            stray,
            docs,
            ForgedManifest::File {
                size: 0,
                blocksize: 512,
                blocks: vec![],
            },
        )
        .unwrap();
        let mut listed = children.clone();
        listed.push(("stray.txt".into(), stray));
        w.forge_manifest(root, root, ForgedManifest::Folder(listed))
            .unwrap();
    });
    let realm = h.unlock();
    let report = verify::verify(&realm, 2).unwrap();
    let at = |list: &[verify::Problem], path: &str| {
        list.iter()
            .filter(|p| p.path.as_deref() == Some(path))
            .map(|p| p.reason.clone())
            .collect::<Vec<_>>()
    };
    let cycle = at(&report.problems, "/good/sub/up");
    assert_eq!(cycle.len(), 1, "{:?}", report.problems);
    assert!(cycle[0].contains("ancestor"), "{cycle:?}");
    let stray = at(&report.notices, "/stray.txt");
    assert_eq!(stray.len(), 1, "{:?}", report.notices);
    assert!(stray[0].contains("parent mismatch"), "{stray:?}");
    assert!(!report
        .problems
        .iter()
        .any(|p| p.reason.contains("parent mismatch")));
    assert_eq!(report.notices.len(), 1, "{:?}", report.notices);
}

//! Real FUSE mounts of the real Parsec fixture `sequestered_export.sqlite`, service keys in a
//! SoftHSM2 token: the README timeline through the mount root and through `/.history/<T>/`,
//! unreadable entries (EACCES + log line), read-only (EROFS), signals and stale mounts.
#![cfg(feature = "mount")] // the FUSE mount

use crate::common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::time::Duration;

use crate::common::mount::{fuse_available, wait_unmounted, Mount};
use crate::common::{fixture, SoftHsm};

const SERVICE1: &str = "sequester_service_1.00000000000000000000000000000001.private.pem";
const SERVICE2: &str = "sequester_service_2.00000000000000000000000000000002.private.pem";
const EXPORT_SHA256: &str = "db1cd159724b448569b9697f7a4ab21d6b770da78bb78dcaaf340d452c528ecf";

struct Env {
    hsm: SoftHsm,
    export: PathBuf,
    dir: tempfile::TempDir,
}

fn setup(label: &str) -> Option<Env> {
    if !fuse_available() {
        return None;
    }
    let hsm = SoftHsm::new(label)?;
    hsm.import_with_softhsm_util(&fixture(SERVICE1), "svc1", "01");
    hsm.import_with_softhsm_util(&fixture(SERVICE2), "svc2", "02");
    Some(Env {
        hsm,
        export: fixture("sequestered_export.sqlite"),
        dir: tempfile::tempdir().unwrap(),
    })
}

impl Env {
    fn mountpoint(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir(&p).unwrap();
        p
    }

    fn mount(&self, mp: &std::path::Path, key: &str, extra: &[&str]) -> Mount {
        Mount::start(
            &self.export,
            mp,
            &self.hsm.key_uri(key),
            extra,
            &self.hsm.env(),
        )
    }
}

fn at(day: u32) -> String {
    format!("2000-01-{day:02}T00:00:00Z")
}

fn names(dir: &std::path::Path) -> std::io::Result<Vec<String>> {
    let mut v: Vec<String> = std::fs::read_dir(dir)?
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    Ok(v)
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

#[test]
fn fixture_timeline_through_the_mount_and_history_folder() {
    let Some(env) = setup("mount-fixture") else {
        return;
    };
    let mp = env.mountpoint("m");
    let m = env.mount(&mp, "svc1", &[]);
    assert!(
        m.banner.contains(
            "Mounted wksp1 (f0000000000000000000000000000003) as of 2025-02-16T23:38:17.449003Z"
        ),
        "{}",
        m.banner
    );

    // At the snapshot the root (v3, key 3) is unreadable: an empty 0000 folder, plus .history.
    assert_eq!(names(&mp).unwrap(), [".history"]);
    assert_eq!(
        std::fs::metadata(&mp).unwrap().permissions().mode() & 0o777,
        0
    );
    // The instants at which the tree changes, from root creation on.
    assert_eq!(
        names(&mp.join(".history")).unwrap(),
        [at(10), at(12), at(15), at(20), at(21)]
    );
    let h = |t: &str| mp.join(".history").join(t);
    // README table, at listed and unlisted instants.
    for (day, name, content) in [
        (10, "bar.txt", "Hello v1"),
        (11, "bar.txt", "Hello v1"),
        (12, "bar2.txt", "Hello v1"),
        (14, "bar2.txt", "Hello v1"),
        (15, "bar2.txt", "Hello v2"),
        (19, "bar2.txt", "Hello v2"),
    ] {
        let t = at(day);
        assert_eq!(names(&h(&t)).unwrap(), [name], "at {t}");
        let path = h(&t).join(name);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), content, "at {t}");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 8);
        assert_eq!(meta.permissions().mode() & 0o777, 0o444);
        assert!(meta.is_file());
        // mtime from the manifest: written between 2000-01-09 and T.
        assert!(meta.mtime() >= 947376000 && meta.mtime() <= 946684800 + (day as i64 - 1) * 86400);
        // SAFETY: getuid cannot fail.
        assert_eq!(meta.uid(), unsafe { libc::getuid() });
    }
    // 01-20: bar2.txt exists but v3 needs key 3: listed, 0000, EACCES — never v2's content.
    let t20 = h(&at(20));
    assert_eq!(names(&t20).unwrap(), ["bar2.txt"]);
    assert_eq!(
        std::fs::metadata(t20.join("bar2.txt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0
    );
    let err = std::fs::read(t20.join("bar2.txt")).unwrap_err();
    assert_eq!(errno(&err), libc::EACCES, "{err}");
    // 01-21: the root itself needs key 3.
    let err = std::fs::read_dir(h(&at(21))).unwrap_err();
    assert_eq!(errno(&err), libc::EACCES, "{err}");
    // Before the workspace existed, and after the snapshot: no such folder.
    for t in [
        at(9),
        "2030-01-01T00:00:00Z".to_string(),
        "not-a-time".to_string(),
    ] {
        let err = std::fs::metadata(h(&t)).unwrap_err();
        assert_eq!(errno(&err), libc::ENOENT, "{t}: {err}");
    }

    // Read-only: every write-like operation is refused with EROFS.
    let f15 = h(&at(15)).join("bar2.txt");
    let erofs = [
        std::fs::write(h(&at(15)).join("new.txt"), b"x").unwrap_err(),
        std::fs::OpenOptions::new()
            .write(true)
            .open(&f15)
            .unwrap_err(),
        std::fs::create_dir(h(&at(15)).join("d")).unwrap_err(),
        std::fs::remove_file(&f15).unwrap_err(),
        std::fs::rename(&f15, h(&at(15)).join("moved")).unwrap_err(),
        std::fs::set_permissions(&f15, std::fs::Permissions::from_mode(0o644)).unwrap_err(),
    ];
    for e in erofs {
        assert_eq!(errno(&e), libc::EROFS, "{e}");
    }

    let (status, stderr) = m.stop(libc::SIGINT);
    assert!(status.success(), "exit {status}: {stderr}");
    assert!(
        wait_unmounted(&mp, Duration::from_secs(5)),
        "still mounted after SIGINT"
    );
    assert!(stderr.contains("token operations: 1"), "{stderr}");
    // The log says which entry and why.
    assert!(
        stderr.contains(&format!(
            "EACCES /.history/{}/bar2.txt: version 3 encrypted with realm key index 3",
            at(20)
        )),
        "{stderr}"
    );
    assert!(stderr.contains("EACCES /: version 3"), "{stderr}");
    assert_eq!(common::file_sha256(&env.export), EXPORT_SHA256);
}

#[test]
fn mount_at_an_instant_and_sigterm() {
    let Some(env) = setup("mount-fixture-at") else {
        return;
    };
    let mp = env.mountpoint("m");
    let m = env.mount(&mp, "svc1", &["--at", &at(15)]);
    assert!(
        m.banner.contains(&format!("as of {}", at(15))),
        "{}",
        m.banner
    );
    assert_eq!(names(&mp).unwrap(), [".history", "bar2.txt"]);
    assert_eq!(
        std::fs::read_to_string(mp.join("bar2.txt")).unwrap(),
        "Hello v2"
    );
    // Reads at any offset and size.
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(mp.join("bar2.txt")).unwrap();
    f.seek(SeekFrom::Start(3)).unwrap();
    let mut buf = [0u8; 3];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"lo ");
    let mut rest = Vec::new();
    f.seek(SeekFrom::Start(7)).unwrap();
    f.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"2");
    // SIGTERM while a file is still open: the mount is detached and the process still exits 0.
    let (status, stderr) = m.stop(libc::SIGTERM);
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("detached"), "{stderr}");
    assert!(wait_unmounted(&mp, Duration::from_secs(5)));
    let mut more = Vec::new();
    assert!(f.read_to_end(&mut more).is_err() || more.is_empty());
    drop(f);
    assert_eq!(common::file_sha256(&env.export), EXPORT_SHA256);
}

#[test]
fn kill_9_leaves_no_stale_mount() {
    let Some(env) = setup("mount-fixture-kill") else {
        return;
    };
    let mp = env.mountpoint("m");
    let m = env.mount(&mp, "svc1", &["--at", &at(12)]);
    assert_eq!(
        std::fs::read_to_string(mp.join("bar2.txt")).unwrap(),
        "Hello v1"
    );
    let (status, _) = m.stop(libc::SIGKILL);
    assert!(!status.success());
    assert!(
        wait_unmounted(&mp, Duration::from_secs(10)),
        "stale mount left after kill -9"
    );
    // The mount point is usable again.
    assert_eq!(names(&mp).unwrap(), Vec::<String>::new());
}

#[test]
fn service_without_access_and_bad_mount_points() {
    let Some(env) = setup("mount-fixture-svc2") else {
        return;
    };
    // Service 2 never received an access: mountable, nothing readable, said clearly.
    let mp = env.mountpoint("m");
    let m = env.mount(&mp, "svc2", &[]);
    assert_eq!(names(&mp).unwrap(), [".history"]);
    let err = std::fs::read_dir(mp.join(".history").join(at(15))).unwrap_err();
    assert_eq!(errno(&err), libc::EACCES);
    let (status, stderr) = m.stop(libc::SIGINT);
    assert!(status.success());
    assert!(stderr.contains("token operations: 0"), "{stderr}");
    assert!(stderr.contains("NOTHING IS READABLE"), "{stderr}");

    // Mount point errors: clear message, non-zero exit, nothing mounted, no token use needed.
    let full = env.mountpoint("full");
    std::fs::write(full.join("x"), b"x").unwrap();
    let missing = env.dir.path().join("missing");
    let file = env.dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    for (mp, msg) in [
        (&full, "is not empty"),
        (&missing, "does not exist"),
        (&file, "is not a directory"),
    ] {
        let out = common::run_cli(
            &[
                "export",
                "mount",
                env.export.to_str().unwrap(),
                mp.to_str().unwrap(),
                "--key",
                &env.hsm.key_uri("svc1"),
            ],
            &env.hsm.env(),
        );
        assert!(!out.status.success());
        assert!(
            common::stderr(&out).contains(msg),
            "{}",
            common::stderr(&out)
        );
    }
    // A time after the snapshot is refused before mounting.
    let mp2 = env.mountpoint("m2");
    let out = common::run_cli(
        &[
            "export",
            "mount",
            env.export.to_str().unwrap(),
            mp2.to_str().unwrap(),
            "--key",
            &env.hsm.key_uri("svc1"),
            "--at",
            "2030-01-01T00:00:00Z",
        ],
        &env.hsm.env(),
    );
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("after the export's snapshot"),
        "{}",
        common::stderr(&out)
    );
    assert_eq!(common::file_sha256(&env.export), EXPORT_SHA256);
}

//! Real FUSE mounts of exports written by our writer: thousands of files, multi-MiB files,
//! deep folders, a 3000-entry folder (readdir offsets), sparse files. Compared with the writer's
//! ground truth and with `export extract`; parallel readers; reads at odd offsets; integrity
//! errors give EIO with a log line.
#![cfg(feature = "mount")] // the FUSE mount

use crate::common;

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sequester_export_writer::scenario::{self, ServiceInput};
use sequester_export_writer::{Content, EntryKind, ExportWriter, GroundTruth, WriterConfig};
use sha2::{Digest, Sha256};

use crate::common::mount::{fuse_available, wait_unmounted, Mount};

const BLOCKSIZE: u64 = 64 * 1024;

struct Env {
    hsm: common::SoftHsm,
    dir: tempfile::TempDir,
    export: PathBuf,
    truth: GroundTruth,
}

fn setup(label: &str, small_files: usize, wide: usize) -> Option<Env> {
    if !fuse_available() {
        return None;
    }
    let key = common::seeded_rsa_key(21, 1024);
    let hsm = common::SoftHsm::with_service_key(&key, label)?;
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("gen.sqlite");
    let config = WriterConfig {
        blocksize: BLOCKSIZE,
        seed: 5,
        authority_bits: 1024,
        ..WriterConfig::default()
    };
    let mut w = ExportWriter::create(&export, config).unwrap();
    let services = [ServiceInput {
        label: "Main".into(),
        spki_der: common::spki_der(&key),
    }];
    scenario::mixed(&mut w, &services, small_files, 3, 3 * 1024 * 1024 + 17).unwrap();
    if wide > 0 {
        // The mixed history ends on a key the service lacks; a new rotation gives it every key
        // again (bundle 5 holds keys 1-5), so the root stays readable after the next sync.
        w.rotate_key().unwrap();
    }
    for i in 0..wide {
        w.write_file(
            &format!("/wide/entry-{i:05}"),
            Content::bytes(format!("{i}\n")),
        )
        .unwrap();
    }
    w.checkpoint("wide").unwrap();
    let truth = w.finish().unwrap();
    Some(Env {
        hsm,
        dir,
        export,
        truth,
    })
}

impl Env {
    fn mount(&self, extra: &[&str]) -> (Mount, PathBuf) {
        let mp = self.dir.path().join(format!("m{}", rand::random::<u32>()));
        std::fs::create_dir(&mp).unwrap();
        let m = Mount::start(
            &self.export,
            &mp,
            &self.hsm.key_uri("svc"),
            extra,
            &self.hsm.env(),
        );
        (m, mp)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Folder,
    File(u64, String),
    Unreadable,
}

/// Walks a mounted tree (skipping `/.history`); unreadable files are those failing with EACCES.
fn walk(root: &Path) -> BTreeMap<String, Seen> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                assert_eq!(
                    e.raw_os_error(),
                    Some(libc::EACCES),
                    "{}: {e}",
                    dir.display()
                );
                continue;
            }
        };
        for e in entries {
            let e = e.unwrap();
            let path = e.path();
            let rel = format!("/{}", path.strip_prefix(root).unwrap().display());
            if rel == "/.history" {
                continue;
            }
            let meta = std::fs::metadata(&path).unwrap();
            if meta.is_dir() {
                out.insert(rel.clone(), Seen::Folder);
                stack.push(path);
            } else {
                match std::fs::read(&path) {
                    Ok(data) => {
                        assert_eq!(data.len() as u64, meta.len());
                        out.insert(
                            rel,
                            Seen::File(meta.len(), hex::encode(Sha256::digest(&data))),
                        )
                    }
                    Err(e) => {
                        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{rel}: {e}");
                        out.insert(rel, Seen::Unreadable)
                    }
                };
            }
        }
    }
    out
}

fn expected(truth: &GroundTruth, checkpoint: usize) -> BTreeMap<String, Seen> {
    let readable = truth.services[0].readable_key_indexes();
    let view = truth.checkpoints[checkpoint].view_for(&readable).unwrap();
    view.into_iter()
        .map(|e| {
            let seen = match (e.readable, e.kind) {
                (false, EntryKind::Folder) => Seen::Folder,
                (false, EntryKind::File) => Seen::Unreadable,
                (true, EntryKind::Folder) => Seen::Folder,
                (true, EntryKind::File) => Seen::File(e.size, e.sha256.unwrap()),
            };
            (e.path, seen)
        })
        // An unreadable folder cannot be told from an unreadable file: it shows as a 0000 file.
        .map(|(p, s)| {
            let unreadable_folder = s == Seen::Folder
                && !truth.checkpoints[checkpoint]
                    .view_for(&truth.services[0].readable_key_indexes())
                    .unwrap()
                    .iter()
                    .find(|e| e.path == p)
                    .unwrap()
                    .readable;
            (
                p,
                if unreadable_folder {
                    Seen::Unreadable
                } else {
                    s
                },
            )
        })
        .collect()
}

#[test]
fn generated_tree_equals_the_writer_tree_extract_and_history() {
    let Some(env) = setup("mount-gen", 2500, 0) else {
        return;
    };
    let export_sha = common::file_sha256(&env.export);
    let (m, mp) = env.mount(&[]);
    let snapshot = env.truth.checkpoints.len() - 1;
    let got = walk(&mp);
    let want = expected(&env.truth, snapshot);
    assert!(got.len() > 2500, "{}", got.len());
    assert_eq!(got, want);
    // Partial readability is visible: key-4 data is listed but unreadable.
    assert_eq!(got["/docs/readme.txt"], Seen::Unreadable);
    assert_eq!(got["/secret"], Seen::Unreadable);

    // find(1) sees every entry too (folder link counts must not fool its leaf optimisation).
    let find = std::process::Command::new("find")
        .arg(&mp)
        .args([
            "-path",
            mp.join(".history").to_str().unwrap(),
            "-prune",
            "-o",
            "-print",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&find.stdout).lines().count(),
        got.len() + 1
    );

    // Time travel: every checkpoint under /.history/<T>/ equals the writer's tree at T.
    for (i, cp) in env.truth.checkpoints.iter().enumerate() {
        let dir = mp.join(".history").join(cp.at.to_rfc3339());
        assert_eq!(
            walk(&dir),
            expected(&env.truth, i),
            "checkpoint {}",
            cp.label
        );
    }

    // diff -r against the product's own extraction at the same instant.
    let dest = env.dir.path().join("extracted");
    let out = common::run_cli(
        &[
            "export",
            "extract",
            env.export.to_str().unwrap(),
            dest.to_str().unwrap(),
            "--key",
            &env.hsm.key_uri("svc"),
        ],
        &env.hsm.env(),
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    // Unreadable entries exist only in the mount (as 0000 files): exclude them by name.
    let diff = std::process::Command::new("diff")
        .args(["-r", "-x", ".history", "-x", "readme.txt", "-x", "secret"])
        .arg(&mp)
        .arg(&dest)
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "diff -r: {}{}",
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );

    let (status, stderr) = m.stop(libc::SIGINT);
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("EACCES /docs/readme.txt"), "{stderr}");
    assert!(wait_unmounted(&mp, Duration::from_secs(5)));
    assert_eq!(common::file_sha256(&env.export), export_sha);
}

#[test]
fn parallel_readers_odd_offsets_and_a_wide_folder() {
    let Some(env) = setup("mount-gen-par", 300, 3000) else {
        return;
    };
    let export_sha = common::file_sha256(&env.export);
    let (m, mp) = env.mount(&[]);
    let snapshot = env.truth.checkpoints.last().unwrap();
    let readable = env.truth.services[0].readable_key_indexes();
    let files: Vec<(String, String)> = snapshot
        .view_for(&readable)
        .unwrap()
        .into_iter()
        .filter(|e| e.readable && e.kind == EntryKind::File)
        .map(|e| (e.path, e.sha256.unwrap()))
        .collect();
    assert!(files.len() > 3300);

    // 3000 entries need many readdir calls: every name exactly once, in order.
    let mut wide: Vec<String> = std::fs::read_dir(mp.join("wide"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let listed = wide.len();
    wide.sort();
    wide.dedup();
    assert_eq!((listed, wide.len()), (3000, 3000));
    let ls = std::process::Command::new("ls")
        .arg("-f")
        .arg(mp.join("wide"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ls.stdout).lines().count(), 3002);

    // 8 concurrent sha256sum processes over the big files, 8 threads over all files.
    let big: Vec<&(String, String)> = files
        .iter()
        .filter(|(p, _)| p.starts_with("/big/") || p.starts_with("/data/"))
        .collect();
    assert!(big.len() >= 5);
    let children: Vec<_> = (0..8)
        .map(|i| {
            let (path, sha) = big[i % big.len()];
            let child = std::process::Command::new("sha256sum")
                .arg(mp.join(path.trim_start_matches('/')))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            (child, sha.clone())
        })
        .collect();
    for (child, sha) in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .unwrap(),
            sha
        );
    }
    std::thread::scope(|s| {
        for t in 0..8 {
            let files = &files;
            let mp = &mp;
            s.spawn(move || {
                for (path, sha) in files.iter().skip(t).step_by(8) {
                    let data = std::fs::read(mp.join(path.trim_start_matches('/'))).unwrap();
                    assert_eq!(&hex::encode(Sha256::digest(&data)), sha, "{path}");
                }
            });
        }
    });

    // Odd offsets and sizes across block boundaries, holes included, vs the writer's content.
    for (path, content) in [
        (
            "data/multi.bin",
            Content::Random {
                size: BLOCKSIZE * 3 + BLOCKSIZE / 2,
                seed: 11,
            },
        ),
        (
            "data/sparse.bin",
            Content::Sparse {
                size: BLOCKSIZE * 7 + 1234,
                seed: 12,
                hole_every: 3,
            },
        ),
    ] {
        let bytes = content.to_vec(BLOCKSIZE);
        let mut f = std::fs::File::open(mp.join(path)).unwrap();
        for (offset, len) in [
            (0u64, 1usize),
            (BLOCKSIZE - 3, 7),
            (12345, 200_001),
            (BLOCKSIZE * 2 + 13, 4093),
            (bytes.len() as u64 - 5, 100),
        ] {
            f.seek(SeekFrom::Start(offset)).unwrap();
            let mut buf = vec![0u8; len];
            let n = read_full(&mut f, &mut buf);
            let end = (offset as usize + len).min(bytes.len());
            assert_eq!(
                &buf[..n],
                &bytes[offset as usize..end],
                "{path} at {offset}+{len}"
            );
        }
        // dd with an odd block size and skip.
        let dd = std::process::Command::new("dd")
            .arg(format!("if={}", mp.join(path).display()))
            .args(["bs=4093", "skip=17", "count=23", "status=none"])
            .output()
            .unwrap();
        assert!(dd.status.success());
        assert_eq!(
            dd.stdout,
            &bytes[17 * 4093..(40 * 4093).min(bytes.len())],
            "dd {path}"
        );
    }

    let (status, _) = m.stop(libc::SIGTERM);
    assert!(status.success());
    assert!(wait_unmounted(&mp, Duration::from_secs(5)));
    assert_eq!(common::file_sha256(&env.export), export_sha);
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    n
}

#[test]
fn integrity_errors_give_eio_and_a_log_line_without_crashing() {
    let Some(env) = setup("mount-gen-eio", 0, 0) else {
        return;
    };
    // Flip one byte in the data of one block of /data/multi.bin (a damaged copy).
    let damaged = env.dir.path().join("damaged.sqlite");
    std::fs::copy(&env.export, &damaged).unwrap();
    let conn = rusqlite::Connection::open(&damaged).unwrap();
    let (block, mut data): (i64, Vec<u8>) = conn
        .query_row(
            "SELECT block, data FROM block_data WHERE length(data) = ?1 ORDER BY block LIMIT 1",
            [BLOCKSIZE as i64 + 40],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    data[100] ^= 1;
    conn.execute(
        "UPDATE block_data SET data = ?1 WHERE block = ?2",
        rusqlite::params![data, block],
    )
    .unwrap();
    drop(conn);
    let damaged_sha = common::file_sha256(&damaged);
    let mp = env.dir.path().join("m");
    std::fs::create_dir(&mp).unwrap();
    let m = Mount::start(&damaged, &mp, &env.hsm.key_uri("svc"), &[], &env.hsm.env());
    // Some full-size block is damaged: reading every multi-block file, at least one fails with
    // EIO, the others still work, and the mount survives.
    let mut eio = 0;
    for path in [
        "data/multi.bin",
        "big/file0.bin",
        "big/file1.bin",
        "big/file2.bin",
    ] {
        match std::fs::read(mp.join(path)) {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{path}: {e}");
                eio += 1;
            }
        }
    }
    assert_eq!(eio, 1);
    assert_eq!(
        std::fs::read_to_string(mp.join("docs/v2.txt")).unwrap(),
        "written with key 2\n"
    );
    let (status, stderr) = m.stop(libc::SIGINT);
    assert!(status.success());
    assert!(
        stderr.contains("EIO /") && stderr.contains("integrity error"),
        "{stderr}"
    );
    assert_eq!(common::file_sha256(&damaged), damaged_sha);
}

/// The inode table follows what the kernel holds: after `find` it has a node per entry, and once
/// the kernel drops its dentry cache (its `forget`s) the nodes are gone. The table's size is read
/// from the `-vv` debug line each `statfs` logs.
#[test]
fn forgotten_entries_leave_the_inode_table() {
    let Some(env) = setup("mount-forget", 600, 0) else {
        return;
    };
    let drop_caches = Path::new("/proc/sys/vm/drop_caches");
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !common::available(
        "root (to write /proc/sys/vm/drop_caches)",
        root && std::fs::OpenOptions::new()
            .write(true)
            .open(drop_caches)
            .is_ok(),
    ) {
        return;
    }
    let (m, mp) = env.mount(&["-vv"]);
    let statfs = || {
        let st = std::process::Command::new("stat")
            .arg("-f")
            .arg(&mp)
            .output()
            .unwrap();
        assert!(st.status.success(), "{}", common::stderr(&st));
    };
    statfs();
    let find = std::process::Command::new("find")
        .arg(&mp)
        .args([
            "-path",
            mp.join(".history").to_str().unwrap(),
            "-prune",
            "-o",
        ])
        .args(["-type", "f", "-print"])
        .output()
        .unwrap();
    assert!(find.status.success());
    let found = String::from_utf8_lossy(&find.stdout).lines().count();
    assert!(found >= 600, "{found}");
    // Attributes of every file: a lookup each (find may skip files thanks to d_type).
    let walked = walk(&mp).len();
    statfs();
    for _ in 0..3 {
        std::fs::write(drop_caches, "2\n").unwrap();
        // The kernel sends its forgets asynchronously.
        std::thread::sleep(Duration::from_millis(500));
    }
    statfs();
    let (status, stderr) = m.stop(libc::SIGINT);
    assert!(status.success(), "{stderr}");
    let counts: Vec<usize> = stderr
        .lines()
        .filter_map(|l| l.split("debug: inode table: ").nth(1))
        .map(|n| n.split(" nodes").next().unwrap().parse().unwrap())
        .collect();
    eprintln!("inode table sizes (start, after the walk, after drop_caches): {counts:?}");
    assert_eq!(counts.len(), 3, "{stderr}");
    assert!(counts[0] <= 2, "{counts:?}");
    assert!(
        counts[1] >= walked,
        "{counts:?} after walking {walked} entries"
    );
    assert!(
        counts[2] < counts[1] / 10,
        "{counts:?}: the forgets did not shrink the table"
    );
}

/// `(folders loaded ahead, listings that found theirs ready)` from each `-vv` statfs line.
fn list_ahead_counts(stderr: &str) -> Vec<(u64, u64)> {
    stderr
        .lines()
        .filter_map(|l| l.split("list-ahead: ").nth(1))
        .map(|rest| {
            let n: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|w| w.trim_end_matches(',').parse().ok())
                .collect();
            (n[0], n[1])
        })
        .collect()
}

/// Many readers and walkers at once on the request threads: every byte and every listing is
/// right. A fresh `ls -R` finds folders whose children were loaded ahead by the list-ahead
/// workers.
#[test]
fn parallel_walkers_and_readers_get_correct_trees_and_bytes() {
    let Some(env) = setup("mount-gen-conc", 1500, 0) else {
        return;
    };
    let (m, mp) = env.mount(&["-vv"]);
    let ls = std::process::Command::new("ls")
        .arg("-R")
        .arg(&mp)
        .output()
        .unwrap();
    assert!(ls.status.success(), "{}", common::stderr(&ls));
    assert!(String::from_utf8_lossy(&ls.stdout).contains("file01499.txt"));
    let statfs = std::process::Command::new("stat")
        .arg("-f")
        .arg(&mp)
        .output()
        .unwrap();
    assert!(statfs.status.success());

    let want = expected(&env.truth, env.truth.checkpoints.len() - 1);
    let files: Vec<(&String, &String)> = want
        .iter()
        .filter_map(|(p, s)| match s {
            Seen::File(_, sha) => Some((p, sha)),
            _ => None,
        })
        .collect();
    assert!(files.len() > 1500);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| assert_eq!(walk(&mp), want));
        }
        for t in 0..8 {
            let files = &files;
            let mp = &mp;
            s.spawn(move || {
                // Each reader starts elsewhere so that all of them hit cold entries at once.
                for (path, sha) in files.iter().cycle().skip(t * 97).take(files.len()) {
                    let data = std::fs::read(mp.join(path.trim_start_matches('/'))).unwrap();
                    assert_eq!(&hex::encode(Sha256::digest(&data)), *sha, "{path}");
                }
            });
        }
    });

    let (status, stderr) = m.stop(libc::SIGINT);
    assert!(status.success(), "{stderr}");
    let counts = list_ahead_counts(&stderr);
    assert_eq!(counts.len(), 1, "{stderr}");
    let (loaded, hits) = counts[0];
    // /many has 17 subfolders of 13 subfolders each: the walk lists them after their parent.
    assert!(loaded >= 17 && hits >= 17, "list-ahead {counts:?}");
    assert!(wait_unmounted(&mp, Duration::from_secs(5)));
}

/// A damaged block fails its readers with EIO while readers of other files, at the same time,
/// get correct bytes and finish.
#[test]
fn an_integrity_error_does_not_stall_other_readers() {
    let Some(env) = setup("mount-gen-eio-par", 200, 0) else {
        return;
    };
    let damaged = env.dir.path().join("damaged.sqlite");
    std::fs::copy(&env.export, &damaged).unwrap();
    let conn = rusqlite::Connection::open(&damaged).unwrap();
    // Every full-size block of the big files is damaged.
    let n = conn
        .execute(
            "UPDATE block_data SET data = zeroblob(length(data)) WHERE length(data) = ?1",
            [BLOCKSIZE as i64 + 40],
        )
        .unwrap();
    assert!(n > 10, "{n}");
    drop(conn);
    let mp = env.dir.path().join("m");
    std::fs::create_dir(&mp).unwrap();
    let m = Mount::start(&damaged, &mp, &env.hsm.key_uri("svc"), &[], &env.hsm.env());
    let want = expected(&env.truth, env.truth.checkpoints.len() - 1);
    let small: Vec<(&String, &String)> = want
        .iter()
        .filter_map(|(p, s)| match s {
            Seen::File(size, sha) if *size < BLOCKSIZE => Some((p, sha)),
            _ => None,
        })
        .collect();
    assert!(small.len() > 200);
    let start = Instant::now();
    std::thread::scope(|s| {
        for i in 0..4 {
            let mp = &mp;
            s.spawn(move || {
                for _ in 0..5 {
                    let e = std::fs::read(mp.join(format!("big/file{}.bin", i % 3))).unwrap_err();
                    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
                }
            });
        }
        for t in 0..4 {
            let small = &small;
            let mp = &mp;
            s.spawn(move || {
                for (path, sha) in small.iter().skip(t).step_by(4) {
                    let data = std::fs::read(mp.join(path.trim_start_matches('/'))).unwrap();
                    assert_eq!(&hex::encode(Sha256::digest(&data)), *sha, "{path}");
                }
            });
        }
    });
    assert!(start.elapsed() < Duration::from_secs(120));
    let (status, stderr) = m.stop(libc::SIGINT);
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("EIO /big/file"), "{stderr}");
}

/// SIGINT while 8 readers are in the middle of large files: the process exits 0 promptly, the
/// mount is gone, and every reader returns (data or an error, never a hang).
#[test]
fn unmount_with_reads_in_flight_exits_cleanly() {
    let Some(env) = setup("mount-gen-inflight", 0, 0) else {
        return;
    };
    let export_sha = common::file_sha256(&env.export);
    let (m, mp) = env.mount(&[]);
    let (tx, rx) = std::sync::mpsc::channel();
    let readers: Vec<_> = (0..8)
        .map(|i| {
            let path = mp.join(format!("big/file{}.bin", i % 3));
            let tx = tx.clone();
            std::thread::spawn(move || {
                // Read until the mount goes away (bounded: a few hundred passes at most).
                for _ in 0..300 {
                    let mut buf = vec![0u8; 4096];
                    let Ok(mut f) = std::fs::File::open(&path) else {
                        break;
                    };
                    loop {
                        match f.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                    let _ = tx.send(());
                }
            })
        })
        .collect();
    drop(tx);
    // Wait until reads are really going on.
    rx.recv_timeout(Duration::from_secs(60)).unwrap();
    let stopped = Instant::now();
    let (status, stderr) = m.stop(libc::SIGINT);
    assert!(status.success(), "{stderr}");
    assert!(stopped.elapsed() < Duration::from_secs(20), "{stderr}");
    assert!(wait_unmounted(&mp, Duration::from_secs(5)));
    let deadline = Instant::now() + Duration::from_secs(20);
    for r in readers {
        while !r.is_finished() {
            assert!(
                Instant::now() < deadline,
                "a reader hangs after the unmount"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r.join().unwrap();
    }
    assert_eq!(common::file_sha256(&env.export), export_sha);
}

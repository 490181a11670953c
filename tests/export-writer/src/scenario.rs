//! Ready-made export shapes: the mixed history used by tests and the demo, and the three
//! benchmark shapes (large files, many small files, deep history).

use std::path::Path;

use rsa::pkcs8::EncodePublicKey;

use super::{Content, ExportWriter, GroundTruth, ServiceId, WriterConfig, WriterError};

/// A service public key given to the writer.
#[derive(Debug, Clone)]
pub struct ServiceInput {
    pub label: String,
    /// SubjectPublicKeyInfo DER.
    pub spki_der: Vec<u8>,
}

#[derive(Debug, Clone)]
pub enum Shape {
    /// A history exercising every reader path (see [`mixed`]), plus `small_files` extra small
    /// files in a deep tree and `big_files` files of `big_file_size` bytes.
    Mixed {
        small_files: usize,
        big_files: usize,
        big_file_size: u64,
    },
    /// About `total_bytes` in files of `min_file..=max_file` bytes, two key rotations.
    LargeFiles {
        total_bytes: u64,
        min_file: u64,
        max_file: u64,
    },
    /// `files` files of `min_size..=max_size` bytes in `folders` folders.
    SmallFiles {
        files: usize,
        folders: usize,
        min_size: u64,
        max_size: u64,
    },
    /// `files` files with `versions` versions each and `rotations` key rotations in between.
    DeepHistory {
        files: usize,
        versions: usize,
        rotations: usize,
    },
}

/// Writes an export of the given shape to `path`. Every service in `services` is created before
/// the first rotation and receives every key, except in [`Shape::Mixed`] (see [`mixed`]).
pub fn generate(
    path: &Path,
    config: WriterConfig,
    shape: &Shape,
    services: &[ServiceInput],
) -> Result<GroundTruth, WriterError> {
    let mut w = ExportWriter::create(path, config)?;
    match shape {
        Shape::Mixed {
            small_files,
            big_files,
            big_file_size,
        } => mixed(&mut w, services, *small_files, *big_files, *big_file_size)?,
        Shape::LargeFiles {
            total_bytes,
            min_file,
            max_file,
        } => {
            add_all(&mut w, services)?;
            w.rotate_key()?;
            let mut written = 0u64;
            let mut i = 0usize;
            let span = max_file.saturating_sub(*min_file) + 1;
            while written < *total_bytes {
                let size = (min_file + w.random_u64() % span).min(total_bytes - written);
                let seed = w.random_u64();
                w.set_author(i);
                w.write_file(
                    &format!("/large/dir{:02}/file{i:05}.bin", i % 8),
                    Content::Random { size, seed },
                )?;
                written += size;
                i += 1;
                if written >= total_bytes / 2 && w.key_index() == 1 {
                    w.sync()?;
                    w.rotate_key()?;
                }
            }
            // `finish` records the tree at the snapshot.
            w.sync()?;
        }
        Shape::SmallFiles {
            files,
            folders,
            min_size,
            max_size,
        } => {
            add_all(&mut w, services)?;
            w.rotate_key()?;
            let folders = (*folders).max(1);
            // Files, their folders and the folders' parents (one per 64).
            w.reserve_entries(files + folders + folders.div_ceil(64));
            let per_folder = files.div_ceil(folders).max(1);
            let span = max_size.saturating_sub(*min_size) + 1;
            for i in 0..*files {
                let folder = i / per_folder;
                let size = min_size + w.random_u64() % span;
                let seed = w.random_u64();
                w.write_file(
                    &format!("/d{:03}/f{folder:05}/s{i:07}.dat", folder / 64),
                    Content::Random { size, seed },
                )?;
                if (i + 1) % 5000 == 0 {
                    w.sync()?;
                }
            }
            // `finish` records the tree at the snapshot.
            w.sync()?;
        }
        Shape::DeepHistory {
            files,
            versions,
            rotations,
        } => {
            add_all(&mut w, services)?;
            w.rotate_key()?;
            let versions = (*versions).max(1);
            let rotate_every = versions.div_ceil(rotations + 1).max(1);
            for v in 0..versions {
                if v > 0 && v % rotate_every == 0 && (w.key_index() as usize) <= *rotations {
                    w.rotate_key()?;
                }
                for f in 0..*files {
                    let size = 512 + w.random_u64() % 3584;
                    let seed = w.random_u64();
                    w.set_author(f + v);
                    w.write_file(
                        &format!("/h{:03}/file{f:05}.txt", f / 50),
                        Content::Random { size, seed },
                    )?;
                }
                if v == versions / 2 {
                    w.checkpoint("middle")?;
                } else {
                    w.sync()?;
                }
            }
            // `finish` records the tree at the snapshot.
            w.sync()?;
        }
    }
    w.finish()
}

fn add_all(w: &mut ExportWriter, services: &[ServiceInput]) -> Result<Vec<ServiceId>, WriterError> {
    services
        .iter()
        .map(|s| w.add_service(&s.label, &s.spki_der))
        .collect()
}

/// The mixed history. With `services = [main, late, ...]`:
///
/// 1. `main` exists from the start; key 1; deep folders, small files, a multi-block file, a
///    sparse file, an empty file, a non-ASCII name — checkpoint `initial`.
/// 2. Overwrite, rename of a folder, move of a file across folders, deletion of a folder —
///    checkpoint `reorganised`.
/// 3. Key 2; a file's manifest re-uploaded with key 2 while its blocks keep key 1; a new file —
///    checkpoint `rotated`.
/// 4. `late` (if given) is created, then key 3 gives it access to everything so far — checkpoint
///    `late-service`.
/// 5. `late` is revoked; key 4 is rotated WITHOUT `main` (a client that does not know it): a new
///    folder `/secret` and an overwrite of `/docs/readme.txt` with key 4 are unreadable for
///    every service (the root keeps key 3: `/secret` was created at step 4) — checkpoint
///    `partial`.
/// 6. A service that never receives any access (its own throwaway software key) is created.
pub fn mixed(
    w: &mut ExportWriter,
    services: &[ServiceInput],
    small_files: usize,
    big_files: usize,
    big_file_size: u64,
) -> Result<(), WriterError> {
    let main = match services.first() {
        Some(s) => Some(w.add_service(&s.label, &s.spki_der)?),
        None => None,
    };
    let bs = w.config.blocksize;
    w.rotate_key()?;
    w.write_file(
        "/docs/readme.txt",
        Content::bytes(b"Read me, version 1\n".to_vec()),
    )?;
    w.write_file(
        "/docs/r\u{e9}sum\u{e9} \u{fc}.txt",
        Content::bytes("accents \u{e9}\u{e8}\n"),
    )?;
    w.write_file("/empty.txt", Content::bytes(Vec::new()))?;
    w.mkdir("/docs/a/b/c/d/e/f/g/h")?;
    w.write_file(
        "/docs/a/b/c/d/e/f/g/h/deep.txt",
        Content::bytes(b"deep\n".to_vec()),
    )?;
    w.write_file("/docs/a/b/note.md", Content::bytes(b"# note\n".to_vec()))?;
    w.write_file(
        "/data/multi.bin",
        Content::Random {
            size: bs * 3 + bs / 2,
            seed: 11,
        },
    )?;
    w.write_file(
        "/data/sparse.bin",
        Content::Sparse {
            size: bs * 7 + 1234,
            seed: 12,
            hole_every: 3,
        },
    )?;
    w.write_file("/data/notes.txt", Content::bytes(b"notes\n".to_vec()))?;
    w.write_file("/tmp/scratch.txt", Content::bytes(b"scratch\n".to_vec()))?;
    for i in 0..small_files {
        let size = 1 + w.random_u64() % 4096;
        let seed = w.random_u64();
        w.set_author(i);
        w.write_file(
            &format!("/many/g{:02}/h{:02}/file{i:05}.txt", i % 17, (i / 17) % 13),
            Content::Random { size, seed },
        )?;
        if (i + 1) % 2000 == 0 {
            w.sync()?;
        }
    }
    for i in 0..big_files {
        let seed = w.random_u64();
        w.write_file(
            &format!("/big/file{i}.bin"),
            Content::Random {
                size: big_file_size + i as u64 * 4099,
                seed,
            },
        )?;
    }
    w.set_author(0);
    w.checkpoint("initial")?;

    w.write_file(
        "/docs/readme.txt",
        Content::bytes(b"Read me, version 2 (longer)\n".to_vec()),
    )?;
    w.rename("/docs/a", "/docs/alpha")?;
    w.rename("/data/notes.txt", "/docs/alpha/notes.txt")?;
    w.remove("/tmp")?;
    w.set_author(1);
    w.checkpoint("reorganised")?;

    w.rotate_key()?;
    w.touch("/data/multi.bin")?;
    w.write_file(
        "/docs/v2.txt",
        Content::bytes(b"written with key 2\n".to_vec()),
    )?;
    w.checkpoint("rotated")?;

    let late = match services.get(1) {
        Some(s) => Some(w.add_service(&s.label, &s.spki_der)?),
        None => None,
    };
    w.rotate_key()?;
    w.write_file(
        "/docs/v3.txt",
        Content::bytes(b"written with key 3\n".to_vec()),
    )?;
    w.mkdir("/secret")?;
    w.checkpoint("late-service")?;

    if let Some(late) = late {
        w.revoke_service(late)?;
    }
    let excluded: Vec<ServiceId> = main.into_iter().collect();
    w.rotate_key_excluding(&excluded)?;
    w.write_file("/secret/plan.txt", Content::bytes(b"key 4 only\n".to_vec()))?;
    w.write_file(
        "/docs/readme.txt",
        Content::bytes(b"Read me, version 3 (key 4)\n".to_vec()),
    )?;
    w.checkpoint("partial")?;

    let throwaway = super::SoftwareAuthority::generate(1024, w.random_u64())?;
    let spki = throwaway
        .key
        .to_public_key()
        .to_public_key_der()
        .map_err(|e| WriterError::ServiceKey(e.to_string()))?;
    w.add_service("Service without access", spki.as_bytes())?;
    Ok(())
}

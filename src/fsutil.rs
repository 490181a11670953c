//! Files written whole or not at all, and files hashed as a stream: the one atomic writer and
//! the one file hasher of the crate.
//!
//! `publish` writes into a temporary file in the target's own directory (so the final rename
//! never crosses a file system), buffered, fsyncs it, renames it into place — without replacing
//! an existing file unless asked — and fsyncs the directory so the new name survives a crash. A
//! failure at any step leaves no output and no temporary file behind.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};

/// What `publish` does when the target exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Refuse ([`FileError::Exists`]); an existing name, even a dangling symlink, is kept.
    Keep,
    /// Replace it atomically (readers see the old or the new content, never a mix).
    Replace,
}

/// Errors of the file helpers. Each layer maps them into its own error type.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{}: already exists; refusing to overwrite (choose another output)", path.display())]
    Exists { path: PathBuf },
    #[error("{}: output directory does not exist", path.display())]
    NoDirectory { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A stop flag of `hash_file_unless` was set.
    #[error("interrupted")]
    Interrupted,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Room for serde_json's many small writes (one per token when unbuffered).
const WRITE_BUFFER: usize = 1 << 20;

/// Writes `path` whole or not at all: `write` fills a buffered temporary file in the same
/// directory, which is synced and renamed to `path` (see the module documentation).
pub fn publish(
    path: &Path,
    existing: Existing,
    write: impl FnOnce(&mut BufWriter<&mut File>) -> std::io::Result<()>,
) -> Result<(), FileError> {
    if existing == Existing::Keep && path.symlink_metadata().is_ok() {
        return Err(FileError::Exists {
            path: path.to_path_buf(),
        });
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(FileError::NoDirectory {
            path: dir.to_path_buf(),
        });
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(".sequester-custody-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    let tmp_path = tmp.path().to_path_buf();
    let mut out = BufWriter::with_capacity(WRITE_BUFFER, tmp.as_file_mut());
    write(&mut out)
        .and_then(|()| out.flush())
        .map_err(io_err(&tmp_path))?;
    drop(out);
    tmp.as_file().sync_all().map_err(io_err(&tmp_path))?;
    match existing {
        Existing::Keep => tmp.persist_noclobber(path),
        Existing::Replace => tmp.persist(path),
    }
    .map_err(|e| match e.error.kind() {
        // Created between the check above and the rename.
        std::io::ErrorKind::AlreadyExists => FileError::Exists {
            path: path.to_path_buf(),
        },
        _ => io_err(path)(e.error),
    })?;
    // The rename is durable once the directory is; a failure here cannot be undone.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// [`publish`] refusing to replace an existing file.
pub(crate) fn publish_new(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<&mut File>) -> std::io::Result<()>,
) -> Result<(), FileError> {
    publish(path, Existing::Keep, write)
}

/// `publish` of bytes already in memory.
pub fn write_atomic(path: &Path, data: &[u8], existing: Existing) -> Result<(), FileError> {
    publish(path, existing, |out| out.write_all(data))
}

/// SHA-256 of a file's content, lowercase hex, read as a stream.
pub(crate) fn hash_file(path: &Path) -> Result<String, FileError> {
    hash_file_unless(path, &[])
}

/// [`hash_file`] that gives up with [`FileError::Interrupted`] as soon as one of `stop` is set
/// (checked every MiB: hashing a 100 GB file must not delay Ctrl-C or an early failure).
pub(crate) fn hash_file_unless(path: &Path, stop: &[&AtomicBool]) -> Result<String, FileError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    // Sized to the file: a fixed 1 MiB buffer per small file costs more than hashing it.
    let mut buf = vec![0u8; len.clamp(1, 1 << 20) as usize];
    let mut hasher = Sha256::new();
    loop {
        let n = match file.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(path)(e)),
        };
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if stop.iter().any(|s| s.load(Ordering::Relaxed)) {
            return Err(FileError::Interrupted);
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn keep_refuses_existing_names_and_replace_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.pem");
        write_atomic(&path, b"one", Existing::Keep).unwrap();
        let err = write_atomic(&path, b"two", Existing::Keep).unwrap_err();
        assert!(matches!(err, FileError::Exists { .. }), "{err}");
        assert!(err.to_string().contains("refusing to overwrite"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        write_atomic(&path, b"three", Existing::Replace).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"three");
        // A dangling symlink is an existing name too.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &link).unwrap();
        assert!(matches!(
            publish_new(&link, |out| out.write_all(b"x")),
            Err(FileError::Exists { .. })
        ));
        assert!(!dir.path().join("nowhere").exists());
        assert_eq!(names(dir.path()), ["a.pem", "link"]);
        let missing = write_atomic(&dir.path().join("missing/x"), b"", Existing::Keep);
        assert!(matches!(missing, Err(FileError::NoDirectory { .. })));
    }

    #[test]
    fn a_failed_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record.json");
        let err = publish_new(&path, |out| {
            out.write_all(b"partial")?;
            Err(std::io::Error::other("serializer failed"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("serializer failed"), "{err}");
        assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
        // Larger than the write buffer: written whole.
        let big = vec![7u8; WRITE_BUFFER * 2 + 3];
        publish_new(&path, |out| out.write_all(&big)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), big);
    }

    #[test]
    fn hashes_stream_and_stop_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let data: Vec<u8> = (0..3 * (1u32 << 20) + 5).map(|i| i as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let expected = crate::crypto::sha256_hex(&data);
        assert_eq!(hash_file(&path).unwrap(), expected);
        let (go, stop) = (AtomicBool::new(false), AtomicBool::new(true));
        assert_eq!(hash_file_unless(&path, &[&go]).unwrap(), expected);
        assert!(matches!(
            hash_file_unless(&path, &[&go, &stop]),
            Err(FileError::Interrupted)
        ));
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(hash_file(&empty).unwrap(), crate::crypto::sha256_hex(b""));
        assert!(matches!(
            hash_file(&dir.path().join("absent")),
            Err(FileError::Io { .. })
        ));
    }
}

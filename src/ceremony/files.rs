//! File output that never leaves half-written results: write a temp file in the target
//! directory, fsync, rename.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::CeremonyError;

/// Writes `data` to `path` atomically (temp file in the same directory, fsync, rename).
/// With `overwrite == false` an existing file is an error.
pub fn write_atomic(path: &Path, data: &[u8], overwrite: bool) -> Result<(), CeremonyError> {
    if !overwrite && path.exists() {
        return Err(CeremonyError::io(
            path,
            "already exists; refusing to overwrite (choose another output)",
        ));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(CeremonyError::io(&dir, "output directory does not exist"));
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(".sequester-custody-")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(|e| CeremonyError::io(&dir, e))?;
    tmp.write_all(data)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| CeremonyError::io(tmp.path(), e))?;
    if overwrite {
        tmp.persist(path)
            .map_err(|e| CeremonyError::io(path, e.error))?;
    } else {
        tmp.persist_noclobber(path)
            .map_err(|e| CeremonyError::io(path, e.error))?;
    }
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Where a certificate goes: `output` is a directory (existing, or given with a trailing `/`)
/// → `dir/<default_name>`; otherwise the file itself. No output → current directory.
pub fn resolve_output(output: Option<&Path>, default_name: &str) -> PathBuf {
    match output {
        None => PathBuf::from(default_name),
        Some(p) if p.is_dir() || p.as_os_str().to_string_lossy().ends_with('/') => {
            p.join(default_name)
        }
        Some(p) => p.to_path_buf(),
    }
}

/// SHA-256 of a file, hex (for transcripts).
pub fn file_sha256(path: &Path) -> Result<String, CeremonyError> {
    let data = std::fs::read(path).map_err(|e| CeremonyError::io(path, e))?;
    Ok(crate::crypto::sha256_hex(&data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_refuses_overwrite_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.pem");
        write_atomic(&path, b"one", false).unwrap();
        let err = write_atomic(&path, b"two", false).unwrap_err().to_string();
        assert!(err.contains("refusing to overwrite"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        write_atomic(&path, b"three", true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"three");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        assert!(write_atomic(&dir.path().join("missing/x"), b"", false).is_err());
        assert_eq!(
            resolve_output(Some(dir.path()), "n.pem"),
            dir.path().join("n.pem")
        );
        assert_eq!(resolve_output(Some(&path), "n.pem"), path);
    }
}

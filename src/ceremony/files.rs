//! Where the ceremony's outputs go. They are written with [`crate::fsutil`] (whole or not at
//! all).

use std::path::{Path, PathBuf};

/// Where a certificate goes: `output` is a directory (existing, or given with a trailing `/`)
/// → `dir/<default_name>`; otherwise the file itself. No output → current directory.
pub(crate) fn resolve_output(output: Option<&Path>, default_name: &str) -> PathBuf {
    match output {
        None => PathBuf::from(default_name),
        Some(p) if p.is_dir() || p.as_os_str().to_string_lossy().ends_with('/') => {
            p.join(default_name)
        }
        Some(p) => p.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_go_into_directories_or_to_the_named_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.pem");
        std::fs::write(&path, b"one").unwrap();
        assert_eq!(
            resolve_output(Some(dir.path()), "n.pem"),
            dir.path().join("n.pem")
        );
        assert_eq!(resolve_output(Some(&path), "n.pem"), path);
    }
}

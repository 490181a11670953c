//! The ceremony transcript: one JSON object per line, each carrying the SHA-256 of the previous
//! line (`prev`; 64 zeros for the first). The SHA-256 of the last line is the head digest that
//! operators copy onto the paper record; `verify` recomputes the chain.
//!
//! An entry records: UTC time, operators, command and arguments (never a PIN), tokens
//! (manufacturer, model, serial, label), key fingerprints, SHA-256 of every input and output file,
//! and the result.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::CeremonyError;
use crate::parsec::DateTime;
use crate::token::TokenDescription;

/// Default transcript in the working directory.
pub const DEFAULT_FILE: &str = "sequester-custody-transcript.jsonl";
/// `prev` of the first entry.
pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A key used or created by the command.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyRecord {
    /// `authority`, `service`, `service-public` (a public key file), ...
    pub role: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub label: Option<String>,
    pub bits: usize,
    /// SHA-256 of the SPKI DER.
    pub fingerprint: String,
}

/// A file read or written by the command.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileRecord {
    pub path: String,
    pub sha256: String,
}

/// A token involved in the command.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    pub backend: String,
    pub manufacturer: String,
    pub model: String,
    pub serial: String,
    pub label: String,
}

impl From<TokenDescription> for TokenRecord {
    fn from(t: TokenDescription) -> Self {
        Self {
            backend: t.backend,
            manufacturer: t.manufacturer,
            model: t.model,
            serial: t.serial,
            label: t.label,
        }
    }
}

/// What a command contributes to the transcript. `time`, `seq` and `prev` are set on append.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EntryContent {
    pub operators: Vec<String>,
    pub command: String,
    pub args: Vec<String>,
    pub tokens: Vec<TokenRecord>,
    pub keys: Vec<KeyRecord>,
    pub inputs: Vec<FileRecord>,
    pub outputs: Vec<FileRecord>,
    /// `ok`, or `failed: <message>`.
    pub result: String,
    /// Command-specific facts (service id, label, timestamp, mechanism path, ...).
    #[serde(default)]
    pub details: serde_json::Value,
}

impl EntryContent {
    pub fn new(command: &str, args: &[String], operators: &[String]) -> Self {
        Self {
            operators: operators.to_vec(),
            command: command.to_string(),
            args: redact_args(args),
            result: "pending".into(),
            details: serde_json::Value::Object(Default::default()),
            ..Default::default()
        }
    }

    pub fn add_token(&mut self, token: TokenDescription) {
        let record = TokenRecord::from(token);
        if !self.tokens.contains(&record) {
            self.tokens.push(record);
        }
    }

    pub fn add_input(&mut self, path: &Path) -> Result<(), CeremonyError> {
        self.inputs.push(FileRecord {
            path: path.display().to_string(),
            sha256: crate::fsutil::hash_file(path)?,
        });
        Ok(())
    }

    pub fn add_output(&mut self, path: &Path) -> Result<(), CeremonyError> {
        self.outputs.push(FileRecord {
            path: path.display().to_string(),
            sha256: crate::fsutil::hash_file(path)?,
        });
        Ok(())
    }

    pub(crate) fn detail(&mut self, key: &str, value: impl Serialize) {
        if let serde_json::Value::Object(map) = &mut self.details {
            map.insert(
                key.to_string(),
                serde_json::to_value(value).unwrap_or(serde_json::Value::Null),
            );
        }
    }
}

/// Argument values that could carry a secret are replaced (PINs never come from argv, but a
/// URI may carry `pin-value=` and must not be copied verbatim).
pub(crate) fn redact_args(args: &[String]) -> Vec<String> {
    args.iter()
        .map(|a| {
            let lower = a.to_ascii_lowercase();
            match lower.find("pin-value=") {
                Some(i) => {
                    let end = a[i..].find(['&', ';']).map(|j| i + j).unwrap_or(a.len());
                    format!("{}pin-value=REDACTED{}", &a[..i], &a[end..])
                }
                None => a.clone(),
            }
        })
        .collect()
}

/// `redact_args` for one value.
pub fn redact_args_one(arg: &str) -> String {
    redact_args(&[arg.to_string()]).remove(0)
}

/// One line of the transcript.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub seq: u64,
    pub time: String,
    pub time_us: i64,
    #[serde(flatten)]
    pub content: EntryContent,
    /// SHA-256 (hex) of the previous line's bytes, `GENESIS` for the first.
    pub prev: String,
}

/// Result of checking a transcript.
#[derive(Debug, Clone, Serialize)]
pub struct ChainReport {
    pub path: PathBuf,
    pub entries: u64,
    /// SHA-256 of the last line (`GENESIS` if empty): the value written on the paper record.
    pub head: String,
    pub last_time: Option<String>,
}

/// A transcript file.
#[derive(Debug, Clone)]
pub struct Transcript {
    pub path: PathBuf,
}

impl Transcript {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Appends one entry after checking the existing chain; returns the new head digest.
    /// The line is written with a single `write` on an `O_APPEND` descriptor and fsynced.
    pub fn append(&self, content: EntryContent) -> Result<String, CeremonyError> {
        use std::io::Read;
        use std::os::unix::io::AsRawFd;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| self.err(e))?;
        // An exclusive lock held from reading the head to writing the new line, so that two
        // commands appending at once cannot fork the chain. Released when `file` is dropped.
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(self.err(std::io::Error::last_os_error()));
        }
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(|e| self.err(e))?;
        let report = verify_bytes(&self.path, &data)?;
        let now = DateTime::now();
        let entry = Entry {
            seq: report.entries + 1,
            time: now.to_rfc3339(),
            time_us: now.as_micros(),
            content,
            prev: report.head,
        };
        let line = serde_json::to_string(&entry).map_err(|e| self.err(e))?;
        let mut bytes = line.clone().into_bytes();
        bytes.push(b'\n');
        file.write_all(&bytes)
            .and_then(|_| file.sync_all())
            .map_err(|e| self.err(e))?;
        Ok(crate::crypto::sha256_hex(line.as_bytes()))
    }

    fn err(&self, e: impl std::fmt::Display) -> CeremonyError {
        CeremonyError::Transcript {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }
}

/// Checks every line's `prev` and `seq`; returns the head digest.
pub fn verify(path: &Path) -> Result<ChainReport, CeremonyError> {
    let data = std::fs::read(path).map_err(|e| CeremonyError::Transcript {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    verify_bytes(path, &data)
}

fn verify_bytes(path: &Path, data: &[u8]) -> Result<ChainReport, CeremonyError> {
    let err = |reason: String| CeremonyError::Transcript {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::str::from_utf8(data).map_err(|_| err("not UTF-8".into()))?;
    if !text.is_empty() && !text.ends_with('\n') {
        return Err(err(
            "the last line is incomplete (no final newline): the file was truncated".into(),
        ));
    }
    let mut head = GENESIS.to_string();
    let mut count = 0u64;
    let mut last_time = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let entry: Entry = serde_json::from_str(line)
            .map_err(|e| err(format!("line {n} is not a transcript entry ({e})")))?;
        if entry.prev != head {
            return Err(err(format!(
                "chain broken at line {n}: prev is {} but the previous line hashes to {head} \
                 (a line was modified, removed or inserted)",
                entry.prev
            )));
        }
        if entry.seq != n as u64 {
            return Err(err(format!(
                "line {n} has sequence number {} (lines removed or reordered)",
                entry.seq
            )));
        }
        head = crate::crypto::sha256_hex(line.as_bytes());
        count += 1;
        last_time = Some(entry.time);
    }
    Ok(ChainReport {
        path: path.to_path_buf(),
        entries: count,
        head,
        last_time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_appends_verifies_and_detects_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let t = Transcript::new(&path);
        let ops = vec!["Alice".to_string(), "Bob".to_string()];
        let mut c = EntryContent::new("cert service", &["--label".into(), "S1".into()], &ops);
        c.result = "ok".into();
        c.detail("service_id", "0011");
        let h1 = t.append(c.clone()).unwrap();
        let h2 = t.append(c.clone()).unwrap();
        let report = verify(&path).unwrap();
        assert_eq!(report.entries, 2);
        assert_eq!(report.head, h2);
        assert_ne!(h1, h2);
        let text = std::fs::read_to_string(&path).unwrap();
        let first: Entry = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first.prev, GENESIS);
        assert_eq!(first.content.operators, ops);

        // Modify the first line: the second line's prev no longer matches.
        let tampered = text.replacen("S1", "S2", 1);
        std::fs::write(&path, &tampered).unwrap();
        let e = verify(&path).unwrap_err().to_string();
        assert!(e.contains("chain broken at line 2"), "{e}");
        // Appending to a broken chain is refused.
        assert!(t.append(c.clone()).is_err());

        // Remove the first line: line 1 no longer has the genesis prev.
        let second_only = text.lines().nth(1).unwrap().to_string() + "\n";
        std::fs::write(&path, second_only).unwrap();
        assert!(verify(&path).unwrap_err().to_string().contains("line 1"));

        // Truncated last line.
        std::fs::write(&path, &text[..text.len() - 5]).unwrap();
        assert!(verify(&path).unwrap_err().to_string().contains("truncated"));
    }

    #[test]
    fn concurrent_appends_keep_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        std::thread::scope(|s| {
            for i in 0..8 {
                let path = path.clone();
                s.spawn(move || {
                    let mut c = EntryContent::new("x", &[], &[]);
                    c.detail("i", i);
                    Transcript::new(path).append(c).unwrap();
                });
            }
        });
        assert_eq!(verify(&path).unwrap().entries, 8);
    }

    #[test]
    fn pin_values_in_uris_are_redacted() {
        let args = vec![
            "--authority".to_string(),
            "pkcs11:token=a;object=b?pin-value=1234&module-path=/x.so".to_string(),
        ];
        let red = redact_args(&args);
        assert_eq!(
            red[1],
            "pkcs11:token=a;object=b?pin-value=REDACTED&module-path=/x.so"
        );
        assert!(!red.concat().contains("1234"));
    }
}

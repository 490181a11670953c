//! Local journal of what was signed per organisation (docs/formats.md §4.5): the last sequester
//! timestamp (a new certificate must be strictly later, or the server refuses it) and the services
//! signed (a revocation must name a known service). Used when the operator names the organisation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::sign::NotAfter;
use super::CeremonyError;
use crate::fsutil;
use crate::parsec::sequester::{SequesterCertificate, ServiceId};
use crate::parsec::DateTime;

/// `$XDG_STATE_HOME/sequester-custody/journal.json`, else `~/.local/state/...`.
pub fn default_path() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("sequester-custody/journal.json")
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ServiceRecord {
    pub label: String,
    pub timestamp_us: i64,
    #[serde(default)]
    pub revoked_us: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct OrganizationRecord {
    pub last_timestamp: String,
    pub last_timestamp_us: i64,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceRecord>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Journal {
    pub version: u32,
    #[serde(default)]
    pub organizations: BTreeMap<String, OrganizationRecord>,
    #[serde(skip)]
    path: PathBuf,
}

impl Journal {
    /// Loads the journal (empty if the file does not exist yet).
    pub fn load(path: &Path) -> Result<Self, CeremonyError> {
        let mut journal = if path.exists() {
            let text = std::fs::read_to_string(path).map_err(|e| CeremonyError::io(path, e))?;
            serde_json::from_str::<Journal>(&text)
                .map_err(|e| CeremonyError::io(path, format!("not a journal file ({e})")))?
        } else {
            Journal {
                version: 1,
                ..Default::default()
            }
        };
        journal.path = path.to_path_buf();
        Ok(journal)
    }

    /// The constraint for the next certificate of `organization`.
    pub fn not_after(&self, organization: &str) -> Option<NotAfter> {
        self.organizations.get(organization).map(|o| NotAfter {
            last: DateTime(o.last_timestamp_us),
            organization: organization.to_string(),
            journal: self.path.clone(),
        })
    }

    /// Whether the journal knows `organization` but not `service`.
    pub fn check_known_service(
        &self,
        organization: &str,
        service: ServiceId,
    ) -> Result<(), CeremonyError> {
        match self.organizations.get(organization) {
            Some(o) if !o.services.contains_key(&service.hex()) => {
                Err(CeremonyError::UnknownService {
                    service_id: service.hex(),
                    organization: organization.to_string(),
                    journal: self.path.clone(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Records a signed certificate and saves the journal atomically.
    pub fn record(
        &mut self,
        organization: &str,
        cert: &SequesterCertificate,
    ) -> Result<(), CeremonyError> {
        let org = self
            .organizations
            .entry(organization.to_string())
            .or_default();
        let ts = cert.timestamp();
        if ts.as_micros() > org.last_timestamp_us || org.last_timestamp.is_empty() {
            org.last_timestamp_us = ts.as_micros();
            org.last_timestamp = ts.to_rfc3339();
        }
        match cert {
            SequesterCertificate::Service(c) => {
                org.services.insert(
                    c.service_id.hex(),
                    ServiceRecord {
                        label: c.service_label.clone(),
                        timestamp_us: ts.as_micros(),
                        revoked_us: None,
                    },
                );
            }
            SequesterCertificate::Revoked(c) => {
                org.services
                    .entry(c.service_id.hex())
                    .or_default()
                    .revoked_us = Some(ts.as_micros());
            }
        }
        self.save()
    }

    fn save(&self) -> Result<(), CeremonyError> {
        if let Some(dir) = self.path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| CeremonyError::io(dir, e))?;
            }
        }
        let text = serde_json::to_string_pretty(self).expect("journal serializes") + "\n";
        Ok(fsutil::write_atomic(
            &self.path,
            text.as_bytes(),
            fsutil::Existing::Replace,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parsec::sequester::{RevokedServiceCertificate, ServiceCertificate};

    #[test]
    fn records_last_timestamp_and_services() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/journal.json");
        let mut j = Journal::load(&path).unwrap();
        assert!(j.not_after("Org").is_none());
        let id = ServiceId([1; 16]);
        j.record(
            "Org",
            &SequesterCertificate::Service(ServiceCertificate {
                timestamp: DateTime(10),
                service_id: id,
                service_label: "S".into(),
                encryption_key_der: vec![],
            }),
        )
        .unwrap();
        let j = Journal::load(&path).unwrap();
        assert_eq!(j.not_after("Org").unwrap().last, DateTime(10));
        j.check_known_service("Org", id).unwrap();
        assert!(j.check_known_service("Org", ServiceId([2; 16])).is_err());
        assert!(j.check_known_service("Other", ServiceId([2; 16])).is_ok());
        let mut j = j;
        j.record(
            "Org",
            &SequesterCertificate::Revoked(RevokedServiceCertificate {
                timestamp: DateTime(20),
                service_id: id,
            }),
        )
        .unwrap();
        let j = Journal::load(&path).unwrap();
        assert_eq!(
            j.organizations["Org"].services[&id.hex()].revoked_us,
            Some(20)
        );
        assert_eq!(j.not_after("Org").unwrap().last, DateTime(20));
    }
}

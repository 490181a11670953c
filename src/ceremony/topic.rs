//! The sequester topic of an organisation as recorded in a realm export (docs/formats.md §4.5,
//! §5.2): the authority certificate, services and revocations, verified. Used before signing to
//! pick a timestamp the server will accept and to refuse revoking unknown or already revoked
//! services. The topic is read by the export reader ([`ExportFile::sequester_topic`]), which opens
//! the export read-only and immutable: it is never modified.

use std::path::{Path, PathBuf};

use super::sign::NotAfter;
use super::CeremonyError;
use crate::export::{ExportFile, OpenOptions, SequesterService, SequesterTopic};
use crate::parsec::sequester::ServiceId;
use crate::parsec::spki::RsaPublicKeyDer;
use crate::parsec::DateTime;

/// An export's sequester topic, verified against the authority key the ceremony signs with.
#[derive(Debug, Clone)]
pub struct CeremonyTopic {
    pub source: PathBuf,
    pub organization: String,
    /// Timestamp of the most recent sequester certificate (authority included).
    pub last_timestamp: DateTime,
    pub topic: SequesterTopic,
}

impl CeremonyTopic {
    /// Reads and verifies the sequester topic of `export` against the authority key. Stricter
    /// than reading an export: a row that does not verify or does not fit (a duplicate service,
    /// a revocation of an unknown or revoked service) is an error, not a skipped row.
    pub fn from_export(export: &Path, authority: &RsaPublicKeyDer) -> Result<Self, CeremonyError> {
        let err = |reason: String| CeremonyError::io(export, reason);
        if !export.is_file() {
            return Err(err("no such file".into()));
        }
        // Only the certificates are needed: an export still being written is fine.
        let file = ExportFile::open(
            export,
            &OpenOptions {
                allow_incomplete: true,
            },
        )
        .map_err(|e| err(e.to_string()))?;
        let organization = file.info().organization_id.clone();
        let topic = file
            .sequester_topic()
            .map_err(|e| err(e.to_string()))?
            .ok_or_else(|| {
                err(format!(
                    "organisation `{organization}` is not sequestered (empty sequester topic)"
                ))
            })?;
        if topic.authority_key_der != authority.der() {
            return Err(CeremonyError::AuthorityMismatch {
                expected: topic.authority_key_fingerprint.clone(),
                found: authority.fingerprint(),
            });
        }
        if !topic.problems.is_empty() {
            return Err(err(topic.problems.join("; ")));
        }
        let last_timestamp = topic
            .services
            .iter()
            .flat_map(|s| std::iter::once(s.created).chain(s.revoked))
            .fold(topic.authority_timestamp, DateTime::max);
        Ok(Self {
            source: export.to_path_buf(),
            organization,
            last_timestamp,
            topic,
        })
    }

    /// The service `service` of the topic, if it has one.
    pub(crate) fn service(&self, service: ServiceId) -> Option<&SequesterService> {
        self.topic
            .services
            .iter()
            .find(|s| s.service_id == service.0)
    }

    pub fn not_after(&self) -> NotAfter {
        NotAfter {
            last: self.last_timestamp,
            organization: self.organization.clone(),
            journal: self.source.clone(),
        }
    }

    /// A revocation must name a service of the topic that is not revoked yet.
    pub fn check_revocable(&self, service: ServiceId) -> Result<(), CeremonyError> {
        match self.service(service) {
            None => Err(CeremonyError::UnknownService {
                service_id: service.hex(),
                organization: self.organization.clone(),
                journal: self.source.clone(),
            }),
            Some(SequesterService {
                revoked: Some(t), ..
            }) => Err(CeremonyError::AlreadyRevoked {
                service_id: service.hex(),
                revoked: *t,
                origin: self.source.clone(),
            }),
            Some(_) => Ok(()),
        }
    }
}

/// The stricter of two constraints.
pub fn latest(a: Option<NotAfter>, b: Option<NotAfter>) -> Option<NotAfter> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if a.last >= b.last { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_topic_is_read_verified_and_left_untouched() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/parsec");
        let export = dir.join("sequestered_export.sqlite");
        let before = std::fs::read(&export).unwrap();
        let authority = RsaPublicKeyDer::from_pem(
            &std::fs::read_to_string(dir.join("sequester_authority.public.pem")).unwrap(),
        )
        .unwrap();
        let topic = CeremonyTopic::from_export(&export, &authority).unwrap();
        assert_eq!(topic.organization, "Org1");
        assert_eq!(topic.topic.services.len(), 2);
        let s1: ServiceId = "00000000000000000000000000000001".parse().unwrap();
        let s2: ServiceId = "00000000000000000000000000000002".parse().unwrap();
        let service = |id| topic.service(id).unwrap();
        assert_eq!(service(s1).label, "Sequester Service 1");
        assert!(service(s1).revoked.is_some());
        assert!(matches!(
            topic.check_revocable(s1),
            Err(CeremonyError::AlreadyRevoked { .. })
        ));
        topic.check_revocable(s2).unwrap();
        assert!(matches!(
            topic.check_revocable(ServiceId([3; 16])),
            Err(CeremonyError::UnknownService { .. })
        ));
        assert_eq!(
            topic.last_timestamp,
            service(s2).created.max(service(s1).revoked.unwrap())
        );
        // Another authority key: refused.
        let other = RsaPublicKeyDer::from_pem(
            &std::fs::read_to_string(
                dir.join("sequester_service_1.00000000000000000000000000000001.public.pem"),
            )
            .unwrap(),
        )
        .unwrap();
        assert!(matches!(
            CeremonyTopic::from_export(&export, &other),
            Err(CeremonyError::AuthorityMismatch { .. })
        ));
        // Not sequestered.
        let plain = dir.join("workspace_history_export.sqlite");
        let e = CeremonyTopic::from_export(&plain, &authority)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not sequestered"), "{e}");
        // Not an export at all.
        let e = CeremonyTopic::from_export(&dir.join("sequester_authority.public.pem"), &authority)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sequester_authority.public.pem"), "{e}");
        assert_eq!(std::fs::read(&export).unwrap(), before);
    }
}

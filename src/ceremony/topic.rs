//! The sequester topic of an organisation as recorded in a realm export (spec §4.5, §5.2): the
//! authority certificate, services and revocations, verified. Used before signing to pick a
//! timestamp the server will accept and to refuse revoking unknown or already revoked services.
//! The export is opened read-only and immutable: it is never modified.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::sign::NotAfter;
use super::CeremonyError;
use crate::parsec::sequester::{self, AuthorityCertificate, SequesterCertificate, ServiceId};
use crate::parsec::spki::RsaPublicKeyDer;
use crate::parsec::DateTime;

const EXPORT_MAGIC: i64 = 87948;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicService {
    pub label: String,
    pub created: DateTime,
    pub revoked: Option<DateTime>,
}

#[derive(Debug, Clone)]
pub struct SequesterTopic {
    pub source: PathBuf,
    pub organization: String,
    /// Timestamp of the most recent sequester certificate (authority included).
    pub last_timestamp: DateTime,
    pub services: BTreeMap<ServiceId, TopicService>,
}

impl SequesterTopic {
    /// Reads and verifies the sequester topic of `export` against the authority key.
    pub fn from_export(export: &Path, authority: &RsaPublicKeyDer) -> Result<Self, CeremonyError> {
        let err = |reason: String| CeremonyError::io(export, reason);
        if !export.is_file() {
            return Err(err("no such file".into()));
        }
        let uri = format!(
            "file:{}?mode=ro&immutable=1",
            export
                .display()
                .to_string()
                .replace('%', "%25")
                .replace('?', "%3f")
                .replace('#', "%23")
        );
        let conn = rusqlite::Connection::open_with_flags(
            uri,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                | rusqlite::OpenFlags::SQLITE_OPEN_URI
                | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| err(format!("cannot open as SQLite ({e})")))?;
        let (organization, root): (String, Vec<u8>) = conn
            .query_row(
                "SELECT organization_id, root_verify_key FROM info WHERE magic = ?1",
                [EXPORT_MAGIC],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| err(format!("not a Parsec realm export ({e})")))?;
        let root: [u8; 32] = root
            .try_into()
            .map_err(|_| err("root_verify_key is not 32 bytes".into()))?;
        let mut stmt = conn
            .prepare("SELECT certificate FROM sequester_certificate ORDER BY _id")
            .map_err(|e| err(format!("no sequester_certificate table ({e})")))?;
        let rows: Vec<Vec<u8>> = stmt
            .query_map([], |r| r.get(0))
            .and_then(|it| it.collect())
            .map_err(|e| err(format!("cannot read sequester certificates ({e})")))?;
        let Some((first, rest)) = rows.split_first() else {
            return Err(err(format!(
                "organisation `{organization}` is not sequestered (empty sequester topic)"
            )));
        };
        let authority_cert = AuthorityCertificate::verify_and_decode(&root, first)
            .map_err(|e| err(format!("authority certificate: {e}")))?;
        if authority_cert.verify_key_der != authority.der() {
            return Err(CeremonyError::AuthorityMismatch {
                expected: crate::crypto::sha256_hex(&authority_cert.verify_key_der),
                found: authority.fingerprint(),
            });
        }
        let mut last = authority_cert.timestamp;
        let mut services = BTreeMap::new();
        for (i, row) in rest.iter().enumerate() {
            let cert = sequester::decode_sequester_topic_row(authority, row)
                .map_err(|e| err(format!("sequester certificate row {}: {e}", i + 1)))?;
            last = last.max(cert.timestamp());
            match cert {
                SequesterCertificate::Service(c) => {
                    services.insert(
                        c.service_id,
                        TopicService {
                            label: c.service_label,
                            created: c.timestamp,
                            revoked: None,
                        },
                    );
                }
                SequesterCertificate::Revoked(c) => {
                    if let Some(s) = services.get_mut(&c.service_id) {
                        s.revoked = Some(c.timestamp);
                    }
                }
            }
        }
        Ok(Self {
            source: export.to_path_buf(),
            organization,
            last_timestamp: last,
            services,
        })
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
        match self.services.get(&service) {
            None => Err(CeremonyError::UnknownService {
                service_id: service.hex(),
                organization: self.organization.clone(),
                journal: self.source.clone(),
            }),
            Some(TopicService {
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
        let topic = SequesterTopic::from_export(&export, &authority).unwrap();
        assert_eq!(topic.organization, "Org1");
        assert_eq!(topic.services.len(), 2);
        let s1: ServiceId = "00000000000000000000000000000001".parse().unwrap();
        let s2: ServiceId = "00000000000000000000000000000002".parse().unwrap();
        assert_eq!(topic.services[&s1].label, "Sequester Service 1");
        assert!(topic.services[&s1].revoked.is_some());
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
            topic.services[&s2]
                .created
                .max(topic.services[&s1].revoked.unwrap())
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
            SequesterTopic::from_export(&export, &other),
            Err(CeremonyError::AuthorityMismatch { .. })
        ));
        // Not sequestered.
        let plain = dir.join("workspace_history_export.sqlite");
        let e = SequesterTopic::from_export(&plain, &authority)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not sequestered"), "{e}");
        assert_eq!(std::fs::read(&export).unwrap(), before);
    }
}

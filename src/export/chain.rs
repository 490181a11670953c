//! Steps 1, 3, 4-6 and 7 of the decryption chain (docs/formats.md §5.4): devices verified from the
//! root key, realm certificates, keys bundle accesses through the token, keys bundles, canaries,
//! realm name.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use zeroize::Zeroizing;

use crate::crypto::symmetric::{
    derive_key, ed25519_split, ed25519_verify, secretbox_open, CANARY_DERIVATION_ID,
    REALM_NAME_DERIVATION_ID,
};
use crate::parsec::device::{DeviceCertificate, Id, DEVICE_CERTIFICATE};
use crate::parsec::entry_name::EntryName;
use crate::parsec::msgpack::Map;
use crate::parsec::realm::{
    KeyRotationCertificate, KeysBundle, KeysBundleAccess, NameCertificate, RoleCertificate,
    REALM_KEY_ROTATION_CERTIFICATE, REALM_NAME_CERTIFICATE, REALM_ROLE_CERTIFICATE,
};
use crate::parsec::{envelope, DateTime};
use crate::token::{KeyHandle, MechanismPath};

/// A verified device (docs/formats.md §3.4).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Device {
    #[serde(serialize_with = "super::ser_id")]
    pub device_id: Id,
    #[serde(serialize_with = "super::ser_id")]
    pub user_id: Id,
    pub label: Option<String>,
    pub created: DateTime,
    #[serde(skip)]
    pub verify_key: [u8; 32],
    /// The decompressed key, parsed once (point decompression is a visible cost per manifest).
    #[serde(skip)]
    pub parsed_verify_key: Option<ed25519_dalek::VerifyingKey>,
}

impl Device {
    /// Verifies `signature(64) || message` with this device's key; returns the message.
    pub fn verify<'a>(
        &self,
        signed: &'a [u8],
    ) -> Result<&'a [u8], crate::crypto::symmetric::SymmetricError> {
        use crate::crypto::symmetric::SymmetricError;
        let key = self
            .parsed_verify_key
            .as_ref()
            .ok_or(SymmetricError::BadVerifyKey)?;
        let (signature, message) = ed25519_split(signed)?;
        key.verify_strict(message, &signature)
            .map_err(|_| SymmetricError::BadSignature)?;
        Ok(message)
    }
}

/// A user as its (verified) certificate names it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct User {
    #[serde(serialize_with = "super::ser_id")]
    pub user_id: Id,
    pub email: Option<String>,
    pub name: Option<String>,
    pub profile: Option<String>,
    /// Timestamp of the user certificate.
    pub created: DateTime,
    pub revoked: Option<DateTime>,
}

/// The organization's verified devices and users (step 1).
#[derive(Debug, Clone, Default)]
pub struct Organization {
    pub devices: HashMap<Id, Device>,
    pub users: HashMap<Id, User>,
    /// Certificates skipped (unknown author, bad signature, undecodable).
    pub problems: Vec<String>,
}

impl Organization {
    /// A human description of a device: `alice@example.com (laptop)` or the hex IDs.
    pub fn describe_device(&self, device_id: &Id) -> String {
        let Some(device) = self.devices.get(device_id) else {
            return format!("unknown device {}", hex::encode(device_id));
        };
        let user = self.users.get(&device.user_id);
        let who = user
            .and_then(|u| u.email.clone().or(u.name.clone()))
            .unwrap_or_else(|| format!("user {}", hex::encode(device.user_id)));
        match &device.label {
            Some(label) => format!("{who} ({label})"),
            None => format!("{who} (device {})", hex::encode(device_id)),
        }
    }

    /// The device `device_id` if it could sign at `t`: it exists, was certified at or before `t`
    /// and its user was not revoked at or before `t` (a revoked user's devices are all revoked:
    /// Parsec 3 has no per-device revocation). Otherwise why not.
    pub fn device_at(&self, device_id: &Id, t: DateTime) -> Result<&Device, String> {
        let device = self
            .devices
            .get(device_id)
            .ok_or_else(|| format!("non existent author device {}", hex::encode(device_id)))?;
        if device.created > t {
            return Err(format!(
                "author device {} was certified at {}, after this was signed ({t})",
                self.describe_device(device_id),
                device.created
            ));
        }
        if let Some(revoked) = self.users.get(&device.user_id).and_then(|u| u.revoked) {
            if revoked <= t {
                return Err(format!(
                    "signed at {t} by {}, whose user was revoked at {revoked}",
                    self.describe_device(device_id)
                ));
            }
        }
        Ok(device)
    }
}

/// Realm roles that may write manifests (Parsec: a READER or a user without role cannot).
pub(crate) const WRITING_ROLES: [&str; 3] = ["OWNER", "MANAGER", "CONTRIBUTOR"];

fn decode_any(serialized: &[u8]) -> Option<rmpv::Value> {
    envelope::decode_value(serialized, &crate::parsec::limits::CERTIFICATE).ok()
}

/// Step 1 over `common_certificate` rows in `_id` order.
pub(crate) fn verify_organization(
    root_verify_key: &[u8; 32],
    rows: &[(i64, Vec<u8>)],
) -> Organization {
    let mut org = Organization::default();
    for (row, blob) in rows {
        let Ok((_, serialized)) = ed25519_split(blob) else {
            org.problems.push(format!(
                "common certificate row {row}: shorter than a signature"
            ));
            continue;
        };
        let Some(value) = decode_any(serialized) else {
            org.problems
                .push(format!("common certificate row {row}: undecodable"));
            continue;
        };
        let Ok(map) = Map::new(&value) else { continue };
        let type_name = map.type_name().unwrap_or("").to_string();
        let author = match map.nullable_uuid("author") {
            Ok(a) => a,
            Err(e) => {
                org.problems
                    .push(format!("common certificate row {row} ({type_name}): {e}"));
                continue;
            }
        };
        let timestamp = match map.datetime("timestamp") {
            Ok(t) => t,
            Err(e) => {
                org.problems
                    .push(format!("common certificate row {row} ({type_name}): {e}"));
                continue;
            }
        };
        if let Some(a) = author {
            // Same rule as for manifests: the author device must exist and be usable at the
            // certificate's timestamp.
            if let Err(reason) = org.device_at(&a, timestamp) {
                if org.devices.contains_key(&a) {
                    org.problems.push(format!(
                        "common certificate row {row} ({type_name}): {reason}"
                    ));
                    continue;
                }
            }
        }
        let signer = match author {
            None => Some(*root_verify_key),
            Some(a) => org.devices.get(&a).map(|d| d.verify_key),
        };
        let Some(signer) = signer else {
            org.problems.push(format!(
                "common certificate row {row} ({type_name}): unknown author device {}",
                hex::encode(author.unwrap_or_default())
            ));
            continue;
        };
        if ed25519_verify(&signer, blob).is_err() {
            org.problems.push(format!(
                "common certificate row {row} ({type_name}): bad signature"
            ));
            continue;
        }
        match type_name.as_str() {
            DEVICE_CERTIFICATE => match DeviceCertificate::decode(serialized) {
                Ok(d) if org.devices.contains_key(&d.device_id) => org.problems.push(format!(
                    "common certificate row {row}: a second device_certificate for device {} \
                     (already certified): ignored, the first one is kept",
                    hex::encode(d.device_id)
                )),
                Ok(d) if !org.users.contains_key(&d.user_id) => org.problems.push(format!(
                    "common certificate row {row}: device_certificate of device {} names unknown \
                     user {}: ignored",
                    hex::encode(d.device_id),
                    hex::encode(d.user_id)
                )),
                Ok(d) => {
                    org.devices.insert(
                        d.device_id,
                        Device {
                            device_id: d.device_id,
                            user_id: d.user_id,
                            label: d.device_label,
                            created: d.timestamp,
                            verify_key: d.verify_key,
                            parsed_verify_key: ed25519_dalek::VerifyingKey::from_bytes(
                                &d.verify_key,
                            )
                            .ok(),
                        },
                    );
                }
                Err(e) => org
                    .problems
                    .push(format!("common certificate row {row}: {e}")),
            },
            "user_certificate" => {
                let Ok(user_id) = map.uuid("user_id") else {
                    org.problems.push(format!(
                        "common certificate row {row}: user_certificate without user_id"
                    ));
                    continue;
                };
                if org.users.contains_key(&user_id) {
                    org.problems.push(format!(
                        "common certificate row {row}: a second user_certificate for user {} \
                         (already certified): ignored, the first one is kept",
                        hex::encode(user_id)
                    ));
                    continue;
                }
                let (email, name) = match map.get("human_handle") {
                    Some(rmpv::Value::Array(items)) if items.len() == 2 => (
                        items[0].as_str().map(str::to_string),
                        items[1].as_str().map(str::to_string),
                    ),
                    _ => (None, None),
                };
                org.users.insert(
                    user_id,
                    User {
                        user_id,
                        email,
                        name,
                        profile: map.str("profile").ok().map(str::to_string),
                        created: timestamp,
                        revoked: None,
                    },
                );
            }
            "revoked_user_certificate" => {
                let Ok(user_id) = map.uuid("user_id") else {
                    org.problems.push(format!(
                        "common certificate row {row}: revoked_user_certificate without user_id"
                    ));
                    continue;
                };
                match org.users.get_mut(&user_id) {
                    None => org.problems.push(format!(
                        "common certificate row {row}: revocation of unknown user {}",
                        hex::encode(user_id)
                    )),
                    Some(User {
                        revoked: Some(first),
                        ..
                    }) => org.problems.push(format!(
                        "common certificate row {row}: a second revoked_user_certificate for user \
                         {}: ignored, the first revocation ({first}) is kept",
                        hex::encode(user_id)
                    )),
                    Some(u) => u.revoked = Some(timestamp),
                }
            }
            "user_update_certificate" => {
                if let (Ok(user_id), Ok(p)) = (map.uuid("user_id"), map.str("new_profile")) {
                    match org.users.get_mut(&user_id) {
                        Some(u) => u.profile = Some(p.to_string()),
                        None => org.problems.push(format!(
                            "common certificate row {row}: profile update of unknown user {}",
                            hex::encode(user_id)
                        )),
                    }
                }
            }
            _ => {}
        }
    }
    org
}

/// A verified key rotation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rotation {
    pub key_index: u64,
    pub timestamp: DateTime,
    #[serde(serialize_with = "super::ser_id")]
    pub author: Id,
    #[serde(skip)]
    pub canary: Vec<u8>,
}

/// Verified realm certificates (step 3, plus names and roles).
#[derive(Debug, Clone, Default)]
pub struct RealmCertificates {
    pub rotations: BTreeMap<u64, Rotation>,
    /// Key index of the last valid rotation certificate (0 = none).
    pub latest_key_index: u64,
    pub names: Vec<NameCertificate>,
    pub roles: Vec<RoleCertificate>,
    pub problems: Vec<String>,
    /// Realms named by certificates that verify but are for another realm than the export's
    /// `info.realm_id` (never in a genuine export).
    pub foreign_realms: BTreeSet<Id>,
}

impl RealmCertificates {
    /// The export's `info.realm_id` does not match its realm certificates: no valid certificate
    /// is for that realm, some are for another (a damaged or forged `info` row). `Some(the
    /// realms the certificates name)` then.
    pub fn only_for_other_realms(&self) -> Option<&BTreeSet<Id>> {
        let none_for_this_realm =
            self.rotations.is_empty() && self.names.is_empty() && self.roles.is_empty();
        (none_for_this_realm && !self.foreign_realms.is_empty()).then_some(&self.foreign_realms)
    }

    /// The realm role of `user_id` at `t`: the latest accepted role certificate at or before `t`
    /// (`None`: no role, never given or removed).
    pub fn role_at(&self, user_id: &Id, t: DateTime) -> Option<&str> {
        let mut best: Option<&RoleCertificate> = None;
        for c in self.roles.iter().filter(|c| c.user_id == *user_id) {
            if c.timestamp <= t && best.map_or(true, |b| c.timestamp >= b.timestamp) {
                best = Some(c);
            }
        }
        best.and_then(|c| c.role.as_deref())
    }

    /// Whether the author of a role certificate could give that role at that time (the Parsec
    /// server's rules): the first certificate of a realm is its creator making itself OWNER;
    /// afterwards an OWNER may give or remove any role, a MANAGER only CONTRIBUTOR/READER to
    /// users who are not OWNER/MANAGER; a role is never given to a revoked user; and a user may
    /// promote itself to OWNER only when no active user is OWNER and none has a higher role.
    fn check_role_grant(
        &self,
        org: &Organization,
        author: &Device,
        c: &RoleCertificate,
    ) -> Result<(), String> {
        let new_role = c.role.as_deref();
        let Some(recipient) = org.users.get(&c.user_id) else {
            return Err("it names an unknown user".into());
        };
        if new_role.is_some() && recipient.revoked.is_some_and(|r| r <= c.timestamp) {
            return Err("its user was revoked by then".into());
        }
        if self.roles.is_empty() {
            return if c.user_id == author.user_id && new_role == Some("OWNER") {
                Ok(())
            } else {
                Err(
                    "the first role certificate of a realm must be its creator making itself \
                     OWNER"
                        .into(),
                )
            };
        }
        let author_role = self.role_at(&author.user_id, c.timestamp);
        let target_role = self.role_at(&c.user_id, c.timestamp);
        if c.user_id == author.user_id && new_role == Some("OWNER") && author_role != Some("OWNER")
        {
            return self.check_self_promotion(org, author_role, c.timestamp);
        }
        match author_role {
            Some("OWNER") => Ok(()),
            Some("MANAGER")
                if matches!(new_role, None | Some("CONTRIBUTOR") | Some("READER"))
                    && !matches!(target_role, Some("OWNER") | Some("MANAGER")) =>
            {
                Ok(())
            }
            other => Err(format!(
                "its author's user had role {} in the realm at {}, which cannot give this role",
                other.unwrap_or("none"),
                c.timestamp
            )),
        }
    }
}

/// Parsec's order of realm roles (OWNER highest).
fn role_rank(role: Option<&str>) -> u8 {
    match role {
        Some("OWNER") => 4,
        Some("MANAGER") => 3,
        Some("CONTRIBUTOR") => 2,
        Some("READER") => 1,
        _ => 0,
    }
}

impl RealmCertificates {
    /// Self-promotion to OWNER (a realm whose owners were all revoked): allowed when no user
    /// active at `t` is OWNER and the author's role is the highest role of an active user.
    fn check_self_promotion(
        &self,
        org: &Organization,
        author_role: Option<&str>,
        t: DateTime,
    ) -> Result<(), String> {
        let mut highest = 0;
        for user in org.users.values() {
            if user.revoked.is_some_and(|r| r <= t) {
                continue;
            }
            let role = self.role_at(&user.user_id, t);
            if role == Some("OWNER") {
                return Err(format!(
                    "a self-promotion to OWNER while an active user was OWNER at {t}"
                ));
            }
            highest = highest.max(role_rank(role));
        }
        if author_role.is_none() || role_rank(author_role) < highest {
            return Err(format!(
                "a self-promotion to OWNER by a user whose role ({}) was not the highest active \
                 role at {t}",
                author_role.unwrap_or("none")
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
impl RealmCertificates {
    pub(crate) fn check_role_grant_for_tests(
        &self,
        org: &Organization,
        author: &Device,
        c: &RoleCertificate,
    ) -> Result<(), String> {
        self.check_role_grant(org, author, c)
    }
}

/// Step 3 over `realm_certificate` rows in `_id` order.
pub(crate) fn verify_realm_certificates(
    realm_id: &Id,
    org: &Organization,
    rows: &[(i64, Vec<u8>)],
) -> RealmCertificates {
    let mut out = RealmCertificates::default();
    for (row, blob) in rows {
        let Ok((_, serialized)) = ed25519_split(blob) else {
            out.problems.push(format!(
                "realm certificate row {row}: shorter than a signature"
            ));
            continue;
        };
        let Some(value) = decode_any(serialized) else {
            out.problems
                .push(format!("realm certificate row {row}: undecodable"));
            continue;
        };
        let Ok(map) = Map::new(&value) else { continue };
        let type_name = map.type_name().unwrap_or("").to_string();
        let Ok(author) = map.uuid("author") else {
            out.problems.push(format!(
                "realm certificate row {row} ({type_name}): no author"
            ));
            continue;
        };
        let timestamp = match map.datetime("timestamp") {
            Ok(t) => t,
            Err(e) => {
                out.problems
                    .push(format!("realm certificate row {row} ({type_name}): {e}"));
                continue;
            }
        };
        let device = match org.device_at(&author, timestamp) {
            Ok(d) => d,
            Err(reason) => {
                out.problems.push(format!(
                    "realm certificate row {row} ({type_name}): {reason}"
                ));
                continue;
            }
        };
        if ed25519_verify(&device.verify_key, blob).is_err() {
            out.problems.push(format!(
                "realm certificate row {row} ({type_name}): bad signature"
            ));
            continue;
        }
        let realm_mismatch = |r: &Id| r != realm_id;
        match type_name.as_str() {
            REALM_KEY_ROTATION_CERTIFICATE => match KeyRotationCertificate::decode(serialized) {
                Ok(c) if realm_mismatch(&c.realm_id) => {
                    out.foreign_realms.insert(c.realm_id);
                    out.problems.push(format!(
                        "realm certificate row {row}: key rotation for another realm"
                    ))
                }
                Ok(c) if out.rotations.contains_key(&c.key_index) => out.problems.push(format!(
                    "realm certificate row {row}: a second key rotation certificate for key index \
                     {}: ignored, the first one is kept",
                    c.key_index
                )),
                Ok(c) => {
                    out.latest_key_index = c.key_index;
                    out.rotations.insert(
                        c.key_index,
                        Rotation {
                            key_index: c.key_index,
                            timestamp: c.timestamp,
                            author: c.author,
                            canary: c.key_canary,
                        },
                    );
                }
                Err(e) => out
                    .problems
                    .push(format!("realm certificate row {row}: {e}")),
            },
            REALM_NAME_CERTIFICATE => match NameCertificate::decode(serialized) {
                Ok(c) if !realm_mismatch(&c.realm_id) => out.names.push(c),
                Ok(c) => {
                    out.foreign_realms.insert(c.realm_id);
                    out.problems.push(format!(
                        "realm certificate row {row}: name for another realm"
                    ))
                }
                Err(e) => out
                    .problems
                    .push(format!("realm certificate row {row}: {e}")),
            },
            REALM_ROLE_CERTIFICATE => match RoleCertificate::decode(serialized) {
                Ok(c) if realm_mismatch(&c.realm_id) => {
                    out.foreign_realms.insert(c.realm_id);
                    out.problems.push(format!(
                        "realm certificate row {row}: role for another realm"
                    ))
                }
                Ok(c) => match out.check_role_grant(org, device, &c) {
                    Ok(()) => out.roles.push(c),
                    Err(reason) => out.problems.push(format!(
                        "realm certificate row {row} (role {} for user {}): {reason}: ignored",
                        c.role.as_deref().unwrap_or("none"),
                        hex::encode(c.user_id)
                    )),
                },
                Err(e) => out
                    .problems
                    .push(format!("realm certificate row {row}: {e}")),
            },
            _ => {}
        }
    }
    out
}

/// Decrypted realm keys by key index. Zeroized on drop.
#[derive(Default)]
pub(crate) struct RealmKeys {
    keys: BTreeMap<u64, Zeroizing<[u8; 32]>>,
}

impl RealmKeys {
    pub(crate) fn get(&self, key_index: u64) -> Option<&[u8; 32]> {
        self.keys.get(&key_index).map(|k| &**k)
    }

    pub(crate) fn indexes(&self) -> BTreeSet<u64> {
        self.keys.keys().copied().collect()
    }
}

impl std::fmt::Debug for RealmKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RealmKeys(indexes {:?}, values redacted)",
            self.indexes()
        )
    }
}

/// What the key recovery did (steps 4-6), for reports and custody records.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecoveryReport {
    /// Key indexes for which the service has an access row.
    pub access_key_indexes: Vec<u64>,
    /// RSA-OAEP operations done by the token.
    pub token_operations: u32,
    pub mechanism: Option<MechanismPath>,
    /// Realm key indexes obtained (canary checked).
    pub obtained_key_indexes: Vec<u64>,
    /// Realm key indexes that exist but that this service cannot read.
    pub missing_key_indexes: Vec<u64>,
    /// Non-fatal failures (unusable access row or bundle, failed canary).
    pub problems: Vec<String>,
    /// Missing key indexes that this service was given (an access row exists for them or for
    /// a later bundle holding them) but could not obtain, with why: the access row or keys
    /// bundle is damaged or forged, or the key fails its canary. A missing index not listed
    /// here was never given to this service.
    pub unusable_key_indexes: BTreeMap<u64, String>,
}

/// Source of the rows needed by the key recovery.
pub(crate) trait BundleSource {
    /// Access rows of this service for `key_index` (several may exist: the recovery tries only the
    /// first).
    fn access_rows(
        &self,
        service_id: &Id,
        key_index: u64,
    ) -> Result<Vec<Vec<u8>>, super::ExportError>;
    /// `realm_keys_bundle.keys_bundle` for `key_index`.
    fn keys_bundle(&self, key_index: u64) -> Result<Option<Vec<u8>>, super::ExportError>;
}

/// Step 4: one access row through the token. Counts the operation.
/// Why an access row gave no keys-bundle key: the row itself (reported, recovery goes on), or the
/// token (a wrong or locked PIN, a removed card: recovery stops, so no retry is spent on it).
enum AccessFailure {
    Unusable(String),
    Fatal(crate::token::TokenError),
}

impl From<String> for AccessFailure {
    fn from(reason: String) -> Self {
        AccessFailure::Unusable(reason)
    }
}

fn open_access(
    token_key: &dyn KeyHandle,
    k: usize,
    access: &[u8],
    ops: &mut u32,
    mechanism: &mut Option<MechanismPath>,
) -> Result<Zeroizing<[u8; 32]>, AccessFailure> {
    let (rsa_block, payload) =
        crate::parsec::armor::split_oaep(k, access).map_err(|e| e.to_string())?;
    *ops += 1;
    let (ephemeral, path) = token_key
        .decrypt_oaep_sha256(rsa_block)
        .map_err(|e| match e {
            e if e.is_fatal() => AccessFailure::Fatal(e),
            e => AccessFailure::Unusable(format!("token decryption: {e}")),
        })?;
    *mechanism = Some(path);
    let ephemeral: [u8; 32] = ephemeral.as_slice().try_into().map_err(|_| {
        format!(
            "decrypted ephemeral key has {} bytes, not 32",
            ephemeral.len()
        )
    })?;
    let ephemeral = Zeroizing::new(ephemeral);
    let cleartext = secretbox_open(&ephemeral, payload).map_err(|e| e.to_string())?;
    let access = KeysBundleAccess::decode(&cleartext).map_err(|e| e.to_string())?;
    Ok(access.keys_bundle_key)
}

/// Step 5: decrypt and verify keys bundle `key_index`.
fn open_bundle(
    bundle_blob: &[u8],
    bundle_key: &[u8; 32],
    key_index: u64,
    realm_id: &Id,
    certs: &RealmCertificates,
    org: &Organization,
) -> Result<KeysBundle, String> {
    let signed = secretbox_open(bundle_key, bundle_blob).map_err(|e| e.to_string())?;
    let (_, serialized) = ed25519_split(&signed).map_err(|e| e.to_string())?;
    let bundle = KeysBundle::decode(serialized).map_err(|e| e.to_string())?;
    let rotation_author = certs
        .rotations
        .get(&key_index)
        .map(|r| r.author)
        .ok_or("no valid rotation certificate for this index")?;
    if bundle.author != rotation_author {
        return Err("bundle author differs from the rotation certificate author".into());
    }
    let device = org
        .devices
        .get(&bundle.author)
        .ok_or("bundle author is not a known device")?;
    ed25519_verify(&device.verify_key, &signed).map_err(|e| format!("bundle {e}"))?;
    if &bundle.realm_id != realm_id {
        return Err("bundle is for another realm".into());
    }
    if bundle.keys.len() as u64 != key_index {
        return Err(format!(
            "bundle holds {} keys, expected {key_index}",
            bundle.keys.len()
        ));
    }
    Ok(bundle)
}

/// What the key recovery works from (steps 1-3 results and the service found in step 2).
pub(crate) struct RecoveryContext<'a> {
    pub source: &'a dyn BundleSource,
    pub service_id: &'a Id,
    pub realm_id: &'a Id,
    pub certs: &'a RealmCertificates,
    pub org: &'a Organization,
    /// Key indexes for which the service has an access row.
    pub access_key_indexes: Vec<u64>,
}

/// Steps 4-6 with the fixed loop: at most one token operation per access row actually needed.
/// `k` is the token key's RSA block size.
pub(crate) fn recover_keys(
    ctx: RecoveryContext,
    token_key: &dyn KeyHandle,
    k: usize,
) -> Result<(RealmKeys, RecoveryReport), super::ExportError> {
    let RecoveryContext {
        source,
        service_id,
        realm_id,
        certs,
        org,
        access_key_indexes,
    } = ctx;
    let mut remaining: BTreeMap<u64, Vec<u8>> = certs
        .rotations
        .iter()
        .map(|(i, r)| (*i, r.canary.clone()))
        .collect();
    let mut keys = RealmKeys::default();
    let mut report = RecoveryReport {
        access_key_indexes,
        token_operations: 0,
        mechanism: None,
        obtained_key_indexes: vec![],
        missing_key_indexes: vec![],
        problems: vec![],
        unusable_key_indexes: BTreeMap::new(),
    };
    // Access rows or bundles tried and found unusable, by key index, and keys whose canary
    // failed: what tells "damaged" from "never given" for a missing key.
    let mut failed_bundles: BTreeMap<u64, String> = BTreeMap::new();
    let mut failed_canaries: BTreeMap<u64, String> = BTreeMap::new();
    while let Some((&i, _)) = remaining.last_key_value() {
        let mut bundle_keys: Option<KeysBundle> = None;
        if report.access_key_indexes.contains(&i) {
            // At most one token operation per keys bundle: a crafted export with many access
            // rows for one index must not make the token work once per row.
            let rows = source.access_rows(service_id, i)?;
            if rows.len() > 1 {
                report.problems.push(format!(
                    "{} access rows for key index {i}: only the first is tried",
                    rows.len()
                ));
            }
            for access in rows.into_iter().take(1) {
                let bundle_key = match open_access(
                    token_key,
                    k,
                    &access,
                    &mut report.token_operations,
                    &mut report.mechanism,
                ) {
                    Ok(key) => key,
                    Err(AccessFailure::Fatal(e)) => return Err(e.into()),
                    Err(AccessFailure::Unusable(e)) => {
                        let why = format!("keys bundle access for index {i} unusable: {e}");
                        failed_bundles.insert(i, why.clone());
                        report.problems.push(why);
                        continue;
                    }
                };
                let Some(blob) = source.keys_bundle(i)? else {
                    let why = format!("keys bundle {i} is missing from the export");
                    failed_bundles.insert(i, why.clone());
                    report.problems.push(why);
                    break;
                };
                match open_bundle(&blob, &bundle_key, i, realm_id, certs, org) {
                    Ok(b) => {
                        bundle_keys = Some(b);
                        break;
                    }
                    Err(e) => {
                        let why = format!("keys bundle {i} unusable: {e}");
                        failed_bundles.insert(i, why.clone());
                        report.problems.push(why);
                    }
                }
            }
        }
        if let Some(bundle) = bundle_keys {
            for (pos, kd) in bundle.keys.iter().enumerate() {
                let j = pos as u64 + 1;
                let Some(canary) = remaining.get(&j) else {
                    continue;
                };
                if secretbox_open(&derive_key(kd, &CANARY_DERIVATION_ID), canary).is_ok() {
                    keys.keys.insert(j, kd.clone());
                    remaining.remove(&j);
                } else {
                    let why = format!("key index {j} from bundle {i} fails its canary: discarded");
                    failed_canaries.entry(j).or_insert_with(|| why.clone());
                    report.problems.push(why);
                }
            }
        }
        // Always drop i (the fix to Parsec's loop, docs/formats.md §5.4 step 6).
        remaining.remove(&i);
    }
    report.obtained_key_indexes = keys.keys.keys().copied().collect();
    report.missing_key_indexes = certs
        .rotations
        .keys()
        .filter(|i| !keys.keys.contains_key(i))
        .copied()
        .collect();
    // Bundle i holds keys 1..=i: a missing key j was given if a bundle i >= j was tried.
    for &j in &report.missing_key_indexes {
        let why = failed_canaries
            .get(&j)
            .or_else(|| failed_bundles.range(j..).next().map(|(_, why)| why));
        if let Some(why) = why {
            report.unusable_key_indexes.insert(j, why.clone());
        }
    }
    Ok((keys, report))
}

/// The realm (workspace) name at `t` (step 7).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RealmName {
    Known {
        name: String,
        since: DateTime,
    },
    /// The name certificate uses a key this service does not have.
    Unreadable {
        key_index: u64,
        since: DateTime,
    },
    Invalid {
        reason: String,
    },
    /// No name certificate at or before `t`.
    None,
}

impl std::fmt::Display for RealmName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RealmName::Known { name, .. } => f.write_str(name),
            RealmName::Unreadable { key_index, .. } => {
                write!(f, "(name unreadable: needs key index {key_index})")
            }
            RealmName::Invalid { reason } => write!(f, "(invalid name: {reason})"),
            RealmName::None => f.write_str("(no name)"),
        }
    }
}

pub(crate) fn realm_name_at(certs: &RealmCertificates, keys: &RealmKeys, t: DateTime) -> RealmName {
    let Some(cert) = certs
        .names
        .iter()
        .filter(|c| c.timestamp <= t)
        .max_by_key(|c| c.timestamp)
    else {
        return RealmName::None;
    };
    let Some(kd) = keys.get(cert.key_index) else {
        return RealmName::Unreadable {
            key_index: cert.key_index,
            since: cert.timestamp,
        };
    };
    let key = derive_key(kd, &REALM_NAME_DERIVATION_ID);
    match secretbox_open(&key, &cert.encrypted_name) {
        Ok(bytes) => match std::str::from_utf8(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|s| EntryName::parse(s).map_err(|e| e.to_string()))
        {
            Ok(name) => RealmName::Known {
                name: name.to_string(),
                since: cert.timestamp,
            },
            Err(reason) => RealmName::Invalid { reason },
        },
        Err(e) => RealmName::Invalid {
            reason: e.to_string(),
        },
    }
}

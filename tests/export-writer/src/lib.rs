//! Synthetic realm export WRITER, for tests, benchmarks and the demo: a development-only
//! workspace crate, never in the shipped binary or package. It uses only the public API of
//! `sequester_custody` (the Parsec encoders of its `parsec` module and its crypto primitives), so
//! what it writes is encoded by the same code the reader's decoders are tested against.
//!
//! Builds a valid Parsec realm export (schema v1, docs/formats.md §5.2) of any size and shape, with
//! its own organisation root key, users and Ed25519 devices, a sequester authority (a software RSA
//! key or any [`AuthoritySigner`], e.g. a token key) and services for GIVEN public keys, key
//! rotations with canaries, keys bundles and RSA-OAEP accesses, a realm name, and a workspace
//! history (folders, multi-block and sparse files, renames, deletions, overwrites, versions across
//! rotations). It returns the [`GroundTruth`]: the tree at chosen instants.
//!
//! Usage: [`ExportWriter::create`], then any sequence of certificate events
//! ([`ExportWriter::add_service`], [`ExportWriter::rotate_key`], ...) and workspace changes
//! ([`ExportWriter::write_file`], [`ExportWriter::rename`], ...), which are uploaded — one new
//! manifest version per changed entry, all with the same timestamp — by [`ExportWriter::sync`]
//! (or [`ExportWriter::checkpoint`], which also records the tree), then [`ExportWriter::finish`].
//!
//! Speed: block generation, hashing and encryption, and manifest compression/signing/encryption
//! run on worker threads; SQLite inserts run on the caller's thread in large transactions without
//! a journal (the file is a private temporary until renamed into place). Memory stays bounded: a
//! few blocks in flight, never a whole file.
//!
//! Not real: the per-user `realm_keys_bundle_access` rows are random bytes of the size of a real
//! X25519 sealed box (no reader of this tool can or should open them).

pub mod content;
pub mod forge;
mod pool;
pub mod scenario;
mod store;
#[cfg(test)]
mod tests;
pub mod truth;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use rsa::pkcs8::{DecodePublicKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub use content::{Content, Extent};
pub use truth::{
    EntryKind, ExpectedEntry, GroundTruth, RotationTruth, ServiceTruth, TreeSnapshot, TruthEntry,
    WriteStats,
};

use pool::Pool;
use sequester_custody::crypto::symmetric::{
    derive_key, ed25519_public, ed25519_sign, secretbox_seal_with_nonce, CANARY_DERIVATION_ID,
    REALM_NAME_DERIVATION_ID,
};
use sequester_custody::parsec::device::{DeviceCertificate, Id, UserCertificate};
use sequester_custody::parsec::envelope::wrap;
use sequester_custody::parsec::manifest::{
    folder_manifest_msgpack, BlockAccess, FileManifest, ManifestHeader,
};
use sequester_custody::parsec::realm::{
    KeyRotationCertificate, KeysBundle, KeysBundleAccess, NameCertificate, RoleCertificate,
};
use sequester_custody::parsec::sequester::{self, AuthorityCertificate, RevokedServiceCertificate};
use sequester_custody::parsec::DateTime;
use sequester_custody::token::KeyHandle;
use store::{Done, Store};

/// Parsec's default block size.
pub const DEFAULT_BLOCKSIZE: u64 = 512 * 1024;

/// Errors of the writer. Test-data tooling, but still never a panic on bad input.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("service public key: {0}")]
    ServiceKey(String),
    #[error("sequester authority: {0}")]
    Authority(String),
    #[error("path `{path}`: {reason}")]
    Path { path: String, reason: String },
    #[error("unknown service {0}")]
    UnknownService(String),
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Signs sequester service/revocation certificates: RSASSA-PSS-SHA256, output k bytes.
pub trait AuthoritySigner: Send {
    /// The authority public key, SPKI DER.
    fn spki_der(&self) -> Vec<u8>;
    fn sign_pss_sha256(&self, message: &[u8]) -> Result<Vec<u8>, String>;
}

/// A software authority key (test data only).
pub struct SoftwareAuthority {
    key: RsaPrivateKey,
}

impl SoftwareAuthority {
    pub fn generate(bits: usize, seed: u64) -> Result<Self, WriterError> {
        let mut rng = StdRng::seed_from_u64(content::mix(seed, 0xa11));
        let key = RsaPrivateKey::new(&mut rng, bits)
            .map_err(|e| WriterError::Authority(e.to_string()))?;
        Ok(SoftwareAuthority { key })
    }

    pub fn from_key(key: RsaPrivateKey) -> Self {
        SoftwareAuthority { key }
    }
}

impl AuthoritySigner for SoftwareAuthority {
    fn spki_der(&self) -> Vec<u8> {
        self.key
            .to_public_key()
            .to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_default()
    }

    fn sign_pss_sha256(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        use rsa::signature::{RandomizedSigner, SignatureEncoding};
        let signer = rsa::pss::SigningKey::<Sha256>::new_with_salt_len(self.key.clone(), 32);
        let sig = signer
            .try_sign_with_rng(&mut rand::thread_rng(), message)
            .map_err(|e| e.to_string())?;
        Ok(sig.to_vec())
    }
}

/// An authority key held on a token.
pub struct TokenAuthority(pub Box<dyn KeyHandle>);

impl AuthoritySigner for TokenAuthority {
    fn spki_der(&self) -> Vec<u8> {
        self.0.public_key_spki().to_vec()
    }

    fn sign_pss_sha256(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        self.0
            .sign_pss_sha256(message)
            .map(|(sig, _)| sig)
            .map_err(|e| e.to_string())
    }
}

/// Shape-independent settings.
pub struct WriterConfig {
    pub organization_id: String,
    /// Name given to the realm with key index 1 (a realm name certificate).
    pub realm_name: Option<String>,
    pub blocksize: u64,
    /// Users (each with one device); the first is the owner and bootstraps the organisation.
    pub users: usize,
    /// Worker threads; 0 = the machine's parallelism.
    pub threads: usize,
    /// Seeds ids, keys, nonces and generated contents.
    pub seed: u64,
    /// Time of the organisation bootstrap.
    pub start: DateTime,
    /// Clock step between two events (certificates, syncs), in microseconds.
    pub tick_micros: i64,
    /// Size of the generated authority key when no signer is given.
    pub authority_bits: usize,
    /// Seeds the organisation root key alone, everything else staying as `seed` makes it: the
    /// same tree, devices and services under another root key (a forged export, to test the trust
    /// anchor).
    pub root_key_seed: Option<u64>,
    /// Record the tree at the snapshot in the ground truth [`ExportWriter::finish`] returns
    /// (≈0.5 KiB per entry held until the end). Off when nobody reads it (`generate-export`
    /// without `--truth`), so a 1,000,000-entry export is written in ≈0.45 GiB.
    pub record_tree: bool,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            organization_id: "GeneratedOrg".into(),
            realm_name: Some("generated-workspace".into()),
            blocksize: DEFAULT_BLOCKSIZE,
            users: 2,
            threads: 0,
            seed: 1,
            // 2024-01-01T00:00:00Z
            start: DateTime(1_704_067_200_000_000),
            tick_micros: 60_000_000,
            authority_bits: 2048,
            root_key_seed: None,
            record_tree: true,
        }
    }
}

/// A sequester service of the export being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServiceId(pub [u8; 16]);

impl ServiceId {
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

struct Actor {
    user_id: Id,
    device_id: Id,
    seed: [u8; 32],
}

struct Service {
    id: Id,
    label: String,
    spki: Vec<u8>,
    public: RsaPublicKey,
    created: DateTime,
    revoked: Option<DateTime>,
    receives_access: bool,
    access: Vec<u64>,
}

#[derive(Clone)]
struct BlockRef {
    id: Id,
    offset: u64,
    size: u64,
    key_index: u64,
    digest: Option<[u8; 32]>,
}

#[derive(Clone, Copy)]
enum FileSha {
    Known([u8; 32]),
    /// The file is exactly this one block.
    Block(Id),
    /// Computed by a worker, see `Store::file_hashes`.
    Ticket(u64),
}

enum Node {
    Folder(BTreeMap<String, Id>),
    File {
        size: u64,
        blocks: Vec<BlockRef>,
        sha: FileSha,
    },
}

struct Entry {
    parent: Id,
    node: Node,
    /// Last uploaded version (0 = never uploaded).
    version: u32,
    key_index: u64,
    author: Id,
    created: DateTime,
    updated: DateTime,
    dirty: bool,
}

/// Writes one realm export. See the module documentation.
pub struct ExportWriter {
    // Field order matters: the SQLite connection closes before the temporary file goes away.
    store: Store,
    pool: Pool<Done>,
    tmp: Option<tempfile::TempPath>,
    path: PathBuf,
    config: WriterConfig,
    rng: StdRng,
    clock: DateTime,
    authority: Box<dyn AuthoritySigner>,
    root_seed: [u8; 32],
    realm_id: Id,
    actors: Vec<Actor>,
    author: usize,
    services: Vec<Service>,
    keys: Vec<[u8; 32]>,
    rotations: Vec<RotationTruth>,
    realm_name: Option<String>,
    entries: HashMap<Id, Entry>,
    dirty: Vec<Id>,
    root_created: Option<DateTime>,
    checkpoints: Vec<TreeSnapshot>,
    next_block_seq: i64,
    next_vlob_seq: i64,
    next_ticket: u64,
    stats: WriteStats,
    started: Instant,
    /// Last version of entries that exist only through [`forge`] uploads.
    forged_versions: HashMap<Id, u32>,
}

impl ExportWriter {
    /// Starts an export at `path` (written to a temporary sibling, renamed by [`Self::finish`])
    /// with a generated software authority key.
    pub fn create(path: &Path, config: WriterConfig) -> Result<Self, WriterError> {
        let authority = SoftwareAuthority::generate(config.authority_bits, config.seed)?;
        Self::create_with_authority(path, config, Box::new(authority))
    }

    /// Same, with a caller-supplied authority signer.
    pub fn create_with_authority(
        path: &Path,
        config: WriterConfig,
        authority: Box<dyn AuthoritySigner>,
    ) -> Result<Self, WriterError> {
        if config.users == 0 {
            return Err(WriterError::Config("at least one user is needed".into()));
        }
        if config.blocksize < 8 {
            return Err(WriterError::Config("blocksize must be >= 8".into()));
        }
        if config.organization_id.is_empty()
            || config.organization_id.len() > 32
            || !config
                .organization_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(WriterError::Config(format!(
                "organization id `{}` must be 1..32 characters of [A-Za-z0-9_-]",
                config.organization_id
            )));
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let io = |source| WriterError::Io {
            path: path.to_path_buf(),
            source,
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "export".into());
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".partial")
            .tempfile_in(&dir)
            .map_err(io)?
            .into_temp_path();
        let conn = rusqlite::Connection::open(&tmp)?;
        let store = Store::create(conn)?;
        let threads = if config.threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            config.threads
        };
        let mut rng = StdRng::seed_from_u64(config.seed);
        let mut root_seed = [0u8; 32];
        rng.fill_bytes(&mut root_seed);
        if let Some(forged) = config.root_key_seed {
            StdRng::seed_from_u64(content::mix(forged, 0x500f)).fill_bytes(&mut root_seed);
        }
        let realm_id = new_id(&mut rng);
        let mut w = ExportWriter {
            store,
            pool: Pool::new(threads),
            tmp: Some(tmp),
            path: path.to_path_buf(),
            clock: config.start,
            rng,
            authority,
            root_seed,
            realm_id,
            actors: Vec::new(),
            author: 0,
            services: Vec::new(),
            keys: Vec::new(),
            rotations: Vec::new(),
            realm_name: None,
            entries: HashMap::new(),
            dirty: Vec::new(),
            root_created: None,
            checkpoints: Vec::new(),
            next_block_seq: 1000,
            next_vlob_seq: 2000,
            next_ticket: 0,
            stats: WriteStats::default(),
            started: Instant::now(),
            forged_versions: HashMap::new(),
            config,
        };
        w.bootstrap()?;
        Ok(w)
    }

    pub fn realm_id(&self) -> [u8; 16] {
        self.realm_id
    }

    /// Current clock (the timestamp of the last event).
    pub fn now(&self) -> DateTime {
        self.clock
    }

    /// Moves the clock forward.
    pub fn advance(&mut self, micros: i64) {
        self.clock = DateTime(self.clock.0 + micros.max(0));
    }

    /// The current key index (0 before the first rotation).
    pub fn key_index(&self) -> u64 {
        self.keys.len() as u64
    }

    /// The organisation root verify key (`info.root_verify_key`).
    pub fn root_verify_key(&self) -> [u8; 32] {
        ed25519_public(&self.root_seed)
    }

    /// Revokes `user` (a `revoked_user_certificate` signed by the owner's device), now.
    /// Its devices can still be made to author changes (see [`Self::set_author`]): what a
    /// server that ignores revocation would store.
    pub fn revoke_user(&mut self, user: usize) -> Result<DateTime, WriterError> {
        let t = self.tick();
        let user_id = self.user(user)?.user_id;
        let mut w = sequester_custody::parsec::msgpack::Writer::new();
        w.map(4)
            .field("type", |w| {
                w.str("revoked_user_certificate");
            })
            .field("author", |w| {
                w.uuid(&self.actors[0].device_id);
            })
            .field("timestamp", |w| {
                w.datetime(t);
            })
            .field("user_id", |w| {
                w.uuid(&user_id);
            });
        let signed = self.sign_as(0, &w.into_bytes());
        self.store.certificate("common_certificate", &signed)?;
        Ok(t)
    }

    /// Gives `user` a realm role (`None` removes it), signed by the owner's device, now.
    pub fn set_realm_role(
        &mut self,
        user: usize,
        role: Option<&str>,
    ) -> Result<DateTime, WriterError> {
        let t = self.tick();
        let cert = RoleCertificate {
            author: self.actors[0].device_id,
            timestamp: t,
            realm_id: self.realm_id,
            user_id: self.user(user)?.user_id,
            role: role.map(str::to_string),
        }
        .to_msgpack();
        let signed = self.sign_as(0, &cert);
        self.store.certificate("realm_certificate", &signed)?;
        Ok(t)
    }

    /// Writes a second `device_certificate` for `user`'s device ID with another verify key
    /// (signed by the owner's device): a reader that let it replace the first would reject that
    /// device's genuine manifests, or accept ones signed with the new key.
    pub fn duplicate_device_certificate(&mut self, user: usize) -> Result<[u8; 32], WriterError> {
        let t = self.tick();
        let actor = self.user(user)?;
        let (user_id, device_id) = (actor.user_id, actor.device_id);
        let seed = self.key32();
        let cert = DeviceCertificate {
            purpose: "STANDARD".into(),
            author: Some(self.actors[0].device_id),
            timestamp: t,
            user_id,
            device_id,
            device_label: Some("impostor".into()),
            verify_key: ed25519_public(&seed),
        }
        .to_msgpack();
        let signed = self.sign_as(0, &cert);
        self.store.certificate("common_certificate", &signed)?;
        Ok(seed)
    }

    fn user(&self, user: usize) -> Result<&Actor, WriterError> {
        self.actors
            .get(user)
            .ok_or_else(|| WriterError::Config(format!("no user {user}")))
    }

    /// Which user (index into the configured users) authors the next changes.
    pub fn set_author(&mut self, user: usize) {
        self.author = user % self.actors.len();
    }

    fn tick(&mut self) -> DateTime {
        self.clock = DateTime(self.clock.0 + self.config.tick_micros.max(1));
        self.clock
    }

    fn nonce(&mut self) -> [u8; 24] {
        let mut n = [0u8; 24];
        self.rng.fill_bytes(&mut n);
        n
    }

    fn key32(&mut self) -> [u8; 32] {
        let mut k = [0u8; 32];
        self.rng.fill_bytes(&mut k);
        k
    }

    fn sign_as(&self, actor: usize, msgpack: &[u8]) -> Vec<u8> {
        ed25519_sign(&self.actors[actor].seed, &wrap(msgpack))
    }

    fn bootstrap(&mut self) -> Result<(), WriterError> {
        let t0 = self.clock;
        let names = [
            "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
        ];
        for i in 0..self.config.users {
            let t = if i == 0 { t0 } else { self.tick() };
            let actor = Actor {
                user_id: new_id(&mut self.rng),
                device_id: new_id(&mut self.rng),
                seed: self.key32(),
            };
            let name = names
                .get(i)
                .map_or_else(|| format!("user{i}"), |n| n.to_string());
            let user_public = self.key32();
            let author = (i > 0).then(|| self.actors[0].device_id);
            let user_cert = UserCertificate {
                author,
                timestamp: t,
                user_id: actor.user_id,
                human_handle: Some((format!("{name}@example.com"), name.clone())),
                public_key: user_public,
                profile: if i == 0 { "ADMIN" } else { "STANDARD" }.into(),
            }
            .to_msgpack();
            let device_cert = DeviceCertificate {
                purpose: "STANDARD".into(),
                author,
                timestamp: t,
                user_id: actor.user_id,
                device_id: actor.device_id,
                device_label: Some(format!("{name}'s machine")),
                verify_key: ed25519_public(&actor.seed),
            }
            .to_msgpack();
            let signer_seed = if i == 0 {
                self.root_seed
            } else {
                self.actors[0].seed
            };
            self.store.certificate(
                "common_certificate",
                &ed25519_sign(&signer_seed, &wrap(&user_cert)),
            )?;
            self.store.certificate(
                "common_certificate",
                &ed25519_sign(&signer_seed, &wrap(&device_cert)),
            )?;
            self.actors.push(actor);
            if i == 0 {
                let spki = self.authority.spki_der();
                let cert = AuthorityCertificate {
                    timestamp: t0,
                    verify_key_der: spki,
                }
                .to_msgpack();
                self.store.certificate(
                    "sequester_certificate",
                    &ed25519_sign(&self.root_seed, &wrap(&cert)),
                )?;
            }
        }
        // Realm creation: owner role, then the other users as contributors.
        let t = self.tick();
        let owner = self.actors[0].device_id;
        let cert = RoleCertificate {
            author: owner,
            timestamp: t,
            realm_id: self.realm_id,
            user_id: self.actors[0].user_id,
            role: Some("OWNER".into()),
        }
        .to_msgpack();
        let signed = self.sign_as(0, &cert);
        self.store.certificate("realm_certificate", &signed)?;
        for i in 1..self.actors.len() {
            let t = self.tick();
            let cert = RoleCertificate {
                author: owner,
                timestamp: t,
                realm_id: self.realm_id,
                user_id: self.actors[i].user_id,
                role: Some("CONTRIBUTOR".into()),
            }
            .to_msgpack();
            let signed = self.sign_as(0, &cert);
            self.store.certificate("realm_certificate", &signed)?;
        }
        // The root folder is uploaded at the first sync.
        let root = Entry {
            parent: self.realm_id,
            node: Node::Folder(BTreeMap::new()),
            version: 0,
            key_index: 0,
            author: owner,
            created: t,
            updated: t,
            dirty: true,
        };
        self.entries.insert(self.realm_id, root);
        self.dirty.push(self.realm_id);
        Ok(())
    }

    /// Adds a sequester service for the given public key (SPKI DER), signed by the authority.
    /// It receives an access row at every later key rotation until revoked.
    pub fn add_service(&mut self, label: &str, spki_der: &[u8]) -> Result<ServiceId, WriterError> {
        let public = RsaPublicKey::from_public_key_der(spki_der)
            .map_err(|e| WriterError::ServiceKey(format!("not an RSA SPKI DER: {e}")))?;
        let bits = public.n().bits();
        if bits % 8 != 0 || !(1024..=4096).contains(&bits) {
            return Err(WriterError::ServiceKey(format!(
                "{bits}-bit modulus: Parsec needs a multiple of 8 between 1024 and 4096"
            )));
        }
        let id = new_id(&mut self.rng);
        let t = self.tick();
        let cert = sequester::ServiceCertificate {
            timestamp: t,
            service_id: sequester::ServiceId(id),
            service_label: label.to_string(),
            encryption_key_der: spki_der.to_vec(),
        }
        .to_msgpack();
        self.authority_certificate(&cert)?;
        self.services.push(Service {
            id,
            label: label.to_string(),
            spki: spki_der.to_vec(),
            public,
            created: t,
            revoked: None,
            receives_access: true,
            access: Vec::new(),
        });
        Ok(ServiceId(id))
    }

    fn authority_certificate(&mut self, msgpack: &[u8]) -> Result<(), WriterError> {
        let envelope = wrap(msgpack);
        let sig = self
            .authority
            .sign_pss_sha256(&envelope)
            .map_err(WriterError::Authority)?;
        let mut armored = b"RSASSA-PSS-SHA256:".to_vec();
        armored.extend_from_slice(&sig);
        armored.extend_from_slice(&envelope);
        self.store.certificate("sequester_certificate", &armored)
    }

    fn service_mut(&mut self, id: ServiceId) -> Result<&mut Service, WriterError> {
        self.services
            .iter_mut()
            .find(|s| s.id == id.0)
            .ok_or_else(|| WriterError::UnknownService(id.hex()))
    }

    /// Revokes a service: later rotations no longer give it access (its old rows stay).
    pub fn revoke_service(&mut self, id: ServiceId) -> Result<(), WriterError> {
        self.service_mut(id)?;
        let t = self.tick();
        let cert = RevokedServiceCertificate {
            timestamp: t,
            service_id: sequester::ServiceId(id.0),
        }
        .to_msgpack();
        self.authority_certificate(&cert)?;
        self.service_mut(id)?.revoked = Some(t);
        Ok(())
    }

    /// Whether later rotations give this (active) service an access row; `false` models a client
    /// that does not know the service, leaving it without access.
    pub fn set_service_receives_access(
        &mut self,
        id: ServiceId,
        receives: bool,
    ) -> Result<(), WriterError> {
        self.service_mut(id)?.receives_access = receives;
        Ok(())
    }

    /// Key rotation: a new realm key, its canary, a keys bundle holding all keys so far, and an
    /// access row for every active service that receives accesses. Returns the new key index.
    pub fn rotate_key(&mut self) -> Result<u64, WriterError> {
        self.rotate_key_excluding(&[])
    }

    /// Key rotation that leaves out the given services (their key is then never given to them:
    /// data written with it is unreadable by them).
    pub fn rotate_key_excluding(&mut self, excluded: &[ServiceId]) -> Result<u64, WriterError> {
        let t = self.tick();
        let kd = self.key32();
        self.keys.push(kd);
        let index = self.keys.len() as u64;
        let canary_nonce = self.nonce();
        let canary =
            secretbox_seal_with_nonce(&derive_key(&kd, &CANARY_DERIVATION_ID), &canary_nonce, b"");
        let owner = self.actors[0].device_id;
        let cert = KeyRotationCertificate {
            author: owner,
            timestamp: t,
            realm_id: self.realm_id,
            key_index: index,
            key_canary: canary,
        }
        .to_msgpack();
        let signed = self.sign_as(0, &cert);
        self.store.certificate("realm_certificate", &signed)?;

        let bundle_key = self.key32();
        let bundle = KeysBundle {
            author: owner,
            timestamp: t,
            realm_id: self.realm_id,
            keys: self.keys.iter().copied().map(Zeroizing::new).collect(),
        }
        .to_msgpack();
        let signed = self.sign_as(0, &bundle);
        let nonce = self.nonce();
        let sealed = secretbox_seal_with_nonce(&bundle_key, &nonce, &signed);
        self.store.keys_bundle(index, &sealed)?;

        let access = KeysBundleAccess {
            keys_bundle_key: Zeroizing::new(bundle_key),
        }
        .encode();
        for i in 0..self.actors.len() {
            // Placeholder of the size of an X25519 sealed box (see the module documentation).
            let mut fake = vec![0u8; 48 + access.len()];
            self.rng.fill_bytes(&mut fake);
            let user = self.actors[i].user_id;
            self.store.user_access(&user, index, &fake)?;
        }
        let mut with_access = Vec::new();
        for s in 0..self.services.len() {
            let svc = &self.services[s];
            if svc.revoked.is_some()
                || !svc.receives_access
                || excluded.iter().any(|e| e.0 == svc.id)
            {
                continue;
            }
            let mut ek = [0u8; 32];
            self.rng.fill_bytes(&mut ek);
            let block = svc
                .public
                .encrypt(&mut self.rng, Oaep::new::<Sha256>(), &ek)
                .map_err(|e| WriterError::ServiceKey(e.to_string()))?;
            let mut nonce = [0u8; 24];
            self.rng.fill_bytes(&mut nonce);
            let payload = secretbox_seal_with_nonce(&ek, &nonce, &access);
            let mut armored = b"RSAES-OAEP-SHA256-XSALSA20-POLY1305:".to_vec();
            armored.extend_from_slice(&block);
            armored.extend_from_slice(&payload);
            let id = svc.id;
            self.store.sequester_access(&id, index, &armored)?;
            self.services[s].access.push(index);
            with_access.push(hex::encode(id));
        }
        self.rotations.push(RotationTruth {
            key_index: index,
            at: t,
            services_with_access: with_access,
        });
        if index == 1 {
            if let Some(name) = self.config.realm_name.clone() {
                self.rename_realm(&name)?;
            }
        }
        Ok(index)
    }

    /// A realm name certificate encrypted with the current key.
    pub fn rename_realm(&mut self, name: &str) -> Result<(), WriterError> {
        self.ensure_key()?;
        check_name(name, name)?;
        let t = self.tick();
        let index = self.key_index();
        let key = derive_key(&self.keys[index as usize - 1], &REALM_NAME_DERIVATION_ID);
        let nonce = self.nonce();
        let encrypted = secretbox_seal_with_nonce(&key, &nonce, name.as_bytes());
        let cert = NameCertificate {
            author: self.actors[0].device_id,
            timestamp: t,
            realm_id: self.realm_id,
            key_index: index,
            encrypted_name: encrypted,
        }
        .to_msgpack();
        let signed = self.sign_as(0, &cert);
        self.store.certificate("realm_certificate", &signed)?;
        self.realm_name = Some(name.to_string());
        Ok(())
    }

    fn ensure_key(&mut self) -> Result<(), WriterError> {
        if self.keys.is_empty() {
            self.rotate_key()?;
        }
        Ok(())
    }

    // ---- workspace ----

    fn resolve(&self, path: &str) -> Result<Option<Id>, WriterError> {
        let mut cur = self.realm_id;
        for name in components(path)? {
            match &self.entries[&cur].node {
                Node::Folder(children) => match children.get(name) {
                    Some(id) => cur = *id,
                    None => return Ok(None),
                },
                Node::File { .. } => {
                    return Err(WriterError::Path {
                        path: path.into(),
                        reason: "a file is used as a folder".into(),
                    })
                }
            }
        }
        Ok(Some(cur))
    }

    fn mark_dirty(&mut self, id: Id) {
        let e = self.entries.get_mut(&id).expect("live entry");
        if !e.dirty {
            e.dirty = true;
            self.dirty.push(id);
        }
    }

    fn children_mut(&mut self, folder: Id) -> &mut BTreeMap<String, Id> {
        match &mut self.entries.get_mut(&folder).expect("live entry").node {
            Node::Folder(c) => c,
            Node::File { .. } => unreachable!("checked to be a folder"),
        }
    }

    fn new_entry(&mut self, parent: Id, name: &str, node: Node) -> Id {
        let id = new_id(&mut self.rng);
        let author = self.actors[self.author].device_id;
        self.entries.insert(
            id,
            Entry {
                parent,
                node,
                version: 0,
                key_index: 0,
                author,
                created: self.clock,
                updated: self.clock,
                dirty: false,
            },
        );
        self.children_mut(parent).insert(name.to_string(), id);
        self.mark_dirty(id);
        self.mark_dirty(parent);
        id
    }

    /// `mkdir -p`: creates the folder and any missing parent.
    pub fn mkdir(&mut self, path: &str) -> Result<(), WriterError> {
        self.mkdir_id(path).map(|_| ())
    }

    fn mkdir_id(&mut self, path: &str) -> Result<Id, WriterError> {
        let mut cur = self.realm_id;
        for name in components(path)? {
            let next = match &self.entries[&cur].node {
                Node::Folder(children) => children.get(name).copied(),
                Node::File { .. } => {
                    return Err(WriterError::Path {
                        path: path.into(),
                        reason: "a file is used as a folder".into(),
                    })
                }
            };
            cur = match next {
                Some(id) => id,
                None => self.new_entry(cur, name, Node::Folder(BTreeMap::new())),
            };
        }
        if let Node::File { .. } = self.entries[&cur].node {
            return Err(WriterError::Path {
                path: path.into(),
                reason: "exists and is a file".into(),
            });
        }
        Ok(cur)
    }

    /// Creates or overwrites a file (missing parent folders are created). The blocks are
    /// encrypted with the current key and uploaded now; the manifest at the next sync.
    pub fn write_file(&mut self, path: &str, content: Content) -> Result<(), WriterError> {
        self.ensure_key()?;
        let (parent_path, name) = split_parent(path)?;
        let parent = self.mkdir_id(parent_path)?;
        let existing = match &self.entries[&parent].node {
            Node::Folder(c) => c.get(name).copied(),
            Node::File { .. } => unreachable!("mkdir_id returns folders"),
        };
        if let Some(id) = existing {
            if let Node::Folder(_) = self.entries[&id].node {
                return Err(WriterError::Path {
                    path: path.into(),
                    reason: "exists and is a folder".into(),
                });
            }
        }
        let node = self.upload_content(content);
        self.stats.files_written += 1;
        match existing {
            Some(id) => {
                self.entries.get_mut(&id).expect("live").node = node;
                self.mark_dirty(id);
            }
            None => {
                self.new_entry(parent, name, node);
            }
        }
        Ok(())
    }

    fn upload_content(&mut self, content: Content) -> Node {
        let blocksize = self.config.blocksize;
        let size = content.size();
        self.stats.plaintext_bytes += size;
        let layout = content.layout(blocksize);
        let key_index = self.key_index();
        let kd = self.keys[key_index as usize - 1];
        let author = self.actors[self.author].device_id;
        let content = std::sync::Arc::new(content);
        let mut blocks = Vec::with_capacity(layout.len());
        for (i, extent) in layout.iter().copied().enumerate() {
            let id = new_id(&mut self.rng);
            let seq = self.next_block_seq;
            self.next_block_seq += 1;
            let nonce = self.nonce();
            let content = std::sync::Arc::clone(&content);
            let store = &mut self.store;
            self.pool.submit(
                move || {
                    let mut clear = Vec::new();
                    content.fill(i, extent, &mut clear);
                    let digest: [u8; 32] = Sha256::digest(&clear).into();
                    let data = secretbox_seal_with_nonce(&derive_key(&kd, &id), &nonce, &clear);
                    Done::Block {
                        seq,
                        id,
                        author,
                        key_index,
                        data,
                        digest,
                    }
                },
                &mut |d| store.handle(d),
            );
            blocks.push(BlockRef {
                id,
                offset: extent.offset,
                size: extent.size,
                key_index,
                digest: None,
            });
        }
        let sha = match &*content {
            Content::Bytes(b) => FileSha::Known(Sha256::digest(b.as_slice()).into()),
            _ if layout.len() == 1 && layout[0].offset == 0 && layout[0].size == size => {
                FileSha::Block(blocks[0].id)
            }
            _ => {
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                let store = &mut self.store;
                self.pool.submit(
                    move || Done::FileHash {
                        ticket,
                        sha256: content.sha256(blocksize),
                    },
                    &mut |d| store.handle(d),
                );
                FileSha::Ticket(ticket)
            }
        };
        Node::File { size, blocks, sha }
    }

    /// Renames or moves an entry. The destination must not exist; its parent must.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<(), WriterError> {
        let id = self.resolve(from)?.ok_or_else(|| WriterError::Path {
            path: from.into(),
            reason: "no such entry".into(),
        })?;
        if id == self.realm_id {
            return Err(WriterError::Path {
                path: from.into(),
                reason: "cannot rename the root".into(),
            });
        }
        let to_norm = format!("/{}/", components(to)?.join("/"));
        let from_norm = format!("/{}/", components(from)?.join("/"));
        if to_norm.starts_with(&from_norm) {
            return Err(WriterError::Path {
                path: to.into(),
                reason: "cannot move a folder inside itself".into(),
            });
        }
        if self.resolve(to)?.is_some() {
            return Err(WriterError::Path {
                path: to.into(),
                reason: "destination exists".into(),
            });
        }
        let (to_parent_path, to_name) = split_parent(to)?;
        let to_parent = self
            .resolve(to_parent_path)?
            .ok_or_else(|| WriterError::Path {
                path: to.into(),
                reason: "destination folder does not exist".into(),
            })?;
        if let Node::File { .. } = self.entries[&to_parent].node {
            return Err(WriterError::Path {
                path: to.into(),
                reason: "destination parent is a file".into(),
            });
        }
        let (_, from_name) = split_parent(from)?;
        let old_parent = self.entries[&id].parent;
        self.children_mut(old_parent).remove(from_name);
        self.children_mut(to_parent).insert(to_name.to_string(), id);
        self.mark_dirty(old_parent);
        self.mark_dirty(to_parent);
        if old_parent != to_parent {
            self.entries.get_mut(&id).expect("live").parent = to_parent;
            self.mark_dirty(id);
        }
        Ok(())
    }

    /// Removes a file or a whole folder (its manifests stay in the export, unreachable).
    pub fn remove(&mut self, path: &str) -> Result<(), WriterError> {
        let id = self.resolve(path)?.ok_or_else(|| WriterError::Path {
            path: path.into(),
            reason: "no such entry".into(),
        })?;
        if id == self.realm_id {
            return Err(WriterError::Path {
                path: path.into(),
                reason: "cannot remove the root".into(),
            });
        }
        let (_, name) = split_parent(path)?;
        let parent = self.entries[&id].parent;
        self.children_mut(parent).remove(name);
        self.mark_dirty(parent);
        let mut stack = vec![id];
        while let Some(cur) = stack.pop() {
            if let Some(e) = self.entries.remove(&cur) {
                if let Node::Folder(children) = e.node {
                    stack.extend(children.values().copied());
                }
            }
        }
        self.dirty.retain(|d| *d != id);
        Ok(())
    }

    /// A new manifest version of an entry without changing it (re-encrypted with the current
    /// key; a file keeps its blocks, possibly encrypted with older keys).
    pub fn touch(&mut self, path: &str) -> Result<(), WriterError> {
        let id = self.resolve(path)?.ok_or_else(|| WriterError::Path {
            path: path.into(),
            reason: "no such entry".into(),
        })?;
        self.mark_dirty(id);
        Ok(())
    }

    /// Uploads one new manifest version of every changed entry, all with one new timestamp,
    /// encrypted with the current key. Returns that timestamp.
    pub fn sync(&mut self) -> Result<DateTime, WriterError> {
        self.ensure_key()?;
        let store = &mut self.store;
        self.pool.drain(&mut |d| store.handle(d));
        self.store.check()?;
        let t = self.tick();
        let key_index = self.key_index();
        let kd = self.keys[key_index as usize - 1];
        let author_index = self.author;
        let author = self.actors[author_index].device_id;
        let seed = self.actors[author_index].seed;
        let dirty = std::mem::take(&mut self.dirty);
        for id in dirty {
            let Some(e) = self.entries.get_mut(&id) else {
                continue;
            };
            if !e.dirty {
                continue;
            }
            e.dirty = false;
            e.version += 1;
            e.key_index = key_index;
            e.author = author;
            if e.version == 1 {
                e.created = t;
            }
            e.updated = t;
            let header = ManifestHeader {
                author,
                timestamp: t,
                id,
                parent: e.parent,
                version: e.version,
                created: e.created,
                updated: e.updated,
            };
            let msgpack = match &mut e.node {
                // Names are kept as written (no NFC pass): the bytes are the writer's choice.
                Node::Folder(children) => folder_manifest_msgpack(
                    &header,
                    children.iter().map(|(name, id)| (name.as_str(), id)),
                ),
                Node::File { size, blocks, sha } => {
                    let mut accesses = Vec::with_capacity(blocks.len());
                    for b in blocks.iter_mut() {
                        // A block's digest moves into its (only) file here: the store's map
                        // stays as small as the blocks written since the last sync (a
                        // 1,000,000-entry export would otherwise hold ≈0.1 GiB of them).
                        let digest = match b.digest {
                            Some(d) => d,
                            None => self.store.digests.remove(&b.id).expect("block drained"),
                        };
                        b.digest = Some(digest);
                        if matches!(*sha, FileSha::Block(single) if single == b.id) {
                            *sha = FileSha::Known(digest);
                        }
                        accesses.push(BlockAccess {
                            id: b.id,
                            offset: b.offset,
                            size: b.size,
                            digest,
                        });
                    }
                    FileManifest {
                        header,
                        size: *size,
                        blocksize: self.config.blocksize,
                        blocks: accesses,
                    }
                    .to_msgpack()
                }
            };
            if id == self.realm_id && e.version == 1 {
                self.root_created = Some(t);
            }
            let version = e.version;
            let seq = self.next_vlob_seq;
            self.next_vlob_seq += 1;
            let mut nonce = [0u8; 24];
            self.rng.fill_bytes(&mut nonce);
            let store = &mut self.store;
            self.pool.submit(
                move || {
                    let signed = ed25519_sign(&seed, &wrap(&msgpack));
                    let blob = secretbox_seal_with_nonce(&derive_key(&kd, &id), &nonce, &signed);
                    Done::Vlob {
                        seq,
                        vlob_id: id,
                        version,
                        key_index,
                        author,
                        timestamp: t.0,
                        blob,
                    }
                },
                &mut |d| store.handle(d),
            );
        }
        let store = &mut self.store;
        self.pool.drain(&mut |d| store.handle(d));
        self.store.check()?;
        Ok(t)
    }

    /// Syncs, then records the tree as of the sync timestamp under `label`.
    pub fn checkpoint(&mut self, label: &str) -> Result<DateTime, WriterError> {
        let t = self.sync()?;
        let snapshot = self.snapshot(label, t);
        self.checkpoints.push(snapshot);
        Ok(t)
    }

    fn file_sha(&self, sha: FileSha) -> [u8; 32] {
        match sha {
            FileSha::Known(s) => s,
            FileSha::Block(id) => self.store.digests[&id],
            FileSha::Ticket(t) => self.store.file_hashes[&t],
        }
    }

    fn snapshot(&self, label: &str, at: DateTime) -> TreeSnapshot {
        let mut entries = Vec::new();
        let mut stack: Vec<(String, Id)> = Vec::new();
        if let Node::Folder(children) = &self.entries[&self.realm_id].node {
            for (name, id) in children.iter().rev() {
                stack.push((format!("/{name}"), *id));
            }
        }
        while let Some((path, id)) = stack.pop() {
            let e = &self.entries[&id];
            let (kind, size, sha, block_keys) = match &e.node {
                Node::Folder(children) => {
                    for (name, child) in children.iter().rev() {
                        stack.push((format!("{path}/{name}"), *child));
                    }
                    (EntryKind::Folder, 0, None, Vec::new())
                }
                Node::File { size, blocks, sha } => {
                    let keys: BTreeSet<u64> = blocks.iter().map(|b| b.key_index).collect();
                    (
                        EntryKind::File,
                        *size,
                        Some(hex::encode(self.file_sha(*sha))),
                        keys.into_iter().collect(),
                    )
                }
            };
            entries.push(TruthEntry {
                path,
                kind,
                id: hex::encode(id),
                version: e.version,
                key_index: e.key_index,
                block_key_indexes: block_keys,
                size,
                sha256: sha,
                created: e.created,
                updated: e.updated,
                author: hex::encode(e.author),
            });
        }
        TreeSnapshot {
            label: label.to_string(),
            at,
            root_key_index: self.entries[&self.realm_id].key_index,
            entries,
        }
    }

    /// Syncs pending changes, writes the `info` row (snapshot = one tick after the last event),
    /// and renames the file into place. Returns the ground truth; the snapshot instant is also
    /// recorded as a checkpoint labelled `snapshot`.
    pub fn finish(mut self) -> Result<GroundTruth, WriterError> {
        if !self.dirty.is_empty() || self.root_created.is_none() {
            self.sync()?;
        }
        let store = &mut self.store;
        self.pool.drain(&mut |d| store.handle(d));
        self.store.check()?;
        let snapshot = self.tick();
        let tree = if self.config.record_tree {
            self.snapshot("snapshot", snapshot)
        } else {
            TreeSnapshot {
                label: "snapshot".into(),
                at: snapshot,
                root_key_index: self.entries[&self.realm_id].key_index,
                entries: Vec::new(),
            }
        };
        self.checkpoints.push(tree);
        let root_verify_key = ed25519_public(&self.root_seed);
        self.store.finish(
            &self.config.organization_id,
            &self.realm_id,
            &root_verify_key,
            snapshot.0,
        )?;
        self.stats.blocks = self.store.blocks_count;
        self.stats.blocks_total_bytes = self.store.blocks_total_bytes;
        self.stats.vlob_atoms = self.store.vlobs_count;
        self.stats.vlobs_total_bytes = self.store.vlobs_total_bytes;
        self.stats.seconds = self.started.elapsed().as_secs_f64();
        // Close SQLite before the rename.
        let conn = std::mem::replace(
            &mut self.store.conn,
            rusqlite::Connection::open_in_memory()?,
        );
        conn.close().map_err(|(_, e)| e)?;
        let tmp = self.tmp.take().expect("finish runs once");
        // Temporary files are created 0600; an export is an ordinary readable file.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).map_err(
                |source| WriterError::Io {
                    path: self.path.clone(),
                    source,
                },
            )?;
        }
        tmp.persist(&self.path).map_err(|e| WriterError::Io {
            path: self.path.clone(),
            source: e.error,
        })?;
        let services = self
            .services
            .iter()
            .map(|s| ServiceTruth {
                id: hex::encode(s.id),
                label: s.label.clone(),
                spki_sha256: hex::encode(Sha256::digest(&s.spki)),
                created: s.created,
                revoked: s.revoked,
                access_key_indexes: s.access.clone(),
            })
            .collect();
        Ok(GroundTruth {
            organization_id: self.config.organization_id.clone(),
            root_verify_key: hex::encode(ed25519_public(&self.root_seed)),
            realm_id: hex::encode(self.realm_id),
            realm_name: self.realm_name.clone(),
            snapshot,
            root_created: self.root_created,
            blocksize: self.config.blocksize,
            services,
            key_rotations: self.rotations.clone(),
            checkpoints: std::mem::take(&mut self.checkpoints),
            stats: self.stats.clone(),
        })
    }

    /// Room for `additional` more entries in the live tree, reserved once: growing the map
    /// entry by entry briefly holds the old and the new table (≈0.17 GiB more at 1M entries).
    pub fn reserve_entries(&mut self, additional: usize) {
        self.entries.reserve(additional);
    }

    /// A random number for callers building shapes (deterministic from the seed).
    pub fn random_u64(&mut self) -> u64 {
        self.rng.gen()
    }
}

/// A random UUIDv4 (as Parsec's ids are).
fn new_id(rng: &mut StdRng) -> Id {
    let mut id = [0u8; 16];
    rng.fill_bytes(&mut id);
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

fn check_name<'a>(path: &str, name: &'a str) -> Result<&'a str, WriterError> {
    let bad = |reason: &str| WriterError::Path {
        path: path.into(),
        reason: reason.into(),
    };
    if name.is_empty() || name == "." || name == ".." {
        return Err(bad("empty, `.` or `..` name"));
    }
    if name.len() > 255 {
        return Err(bad("name longer than 255 bytes"));
    }
    if name.contains('\0') || name.contains('/') {
        return Err(bad("name contains NUL or `/`"));
    }
    Ok(name)
}

fn components(path: &str) -> Result<Vec<&str>, WriterError> {
    path.split('/')
        .filter(|c| !c.is_empty())
        .map(|c| check_name(path, c))
        .collect()
}

fn split_parent(path: &str) -> Result<(&str, &str), WriterError> {
    let trimmed = path.trim_end_matches('/');
    let (parent, name) = trimmed.rsplit_once('/').unwrap_or(("", trimmed));
    check_name(path, name)?;
    Ok((parent, name))
}

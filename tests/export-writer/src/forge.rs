//! Hostile-export tooling: uploads manifest versions and access rows that a
//! well-behaved client never writes — a root listing itself, one folder under many names,
//! a wrong `parent`, absurd file sizes, overlapping blocks, duplicate access rows — signed and
//! encrypted like any other, so that the reader's structure rules are tested on real exports.
//! The ground truth returned by [`ExportWriter::finish`] does not know about forged versions.

use sha2::Sha256;

use super::{new_id, secretbox_seal_with_nonce, ExportWriter, WriterError};
use sequester_custody::crypto::symmetric::{derive_key, ed25519_sign};
use sequester_custody::parsec::device::Id;
use sequester_custody::parsec::envelope::wrap;
use sequester_custody::parsec::manifest::{
    folder_manifest_msgpack, BlockAccess, FileManifest, ManifestHeader,
};
use sequester_custody::parsec::DateTime;

use super::store::Done;

/// The content of a forged manifest version.
#[derive(Debug, Clone)]
pub enum ForgedManifest {
    /// A folder manifest with these `(name, child id)` pairs, in this order (names as given).
    Folder(Vec<(String, Id)>),
    /// A file manifest; blocks are not checked against anything.
    File {
        size: u64,
        blocksize: u64,
        blocks: Vec<BlockAccess>,
    },
}

impl ExportWriter {
    /// The entry ID at `path` in the writer's current tree.
    pub fn entry_id(&self, path: &str) -> Result<Option<Id>, WriterError> {
        self.resolve(path)
    }

    /// A fresh random entry ID (deterministic from the seed).
    pub fn new_entry_id(&mut self) -> Id {
        new_id(&mut self.rng)
    }

    /// Uploads the next manifest version of entry `id` (a writer entry or a forged one) with
    /// `parent` and `body` as given, at a new tick, signed by the current author and encrypted
    /// with the current key. Pending changes are synced first. Returns the version's timestamp.
    pub fn forge_manifest(
        &mut self,
        id: Id,
        parent: Id,
        body: ForgedManifest,
    ) -> Result<DateTime, WriterError> {
        if !self.dirty.is_empty() {
            self.sync()?;
        }
        self.ensure_key()?;
        let version = match self.entries.get_mut(&id) {
            Some(e) => {
                e.version += 1;
                e.version
            }
            None => {
                let v = self.forged_versions.entry(id).or_insert(0);
                *v += 1;
                *v
            }
        };
        let t = self.tick();
        let key_index = self.key_index();
        let kd = self.keys[key_index as usize - 1];
        let actor = &self.actors[self.author];
        let (author, seed) = (actor.device_id, actor.seed);
        let header = ManifestHeader {
            author,
            timestamp: t,
            id,
            parent,
            version,
            created: t,
            updated: t,
        };
        let msgpack = match body {
            ForgedManifest::Folder(children) => folder_manifest_msgpack(
                &header,
                children.iter().map(|(name, id)| (name.as_str(), id)),
            ),
            ForgedManifest::File {
                size,
                blocksize,
                blocks,
            } => FileManifest {
                header,
                size,
                blocksize,
                blocks,
            }
            .to_msgpack(),
        };
        if id == self.realm_id && self.root_created.is_none() {
            self.root_created = Some(t);
        }
        let seq = self.next_vlob_seq;
        self.next_vlob_seq += 1;
        let nonce = self.nonce();
        let signed = ed25519_sign(&seed, &wrap(&msgpack));
        let blob = secretbox_seal_with_nonce(&derive_key(&kd, &id), &nonce, &signed);
        self.store.handle(Done::Vlob {
            seq,
            vlob_id: id,
            version,
            key_index,
            author,
            timestamp: t.0,
            blob,
        });
        let store = &mut self.store;
        self.pool.drain(&mut |d| store.handle(d));
        self.store.check()?;
        Ok(t)
    }

    /// Adds one more `realm_sequester_keys_bundle_access` row for `service` and `key_index`,
    /// holding `access` (e.g. random bytes of a real access's length).
    pub fn forge_sequester_access(
        &mut self,
        service: &super::ServiceId,
        key_index: u64,
        access: &[u8],
    ) -> Result<(), WriterError> {
        self.store.sequester_access(&service.0, key_index, access)
    }

    /// A block access for a block that was never uploaded (offset, size, any digest).
    pub fn phantom_block(&mut self, offset: u64, size: u64) -> BlockAccess {
        use sha2::Digest;
        BlockAccess {
            id: new_id(&mut self.rng),
            offset,
            size,
            digest: Sha256::digest(offset.to_le_bytes()).into(),
        }
    }
}

//! Folder and file manifests (docs/formats.md §3.7), with the file-manifest integrity rules.
//!
//! Decoders take the serialized (envelope) bytes that follow the 64-byte Ed25519 signature inside
//! a decrypted `vlob_atom.blob`. Encoders write Parsec's field order (used by the export writer).

use rmpv::Value;

use super::device::Id;
use super::entry_name::EntryName;
use super::msgpack::{self, Map, Writer};
use super::{envelope, limits, DateTime, FormatError};

pub(crate) const FOLDER_MANIFEST: &str = "folder_manifest";
pub(crate) const FILE_MANIFEST: &str = "file_manifest";
pub(crate) const USER_MANIFEST: &str = "user_manifest";

/// Fields common to folder and file manifests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHeader {
    pub author: Id,
    pub timestamp: DateTime,
    pub id: Id,
    pub parent: Id,
    pub version: u32,
    pub created: DateTime,
    pub updated: DateTime,
}

/// One child of a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    pub name: EntryName,
    pub id: Id,
}

/// `folder_manifest` (workspace root or sub-folder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderManifest {
    pub header: ManifestHeader,
    /// In the order written; names are NFC-normalised.
    pub children: Vec<Child>,
    /// Names that appear more than once after NFC normalisation (Parsec silently keeps one;
    /// docs/formats.md §3.7 asks to flag the folder as suspicious instead of guessing).
    pub duplicate_names: Vec<EntryName>,
}

/// A `BlockAccess` of a file manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockAccess {
    pub id: Id,
    pub offset: u64,
    pub size: u64,
    pub digest: [u8; 32],
}

/// `file_manifest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileManifest {
    pub header: ManifestHeader,
    pub size: u64,
    pub blocksize: u64,
    /// Sorted by offset, non-overlapping (checked at decode).
    pub blocks: Vec<BlockAccess>,
}

/// A decoded manifest of a workspace entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    Folder(FolderManifest),
    File(FileManifest),
}

impl Manifest {
    pub fn header(&self) -> &ManifestHeader {
        match self {
            Manifest::Folder(f) => &f.header,
            Manifest::File(f) => &f.header,
        }
    }

    /// Decodes a folder or file manifest. A `user_manifest` (private realm root) gets a
    /// dedicated message: such an export is not a workspace.
    pub fn decode(serialized: &[u8]) -> Result<Self, FormatError> {
        let value = envelope::decode_value(serialized, &limits::MANIFEST)?;
        let map = Map::new(&value)?;
        match map.type_name()? {
            FOLDER_MANIFEST => Ok(Manifest::Folder(decode_folder(&map)?)),
            FILE_MANIFEST => Ok(Manifest::File(decode_file(&map)?)),
            USER_MANIFEST => Err(FormatError::Invalid(
                "this is a user_manifest (a user's private realm), not a workspace manifest".into(),
            )),
            other => Err(FormatError::WrongType {
                expected: "folder_manifest or file_manifest".into(),
                found: other.to_string(),
            }),
        }
    }

    pub(crate) fn to_msgpack(&self) -> Vec<u8> {
        match self {
            Manifest::Folder(f) => f.to_msgpack(),
            Manifest::File(f) => f.to_msgpack(),
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        envelope::wrap(&self.to_msgpack())
    }
}

fn decode_header(map: &Map) -> Result<ManifestHeader, FormatError> {
    let version = map.uint("version")?;
    let version = u32::try_from(version).map_err(|_| FormatError::BadField {
        field: "version",
        reason: format!("{version} does not fit a u32"),
    })?;
    Ok(ManifestHeader {
        author: map.uuid("author")?,
        timestamp: map.datetime("timestamp")?,
        id: map.uuid("id")?,
        parent: map.uuid("parent")?,
        version,
        created: map.datetime("created")?,
        updated: map.datetime("updated")?,
    })
}

fn decode_folder(map: &Map) -> Result<FolderManifest, FormatError> {
    let header = decode_header(map)?;
    let children_map = map.map("children")?;
    if children_map.entries().len() > limits::MAX_FOLDER_CHILDREN {
        return Err(FormatError::BadField {
            field: "children",
            reason: format!(
                "{} children, more than the limit of {}",
                children_map.entries().len(),
                limits::MAX_FOLDER_CHILDREN
            ),
        });
    }
    let mut children = Vec::with_capacity(children_map.entries().len());
    let mut seen = std::collections::HashSet::new();
    let mut duplicate_names = Vec::new();
    for (k, v) in children_map.entries() {
        let raw = msgpack::as_str(k, "children")?;
        let name = EntryName::parse(raw)?;
        let id = msgpack::as_uuid(v, "children")?;
        if !seen.insert(name.clone()) {
            duplicate_names.push(name.clone());
        }
        children.push(Child { name, id });
    }
    Ok(FolderManifest {
        header,
        children,
        duplicate_names,
    })
}

fn decode_block(v: &Value) -> Result<BlockAccess, FormatError> {
    let m = Map::new(v).map_err(|_| FormatError::BadField {
        field: "blocks",
        reason: "a block access is not a map".into(),
    })?;
    Ok(BlockAccess {
        id: m.uuid("id")?,
        offset: m.uint("offset")?,
        size: m.uint("size")?,
        digest: m.bin32("digest")?,
    })
}

fn decode_file(map: &Map) -> Result<FileManifest, FormatError> {
    let header = decode_header(map)?;
    let size = map.uint("size")?;
    let blocksize = map.uint("blocksize")?;
    let raw_blocks = map.array("blocks")?;
    // One block per blocksize span at most (docs/formats.md §3.7), checked before the blocks are
    // copied.
    let most_blocks = match size.checked_div(blocksize) {
        Some(full) => full.saturating_add(u64::from(size % blocksize != 0)),
        None => 0,
    };
    let count = raw_blocks.len();
    if count > limits::MAX_FILE_BLOCKS {
        return Err(FormatError::BadField {
            field: "blocks",
            reason: format!(
                "{count} blocks, more than the limit of {}",
                limits::MAX_FILE_BLOCKS
            ),
        });
    }
    if blocksize >= 8 && count as u64 > most_blocks {
        return Err(FormatError::Invalid(format!(
            "file manifest: {count} blocks cannot fit {size} bytes in spans of {blocksize}"
        )));
    }
    let blocks = raw_blocks
        .iter()
        .map(decode_block)
        .collect::<Result<Vec<_>, _>>()?;
    let file = FileManifest {
        header,
        size,
        blocksize,
        blocks,
    };
    file.check_integrity()?;
    Ok(file)
}

impl FileManifest {
    /// The integrity rules of docs/formats.md §3.7 (Parsec rejects the manifest if any fails).
    pub(crate) fn check_integrity(&self) -> Result<(), FormatError> {
        let bad = |why: String| Err(FormatError::Invalid(format!("file manifest: {why}")));
        if self.header.id == self.header.parent {
            return bad("id == parent".into());
        }
        if self.blocksize < 8 {
            return bad(format!("blocksize {} < 8", self.blocksize));
        }
        let mut previous_end: Option<u64> = None;
        for (i, b) in self.blocks.iter().enumerate() {
            if b.size == 0 {
                return bad(format!("block {i} has size 0"));
            }
            let Some(end) = b.offset.checked_add(b.size) else {
                return bad(format!("block {i} offset + size overflows"));
            };
            if let Some(prev) = previous_end {
                if b.offset < prev {
                    return bad(format!("block {i} overlaps or is out of order"));
                }
            }
            if (end - 1) / self.blocksize != b.offset / self.blocksize {
                return bad(format!("block {i} crosses a blocksize boundary"));
            }
            if i > 0 {
                let prev = &self.blocks[i - 1];
                if prev.offset / self.blocksize == b.offset / self.blocksize {
                    return bad(format!("blocks {} and {i} share a span", i - 1));
                }
            }
            previous_end = Some(end);
        }
        if let Some(end) = previous_end {
            if end > self.size {
                return bad(format!(
                    "blocks end at {end}, beyond the size {}",
                    self.size
                ));
            }
        }
        Ok(())
    }

    pub fn to_msgpack(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.map(11);
        write_header(&mut w, FILE_MANIFEST, &self.header);
        w.field("size", |w| {
            w.uint(self.size);
        })
        .field("blocksize", |w| {
            w.uint(self.blocksize);
        })
        .field("blocks", |w| {
            w.array(self.blocks.len() as u32);
            for b in &self.blocks {
                w.map(4)
                    .field("id", |w| {
                        w.uuid(&b.id);
                    })
                    .field("offset", |w| {
                        w.uint(b.offset);
                    })
                    .field("size", |w| {
                        w.uint(b.size);
                    })
                    .field("digest", |w| {
                        w.bin(&b.digest);
                    });
            }
        });
        w.into_bytes()
    }
}

impl FolderManifest {
    pub(crate) fn to_msgpack(&self) -> Vec<u8> {
        folder_manifest_msgpack(
            &self.header,
            self.children.iter().map(|c| (c.name.as_str(), &c.id)),
        )
    }
}

/// Folder manifest msgpack from raw `(name, id)` children, written as given (no NFC
/// normalisation): the export writer keeps its names as plain strings.
pub fn folder_manifest_msgpack<'a>(
    header: &ManifestHeader,
    children: impl ExactSizeIterator<Item = (&'a str, &'a Id)>,
) -> Vec<u8> {
    let mut w = Writer::new();
    w.map(9);
    write_header(&mut w, FOLDER_MANIFEST, header);
    w.field("children", |w| {
        w.map(children.len() as u32);
        for (name, id) in children {
            w.str(name).uuid(id);
        }
    });
    w.into_bytes()
}

fn write_header(w: &mut Writer, type_name: &str, h: &ManifestHeader) {
    w.field("type", |w| {
        w.str(type_name);
    })
    .field("author", |w| {
        w.uuid(&h.author);
    })
    .field("timestamp", |w| {
        w.datetime(h.timestamp);
    })
    .field("id", |w| {
        w.uuid(&h.id);
    })
    .field("parent", |w| {
        w.uuid(&h.parent);
    })
    .field("version", |w| {
        w.uint(u64::from(h.version));
    })
    .field("created", |w| {
        w.datetime(h.created);
    })
    .field("updated", |w| {
        w.datetime(h.updated);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(id: u8, parent: u8) -> ManifestHeader {
        ManifestHeader {
            author: [9; 16],
            timestamp: DateTime(10),
            id: [id; 16],
            parent: [parent; 16],
            version: 1,
            created: DateTime(1),
            updated: DateTime(2),
        }
    }

    fn file(blocks: Vec<(u64, u64)>, size: u64) -> FileManifest {
        FileManifest {
            header: header(1, 2),
            size,
            blocksize: 512,
            blocks: blocks
                .into_iter()
                .map(|(offset, size)| BlockAccess {
                    id: [offset as u8; 16],
                    offset,
                    size,
                    digest: [0; 32],
                })
                .collect(),
        }
    }

    #[test]
    fn round_trip() {
        let f = Manifest::File(file(vec![(0, 512), (1024, 8)], 2000));
        assert_eq!(Manifest::decode(&f.encode()).unwrap(), f);
        let d = Manifest::Folder(FolderManifest {
            header: header(2, 2),
            children: vec![Child {
                name: EntryName::parse("a").unwrap(),
                id: [1; 16],
            }],
            duplicate_names: vec![],
        });
        assert_eq!(Manifest::decode(&d.encode()).unwrap(), d);
    }

    #[test]
    fn integrity_rules() {
        assert!(file(vec![(0, 512), (512, 10)], 522)
            .check_integrity()
            .is_ok());
        assert!(file(vec![(0, 513)], 600).check_integrity().is_err()); // crosses a span
        assert!(file(vec![(0, 10), (5, 10)], 600).check_integrity().is_err()); // overlap
        assert!(file(vec![(0, 10), (20, 10)], 600)
            .check_integrity()
            .is_err()); // same span
        assert!(file(vec![(0, 0)], 600).check_integrity().is_err()); // empty block
        assert!(file(vec![(0, 10)], 5).check_integrity().is_err()); // beyond size
        assert!(file(vec![(512, 10)], 600).check_integrity().is_ok()); // hole first
        let mut same = file(vec![], 0);
        same.header.parent = same.header.id;
        assert!(same.check_integrity().is_err());
    }

    #[test]
    fn counts_are_refused_before_the_entries_are_copied() {
        // Three blocks cannot fit 1000 bytes in spans of 512.
        let mut f = file(vec![(0, 10), (512, 10), (1024, 10)], 1100);
        f.size = 1000;
        let err = Manifest::decode(&Manifest::File(f).encode()).unwrap_err();
        assert!(
            err.to_string().contains("3 blocks cannot fit 1000 bytes"),
            "{err}"
        );
        // One child over the limit.
        let children = (0..=limits::MAX_FOLDER_CHILDREN)
            .map(|i| Child {
                name: EntryName::parse(&i.to_string()).unwrap(),
                id: [3; 16],
            })
            .collect();
        let folder = FolderManifest {
            header: header(1, 1),
            children,
            duplicate_names: Vec::new(),
        };
        let err = Manifest::decode(&Manifest::Folder(folder).encode()).unwrap_err();
        assert!(
            err.to_string().contains("more than the limit of 100000"),
            "{err}"
        );
    }
}

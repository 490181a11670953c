//! Every size, count and depth limit applied to decoded Parsec data, in one place.
//!
//! An export is hostile input: each limit is checked BEFORE memory is reserved for what it
//! bounds. The numbers are derived from what Parsec itself writes (docs/formats.md §2-§3 and the
//! fixture exports) with a wide margin; `docs/investigation.md` ("Limits") gives the reasoning per
//! row.

/// Limits of one kind of `0x00 || zstd(msgpack)` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ObjectLimits {
    /// What the object is, for error messages.
    pub what: &'static str,
    /// Most bytes the zstd stream may decompress to (the frame's declared size is never trusted).
    pub max_decompressed: usize,
    /// Most msgpack values in the object, containers and map keys included.
    pub max_values: usize,
    /// Deepest nesting of msgpack arrays/maps (the top-level map is depth 1).
    pub max_depth: usize,
}

/// Deepest nesting Parsec writes is 3 (file manifest → `blocks` array → BlockAccess map); the
/// tagged unions (archiving configuration, file `origin`) and `human_handle` are depth 2.
pub(crate) const MSGPACK_MAX_DEPTH: usize = 8;

/// Longest entry name after NFC normalisation (docs/formats.md §2.3 EntryName).
pub(crate) const MAX_ENTRY_NAME_BYTES: usize = 255;

/// Most children of one folder manifest. Parsec sets no limit; 100 000 entries in one folder is
/// far beyond what its client handles comfortably, and at 255-byte names still fits
/// [`MANIFEST`]'s decompressed size (100 000 × 276 bytes ≈ 27.6 MB).
pub(crate) const MAX_FOLDER_CHILDREN: usize = 100_000;

/// Most blocks of one file manifest: 262 144 blocks = a 128 GiB file at Parsec's default
/// 512 KiB blocksize (93 bytes each in msgpack ≈ 24.4 MB, within [`MANIFEST`]).
pub(crate) const MAX_FILE_BLOCKS: usize = 262_144;

/// Most keys in a realm keys bundle (one per key rotation; Parsec rotates on member removal).
pub(crate) const MAX_REALM_KEYS: usize = 16_384;

/// Folder and file manifests (the largest objects of an export).
pub(crate) const MANIFEST: ObjectLimits = ObjectLimits {
    what: "manifest",
    max_decompressed: 32 * 1024 * 1024,
    // A BlockAccess is 9 values (map, 4 keys, 4 values); a child is 2 (name, ID).
    max_values: MAX_FILE_BLOCKS * 9 + 64,
    max_depth: MSGPACK_MAX_DEPTH,
};

/// Every certificate: common (user, device, revocation, update), realm (role, key rotation,
/// name, archiving) and sequester (authority, service, revoked service). The largest Parsec
/// writes is a service certificate: an RSA-4096 SPKI (550 bytes) plus a free-form label;
/// fixture certificates decompress to 94-302 bytes.
pub(crate) const CERTIFICATE: ObjectLimits = ObjectLimits {
    what: "certificate",
    max_decompressed: 64 * 1024,
    max_values: 1024,
    max_depth: MSGPACK_MAX_DEPTH,
};

/// `realm_keys_bundle`: header plus `MAX_REALM_KEYS` keys of 34 bytes (`c4 20` + 32).
pub(crate) const KEYS_BUNDLE: ObjectLimits = ObjectLimits {
    what: "keys bundle",
    max_decompressed: 1024 + MAX_REALM_KEYS * 34,
    max_values: MAX_REALM_KEYS + 64,
    max_depth: MSGPACK_MAX_DEPTH,
};

/// `realm_keys_bundle_access`: two fields, 81 bytes in the fixture.
pub(crate) const KEYS_BUNDLE_ACCESS: ObjectLimits = ObjectLimits {
    what: "keys bundle access",
    max_decompressed: 4 * 1024,
    max_values: 64,
    max_depth: MSGPACK_MAX_DEPTH,
};

/// Largest zstd window accepted (log2 bytes). Parsec's level-3 streaming frames use 2^21
/// (frame header `28 b5 2f fd 00 58`); 2^23 leaves a margin while bounding the decoder's buffer.
pub(crate) const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// Largest RSA modulus accepted in an SPKI (Parsec clients refuse keys over 4096 bits); bounds
/// the big-integer work of every signature check and the armor's block length.
pub(crate) const MAX_RSA_MODULUS_BITS: usize = 4096;

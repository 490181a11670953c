//! Data format v0: `0x00 || zstd(msgpack)` (spec §2.1).

use std::io::Read;

use super::FormatError;

/// Upper bound on a decompressed object, so a zstd bomb in a hostile export cannot exhaust memory.
/// Parsec manifests of folders with many children are the largest objects; 256 MiB is ample.
pub const MAX_DECOMPRESSED: u64 = 256 * 1024 * 1024;

/// Wraps msgpack bytes as Parsec does: streaming zstd at level 3, no pledged size
/// (byte-identical to Parsec's output, spec §8.3).
pub fn wrap(msgpack: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    zstd::stream::copy_encode(msgpack, &mut out, 0)
        .expect("zstd compression into a Vec cannot fail");
    out
}

/// Unwraps `0x00 || zstd(...)` into msgpack bytes (all frames, streaming).
pub fn unwrap(serialized: &[u8]) -> Result<Vec<u8>, FormatError> {
    let (&version, rest) = serialized.split_first().ok_or(FormatError::Empty)?;
    if version != 0 {
        return Err(FormatError::FormatVersion(version));
    }
    let decoder =
        zstd::stream::read::Decoder::new(rest).map_err(|e| FormatError::Zstd(e.to_string()))?;
    let mut out = Vec::new();
    decoder
        .take(MAX_DECOMPRESSED + 1)
        .read_to_end(&mut out)
        .map_err(|e| FormatError::Zstd(e.to_string()))?;
    if out.len() as u64 > MAX_DECOMPRESSED {
        return Err(FormatError::Zstd(format!(
            "decompressed data exceeds {MAX_DECOMPRESSED} bytes"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_cert_envelope_matches_spec_v4() {
        let msgpack = hex::decode("83a474797065d9257365717565737465725f7265766f6b65645f736572766963655f6365727469666963617465a974696d657374616d70d70100035e2efad68000aa736572766963655f6964d80200000000000000000000000000000001").unwrap();
        let env = wrap(&msgpack);
        assert_eq!(hex::encode(&env), "0028b52ffd0058950200840483a474797065d9257365717565737465725f7265766f6b65645f736572766963655f6365727469666963617465a974696d657374616d70d70100035e2efad68000aa6964d8020001020038a9c27ad519");
        assert_eq!(unwrap(&env).unwrap(), msgpack);
    }

    #[test]
    fn rejects_bad_envelopes() {
        assert_eq!(unwrap(&[]).unwrap_err(), FormatError::Empty);
        assert_eq!(
            unwrap(&[1, 2, 3]).unwrap_err(),
            FormatError::FormatVersion(1)
        );
        // Uncompressed msgpack after 0x00 is refused.
        assert!(matches!(
            unwrap(&[0, 0x80]).unwrap_err(),
            FormatError::Zstd(_)
        ));
    }
}

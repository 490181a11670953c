//! Data format v0: `0x00 || zstd(msgpack)` (docs/formats.md §2.1).

use std::io::Read;

use rmpv::Value;

use super::limits::{self, ObjectLimits};
use super::{msgpack, FormatError};

thread_local! {
    /// One zstd decompression context per thread, reused from object to object (creating one
    /// per object is a visible cost on large exports).
    static DCTX: std::cell::RefCell<Option<zstd::zstd_safe::DCtx<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Wraps msgpack bytes as Parsec does: streaming zstd at level 3, no pledged size
/// (byte-identical to Parsec's output, docs/formats.md §8.3).
pub fn wrap(msgpack: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    zstd::stream::copy_encode(msgpack, &mut out, 0)
        .expect("zstd compression into a Vec cannot fail");
    out
}

/// Unwraps `0x00 || zstd(...)` into msgpack bytes (all frames, streaming), within the limits of
/// a manifest (the largest object kind). Decoders of a known kind use `unwrap_bounded`.
pub fn unwrap(serialized: &[u8]) -> Result<Vec<u8>, FormatError> {
    unwrap_bounded(serialized, &limits::MANIFEST)
}

/// Unwraps `0x00 || zstd(...)` into at most `limits.max_decompressed` bytes. The decoder streams
/// into a buffer that grows with what is actually produced: the frame's declared content size
/// is never trusted, and its window is capped ([`limits::ZSTD_WINDOW_LOG_MAX`]).
pub(crate) fn unwrap_bounded(
    serialized: &[u8],
    limits: &ObjectLimits,
) -> Result<Vec<u8>, FormatError> {
    let (&version, rest) = serialized.split_first().ok_or(FormatError::Empty)?;
    if version != 0 {
        return Err(FormatError::FormatVersion(version));
    }
    let cap = limits.max_decompressed as u64;
    let mut out = Vec::new();
    let decode = |decoder: &mut dyn Read, out: &mut Vec<u8>| {
        decoder
            .take(cap + 1)
            .read_to_end(out)
            .map_err(|e| FormatError::Zstd(e.to_string()))
    };
    // The thread's decompression context is reused (creating one allocates its buffers for
    // every manifest); a fresh one is made if it is busy (re-entrance) or cannot be created.
    DCTX.with(|cell| -> Result<(), FormatError> {
        let mut slot = cell.try_borrow_mut().ok();
        if let Some(slot) = slot.as_mut() {
            if slot.is_none() {
                **slot = zstd::zstd_safe::DCtx::try_create();
            }
        }
        match slot.as_mut().and_then(|s| s.as_mut()) {
            Some(context) => {
                let mut decoder = zstd::stream::read::Decoder::with_context(rest, context);
                decoder
                    .window_log_max(limits::ZSTD_WINDOW_LOG_MAX)
                    .map_err(|e| FormatError::Zstd(e.to_string()))?;
                decode(&mut decoder, &mut out)?;
            }
            None => {
                let mut decoder = zstd::stream::read::Decoder::new(rest)
                    .map_err(|e| FormatError::Zstd(e.to_string()))?;
                decoder
                    .window_log_max(limits::ZSTD_WINDOW_LOG_MAX)
                    .map_err(|e| FormatError::Zstd(e.to_string()))?;
                decode(&mut decoder, &mut out)?;
            }
        }
        Ok(())
    })?;
    if out.len() as u64 > cap {
        return Err(FormatError::Zstd(format!(
            "{} refused: it decompresses to more than {cap} bytes",
            limits.what
        )));
    }
    Ok(out)
}

/// Unwraps and decodes a `0x00 || zstd(msgpack)` object of the kind `limits` describes.
pub(crate) fn decode_value(serialized: &[u8], limits: &ObjectLimits) -> Result<Value, FormatError> {
    let raw = unwrap_bounded(serialized, limits)?;
    msgpack::decode_bounded(&raw, limits)
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
    fn the_reused_context_decodes_correctly_after_a_failure() {
        let msgpack = vec![0x91u8, 0x2a];
        let good = wrap(&msgpack);
        let truncated = &good[..good.len() - 3];
        let mut garbage = good.clone();
        garbage[5] ^= 0xff;
        for _ in 0..3 {
            assert_eq!(unwrap(&good).unwrap(), msgpack);
            assert!(unwrap(truncated).is_err());
            assert!(unwrap(&garbage).is_err());
        }
        // Other threads have their own context.
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let good = good.clone();
                std::thread::spawn(move || unwrap(&good).unwrap())
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), msgpack);
        }
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

    #[test]
    fn a_certificate_bomb_is_refused_quickly_with_small_memory() {
        // 200 M msgpack nils behind an array32 header: ~200 MB of msgpack, a few KiB compressed.
        let mut msgpack = vec![0xdd];
        msgpack.extend_from_slice(&200_000_000u32.to_be_bytes());
        let mut compressed = vec![0u8];
        {
            let mut enc = zstd::stream::write::Encoder::new(&mut compressed, 1).unwrap();
            std::io::Write::write_all(&mut enc, &msgpack).unwrap();
            let zeros = vec![0xc0u8; 1 << 20];
            for _ in 0..200 {
                std::io::Write::write_all(&mut enc, &zeros).unwrap();
            }
            enc.finish().unwrap();
        }
        assert!(compressed.len() < 64 * 1024, "{}", compressed.len());
        let start = std::time::Instant::now();
        let err = decode_value(&compressed, &limits::CERTIFICATE).unwrap_err();
        assert!(err.to_string().contains("more than 65536 bytes"), "{err}");
        // The manifest cap (32 MiB) also stops it, then the value count would.
        let err = decode_value(&compressed, &limits::MANIFEST).unwrap_err();
        assert!(
            err.to_string().contains("decompresses to more than"),
            "{err}"
        );
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn a_frame_declaring_a_huge_window_is_refused() {
        // Frame header: magic, descriptor 0x00, window descriptor 0xf8 (2^41 bytes window).
        let frame = [0x00, 0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xf8, 0x01, 0x00, 0x00];
        let err = unwrap(&frame).unwrap_err();
        assert!(matches!(err, FormatError::Zstd(_)), "{err}");
    }
}

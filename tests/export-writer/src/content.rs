//! File contents the writer can store: caller bytes, or deterministic pseudo-random data (so a
//! 1 GiB export never sits in memory: any block can be regenerated from its seed and index).

use std::sync::Arc;

use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

/// What a file contains.
#[derive(Debug, Clone)]
pub enum Content {
    /// These exact bytes.
    Bytes(Arc<Vec<u8>>),
    /// `size` pseudo-random bytes derived from `seed`, every span of the blocksize a full block.
    Random { size: u64, seed: u64 },
    /// Like `Random`, but with holes: in every run of `hole_every` spans (>= 3), the last span has
    /// no block (reads as zeros) and the second one's block covers only the middle of its span
    /// (zeros around it) — both allowed by the manifest format (docs/formats.md §3.7).
    Sparse {
        size: u64,
        seed: u64,
        hole_every: u64,
    },
}

/// One block's place in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub size: u64,
}

impl Content {
    pub fn bytes(data: impl Into<Vec<u8>>) -> Self {
        Content::Bytes(Arc::new(data.into()))
    }

    pub fn size(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::Random { size, .. } | Content::Sparse { size, .. } => *size,
        }
    }

    /// The blocks of this content, ordered by offset, each within one span of `blocksize`.
    pub fn layout(&self, blocksize: u64) -> Vec<Extent> {
        let size = self.size();
        let spans = size.div_ceil(blocksize);
        let mut out = Vec::with_capacity(spans as usize);
        for span in 0..spans {
            let start = span * blocksize;
            let len = (size - start).min(blocksize);
            let mut extent = Extent {
                offset: start,
                size: len,
            };
            if let Content::Sparse { hole_every, .. } = self {
                let n = (*hole_every).max(3);
                if span % n == n - 1 {
                    continue;
                }
                if span % n == 1 && len > 64 {
                    extent = Extent {
                        offset: start + 13,
                        size: len - 13 - 29,
                    };
                }
            }
            out.push(extent);
        }
        out
    }

    /// The cleartext of block `index` of [`Content::layout`].
    pub fn fill(&self, index: usize, extent: Extent, out: &mut Vec<u8>) {
        out.clear();
        match self {
            Content::Bytes(b) => out.extend_from_slice(
                &b[extent.offset as usize..(extent.offset + extent.size) as usize],
            ),
            Content::Random { seed, .. } | Content::Sparse { seed, .. } => {
                out.resize(extent.size as usize, 0);
                let mut rng = rand::rngs::StdRng::seed_from_u64(mix(*seed, index as u64));
                rng.fill_bytes(out);
            }
        }
    }

    /// SHA-256 of the whole file (zeros in the holes), regenerating the blocks in order.
    pub fn sha256(&self, blocksize: u64) -> [u8; 32] {
        if let Content::Bytes(b) = self {
            return Sha256::digest(b.as_slice()).into();
        }
        let mut hasher = Sha256::new();
        let mut pos = 0u64;
        let mut buf = Vec::new();
        let zeros = vec![0u8; 64 * 1024];
        let pad = |hasher: &mut Sha256, mut n: u64| {
            while n > 0 {
                let k = n.min(zeros.len() as u64);
                hasher.update(&zeros[..k as usize]);
                n -= k;
            }
        };
        for (i, extent) in self.layout(blocksize).into_iter().enumerate() {
            pad(&mut hasher, extent.offset - pos);
            self.fill(i, extent, &mut buf);
            hasher.update(&buf);
            pos = extent.offset + extent.size;
        }
        pad(&mut hasher, self.size() - pos);
        hasher.finalize().into()
    }

    /// The whole file in memory (tests and small files only).
    pub fn to_vec(&self, blocksize: u64) -> Vec<u8> {
        let mut out = vec![0u8; self.size() as usize];
        let mut buf = Vec::new();
        for (i, extent) in self.layout(blocksize).into_iter().enumerate() {
            self.fill(i, extent, &mut buf);
            out[extent.offset as usize..(extent.offset + extent.size) as usize]
                .copy_from_slice(&buf);
        }
        out
    }
}

/// SplitMix64 finaliser: independent per-block seeds from one file seed.
pub fn mix(seed: u64, index: u64) -> u64 {
    let mut z = seed
        .wrapping_add(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(index.wrapping_mul(0xbf58_476d_1ce4_e5b9));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_layout_respects_spans_and_hash_matches_bytes() {
        let c = Content::Sparse {
            size: 10 * 512 + 100,
            seed: 7,
            hole_every: 3,
        };
        let layout = c.layout(512);
        for e in &layout {
            assert_eq!(
                e.offset / 512,
                (e.offset + e.size - 1) / 512,
                "{e:?} crosses a span"
            );
        }
        // spans 2, 5, 8 are holes; 1, 4, 7, 10 partial
        assert_eq!(layout.len(), 8);
        assert_eq!(
            layout[1],
            Extent {
                offset: 512 + 13,
                size: 512 - 42
            }
        );
        let all = c.to_vec(512);
        let expected: [u8; 32] = Sha256::digest(&all).into();
        assert_eq!(c.sha256(512), expected);
        assert!(all[2 * 512..3 * 512].iter().all(|&b| b == 0));
    }
}

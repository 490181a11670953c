//! Candidates micro-benchmark for Parsec's secretbox (XSalsa20-Poly1305 open, docs/formats.md §1.1)
//! and SHA-256. Prints MB/s of plaintext per candidate and block size, the best of several rounds,
//! with the 1-min load average before/after and the thread's CPU share. Run with `cargo bench
//! --bench crypto_candidates` (env `CANDIDATES_ROUNDS`, `CANDIDATES_MIB`).
//!
//! The product (`crypto::symmetric::secretbox_open`) is measured beside the raw primitives so its
//! own overhead (allocation, zeroizing) shows.

mod common;

use std::hint::black_box;
use std::time::Instant;

use common::{load_1min, thread_cpu};
use crypto_secretbox::aead::{AeadInPlace, KeyInit};
use crypto_secretbox::XSalsa20Poly1305;
use sequester_custody::crypto::symmetric;
use sha2::{Digest, Sha256};

/// A sealed block `nonce(24) || tag(16) || ciphertext` and its plaintext length.
struct Blocks {
    key: [u8; 32],
    sealed: Vec<Vec<u8>>,
    plain_len: usize,
}

type Open = fn(&[u8; 32], &[u8], &mut Vec<u8>) -> bool;
type Hash = fn(&[u8]) -> [u8; 32];

fn open_product(key: &[u8; 32], blob: &[u8], out: &mut Vec<u8>) -> bool {
    match symmetric::secretbox_open(key, blob) {
        Ok(plain) => {
            // Touch the result so the call is not optimised away; the product zeroizes on drop.
            out.clear();
            out.push(plain[plain.len() / 2]);
            true
        }
        Err(_) => false,
    }
}

fn open_rustcrypto_in_place(key: &[u8; 32], blob: &[u8], out: &mut Vec<u8>) -> bool {
    let cipher = XSalsa20Poly1305::new(key.into());
    let (nonce, rest) = blob.split_at(24);
    let (tag, ciphertext) = rest.split_at(16);
    out.clear();
    out.extend_from_slice(ciphertext);
    cipher
        .decrypt_in_place_detached(nonce.into(), b"", out, tag.into())
        .is_ok()
}

fn open_libsodium(key: &[u8; 32], blob: &[u8], out: &mut Vec<u8>) -> bool {
    let (nonce, rest) = blob.split_at(24);
    out.resize(rest.len() - 16, 0);
    // SAFETY: `out` holds rest.len() - 16 bytes, nonce 24 and key 32 as libsodium requires.
    unsafe {
        libsodium_sys::crypto_secretbox_open_easy(
            out.as_mut_ptr(),
            rest.as_ptr(),
            rest.len() as u64,
            nonce.as_ptr(),
            key.as_ptr(),
        ) == 0
    }
}

/// libsodium into a fresh buffer erased on drop with one bulk write (`[u8]::zeroize`), not the
/// byte-by-byte volatile writes of `Zeroizing<Vec<u8>>`: what a dedicated plaintext type would
/// cost (docs/performance.md, "next step").
fn open_libsodium_bulk_erase(key: &[u8; 32], blob: &[u8], out: &mut Vec<u8>) -> bool {
    use zeroize::Zeroize;
    let mut plain = Vec::new();
    let ok = open_libsodium(key, blob, &mut plain);
    out.clear();
    out.push(plain[plain.len() / 2]);
    plain.as_mut_slice().zeroize();
    ok
}

fn sha256_sha2(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn sha256_libsodium(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    // SAFETY: out is 32 bytes, data is a valid slice.
    unsafe {
        libsodium_sys::crypto_hash_sha256(out.as_mut_ptr(), data.as_ptr(), data.len() as u64)
    };
    out
}

fn make_blocks(block_size: usize, total: usize) -> Blocks {
    let key = [0x42u8; 32];
    let count = (total / block_size).max(1);
    let mut sealed = Vec::with_capacity(count);
    let mut plain = vec![0u8; block_size];
    for i in 0..count {
        for (j, b) in plain.iter_mut().enumerate() {
            *b = (i.wrapping_mul(31) ^ j.wrapping_mul(7)) as u8;
        }
        let mut nonce = [0u8; 24];
        nonce[..8].copy_from_slice(&(i as u64).to_le_bytes());
        sealed.push(symmetric::secretbox_seal_with_nonce(&key, &nonce, &plain));
    }
    Blocks {
        key,
        sealed,
        plain_len: block_size,
    }
}

/// Best of `rounds` passes of `work` over every block.
struct Measured {
    /// Best wall-clock MB/s, and that pass's CPU share.
    rate: f64,
    share: f64,
    /// Best MB per CPU-second of the thread (what a shared machine skews least).
    per_cpu: f64,
}

fn measure(blocks: &Blocks, rounds: usize, mut work: impl FnMut(&[u8]) -> bool) -> Measured {
    let bytes = (blocks.sealed.len() * blocks.plain_len) as f64;
    let mut best = Measured {
        rate: 0.0,
        share: 0.0,
        per_cpu: 0.0,
    };
    for _ in 0..rounds {
        let (cpu0, t0) = (thread_cpu(), Instant::now());
        for blob in &blocks.sealed {
            assert!(work(blob), "candidate failed to open a valid block");
        }
        let wall = t0.elapsed().as_secs_f64();
        let cpu = thread_cpu() - cpu0;
        let rate = bytes / wall / 1e6;
        if rate > best.rate {
            best.rate = rate;
            best.share = cpu / wall;
        }
        // getrusage ticks coarsely on some kernels: ignore passes it did not see.
        if cpu > 0.0 {
            best.per_cpu = best.per_cpu.max(bytes / cpu / 1e6);
        }
    }
    best
}

fn main() {
    // SAFETY: sodium_init is thread-safe and idempotent.
    assert!(
        unsafe { libsodium_sys::sodium_init() } >= 0,
        "sodium_init failed"
    );
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let rounds = env("CANDIDATES_ROUNDS", 5);
    let total = env("CANDIDATES_MIB", 64) << 20;
    let opens: [(&str, Open); 4] = [
        (
            "product: symmetric::secretbox_open (libsodium, Zeroizing<Vec>)",
            open_product,
        ),
        (
            "RustCrypto crypto_secretbox in place",
            open_rustcrypto_in_place,
        ),
        ("libsodium crypto_secretbox_open_easy", open_libsodium),
        (
            "libsodium, fresh Vec, bulk erase on drop",
            open_libsodium_bulk_erase,
        ),
    ];
    let hashes: [(&str, Hash); 2] = [
        ("sha2 SHA-256", sha256_sha2),
        ("libsodium crypto_hash_sha256", sha256_libsodium),
    ];
    println!(
        "| Candidate | Block | MB/s (best of {rounds}) | CPU share | MB per CPU-second | Load before → after |"
    );
    println!("|---|---|---|---|---|---|");
    for block_size in [512 << 10, 16 << 10, 4 << 10, 1 << 10] {
        let blocks = make_blocks(block_size, total);
        let label = format!("{} KiB", block_size >> 10);
        let row = |name: &str, m: Measured, load0: f64| {
            println!(
                "| {name} | {label} | {:.0} | {:.2} | {:.0} | {load0:.2} → {:.2} |",
                m.rate,
                m.share,
                m.per_cpu,
                load_1min()
            );
        };
        let mut out = Vec::with_capacity(block_size);
        for (name, open) in opens {
            let load0 = load_1min();
            row(
                name,
                measure(&blocks, rounds, |b| open(&blocks.key, b, &mut out)),
                load0,
            );
        }
        // The decrypt baseline's per-block work: open + SHA-256 of the plaintext.
        for (name, open) in [opens[1], opens[2]] {
            let load0 = load_1min();
            let result = measure(&blocks, rounds, |b| {
                open(&blocks.key, b, &mut out) && black_box(sha256_sha2(&out)) != [0; 32]
            });
            row(&format!("{name} + sha2 SHA-256"), result, load0);
        }
        let plain: Vec<Vec<u8>> = blocks.sealed.iter().map(|b| b[40..].to_vec()).collect();
        for (name, hash) in hashes {
            let load0 = load_1min();
            let mut i = 0;
            let result = measure(&blocks, rounds, |_| {
                i = (i + 1) % plain.len();
                black_box(hash(&plain[i])) != [0; 32]
            });
            row(name, result, load0);
        }
    }
    ed25519_candidates(rounds);
}

/// Ed25519 verification of manifest-sized messages: the product's strict single verification
/// against batch verification (the next step named in docs/performance.md for per-entry cost)
/// and libsodium's `crypto_sign_verify_detached`. Prints µs per signature, best of `rounds`.
fn ed25519_candidates(rounds: usize) {
    use ed25519_dalek::{Signer, SigningKey};
    let n = 20_000;
    let keys: Vec<SigningKey> = (0..16u8)
        .map(|i| SigningKey::from_bytes(&[i + 1; 32]))
        .collect();
    let messages: Vec<Vec<u8>> = (0..n).map(|i| vec![(i % 251) as u8; 600]).collect();
    let signatures: Vec<_> = (0..n).map(|i| keys[i % 16].sign(&messages[i])).collect();
    let verifying: Vec<_> = (0..n).map(|i| keys[i % 16].verifying_key()).collect();
    let best = |mut pass: Box<dyn FnMut() + '_>| {
        let mut best = (f64::MAX, 0.0);
        for _ in 0..rounds {
            let (cpu0, t0) = (thread_cpu(), Instant::now());
            pass();
            let wall = t0.elapsed().as_secs_f64();
            let cpu = thread_cpu() - cpu0;
            if wall < best.0 {
                best = (wall, cpu / wall);
            }
        }
        (best.0 / n as f64 * 1e6, best.1)
    };
    println!();
    println!("| Ed25519 candidate (600-byte messages, 16 keys) | µs per signature (best of {rounds}) | CPU share | Load before → after |");
    println!("|---|---|---|---|");
    let row = |name: &str, (us, share): (f64, f64), load0: f64| {
        println!(
            "| {name} | {us:.1} | {share:.2} | {load0:.2} → {:.2} |",
            load_1min()
        );
    };
    let load0 = load_1min();
    let strict = best(Box::new(|| {
        for i in 0..n {
            assert!(verifying[i]
                .verify_strict(&messages[i], &signatures[i])
                .is_ok());
        }
    }));
    row(
        "product: ed25519-dalek verify_strict, one at a time",
        strict,
        load0,
    );
    let load0 = load_1min();
    let batch = best(Box::new(|| {
        for start in (0..n).step_by(64) {
            let end = (start + 64).min(n);
            let m: Vec<&[u8]> = messages[start..end].iter().map(|m| &m[..]).collect();
            assert!(ed25519_dalek::verify_batch(
                &m,
                &signatures[start..end],
                &verifying[start..end]
            )
            .is_ok());
        }
    }));
    row("ed25519-dalek verify_batch, 64 per batch", batch, load0);
    let load0 = load_1min();
    let sodium = best(Box::new(|| {
        for i in 0..n {
            let pk = verifying[i].to_bytes();
            let sig = signatures[i].to_bytes();
            // SAFETY: fixed-size key and signature buffers, message slice with its length.
            let rc = unsafe {
                libsodium_sys::crypto_sign_verify_detached(
                    sig.as_ptr(),
                    messages[i].as_ptr(),
                    messages[i].len() as u64,
                    pk.as_ptr(),
                )
            };
            assert_eq!(rc, 0);
        }
    }));
    row("libsodium crypto_sign_verify_detached", sodium, load0);
}

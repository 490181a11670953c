//! Benchmark harness (`harness = false`; run by `scripts/bench.sh`, which generates
//! the exports and the token and passes them here).
//!
//! Measures, on the three generated exports: open + verify + key recovery (and token operation
//! count), `export extract` throughput and peak RSS, the FUSE mount (sequential `cat`, `ls -R`,
//! `sha256sum` with 8 parallel readers), `export ls -R` / `history` on the deep history, and (with
//! `--million`) peak RSS on a 1,000,000-entry export; and, in the same run, the baselines: a
//! single-threaded in-memory decrypt + SHA-256 check of the same blocks with the product's
//! primitive, the same loop with libsodium's `crypto_secretbox_open_easy` called directly, a plain
//! copy of the same number of bytes from the SQLite file, and `tar -x` of the same small-files
//! tree. Prints one Markdown table, every headline figure also as a ratio to the baselines.
//!
//! The machine is shared: every row carries the 1-min load average before and after its
//! measurement and the measured process's CPU share ((user + sys) / wall). Before each
//! measurement the harness waits (up to `--settle-max` seconds) for the load to drop to
//! `--max-load`; a figure measured above it is flagged "LOADED — not a result".
//!
//! The tool is measured as a user runs it: the release CLI in a child process, timed by wall
//! clock, its peak RSS taken from `wait4` (`ru_maxrss`). Page cache is warm (the exports were
//! just generated or read): this measures CPU-bound work, not the disk.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{load_1min, thread_cpu};
use sequester_custody::crypto::sha256;
use sequester_custody::crypto::symmetric::{derive_key, secretbox_open, secretbox_seal};
use sequester_custody::export::walk::{Walk, WalkStep, MAX_DEPTH};
use sequester_custody::export::{ExportFile, OpenOptions, Realm, UnlockOptions};
use sequester_custody::parsec::manifest::BlockAccess;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const MIB: f64 = 1024.0 * 1024.0;
const RSS_LIMIT_MIB: f64 = 200.0;

struct Args {
    cli: PathBuf,
    key: String,
    large: PathBuf,
    small: PathBuf,
    history: PathBuf,
    work: PathBuf,
    skip_mount: bool,
    /// Optional 1,000,000-entry export: peak RSS rows (target: each < 200 MiB).
    million: Option<PathBuf>,
    /// 1-min load average above which a figure is not a result.
    max_load: f64,
    /// Longest wait for the load to settle before a measurement.
    settle_max: Duration,
}

fn parse_args() -> Res<Args> {
    let mut it = std::env::args().skip(1);
    let (mut cli, mut key, mut large, mut small, mut history, mut work) =
        (None, None, None, None, None, None);
    let mut skip_mount = false;
    let mut million = None;
    let mut max_load = 0.5;
    let mut settle_max = Duration::from_secs(90);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--cli" => cli = Some(PathBuf::from(val()?)),
            "--key" => key = Some(val()?),
            "--large" => large = Some(PathBuf::from(val()?)),
            "--small" => small = Some(PathBuf::from(val()?)),
            "--history" => history = Some(PathBuf::from(val()?)),
            "--work" => work = Some(PathBuf::from(val()?)),
            "--skip-mount" => skip_mount = true,
            "--million" => million = Some(PathBuf::from(val()?)),
            "--max-load" => max_load = val()?.parse().map_err(|e| format!("--max-load: {e}"))?,
            "--settle-max" => {
                let v: f64 = val()?.parse().map_err(|e| format!("--settle-max: {e}"))?;
                settle_max = Duration::from_secs_f64(v.max(0.0));
            }
            // Added by `cargo bench`.
            "--bench" => {}
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let need =
        |o: Option<PathBuf>, n: &str| o.ok_or(format!("--{n} is required (run scripts/bench.sh)"));
    Ok(Args {
        cli: need(cli, "cli")?,
        key: key.ok_or("--key is required (run scripts/bench.sh)")?,
        large: need(large, "large")?,
        small: need(small, "small")?,
        history: need(history, "history")?,
        work: need(work, "work")?,
        skip_mount,
        million,
        max_load,
        settle_max,
    })
}

// ---------------------------------------------------------------------------------------------
// Child processes: wall time and peak RSS.

struct Run {
    wall: Duration,
    max_rss_mib: f64,
    /// User + system CPU seconds.
    cpu: f64,
    ok: bool,
    code: Option<i32>,
    stderr: String,
}

impl Run {
    /// (user + sys) / wall of the measured process.
    fn share(&self) -> f64 {
        self.cpu / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Peak RSS is taken by GNU time (`/usr/bin/time -f %M`), which forks the measured command
/// from its own small process: `ru_maxrss` of a direct child of this harness would include the
/// harness's own RSS (the kernel keeps the pre-exec high-water mark of a vfork-ed child).
const GNU_TIME: &str = "/usr/bin/time";

/// The PIN for the CLI children, taken before the harness opens the key in-process: the token
/// layer removes `SEQUESTER_CUSTODY_PIN` from its process environment once read, so children
/// would not inherit it.
static CHILD_PIN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// Wraps `program args…` in GNU time writing the peak RSS (KiB) to `rss_file`.
fn timed_command(program: &std::ffi::OsStr, rss_file: &Path) -> Command {
    let mut c = Command::new(GNU_TIME);
    if let Some(Some(pin)) = CHILD_PIN.get() {
        c.env("SEQUESTER_CUSTODY_PIN", pin);
    }
    c.arg("-f")
        .arg("%M %U %S")
        .arg("-o")
        .arg(rss_file)
        .arg(program);
    c
}

/// `(peak RSS MiB, user + system CPU seconds)` as written by [`timed_command`].
fn read_usage(rss_file: &Path) -> (f64, f64) {
    let text = fs::read_to_string(rss_file).unwrap_or_default();
    let fields: Vec<f64> = text
        .lines()
        .last()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    match fields[..] {
        [kib, user, sys] => (kib / 1024.0, user + sys),
        _ => (f64::NAN, f64::NAN),
    }
}

fn read_rss_mib(rss_file: &Path) -> f64 {
    read_usage(rss_file).0
}

/// Runs a command to completion (built with [`timed_command`]), stdout discarded, stderr kept
/// for error messages.
fn run(cmd: &mut Command, work: &Path) -> Res<Run> {
    let err_path = work.join("last-stderr.txt");
    let err_file = fs::File::create(&err_path)?;
    let t0 = Instant::now();
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err_file)
        .status()?;
    let wall = t0.elapsed();
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    Ok(Run {
        wall,
        max_rss_mib: read_usage(&work.join("last-rss.txt")).0,
        cpu: read_usage(&work.join("last-rss.txt")).1,
        ok: status.success(),
        code: status.code(),
        stderr,
    })
}

/// `program args…` under GNU time (RSS to `work/last-rss.txt`).
fn measured(
    program: impl AsRef<std::ffi::OsStr>,
    args: &[&std::ffi::OsStr],
    work: &Path,
) -> Command {
    let _ = fs::remove_file(work.join("last-rss.txt"));
    let mut c = timed_command(program.as_ref(), &work.join("last-rss.txt"));
    c.args(args);
    c
}

fn must(r: Run, what: &str) -> Res<Run> {
    if r.ok {
        Ok(r)
    } else {
        Err(format!("{what} failed: {}", r.stderr.trim()).into())
    }
}

// ---------------------------------------------------------------------------------------------
// The table.

struct Row {
    bench: String,
    export: &'static str,
    figure: String,
    cpu: String,
    load: String,
    loaded: bool,
    ratio: String,
    target: String,
    met: String,
}

/// The load average around one measurement.
#[derive(Clone, Copy)]
struct Span {
    before: f64,
    after: f64,
}

struct Table {
    rows: Vec<Row>,
    max_load: f64,
    settle_max: Duration,
    /// Load average when the current measurement began ([`Table::begin`]).
    mark: f64,
}

impl Table {
    fn new(max_load: f64, settle_max: Duration) -> Self {
        Table {
            rows: Vec::new(),
            max_load,
            settle_max,
            mark: f64::NAN,
        }
    }

    /// Waits (up to `settle_max`) for the 1-min load to drop to `max_load` — the harness's own
    /// previous measurement raises it too — then records it as the next figure's "before".
    fn begin(&mut self) -> f64 {
        let t0 = Instant::now();
        let mut load = load_1min();
        if load > self.max_load && !self.settle_max.is_zero() {
            eprintln!(
                "[bench] load {load:.2} > {:.2}: waiting up to {} s for it to settle",
                self.max_load,
                self.settle_max.as_secs()
            );
        }
        while load > self.max_load && t0.elapsed() < self.settle_max {
            std::thread::sleep(Duration::from_secs(2));
            load = load_1min();
        }
        self.mark = load;
        load
    }

    /// The span from the last [`Table::begin`] to now.
    fn span(&self) -> Span {
        Span {
            before: self.mark,
            after: load_1min(),
        }
    }

    /// A row measured since the last [`Table::begin`].
    fn add(&mut self, bench: &str, export: &'static str, figure: String, ratio: String) {
        let span = self.span();
        self.add_spanned(bench, export, figure, ratio, span);
    }

    /// A row whose measurement happened earlier, over `span`.
    fn add_spanned(
        &mut self,
        bench: &str,
        export: &'static str,
        figure: String,
        ratio: String,
        span: Span,
    ) {
        // NaN (no /proc/loadavg) is not a proof of a quiet machine either.
        let loaded = span.before.is_nan() || span.before > self.max_load;
        self.rows.push(Row {
            bench: bench.into(),
            export,
            figure,
            cpu: String::new(),
            load: format!("{:.2} → {:.2}", span.before, span.after),
            loaded,
            ratio,
            target: String::new(),
            met: if loaded { LOADED.into() } else { String::new() },
        });
    }

    /// The measured process's CPU share ((user + sys) / wall) for the last row.
    fn cpu(&mut self, share: f64) {
        let row = self.rows.last_mut().expect("a row");
        row.cpu = if share.is_nan() {
            "n/a (too short)".into()
        } else {
            format!("{share:.2}")
        };
    }

    fn target(&mut self, target: &str, met: bool) {
        let row = self.rows.last_mut().expect("a row");
        row.target = target.into();
        if !row.loaded {
            row.met = if met { "met" } else { "MISSED" }.into();
        }
    }
    fn na(&mut self, bench: &str, export: &'static str, why: &str) {
        self.rows.push(Row {
            bench: bench.into(),
            export,
            figure: why.into(),
            cpu: String::new(),
            load: String::new(),
            loaded: false,
            ratio: String::new(),
            target: String::new(),
            met: String::new(),
        });
    }
    fn print(&self) {
        let header = [
            "Benchmark",
            "Export",
            "Figure",
            "CPU share",
            "Load 1-min before → after",
            "Ratio to baselines",
            "Target",
            "Met",
        ];
        let rows: Vec<[&str; 8]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.bench.as_str(),
                    r.export,
                    r.figure.as_str(),
                    r.cpu.as_str(),
                    r.load.as_str(),
                    r.ratio.as_str(),
                    r.target.as_str(),
                    r.met.as_str(),
                ]
            })
            .collect();
        let mut w = header.map(|h| h.chars().count());
        for r in &rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let line = |cells: [&str; 8]| {
            let mut s = String::from("|");
            for (i, c) in cells.iter().enumerate() {
                s += &format!(" {c}{} |", " ".repeat(w[i] - c.chars().count()));
            }
            s
        };
        println!("{}", line(header));
        let mut sep = String::from("|");
        for x in w {
            sep += &format!("{}|", "-".repeat(x + 2));
        }
        println!("{sep}");
        for r in rows {
            println!("{}", line(r));
        }
        let loaded = self.rows.iter().filter(|r| r.loaded).count();
        if loaded > 0 {
            println!(
                "\n{loaded} figure(s) measured with the 1-min load average above {:.2}: {LOADED} \
                 (shared machine; re-run when it is quiet).",
                self.max_load
            );
        }
    }
}

/// The Met column of a figure measured on a loaded machine.
const LOADED: &str = "LOADED — not a result";

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9)
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else {
        format!("{s:.2} s")
    }
}

/// Ratios of a throughput to both baselines.
fn thr_ratio(v: f64, b: &Baselines) -> String {
    format!(
        "{:.2}× decrypt, {:.2}× copy",
        v / b.decrypt_mbps,
        v / b.copy_mbps
    )
}

/// Throughput per CPU-second of the tool against the baseline's: what the shared machine's load
/// cannot skew (the wall-clock ratio is what the targets are stated in).
fn cpu_ratio(bytes: u64, cpu_seconds: f64, b: &Baselines) -> String {
    // /proc CPU times tick at 10 ms: shorter operations cannot be normalised.
    if cpu_seconds.is_nan() || cpu_seconds < 0.05 {
        return "; per CPU-second n/a (too short)".into();
    }
    let base = b.bytes as f64 / b.decrypt_cpu;
    format!(
        "; per CPU-second {:.2}× decrypt",
        bytes as f64 / cpu_seconds / base
    )
}

/// A duration as the amount of baseline decrypt work done in the same time (machine-neutral).
fn time_ratio(d: Duration, b: &Baselines) -> String {
    format!(
        "≙ {:.1} MB of baseline decrypt",
        d.as_secs_f64() * b.decrypt_mbps
    )
}

// ---------------------------------------------------------------------------------------------
// Baselines.

struct Baselines {
    blocks: usize,
    bytes: u64,
    decrypt_mbps: f64,
    copy_mbps: f64,
    decrypt_time: Duration,
    /// CPU seconds the decrypt loop's thread actually got (the machine is shared).
    decrypt_cpu: f64,
    /// The same loop with libsodium's `crypto_secretbox_open_easy` called directly.
    sodium_mbps: f64,
    sodium_time: Duration,
    sodium_cpu: f64,
    /// Load average around the two decrypt loops, and around the copy.
    decrypt_span: Span,
    copy_time: Duration,
    copy_cpu: f64,
    copy_span: Span,
}

/// Timings of the two decrypt loops over the same blocks.
struct DecryptTimes {
    product: Duration,
    product_cpu: f64,
    sodium: Duration,
    sodium_cpu: f64,
    bytes: u64,
}

/// Every block of the tree at the snapshot (the blocks `extract` decrypts).
/// `(path, size)` of a planned file.
type PlannedFile = (String, u64);

fn planned_blocks(realm: &Realm) -> Res<(Vec<BlockAccess>, Vec<PlannedFile>)> {
    let t = realm.snapshot();
    let root = realm.resolve("/", t)?;
    let mut walk = Walk::new(realm, t, "/", root, MAX_DEPTH);
    let mut blocks = Vec::new();
    let mut files = Vec::new();
    while let Some(step) = walk.next_step()? {
        let WalkStep::Entry(e) = step else { continue };
        let Some(f) = e.child.version.file() else {
            continue;
        };
        // What extract writes: files whose every block has a realm key this service holds.
        let readable = f.blocks.iter().all(|b| {
            realm
                .block_key_index(&b.id)
                .map_or(true, |k| realm.has_key(k))
        });
        if readable {
            blocks.extend(f.blocks.iter().cloned());
            files.push((e.path, f.size));
        }
    }
    Ok((blocks, files))
}

/// Single-threaded decrypt + size + SHA-256 check of the same blocks, from memory: what
/// Parsec's reader does per block. The blocks are re-sealed under a throwaway key derivation
/// (untimed) because the realm keys never leave the reader; the timed loop is the reader's work:
/// BLAKE2b key derivation per block id, XSalsa20-Poly1305 open, size check, SHA-256 check.
/// Two loops over every batch, alternating which goes first: the product's
/// `crypto::symmetric::secretbox_open`, and libsodium's `crypto_secretbox_open_easy` called
/// directly into a reused buffer (target: the product's loop ≥ 0.9× libsodium's).
/// Done in batches of ≤ 64 MiB to keep the harness's memory bounded.
fn decrypt_baseline(realm: &Realm, blocks: &[BlockAccess]) -> Res<DecryptTimes> {
    let kd = [0x5au8; 32];
    let mut r = DecryptTimes {
        product: Duration::ZERO,
        product_cpu: 0.0,
        sodium: Duration::ZERO,
        sodium_cpu: 0.0,
        bytes: 0,
    };
    let mut batch: Vec<(&BlockAccess, Vec<u8>)> = Vec::new();
    let mut batch_bytes = 0u64;
    let mut buf = Vec::new();
    let mut flushes = 0usize;
    let mut flush = |batch: &mut Vec<(&BlockAccess, Vec<u8>)>| -> Res<()> {
        for pass in 0..2 {
            let sodium = (pass + flushes) % 2 == 1;
            let t0 = Instant::now();
            let c0 = thread_cpu();
            for (b, sealed) in batch.iter() {
                let key = derive_key(&kd, &b.id);
                let ok = if sodium {
                    sodium_open(&key, sealed, &mut buf)
                        && buf.len() as u64 == b.size
                        && sha256(&buf) == b.digest
                } else {
                    let clear = secretbox_open(&key, sealed).map_err(|e| e.to_string())?;
                    clear.len() as u64 == b.size && sha256(&clear) == b.digest
                };
                if !ok {
                    return Err("baseline: block does not verify".into());
                }
                if !sodium {
                    r.bytes += b.size;
                }
            }
            let (wall, cpu) = (t0.elapsed(), thread_cpu() - c0);
            if sodium {
                r.sodium += wall;
                r.sodium_cpu += cpu;
            } else {
                r.product += wall;
                r.product_cpu += cpu;
            }
        }
        flushes += 1;
        batch.clear();
        Ok(())
    };
    for b in blocks {
        let clear = realm.decrypt_block(b).map_err(|e| e.to_string())?;
        let sealed = secretbox_seal(&derive_key(&kd, &b.id), &clear);
        batch_bytes += sealed.len() as u64;
        batch.push((b, sealed));
        if batch_bytes >= 64 << 20 {
            flush(&mut batch)?;
            batch_bytes = 0;
        }
    }
    flush(&mut batch)?;
    Ok(r)
}

/// libsodium's `crypto_secretbox_open_easy` on `nonce(24) || tag(16) || ciphertext`, into `out`.
fn sodium_open(key: &[u8; 32], blob: &[u8], out: &mut Vec<u8>) -> bool {
    if blob.len() < 40 {
        return false;
    }
    let (nonce, boxed) = blob.split_at(24);
    out.resize(boxed.len() - 16, 0);
    // SAFETY: `out` holds boxed.len() - 16 bytes, nonce 24 and key 32 bytes, as libsodium
    // requires; sodium_init ran in main.
    unsafe {
        libsodium_sys::crypto_secretbox_open_easy(
            out.as_mut_ptr(),
            boxed.as_ptr(),
            boxed.len() as u64,
            nonce.as_ptr(),
            key.as_ptr(),
        ) == 0
    }
}

/// Plain copy of `bytes` bytes from the SQLite file to a new file, 1 MiB at a time.
fn copy_baseline(export: &Path, bytes: u64, work: &Path) -> Res<(Duration, f64)> {
    let dest = work.join("copy-baseline.bin");
    let _ = fs::remove_file(&dest);
    let mut buf = vec![0u8; 1 << 20];
    let t0 = Instant::now();
    let c0 = thread_cpu();
    let mut out = fs::File::create(&dest)?;
    let mut left = bytes;
    while left > 0 {
        let mut src = fs::File::open(export)?;
        loop {
            let n = src.read(&mut buf[..(left.min(1 << 20)) as usize])?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])?;
            left -= n as u64;
            if left == 0 {
                break;
            }
        }
    }
    drop(out);
    let d = t0.elapsed();
    let cpu = thread_cpu() - c0;
    fs::remove_file(&dest)?;
    Ok((d, cpu))
}

/// `tar -x` of the tree `extract` just wrote: archived (untimed) into `work`, read once so the
/// archive is in the page cache, then unpacked under GNU time into `work/tar-x` (the same
/// filesystem as `extract`'s destination). Returns the run and the load span around it.
fn tar_baseline(tree: &Path, work: &Path, t: &mut Table) -> Res<(Run, Span)> {
    let archive = work.join("small-tree.tar");
    let dest = work.join("tar-x");
    let _ = fs::remove_dir_all(&dest);
    fs::create_dir_all(&dest)?;
    let status = Command::new("tar")
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(tree)
        .arg(".")
        .status()?;
    if !status.success() {
        return Err(format!("tar -cf failed ({status})").into());
    }
    std::io::copy(&mut fs::File::open(&archive)?, &mut std::io::sink())?;
    t.begin();
    let r = must(
        run(
            &mut measured(
                "tar",
                &[
                    "-xf".as_ref(),
                    archive.as_os_str(),
                    "-C".as_ref(),
                    dest.as_os_str(),
                ],
                work,
            ),
            work,
        )?,
        "tar -x",
    )?;
    let span = t.span();
    fs::remove_dir_all(&dest)?;
    fs::remove_file(&archive)?;
    Ok((r, span))
}

// ---------------------------------------------------------------------------------------------
// Open + verify + recover, in-process.

struct Opened {
    realm: Realm,
    login: Duration,
    unlock: Duration,
    first_ls: Duration,
    token_ops: u32,
}

fn open_in_process(path: &Path, key_uri: &str) -> Res<Opened> {
    let t0 = Instant::now();
    let key = sequester_custody::token::open_key(
        key_uri,
        sequester_custody::token::interaction::non_interactive(),
    )?;
    let login = t0.elapsed();
    let t1 = Instant::now();
    let export = ExportFile::open(path, &OpenOptions::default())?;
    let realm = export.unlock(key.as_ref(), &UnlockOptions::default())?;
    let unlock = t1.elapsed();
    drop(key);
    let t2 = Instant::now();
    let root = realm
        .root_at(realm.snapshot())?
        .ok_or("no root manifest at the snapshot")?;
    let folder = root.folder().ok_or("root manifest unreadable")?;
    let n = realm.children_at(folder, realm.snapshot())?.len();
    let first_ls = t2.elapsed();
    if n == 0 {
        return Err("empty root".into());
    }
    let token_ops = realm.token_operations();
    Ok(Opened {
        realm,
        login,
        unlock,
        first_ls,
        token_ops,
    })
}

/// The all-core manifest baseline: every manifest of the snapshot (the latest
/// version of each entry at or before it) decrypted, signature-checked and decoded by the
/// reader's own `load_version`, on all cores, in a freshly unlocked realm (empty cache), in
/// `vlob_atom` order, no tree walk. `export ls -R /` and a mount's first `ls -R` do this work
/// plus the walk and the output. Returns (wall time, manifests loaded, CPU share).
fn manifest_loop_baseline(export: &Path, key_uri: &str) -> Res<(Duration, usize, f64)> {
    let realm = open_in_process(export, key_uri)?.realm;
    let snapshot = realm.snapshot();
    // Metadata only (small): the latest row at the snapshot of every entry.
    let mut metas: Vec<sequester_custody::export::VersionMeta> = Vec::new();
    realm.for_each_version_meta_by_entry(|m| {
        if m.timestamp > snapshot {
            return Ok(());
        }
        match metas.last_mut() {
            Some(last) if last.vlob_id == m.vlob_id => *last = m,
            _ => metas.push(m),
        }
        Ok(())
    })?;
    let threads = sequester_custody::export::parallel::default_threads();
    let cpu0 = process_cpu();
    let t0 = Instant::now();
    let loaded = sequester_custody::export::parallel::map(&metas, threads, |m| {
        realm
            .load_version(m.clone())
            .map(|v| v.manifest().is_some())
            .unwrap_or(false)
    });
    let wall = t0.elapsed();
    let share = (process_cpu() - cpu0) / wall.as_secs_f64();
    let readable = loaded.iter().filter(|ok| **ok).count();
    if readable != metas.len() {
        return Err(format!(
            "manifest baseline: {} of {} manifests did not load",
            metas.len() - readable,
            metas.len()
        )
        .into());
    }
    Ok((wall, metas.len(), share))
}

/// User + system CPU seconds of this process (all threads).
fn process_cpu() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

// ---------------------------------------------------------------------------------------------
// FUSE mount sessions.

struct Mount {
    child: Child,
    point: PathBuf,
    rss_file: PathBuf,
    ready: Duration,
}

fn is_mounted(point: &Path) -> bool {
    let p = point.to_string_lossy();
    fs::read_to_string("/proc/self/mountinfo")
        .map(|s| s.lines().any(|l| l.split(' ').nth(4) == Some(&*p)))
        .unwrap_or(false)
}

fn mount_available(cli: &Path) -> bool {
    Command::new(cli)
        .args(["export", "mount", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn mount(a: &Args, export: &Path, name: &str) -> Res<Mount> {
    let point = a.work.join(format!("mnt-{name}"));
    if is_mounted(&point) {
        let _ = Command::new("fusermount3").arg("-u").arg(&point).status();
    }
    fs::create_dir_all(&point)?;
    let log = fs::File::create(a.work.join(format!("mount-{name}.log")))?;
    let t0 = Instant::now();
    let mut child = timed_command(a.cli.as_os_str(), &a.work.join(format!("mount-{name}.rss")))
        .arg("export")
        .arg("mount")
        .arg(export)
        .arg(&point)
        .args(["--key", &a.key])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    while !is_mounted(&point) {
        if let Some(st) = child.try_wait()? {
            return Err(format!(
                "export mount exited ({st}) before mounting; see mount-{name}.log"
            )
            .into());
        }
        if t0.elapsed() > Duration::from_secs(600) {
            let _ = child.kill();
            return Err("export mount not ready after 600 s".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(Mount {
        child,
        point,
        rss_file: a.work.join(format!("mount-{name}.rss")),
        ready: t0.elapsed(),
    })
}

impl Mount {
    /// The CLI's pid (child of GNU time).
    fn cli_pid(&self) -> Option<i32> {
        let time_pid = self.child.id();
        fs::read_to_string(format!("/proc/{time_pid}/task/{time_pid}/children"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// CPU seconds (user + system) used so far by the mount process.
    fn cpu(&self) -> f64 {
        let Some(pid) = self.cli_pid() else {
            return f64::NAN;
        };
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // After `(comm)`, the fields start at 3 (state); utime and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            f.get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        (ticks(11) + ticks(12)) / hz
    }

    /// SIGINT to the mount process (clean unmount), then its peak RSS. GNU time ignores SIGINT
    /// while it waits, so the signal goes to its child, the CLI.
    fn stop(mut self) -> Res<f64> {
        let time_pid = self.child.id();
        let children = fs::read_to_string(format!("/proc/{time_pid}/task/{time_pid}/children"))
            .unwrap_or_default();
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: signalling our own grandchild (the CLI under GNU time).
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
        let st = self.child.wait()?;
        if is_mounted(&self.point) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.point)
                .status();
        }
        if !st.success() {
            eprintln!("note: export mount did not exit 0 after SIGINT ({st})");
        }
        Ok(read_rss_mib(&self.rss_file))
    }
}

/// `sha256sum` of every file under `dir`, 8 processes in parallel (the mount's virtual
/// `/.history` time-travel folder left out: it holds the whole tree once per instant).
fn parallel_sha256(dir: &Path, files: usize, work: &Path) -> Res<Run> {
    let per = (files / 32).clamp(1, 256).to_string();
    must(
        run(
            &mut measured(
                "sh",
                &[
                    "-c".as_ref(),
                    "find \"$1\" -path \"$1/.history\" -prune -o -type f -print0 \
                     | xargs -0 -P8 -n \"$2\" sha256sum > /dev/null"
                        .as_ref(),
                    "sh".as_ref(),
                    dir.as_os_str(),
                    per.as_ref(),
                ],
                work,
            ),
            work,
        )?,
        "parallel sha256sum",
    )
}

fn rss_target(t: &mut Table, rss: f64) {
    t.target(
        &format!("RSS < {RSS_LIMIT_MIB:.0} MiB"),
        rss < RSS_LIMIT_MIB,
    );
}

// ---------------------------------------------------------------------------------------------

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|k| format!("{:.1} GiB", k / MIB))
        .unwrap_or_default();
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "{} × {cpu}, {mem} RAM, load average at start {}",
        sequester_custody::export::parallel::default_threads(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// Peak RSS (and time) of extract, `ls -R`, verify and a mount walked with `find` on the
/// 1,000,000-entry export (target: each < 200 MiB). Figures only: the time ratios are against
/// the small export's baselines.
fn million_rows(a: &Args, export: &Path, mount_ok: bool, t: &mut Table, b: &Baselines) -> Res<()> {
    let p = export.to_string_lossy();
    let name = "million";
    let dest = a.work.join("extract-million");
    let custody = a.work.join("extract-million.custody.json");
    let _ = fs::remove_dir_all(&dest);
    let _ = fs::remove_file(&custody);
    let commands: [(&str, Vec<&str>); 3] = [
        (
            "`export ls -R /`",
            vec!["export", "ls", &p, "/", "-R", "--key", &a.key],
        ),
        (
            "`export verify` (exit 0, or 3 = not anchored)",
            vec!["export", "verify", &p, "--key", &a.key],
        ),
        (
            "`export extract` (whole tree, default threads)",
            vec![
                "export",
                "extract",
                &p,
                dest.to_str().ok_or("work path is not UTF-8")?,
                "--key",
                &a.key,
            ],
        ),
    ];
    for (bench, args) in commands {
        t.begin();
        let r = run(&mut cli_cmd(a, &args), &a.work)?;
        if !matches!(r.code, Some(0) | Some(3)) {
            return Err(
                format!("{bench} on the million export failed: {}", r.stderr.trim()).into(),
            );
        }
        t.add(
            bench,
            name,
            format!("{}, RSS {:.0} MiB", secs(r.wall), r.max_rss_mib),
            time_ratio(r.wall, b),
        );
        t.cpu(r.share());
        rss_target(t, r.max_rss_mib);
    }
    let _ = fs::remove_dir_all(&dest);
    let _ = fs::remove_file(&custody);
    if mount_ok {
        t.begin();
        let m = mount(a, export, name)?;
        let cpu0 = m.cpu();
        let walk = must(
            run(
                &mut measured(
                    "sh",
                    &[
                        "-c".as_ref(),
                        "find \"$1\" -path \"$1/.history\" -prune -o -print > /dev/null".as_ref(),
                        "sh".as_ref(),
                        m.point.as_os_str(),
                    ],
                    &a.work,
                ),
                &a.work,
            )?,
            "find through the mount",
        )?;
        let cores = (m.cpu() - cpu0) / walk.wall.as_secs_f64();
        let rss = m.stop()?;
        t.add(
            "FUSE: mount walked with `find`, mount process peak RSS",
            name,
            format!("{rss:.0} MiB (`find` {})", secs(walk.wall)),
            time_ratio(walk.wall, b),
        );
        t.cpu(cores);
        rss_target(t, rss);
    } else {
        t.na(
            "FUSE: mount walked with `find`, mount process peak RSS",
            name,
            "n/a (mount skipped or not available)",
        );
    }
    Ok(())
}

fn cli_cmd(a: &Args, args: &[&str]) -> Command {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|s| s.as_ref()).collect();
    measured(&a.cli, &args, &a.work)
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
}

fn real_main() -> Res<()> {
    CHILD_PIN.get_or_init(|| std::env::var("SEQUESTER_CUSTODY_PIN").ok());
    let a = parse_args()?;
    fs::create_dir_all(&a.work)?;
    // SAFETY: sodium_init is thread-safe and idempotent (the libsodium baseline calls libsodium
    // directly; the product initialises it itself).
    if unsafe { libsodium_sys::sodium_init() } < 0 {
        return Err("sodium_init failed".into());
    }
    let mut t = Table::new(a.max_load, a.settle_max);
    let started = Instant::now();
    let say = |s: &str| eprintln!("[bench {:>6.1}s] {s}", started.elapsed().as_secs_f64());
    println!("Machine: {}", machine());
    let exports: [(&'static str, &Path); 3] = [
        ("large", &a.large),
        ("small", &a.small),
        ("history", &a.history),
    ];
    for (name, p) in exports {
        println!(
            "Export {name}: {} ({:.1} MiB)",
            p.display(),
            fs::metadata(p)?.len() as f64 / MIB
        );
    }

    // 1. Open + verify + recover (in-process), and the plans for the baselines.
    let mut opened = Vec::new();
    for (name, p) in exports {
        say(&format!("open {name}"));
        t.begin();
        let (t0, c0) = (Instant::now(), thread_cpu());
        let o = open_in_process(p, &a.key)?;
        let wall = t0.elapsed().as_secs_f64();
        // CPU times are too coarse for a few milliseconds.
        let share = if wall < 0.05 {
            f64::NAN
        } else {
            (thread_cpu() - c0) / wall
        };
        opened.push((name, o, t.span(), share));
    }

    // 5. Baselines (needed for every ratio), on the large and small exports.
    let mut base = Vec::new();
    let mut largest: Option<(String, u64)> = None;
    let mut file_counts = Vec::new();
    for (i, (name, p)) in exports.iter().enumerate().take(2) {
        say(&format!("baselines {name}"));
        let (blocks, files) = planned_blocks(&opened[i].1.realm)?;
        if i == 0 {
            largest = files.iter().max_by_key(|f| f.1).cloned();
        }
        file_counts.push(files.len());
        t.begin();
        let d = decrypt_baseline(&opened[i].1.realm, &blocks)?;
        let decrypt_span = t.span();
        t.begin();
        let (ct, copy_cpu) = copy_baseline(p, d.bytes, &a.work)?;
        base.push(Baselines {
            blocks: blocks.len(),
            bytes: d.bytes,
            decrypt_mbps: mbps(d.bytes, d.product),
            copy_mbps: mbps(d.bytes, ct),
            decrypt_time: d.product,
            decrypt_cpu: d.product_cpu,
            sodium_mbps: mbps(d.bytes, d.sodium),
            sodium_time: d.sodium,
            sodium_cpu: d.sodium_cpu,
            decrypt_span,
            copy_time: ct,
            copy_cpu,
            copy_span: t.span(),
        });
    }
    let bl = &base[0];
    let bs = &base[1];

    // The all-core manifest loop, the reference of both first `ls -R` figures (small export).
    say("manifest baseline small");
    t.begin();
    let (manifest_loop, manifests, manifest_share) = manifest_loop_baseline(&a.small, &a.key)?;
    t.add(
        "Baseline: in-process all-core loop decrypting + verifying every manifest at the snapshot",
        "small",
        format!("{} ({manifests} manifests)", secs(manifest_loop)),
        time_ratio(manifest_loop, bs),
    );
    t.cpu(manifest_share);
    let vs_manifest_loop = |d: Duration| {
        let r = d.as_secs_f64() / manifest_loop.as_secs_f64();
        (format!("{r:.2}× the all-core manifest loop"), r <= 1.3)
    };

    for (name, o, span, share) in &opened {
        let b = if *name == "small" { bs } else { bl };
        t.add_spanned(
            "Open + verify certs + recover keys (in-process)",
            name,
            format!(
                "{} (token login {}, first `ls /` {})",
                secs(o.unlock),
                secs(o.login),
                secs(o.first_ls)
            ),
            time_ratio(o.unlock + o.first_ls, b),
            *span,
        );
        // The token (SoftHSM2) runs in this thread: its work is included.
        t.cpu(*share);
        if *name == "small" {
            let large_open = opened[0].1.unlock + opened[0].1.first_ls;
            let this = o.unlock + o.first_ls;
            t.target(
                "< 1 s, not growing with entries",
                this.as_secs_f64() < 1.0
                    && this.as_secs_f64() < 1.5 * large_open.as_secs_f64() + 0.05,
            );
        }
        t.add_spanned(
            "Token operations",
            name,
            o.token_ops.to_string(),
            String::new(),
            *span,
        );
        t.target("1 (one keys bundle needed)", o.token_ops == 1);
    }
    // The CLI as an investigator runs it: process start to the first listing.
    for (name, p) in exports {
        t.begin();
        let r = must(
            run(
                &mut cli_cmd(
                    &a,
                    &["export", "ls", &p.to_string_lossy(), "/", "--key", &a.key],
                ),
                &a.work,
            )?,
            "export ls /",
        )?;
        let b = if name == "small" { bs } else { bl };
        t.add(
            "CLI `export ls /` (process start to listing)",
            name,
            format!("{} , RSS {:.0} MiB", secs(r.wall), r.max_rss_mib),
            time_ratio(r.wall, b),
        );
        t.cpu(r.share());
        rss_target(&mut t, r.max_rss_mib);
    }
    drop(opened);

    // 2. Extract.
    let mut extracted_small: Option<PathBuf> = None;
    for (i, (name, p)) in exports.iter().enumerate().take(2) {
        say(&format!("extract {name}"));
        let dest = a.work.join(format!("extract-{name}"));
        let custody = a.work.join(format!("extract-{name}.custody.json"));
        let _ = fs::remove_dir_all(&dest);
        let _ = fs::remove_file(&custody);
        t.begin();
        let r = must(
            run(
                &mut cli_cmd(
                    &a,
                    &[
                        "export",
                        "extract",
                        &p.to_string_lossy(),
                        &dest.to_string_lossy(),
                        "--key",
                        &a.key,
                    ],
                ),
                &a.work,
            )?,
            "export extract",
        )?;
        let record: serde_json::Value = serde_json::from_slice(&fs::read(&custody)?)?;
        let bytes = record["bytes_extracted"]
            .as_u64()
            .ok_or("custody record without bytes_extracted")?;
        let b = &base[i];
        if bytes != b.bytes {
            return Err(
                format!("extract wrote {bytes} bytes, the baseline saw {}", b.bytes).into(),
            );
        }
        let v = mbps(bytes, r.wall);
        let extract_span = t.span();
        // Small files: `tar -x` of the same plaintext tree, same filesystem, archive in the page
        // cache (target: extract ≤ 3× its time).
        let tar = if *name == "small" {
            Some(tar_baseline(&dest, &a.work, &mut t)?)
        } else {
            None
        };
        let mut ratio = thr_ratio(v, b) + &cpu_ratio(bytes, r.cpu, b);
        if let Some((tar_run, _)) = &tar {
            ratio += &format!(
                "; {:.2}× the time of `tar -x`",
                r.wall.as_secs_f64() / tar_run.wall.as_secs_f64()
            );
        }
        t.add_spanned(
            "`export extract` (whole tree, default threads)",
            name,
            format!(
                "{v:.0} MB/s ({:.0} MB in {}), RSS {:.0} MiB",
                bytes as f64 / 1e6,
                secs(r.wall),
                r.max_rss_mib
            ),
            ratio,
            extract_span,
        );
        t.cpu(r.share());
        match &tar {
            Some((tar_run, _)) => t.target(
                &format!("≤ 3× `tar -x`; ≥ 0.5× decrypt; RSS < {RSS_LIMIT_MIB:.0} MiB"),
                r.wall.as_secs_f64() <= 3.0 * tar_run.wall.as_secs_f64()
                    && v >= 0.5 * b.decrypt_mbps
                    && r.max_rss_mib < RSS_LIMIT_MIB,
            ),
            None => t.target(
                &format!("≥ 1.5× decrypt; RSS < {RSS_LIMIT_MIB:.0} MiB"),
                v >= 1.5 * b.decrypt_mbps && r.max_rss_mib < RSS_LIMIT_MIB,
            ),
        }
        if let Some((tar_run, span)) = tar {
            t.add_spanned(
                "Baseline: `tar -x` of the same tree (archive in page cache)",
                name,
                format!(
                    "{} ({:.0} MB/s), RSS {:.0} MiB",
                    secs(tar_run.wall),
                    mbps(bytes, tar_run.wall),
                    tar_run.max_rss_mib
                ),
                String::new(),
                span,
            );
            t.cpu(tar_run.share());
        }
        fs::remove_file(&custody)?;
        if *name == "small" {
            extracted_small = Some(dest);
        } else {
            fs::remove_dir_all(&dest)?;
        }
    }

    // 3. FUSE.
    let mount_ok = !a.skip_mount && mount_available(&a.cli);
    let ls_tree = |dir: &Path| -> Res<Run> {
        must(
            run(
                &mut measured("ls", &["-R".as_ref(), dir.as_os_str()], &a.work),
                &a.work,
            )?,
            "ls -R",
        )
    };
    if mount_ok {
        say("mount large");
        t.begin();
        let m = mount(&a, &a.large, "large")?;
        let ready = m.ready;
        let ready_cpu = m.cpu() / ready.as_secs_f64();
        let ready_span = t.span();
        let (lpath, lsize) = largest.clone().ok_or("no file in the large export")?;
        t.begin();
        let cpu0 = m.cpu();
        let r = must(
            run(
                &mut measured(
                    "cat",
                    &[m.point.join(lpath.trim_start_matches('/')).as_os_str()],
                    &a.work,
                ),
                &a.work,
            )?,
            "cat through the mount",
        )?;
        let cat_v = mbps(lsize, r.wall);
        let cat_cores = (m.cpu() - cpu0) / r.wall.as_secs_f64();
        let cat_span = t.span();
        say("sha256sum ×8 large");
        t.begin();
        let cpu0 = m.cpu();
        let s = parallel_sha256(&m.point, file_counts[0], &a.work)?;
        let sha_v = mbps(bl.bytes, s.wall);
        let sha_cores = (m.cpu() - cpu0) / s.wall.as_secs_f64();
        let sha_span = t.span();
        let rss = m.stop()?;
        t.add_spanned(
            "FUSE: mount ready (spawn to mounted)",
            "large",
            secs(ready),
            time_ratio(ready, bl),
            ready_span,
        );
        t.cpu(ready_cpu);
        t.add_spanned(
            "FUSE: sequential `cat` of the largest file",
            "large",
            format!(
                "{cat_v:.0} MB/s ({:.0} MB in {}; mount process {cat_cores:.1} cores busy)",
                lsize as f64 / 1e6,
                secs(r.wall)
            ),
            thr_ratio(cat_v, bl) + &cpu_ratio(lsize, cat_cores * r.wall.as_secs_f64(), bl),
            cat_span,
        );
        t.cpu(cat_cores);
        t.target("≥ 1.0× decrypt", cat_v >= bl.decrypt_mbps);
        t.add_spanned(
            "FUSE: `sha256sum` of every file, 8 parallel readers",
            "large",
            format!(
                "{sha_v:.0} MB/s ({} files in {}; mount process {sha_cores:.1} cores busy)",
                file_counts[0],
                secs(s.wall)
            ),
            thr_ratio(sha_v, bl) + &cpu_ratio(bl.bytes, sha_cores * s.wall.as_secs_f64(), bl),
            sha_span,
        );
        t.cpu(sha_cores);
        t.target("≥ 1.5× decrypt", sha_v >= 1.5 * bl.decrypt_mbps);
        t.add_spanned(
            "FUSE: mount process peak RSS",
            "large",
            format!("{rss:.0} MiB"),
            String::new(),
            Span {
                before: ready_span.before,
                after: sha_span.after,
            },
        );
        rss_target(&mut t, rss);

        say("mount small");
        t.begin();
        let m = mount(&a, &a.small, "small")?;
        let ready = m.ready;
        let ready_cpu = m.cpu() / ready.as_secs_f64();
        let ready_span = t.span();
        t.begin();
        let cpu0 = m.cpu();
        let ls_mount = ls_tree(&m.point)?;
        let ls_cores = (m.cpu() - cpu0) / ls_mount.wall.as_secs_f64();
        let ls_mount_again = ls_tree(&m.point)?;
        let ls_span = t.span();
        say("sha256sum ×8 small");
        t.begin();
        let cpu0 = m.cpu();
        let s = parallel_sha256(&m.point, file_counts[1], &a.work)?;
        let sha_v = mbps(bs.bytes, s.wall);
        let sha_cores = (m.cpu() - cpu0) / s.wall.as_secs_f64();
        let sha_span = t.span();
        let rss = m.stop()?;
        t.add_spanned(
            "FUSE: mount ready (spawn to mounted)",
            "small",
            secs(ready),
            time_ratio(ready, bs),
            ready_span,
        );
        t.cpu(ready_cpu);
        t.target("< 1 s (lazy)", ready.as_secs_f64() < 1.0);
        let ls_ext = match &extracted_small {
            Some(d) => Some(ls_tree(d)?),
            None => None,
        };
        let (vs_loop, met) = vs_manifest_loop(ls_mount.wall);
        let ratio = match &ls_ext {
            Some(e) => format!(
                "{vs_loop}; {:.2}× `ls -R` of the extracted tree ({})",
                ls_mount.wall.as_secs_f64() / e.wall.as_secs_f64(),
                secs(e.wall)
            ),
            None => vs_loop,
        };
        t.add_spanned(
            "FUSE: `ls -R` of the whole tree (first / cached)",
            "small",
            format!(
                "{} / {} (first: mount process {ls_cores:.1} cores busy)",
                secs(ls_mount.wall),
                secs(ls_mount_again.wall)
            ),
            ratio,
            ls_span,
        );
        t.cpu(ls_cores);
        t.target("first ≤ 1.3× the all-core manifest loop", met);
        t.add_spanned(
            "FUSE: `sha256sum` of every file, 8 parallel readers",
            "small",
            format!(
                "{sha_v:.0} MB/s ({} files in {}; mount process {sha_cores:.1} cores busy)",
                file_counts[1],
                secs(s.wall)
            ),
            thr_ratio(sha_v, bs) + &cpu_ratio(bs.bytes, sha_cores * s.wall.as_secs_f64(), bs),
            sha_span,
        );
        t.cpu(sha_cores);
        t.add_spanned(
            "FUSE: mount process peak RSS",
            "small",
            format!("{rss:.0} MiB"),
            String::new(),
            Span {
                before: ready_span.before,
                after: sha_span.after,
            },
        );
        rss_target(&mut t, rss);
    } else {
        let why = if a.skip_mount {
            "n/a (--skip-mount)"
        } else {
            "n/a (mount not available)"
        };
        for (bench, export) in [
            ("FUSE: sequential `cat` of the largest file", "large"),
            (
                "FUSE: `sha256sum` of every file, 8 parallel readers",
                "large",
            ),
            ("FUSE: `ls -R` of the whole tree", "small"),
            (
                "FUSE: `sha256sum` of every file, 8 parallel readers",
                "small",
            ),
        ] {
            t.na(bench, export, why);
        }
        if let Some(d) = &extracted_small {
            t.begin();
            let e = ls_tree(d)?;
            t.add(
                "`ls -R` of the extracted tree (reference)",
                "small",
                secs(e.wall),
                String::new(),
            );
        }
    }
    if let Some(d) = extracted_small {
        fs::remove_dir_all(d)?;
    }

    // 4. CLI listing / history.
    say("export ls -R / history");
    for (name, p) in [("small", &a.small), ("history", &a.history)] {
        let b = if name == "small" { bs } else { bl };
        t.begin();
        let r = must(
            run(
                &mut cli_cmd(
                    &a,
                    &[
                        "export",
                        "ls",
                        &p.to_string_lossy(),
                        "/",
                        "-R",
                        "--key",
                        &a.key,
                    ],
                ),
                &a.work,
            )?,
            "export ls -R",
        )?;
        let (ratio, met) = if name == "small" {
            let (vs_loop, met) = vs_manifest_loop(r.wall);
            (format!("{vs_loop}; {}", time_ratio(r.wall, b)), Some(met))
        } else {
            (time_ratio(r.wall, b), None)
        };
        t.add(
            "`export ls -R /`",
            name,
            format!("{}, RSS {:.0} MiB", secs(r.wall), r.max_rss_mib),
            ratio,
        );
        t.cpu(r.share());
        match met {
            Some(met) => t.target(
                &format!("≤ 1.3× the all-core manifest loop; RSS < {RSS_LIMIT_MIB:.0} MiB"),
                met && r.max_rss_mib < RSS_LIMIT_MIB,
            ),
            None => rss_target(&mut t, r.max_rss_mib),
        }
    }
    t.begin();
    let r = must(
        run(
            &mut cli_cmd(
                &a,
                &[
                    "export",
                    "history",
                    &a.history.to_string_lossy(),
                    "/h000/file00000.txt",
                    "--key",
                    &a.key,
                ],
            ),
            &a.work,
        )?,
        "export history",
    )?;
    t.add(
        "`export history` of one file (all versions)",
        "history",
        format!("{}, RSS {:.0} MiB", secs(r.wall), r.max_rss_mib),
        time_ratio(r.wall, bl),
    );
    t.cpu(r.share());
    rss_target(&mut t, r.max_rss_mib);

    // 6. The 1,000,000-entry export (optional): memory must not grow with the entry count.
    if let Some(million) = &a.million {
        million_rows(&a, million, mount_ok, &mut t, bs)?;
    }

    for (name, b) in [("large", bl), ("small", bs)] {
        t.add_spanned(
            "Baseline: 1-thread in-memory decrypt + SHA-256 check",
            name,
            format!(
                "{:.0} MB/s ({} blocks, {:.0} MB in {})",
                b.decrypt_mbps,
                b.blocks,
                b.bytes as f64 / 1e6,
                secs(b.decrypt_time)
            ) + &format!(
                "; {:.0} MB per CPU-second",
                b.bytes as f64 / 1e6 / b.decrypt_cpu,
            ),
            format!(
                "1×; {:.2}× libsodium (per CPU-second {:.2}×)",
                b.decrypt_mbps / b.sodium_mbps,
                b.sodium_cpu / b.decrypt_cpu
            ),
            b.decrypt_span,
        );
        t.cpu(b.decrypt_cpu / b.decrypt_time.as_secs_f64());
        t.target("≥ 0.9× libsodium", b.decrypt_mbps >= 0.9 * b.sodium_mbps);
        t.add_spanned(
            "Baseline: same loop, libsodium `crypto_secretbox_open_easy` + SHA-256",
            name,
            format!(
                "{:.0} MB/s ({:.0} MB in {}); {:.0} MB per CPU-second",
                b.sodium_mbps,
                b.bytes as f64 / 1e6,
                secs(b.sodium_time),
                b.bytes as f64 / 1e6 / b.sodium_cpu
            ),
            format!("{:.2}× decrypt", b.sodium_mbps / b.decrypt_mbps),
            b.decrypt_span,
        );
        t.cpu(b.sodium_cpu / b.sodium_time.as_secs_f64());
        t.add_spanned(
            "Baseline: plain copy of as many bytes from the SQLite file",
            name,
            format!("{:.0} MB/s ({})", b.copy_mbps, secs(b.copy_time)),
            format!("{:.2}× decrypt", b.copy_mbps / b.decrypt_mbps),
            b.copy_span,
        );
        t.cpu(b.copy_cpu / b.copy_time.as_secs_f64());
    }
    say("done");
    println!();
    t.print();
    Ok(())
}

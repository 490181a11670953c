//! `generate-export`: writes a synthetic realm export with the export writer, for tests,
//! benchmarks and the demo. Not an investigation tool: the data is made up, and this binary is
//! never shipped (`cargo run -p sequester-export-writer --bin generate-export -- --help`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use clap::Parser;
use sequester_export_writer::scenario::{self, ServiceInput, Shape};
use sequester_export_writer::WriterConfig;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ShapeName {
    /// Every reader path: rotations, renames, deletions, overwrites, partial readability.
    Mixed,
    /// Files of 4–64 MiB up to --size.
    Large,
    /// --files files of 1–16 KiB in --folders folders.
    Small,
    /// --files files with --versions versions each and --rotations key rotations.
    History,
}

/// Write a synthetic Parsec realm export (tests, benchmarks, demo) and optionally its ground truth.
#[derive(Debug, Parser)]
#[command(name = "generate-export", version)]
struct GenerateArgs {
    /// Machine-readable JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Output export file (written to a temporary sibling, then renamed).
    output: PathBuf,
    #[arg(long, value_enum, default_value = "mixed")]
    shape: ShapeName,
    /// Public key of a sequester service (PEM `PUBLIC KEY` or SPKI DER file); repeat for more.
    /// With `mixed`, the first is the main service and the second a late, revoked one.
    #[arg(long = "service-pubkey", value_name = "FILE")]
    service_pubkeys: Vec<PathBuf>,
    /// Where to write the ground truth (JSON).
    #[arg(long)]
    truth: Option<PathBuf>,
    /// Approximate plaintext size for `large` (bytes; suffixes K, M, G accepted).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    size: u64,
    /// Number of files (`small`, `history`; extra small files for `mixed`).
    #[arg(long)]
    files: Option<usize>,
    #[arg(long, default_value_t = 3000)]
    folders: usize,
    /// Smallest file of `small` (bytes; suffixes K, M, G accepted).
    #[arg(long, default_value = "1K", value_parser = parse_size)]
    min_file_size: u64,
    /// Largest file of `small` (the 1,000,000-entry benchmark export uses small files).
    #[arg(long, default_value = "16K", value_parser = parse_size)]
    max_file_size: u64,
    #[arg(long, default_value_t = 50)]
    versions: usize,
    #[arg(long, default_value_t = 20)]
    rotations: usize,
    /// Number of multi-MiB files for `mixed`.
    #[arg(long, default_value_t = 0)]
    big_files: usize,
    #[arg(long, default_value = "512K", value_parser = parse_size)]
    blocksize: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Size of the generated authority RSA key.
    #[arg(long, default_value_t = 2048)]
    authority_bits: usize,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = s[i..].to_ascii_uppercase();
            let mult = match unit.trim_end_matches("IB").trim_end_matches('B') {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                _ => return Err(format!("unknown size unit in `{s}`")),
            };
            (&s[..i], mult)
        }
        None => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| format!("`{s}` is not a size"))
}

fn read_spki(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if raw.starts_with(b"-----BEGIN") {
        let p = pem::parse(&raw).with_context(|| format!("{} is not valid PEM", path.display()))?;
        anyhow::ensure!(
            p.tag() == "PUBLIC KEY",
            "{}: expected a `PUBLIC KEY` PEM block, found `{}`",
            path.display(),
            p.tag()
        );
        Ok(p.into_contents())
    } else {
        Ok(raw)
    }
}

fn main() -> ExitCode {
    match run(GenerateArgs::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let services = args
        .service_pubkeys
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Ok(ServiceInput {
                label: format!("Generated Service {}", i + 1),
                spki_der: read_spki(p)?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if args.min_file_size > args.max_file_size {
        anyhow::bail!(
            "--min-file-size ({}) is larger than --max-file-size ({})",
            args.min_file_size,
            args.max_file_size
        );
    }
    let shape = match args.shape {
        ShapeName::Mixed => Shape::Mixed {
            small_files: args.files.unwrap_or(0),
            big_files: args.big_files,
            big_file_size: 3 * 1024 * 1024 + 17,
        },
        ShapeName::Large => Shape::LargeFiles {
            total_bytes: args.size,
            min_file: 4 << 20,
            max_file: 64 << 20,
        },
        ShapeName::Small => Shape::SmallFiles {
            files: args.files.unwrap_or(100_000),
            folders: args.folders,
            min_size: args.min_file_size,
            max_size: args.max_file_size,
        },
        ShapeName::History => Shape::DeepHistory {
            files: args.files.unwrap_or(3000),
            versions: args.versions,
            rotations: args.rotations,
        },
    };
    let config = WriterConfig {
        blocksize: args.blocksize,
        seed: args.seed,
        threads: args.threads,
        authority_bits: args.authority_bits,
        // The tree at the snapshot is only needed for the ground truth file.
        record_tree: args.truth.is_some(),
        ..WriterConfig::default()
    };
    let truth = scenario::generate(&args.output, config, &shape, &services)
        .with_context(|| format!("generating {}", args.output.display()))?;
    if let Some(path) = &args.truth {
        write_json_atomic(path, &truth)?;
    }
    let s = &truth.stats;
    // writeln!, not println!: a closed stdout (`generate-export … | head`) is an error, not a panic.
    let mut stdout = std::io::stdout().lock();
    if args.json {
        writeln!(
            stdout,
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "output": args.output,
                "realm_id": truth.realm_id,
                "snapshot": truth.snapshot,
                "stats": s,
            }))?
        )?;
    } else {
        writeln!(
            stdout,
            "Wrote {} (realm {}, snapshot {}): {} files, {:.1} MiB plaintext, {} blocks, {} manifests, {:.1} s ({:.0} MB/s)",
            args.output.display(),
            truth.realm_id,
            truth.snapshot,
            s.files_written,
            s.plaintext_bytes as f64 / (1 << 20) as f64,
            s.blocks,
            s.vlob_atoms,
            s.seconds,
            s.plaintext_bytes as f64 / 1e6 / s.seconds.max(1e-9)
        )?;
    }
    Ok(())
}

/// Streams `value` as JSON to `path` through the product's one atomic writer (replacing it),
/// readable by all like the export itself.
fn write_json_atomic(path: &std::path::Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    sequester_custody::fsutil::publish(path, sequester_custody::fsutil::Existing::Replace, |out| {
        serde_json::to_writer_pretty(out, value).map_err(std::io::Error::other)
    })
    .with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

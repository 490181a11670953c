//! Replays the committed fuzz corpus and every crash input (fuzz/corpus/TARGET,
//! fuzz/regressions/TARGET) through the same entry functions as the cargo-fuzz targets, on
//! stable: no input may panic, and each must finish in bounded time.

use std::path::Path;
use std::time::{Duration, Instant};

use sequester_custody::fuzz_entry::TARGETS;

/// Per input, in an unoptimised test build of the crate (the fuzzer's own timeout is 10 s on an
/// optimised build; corpus inputs take milliseconds).
const MAX_PER_INPUT: Duration = Duration::from_secs(20);

fn inputs(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_has_a_corpus_and_every_input_replays_without_panic() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut summary = Vec::new();
    for (name, entry) in TARGETS {
        assert!(
            fuzz.join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "fuzz target file for `{name}` missing"
        );
        let corpus = inputs(&fuzz.join("corpus").join(name));
        assert!(!corpus.is_empty(), "no committed corpus for `{name}`");
        let regressions = inputs(&fuzz.join("regressions").join(name));
        let mut slowest = Duration::ZERO;
        for path in corpus.iter().chain(&regressions) {
            let data = std::fs::read(path).unwrap();
            let start = Instant::now();
            let outcome = std::panic::catch_unwind(|| entry(&data));
            let took = start.elapsed();
            assert!(outcome.is_ok(), "{name}: {} panics", path.display());
            assert!(
                took < MAX_PER_INPUT,
                "{name}: {} took {took:?}",
                path.display()
            );
            slowest = slowest.max(took);
        }
        summary.push(format!(
            "{name}: {} corpus + {} regression inputs, slowest {slowest:?}",
            corpus.len(),
            regressions.len()
        ));
    }
    eprintln!("{}", summary.join("\n"));
}

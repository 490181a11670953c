//! Export tests: the fixture, generated, hostile and real-server exports.
//! One test binary (the crate links once); one module per area, sharing `tests/common`.

#[path = "../common/mod.rs"]
mod common;

mod adversarial_exports;
mod export_errors;
mod export_fixture;
mod export_generated;
mod export_hostile;
mod export_hostile_sqlite;
mod export_interop;
mod export_trust;
mod fuzz_corpus;

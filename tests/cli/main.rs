//! CLI tests: generated assets, doctor, the package list, snapshots of what the CLI prints.
//! One test binary (the crate links once); one module per area, sharing `tests/common`.

#[path = "../common/mod.rs"]
mod common;

mod assets;
mod doctor;
mod packages;
mod snapshots;

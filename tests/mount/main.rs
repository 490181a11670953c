//! Mount tests: real FUSE mounts of the fixture and of generated exports.
//! One test binary (the crate links once); one module per area, sharing `tests/common`.

#[path = "../common/mod.rs"]
mod common;

mod mount_fixture;
mod mount_generated;

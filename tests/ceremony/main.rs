//! Ceremony tests: key ceremonies, transcripts, service certificates, the real Parsec server as judge.
//! One test binary (the crate links once); one module per area, sharing `tests/common`.

#[path = "../common/mod.rs"]
mod common;

mod ceremony_run;
mod cert_show;
mod cert_sign;
mod interop_parsec_server;
mod key_transcript;

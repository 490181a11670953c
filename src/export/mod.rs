//! Realm export reader and writer (issue 4).

pub mod writer;

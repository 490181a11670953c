//! Realm export reader and writer (issue 4).

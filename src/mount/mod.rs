//! Read-only FUSE view of a realm export (issue 5).

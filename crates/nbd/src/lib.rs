//! NBD protocol: server for push backups, client for snapshot reads, image access
//!
//! Not implemented yet.

#![forbid(unsafe_code)]

//! Backup engine: live copy-before-write backups into VMA archives
//!
//! Not implemented yet.

//! Backup engine: live copy-before-write backups into VMA archives.
//!
//! (Design note filled in below as the pieces land.)

#![warn(missing_docs)]

pub mod backup;
pub mod cluster;
mod error;
pub mod freeze;
pub mod job;
pub mod live;
pub mod log;
pub mod name;
pub mod notes;
pub mod options;
pub mod output;
pub mod pipeline;
pub mod progress;
pub mod stopped;
pub mod target;

pub use backup::{backup_vm, BackupJob, BackupReport};
pub use error::{Error, Result};

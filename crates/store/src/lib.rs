//! Backup storage: where archives live, how they are named, listed, annotated and pruned.
//!
//! A backup storage is a directory (`<storage path>/dump`, or a plain `dumpdir`) holding
//! `vzdump-<type>-<vmid>-<YYYY_MM_DD-HH_MM_SS>.vma[.zst|.lzo|.gz]` (or `.tar…` for
//! containers) with `.log`, `<archive>.notes` and `<archive>.protected` beside it, exactly as
//! Proxmox VE lays it out ([`layout`]). Volume ids are `<storage>:backup/<file name>`.
//!
//! - [`layout`]: the naming rule (one home: the engine's `ArchiveName` builds new names with
//!   [`layout::base_name`]).
//! - [`catalog`]: listing a storage (one `readdir`, no per-file reads except notes), notes,
//!   protection, removal (refused for protected backups).
//! - [`retention`]: the pure planner: Proxmox's `prune_mark_backup_group` — each backup marked
//!   keep/remove/protected/renamed with the rule that kept it. No I/O.
//! - [`prune`]: the policy's precedence (job/command line → storage → vzdump.conf → keep-all),
//!   the limits checked before a backup (`remove 0` cap, `max-protected-backups`), and applying
//!   a plan (archive, `.log` and `.notes` go together; protected backups are never touched).
//!
//! Invariants: a protected backup is never deleted (the planner marks it, and apply re-checks
//! the marker file right before deleting); applying a plan twice changes nothing; a file whose
//! name is not a standard backup name is listed but never pruned.
//!
//! ```no_run
//! # fn demo() -> vmdump_store::Result<()> {
//! use vmdump_store::{catalog::Storage, prune, Filter};
//! let root = vmdump_config::ConfigRoot::from_env(None);
//! let storage = Storage::open(&root, "local")?;
//! let backups = storage.list(&Filter { vmid: Some(100), ..Default::default() })?;
//! let keep = vmdump_config::KeepOptions::parse("keep-last=3").expect("valid");
//! let plan = prune::plan(&backups, &keep);
//! let removed = prune::apply(&storage, &plan)?;
//! # let _ = removed; Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod catalog;
mod error;
pub mod layout;
pub mod prune;
pub mod retention;

pub use catalog::{Backup, Filter, Storage};
pub use error::{Error, ErrorKind, Result};
pub use layout::GuestType;

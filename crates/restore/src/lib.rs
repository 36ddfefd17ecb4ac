//! Restore of VMA archives to storage: the qmrestore of vmdump.
//!
//! # Design
//!
//! [`restore`] is [`plan`] then apply, the same shape as a backup: the plan takes the VM
//! lock, checks the VM to overwrite, reads a `.vma[.zst|.lzo|.gz]` stream's header (file or
//! stdin; the compression is detected from the magic bytes), takes `qemu-server.conf` (and
//! `qemu-server.fw`) from it and plans every device through its `#qmdump#map` line
//! ([`DiskPlan`]); nothing is written. Apply allocates new volumes `vm-<vmid>-disk-<N>`,
//! writes the data, rewrites the config and writes it last, atomically. Log lines and
//! progress go to a [`Progress`] (the interface backup uses too); [`Cancel`] aborts.
//!
//! Data path (all stages run in parallel, connected by bounded channels):
//!
//! ```text
//! source ─► [throttle] ─► decompressor thread/process ─► parser (vma::Reader, validates
//!           every extent) ─► per-disk batches ─► one writer thread per disk
//!                                                 raw: pwrite of non-zero blocks, holes elsewhere
//!                                                 qcow2/vmdk: qemu-storage-daemon + NBD client
//! ```
//!
//! Clusters are written where they belong as they arrive (archives are out of order).
//! Every target is new and reads as zeros, so zero blocks are never written.
//!
//! Invariants:
//! - all-or-nothing: until the config is written, a failure (corrupt or truncated archive,
//!   disk full, tool failure, interrupt) removes every new volume and writes no config;
//! - an existing VM is only replaced with `force`, never while running or protected, and
//!   its old disks are removed only after the new config is in place;
//! - memory is bounded: a few extent-sized buffers per disk, one bit per cluster.
//!
//! [`restore_live`] (`vmdump restore --live`) starts the VM at once on overlays over the
//! archive's disks served over NBD and mirrors them onto the new volumes in the background
//! (see its module notes and `docs/design/live-restore.md`).
//!
//! # Example
//!
//! ```no_run
//! # fn demo() -> vmdump_restore::Result<()> {
//! let root = vmdump_config::ConfigRoot::from_env(None);
//! let mut opts = vmdump_restore::Options::new(root, vmdump_config::VmId::new(101)?);
//! opts.storage = Some("local".into());
//! let archive = std::fs::File::open("vzdump-qemu-100-2025_01_01-00_00_00.vma.zst").unwrap();
//! let summary = vmdump_restore::restore(Box::new(archive), &opts, &vmdump_restore::Silent)?;
//! println!("config written to {}", summary.config_path.display());
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod ct;
mod error;
mod input;
mod live;
mod pipeline;
mod plan;
mod restore;
mod rewrite;
mod volume;

pub use ct::{is_container_archive, restore_ct, CtOptions, CtSummary};
pub use error::{Error, ErrorKind, Result};
pub use live::{restore_live, LiveSummary, LIVE_LOCK};
pub use pipeline::{DiskStats, Stats};
pub use plan::DiskPlan;
pub use restore::{plan, restore, Options, RestorePlan, RestoredDisk, Summary};
pub use vmdump_task::{Cancel, Level, Progress, Silent, Transfer};

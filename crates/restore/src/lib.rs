//! Restore of VMA archives to storage: the qmrestore of vmdump.
//!
//! # Design
//!
//! [`restore`] reads a `.vma[.zst|.lzo|.gz]` stream (file or stdin; the compression is
//! detected from the magic bytes), takes `qemu-server.conf` (and `qemu-server.fw`) from the
//! header, plans every device through its `#qmdump#map` line ([`plan`]), allocates new
//! volumes `vm-<vmid>-disk-<N>` ([`volume`]), writes the data, rewrites the config
//! ([`rewrite`]) and writes it last, atomically.
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
//! # Example
//!
//! ```no_run
//! # fn demo() -> vmdump_restore::Result<()> {
//! let root = vmdump_config::ConfigRoot::from_env(None);
//! let mut opts = vmdump_restore::Options::new(root, 101);
//! opts.storage = Some("local".into());
//! let archive = std::fs::File::open("vzdump-qemu-100-2025_01_01-00_00_00.vma.zst").unwrap();
//! let summary = vmdump_restore::restore(Box::new(archive), &opts, &mut |line| println!("{line}"))?;
//! println!("config written to {}", summary.config_path.display());
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod error;
pub mod input;
pub mod pipeline;
pub mod plan;
mod restore;
pub mod rewrite;
pub mod volume;

pub use error::{Error, ErrorKind, Result};
pub use restore::{restore, vm_running, Options, RestoredDisk, Summary};

//! Backup engine: live copy-before-write backups into VMA archives (the vzdump of vmdump).
//!
//! **Data path** (push mode, see `docs/design/live-backup.md`): for every disk of a VM, QEMU
//! runs a `blockdev-backup` job (`sync: full`) whose target is an NBD client node connected to
//! the [`target`] server in this process. All jobs start in one grouped `transaction`, so every
//! disk shares one point in time; the guest's filesystems are frozen through the agent
//! ([`freeze`]) just around that transaction. From then on QEMU pushes each 64 KiB cluster
//! exactly once: in the background scan, or ahead of a guest write that would overwrite it
//! (copy-before-write). NBD writes arrive out of order; the [`cluster`] assembler turns them
//! into whole clusters, which go through one bounded channel to one writer thread
//! ([`pipeline`]) owning `vmdump_vma::Writer` → compressor ([`output`]) → `<name>.dat`. The
//! bounded channel is the backpressure: a slow archive slows QEMU's job, never grows memory.
//!
//! **Commit**: all jobs reach `pending`, one `job-finalize` concludes them, `job-dismiss`, then
//! `blockdev-del` of the target nodes makes QEMU send `FLUSH` + `DISC`: only then is the
//! transfer complete. The writer checks that every cluster arrived, the file is fsynced and
//! renamed to its final name ([`name`]). A failed backup never leaves a file with a final
//! archive name.
//!
//! **Safety invariants**: the NBD target never fails a request (a failed write could be a
//! guest's write waiting for its copy-before-write); archive errors are recorded, the
//! remaining data is acknowledged and discarded, and the control task cancels the jobs
//! ([`job::abort`]). Thaw is sent on every path. Jobs and nodes are named `vmdump-*`, so a run
//! killed with SIGKILL leaves nothing the next run cannot find and remove
//! ([`job::clean_stale`]). A VM that is not running is backed up from a QEMU started paused
//! for the purpose ([`stopped`]) and quit afterwards.
//!
//! **Layers**: [`live::run`] is one push backup of a QEMU's disks into one file (tests call it
//! directly); [`backup_vm`] adds the configuration (`vmdump-config`), names, the vzdump task
//! log ([`log`], [`progress`]), notes and protection. Options and their vzdump precedence are
//! in [`options`]. The CLI maps its arguments onto [`options::Settings`] and implements
//! [`progress::Progress`] (indicatif lives only there).
//!
//! ```no_run
//! # async fn demo() -> vmdump_engine::Result<()> {
//! use vmdump_engine::options::Settings;
//! let root = vmdump_config::ConfigRoot::from_env(None);
//! let (job, _warnings) = vmdump_engine::BackupJob::new(root, &Settings::default())?;
//! let lock = job.lock(|| println!("trying to get global lock - waiting...")).await?;
//! let report =
//!     vmdump_engine::backup_vm(&job, &lock, 100, &vmdump_engine::progress::Silent).await?;
//! println!("{} ({} bytes)", report.archive.display(), report.size);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod backup;
pub mod cluster;
mod error;
pub mod freeze;
pub mod job;
pub mod live;
pub mod lock;
pub mod log;
/// Archive names live in the backup storage crate (one home for the naming rule).
pub use vmdump_store::layout as name;
pub mod notes;
pub mod options;
pub mod output;
pub mod pipeline;
pub mod progress;
pub mod stopped;
pub mod target;

pub use backup::{backup_vm, BackupJob, BackupReport};
pub use error::{Error, Result};

//! Backup engine: live copy-before-write backups into VMA archives (the vzdump of vmdump).
//!
//! **Data path** (push mode, see `docs/design/live-backup.md`): for every disk of a VM, QEMU
//! runs a `blockdev-backup` job (`sync: full`) whose target is an NBD client node connected to
//! the NBD target server (`target`) in this process. All jobs start in one grouped `transaction`, so every
//! disk shares one point in time; the guest's filesystems are frozen through the agent
//! (`freeze`) just around that transaction. From then on QEMU pushes each 64 KiB cluster
//! exactly once: in the background scan, or ahead of a guest write that would overwrite it
//! (copy-before-write). NBD writes arrive out of order; the cluster assembler (`cluster`) turns them
//! into whole clusters, which go through one bounded channel to one writer thread
//! (`pipeline`) owning `vmdump_vma::Writer` → compressor (`output`) → `<name>.dat`. The
//! bounded channel is the backpressure: a slow archive slows QEMU's job, never grows memory.
//!
//! **Commit**: all jobs reach `pending`, one `job-finalize` concludes them, `job-dismiss`, then
//! `blockdev-del` of the target nodes makes QEMU send `FLUSH` + `DISC`: only then is the
//! transfer complete. The writer checks that every cluster arrived, the file is fsynced and
//! renamed to its final name (`name`). A failed backup never leaves a file with a final
//! archive name.
//!
//! **Safety invariants**: the NBD target never fails a request (a failed write could be a
//! guest's write waiting for its copy-before-write); archive errors are recorded, the
//! remaining data is acknowledged and discarded, and the control task cancels the jobs
//! (`job::abort`). Thaw is sent on every path. Jobs and nodes are named `vmdump-*`, so a run
//! killed with SIGKILL leaves nothing the next run cannot find and remove
//! (`job::clean_stale`). A VM that is not running is backed up from a QEMU started paused
//! for the purpose by the VM runtime (`vmdump_guest::Runtime::start_backup_helper`: the VM's
//! node names, only its disks, dies with vmdump) and quit afterwards.
//!
//! **Layers**: [`live_backup`] is one push backup of a QEMU's disks into one file (tests call
//! it directly); [`backup_vm`] is [`plan`] (every check before a side effect) then apply: the
//! configuration (`vmdump-config`), names, the vzdump task log ([`TaskLog`]), notes and
//! protection. Options and their vzdump precedence are in [`Resolved`]. The CLI fills a
//! `vmdump_config::VzdumpOptions` from its arguments and implements [`Progress`] (shared with
//! restore through `vmdump-task`; indicatif lives only in the CLI).
//!
//! ```no_run
//! # async fn demo() -> vmdump_engine::Result<()> {
//! let root = vmdump_config::ConfigRoot::from_env(None);
//! let cli = vmdump_config::VzdumpOptions::default();
//! let run_dir = vmdump_guest::run_base_from_env();
//! let (job, _warnings) = vmdump_engine::BackupJob::new(root, &cli, run_dir)?;
//! let lock = job.lock(|| println!("trying to get global lock - waiting...")).await?;
//! let vmid = vmdump_config::VmId::new(100)?;
//! let report = vmdump_engine::backup_vm(&job, &lock, vmid, &vmdump_engine::Silent).await?;
//! println!("{} ({} bytes)", report.archive.display(), report.size);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod backup;
mod cluster;
mod ct;
mod error;
mod freeze;
mod hook;
mod ionice;
mod job;
mod live;
mod lock;
mod log;
mod name;
mod notes;
mod options;
mod output;
mod pipeline;
mod progress;
mod target;
mod tmpdir;
mod vm;

pub use backup::{
    backup_vm, backup_vm_with, plan, AfterArchive, BackupJob, BackupPlan, BackupReport, NoAfter,
    Source,
};
pub use ct::{backup_ct, plan_ct, CtBackupPlan, CtSource};
pub use error::{Error, ErrorKind, Failure, Result};
pub use hook::{GuestCall, Hook, Phase};
pub use job::SourceDisk;
pub use live::{run as live_backup, LiveOptions, LiveOutcome};
pub use lock::JobLock;
pub use log::TaskLog;
pub use name::ArchiveName;
pub use options::{
    CtSettings, Destination, Resolved, DEFAULT_IONICE, DEFAULT_LOCKWAIT, DEFAULT_STOPWAIT,
    UNSUPPORTED_KEYS,
};
pub use progress::{format_hms, format_size, render_bytes, render_duration};
pub use vm::fleece::FleecingPlan;
pub use vmdump_task::{Cancel, Level, Progress, Silent, Transfer};

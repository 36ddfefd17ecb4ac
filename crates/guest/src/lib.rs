//! VM runtime: start QEMU from a qemu-server config, track it, shut it down.
//!
//! [`Runtime`] turns `qemu-server/<vmid>.conf` (via `vmdump-config`) into a QEMU command line
//! ([`LaunchPlan`]) and manages the process:
//!
//! - **Process model:** QEMU runs with `-daemonize -pidfile`, so it outlives the CLI;
//!   `vmdump vm status` in another process finds it through the run directory
//!   ([`RunDir`], default `/run/vmdump/<vmid>/`). A pid file whose process is gone (or is no
//!   longer our QEMU: the command line must name that pid file) is stale and cleaned on the
//!   next `start`/`status`. Every QEMU is started through `vmdump-launch` (the one place
//!   vmdump starts processes), which also reaps what killed vmdump runs left before a
//!   `start` or `status`.
//! - **Backup helper:** a stopped VM is backed up from a QEMU started by
//!   [`Runtime::start_backup_helper`]: the same command-line builder (node names, comma
//!   escaping), but `-machine none`, paused, only the backed-up disks, not daemonized; it
//!   dies with vmdump and is recorded in the run's session.
//! - **Monitors:** two QMP sockets, `qmp.sock` for long-lived clients (the backup engine) and
//!   `ctl.sock` for the runtime's short exchanges, because QEMU serves one client per monitor.
//! - **Block nodes:** the naming scheme the backup engine relies on is documented in
//!   [`cmdline`]: format node `drive-<key>`, protocol node `file-<key>`, qdev id `<key>`,
//!   QOM path `/machine/peripheral/<key>` (`.../virtio-backend` for virtio-blk).
//! - **Accelerator:** see [`accel`]: KVM only on a bare-metal host with a usable `/dev/kvm`
//!   (nested KVM hangs booting Linux), TCG otherwise; `$VMDUMP_ACCEL` forces one.
//! - **Shutdown:** ACPI power button → (with `agent: 1`) agent `guest-shutdown` → hard stop
//!   (`quit`, SIGTERM, SIGKILL), each with a deadline. No stray QEMU or socket is left.
//!
//! Non-goals: bridges/tap networking (netN use user-mode networking), swtpm, live migration,
//! hotplug, VGA (guests run headless, serial console to `serial.log`).
//!
//! ```no_run
//! # async fn demo() -> vmdump_guest::Result<()> {
//! use std::time::Duration;
//! use vmdump_guest::{Runtime, StartOptions};
//!
//! let rt = Runtime::new(vmdump_config::ConfigRoot::from_env(None));
//! let started = rt.start(100, &StartOptions { paused: true, ..Default::default() }).await?;
//! for d in &started.plan.disks {
//!     println!("{} -> node {} ({})", d.key, d.node_name, d.path.display());
//! }
//! rt.resume(100).await?;
//! rt.shutdown(100, Duration::from_secs(60)).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod accel;
pub mod cmdline;
mod error;
mod mark;
mod rundir;
mod runtime;

pub use accel::Accel;
pub use cmdline::{node_names, overlay_nodes, qom_path, DiskNode, DiskOverlay, LaunchPlan};
pub use error::{Error, ErrorKind, Result};
pub use mark::{BackupMark, Hold, Leftover, MarkState};
pub use rundir::{try_lock_file, RunDir, VmLock};
pub use runtime::{
    run_state_name, BackupHelper, Runtime, ShutdownOptions, ShutdownOutcome, StartOptions, Started,
    State, VmSummary, QEMU_ENV,
};
pub use vmdump_launch::{run_base_from_env, DEFAULT_RUN_BASE, RUN_BASE_ENV};

//! The one place vmdump starts processes: QEMU (the VM and the paused helper of a stopped-VM
//! backup) and `qemu-storage-daemon`, and what a run leaves behind in the run directory.
//!
//! # Guarantees
//! - **A helper dies with vmdump.** [`Session::spawn`] starts a child with
//!   `PR_SET_PDEATHSIG(SIGKILL)` set between fork and exec, and checks that the parent did not
//!   die before that. Linux sends the signal when the *thread* that forked the child exits,
//!   not the process, and tokio's worker and blocking-pool threads come and go; so every
//!   helper is forked by one dedicated spawner thread ([`spawn`]) that lives as long as the
//!   process. A VM started by `vmdump vm start` is meant to outlive the CLI: it goes through
//!   [`spawn::spawn`] without the death signal (QEMU daemonizes, the intermediate process is
//!   awaited).
//! - **A helper is recorded.** Each [`Session`] is a directory
//!   `<run base>/session/<pid>-<start>-<n>/` named after its owner (pid and start time, so a
//!   recycled pid is never mistaken for it). It holds one record per helper process
//!   (`proc-<pid>`: pid, start time, program), one per volume being created (`volume-<n>`:
//!   the file to remove if the run does not finish) and the helpers' private socket
//!   directories (`tmp-<n>/`). Records are written before the volume is created and right
//!   after the process is spawned.
//! - **Leftovers are reaped.** [`reap_leftovers`] (run by every [`Session::open`], and by
//!   `vmdump vm status` through the VM runtime) finds sessions whose owner is gone, kills
//!   their helpers that still run (pid *and* start time must match), removes their partial
//!   volumes and temporary directories, and warns about each.
//!
//! # Layout
//! [`process`]: liveness, start times, signals; [`spawn`]: the spawner thread;
//! [`session`]: sessions, helpers, records, reaping.

#![warn(missing_docs)]

mod error;
pub mod process;
pub mod session;
pub mod spawn;

pub use error::{Error, Result};
pub use process::ProcId;
pub use session::{reap_leftovers, reap_leftovers_async, Helper, Reaped, Session, VolumeRecord};

use std::path::PathBuf;

/// Default base of run directories.
pub const DEFAULT_RUN_BASE: &str = "/run/vmdump";
/// Environment variable overriding the run base.
pub const RUN_BASE_ENV: &str = "VMDUMP_RUN_DIR";

/// The run base every vmdump command uses: `$VMDUMP_RUN_DIR` if set and not empty, else
/// [`DEFAULT_RUN_BASE`]. The VM runtime, the backup engine and restore must agree on it.
pub fn run_base_from_env() -> PathBuf {
    std::env::var_os(RUN_BASE_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_RUN_BASE), PathBuf::from)
}

/// A path as a value in QEMU's `key=value,...` option syntax (`-chardev`, `--nbd-server`,
/// `-drive`): commas are doubled, so a path containing `,` stays one value.
pub fn qemu_opt_path(path: &std::path::Path) -> String {
    path.display().to_string().replace(',', ",,")
}

#[cfg(test)]
mod tests {
    #[test]
    fn option_values_escape_commas() {
        assert_eq!(super::qemu_opt_path("/a,b/c,,d".as_ref()), "/a,,b/c,,,,d");
    }
}

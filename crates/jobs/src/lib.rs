//! Scheduled backup jobs: running a job, the scheduler service, notifications and systemd
//! units. The CLI (`vmdump jobs …`, `vmdump scheduler`, the prune after `vmdump backup`) and
//! a web API call this crate; it holds no command-line concerns.
//!
//! - [`run`]: a job run — selection, the engine's backup of each guest under the node-global
//!   lock, retention around each guest ([`run::Retention`]: the `remove 0` cap and
//!   `max-protected-backups` before, the prune after), the [`notify::Summary`].
//! - [`scheduler`]: due-job computation from jobs.cfg and the on-disk [`state`], sequential
//!   runs, `repeat-missed`, one scheduler per host (a `flock`).
//! - [`notify`]: the summary text and JSON; SMTP (STARTTLS/TLS/plain, login), sendmail,
//!   webhook; `always|failure`; a failed delivery is logged, never an error of the job.
//! - [`systemd`]: service and timer units as an alternative to the scheduler.
//!
//! Job definitions are parsed by `vmdump-config` (`jobs.cfg`, `notifications.cfg`),
//! calendar events by `vmdump-schedule`, retention by `vmdump-store`.
//!
//! ```no_run
//! # async fn demo() -> vmdump_jobs::Result<()> {
//! let root = vmdump_config::ConfigRoot::from_env(None);
//! let job = root.jobs()?.get("nightly").ok_or_else(|| vmdump_jobs::Error::NoSuchJob("nightly".into()))?;
//! let run_dir = std::path::PathBuf::from("/run/vmdump");
//! let summary = vmdump_jobs::run::run_job(&root, &run_dir, &job, &vmdump_task::Silent).await;
//! println!("{}", summary.subject());
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod error;
pub mod notify;
pub mod run;
pub mod scheduler;
pub mod state;
pub mod systemd;

pub use error::{Error, ErrorKind, Result};

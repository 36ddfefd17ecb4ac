//! A job's scheduler state on disk: `<state dir>/vzdump-<id>.json`, as pvescheduler keeps
//! `/var/lib/pve-manager/jobs/vzdump-<id>.json`.
//!
//! The state is written before a run starts (`started`, with the start time and our pid)
//! and after it ends (`stopped`, with the result), atomically, so a restarted scheduler knows
//! the last run and never runs a job twice for the same event.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Environment variable overriding the state directory.
pub const STATE_DIR_ENV: &str = "VMDUMP_STATE_DIR";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/vmdump/jobs";

/// The state directory: an explicit one, else `$VMDUMP_STATE_DIR`, else the default.
pub fn state_dir(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| {
            std::env::var_os(STATE_DIR_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Known to the scheduler, never run.
    Created,
    /// A run is going on (or was, when its process died).
    Started,
    /// The last run ended.
    Stopped,
}

/// The persisted state of one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobState {
    /// Phase.
    pub state: Phase,
    /// When the state's schedule/enabled were last taken over from the config, or the job
    /// was created (seconds since the epoch): the base when there was no run since.
    pub updated: i64,
    /// Start of the last run.
    pub last_run: Option<i64>,
    /// End of the last run.
    pub last_end: Option<i64>,
    /// Result of the last run (`OK` or the error).
    pub message: Option<String>,
    /// The process running the job while `started`.
    pub pid: Option<i32>,
    /// The schedule this state was computed for (a change resets `updated`).
    pub schedule: String,
    /// The `enabled` this state was computed for.
    pub enabled: bool,
}

impl JobState {
    /// A new state for a job seen at `now`.
    pub fn created(now: i64, schedule: &str, enabled: bool) -> Self {
        JobState {
            state: Phase::Created,
            updated: now,
            last_run: None,
            last_end: None,
            message: None,
            pid: None,
            schedule: schedule.to_string(),
            enabled,
        }
    }

    /// The time the next run is computed from: the last run or the last config change,
    /// whichever is later (Proxmox's `last_run`).
    pub fn base(&self) -> i64 {
        self.last_run.map_or(self.updated, |r| r.max(self.updated))
    }

    /// True while a run is going on in a live process.
    pub fn running(&self) -> bool {
        self.state == Phase::Started
            && self.pid.is_some_and(|p| {
                rustix::process::Pid::from_raw(p)
                    .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok())
            })
    }
}

/// The state files of a directory.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// States under `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StateStore { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("vzdump-{id}.json"))
    }

    /// The state of a job, if it has one. A corrupt file is treated as missing (logged).
    pub fn load(&self, id: &str) -> Result<Option<JobState>> {
        let path = self.path(id);
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(s) => Ok(Some(s)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring a corrupt job state");
                    Ok(None)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", path, e)),
        }
    }

    /// Writes a job's state atomically.
    pub fn save(&self, id: &str, state: &JobState) -> Result<()> {
        let path = self.path(id);
        let json = serde_json::to_vec_pretty(state).expect("a job state serializes");
        vmdump_config::write_atomic(&path, &json).map_err(Error::Config)
    }

    /// Removes a job's state (when the job is removed).
    pub fn remove(&self, id: &str) -> Result<()> {
        let path = self.path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", path, e)),
        }
    }
}

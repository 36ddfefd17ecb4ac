//! The scheduler: runs due jobs one after the other, with its state on disk
//! (pvescheduler's behaviour, §4.3 of the vzdump notes).
//!
//! Each pass (about once a minute, on the minute) reads jobs.cfg, and for each enabled job
//! computes `next = next_event(schedule, base)` where `base` is the later of the last run's
//! start and the last change of `schedule`/`enabled` (or the time the scheduler first saw the
//! job). A job with `now >= next` is due. Due jobs run sequentially, so two jobs never run at
//! once on this host (the backup engine's global lock guards against other `vmdump backup`
//! processes too). The state is written before and after each run; a job whose recorded
//! process is still alive is not started again.
//!
//! Missed runs: on the first pass after the scheduler starts, a job that is already due is
//! skipped (its base becomes now) unless it has `repeat-missed 1`, in which case it runs once,
//! as soon as possible — not once per missed event.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Local, TimeZone};
use vmdump_config::{BackupJobConfig, ConfigRoot};
use vmdump_schedule::CalendarEvent;

use crate::error::{Error, Result};
use crate::state::{JobState, Phase, StateStore};

/// How a run ended, as the scheduler records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    /// Whether every guest succeeded.
    pub ok: bool,
    /// `OK` or the error, for the state file.
    pub message: String,
}

/// Runs one job (the real one is [`crate::run::BackupRunner`]; tests count calls).
pub trait Runner {
    /// Runs the job to its end.
    fn run(&self, job: &BackupJobConfig) -> RunOutcome;
}

/// The parsed schedule of a job.
pub fn event_of(job: &BackupJobConfig) -> Result<CalendarEvent> {
    CalendarEvent::parse(&job.schedule).map_err(|source| Error::Schedule {
        job: job.id.clone(),
        source,
    })
}

/// When a job with this state runs next (`None`: never again).
pub fn next_run(event: &CalendarEvent, state: &JobState) -> Option<DateTime<Local>> {
    let base = Local.timestamp_opt(state.base(), 0).earliest()?;
    event.next_after(&base)
}

/// One job as `vmdump jobs next` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NextRun {
    /// Job id.
    pub id: String,
    /// Schedule.
    pub schedule: String,
    /// Enabled.
    pub enabled: bool,
    /// Start of the last run (seconds since the epoch).
    pub last_run: Option<i64>,
    /// Result of the last run.
    pub last_result: Option<String>,
    /// Next run (seconds since the epoch); `None` when disabled or never again.
    pub next_run: Option<i64>,
}

/// The next run of every job (a job the scheduler has not seen yet counts from `now`).
pub fn next_runs(
    root: &ConfigRoot,
    states: &StateStore,
    now: DateTime<Local>,
) -> Result<Vec<NextRun>> {
    let mut out = Vec::new();
    for job in root.jobs()?.jobs() {
        let event = event_of(&job)?;
        let state = states
            .load(&job.id)?
            .unwrap_or_else(|| JobState::created(now.timestamp(), &job.schedule, job.enabled));
        let state = if state.schedule != job.schedule {
            JobState {
                updated: now.timestamp(),
                ..state
            }
        } else {
            state
        };
        out.push(NextRun {
            next_run: job
                .enabled
                .then(|| next_run(&event, &state))
                .flatten()
                .map(|t| t.timestamp()),
            id: job.id,
            schedule: job.schedule,
            enabled: job.enabled,
            last_run: state.last_run,
            last_result: state.message,
        });
    }
    Ok(out)
}

/// The scheduler loop.
pub struct Scheduler<R: Runner> {
    root: ConfigRoot,
    states: StateStore,
    runner: R,
    first_pass: bool,
    lock: Option<File>,
}

impl<R: Runner> Scheduler<R> {
    /// A scheduler for the jobs of `root`, with state in `states`.
    pub fn new(root: ConfigRoot, states: StateStore, runner: R) -> Self {
        Scheduler {
            root,
            states,
            runner,
            first_pass: true,
            lock: None,
        }
    }

    /// The runner.
    pub fn runner(&self) -> &R {
        &self.runner
    }

    /// Takes `<state dir>/scheduler.lock` so a second scheduler on this host refuses to start.
    pub fn lock(&mut self) -> Result<()> {
        let path: PathBuf = self.states.dir().join("scheduler.lock");
        std::fs::create_dir_all(self.states.dir())
            .map_err(|e| Error::io("create", self.states.dir(), e))?;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                self.lock = Some(file);
                Ok(())
            }
            Err(rustix::io::Errno::WOULDBLOCK) => Err(Error::SchedulerRunning(path)),
            Err(e) => Err(Error::io("lock", &path, e.into())),
        }
    }

    /// One pass at `now`: runs the due jobs; returns their ids in run order.
    pub fn tick(&mut self, now: DateTime<Local>) -> Result<Vec<String>> {
        let first_pass = std::mem::replace(&mut self.first_pass, false);
        let ts = now.timestamp();
        let mut due = Vec::new();
        for job in self.root.jobs()?.jobs() {
            let event = match event_of(&job) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(job = %job.id, error = %e, "skipping job with a bad schedule");
                    continue;
                }
            };
            let mut state = match self.states.load(&job.id)? {
                Some(s) => s,
                None => {
                    let s = JobState::created(ts, &job.schedule, job.enabled);
                    self.states.save(&job.id, &s)?;
                    s
                }
            };
            if state.schedule != job.schedule || state.enabled != job.enabled {
                state.schedule = job.schedule.clone();
                state.enabled = job.enabled;
                state.updated = ts;
                self.states.save(&job.id, &state)?;
            }
            if !job.enabled || state.running() {
                continue;
            }
            if state.state == Phase::Started {
                // The process that ran it is gone (crash, reboot).
                state.state = Phase::Stopped;
                state.pid = None;
                state.message = Some("aborted: the running process disappeared".into());
                self.states.save(&job.id, &state)?;
            }
            let Some(next) = next_run(&event, &state) else {
                continue;
            };
            if next > now {
                continue;
            }
            if first_pass && !job.repeat_missed {
                tracing::info!(job = %job.id, missed = %next, "skipping a run missed while the scheduler was down (repeat-missed 0)");
                state.updated = ts;
                self.states.save(&job.id, &state)?;
                continue;
            }
            due.push((job, state));
        }
        let mut ran = Vec::new();
        for (job, mut state) in due {
            state.state = Phase::Started;
            state.last_run = Some(ts);
            state.pid = Some(std::process::id() as i32);
            self.states.save(&job.id, &state)?;
            tracing::info!(job = %job.id, "starting scheduled backup job");
            let outcome = self.runner.run(&job);
            state.state = Phase::Stopped;
            state.pid = None;
            state.last_end = Some(Local::now().timestamp());
            state.message = Some(outcome.message);
            self.states.save(&job.id, &state)?;
            ran.push(job.id);
        }
        Ok(ran)
    }

    /// Runs passes on every minute until `stop` is set (checked every second).
    pub fn run_forever(&mut self, stop: &AtomicBool) -> Result<()> {
        while !stop.load(Ordering::Relaxed) {
            if let Err(e) = self.tick(Local::now()) {
                tracing::error!(error = %e, "scheduler pass failed");
            }
            let now = Local::now().timestamp();
            let wait = 60 - now.rem_euclid(60);
            for _ in 0..wait {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        Ok(())
    }
}

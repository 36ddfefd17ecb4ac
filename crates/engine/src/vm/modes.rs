//! The three modes on a running VM (vzdump's `QemuServer.pm` flows, `docs/design/modes.md`):
//!
//! | mode | before the jobs start | after the jobs start | cleanup (after `backup-end`, or on failure) |
//! | --- | --- | --- | --- |
//! | snapshot | hooks `pre-stop`, `pre-restart`, `post-restart` | freeze → jobs → thaw (in `live`) | – |
//! | suspend | `suspending guest`, `pre-stop`, QMP `stop` | `cont` at once | `pre-restart`, `cont` if still paused, `post-restart` |
//! | stop | `stopping virtual guest`, `pre-stop`, ACPI/agent shutdown (no force), QEMU started again paused | `cont` at once | `pre-restart`, start or `cont` if needed, `post-restart` |
//!
//! Before each change of the guest's state the hold is written into the backup mark
//! (`vmdump_guest::BackupMark`), so a vmdump killed at any point leaves a hold the next run
//! or `vmdump vm status` undoes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmdump_config::Mode;
use vmdump_guest::{
    run_state_name, BackupMark, Hold, Runtime, ShutdownOptions, StartOptions, State,
};
use vmdump_qmp::{Client, RunState};

use crate::error::{Error, Result};
use crate::hook::{GuestCall, Hook, Phase};
use crate::live::set_hold;
use crate::log::TaskLog;
use vmdump_task::one_line;

/// What the mode code needs of the guest's backup.
pub(crate) struct Cx<'a> {
    pub vmid: u32,
    pub mode: Mode,
    pub hook: Option<&'a Hook>,
    pub call: GuestCall<'a>,
    pub log: &'a TaskLog<'a>,
    pub mark: &'a Arc<Mutex<BackupMark>>,
    pub runtime: &'a Runtime,
}

impl Cx<'_> {
    /// Runs a guest phase of the hook script, if there is one.
    pub async fn hook(&self, phase: Phase) -> Result<()> {
        match self.hook {
            None => Ok(()),
            Some(h) => {
                h.guest(phase, &self.call, &|level, line| {
                    self.log.line(level, line, false);
                })
                .await
            }
        }
    }

    fn hold(&self, hold: Hold) {
        set_hold(Some(self.mark), hold, self.log);
    }
}

/// What the cleanup must bring back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Undo {
    /// The guest's state was not changed.
    Nothing,
    /// The guest was paused: `cont`.
    Resume,
    /// The guest was shut down: start it again (or `cont` the QEMU started paused).
    Restart,
}

/// The guest's way back to where it was.
#[derive(Debug)]
pub(crate) struct Restore {
    pub undo: Undo,
    /// When the guest went down.
    pub since: Option<Instant>,
    /// The measured downtime, once the guest runs again (the `cont` right after the job
    /// start, already logged).
    pub down: Option<Duration>,
}

impl Default for Restore {
    fn default() -> Self {
        Restore {
            undo: Undo::Nothing,
            since: None,
            down: None,
        }
    }
}

/// How the jobs are started after [`prepare`].
pub(crate) struct Prepared {
    /// The monitor of the QEMU to back up from (a new one in stop mode).
    pub qmp: Client,
    /// Freeze the filesystems around the job start.
    pub freeze: bool,
    /// `cont` right after the job start; the guest has been down since then.
    pub resume: Option<Instant>,
    /// The guest was running (vzdump's `resuming VM again` line in snapshot mode).
    pub was_running: bool,
}

/// What each mode's downtime is called in the `guest downtime` line.
pub(crate) fn downtime_kind(mode: Mode) -> &'static str {
    match mode {
        Mode::Snapshot => "filesystems frozen",
        Mode::Suspend => "paused",
        Mode::Stop => "shut down until running again",
    }
}

/// vzdump's steps before the archive for a running guest: hooks, and `stop` (suspend) or a
/// clean shutdown and a paused start (stop). `restore` is kept up to date before each step,
/// so the caller can bring the guest back after a failure at any point. `stopwait` is the
/// deadline of each clean shutdown step; `freeze` whether the agent should freeze.
pub(crate) async fn prepare(
    cx: &Cx<'_>,
    qmp: Client,
    stopwait: Duration,
    freeze: bool,
    restore: &mut Restore,
) -> Result<Prepared> {
    let status = qmp
        .query_status()
        .await
        .map_err(|e| Error::qmp("query-status", e))?
        .status;
    let running = status == RunState::Running;
    match cx.mode {
        Mode::Snapshot => {
            cx.hook(Phase::PreStop).await?;
            cx.hook(Phase::PreRestart).await?;
            cx.hook(Phase::PostRestart).await?;
            Ok(Prepared {
                qmp,
                freeze: freeze && running,
                resume: None,
                was_running: running,
            })
        }
        _ if !running => {
            // Paused by someone else (or in prelaunch): it stays as it is.
            cx.log.info(&format!(
                "guest is {}, backing it up in that state",
                run_state_name(&status)
            ));
            cx.hook(Phase::PreStop).await?;
            Ok(Prepared {
                qmp,
                freeze: false,
                resume: None,
                was_running: false,
            })
        }
        Mode::Suspend => {
            cx.log.info("suspending guest");
            cx.hook(Phase::PreStop).await?;
            cx.hold(Hold::Paused);
            let since = Instant::now();
            *restore = Restore {
                undo: Undo::Resume,
                since: Some(since),
                down: None,
            };
            qmp.stop().await.map_err(|e| Error::qmp("stop", e))?;
            crate::vm::stall("paused");
            Ok(Prepared {
                qmp,
                freeze: false,
                resume: Some(since),
                was_running: true,
            })
        }
        Mode::Stop => {
            cx.log.info("stopping virtual guest");
            cx.hook(Phase::PreStop).await?;
            cx.hold(Hold::Stopped);
            let since = Instant::now();
            *restore = Restore {
                undo: Undo::Restart,
                since: Some(since),
                down: None,
            };
            // The monitor goes with the QEMU that shuts down.
            drop(qmp);
            let res = cx
                .runtime
                .shutdown_with(
                    cx.vmid,
                    &ShutdownOptions {
                        timeout: stopwait,
                        force: false,
                        skiplock: true,
                    },
                )
                .await;
            if let Err(e) = res {
                return Err(match e {
                    vmdump_guest::Error::ShutdownTimeout { .. } => {
                        Error::Mode(format!("stop failed - {}", one_line(&e)))
                    }
                    e => e.into(),
                });
            }
            crate::vm::stall("shutdown");
            cx.hold(Hold::Paused);
            cx.log.info("starting kvm to execute backup task");
            cx.runtime
                .start(
                    cx.vmid,
                    &StartOptions {
                        paused: true,
                        skiplock: true,
                        ..Default::default()
                    },
                )
                .await?;
            let qmp = cx.runtime.connect(cx.vmid).await?;
            Ok(Prepared {
                qmp,
                freeze: false,
                resume: Some(since),
                was_running: true,
            })
        }
    }
}

impl Restore {
    /// vzdump's cleanup step: `pre-restart`, `cont` or start the guest if the backup left it
    /// paused or stopped, `post-restart`, `guest is online again after N seconds`. Failures
    /// are logged (the backup's own result stands); the hold is cleared once the guest runs.
    pub(crate) async fn finish(&mut self, cx: &Cx<'_>) {
        if self.undo == Undo::Nothing {
            return;
        }
        if let Err(e) = cx.hook(Phase::PreRestart).await {
            cx.log.warn(&one_line(&e));
        }
        let back = match cx.runtime.probe(cx.vmid).await {
            Ok(State::Stopped) if self.undo == Undo::Restart => {
                cx.log.info("restarting vm");
                cx.runtime
                    .start(
                        cx.vmid,
                        &StartOptions {
                            skiplock: true,
                            ..Default::default()
                        },
                    )
                    .await
                    .map(|_| ())
            }
            Ok(State::Running {
                status: RunState::Paused | RunState::Prelaunch,
                ..
            }) => {
                cx.log.info("resume vm");
                cx.runtime.resume_with(cx.vmid, true).await
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = cx.hook(Phase::PostRestart).await {
            cx.log.warn(&one_line(&e));
        }
        match back {
            Ok(()) => {
                cx.hold(Hold::None);
                let down = match self.down {
                    Some(d) => d,
                    None => {
                        let d = self.since.map(|s| s.elapsed()).unwrap_or_default();
                        self.down = Some(d);
                        cx.log.info(&format!(
                            "guest downtime: {} ms ({})",
                            d.as_millis(),
                            downtime_kind(cx.mode)
                        ));
                        d
                    }
                };
                cx.log.info(&format!(
                    "guest is online again after {} seconds",
                    down.as_secs()
                ));
            }
            Err(e) => cx
                .log
                .error(&format!("cannot bring the guest back: {}", one_line(&e))),
        }
        self.undo = Undo::Nothing;
    }
}

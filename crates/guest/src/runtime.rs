//! VM lifecycle: start, status, suspend/resume, shutdown, stop, list.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::process::Signal;
use tracing::{info, warn};
use vmdump_config::{ConfigRoot, QemuConfig};
use vmdump_qmp::{qga, Client, RunState};

use crate::accel::Accel;
use crate::cmdline::{self, BuildInput, LaunchPlan};
use std::sync::Arc;

use vmdump_launch::{process, Helper, Session};

use crate::error::{Error, Result};
use crate::mark::{BackupMark, Hold, Leftover, MarkState};
use crate::rundir::{RunDir, VmLock};

/// Environment variable naming the QEMU binary (default `qemu-system-x86_64`).
pub const QEMU_ENV: &str = "VMDUMP_QEMU";

/// How long QEMU may take to daemonize.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline for control-socket connections and commands.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a lifecycle operation waits for another one on the same VM.
const LOCK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a backup helper whose monitor failed may take to exit, so its own message is
/// reported instead of the monitor's.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// Grace periods of the hard stop: after `quit`, after SIGTERM, after SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// How to start a VM.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Start with `-S` (CPUs stopped, state `prelaunch`).
    pub paused: bool,
    /// Force an accelerator (otherwise see [`Accel::choose`]).
    pub accel: Option<Accel>,
    /// Start even if the config has a `lock:`.
    pub skiplock: bool,
    /// Disks started on a live-restore overlay (see [`crate::DiskOverlay`]).
    pub overlays: Vec<crate::DiskOverlay>,
}

/// A VM's state.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// No QEMU runs.
    Stopped,
    /// QEMU runs and answered `query-status`.
    Running {
        /// QEMU's pid.
        pid: u32,
        /// The run state QEMU reported.
        status: RunState,
    },
    /// QEMU's process lives but its control monitor did not answer.
    Unresponsive {
        /// QEMU's pid.
        pid: u32,
    },
}

impl State {
    /// `running` or `stopped`, as `qm status` prints it.
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            _ => "running",
        }
    }

    /// QEMU's run state name (`running`, `paused`, `prelaunch`, ...), if known.
    pub fn qmp_status(&self) -> Option<&'static str> {
        match self {
            State::Running { status, .. } => Some(run_state_name(status)),
            State::Unresponsive { .. } => Some("unknown"),
            State::Stopped => None,
        }
    }

    /// The pid, if running.
    pub fn pid(&self) -> Option<u32> {
        match self {
            State::Running { pid, .. } | State::Unresponsive { pid } => Some(*pid),
            State::Stopped => None,
        }
    }
}

/// The name QEMU uses for a run state.
pub fn run_state_name(s: &RunState) -> &'static str {
    match s {
        RunState::Prelaunch => "prelaunch",
        RunState::Running => "running",
        RunState::Paused => "paused",
        RunState::Shutdown => "shutdown",
        RunState::IoError => "io-error",
        RunState::Inmigrate => "inmigrate",
        RunState::Suspended => "suspended",
        RunState::InternalError => "internal-error",
        RunState::GuestPanicked => "guest-panicked",
        _ => "other",
    }
}

/// A started VM.
#[derive(Debug, Clone)]
pub struct Started {
    /// QEMU's pid.
    pub pid: u32,
    /// The command line and disk nodes it was started with.
    pub plan: LaunchPlan,
}

/// How to shut a VM down (see [`Runtime::shutdown_with`]).
#[derive(Debug, Clone)]
pub struct ShutdownOptions {
    /// How long each clean step (ACPI power button, then the guest agent) may take.
    pub timeout: Duration,
    /// Stop QEMU hard when the clean steps do not power the guest off in time.
    pub force: bool,
    /// Shut down even if the config has a `lock:` (the backup that set it).
    pub skiplock: bool,
}

/// How a shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownOutcome {
    /// Nothing ran.
    AlreadyStopped,
    /// The guest powered off after the ACPI power button.
    Acpi,
    /// The guest powered off after the agent's `guest-shutdown`.
    Agent,
    /// The guest did not power off in time (or was paused) and QEMU was stopped hard.
    Forced,
}

/// One row of [`Runtime::list`].
#[derive(Debug, Clone)]
pub struct VmSummary {
    /// The VMID.
    pub vmid: u32,
    /// `name:` (or the config error text).
    pub name: String,
    /// `memory` in MiB, if the config is valid.
    pub memory_mib: Option<u64>,
    /// The state.
    pub state: State,
}

/// Runs VMs from the configs under a [`ConfigRoot`].
#[derive(Debug, Clone)]
pub struct Runtime {
    root: ConfigRoot,
    run_base: PathBuf,
    qemu: PathBuf,
}

fn absolute(p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        p
    } else {
        std::env::current_dir().map(|c| c.join(&p)).unwrap_or(p)
    }
}

impl Runtime {
    /// A runtime for `root`; run directories under `$VMDUMP_RUN_DIR` or `/run/vmdump`; QEMU
    /// from `$VMDUMP_QEMU` or `qemu-system-x86_64`.
    pub fn new(root: ConfigRoot) -> Self {
        let run_base = vmdump_launch::run_base_from_env();
        let qemu = std::env::var_os(QEMU_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"));
        Runtime {
            root,
            run_base: absolute(run_base),
            qemu,
        }
    }

    /// Use another run base directory.
    pub fn with_run_base(mut self, base: impl Into<PathBuf>) -> Self {
        self.run_base = absolute(base.into());
        self
    }

    /// Use another QEMU binary.
    pub fn with_qemu(mut self, qemu: impl Into<PathBuf>) -> Self {
        self.qemu = qemu.into();
        self
    }

    /// The QEMU binary.
    pub fn qemu(&self) -> &Path {
        &self.qemu
    }

    /// The configuration root.
    pub fn root(&self) -> &ConfigRoot {
        &self.root
    }

    /// The run base directory.
    pub fn run_base(&self) -> &Path {
        &self.run_base
    }

    /// A VM's run directory.
    pub fn run_dir(&self, vmid: u32) -> RunDir {
        RunDir::new(&self.run_base, vmid)
    }

    fn config(&self, vmid: u32) -> Result<QemuConfig> {
        self.root
            .qemu_config(vmid)
            .map_err(|source| Error::Config { vmid, source })
    }

    /// Build the command line (and disk node table) without starting anything.
    pub fn plan(&self, vmid: u32, opts: &StartOptions) -> Result<LaunchPlan> {
        let cfg = self.config(vmid)?;
        self.plan_for(vmid, &cfg, opts, None)
    }

    fn plan_for(
        &self,
        vmid: u32,
        cfg: &QemuConfig,
        opts: &StartOptions,
        only: Option<&[String]>,
    ) -> Result<LaunchPlan> {
        let storage = self
            .root
            .storage()
            .map_err(|source| Error::Config { vmid, source })?;
        let kvm_enabled = cfg
            .get("kvm")
            .and_then(vmdump_config::parse_bool)
            .unwrap_or(true);
        let run = self.run_dir(vmid);
        cmdline::build(
            cfg,
            &storage,
            &BuildInput {
                vmid,
                run: &run,
                accel: Accel::choose(opts.accel, kvm_enabled),
                paused: opts.paused || only.is_some(),
                daemonize: only.is_none(),
                only,
                overlays: &opts.overlays,
            },
        )
    }

    /// Start the VM. QEMU daemonizes (it outlives this process); its pid is in the run
    /// directory. Stale run directories (dead pid) are cleaned first.
    pub async fn start(&self, vmid: u32, opts: &StartOptions) -> Result<Started> {
        // The lock first: a restore of this VM holds it while the config does not exist yet,
        // and must be reported as such, not as a missing VM.
        let _lock = self.lock(vmid).await?;
        let cfg = self.config(vmid)?;
        if let (Some(lock), false) = (cfg.lock(), opts.skiplock) {
            return Err(Error::Locked {
                vmid,
                lock: lock.to_string(),
            });
        }
        let run = self.prepare_run_dir(vmid).await?;
        let plan = self.plan_for(vmid, &cfg, opts, None)?;
        info!(vmid, accel = %plan.accel, paused = opts.paused, "starting QEMU");
        // QEMU daemonizes: the process we start exits once the VM runs, and the VM outlives
        // vmdump (no death signal).
        let (cmd, log) = self.command(vmid, &run, &plan)?;
        let mut child = vmdump_launch::spawn::spawn(cmd).map_err(|source| Error::Spawn {
            vmid,
            program: self.qemu.display().to_string(),
            source,
        })?;
        let deadline = tokio::time::Instant::now() + LAUNCH_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => {
                    let _ = child.kill();
                    process::wait_exit(child.id(), TERM_GRACE).await;
                    // Reap the zombie (it has exited: this does not block).
                    let _ = child.try_wait();
                    self.kill_stray(&run).await;
                    return Err(Error::Launch {
                        vmid,
                        status: match other {
                            Err(e) => format!("cannot wait for it: {e}"),
                            _ => format!("no answer within {LAUNCH_TIMEOUT:?}"),
                        },
                        stderr: read_log(&log),
                    });
                }
            }
        };
        if !status.success() {
            self.kill_stray(&run).await;
            run.clean()?;
            return Err(Error::Launch {
                vmid,
                status: status.to_string(),
                stderr: read_log(&log),
            });
        }
        let Some(pid) = run.live_pid() else {
            run.clean()?;
            return Err(Error::Launch {
                vmid,
                status: "exited right after start".into(),
                stderr: read_log(&log),
            });
        };
        // The control monitor must answer; otherwise the start failed.
        match self.control(vmid).await {
            Ok(c) => {
                let st = c.query_status().await.map_err(|source| Error::Qmp {
                    vmid,
                    step: "query-status".into(),
                    source,
                })?;
                info!(vmid, pid, status = run_state_name(&st.status), "VM started");
            }
            Err(e) => {
                self.hard_stop(vmid, pid, None, TERM_GRACE).await?;
                return Err(e);
            }
        }
        Ok(Started { pid, plan })
    }

    /// Refuse a VM whose QEMU runs; remove stale run files (after reaping what crashed vmdump
    /// runs left, which may include a QEMU in this run directory); create the directory.
    async fn prepare_run_dir(&self, vmid: u32) -> Result<RunDir> {
        vmdump_launch::reap_leftovers_async(&self.run_base).await;
        let run = self.run_dir(vmid);
        if let Some(pid) = run.live_pid() {
            return Err(Error::AlreadyRunning { vmid, pid });
        }
        if run.has_leftovers() {
            info!(
                "VM {vmid}: removing stale run files in {}",
                run.path().display()
            );
        }
        run.clean()?;
        run.create()?;
        Ok(run)
    }

    /// The QEMU command of `plan`, its stdout and stderr going to the run dir's QEMU log.
    fn command(
        &self,
        vmid: u32,
        run: &RunDir,
        plan: &LaunchPlan,
    ) -> Result<(std::process::Command, PathBuf)> {
        let log = run.qemu_log();
        let io = |source| Error::Io {
            vmid,
            path: log.clone(),
            source,
        };
        let out = std::fs::File::create(&log).map_err(io)?;
        let err = out.try_clone().map_err(io)?;
        let mut cmd = std::process::Command::new(&self.qemu);
        cmd.args(&plan.args)
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err);
        Ok((cmd, log))
    }

    /// Start a backup helper for the stopped VM `vmid`: QEMU paused with `-machine none` and
    /// only the drives `keys` as block nodes under the VM's node names (`drive-<key>`), in the
    /// VM's run directory (its sockets and pid file, so `vmdump vm status` sees it and `vmdump
    /// vm start` refuses a second QEMU on the same disks). It is a helper of `session`: it
    /// dies with vmdump and is recorded. Refused if the VM runs.
    pub async fn start_backup_helper(
        &self,
        vmid: u32,
        keys: &[String],
        session: &Arc<Session>,
    ) -> Result<BackupHelper> {
        let cfg = self.config(vmid)?;
        let lock = self.lock(vmid).await?;
        let run = self.prepare_run_dir(vmid).await?;
        let plan = self.plan_for(vmid, &cfg, &StartOptions::default(), Some(keys))?;
        info!(vmid, "starting QEMU as a backup helper");
        let (cmd, log) = self.command(vmid, &run, &plan)?;
        let helper = session
            .spawn("qemu-system-x86_64 (backup helper)", cmd)
            .map_err(|e| Error::Launch {
                vmid,
                status: e.to_string(),
                stderr: String::new(),
            })?;
        let mut helper = BackupHelper {
            helper,
            qmp: None,
            run,
            plan,
        };
        // A QEMU that exits at once (a disk it cannot open) is reported at once, with its
        // own message: also when it exits while we connect (the monitor then resets).
        let deadline = tokio::time::Instant::now() + LAUNCH_TIMEOUT;
        let qmp_path = helper.run.qmp_socket();
        loop {
            if let Some(e) = helper.launch_failure(vmid, &log)? {
                return Err(e);
            }
            match Client::connect_with_timeout(&qmp_path, vmdump_qmp::DEFAULT_TIMEOUT).await {
                Ok(c) => {
                    helper.qmp = Some(c);
                    break;
                }
                Err(vmdump_qmp::Error::Connect { .. })
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(source) => {
                    let grace = tokio::time::Instant::now() + EXIT_GRACE;
                    while tokio::time::Instant::now() < grace {
                        if let Some(e) = helper.launch_failure(vmid, &log)? {
                            return Err(e);
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    return Err(Error::Qmp {
                        vmid,
                        step: format!("connect to {}", qmp_path.display()),
                        source,
                    });
                }
            }
        }
        drop(lock);
        Ok(helper)
    }

    async fn lock(&self, vmid: u32) -> Result<VmLock> {
        VmLock::acquire(&self.run_base, vmid, LOCK_TIMEOUT).await
    }

    /// Kill a QEMU that may have been left by a failed launch.
    async fn kill_stray(&self, run: &RunDir) {
        if let Some(pid) = run.live_pid() {
            process::signal(pid, Signal::KILL);
            process::wait_exit(pid, TERM_GRACE).await;
        }
    }

    /// Connect to the VM's QMP monitor for long-lived use (`qmp.sock`; the backup engine).
    pub async fn connect(&self, vmid: u32) -> Result<Client> {
        self.connect_socket(
            vmid,
            &self.run_dir(vmid).qmp_socket(),
            vmdump_qmp::DEFAULT_TIMEOUT,
        )
        .await
    }

    /// Connect to the VM's control monitor (`ctl.sock`) for a short exchange.
    pub async fn control(&self, vmid: u32) -> Result<Client> {
        self.connect_socket(vmid, &self.run_dir(vmid).control_socket(), CONTROL_TIMEOUT)
            .await
    }

    async fn connect_socket(&self, vmid: u32, path: &Path, timeout: Duration) -> Result<Client> {
        if self.run_dir(vmid).live_pid().is_none() {
            return Err(Error::NotRunning { vmid });
        }
        Client::connect_retry(path, timeout, Duration::from_secs(5))
            .await
            .map_err(|source| Error::Qmp {
                vmid,
                step: format!("connect to {}", path.display()),
                source,
            })
    }

    /// The VM's state. What crashed vmdump runs left is reaped first (with a warning), and a
    /// stale run directory (dead QEMU) is cleaned.
    pub async fn status(&self, vmid: u32) -> Result<State> {
        vmdump_launch::reap_leftovers_async(&self.run_base).await;
        for line in self.recover(vmid).await? {
            warn!("{line}");
        }
        self.probe(vmid).await
    }

    /// The VM's state, without reaping or recovery (a backup of the VM asks this).
    pub async fn probe(&self, vmid: u32) -> Result<State> {
        let run = self.run_dir(vmid);
        let Some(pid) = run.live_pid() else {
            // Only clean up when no other process is in the middle of starting this VM.
            if run.has_leftovers() {
                if let Some(_lock) = VmLock::try_acquire(&self.run_base, vmid)? {
                    if run.live_pid().is_none() {
                        info!("VM {vmid}: QEMU is gone, removing stale run files");
                        run.clean()?;
                    }
                }
            }
            return Ok(State::Stopped);
        };
        let client = match self.control(vmid).await {
            Ok(c) => c,
            Err(Error::NotRunning { .. }) => return Ok(State::Stopped),
            Err(e) => {
                warn!("{e}");
                return Ok(State::Unresponsive { pid });
            }
        };
        match client.query_status().await {
            Ok(s) => Ok(State::Running {
                pid,
                status: s.status,
            }),
            Err(e) => {
                warn!("VM {vmid}: query-status: {e}");
                if process::is_alive(pid) {
                    Ok(State::Unresponsive { pid })
                } else {
                    Ok(State::Stopped)
                }
            }
        }
    }

    async fn qmp_step<T>(
        vmid: u32,
        step: &str,
        fut: impl std::future::Future<Output = vmdump_qmp::Result<T>>,
    ) -> Result<T> {
        fut.await.map_err(|source| Error::Qmp {
            vmid,
            step: step.to_string(),
            source,
        })
    }

    /// Refuses a user's lifecycle operation on a locked guest (`lock:` in its config), as
    /// `qm` does without `--skiplock`. A `lock: backup` whose backup mark has no live owner is
    /// stale (a killed backup left it) and does not refuse.
    fn check_lock(&self, vmid: u32, skiplock: bool) -> Result<()> {
        if skiplock {
            return Ok(());
        }
        let Ok(cfg) = self.config(vmid) else {
            return Ok(());
        };
        match cfg.lock() {
            None => Ok(()),
            Some("backup") if BackupMark::inspect(&self.run_base, vmid)? == MarkState::Free => {
                warn!("VM {vmid}: ignoring a stale 'lock: backup' (no backup runs)");
                Ok(())
            }
            Some(lock) => Err(Error::Locked {
                vmid,
                lock: lock.to_string(),
            }),
        }
    }

    /// Undo what a backup that died in the middle left the guest in, as its backup mark
    /// `left` (taken over from the dead owner) says: thaw the filesystems, `cont` a guest it
    /// paused, start a guest it shut down. Returns one line per action, for the log. The
    /// mark itself stays with the caller.
    pub async fn undo_hold(&self, vmid: u32, left: &Leftover) -> Result<Vec<String>> {
        let who = match left.pid {
            Some(p) => format!("an interrupted backup (pid {p})"),
            None => "an interrupted backup".to_string(),
        };
        let mut done = Vec::new();
        let hold = left.hold;
        if matches!(hold, Hold::Paused | Hold::FrozenPaused | Hold::Stopped) {
            match self.probe(vmid).await? {
                State::Stopped => {
                    self.start(
                        vmid,
                        &StartOptions {
                            skiplock: true,
                            ..Default::default()
                        },
                    )
                    .await?;
                    done.push(format!("VM {vmid}: started again, {who} had shut it down"));
                }
                State::Running {
                    status: RunState::Paused | RunState::Prelaunch,
                    ..
                } => {
                    self.cont(vmid).await?;
                    done.push(format!("VM {vmid}: resumed, {who} had paused it"));
                }
                _ => {}
            }
        }
        // After a `cont`: the agent that thaws runs inside the guest.
        if matches!(hold, Hold::Frozen | Hold::FrozenPaused)
            && self.run_dir(vmid).live_pid().is_some()
        {
            match self.thaw(vmid).await {
                Ok(0) => {}
                Ok(_) => done.push(format!(
                    "VM {vmid}: thawed the guest filesystems {who} left frozen"
                )),
                Err(e) => done.push(format!(
                    "VM {vmid}: cannot thaw the guest filesystems {who} may have left frozen: {e}"
                )),
            }
        }
        Ok(done)
    }

    /// Finds a backup of `vmid` that died in the middle (its backup mark without a live
    /// owner) and undoes what it left: the guest's hold ([`Runtime::undo_hold`]) and its
    /// `lock: backup`. Returns one line per action (`vmdump vm status` prints them as
    /// warnings). A failed undo keeps the mark for the next try.
    pub async fn recover(&self, vmid: u32) -> Result<Vec<String>> {
        if !BackupMark::path(&self.run_base, vmid).exists() {
            return Ok(Vec::new());
        }
        let Ok(left) = BackupMark::acquire(&self.run_base, vmid)? else {
            // A backup runs now: nothing is stale.
            return Ok(Vec::new());
        };
        let mut done = match self.undo_hold(vmid, &left).await {
            Ok(d) => d,
            Err(e) => {
                left.mark.keep();
                return Err(e);
            }
        };
        let path = self.root.qemu_config_path(vmid);
        if let Ok(mut cfg) = self.config(vmid) {
            if cfg.lock() == Some("backup") {
                cfg.remove("lock");
                cfg.save(&path)
                    .map_err(|source| Error::Config { vmid, source })?;
                done.push(format!(
                    "VM {vmid}: removed the stale 'lock: backup' of an interrupted backup"
                ));
            }
        }
        Ok(done)
    }

    async fn thaw(&self, vmid: u32) -> Result<u64> {
        let path = self.run_dir(vmid).qga_socket();
        let timeouts = qga::Timeouts {
            command: Duration::from_secs(5),
            sync: Duration::from_secs(3),
            ..Default::default()
        };
        let step = |source| Error::Qmp {
            vmid,
            step: "guest-fsfreeze-thaw".into(),
            source,
        };
        let agent = qga::Client::connect_with(&path, timeouts)
            .await
            .map_err(step)?;
        agent.fsfreeze_thaw().await.map_err(step)
    }

    /// Pause the guest (QMP `stop`). Refused while the guest is locked (a backup runs).
    pub async fn suspend(&self, vmid: u32) -> Result<()> {
        self.check_lock(vmid, false)?;
        let c = self.control(vmid).await?;
        Self::qmp_step(vmid, "stop", c.stop()).await
    }

    /// Resume the guest (QMP `cont`; also leaves `prelaunch`). Refused while the guest is
    /// locked (a backup runs).
    pub async fn resume(&self, vmid: u32) -> Result<()> {
        self.resume_with(vmid, false).await
    }

    /// [`Runtime::resume`], also on a locked guest with `skiplock` (the backup that locked it).
    pub async fn resume_with(&self, vmid: u32, skiplock: bool) -> Result<()> {
        self.check_lock(vmid, skiplock)?;
        self.cont(vmid).await
    }

    async fn cont(&self, vmid: u32) -> Result<()> {
        let c = self.control(vmid).await?;
        Self::qmp_step(vmid, "cont", c.cont()).await
    }

    /// Clean shutdown: ACPI power button and wait up to `timeout`; then, with `agent: 1`, the
    /// agent's `guest-shutdown` and wait up to `timeout` again; then a hard stop (`quit`,
    /// SIGTERM, SIGKILL). A paused or never-started guest cannot react, so it is stopped hard
    /// at once. The run directory is cleaned. Refused while the guest is locked.
    pub async fn shutdown(&self, vmid: u32, timeout: Duration) -> Result<ShutdownOutcome> {
        self.shutdown_with(
            vmid,
            &ShutdownOptions {
                timeout,
                force: true,
                skiplock: false,
            },
        )
        .await
    }

    /// [`Runtime::shutdown`] with its choices: without `force`, a guest that does not power
    /// off within `timeout` per clean step (ACPI, then the agent) is left running and the
    /// result is [`Error::ShutdownTimeout`] (a backup's stop mode: no forced stop).
    pub async fn shutdown_with(
        &self,
        vmid: u32,
        opts: &ShutdownOptions,
    ) -> Result<ShutdownOutcome> {
        self.check_lock(vmid, opts.skiplock)?;
        let timeout = opts.timeout;
        let _lock = self.lock(vmid).await?;
        let run = self.run_dir(vmid);
        let Some(pid) = run.live_pid() else {
            run.clean()?;
            return Ok(ShutdownOutcome::AlreadyStopped);
        };
        let ctl = match self.control(vmid).await {
            Ok(c) => Some(c),
            Err(e) => {
                warn!("{e}; stopping QEMU hard");
                None
            }
        };
        let status = match &ctl {
            Some(c) => c.query_status().await.ok().map(|s| s.status),
            None => None,
        };
        if let (Some(c), Some(RunState::Running)) = (&ctl, &status) {
            info!("VM {vmid}: ACPI power button");
            Self::qmp_step(vmid, "system_powerdown", c.system_powerdown()).await?;
            if process::wait_exit(pid, timeout).await {
                run.clean()?;
                return Ok(ShutdownOutcome::Acpi);
            }
            let agent = self
                .config(vmid)
                .ok()
                .and_then(|c| c.agent().ok())
                .is_some_and(|a| a.enabled);
            if agent {
                info!("VM {vmid}: no power-off after {timeout:?}, asking the guest agent");
                if self.agent_shutdown(vmid).await && process::wait_exit(pid, timeout).await {
                    run.clean()?;
                    return Ok(ShutdownOutcome::Agent);
                }
            }
            if !opts.force {
                return Err(Error::ShutdownTimeout {
                    vmid,
                    after: timeout,
                });
            }
            warn!("VM {vmid}: guest did not power off within the timeout, stopping QEMU");
        } else if let Some(s) = &status {
            info!(
                "VM {vmid}: guest is {}, cannot shut down cleanly; stopping QEMU",
                run_state_name(s)
            );
        }
        self.hard_stop(vmid, pid, ctl.as_ref(), TERM_GRACE).await?;
        Ok(ShutdownOutcome::Forced)
    }

    async fn agent_shutdown(&self, vmid: u32) -> bool {
        let path = self.run_dir(vmid).qga_socket();
        let timeouts = qga::Timeouts {
            command: Duration::from_secs(3),
            sync: Duration::from_secs(3),
            ..Default::default()
        };
        match qga::Client::connect_with(&path, timeouts).await {
            Ok(agent) => match agent.shutdown(qga::ShutdownMode::Powerdown).await {
                Ok(()) => true,
                Err(e) => {
                    warn!("VM {vmid}: guest-shutdown: {e}");
                    false
                }
            },
            Err(e) => {
                warn!("VM {vmid}: guest agent not answering: {e}");
                false
            }
        }
    }

    /// Hard stop: QMP `quit` (waiting up to `timeout`), then SIGTERM, then SIGKILL. Returns
    /// whether QEMU had been running. The run directory is cleaned. Refused while the guest
    /// is locked (see [`Runtime::stop_with`]).
    pub async fn stop(&self, vmid: u32, timeout: Duration) -> Result<bool> {
        self.stop_with(vmid, timeout, false).await
    }

    /// [`Runtime::stop`], also on a locked guest with `skiplock`.
    pub async fn stop_with(&self, vmid: u32, timeout: Duration, skiplock: bool) -> Result<bool> {
        self.check_lock(vmid, skiplock)?;
        let _lock = self.lock(vmid).await?;
        let run = self.run_dir(vmid);
        let Some(pid) = run.live_pid() else {
            run.clean()?;
            return Ok(false);
        };
        let ctl = self.control(vmid).await.ok();
        self.hard_stop(vmid, pid, ctl.as_ref(), timeout).await?;
        Ok(true)
    }

    async fn hard_stop(
        &self,
        vmid: u32,
        pid: u32,
        ctl: Option<&Client>,
        timeout: Duration,
    ) -> Result<()> {
        let run = self.run_dir(vmid);
        let mut gone = false;
        if let Some(c) = ctl {
            if let Err(e) = c.quit().await {
                // `quit` may race with QEMU closing the socket; the pid decides.
                tracing::debug!("VM {vmid}: quit: {e}");
            }
            gone = process::wait_exit(pid, timeout).await;
        }
        if !gone {
            warn!("VM {vmid}: sending SIGTERM to QEMU (pid {pid})");
            process::signal(pid, Signal::TERM);
            gone = process::wait_exit(pid, TERM_GRACE).await;
        }
        if !gone {
            warn!("VM {vmid}: sending SIGKILL to QEMU (pid {pid})");
            process::signal(pid, Signal::KILL);
            gone = process::wait_exit(pid, TERM_GRACE).await;
        }
        if !gone {
            return Err(Error::Timeout {
                vmid,
                pid,
                after: timeout + TERM_GRACE * 2,
            });
        }
        run.clean()?;
        info!("VM {vmid}: stopped");
        Ok(())
    }

    /// Every VM config under `qemu-server/` with its state.
    pub async fn list(&self) -> Result<Vec<VmSummary>> {
        let vmids = self
            .root
            .qemu_vmids()
            .map_err(|source| Error::Config { vmid: 0, source })?;
        let mut out = Vec::new();
        for vmid in vmids {
            let (name, memory_mib) = match self.root.qemu_config(vmid) {
                Ok(c) => (c.name().unwrap_or("").to_string(), c.memory_mib().ok()),
                Err(e) => (format!("<{e}>"), None),
            };
            out.push(VmSummary {
                vmid,
                name,
                memory_mib,
                state: self.status(vmid).await?,
            });
        }
        Ok(out)
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// A paused QEMU serving a stopped VM's disks for a backup (see
/// [`Runtime::start_backup_helper`]). [`BackupHelper::stop`] quits it; dropping it kills it.
/// Either way the run directory is cleaned.
#[derive(Debug)]
pub struct BackupHelper {
    helper: Helper,
    qmp: Option<Client>,
    run: RunDir,
    plan: LaunchPlan,
}

impl BackupHelper {
    /// If the helper has exited: its run dir cleaned, and the launch error with its stderr.
    fn launch_failure(&mut self, vmid: u32, log: &Path) -> Result<Option<Error>> {
        let status = self.helper.try_wait().map_err(|source| Error::Io {
            vmid,
            path: log.to_path_buf(),
            source,
        })?;
        let Some(st) = status else {
            return Ok(None);
        };
        self.run.clean()?;
        Ok(Some(Error::Launch {
            vmid,
            status: st.to_string(),
            stderr: read_log(log),
        }))
    }

    /// Its QMP monitor (`qmp.sock`).
    pub fn qmp(&self) -> &Client {
        self.qmp.as_ref().expect("connected at start")
    }

    /// The command line and disk nodes.
    pub fn plan(&self) -> &LaunchPlan {
        &self.plan
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.helper.pid()
    }

    /// Quit QEMU (killed if it does not exit within 10 s) and clean the run directory.
    pub async fn stop(mut self) {
        if let Some(q) = self.qmp.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), q.quit()).await;
        }
        if !matches!(
            self.helper.wait_timeout(Duration::from_secs(10)).await,
            Ok(Some(_))
        ) {
            warn!(
                "backup helper QEMU (pid {}) did not quit, killing it",
                self.helper.pid()
            );
            self.helper.kill_async(TERM_GRACE).await;
        }
    }
}

impl Drop for BackupHelper {
    fn drop(&mut self) {
        self.helper.kill();
        if let Err(e) = self.run.clean() {
            warn!("{e}");
        }
    }
}

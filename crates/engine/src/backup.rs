//! One guest's backup as vzdump does it, in two steps: [`plan`] reads the guest config, the
//! storage and QEMU's state and makes every check that can fail before anything is written;
//! [`apply`](backup_vm) claims the archive name, writes the log, runs the push backup,
//! renames the archive to its final name (never over another file), writes notes and
//! protection.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::sync::{Arc, Mutex};
use vmdump_config::qmdump::{self, BackupDisk, ExcludedDisk};

use vmdump_config::{ConfigRoot, Mode, QemuConfig, VmId, VzdumpOptions};
use vmdump_guest::{BackupMark, MarkState, Runtime};
use vmdump_qmp::Client;
use vmdump_task::{Cancel, Level, Progress, Transfer};

use crate::error::{Error, Result};
use crate::hook::{GuestCall, Hook, Phase};
use crate::live::{self, LiveOptions};
use crate::lock::JobLock;
use crate::log::TaskLog;
use crate::name::{rename_new, ArchiveName};
use crate::notes::{self, NotesVars};
use crate::options::{Destination, Resolved, UNSUPPORTED_KEYS};
use crate::progress::{format_size, summary};
use crate::tmpdir::TaskDir;
use crate::vm::modes::{self, Cx, Restore};
use vmdump_store::GuestType;

/// How many following seconds a backup tries when its archive name is taken.
const NAME_TRIES: u32 = 60;

/// What a backup job needs besides the guest id.
#[derive(Debug, Clone)]
pub struct BackupJob {
    /// The configuration root.
    pub root: ConfigRoot,
    /// Combined settings.
    pub settings: Resolved,
    /// Base of the per-VM run directories (sockets) and of the node-global lock.
    pub run_dir: PathBuf,
    /// zstd compression level (vzdump leaves zstd's default; we default to 1 for speed).
    pub zstd_level: i32,
    /// Cancelled by a signal handler: aborts the running backup.
    pub cancel: Cancel,
    /// Host name for notes templates.
    pub node: String,
    /// The hook script (`--script`, `script:`), with the job's `STOREID`/`DUMPDIR`.
    pub hook: Option<Hook>,
    /// vzdump's `--stdout`: the archive of the job's one guest is written into this open
    /// file (a pipe, or a file the caller opened) instead of the dump directory; no archive
    /// file, notes, protection or pruning there (the guest's `.log` still goes there).
    pub stdout: Option<Arc<std::fs::File>>,
}

/// Work the caller does once a guest's archive is in place, before the `backup-end` hook
/// (the job runner's pruning, as vzdump prunes inside the guest's backup). Its lines go to
/// the guest's task log; an error fails the guest (the archive stays).
pub trait AfterArchive: Sync {
    /// Runs for `vmid`; `log` writes into the guest's task log.
    fn run(&self, vmid: u32, log: &(dyn Fn(Level, &str) + Sync))
        -> std::result::Result<(), String>;
}

/// No work after the archive.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAfter;

impl AfterArchive for NoAfter {
    fn run(&self, _: u32, _: &(dyn Fn(Level, &str) + Sync)) -> std::result::Result<(), String> {
        Ok(())
    }
}

impl BackupJob {
    /// A job with the options from the command line (`cli`) over `vzdump.conf` of `root`,
    /// using the run directories under `run_dir`. Returns warnings to log (unknown or
    /// unsupported `vzdump.conf` keys, conflicting settings).
    pub fn new(
        root: ConfigRoot,
        cli: &VzdumpOptions,
        run_dir: PathBuf,
    ) -> Result<(Self, Vec<String>)> {
        let conf = root.vzdump()?;
        let mut warnings: Vec<String> = conf.warnings().to_vec();
        for key in conf.keys().filter(|k| UNSUPPORTED_KEYS.contains(k)) {
            warnings.push(format!(
                "vzdump.conf: '{key}' is not supported yet, ignored"
            ));
        }
        let (settings, more) = Resolved::combine(cli, conf.options())?;
        warnings.extend(more);
        let node = std::fs::read_to_string("/etc/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        let mut job = Self {
            root,
            settings,
            run_dir,
            zstd_level: 1,
            cancel: Cancel::new(),
            node,
            hook: None,
            stdout: None,
        };
        if let Some(dir) = &job.settings.tmpdir {
            if !dir.is_dir() {
                return Err(Error::option(
                    "tmpdir",
                    format!("tmpdir '{}' does not exist", dir.display()),
                ));
            }
        }
        if let Some(script) = &job.settings.script {
            let storeid = match &job.settings.destination {
                Destination::Storage(id) => Some(id.clone()),
                Destination::Dumpdir(_) => None,
            };
            job.hook = Some(Hook::new(script)?.with_target(storeid, job.dump_dir().ok()));
        }
        Ok((job, warnings))
    }

    /// Runs a job phase of the hook script (none configured: nothing).
    pub async fn job_hook(&self, phase: Phase, log: &(dyn Fn(Level, &str) + Sync)) -> Result<()> {
        match &self.hook {
            Some(h) => h.job(phase, log).await,
            None => Ok(()),
        }
    }

    /// The directory archives go to.
    pub fn dump_dir(&self) -> Result<PathBuf> {
        match &self.settings.destination {
            Destination::Dumpdir(d) => Ok(d.clone()),
            Destination::Storage(id) => {
                let storage = self.root.storage()?;
                let entry = storage.storage(id)?;
                if !entry.has_content("backup") {
                    return Err(Error::NoBackupContent {
                        storage: id.clone(),
                    });
                }
                Ok(storage.base_path(id)?.join("dump"))
            }
        }
    }

    /// Take the node-global backup lock (`<run dir>/backup.lock`), waiting up to
    /// `lockwait` minutes; `on_wait` runs once if the lock is busy.
    pub async fn lock(&self, on_wait: impl FnOnce()) -> Result<JobLock> {
        let wait = Duration::from_secs(self.settings.lockwait.saturating_mul(60));
        JobLock::acquire(&self.run_dir, wait, &self.cancel, on_wait).await
    }

    /// What the hooks' `TARGET` and the log call the archive: its final path, or `-` when it
    /// goes to standard output (as vzdump).
    pub(crate) fn target(&self, names: &ArchiveName) -> PathBuf {
        match self.stdout {
            Some(_) => PathBuf::from("-"),
            None => names.archive(),
        }
    }

    fn vm_run_dir(&self, vmid: VmId) -> vmdump_guest::RunDir {
        vmdump_guest::RunDir::new(&self.run_dir, vmid.get())
    }
}

/// What a successful backup produced.
#[derive(Debug, Clone)]
pub struct BackupReport {
    /// Guest id.
    pub vmid: VmId,
    /// The archive.
    pub archive: PathBuf,
    /// The log next to it.
    pub log: PathBuf,
    /// Archive size in bytes.
    pub size: u64,
    /// Transfer counters.
    pub transfer: Transfer,
    /// Wall time of the guest's backup.
    pub duration: Duration,
}

/// How the disks are read.
#[derive(Debug)]
pub enum Source {
    /// The VM runs: its QEMU, through this monitor connection.
    Running(Client),
    /// The VM is stopped: the VM runtime starts a backup helper QEMU (paused, only these
    /// drives, dying with vmdump) for the backup.
    Stopped(Vec<String>),
}

/// Everything one guest's backup will read and write, found and checked before any side
/// effect (the result of [`plan`]).
#[derive(Debug)]
pub struct BackupPlan {
    /// The guest.
    pub vmid: VmId,
    /// Its config file.
    pub config_path: PathBuf,
    config: QemuConfig,
    /// The config carries a `lock: backup` a killed earlier run left (removed by the backup).
    pub stale_lock: bool,
    /// The disks that go into the archive.
    pub disks: Vec<BackupDisk>,
    /// The disks left out, with the reason.
    pub excluded: Vec<ExcludedDisk>,
    /// Where the archive, its log and notes go.
    pub dump_dir: PathBuf,
    /// Where the data comes from.
    pub source: Source,
}

/// Reads and checks what a backup of `vmid` needs: the guest config (exists, parses, not
/// locked by another operation, has disks), the dump directory of the destination, whether
/// the VM runs (and the mode allows that), and the volumes of a stopped VM. Writes nothing.
///
/// `_lock` is the proof that this process holds the node-global backup lock, so a
/// `lock: backup` in the config can only be a leftover.
pub async fn plan(job: &BackupJob, _lock: &JobLock, vmid: VmId) -> Result<BackupPlan> {
    let config_path = job.root.qemu_config_path(vmid.get());
    let config = job.root.qemu_config(vmid.get())?;
    let stale_lock = match config.lock() {
        // Only a backup job sets it, and this process holds the global backup lock: a
        // killed earlier run left it (vzdump would need `qm unlock` here).
        Some("backup") => true,
        Some(lock) => {
            return Err(Error::GuestLocked {
                vmid: vmid.get(),
                lock: lock.to_string(),
            })
        }
        None => false,
    };
    let (disks, excluded) = qmdump::backup_disks(&config)?;
    if disks.is_empty() {
        return Err(Error::NoDisks { vmid: vmid.get() });
    }
    let dump_dir = job.dump_dir()?;
    let qmp_path = job.vm_run_dir(vmid).qmp_socket();
    let timeout = Duration::from_secs(10);
    let running = match Client::connect_with_timeout(&qmp_path, timeout).await {
        Ok(c) => Some(c),
        // EAGAIN: QEMU listens but its monitor's backlog is full (it has not yet dropped a
        // killed run's connection). The VM runs: wait for the monitor, never start a second
        // QEMU on its disks.
        Err(vmdump_qmp::Error::Connect { source, .. })
            if source.kind() == std::io::ErrorKind::WouldBlock =>
        {
            Some(
                Client::connect_retry(&qmp_path, timeout, timeout)
                    .await
                    .map_err(|e| Error::qmp(format!("connect {}", qmp_path.display()), e))?,
            )
        }
        Err(vmdump_qmp::Error::Connect { .. }) => None,
        Err(e) => return Err(Error::qmp(format!("connect {}", qmp_path.display()), e)),
    };
    let source = match running {
        Some(qmp) => Source::Running(qmp),
        None => {
            let storage = job.root.storage()?;
            let mut keys = Vec::new();
            for d in &disks {
                storage
                    .resolve_ref(&d.volume)?
                    .ok_or_else(|| Error::NoVolume {
                        device: d.devname.clone(),
                    })?;
                keys.push(d.key.to_string());
            }
            Source::Stopped(keys)
        }
    };
    Ok(BackupPlan {
        vmid,
        config_path,
        config,
        stale_lock,
        disks,
        excluded,
        dump_dir,
        source,
    })
}

/// Backs up one VM: [`plan`], then apply. Every line goes to `progress` and, once the archive
/// name is claimed, to the `.log` beside the archive. On failure the `ERROR:` line is logged,
/// no file with the archive's name exists, QEMU is left as it was found, and a failure of
/// the plan leaves no file at all.
pub async fn backup_vm(
    job: &BackupJob,
    lock: &JobLock,
    vmid: VmId,
    progress: &dyn Progress,
) -> Result<BackupReport> {
    backup_vm_with(job, lock, vmid, progress, &NoAfter).await
}

/// [`backup_vm`] with work after the archive (`after`, before `backup-end`: pruning).
pub async fn backup_vm_with(
    job: &BackupJob,
    lock: &JobLock,
    vmid: VmId,
    progress: &dyn Progress,
    after: &dyn AfterArchive,
) -> Result<BackupReport> {
    let started = Instant::now();
    let start_time = chrono::Local::now();
    let log = TaskLog::new(progress);
    log.started(vmid, "qemu", start_time);
    // What the backup-abort and log-end hooks are told, once known.
    let mut known: (Option<ArchiveName>, Option<String>, Mode) = (None, None, job.settings.mode);
    if let Err(e) = crate::ionice::apply(job.settings.ionice) {
        log.warn(&format!("cannot set the I/O priority: {e}"));
    }
    let res = async {
        // Records this run's helpers (and holds the NBD socket); reaps what killed runs left
        // first, such as a backup helper QEMU still holding the disks.
        let session = vmdump_launch::Session::open_async(&job.run_dir).await?;
        let runtime = Runtime::new(job.root.clone()).with_run_base(&job.run_dir);
        // The backup mark: held for the whole backup. A live one is another backup of this
        // guest; one a killed backup left is taken over and its hold undone first.
        let mark = match BackupMark::acquire(&job.run_dir, vmid.get())? {
            Err(MarkState::Live { .. }) => {
                return Err(Error::GuestLocked {
                    vmid: vmid.get(),
                    lock: "backup".into(),
                })
            }
            Err(MarkState::Free) => unreachable!("acquire reports only a live mark"),
            Ok(left) => {
                for line in runtime.undo_hold(vmid.get(), &left).await? {
                    log.warn(&line);
                }
                left.mark
            }
        };
        let mark = Arc::new(Mutex::new(mark));
        let plan = plan(job, lock, vmid).await?;
        known.1 = plan.config.name().map(str::to_string);
        if matches!(plan.source, Source::Stopped(_)) {
            known.2 = Mode::Stop;
        }
        let names = claim_names(
            job,
            GuestType::Qemu,
            &plan.dump_dir,
            vmid.get(),
            start_time,
            &log,
        )?;
        known.0 = Some(names.clone());
        let ctx = Apply {
            job,
            names: &names,
            log: &log,
            session: &session,
            runtime: &runtime,
            mark: &mark,
            after,
        };
        let (archive, size, transfer) = ctx.apply(plan).await?;
        Ok::<_, Error>((archive, names.log(), size, transfer))
    }
    .await;
    let hostname = known.1.clone().unwrap_or_else(|| format!("VM {vmid}"));
    let end = GuestEnd {
        vmid,
        vmtype: "qemu",
        mode: known.2.as_str(),
        hostname: &hostname,
        names: known.0.as_ref(),
        started,
    };
    end.finish(job, &log, res).await
}

/// What the end of one guest's backup (VM or container) tells the hooks and the report.
pub(crate) struct GuestEnd<'a> {
    pub(crate) vmid: VmId,
    pub(crate) vmtype: &'a str,
    pub(crate) mode: &'a str,
    pub(crate) hostname: &'a str,
    /// The archive's names, once claimed.
    pub(crate) names: Option<&'a ArchiveName>,
    pub(crate) started: std::time::Instant,
}

impl GuestEnd<'_> {
    /// Runs the `backup-end` or `backup-abort` and `log-end` hooks and makes the report of
    /// `res`: (archive, log file, archive size, transfer).
    pub(crate) async fn finish(
        &self,
        job: &BackupJob,
        log: &TaskLog<'_>,
        res: Result<(PathBuf, PathBuf, u64, Transfer)>,
    ) -> Result<BackupReport> {
        let target = self.names.map(|n| job.target(n));
        let logfile = self.names.map(ArchiveName::log);
        let call = GuestCall {
            mode: self.mode,
            vmid: self.vmid.get(),
            vmtype: self.vmtype,
            hostname: self.hostname,
            target: target.as_deref(),
            logfile: logfile.as_deref(),
        };
        match res {
            Ok((archive, log_path, size, transfer)) => {
                let duration = self.started.elapsed();
                crate::hook::guest_end(job.hook.as_ref(), &call, log, Ok(duration)).await;
                Ok(BackupReport {
                    vmid: self.vmid,
                    archive,
                    log: log_path,
                    size,
                    transfer,
                    duration,
                })
            }
            Err(e) => {
                crate::hook::guest_end(job.hook.as_ref(), &call, log, Err(&e)).await;
                Err(e)
            }
        }
    }
}

/// The side effects of a planned backup, and what they need.
struct Apply<'a> {
    job: &'a BackupJob,
    names: &'a ArchiveName,
    log: &'a TaskLog<'a>,
    session: &'a Arc<vmdump_launch::Session>,
    runtime: &'a Runtime,
    mark: &'a Arc<Mutex<BackupMark>>,
    after: &'a dyn AfterArchive,
}

impl Apply<'_> {
    async fn apply(&self, plan: BackupPlan) -> Result<(PathBuf, u64, Transfer)> {
        let (job, log) = (self.job, self.log);
        let vmid = plan.vmid;
        if plan.stale_lock {
            log.warn("removing stale 'lock: backup' left by an interrupted backup");
        }
        // `lock: backup` while the backup runs (vzdump's per-guest lock): `vmdump vm start`,
        // `vm stop`/`shutdown`/`suspend`/`resume` and `vmdump restore --force` refuse the
        // guest meanwhile. Removed again on every way out.
        let _config_lock = ConfigLock::set(&plan.config_path, plan.config.clone(), "backup")?;
        let running = matches!(plan.source, Source::Running(_));
        log.info(&format!(
            "status = {}",
            if running { "running" } else { "stopped" }
        ));
        if let Some(name) = plan.config.name() {
            log.info(&format!("VM Name: {name}"));
        }
        for d in &plan.disks {
            log.info(&format!(
                "include disk '{}' '{}'{}",
                d.key,
                d.drive.file(),
                d.size
                    .map(|s| format!(" {}", vmdump_config::format_size(s)))
                    .unwrap_or_default()
            ));
        }
        for x in &plan.excluded {
            if x.reason == "backup=no" {
                log.info(&format!(
                    "exclude disk '{}' '{}' (backup=no)",
                    x.key, x.volume
                ));
            }
        }
        // A guest that is not running is always backed up as `stop` (vzdump).
        let mode = if running {
            job.settings.mode
        } else {
            Mode::Stop
        };
        log.info(&format!("backup mode: {mode}"));
        log_limits(job, log);
        let hostname = plan
            .config
            .name()
            .map(str::to_string)
            .unwrap_or_else(|| format!("VM {vmid}"));
        let archive = job.target(self.names);
        let log_path = self.names.log();
        let cx = Cx {
            vmid: vmid.get(),
            mode,
            hook: job.hook.as_ref(),
            call: GuestCall {
                mode: mode.as_str(),
                vmid: vmid.get(),
                vmtype: "qemu",
                hostname: &hostname,
                target: Some(&archive),
                logfile: Some(&log_path),
            },
            log,
            mark: self.mark,
            runtime: self.runtime,
        };
        cx.hook(Phase::BackupStart).await?;
        let mut restore = Restore::default();
        let res = self.archive(plan, &cx, &mut restore).await;
        // vzdump's cleanup: the guest back to the state it was in, on every way out.
        restore.finish(&cx).await;
        res
    }

    /// From the mode's preparation to `backup-end`.
    async fn archive(
        &self,
        plan: BackupPlan,
        cx: &Cx<'_>,
        restore: &mut Restore,
    ) -> Result<(PathBuf, u64, Transfer)> {
        let (job, log, names) = (self.job, self.log, self.names);
        let vmid = plan.vmid;
        let stored = qmdump::backup_copy(&plan.config, &plan.disks);
        let archive = job.target(names);
        let tmp = TaskDir::create(job, names, vmid.get())?;
        let configs = tmp.assemble_vm(job, vmid.get(), &stored)?;
        let keys: Vec<String> = plan.disks.iter().map(|d| d.key.to_string()).collect();
        let mut opts = LiveOptions::new(vmid.get());
        opts.speed = job.settings.bwlimit.saturating_mul(1024);
        opts.max_workers = job.settings.max_workers;
        opts.compress = job.settings.compress;
        opts.zstd_threads = job.settings.zstd_threads;
        opts.zstd_level = job.zstd_level;
        opts.cancel = job.cancel.clone();
        opts.socket_dir = self.session.path().to_path_buf();
        opts.mark = Some(Arc::clone(self.mark));
        opts.stream = job.stdout.clone();
        let dat = names.temporary();
        let creating = || match job.stdout {
            Some(_) => log.info("sending archive to stdout"),
            None => log.info(&format!("creating vzdump archive '{}'", archive.display())),
        };
        // Fleecing images a killed run left go first, fleecing on or not (vzdump's order).
        crate::vm::fleece::remove_leftovers(&plan.config_path, &job.root, log)?;
        if let Some(f) = &job.settings.fleecing {
            opts.fleecing = Some(crate::vm::fleece::FleecingPlan::new(
                vmid.get(),
                &plan.config_path,
                job.root.storage()?,
                f,
                &plan.disks,
            ));
        }

        let outcome = match plan.source {
            Source::Running(qmp) => {
                let agent = plan.config.agent().ok();
                let freeze = agent
                    .as_ref()
                    .is_some_and(|a| a.enabled && a.freeze_fs_on_backup);
                if agent
                    .as_ref()
                    .is_some_and(|a| a.enabled && !a.freeze_fs_on_backup)
                {
                    log.info("skipping guest-agent 'fs-freeze' (freeze-fs-on-backup=0)");
                }
                // Each clean step (ACPI, then the agent) gets its share of `stopwait`.
                let steps = if agent.is_some_and(|a| a.enabled) {
                    2
                } else {
                    1
                };
                let stopwait =
                    Duration::from_secs(job.settings.stopwait.saturating_mul(60)) / steps;
                let prepared = modes::prepare(cx, qmp, stopwait, freeze, restore).await?;
                if prepared.freeze {
                    opts.agent = Some(job.vm_run_dir(vmid).qga_socket());
                }
                opts.was_running = prepared.was_running;
                opts.resume = prepared.resume;
                creating();
                let outcome = live::run(&prepared.qmp, &keys, &configs, &dat, &opts, log).await?;
                if let Some(f) = outcome.frozen {
                    log.info(&format!(
                        "guest downtime: {} ms ({})",
                        f.as_millis(),
                        modes::downtime_kind(Mode::Snapshot)
                    ));
                }
                if let Some(d) = outcome.down {
                    restore.down = Some(d);
                    log.info(&format!(
                        "guest downtime: {} ms ({})",
                        d.as_millis(),
                        modes::downtime_kind(cx.mode)
                    ));
                }
                outcome
            }
            Source::Stopped(drives) => {
                creating();
                log.info("starting kvm to execute backup task");
                let qemu = self
                    .runtime
                    .start_backup_helper(vmid.get(), &drives, self.session)
                    .await?;
                let res = live::run(qemu.qmp(), &keys, &configs, &dat, &opts, log).await;
                log.info("stopping kvm after backup task");
                qemu.stop().await;
                res?
            }
        };
        for line in summary(&outcome.transfer) {
            log.info(&line);
        }
        if job.stdout.is_some() {
            // vzdump: no file to rename, no notes, protection or pruning.
            cx.hook(Phase::BackupEnd).await?;
            return Ok((archive, 0, outcome.transfer));
        }
        let size = commit_archive(job, vmid.get(), plan.config.name(), names, log)?;
        // Pruning and backup-end come after the archive is complete; as in vzdump, their
        // failure fails the guest but keeps the archive.
        let to_log = |level: Level, line: &str| log.line(level, line, false);
        self.after
            .run(vmid.get(), &to_log)
            .map_err(Error::AfterArchive)?;
        cx.hook(Phase::BackupEnd).await?;
        Ok((archive, size, outcome.transfer))
    }
}

/// vzdump's lines after `backup mode:`, for every guest type: the bandwidth limit (if any)
/// and the I/O priority.
pub(crate) fn log_limits(job: &BackupJob, log: &TaskLog<'_>) {
    if job.settings.bwlimit > 0 {
        log.info(&format!("bandwidth limit: {} KiB/s", job.settings.bwlimit));
    }
    log.info(&format!("ionice priority: {}", job.settings.ionice));
}

/// Claims the archive name of a backup starting at `start` in `dump_dir` (created if
/// needed): its `.log` is created and attached to `log`, and temporaries an interrupted
/// backup of the guest left there are removed. VMs and containers alike.
pub(crate) fn claim_names(
    job: &BackupJob,
    kind: GuestType,
    dump_dir: &Path,
    vmid: u32,
    start: chrono::DateTime<chrono::Local>,
    log: &TaskLog<'_>,
) -> Result<ArchiveName> {
    std::fs::create_dir_all(dump_dir)
        .map_err(|e| Error::file("create dump directory", dump_dir, e))?;
    let (names, file) = ArchiveName::reserve(
        kind,
        dump_dir,
        vmid,
        start,
        job.settings.compress,
        NAME_TRIES,
    )
    .map_err(|e| Error::file("create backup log in", dump_dir, e))?;
    log.attach(file);
    for path in crate::lock::remove_stale_temporaries(dump_dir, vmid) {
        log.info(&format!(
            "removed stale temporary file '{}' (left by an interrupted backup)",
            path.display()
        ));
    }
    for path in crate::tmpdir::remove_stale(dump_dir, job.settings.tmpdir.as_deref(), vmid) {
        log.info(&format!(
            "removed stale temporary directory '{}' (left by an interrupted backup)",
            path.display()
        ));
    }
    Ok(names)
}

/// Gives the finished temporary archive its final name (never replacing a file), then adds
/// the notes and the protection marker; returns the archive's size. A failure leaves no
/// archive: the temporary, or the renamed archive and its extras, are removed. VMs and
/// containers alike.
pub(crate) fn commit_archive(
    job: &BackupJob,
    vmid: u32,
    guest_name: Option<&str>,
    names: &ArchiveName,
    log: &TaskLog<'_>,
) -> Result<u64> {
    let (dat, archive) = (names.temporary(), names.archive());
    if let Err(e) = rename_new(&dat, &archive) {
        let _ = std::fs::remove_file(&dat);
        return Err(if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::NameTaken { path: archive }
        } else {
            Error::file("rename archive to", &archive, e)
        });
    }
    let size = std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
    log.info(&format!("archive file size: {}", format_size(size)));
    if let Err(e) = finish_extras(job, vmid, guest_name, names, log) {
        // A failed backup leaves no archive: take back the rename (and the extras).
        for path in [&archive, &names.notes(), &names.protected()] {
            let _ = std::fs::remove_file(path);
        }
        return Err(e);
    }
    Ok(size)
}

/// Notes and protection of a finished archive.
fn finish_extras(
    job: &BackupJob,
    vmid: u32,
    guest_name: Option<&str>,
    names: &ArchiveName,
    log: &TaskLog<'_>,
) -> Result<()> {
    if let Some(t) = &job.settings.notes_template {
        let text = notes::render(
            t,
            &NotesVars {
                guest_name,
                node: &job.node,
                vmid,
            },
        )?;
        if !text.is_empty() {
            log.info("adding notes to backup");
            std::fs::write(names.notes(), text)
                .map_err(|e| Error::file("write notes", names.notes(), e))?;
        }
    }
    if job.settings.protected {
        log.info("marking backup as protected");
        std::fs::write(names.protected(), b"")
            .map_err(|e| Error::file("write", names.protected(), e))?;
    }
    Ok(())
}

/// A `lock: <what>` line in a guest config, removed again on drop.
#[derive(Debug)]
struct ConfigLock {
    path: PathBuf,
    what: &'static str,
}

impl ConfigLock {
    /// Write `cfg` (just loaded from `path`) back with `lock: <what>`.
    fn set(path: &Path, mut cfg: QemuConfig, what: &'static str) -> Result<Self> {
        cfg.set("lock", what)?;
        cfg.save(path)?;
        Ok(ConfigLock {
            path: path.to_path_buf(),
            what,
        })
    }
}

impl Drop for ConfigLock {
    fn drop(&mut self) {
        // Re-read: the config may have changed under the lock (only the lock line is ours).
        let res = QemuConfig::load(&self.path).and_then(|mut cfg| {
            if cfg.lock() == Some(self.what) {
                cfg.remove("lock");
                cfg.save(&self.path)?;
            }
            Ok(())
        });
        if let Err(e) = res {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the config lock");
        }
    }
}

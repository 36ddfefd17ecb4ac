//! Running a backup job: the guest loop with retention around each guest, the summary, and
//! the notification. The CLI (`vmdump jobs run`, `vmdump backup`), the scheduler and a web API
//! all go through here.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use vmdump_config::{BackupJobConfig, ConfigRoot, KeepOptions, VmId};
use vmdump_engine::{BackupJob, Destination, JobLock};
use vmdump_store::{prune, GuestType, Storage};
use vmdump_task::{Level, Progress, Transfer};

use crate::error::Result;
use crate::notify::{self, GuestLine, Policy, Summary};
use crate::scheduler::{RunOutcome, Runner};
use vmdump_task::one_line;

/// The retention that applies to one backup target, resolved once per job.
#[derive(Debug, Clone)]
pub struct Retention {
    /// The target storage (or dumpdir).
    pub storage: Storage,
    /// The keep rules after precedence.
    pub keep: KeepOptions,
    /// Whether to prune after each guest's backup.
    pub remove: bool,
}

impl Retention {
    /// Resolves vzdump's precedence for `target`: `job_keep` (job or command line), then the
    /// storage's `prune-backups`, then `vzdump.conf`, then keep-all; `remove` likewise from the
    /// job or command line, then `vzdump.conf`, default 1, and never with keep-all.
    pub fn resolve(
        root: &ConfigRoot,
        target: &Destination,
        job_keep: Option<&KeepOptions>,
        job_remove: Option<bool>,
    ) -> Result<Self> {
        let conf = root.vzdump()?;
        let conf = conf.options();
        let (storage, storage_keep) = match target {
            Destination::Storage(id) => {
                let cfg = root.storage()?;
                let keep = cfg.storage(id)?.prune_backups()?;
                (Storage::open(root, id)?, keep)
            }
            Destination::Dumpdir(dir) => (Storage::at("dumpdir", dir), None),
        };
        let keep =
            prune::effective_keep(job_keep, storage_keep.as_ref(), conf.prune_backups.as_ref());
        let remove = prune::effective_remove(job_remove.or(conf.remove), &keep);
        Ok(Retention {
            storage,
            keep,
            remove,
        })
    }

    /// The checks before a guest's backup (`remove 0` cap, `max-protected-backups`).
    pub fn before_backup(&self, vmid: u32, protected: bool) -> Result<()> {
        Ok(prune::check_before_backup(
            &self.storage,
            GuestType::Qemu,
            vmid,
            &self.keep,
            self.remove,
            protected,
        )?)
    }

    /// Prunes the guest's backups after its backup when `remove` is on, logging as vzdump
    /// does; returns how many were removed.
    pub fn after_backup(&self, vmid: u32, log: &dyn Fn(Level, &str)) -> Result<usize> {
        if !self.remove {
            return Ok(0);
        }
        log(
            Level::Info,
            &format!(
                "prune older backups with retention: {}",
                describe(&self.keep)
            ),
        );
        let removed = prune::prune_guest(&self.storage, GuestType::Qemu, vmid, &self.keep)?;
        for b in &removed {
            log(Level::Info, &format!("removing backup '{}'", b.volid));
        }
        log(
            Level::Info,
            &format!(
                "pruned {} backup(s) not covered by keep-retention policy",
                removed.len()
            ),
        );
        Ok(removed.len())
    }
}

/// `keep-daily=7, keep-last=3`: the set rules sorted by name, as vzdump logs them.
pub fn describe(keep: &KeepOptions) -> String {
    let mut parts: Vec<String> = keep
        .rules()
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    if parts.is_empty() {
        return "keep-all=1".into();
    }
    parts.sort();
    parts.join(", ")
}

/// Collects a guest's task-log lines (for the notification) and passes them on.
struct Recorder<'a> {
    inner: &'a dyn Progress,
    lines: Mutex<Vec<String>>,
}

impl Recorder<'_> {
    fn take(&self) -> Vec<String> {
        self.lines
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }
}

impl Progress for Recorder<'_> {
    fn log(&self, level: Level, line: &str, progress: bool) {
        if let Ok(mut l) = self.lines.lock() {
            l.push(format!("{}: {line}", level.prefix()));
        }
        self.inner.log(level, line, progress);
    }

    fn update(&self, transfer: &Transfer) {
        self.inner.update(transfer);
    }
}

/// The guests a job selects: its `vmid` list, or all VMs of this host minus `exclude`.
pub fn selected_vmids(root: &ConfigRoot, job: &BackupJobConfig) -> Result<Vec<u32>> {
    if job.all {
        let mut ids = root.qemu_vmids()?;
        ids.extend(root.lxc_vmids()?);
        ids.sort_unstable();
        ids.dedup();
        Ok(ids
            .into_iter()
            .filter(|id| !job.exclude.contains(id))
            .collect())
    } else {
        Ok(job.vmids.clone())
    }
}

/// Runs a job now: every selected guest in turn (a failed guest does not stop the others),
/// retention around each, then one notification per the job's `mailnotification` policy to
/// every target of notifications.cfg and the job's `mailto` (by sendmail). Returns the
/// summary; `Err` only for what stops the job before any guest (configuration, lock).
pub async fn run_job(
    root: &ConfigRoot,
    run_dir: &Path,
    job: &BackupJobConfig,
    progress: &dyn Progress,
) -> Summary {
    let how = RunContext {
        command: format!("vmdump jobs run {}", job.id),
        cancel: None,
    };
    run_job_with(root, run_dir, job, progress, &how).await
}

/// How a run was started: the command its first log line names, and a token that stops it
/// between guests and inside a guest's backup (the web API's task cancel).
#[derive(Debug, Clone, Default)]
pub struct RunContext {
    /// Shown as `starting new backup job: <command>`.
    pub command: String,
    /// Cancels the run (`None`: the engine's own token, set by nobody).
    pub cancel: Option<vmdump_task::Cancel>,
}

/// [`run_job`] for a run started some other way (a "back up now" of the web API: `job` is
/// then an unsaved selection with its options).
pub async fn run_job_with(
    root: &ConfigRoot,
    run_dir: &Path,
    job: &BackupJobConfig,
    progress: &dyn Progress,
    how: &RunContext,
) -> Summary {
    let started = Instant::now();
    let mut summary = Summary {
        hostname: hostname(),
        job_id: Some(job.id.clone()),
        severity: "info",
        guests: Vec::new(),
        total_time: 0,
        total_size: 0,
        job_error: None,
    };
    if let Err(e) = run_guests(root, run_dir, job, progress, how, &mut summary).await {
        let msg = one_line(&e);
        progress.log(Level::Error, &msg, false);
        summary.job_error = Some(msg);
    }
    summary.total_time = started.elapsed().as_secs();
    summary.total_size = summary.guests.iter().map(|g| g.size).sum();
    if !summary.ok() {
        summary.severity = "error";
    }
    if summary.ok() {
        progress.log(Level::Info, "Backup job finished successfully", false);
    } else {
        progress.log(Level::Info, "Backup job finished with errors", false);
    }
    notify_job(root, job, &summary);
    summary
}

async fn run_guests(
    root: &ConfigRoot,
    run_dir: &Path,
    job: &BackupJobConfig,
    progress: &dyn Progress,
    how: &RunContext,
    summary: &mut Summary,
) -> Result<()> {
    progress.log(
        Level::Info,
        &format!("starting new backup job: {}", how.command),
        false,
    );
    let vmids = selected_vmids(root, job)?;
    let (mut bjob, warnings) = BackupJob::new(root.clone(), &job.options, run_dir.to_path_buf())?;
    if let Some(cancel) = &how.cancel {
        bjob.cancel = cancel.clone();
    }
    // The engine's node name (notes templates) is the summary's host name too.
    summary.hostname = bjob.node.clone();
    for w in warnings {
        progress.log(Level::Warn, &w, false);
    }
    let log = |level: Level, line: &str| progress.log(level, line, false);
    bjob.job_hook(vmdump_engine::Phase::JobInit, &log).await?;
    let retention = Retention::resolve(
        root,
        &bjob.settings.destination,
        job.options.prune_backups.as_ref(),
        job.options.remove,
    )?;
    let waited = std::sync::atomic::AtomicBool::new(false);
    let lock = bjob
        .lock(|| {
            waited.store(true, std::sync::atomic::Ordering::Relaxed);
            progress.log(Level::Info, "trying to get global lock - waiting...", false);
        })
        .await?;
    if waited.load(std::sync::atomic::Ordering::Relaxed) {
        progress.log(Level::Info, "got global lock", false);
    }
    let (bjob_ref, lock_ref, retention_ref) = (&bjob, &lock, &retention);
    let guests = &mut summary.guests;
    let res = with_job_hooks(&bjob, progress, move || async move {
        for vmid in vmids {
            if bjob_ref.cancel.is_cancelled() {
                break;
            }
            let (bjob, lock, retention) = (bjob_ref, lock_ref, retention_ref);
            let rec = Recorder {
                inner: progress,
                lines: Mutex::new(Vec::new()),
            };
            let name = root
                .qemu_config(vmid)
                .ok()
                .and_then(|c| c.name().map(str::to_string))
                .unwrap_or_else(|| format!("VM {vmid}"));
            let t0 = Instant::now();
            let res = backup_one(bjob, lock, retention, vmid, &rec).await;
            let mut line = GuestLine {
                vmid,
                name,
                status: "ok",
                error: None,
                time: t0.elapsed().as_secs(),
                size: 0,
                filename: None,
                log: Vec::new(),
            };
            match res {
                Ok(report) => {
                    line.size = report.size;
                    line.filename = Some(report.archive.display().to_string());
                }
                Err(e) => {
                    line.status = "err";
                    line.error = Some(e);
                }
            }
            line.log = rec.take();
            guests.push(line);
        }
    })
    .await;
    if let Err(msg) = res {
        progress.log(Level::Error, &format!("Backup job failed - {msg}"), false);
        summary.job_error = Some(msg);
    }
    Ok(())
}

/// One guest: the limit checks, the backup, the prune. The error text is for the summary.
pub async fn backup_one(
    bjob: &BackupJob,
    lock: &JobLock,
    retention: &Retention,
    vmid: u32,
    progress: &dyn Progress,
) -> std::result::Result<vmdump_engine::BackupReport, String> {
    let id = VmId::new(vmid).map_err(|e| one_line(&e))?;
    if let Err(e) = retention.before_backup(vmid, bjob.settings.protected) {
        let msg = one_line(&e);
        progress.log(
            Level::Error,
            &format!("Backup of VM {vmid} failed - {msg}"),
            false,
        );
        return Err(msg);
    }
    if bjob.root.lxc_config_path(vmid).exists() {
        let report = vmdump_engine::backup_ct(bjob, lock, id, progress)
            .await
            .map_err(|e| one_line(&e))?;
        let log = |level: Level, line: &str| progress.log(level, line, false);
        // An archive on standard output is not on the storage: nothing to prune (vzdump).
        if bjob.stdout.is_some() {
            return Ok(report);
        }
        if let Err(e) = retention.after_backup(vmid, &log) {
            let msg = one_line(&e);
            progress.log(Level::Error, &msg, false);
            return Err(msg);
        }
        return Ok(report);
    }
    // Pruning runs inside the guest's backup, before its backup-end hook (as in vzdump).
    vmdump_engine::backup_vm_with(bjob, lock, id, progress, retention)
        .await
        .map_err(|e| one_line(&e))
}

impl vmdump_engine::AfterArchive for Retention {
    fn run(
        &self,
        vmid: u32,
        log: &(dyn Fn(Level, &str) + Sync),
    ) -> std::result::Result<(), String> {
        self.after_backup(vmid, &|level, line| log(level, line))
            .map(|_| ())
            .map_err(|e| one_line(&e))
    }
}

/// Runs the job's guests with the job hook phases around them: `job-start` once the global
/// lock is held, `job-end` after the last guest, `job-abort` when the loop itself fails (a
/// failing `job-start` or `job-end` hook). `each` backs up one guest.
pub async fn with_job_hooks<F, Fut>(
    bjob: &BackupJob,
    progress: &dyn Progress,
    each: F,
) -> std::result::Result<(), String>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let log = |level: Level, line: &str| progress.log(level, line, false);
    let res = async {
        bjob.job_hook(vmdump_engine::Phase::JobStart, &log).await?;
        each().await;
        bjob.job_hook(vmdump_engine::Phase::JobEnd, &log).await
    }
    .await;
    if let Err(e) = res {
        let msg = one_line(&e);
        if let Err(e2) = bjob.job_hook(vmdump_engine::Phase::JobAbort, &log).await {
            progress.log(Level::Warn, &one_line(&e2), false);
        }
        return Err(msg);
    }
    Ok(())
}

/// Sends the job's notification; failures are only logged.
pub fn notify_job(root: &ConfigRoot, job: &BackupJobConfig, summary: &Summary) {
    let mut targets = match root.notification_targets() {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %one_line(&e), "notifications.cfg unusable, no notification sent");
            Vec::new()
        }
    };
    if let Some(mailto) = &job.options.mailto {
        targets.push(vmdump_config::notifications::NotificationTarget::Sendmail {
            name: "mailto".into(),
            from: vmdump_config::notifications::DEFAULT_FROM.into(),
            mailto: mailto
                .split([',', ' ', ';'])
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        });
    }
    let policy = Policy::from_option(job.options.mailnotification.as_deref());
    notify::deliver(&targets, summary, policy);
}

fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// The scheduler's runner: a fresh async runtime per job, task-log lines to `tracing`.
#[derive(Debug, Clone)]
pub struct BackupRunner {
    /// The configuration root.
    pub root: ConfigRoot,
    /// Base of the per-VM run directories and of the node-global lock.
    pub run_dir: PathBuf,
}

struct TraceProgress;

impl Progress for TraceProgress {
    fn log(&self, level: Level, line: &str, progress: bool) {
        if progress {
            return;
        }
        match level {
            Level::Info => tracing::info!("{line}"),
            Level::Warn => tracing::warn!("{line}"),
            Level::Error => tracing::error!("{line}"),
        }
    }
}

impl Runner for BackupRunner {
    fn run(&self, job: &BackupJobConfig) -> RunOutcome {
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                return RunOutcome {
                    ok: false,
                    message: format!("cannot start the async runtime: {e}"),
                }
            }
        };
        // The run is a task of the registry, like one started from the CLI or the web API.
        let task = match vmdump_task::TaskDir::from_env().start("vzdump", &job.id, "root@scheduler")
        {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "cannot record the job run as a task");
                None
            }
        };
        let tee;
        let progress: &dyn Progress = match &task {
            Some(t) => {
                tee = vmdump_task::Tee(&TraceProgress, t);
                &tee
            }
            None => &TraceProgress,
        };
        let summary = rt.block_on(run_job(&self.root, &self.run_dir, job, progress));
        let outcome = RunOutcome {
            ok: summary.ok(),
            message: if summary.ok() {
                "OK".into()
            } else {
                summary
                    .job_error
                    .clone()
                    .unwrap_or_else(|| "job errors".into())
            },
        };
        if let Some(t) = &task {
            t.finish(if outcome.ok {
                Ok(())
            } else {
                Err(outcome.message.clone())
            });
        }
        outcome
    }
}

/// Applies a prune plan as a task: logs what the plan keeps and removes, then each removal
/// and the count, as vzdump does (`vmdump prune` and the web API's prune task).
pub fn apply_prune(
    storage: &Storage,
    plan: &[prune::PlanEntry],
    progress: &dyn Progress,
) -> Result<Vec<vmdump_store::Backup>> {
    let log = |line: &str| progress.log(Level::Info, line, false);
    log(&format!(
        "prune backups on storage '{}': {} to keep, {} to remove",
        storage.id(),
        plan.iter()
            .filter(|e| e.decision.mark != vmdump_store::retention::Mark::Remove)
            .count(),
        plan.iter()
            .filter(|e| e.decision.mark == vmdump_store::retention::Mark::Remove)
            .count()
    ));
    let removed = prune::apply(storage, plan)?;
    for b in &removed {
        log(&format!("removing backup '{}'", b.volid));
    }
    log(&format!(
        "pruned {} backup(s) not covered by keep-retention policy",
        removed.len()
    ));
    Ok(removed)
}

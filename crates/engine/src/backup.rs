//! One guest's backup as vzdump does it, in two steps: [`plan`] reads the guest config, the
//! storage and QEMU's state and makes every check that can fail before anything is written;
//! [`apply`](backup_vm) claims the archive name, writes the log, runs the push backup,
//! renames the archive to its final name (never over another file), writes notes and
//! protection.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmdump_config::qmdump::{self, BackupDisk, ExcludedDisk};
use vmdump_config::{ConfigRoot, QemuConfig, VmId, VzdumpOptions};
use vmdump_qmp::{Client, RunState};
use vmdump_task::{Cancel, Progress, Transfer};

use crate::error::{Error, Result};
use crate::live::{self, LiveOptions};
use crate::lock::JobLock;
use crate::log::TaskLog;
use crate::name::{rename_new, ArchiveName};
use crate::notes::{self, NotesVars};
use crate::options::{Destination, Resolved, UNSUPPORTED_KEYS};
use crate::progress::{format_hms, format_size, summary};

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
        Ok((
            Self {
                root,
                settings,
                run_dir,
                zstd_level: 1,
                cancel: Cancel::new(),
                node,
            },
            warnings,
        ))
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
    let running = match Client::connect_with_timeout(&qmp_path, Duration::from_secs(10)).await {
        Ok(c) => Some(c),
        Err(vmdump_qmp::Error::Connect { .. }) => None,
        Err(e) => return Err(Error::qmp(format!("connect {}", qmp_path.display()), e)),
    };
    let source = match running {
        Some(qmp) => {
            if job.settings.mode != vmdump_config::Mode::Snapshot {
                return Err(Error::Unsupported(
                    "a mode other than snapshot for a running VM",
                ));
            }
            Source::Running(qmp)
        }
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
    let started = Instant::now();
    let start_time = chrono::Local::now();
    let log = TaskLog::new(progress);
    log.info(&format!("Starting Backup of VM {vmid} (qemu)"));
    log.info(&format!(
        "Backup started at {}",
        start_time.format("%Y-%m-%d %H:%M:%S")
    ));
    let res = async {
        // Records this run's helpers (and holds the NBD socket); reaps what killed runs left
        // first, such as a backup helper QEMU still holding the disks.
        let session = vmdump_launch::Session::open_async(&job.run_dir).await?;
        let plan = plan(job, lock, vmid).await?;
        std::fs::create_dir_all(&plan.dump_dir)
            .map_err(|e| Error::file("create dump directory", &plan.dump_dir, e))?;
        let (names, file) = ArchiveName::reserve(
            &plan.dump_dir,
            vmid.get(),
            start_time,
            job.settings.compress,
            NAME_TRIES,
        )
        .map_err(|e| Error::file("create backup log in", &plan.dump_dir, e))?;
        log.attach(file);
        for path in crate::lock::remove_stale_temporaries(&plan.dump_dir, vmid.get()) {
            log.info(&format!(
                "removed stale temporary file '{}' (left by an interrupted backup)",
                path.display()
            ));
        }
        let (archive, size, transfer) = apply(job, plan, &names, &log, &session).await?;
        Ok::<_, Error>((archive, names.log(), size, transfer))
    }
    .await;
    match res {
        Ok((archive, log_path, size, transfer)) => {
            let duration = started.elapsed();
            log.info(&format!(
                "Finished Backup of VM {vmid} ({})",
                format_hms(duration)
            ));
            log.info(&format!(
                "Backup finished at {}",
                chrono::Local::now().format("%Y-%m-%d %H:%M:%S")
            ));
            log.close();
            Ok(BackupReport {
                vmid,
                archive,
                log: log_path,
                size,
                transfer,
                duration,
            })
        }
        Err(e) => {
            log.error(&format!(
                "Backup of VM {vmid} failed - {}",
                crate::error::chain(&e)
            ));
            log.info(&format!(
                "Failed at {}",
                chrono::Local::now().format("%Y-%m-%d %H:%M:%S")
            ));
            log.close();
            Err(e)
        }
    }
}

/// The side effects of a planned backup.
async fn apply(
    job: &BackupJob,
    plan: BackupPlan,
    names: &ArchiveName,
    log: &TaskLog<'_>,
    session: &std::sync::Arc<vmdump_launch::Session>,
) -> Result<(PathBuf, u64, Transfer)> {
    let vmid = plan.vmid;
    if plan.stale_lock {
        log.warn("removing stale 'lock: backup' left by an interrupted backup");
    }
    // `lock: backup` while the backup runs (vzdump's per-guest lock): `vmdump vm start` and
    // `vmdump restore --force` refuse the guest meanwhile. Removed again on every way out.
    let _config_lock = ConfigLock::set(&plan.config_path, plan.config.clone(), "backup")?;
    log.info(&format!(
        "status = {}",
        match plan.source {
            Source::Running(_) => "running",
            Source::Stopped(_) => "stopped",
        }
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
    log.info(&format!("backup mode: {}", job.settings.mode));
    if job.settings.bwlimit > 0 {
        log.info(&format!("bandwidth limit: {} KiB/s", job.settings.bwlimit));
    }
    let stored = qmdump::backup_copy(&plan.config, &plan.disks);
    let archive = names.archive();
    log.info(&format!("creating vzdump archive '{}'", archive.display()));

    let keys: Vec<String> = plan.disks.iter().map(|d| d.key.to_string()).collect();
    let mut opts = LiveOptions::new(vmid.get());
    opts.speed = job.settings.bwlimit.saturating_mul(1024);
    opts.max_workers = job.settings.max_workers;
    opts.compress = job.settings.compress;
    opts.zstd_threads = job.settings.zstd_threads;
    opts.zstd_level = job.zstd_level;
    opts.cancel = job.cancel.clone();
    opts.socket_dir = session.path().to_path_buf();
    let configs = vec![("qemu-server.conf".to_string(), stored.into_bytes())];
    let dat = names.temporary();

    let outcome = match &plan.source {
        Source::Running(qmp) => {
            let status = qmp
                .query_status()
                .await
                .map_err(|e| Error::qmp("query-status", e))?;
            let agent = plan
                .config
                .agent()
                .ok()
                .filter(|a| a.enabled && a.freeze_fs_on_backup);
            if agent.is_some() && status.status == RunState::Running {
                opts.agent = Some(job.vm_run_dir(vmid).qga_socket());
            }
            opts.was_running = status.status == RunState::Running;
            live::run(qmp, &keys, &configs, &dat, &opts, log).await?
        }
        Source::Stopped(drives) => {
            log.info("starting kvm to execute backup task");
            let qemu = vmdump_guest::Runtime::new(job.root.clone())
                .with_run_base(&job.run_dir)
                .start_backup_helper(vmid.get(), drives, session)
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
    if let Err(e) = finish_extras(job, vmid.get(), plan.config.name(), names, log) {
        // A failed backup leaves no archive: take back the rename (and the extras).
        for path in [&archive, &names.notes(), &names.protected()] {
            let _ = std::fs::remove_file(path);
        }
        return Err(e);
    }
    Ok((archive, size, outcome.transfer))
}

/// Notes and protection of a finished archive (VMs and containers).
pub(crate) fn finish_extras(
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

//! One guest's backup as vzdump does it: config, names, the task log, the push backup, the
//! rename to the final name, notes and protection.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmdump_config::{qmdump, ConfigRoot, QemuConfig};
use vmdump_qmp::{Client, RunState};

use crate::error::{Error, Result};
use crate::live::{self, LiveOptions};
use crate::lock::JobLock;
use crate::log::TaskLog;
use crate::name::ArchiveName;
use crate::notes::{self, NotesVars};
use crate::options::{Compression, Mode, Resolved, Settings, Target};
use crate::progress::{format_hms, format_size, summary, Progress, Transfer};
use crate::stopped::{PausedQemu, StoppedDisk};

/// What a backup job needs besides the guest id.
#[derive(Debug, Clone)]
pub struct BackupJob {
    /// The configuration root.
    pub root: ConfigRoot,
    /// Combined settings.
    pub settings: Resolved,
    /// Directory of the VMs' runtime sockets.
    pub run_dir: PathBuf,
    /// zstd compression level (vzdump leaves zstd's default; we default to 1 for speed).
    pub zstd_level: i32,
    /// Set by a signal handler: aborts the running backup.
    pub interrupt: Arc<AtomicBool>,
    /// Host name for notes templates.
    pub node: String,
}

impl BackupJob {
    /// A job with the settings from the command line over `vzdump.conf` of `root`; returns
    /// warnings about the combination to log.
    pub fn new(root: ConfigRoot, cli: &Settings) -> Result<(Self, Vec<String>)> {
        let conf = match root.vzdump() {
            Ok(c) => Settings::from_conf(c.options()),
            Err(e) => {
                return Err(Error::Config {
                    path: root.vzdump_conf_path(),
                    detail: e.to_string(),
                })
            }
        };
        let (settings, warnings) = Resolved::combine(cli, &conf)?;
        let run_dir = vmdump_guest::run_base_from_env();
        let node = std::fs::read_to_string("/etc/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        Ok((
            Self {
                root,
                settings,
                run_dir,
                zstd_level: 1,
                interrupt: Arc::new(AtomicBool::new(false)),
                node,
            },
            warnings,
        ))
    }

    /// The directory archives go to.
    pub fn dump_dir(&self) -> Result<PathBuf> {
        match &self.settings.target {
            Target::Dumpdir(d) => Ok(d.clone()),
            Target::Storage(id) => {
                let storage = self.root.storage().map_err(|e| Error::Config {
                    path: self.root.storage_cfg_path(),
                    detail: e.to_string(),
                })?;
                let entry = storage.storage(id).map_err(|e| Error::Config {
                    path: self.root.storage_cfg_path(),
                    detail: e.to_string(),
                })?;
                if !entry.has_content("backup") {
                    return Err(Error::Config {
                        path: self.root.storage_cfg_path(),
                        detail: format!("storage '{id}' does not allow content 'backup'"),
                    });
                }
                let base = storage.base_path(id).map_err(|e| Error::Config {
                    path: self.root.storage_cfg_path(),
                    detail: e.to_string(),
                })?;
                Ok(base.join("dump"))
            }
        }
    }

    /// Take the node-global backup lock (`<run dir>/backup.lock`), waiting up to
    /// `lockwait` minutes; `on_wait` runs once if the lock is busy.
    pub async fn lock(&self, on_wait: impl FnOnce()) -> Result<JobLock> {
        let wait = Duration::from_secs(self.settings.lockwait.saturating_mul(60));
        JobLock::acquire(&self.run_dir, wait, &self.interrupt, on_wait).await
    }

    /// The QMP socket of a running VM.
    pub fn qmp_socket(&self, vmid: u32) -> PathBuf {
        self.run_dir.join(vmid.to_string()).join("qmp.sock")
    }

    /// The guest agent socket of a running VM.
    pub fn qga_socket(&self, vmid: u32) -> PathBuf {
        self.run_dir.join(vmid.to_string()).join("qga.sock")
    }
}

impl Settings {
    /// The settings `vzdump.conf` gives (the keys the VM backup uses).
    pub fn from_conf(o: &vmdump_config::VzdumpOptions) -> Self {
        use vmdump_config::{Compress, Mode as CMode};
        Settings {
            mode: o.mode.map(|m| match m {
                CMode::Snapshot => Mode::Snapshot,
                CMode::Suspend => Mode::Suspend,
                CMode::Stop => Mode::Stop,
            }),
            compress: o.compress.map(|c| match c {
                Compress::None => Compression::None,
                Compress::Lzo => Compression::Lzo,
                Compress::Gzip => Compression::Gzip,
                Compress::Zstd => Compression::Zstd,
            }),
            zstd: o.zstd,
            storage: o.storage.clone(),
            dumpdir: o.dumpdir.clone(),
            bwlimit: o.bwlimit,
            performance: crate::options::Performance {
                max_workers: o.performance.as_ref().and_then(|p| p.max_workers),
            },
            notes_template: o.notes_template.clone(),
            protected: o.protected,
            lockwait: o.lockwait,
        }
    }
}

/// What a successful backup produced.
#[derive(Debug, Clone)]
pub struct BackupReport {
    /// Guest id.
    pub vmid: u32,
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

/// Backs up one VM. Every line goes to `progress` and the `.log` beside the archive; on
/// failure the `ERROR:` line is logged, no file with the archive's name exists, and QEMU is
/// left as it was found.
///
/// `_lock` is the proof that this process holds the node-global backup lock (see
/// [`BackupJob::lock`]): that is what makes removing an earlier run's leftovers safe.
pub async fn backup_vm(
    job: &BackupJob,
    _lock: &JobLock,
    vmid: u32,
    progress: &dyn Progress,
) -> Result<BackupReport> {
    let started = Instant::now();
    let start_time = chrono::Local::now();
    let log = TaskLog::new(progress);
    let dir = job.dump_dir();
    let names = dir
        .as_ref()
        .ok()
        .map(|d| ArchiveName::new(d, vmid, start_time, job.settings.compress.extension()));
    let log_path = names.as_ref().map(ArchiveName::log).unwrap_or_default();
    if let (Ok(d), Some(n)) = (&dir, &names) {
        if std::fs::create_dir_all(d).is_ok() {
            if let Err(e) = log.open_file(&n.log()) {
                tracing::warn!(error = %e, "cannot write the backup log");
            }
        }
    }
    log.info(&format!("Starting Backup of VM {vmid} (qemu)"));
    log.info(&format!(
        "Backup started at {}",
        start_time.format("%Y-%m-%d %H:%M:%S")
    ));
    if let Ok(d) = &dir {
        for path in crate::lock::remove_stale_temporaries(d, vmid) {
            log.info(&format!(
                "removed stale temporary file '{}' (left by an interrupted backup)",
                path.display()
            ));
        }
    }
    let res = match (dir, names) {
        (Ok(_), Some(n)) => run(job, vmid, &n, &log).await,
        (Err(e), _) => Err(e),
        (Ok(_), None) => unreachable!("names exist when the directory does"),
    };
    match res {
        Ok((archive, size, transfer)) => {
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
                crate::pipeline::error_chain(&e)
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

async fn run(
    job: &BackupJob,
    vmid: u32,
    names: &ArchiveName,
    log: &TaskLog<'_>,
) -> Result<(PathBuf, u64, Transfer)> {
    let cfg_path = job.root.qemu_config_path(vmid);
    let cfg = job.root.qemu_config(vmid).map_err(|e| Error::Config {
        path: cfg_path.clone(),
        detail: e.to_string(),
    })?;
    match cfg.lock() {
        // Only a backup job sets it, and this process holds the global backup lock: a
        // killed earlier run left it (vzdump would need `qm unlock` here).
        Some("backup") => log.warn("removing stale 'lock: backup' left by an interrupted backup"),
        Some(lock) => {
            return Err(Error::Config {
                path: cfg_path,
                detail: format!("VM is locked ({lock})"),
            })
        }
        None => {}
    }
    // `lock: backup` while the backup runs (vzdump's per-guest lock): `vmdump vm start` and
    // `vmdump restore --force` refuse the guest meanwhile. Removed again on every way out.
    let _config_lock = ConfigLock::set(&cfg_path, cfg.clone(), "backup")?;
    let qmp_path = job.qmp_socket(vmid);
    let running = match Client::connect_with_timeout(&qmp_path, Duration::from_secs(10)).await {
        Ok(c) => Some(c),
        Err(vmdump_qmp::Error::Connect { .. }) => None,
        Err(e) => {
            return Err(Error::qmp(format!("connect {}", qmp_path.display()), e));
        }
    };
    log.info(&format!(
        "status = {}",
        if running.is_some() {
            "running"
        } else {
            "stopped"
        }
    ));
    if let Some(name) = cfg.name() {
        log.info(&format!("VM Name: {name}"));
    }
    let (disks, excluded) = qmdump::backup_disks(&cfg).map_err(|e| Error::Config {
        path: cfg_path.clone(),
        detail: e.to_string(),
    })?;
    for d in &disks {
        log.info(&format!(
            "include disk '{}' '{}'{}",
            d.key,
            d.drive.file(),
            d.size
                .map(|s| format!(" {}", vmdump_config::format_size(s)))
                .unwrap_or_default()
        ));
    }
    for x in &excluded {
        if x.reason == "backup=no" {
            log.info(&format!(
                "exclude disk '{}' '{}' (backup=no)",
                x.key, x.volume
            ));
        }
    }
    if disks.is_empty() {
        return Err(Error::Unsupported("a VM without disks".into()));
    }
    let mode = job.settings.mode;
    log.info(&format!("backup mode: {}", mode.as_str()));
    if job.settings.bwlimit > 0 {
        log.info(&format!("bandwidth limit: {} KiB/s", job.settings.bwlimit));
    }
    if running.is_some() && mode != Mode::Snapshot {
        return Err(Error::Unsupported(format!(
            "mode '{}' for a running VM",
            mode.as_str()
        )));
    }
    let stored = qmdump::backup_copy(&cfg, &disks);
    let archive = names.archive();
    log.info(&format!("creating vzdump archive '{}'", archive.display()));

    let keys: Vec<String> = disks.iter().map(|d| d.key.to_string()).collect();
    let mut opts = LiveOptions::new(vmid);
    opts.speed = job.settings.bwlimit.saturating_mul(1024);
    opts.max_workers = job.settings.max_workers;
    opts.compress = job.settings.compress;
    opts.zstd_threads = job.settings.zstd_threads;
    opts.zstd_level = job.zstd_level;
    opts.interrupt = Arc::clone(&job.interrupt);
    opts.socket_dir = std::env::temp_dir();
    let configs = vec![("qemu-server.conf".to_string(), stored.into_bytes())];
    let dat = names.temporary();

    let outcome = match &running {
        Some(qmp) => {
            let status = qmp
                .query_status()
                .await
                .map_err(|e| Error::qmp("query-status", e))?;
            let agent = cfg
                .agent()
                .ok()
                .filter(|a| a.enabled && a.freeze_fs_on_backup);
            if agent.is_some() && status.status == RunState::Running {
                opts.agent = Some(job.qga_socket(vmid));
            }
            opts.was_running = status.status == RunState::Running;
            live::run(qmp, &keys, &configs, &dat, &opts, log).await?
        }
        None => {
            let storage = job.root.storage().map_err(|e| Error::Config {
                path: job.root.storage_cfg_path(),
                detail: e.to_string(),
            })?;
            let mut sdisks = Vec::new();
            for d in &disks {
                let r = storage
                    .resolve_ref(&d.volume)
                    .map_err(|e| Error::Config {
                        path: cfg_path.clone(),
                        detail: e.to_string(),
                    })?
                    .ok_or_else(|| Error::Device {
                        device: d.devname.clone(),
                        detail: "has no volume".into(),
                    })?;
                sdisks.push(StoppedDisk {
                    drive: d.devname.clone(),
                    path: r.path,
                    format: d.format.clone(),
                });
            }
            log.info("starting kvm to execute backup task");
            let qemu = PausedQemu::start(&job.run_dir.join(vmid.to_string()), &sdisks).await?;
            let res = live::run(&qemu.qmp, &keys, &configs, &dat, &opts, log).await;
            log.info("stopping kvm after backup task");
            qemu.stop().await;
            res?
        }
    };
    for line in summary(&outcome.transfer) {
        log.info(&line);
    }
    if let Err(e) = std::fs::rename(&dat, &archive) {
        let _ = std::fs::remove_file(&dat);
        return Err(Error::file("rename archive to", &archive, e));
    }
    let size = std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
    log.info(&format!("archive file size: {}", format_size(size)));
    finish_extras(job, vmid, &cfg, names, log)?;
    Ok((archive, size, outcome.transfer))
}

fn finish_extras(
    job: &BackupJob,
    vmid: u32,
    cfg: &QemuConfig,
    names: &ArchiveName,
    log: &TaskLog<'_>,
) -> Result<()> {
    if let Some(t) = &job.settings.notes_template {
        let text = notes::render(
            t,
            &NotesVars {
                guest_name: cfg.name(),
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
        let config_err = |e: vmdump_config::Error| Error::Config {
            path: path.to_path_buf(),
            detail: e.to_string(),
        };
        cfg.set("lock", what).map_err(config_err)?;
        cfg.save(path).map_err(config_err)?;
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

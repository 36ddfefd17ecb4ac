//! Container backups (vzdump's `PVE::VZDump::LXC`): one container's backup in three modes,
//! as [`plan_ct`] (every check before a side effect) then apply, over the same job, names,
//! task log, notes and compressors as VM backups.
//!
//! - **stop**: clean shutdown within `stopwait`, the volumes read directly (images mounted
//!   read-only), the container started again on every way out.
//! - **suspend**: rsync of the running container (`/proc/<pid>/root/./`) to a temporary
//!   directory, freeze, a second rsync of the changes, thaw; the copy is archived. The
//!   container is frozen only during the second pass; the window is measured and logged.
//! - **snapshot**: freeze, a read-only storage snapshot of every included volume (btrfs
//!   here; the `vmdump_lxc::SnapshotBackend` extension point for others), thaw, archive the
//!   snapshots, delete them. A volume without snapshots falls back to suspend mode with
//!   vzdump's messages.
//!
//! Hook phases, `bwlimit` (the tar stream and rsync), `ionice`, `--stdout` and `--tmpdir` are
//! the VM side's (`hook`, `ionice`, `tmpdir`, `backup::log_limits`), in vzdump's order per
//! mode; stop mode starts the container again in the cleanup step, after `backup-end`.
//!
//! Guards thaw, restart and unmount on every path; markers let the next run repair a run that
//! was killed (`vmdump_lxc::Runtime::recover`).

mod archive;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmdump_config::{LxcConfig, Mode, VmId};
use vmdump_lxc::{Access, CtState, CtVolume, Runtime, SNAPSHOT_NAME};
use vmdump_store::GuestType;
use vmdump_tar::{Excludes, IdMap, PackOptions};
use vmdump_task::{Progress, Transfer};

use crate::backup::{claim_names, commit_archive, BackupJob, BackupReport};
use crate::error::{Error, Result};
use crate::hook::{GuestCall, Phase};
use crate::lock::JobLock;
use crate::log::TaskLog;
use crate::name::ArchiveName;
use crate::tmpdir::TaskDir;

use archive::{Compression, Tree};

/// Where a container backup reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtSource {
    /// The container is stopped: its volumes (it stays stopped).
    Stopped,
    /// Running, stop mode: shut down, read the volumes, start again.
    Stop,
    /// Running, suspend mode: two rsync passes around a freeze.
    Suspend,
    /// Running, snapshot mode: storage snapshots taken while frozen.
    Snapshot,
}

/// Everything one container backup reads and writes, checked before any side effect.
#[derive(Debug)]
pub struct CtBackupPlan {
    /// The container.
    pub vmid: VmId,
    /// Its config file.
    pub config_path: PathBuf,
    config: LxcConfig,
    /// A `lock: backup` a killed earlier run left.
    pub stale_lock: bool,
    /// Included volumes (rootfs first).
    pub volumes: Vec<CtVolume>,
    /// Mount points left out: key, path, reason.
    pub excluded: Vec<(String, String, &'static str)>,
    /// How the data is read.
    pub source: CtSource,
    /// Snapshot mode was asked for but some volume has no snapshots.
    pub snapshot_fallback: bool,
    /// The container's init pid when it runs.
    pub pid: Option<u32>,
    /// Where the archive goes.
    pub dump_dir: PathBuf,
    /// Exclude patterns and id map for the archive.
    pub pack: PackOptions,
    /// Warnings about exclude patterns tar cannot match.
    pub pattern_warnings: Vec<String>,
}

impl CtBackupPlan {
    /// The mode the backup runs in: `stop` for a stopped container, `suspend` after a
    /// snapshot fallback.
    pub fn mode(&self) -> &'static str {
        match self.source {
            CtSource::Stopped | CtSource::Stop => "stop",
            CtSource::Suspend => "suspend",
            CtSource::Snapshot => "snapshot",
        }
    }
}

/// Reads and checks what a backup of container `vmid` needs. Writes nothing.
pub fn plan_ct(job: &BackupJob, _lock: &JobLock, vmid: VmId) -> Result<CtBackupPlan> {
    let rt = runtime(job);
    let config_path = job.root.lxc_config_path(vmid.get());
    let config = rt.config(vmid.get())?;
    let stale_lock = match config.lock() {
        Some("backup") => true,
        Some(lock) => {
            return Err(Error::GuestLocked {
                vmid: vmid.get(),
                lock: lock.to_string(),
            })
        }
        None => false,
    };
    let (vols, other) = rt.volumes(vmid.get(), &config)?;
    let mut excluded = Vec::new();
    let mut volumes = Vec::new();
    for v in vols {
        if v.backup {
            volumes.push(v);
        } else {
            excluded.push((v.key.clone(), v.mp.clone(), "disabled"));
        }
    }
    for (key, mp, _) in &other {
        excluded.push((key.clone(), mp.clone(), "not a volume"));
    }
    let state = rt.state(vmid.get())?;
    let mut snapshot_fallback = false;
    let source = match (state, job.settings.mode) {
        (CtState::Stopped, _) => CtSource::Stopped,
        (_, Mode::Stop) => CtSource::Stop,
        (_, Mode::Suspend) => CtSource::Suspend,
        (_, Mode::Snapshot) => {
            if volumes
                .iter()
                .all(|v| vmdump_lxc::snapshot::backend(v).is_some())
            {
                CtSource::Snapshot
            } else {
                snapshot_fallback = true;
                CtSource::Suspend
            }
        }
    };
    let (mut excludes, pattern_warnings) =
        Excludes::vzdump(&job.settings.ct.exclude_path, job.settings.ct.stdexcludes);
    let unprivileged = config.unprivileged();
    if unprivileged {
        excludes.add_unanchored("lost+found");
    }
    let dump_dir = job.dump_dir()?;
    Ok(CtBackupPlan {
        vmid,
        config_path,
        config,
        stale_lock,
        volumes,
        excluded,
        source,
        snapshot_fallback,
        pid: state.pid(),
        dump_dir,
        pack: PackOptions {
            excludes,
            idmap: unprivileged.then(IdMap::unprivileged),
        },
        pattern_warnings,
    })
}

fn runtime(job: &BackupJob) -> Runtime {
    Runtime::new(job.root.clone(), job.run_dir.clone())
}

/// Runs blocking work: in place on a multi-threaded runtime, directly otherwise.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Backs up one container: [`plan_ct`], then apply. Lines go to `progress` and the `.log`
/// beside the archive. On failure no file has the archive's name, the container is thawed
/// and running again if it ran, and snapshots and temporary mounts are gone.
pub async fn backup_ct(
    job: &BackupJob,
    lock: &JobLock,
    vmid: VmId,
    progress: &dyn Progress,
) -> Result<BackupReport> {
    let started = Instant::now();
    let start_time = chrono::Local::now();
    let log = TaskLog::new(progress);
    log.started(vmid, "lxc", start_time);
    if let Err(e) = crate::ionice::apply(job.settings.ionice) {
        log.warn(&format!("cannot set the I/O priority: {e}"));
    }
    // What the backup-abort and log-end hooks are told, once known.
    let mut known: (Option<ArchiveName>, Option<String>, &str) =
        (None, None, job.settings.mode.as_str());
    let session = vmdump_launch::Session::open_async(&job.run_dir).await;
    let res = blocking(|| {
        let session = session?;
        let _guest = vmdump_guest::VmLock::try_acquire(&job.run_dir, vmid.get())?
            .ok_or(vmdump_lxc::Error::Busy { vmid: vmid.get() })?;
        for m in runtime(job).recover(vmid.get()) {
            log.warn(&m);
        }
        let plan = plan_ct(job, lock, vmid)?;
        known.1 = plan.config.hostname().map(str::to_string);
        known.2 = plan.mode();
        let names = claim_names(
            job,
            GuestType::Lxc,
            &plan.dump_dir,
            vmid.get(),
            start_time,
            &log,
        )?;
        known.0 = Some(names.clone());
        let (archive, size, transfer) = apply(job, plan, &names, &log, &session)?;
        Ok::<_, Error>((archive, names.log(), size, transfer))
    });
    let hostname = known.1.unwrap_or_else(|| format!("CT{vmid}"));
    let end = crate::backup::GuestEnd {
        vmid,
        vmtype: "lxc",
        mode: known.2,
        hostname: &hostname,
        names: known.0.as_ref(),
        started,
    };
    end.finish(job, &log, res).await
}

/// `lock: backup` in the container config while the backup runs; removed on drop.
struct CtConfigLock {
    path: PathBuf,
}

impl CtConfigLock {
    fn set(path: &Path, mut cfg: LxcConfig) -> Result<Self> {
        cfg.set("lock", "backup")?;
        cfg.save(path)?;
        Ok(CtConfigLock {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for CtConfigLock {
    fn drop(&mut self) {
        let res = LxcConfig::load(&self.path).and_then(|mut cfg| {
            if cfg.lock() == Some("backup") {
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

/// Snapshots taken for the backup; deleted on drop.
struct Snapshots<'a> {
    taken: Vec<&'a CtVolume>,
    log: &'a TaskLog<'a>,
}

impl Drop for Snapshots<'_> {
    fn drop(&mut self) {
        if self.taken.is_empty() {
            return;
        }
        self.log
            .info(&format!("cleanup temporary '{SNAPSHOT_NAME}' snapshot"));
        for v in self.taken.drain(..).rev() {
            let b = vmdump_lxc::snapshot::backend(v).expect("taken snapshots have a backend");
            if let Err(e) = b.remove(v, SNAPSHOT_NAME) {
                self.log.warn(&format!(
                    "cannot remove snapshot '{SNAPSHOT_NAME}' of {}: {}",
                    v.volid,
                    vmdump_task::one_line(&e)
                ));
            }
        }
    }
}

fn tree_name(mp: &str) -> String {
    let rel = mp.trim_matches('/');
    if rel.is_empty() {
        ".".to_string()
    } else {
        format!("./{rel}")
    }
}

fn apply(
    job: &BackupJob,
    plan: CtBackupPlan,
    names: &ArchiveName,
    log: &TaskLog<'_>,
    session: &Arc<vmdump_launch::Session>,
) -> Result<(PathBuf, u64, Transfer)> {
    let vmid = plan.vmid.get();
    let rt = runtime(job);
    if plan.stale_lock {
        log.warn("removing stale 'lock: backup' left by an interrupted backup");
    }
    let _config_lock = CtConfigLock::set(&plan.config_path, plan.config.clone())?;
    log.info(&format!(
        "status = {}",
        if plan.source == CtSource::Stopped {
            "stopped"
        } else {
            "running"
        }
    ));
    if let Some(h) = plan.config.hostname() {
        log.info(&format!("CT Name: {h}"));
    }
    for v in &plan.volumes {
        log.info(&format!(
            "including mount point {} ('{}') in backup",
            v.key, v.mp
        ));
    }
    for (key, mp, why) in &plan.excluded {
        log.info(&format!(
            "excluding {} mount point {key} ('{mp}') from backup ({why})",
            if *why == "disabled" { "volume" } else { "bind" }
        ));
    }
    for w in &plan.pattern_warnings {
        log.warn(w);
    }
    if plan.snapshot_fallback {
        log.error("mode failure - some volumes do not support snapshots");
        log.info("trying 'suspend' mode instead");
    }
    log.info(&format!("backup mode: {}", plan.mode()));
    crate::backup::log_limits(job, log);
    let hostname = plan
        .config
        .hostname()
        .map_or_else(|| format!("CT{vmid}"), str::to_string);
    let (target, logfile) = (job.target(names), names.log());
    let call = GuestCall {
        mode: plan.mode(),
        vmid,
        vmtype: "lxc",
        hostname: &hostname,
        target: Some(&target),
        logfile: Some(&logfile),
    };
    let steps = Steps {
        job,
        plan: &plan,
        names,
        log,
        session,
        rt: &rt,
        call,
    };
    // Stop mode starts the container again in vzdump's cleanup step, after `backup-end`.
    let mut stopped = None;
    let res = steps.archive(&mut stopped);
    if let Some((guard, down)) = stopped {
        let restarted = steps.restart(guard, down);
        if res.is_ok() {
            restarted?;
        }
    }
    res
}

/// A container stopped for the backup, and since when.
type Stopped<'a> = (vmdump_lxc::StoppedGuard<'a>, Instant);

/// The steps of one container backup after its plan.
struct Steps<'a> {
    job: &'a BackupJob,
    plan: &'a CtBackupPlan,
    names: &'a ArchiveName,
    log: &'a TaskLog<'a>,
    session: &'a Arc<vmdump_launch::Session>,
    rt: &'a Runtime,
    call: GuestCall<'a>,
}

impl<'a> Steps<'a> {
    /// Runs a guest phase of the hook script, if there is one; its output goes to the log.
    fn hook(&self, phase: Phase) -> Result<()> {
        match &self.job.hook {
            None => Ok(()),
            Some(h) => h.guest_blocking(phase, &self.call, &|level, line| {
                self.log.line(level, line, false);
            }),
        }
    }

    /// [`hook`](Self::hook) in a cleanup step: a failure is a warning.
    fn hook_warn(&self, phase: Phase) {
        if let Err(e) = self.hook(phase) {
            self.log.warn(&vmdump_task::one_line(&e));
        }
    }

    /// vzdump's cleanup for stop mode: `pre-restart`, start, `post-restart`.
    fn restart(&self, guard: vmdump_lxc::StoppedGuard<'_>, down: Instant) -> Result<()> {
        self.hook_warn(Phase::PreRestart);
        self.log.info("restarting vm");
        let restarted = guard.restart();
        self.hook_warn(Phase::PostRestart);
        match &restarted {
            Ok(()) => self.log.info(&format!(
                "guest is online again after {} seconds",
                down.elapsed().as_secs()
            )),
            Err(e) => self.log.error(&format!(
                "cannot start the container again: {}",
                vmdump_task::one_line(e)
            )),
        }
        Ok(restarted?)
    }

    /// From `backup-start` to `backup-end`; a container stopped for the backup is handed
    /// back in `stopped` (also on failure) for [`restart`](Self::restart).
    fn archive(&self, stopped: &mut Option<Stopped<'a>>) -> Result<(PathBuf, u64, Transfer)> {
        let (job, plan, log, rt) = (self.job, self.plan, self.log, self.rt);
        let vmid = plan.vmid.get();
        self.hook(Phase::BackupStart)?;

        // pct.conf (the config without lock and snapshots) and pct.fw (empty without a
        // firewall).
        let conf_dir = self.session.temp_dir("ctconf").map_err(Error::Session)?;
        let vz = conf_dir.join("etc/vzdump");
        std::fs::create_dir_all(&vz).map_err(|e| Error::file("create", &vz, e))?;
        std::fs::write(vz.join("pct.conf"), plan.config.backup_copy().to_string())
            .map_err(|e| Error::file("write", vz.join("pct.conf"), e))?;
        let fw = job.root.dir().join("firewall").join(format!("{vmid}.fw"));
        let fw_text = std::fs::read(&fw).unwrap_or_default();
        std::fs::write(vz.join("pct.fw"), fw_text)
            .map_err(|e| Error::file("write", vz.join("pct.fw"), e))?;

        let ct_dir = rt.ct_dir(vmid);
        std::fs::create_dir_all(&ct_dir).map_err(|e| Error::file("create", &ct_dir, e))?;
        let dat = self.names.temporary();
        let comp = Compression {
            codec: job.settings.compress,
            zstd_threads: job.settings.zstd_threads,
            zstd_level: job.zstd_level,
            rate: job.settings.bwlimit.saturating_mul(1024),
        };
        let stream = job.stdout.as_deref();
        let write = |trees: &[Tree]| -> Result<archive::Written> {
            match stream {
                Some(_) => log.info("sending archive to stdout"),
                None => log.info(&format!(
                    "creating vzdump archive '{}'",
                    self.names.archive().display()
                )),
            }
            let t0 = Instant::now();
            let res = archive::write(
                &dat,
                stream,
                comp,
                &conf_dir,
                trees,
                &plan.pack,
                &job.cancel,
            );
            match res {
                Ok(w) => {
                    for warn in &w.stats.warnings {
                        log.warn(warn);
                    }
                    log.info(&archive::totals_line(w.bytes, t0.elapsed().as_secs_f64()));
                    Ok(w)
                }
                Err(e) => {
                    if stream.is_none() {
                        let _ = std::fs::remove_file(&dat);
                    }
                    Err(e)
                }
            }
        };

        let written = match plan.source {
            CtSource::Stopped => {
                let (_mounts, trees) = open_volumes(&plan.volumes, &ct_dir, None)?;
                write(&trees)?
            }
            CtSource::Stop => {
                log.info("stopping virtual guest");
                self.hook(Phase::PreStop)?;
                let down = Instant::now();
                let guard = rt.stop_guarded(
                    vmid,
                    Duration::from_secs(job.settings.stopwait.saturating_mul(60)),
                )?;
                *stopped = Some((guard, down));
                let (mounts, trees) = open_volumes(&plan.volumes, &ct_dir, None)?;
                let w = write(&trees);
                drop(mounts);
                w?
            }
            CtSource::Suspend => {
                let pid = plan.pid.ok_or(vmdump_lxc::Error::State {
                    vmid,
                    state: "not running".into(),
                })?;
                let tmp = TaskDir::create(job, self.names, vmid)?;
                let src = format!("/proc/{pid}/root/");
                let sources: Vec<String> = plan
                    .volumes
                    .iter()
                    .map(|v| format!("/proc/{pid}/root/.{}", v.mp.trim_end_matches('/')))
                    .map(|s| {
                        if s.ends_with("/.") {
                            format!("{s}/")
                        } else {
                            s
                        }
                    })
                    .collect();
                let rsync_excludes = rsync_excludes(plan);
                let bwlimit = job.settings.bwlimit;
                log.info(&format!(
                    "starting first sync {src} to {}",
                    tmp.path().display()
                ));
                let t1 = Instant::now();
                let first = rsync(
                    self.session,
                    &sources,
                    tmp.path(),
                    &rsync_excludes,
                    bwlimit,
                    &job.cancel,
                )?;
                log.info(&format!(
                    "first sync finished - transferred {first} in {}s",
                    t1.elapsed().as_secs()
                ));
                log.info("suspending guest");
                self.hook(Phase::PreStop)?;
                let frozen = rt.freeze_guarded(vmid)?;
                log.info(&format!(
                    "starting final sync {src} to {}",
                    tmp.path().display()
                ));
                let t2 = Instant::now();
                let second = rsync(
                    self.session,
                    &sources,
                    tmp.path(),
                    &rsync_excludes,
                    bwlimit,
                    &job.cancel,
                );
                if let Ok(s) = &second {
                    log.info(&format!(
                        "final sync finished - transferred {s} in {}s",
                        t2.elapsed().as_secs()
                    ));
                }
                log.info("resuming guest");
                let pre = self.hook(Phase::PreRestart);
                let window = frozen.thaw();
                let post = self.hook(Phase::PostRestart);
                let window = window?;
                second?;
                pre?;
                post?;
                log.info(&format!(
                    "guest is online again after {} seconds",
                    window.as_secs()
                ));
                log.info(&format!("frozen window: {:.3} s", window.as_secs_f64()));
                let trees = [Tree {
                    dir: tmp.path().to_path_buf(),
                    name: ".".into(),
                }];
                write(&trees)?
            }
            CtSource::Snapshot => {
                let mut snaps = Snapshots {
                    taken: Vec::new(),
                    log,
                };
                for v in &plan.volumes {
                    let b = vmdump_lxc::snapshot::backend(v).expect("checked by the plan");
                    if b.exists(v, SNAPSHOT_NAME) {
                        log.info(&format!(
                            "removing stale '{SNAPSHOT_NAME}' snapshot of {}",
                            v.volid
                        ));
                        b.remove(v, SNAPSHOT_NAME)?;
                    }
                }
                self.hook(Phase::PreStop)?;
                log.info("suspend vm to make snapshot");
                let frozen = rt.freeze_guarded(vmid)?;
                log.info(&format!("create storage snapshot '{SNAPSHOT_NAME}'"));
                let mut res = Ok(());
                for v in &plan.volumes {
                    let b = vmdump_lxc::snapshot::backend(v).expect("checked by the plan");
                    match b.create(v, SNAPSHOT_NAME) {
                        Ok(()) => snaps.taken.push(v),
                        Err(e) => {
                            res = Err(e);
                            break;
                        }
                    }
                }
                let pre = self.hook(Phase::PreRestart);
                log.info("resume vm");
                let window = frozen.thaw();
                let post = self.hook(Phase::PostRestart);
                let window = window?;
                res?;
                pre?;
                post?;
                log.info(&format!(
                    "guest is online again after {} seconds",
                    window.as_secs()
                ));
                log.info(&format!("frozen window: {:.3} s", window.as_secs_f64()));
                let (mounts, trees) = open_volumes(&plan.volumes, &ct_dir, Some(SNAPSHOT_NAME))?;
                let w = write(&trees);
                drop(mounts);
                drop(snaps);
                w?
            }
        };
        let transfer = Transfer {
            total: written.bytes,
            transferred: written.bytes,
            ..Transfer::default()
        };
        if job.stdout.is_some() {
            // vzdump: no file to rename, no notes, protection or pruning.
            self.hook(Phase::BackupEnd)?;
            return Ok((PathBuf::from("-"), 0, transfer));
        }
        let size = commit_archive(job, vmid, plan.config.hostname(), self.names, log)?;
        self.hook(Phase::BackupEnd)?;
        Ok((self.names.archive(), size, transfer))
    }
}

/// The included volumes (or their snapshots) as directories, with their member names.
fn open_volumes(
    vols: &[CtVolume],
    ct_dir: &Path,
    snapshot: Option<&str>,
) -> Result<(Vec<Access>, Vec<Tree>)> {
    let mut mounts = Vec::new();
    let mut trees = Vec::new();
    for v in vols {
        let (path, layout) = match snapshot {
            Some(name) => vmdump_lxc::snapshot::backend(v)
                .expect("snapshot volumes have a backend")
                .source(v, name),
            None => (v.path.clone(), v.layout),
        };
        let a = Access::open(&path, layout, ct_dir, true)?;
        trees.push(Tree {
            dir: a.dir().to_path_buf(),
            name: tree_name(&v.mp),
        });
        mounts.push(a);
    }
    Ok((mounts, trees))
}

/// rsync `--exclude`s: vzdump's patterns as given (rsync anchors a leading `/` at the
/// transfer root, the container's `/`), the standard excludes, and the contents of mount
/// points that are not backed up.
fn rsync_excludes(plan: &CtBackupPlan) -> Vec<String> {
    let mut v = Vec::new();
    // Excluded mount points: their content only (vzdump adds them the same way).
    for (_, mp, _) in &plan.excluded {
        v.push(format!("{}/?*", mp.trim_end_matches('/')));
    }
    v
}

/// One rsync pass from the container's root (`sources`: its root and the included mount
/// points, as `/proc/<pid>/root/./<mp>`: `--one-file-system` stops at every mount) into
/// `dest`; returns rsync's "Total transferred file size" figure.
fn rsync(
    session: &Arc<vmdump_launch::Session>,
    sources: &[String],
    dest: &Path,
    extra_excludes: &[String],
    bwlimit: u64,
    cancel: &vmdump_task::Cancel,
) -> Result<String> {
    let mut cmd = Command::new("rsync");
    cmd.args([
        "--stats",
        "-h",
        "-X",
        "-A",
        "--numeric-ids",
        "-aH",
        "--delete",
        "--no-whole-file",
        "--sparse",
        "--one-file-system",
        "--relative",
        // Compare mtimes to the nanosecond: a file rewritten with the same size within the
        // second of the first pass must not be skipped by the frozen pass.
        "--modify-window=-1",
    ]);
    if bwlimit > 0 {
        // KiB/s, as vzdump passes it.
        cmd.arg(format!("--bwlimit={bwlimit}"));
    }
    for e in extra_excludes {
        cmd.arg(format!("--exclude={e}"));
    }
    cmd.args(sources).arg(dest);
    // Output goes to files (a pipe could fill while we poll), read after the exit.
    let outdir = session.temp_dir("rsync")?;
    let (out_path, err_path) = (outdir.join("stdout"), outdir.join("stderr"));
    let out_file =
        std::fs::File::create(&out_path).map_err(|e| Error::file("create", &out_path, e))?;
    let err_file =
        std::fs::File::create(&err_path).map_err(|e| Error::file("create", &err_path, e))?;
    cmd.stdin(Stdio::null()).stdout(out_file).stderr(err_file);
    let mut helper = session.spawn("rsync", cmd)?;
    let status = loop {
        if cancel.is_cancelled() {
            helper.kill();
            return Err(Error::Interrupted);
        }
        match helper.wait_timeout_blocking(Duration::from_millis(100)) {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => return Err(Error::file("wait for", "rsync", e)),
        }
    };
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&outdir);
    // 24: some files vanished before they could be transferred (a live source).
    if !status.success() && status.code() != Some(24) {
        let tail: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        return Err(Error::Sync {
            what: "rsync",
            detail: format!(
                "{status}: {}",
                tail[tail.len().saturating_sub(3)..].join("; ")
            ),
        });
    }
    Ok(out
        .lines()
        .find_map(|l| l.strip_prefix("Total transferred file size: "))
        .map_or_else(
            || "?".to_string(),
            |s| s.trim().trim_end_matches(" bytes").to_string(),
        ))
}

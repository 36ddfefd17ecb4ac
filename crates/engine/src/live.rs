//! One push backup of a QEMU process's disks into one archive file: target, jobs,
//! freeze/thaw, transfer, commit or abort. [`crate::backup`] wraps this with configuration,
//! names and logs; tests call it directly on a QEMU they started.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use vmdump_config::Codec;
use vmdump_guest::{BackupMark, Hold};
use vmdump_qmp::Client;
use vmdump_task::{Cancel, Level, Transfer};

use crate::error::{Error, Failure, Result};
use crate::job::{self, Poll, SourceDisk};
use crate::log::TaskLog;
use crate::output::ArchiveFile;
use crate::pipeline::{Msg, Shared, WriterThread, CHANNEL_CLUSTERS};
use crate::progress::ProgressLines;
use crate::target::{DiskExport, NbdTarget};

/// How often the jobs are polled.
const POLL: Duration = Duration::from_millis(200);
/// How long QEMU may take to close the NBD connections after `blockdev-del`.
const CLOSE_WAIT: Duration = Duration::from_secs(30);

/// Knobs of one push backup.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// Rate limit in bytes per second (0 = none).
    pub speed: u64,
    /// QEMU copy workers per job.
    pub max_workers: Option<u32>,
    /// Archive compression.
    pub compress: Codec,
    /// zstd worker threads.
    pub zstd_threads: u32,
    /// zstd level.
    pub zstd_level: i32,
    /// Guest agent socket: freeze/thaw around the job start.
    pub agent: Option<PathBuf>,
    /// Cancelled from outside (signal handler) to abort the backup.
    pub cancel: Cancel,
    /// Directory for the target socket.
    pub socket_dir: PathBuf,
    /// vmid (progress reports).
    pub vmid: u32,
    /// The guest was running: log vzdump's `resuming VM again` after the job start (the VM
    /// is never paused in snapshot mode, so there is nothing to resume).
    pub was_running: bool,
    /// The guest was paused (suspend mode) or started paused after a shutdown (stop mode)
    /// for the backup at this instant: `cont` it as soon as the jobs run, and log how long
    /// it was down.
    pub resume: Option<Instant>,
    /// The backup mark of the guest: the hold is recorded there before a freeze and cleared
    /// after the thaw or `cont`, so a killed run's hold can be undone by the next one.
    pub mark: Option<Arc<std::sync::Mutex<BackupMark>>>,
    /// Write the archive into this open file (vzdump's `--stdout`) instead of creating
    /// `dat`.
    pub stream: Option<Arc<std::fs::File>>,
    /// Back up with fleecing (pull mode, `crate::vm::fleece`): the fleecing images go there.
    pub fleecing: Option<crate::FleecingPlan>,
}

impl LiveOptions {
    /// Defaults: no limit, no compression, no agent, socket in the system temp dir.
    pub fn new(vmid: u32) -> Self {
        Self {
            speed: 0,
            max_workers: None,
            compress: Codec::None,
            zstd_threads: 1,
            zstd_level: 1,
            agent: None,
            cancel: Cancel::new(),
            socket_dir: std::env::temp_dir(),
            vmid,
            was_running: false,
            resume: None,
            mark: None,
            stream: None,
            fleecing: None,
        }
    }
}

/// Result of a successful transfer.
#[derive(Debug, Clone)]
pub struct LiveOutcome {
    /// Final counters.
    pub transfer: Transfer,
    /// The archive uuid (lower-case text).
    pub uuid: String,
    /// The disks backed up.
    pub disks: Vec<SourceDisk>,
    /// How long the guest's filesystems were frozen (snapshot mode with the agent).
    pub frozen: Option<Duration>,
    /// How long the guest was down, from [`LiveOptions::resume`] to its `cont`.
    pub down: Option<Duration>,
    /// Bytes the `sync=top` jobs did not copy because the images never allocated them
    /// (recorded as zero in the archive).
    pub unallocated: u64,
}

/// The windows of one job start.
#[derive(Debug, Default)]
struct Windows {
    frozen: Option<Duration>,
    down: Option<Duration>,
}

/// Records `hold` in the backup mark, if there is one. A failure only warns: the mark is
/// there for a crash, and the backup itself does not need it.
pub(crate) fn set_hold(
    mark: Option<&Arc<std::sync::Mutex<BackupMark>>>,
    hold: Hold,
    log: &TaskLog<'_>,
) {
    if let Some(m) = mark {
        let res = m
            .lock()
            .map_err(|_| "poisoned".to_string())
            .and_then(|mut m| m.set(hold).map_err(|e| e.to_string()));
        if let Err(e) = res {
            log.warn(&format!(
                "cannot record the guest's state in the backup mark: {e}"
            ));
        }
    }
}

/// Backs up `keys` (config keys like `scsi0`) of the QEMU behind `qmp` into `dat` (created
/// new; deleted again on failure). `configs` are stored in the archive header.
pub async fn run(
    qmp: &Client,
    keys: &[String],
    configs: &[(String, Vec<u8>)],
    dat: &Path,
    opts: &LiveOptions,
    log: &TaskLog<'_>,
) -> Result<LiveOutcome> {
    let res = match &opts.fleecing {
        Some(plan) => crate::vm::fleece::run(qmp, keys, configs, dat, opts, plan, log).await,
        None => run_inner(qmp, keys, configs, dat, opts, log).await,
    };
    // Only what this run created is removed (and a failure to remove it reported): an
    // archive that could not even be created leaves nothing to talk about.
    if res.is_err() && opts.stream.is_none() && dat.symlink_metadata().is_ok() {
        if let Err(e) = std::fs::remove_file(dat) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log.warn(&format!("could not remove '{}': {e}", dat.display()));
            }
        }
    }
    res
}

/// Freezes the guest's filesystems through the agent of `opts`, if it has one, with the hold
/// written into the backup mark first (and cleared again when the agent does not answer).
/// Returns the agent and the freeze's start for the thaw.
pub(crate) async fn freeze_marked(
    opts: &LiveOptions,
    log: &TaskLog<'_>,
) -> Option<(vmdump_qmp::qga::Client, Instant)> {
    let path = opts.agent.as_ref()?;
    let mark = opts.mark.as_ref();
    set_hold(mark, Hold::Frozen, log);
    let agent = crate::freeze::freeze(path, log).await;
    match agent {
        Some(_) => crate::vm::stall("frozen"),
        None => set_hold(mark, Hold::None, log),
    }
    agent
}

/// The archive side of a backup, push or pull: the archive file (or `--stdout`), its VMA
/// writer holding the configs and one device per disk, and the writer thread fed over `tx`.
pub(crate) struct ArchiveSide {
    pub(crate) uuid: uuid::Uuid,
    /// The VMA device number of each disk, in order.
    pub(crate) devs: Vec<u8>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) tx: mpsc::Sender<Msg>,
    pub(crate) writer: WriterThread,
}

/// Starts the [`ArchiveSide`] of a backup of `disks` into `dat`.
pub(crate) fn start_archive(
    dat: &Path,
    opts: &LiveOptions,
    configs: &[(String, Vec<u8>)],
    disks: &[SourceDisk],
) -> Result<ArchiveSide> {
    let uuid = uuid::Uuid::new_v4();
    let output = ArchiveFile::open(
        dat,
        opts.stream.as_deref(),
        opts.compress,
        opts.zstd_threads,
        opts.zstd_level,
    )
    .map_err(|e| Error::file("create archive", dat, e))?;
    let mut writer = vmdump_vma::Writer::with_identity(output, *uuid.as_bytes(), None);
    for (name, data) in configs {
        writer.add_config(name, data).map_err(Error::Header)?;
    }
    let mut ids = Vec::new();
    for d in disks {
        ids.push(
            writer
                .register_device(&d.drive, d.size)
                .map_err(Error::Header)?,
        );
    }
    let devs = ids.iter().map(|id| id.get()).collect();
    let names = disks.iter().map(|d| d.drive.clone()).collect();
    let shared = Arc::new(Shared::default());
    let (tx, rx) = mpsc::channel(CHANNEL_CLUSTERS);
    let writer = WriterThread::spawn(writer, rx, Arc::clone(&shared), names, ids)
        .map_err(|e| Error::file("start the writer thread for", dat, e))?;
    Ok(ArchiveSide {
        uuid,
        devs,
        shared,
        tx,
        writer,
    })
}

async fn run_inner(
    qmp: &Client,
    keys: &[String],
    configs: &[(String, Vec<u8>)],
    dat: &Path,
    opts: &LiveOptions,
    log: &TaskLog<'_>,
) -> Result<LiveOutcome> {
    for what in job::clean_stale(qmp).await? {
        log.warn(&format!("removed stale {what} left by an earlier backup"));
    }
    let disks = job::resolve_disks(qmp, keys).await?;

    // Archive side.
    let ArchiveSide {
        uuid,
        devs,
        shared,
        tx,
        writer,
    } = start_archive(dat, opts, configs, &disks)?;
    let exports = disks
        .iter()
        .zip(&devs)
        .map(|(d, &dev)| Arc::new(DiskExport::new(&d.drive, dev, d.size)))
        .collect();
    let socket = opts
        .socket_dir
        .join(format!("vmdump-{}-{}.nbd", opts.vmid, std::process::id()));
    let target = match NbdTarget::start(&socket, exports, tx, Arc::clone(&shared)).await {
        Ok(t) => t,
        Err(source) => {
            shared.abandon();
            writer.join();
            return Err(Error::Listen {
                path: socket,
                source,
            });
        }
    };

    let mut windows = Windows::default();
    let res = transfer(
        qmp,
        &disks,
        &target,
        &shared,
        opts,
        log,
        &uuid,
        &mut windows,
    )
    .await;
    let transfer = match res {
        Ok(t) => t,
        Err(e) => {
            // Given up: the writer must not finish (and complain about) a partial stream.
            shared.abandon();
            target.shutdown().await;
            if let Some(out) = writer.join() {
                out.abort();
            }
            return Err(e);
        }
    };

    // Every export saw DISC: all data is in the channel. Check completeness, then let the
    // writer finish.
    let unallocated = target.exports().iter().map(|e| e.unallocated()).sum();
    let mut incomplete = None;
    for e in target.exports() {
        if let Some(n) = e.first_missing() {
            incomplete = Some((e.name.clone(), n));
            break;
        }
    }
    target.shutdown().await;
    let output = writer.join();
    if let Some((device, cluster)) = incomplete {
        if let Some(out) = output {
            out.abort();
        }
        return Err(Error::Incomplete { device, cluster });
    }
    let Some(output) = output else {
        return Err(archive_failed(&shared));
    };
    write_out(output).await?;
    Ok(LiveOutcome {
        transfer,
        uuid: uuid.to_string(),
        disks,
        frozen: windows.frozen,
        down: windows.down,
        unallocated,
    })
}

/// Targets, freeze, jobs, thaw, `cont`, wait, commit; on failure cancel everything in QEMU.
#[allow(clippy::too_many_arguments)]
async fn transfer(
    qmp: &Client,
    disks: &[SourceDisk],
    target: &NbdTarget,
    shared: &Shared,
    opts: &LiveOptions,
    log: &TaskLog<'_>,
    uuid: &uuid::Uuid,
    windows: &mut Windows,
) -> Result<Transfer> {
    job::add_targets(qmp, disks, target.socket()).await?;

    let mark = opts.mark.as_ref();
    let agent = freeze_marked(opts, log).await;
    log.info("starting backup via QMP command");
    let started = job::start_jobs(qmp, disks, opts.speed, opts.max_workers).await;
    if let Some((agent, frozen_at)) = agent {
        crate::freeze::thaw(&agent, log).await;
        let window = frozen_at.elapsed();
        windows.frozen = Some(window);
        set_hold(mark, Hold::None, log);
    }
    if let Err(e) = started {
        job::remove_targets(qmp, disks).await;
        return Err(e);
    }
    log.info(&format!("started backup task '{uuid}'"));
    if let Some(since) = opts.resume {
        if let Err(e) = qmp.cont().await {
            log.warn(&format!("cannot resume the guest: {e}"));
        } else {
            let down = since.elapsed();
            windows.down = Some(down);
            set_hold(mark, Hold::None, log);
            log.info(&format!(
                "resuming VM again after {} seconds",
                down.as_secs()
            ));
        }
    } else if opts.was_running {
        log.info("resuming VM again");
    }

    let total: u64 = disks.iter().map(|d| d.size).sum();
    let start = Instant::now();
    match wait(qmp, disks, target, shared, opts, log, total, start).await {
        Ok(t) => Ok(t),
        Err(e) => {
            if !matches!(e, Error::Interrupted) {
                log.error(&vmdump_task::one_line(&e));
            }
            if qmp.is_closed() {
                return Err(e);
            }
            log.info("aborting backup job");
            if let Err(ce) = job::abort(qmp, disks).await {
                log.warn(&format!("cleanup after failure: {ce}"));
            }
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn wait(
    qmp: &Client,
    disks: &[SourceDisk],
    target: &NbdTarget,
    shared: &Shared,
    opts: &LiveOptions,
    log: &TaskLog<'_>,
    total: u64,
    start: Instant,
) -> Result<Transfer> {
    let mut lines = ProgressLines::new();
    let mut last_update = Instant::now();
    let mut finalized = false;
    // Subscribed before the first poll, so no status change is missed between a poll and
    // the wait after it.
    let mut events = qmp.events();
    let snapshot = |elapsed| Transfer {
        transferred: shared.transferred(),
        zero: shared.zero(),
        total,
        elapsed,
    };
    loop {
        if opts.cancel.is_cancelled() {
            return Err(Error::Interrupted);
        }
        if shared.failed() {
            if qemu_gone(qmp).await {
                return Err(Error::QemuExited);
            }
            return Err(archive_failed(shared));
        }
        let state = match job::poll(qmp, disks).await {
            Ok(s) => s,
            Err(Error::Qmp { source, .. }) if source.kind() == vmdump_qmp::ErrorKind::Closed => {
                return Err(Error::QemuExited)
            }
            Err(e) => return Err(e),
        };
        if last_update.elapsed() >= Duration::from_secs(1) {
            last_update = Instant::now();
            let t = snapshot(start.elapsed());
            log.progress().update(&t);
            if let Some(line) = lines.tick(&t) {
                log.line(Level::Info, &line, true);
            }
        }
        match state {
            Poll::Running => {}
            Poll::Pending if !finalized => {
                // Nothing is copied after this: what the `sync=top` jobs copied is final.
                if disks.iter().any(|d| d.top_only) {
                    let copied = job::copied(qmp, disks).await?;
                    for (d, bytes) in disks.iter().zip(copied) {
                        if let Some(e) = target.exports().iter().find(|e| e.name == d.drive) {
                            if d.top_only {
                                e.expect_copied(bytes);
                            }
                        }
                    }
                }
                job::finalize(qmp, disks).await?;
                finalized = true;
            }
            Poll::Pending => {}
            Poll::Failed(msg) => {
                // The archive side's failure, if any, is the cause; QEMU's is a consequence.
                if shared.failed() {
                    return Err(archive_failed(shared));
                }
                return Err(Error::Job {
                    job: disks
                        .iter()
                        .map(SourceDisk::job)
                        .collect::<Vec<_>>()
                        .join(","),
                    message: msg,
                });
            }
            Poll::Concluded => break,
        }
        next_change(&mut events).await;
    }
    job::dismiss(qmp, disks).await?;
    // Closing the target nodes makes QEMU send FLUSH + DISC: the commit point.
    job::remove_targets(qmp, disks).await;
    let elapsed = start.elapsed();
    if !target.wait_closed(CLOSE_WAIT).await {
        return Err(Error::NotClosed);
    }
    // The last runs (zeros held back until DISC) may still be in the channel: the final
    // counters come after the writer took them in.
    shared.drained(CLOSE_WAIT).await;
    if shared.failed() {
        return Err(archive_failed(shared));
    }
    let t = snapshot(elapsed);
    log.progress().update(&t);
    if let Some(line) = lines.finish(&t) {
        log.line(Level::Info, &line, true);
    }
    Ok(t)
}

/// Waits for the next job status change (pending, concluded, aborting) or [`POLL`], whichever
/// comes first: the end of a backup is seen when QEMU reports it, not up to two poll
/// intervals later (pending, then concluded after the finalize).
async fn next_change(events: &mut vmdump_qmp::event::Events) {
    let change = async {
        loop {
            match events.next().await {
                Ok(ev) if ev.is(vmdump_qmp::event::name::JOB_STATUS_CHANGE) => return,
                Ok(_) => {}
                // The monitor is gone: the next poll says so.
                Err(_) => std::future::pending::<()>().await,
            }
        }
    };
    let _ = tokio::time::timeout(POLL, change).await;
}

/// Writes out the archive file's last bytes and fsyncs it: a failure there (a full disk
/// found at the last write, a failed fsync) is the archive's write failure like any other.
pub(crate) async fn write_out(output: ArchiveFile) -> Result<()> {
    let target = output.target().to_owned();
    tokio::task::spawn_blocking(move || output.finish())
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(|source| Error::Transfer(Arc::new(Failure::WriteOut { target, source })))
}

/// The archive side's recorded failure as an error.
pub(crate) fn archive_failed(shared: &Shared) -> Error {
    Error::Transfer(
        shared
            .error()
            .unwrap_or_else(|| Arc::new(Failure::WriterStopped)),
    )
}

/// Whether the QEMU behind `qmp` is gone (its monitor closed). A broken NBD connection is
/// usually the first sign of a dying QEMU; the monitor tells which it is.
pub(crate) async fn qemu_gone(qmp: &Client) -> bool {
    if qmp.is_closed() {
        return true;
    }
    match tokio::time::timeout(Duration::from_secs(3), qmp.execute("query-status", None)).await {
        Ok(Err(e)) => e.kind() == vmdump_qmp::ErrorKind::Closed,
        _ => qmp.is_closed(),
    }
}

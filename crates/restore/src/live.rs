//! Live-restore (`vmdump restore --live`): the VM runs from the first second while its disks
//! are copied out of the archive in the background.
//!
//! ```text
//!  guest device ─► overlay vmdump-lr-ovl-<key> (qcow2 beside the volume: the guest's writes)
//!                      │ backing (what the overlay does not hold)
//!                      ▼
//!                  vmdump-lr-src-<key> ─unix socket─► this process: SourceExport of the
//!                                                     archive disk (blockdev::Archive)
//!  blockdev-mirror vmdump-lr-<key>: overlay ─► drive-<key> (the new volume, sync=full,
//!      copy-mode=write-blocking: guest writes reach the volume before they complete)
//!  all jobs ready ─► job-complete: the device pivots onto drive-<key>; overlay and NBD nodes
//!      are deleted, the server stops, the overlays are removed, `lock: create` is dropped
//! ```
//!
//! One design for every target format (raw, qcow2, vmdk): a mirror with pivot. The plan is
//! the restore's ([`crate::plan`] with the header from the archive's index); volumes are
//! allocated as a restore allocates them. Until the config is written a failure removes
//! everything (as a restore does); from then on nothing is removed: a failure stops the VM
//! and names the volumes and overlays that hold what the guest wrote, and the config keeps
//! `lock: create` so the VM is not started by accident on incomplete disks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmdump_blockdev::{AccessKind, Archive, Source, SourceExport};
use vmdump_config::QemuConfig;
use vmdump_guest::{overlay_nodes, DiskOverlay, Runtime, StartOptions};
use vmdump_nbd::{Server, ServerOptions};
use vmdump_qmp::{BlockdevMirror, Client, CopyMode, SyncMode};
use vmdump_task::{Level, Progress, Transfer};

use crate::error::{Error, Result};
use crate::restore::{
    new_config, plan_with, remove_old, write_configs, Allocated, Options, RestorePlan, RestoredDisk,
};
use crate::volume::allocate;

/// The `lock:` value the config holds until the copy is complete.
pub const LIVE_LOCK: &str = "create";
/// Prefix of the mirror job ids (`vmdump-lr-<key>`).
const JOB_PREFIX: &str = "vmdump-lr-";
/// How often the jobs are polled (and progress shown).
const POLL: Duration = Duration::from_secs(1);
/// How long a failed restore waits for QEMU to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What a successful live-restore did.
#[derive(Debug, Clone)]
pub struct LiveSummary {
    /// The restored disks (the VM runs from them).
    pub disks: Vec<RestoredDisk>,
    /// The written config file.
    pub config_path: PathBuf,
    /// Old volumes removed (`--force`).
    pub removed: Vec<String>,
    /// The VM's QEMU.
    pub pid: u32,
    /// Seconds from the command to the VM running.
    pub started_after: f64,
    /// Seconds from the command to the end of the copy.
    pub seconds: f64,
}

/// The overlays of a live-restore; removed when dropped unless kept.
struct Overlays {
    files: Vec<PathBuf>,
    keep: bool,
}

impl Drop for Overlays {
    fn drop(&mut self) {
        if !self.keep {
            for f in &self.files {
                let _ = std::fs::remove_file(f);
            }
        }
    }
}

/// The overlay of a new volume: `<volume file>.live-restore.qcow2` beside it.
fn overlay_path(volume: &Path) -> PathBuf {
    let mut name = volume.file_name().unwrap_or_default().to_os_string();
    name.push(".live-restore.qcow2");
    volume.with_file_name(name)
}

/// Restore the archive at `archive` as VM `opts.vmid` and run it at once (see the module
/// documentation). `cache_dir` holds the decompressed copy of a compressed archive without a
/// seek table. `opts.bwlimit` limits the background copy. Returns when the copy is
/// complete and the archive detached.
pub fn restore_live(
    archive: &Path,
    cache_dir: Option<&Path>,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<LiveSummary> {
    let t0 = Instant::now();
    let opened = Archive::open(archive, cache_dir).map_err(|source| Error::Access {
        path: archive.to_path_buf(),
        source: Box::new(source),
    })?;
    if let Some(at) = opened.truncated_at() {
        return Err(Error::Truncated {
            path: archive.to_path_buf(),
            at,
        });
    }
    let plan = plan_with(opts, progress, |log| {
        log(&match opened.kind() {
            AccessKind::Plain => "archive read in place (uncompressed)".to_string(),
            AccessKind::Seekable { frames } => {
                format!("archive read in place (seekable zstd, {frames} frames)")
            }
            AccessKind::Cached { codec } => {
                format!("archive compression: {codec} without a seek table, decompressed into a cache file")
            }
        });
        Ok((None, opened.header().clone()))
    })?;
    if let Some(d) = plan
        .disks
        .iter()
        .find(|d| d.virtdev.starts_with("efidisk") || d.virtdev.starts_with("tpmstate"))
    {
        return Err(Error::LiveUnsupported(format!(
            "'{}' has no guest device to start on the archive; restore this VM without --live",
            d.virtdev
        )));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("start the async runtime: {e}")))?;
    rt.block_on(apply(plan, opened, opts, progress, t0))
}

async fn apply(
    plan: RestorePlan,
    archive: Archive,
    opts: &Options,
    progress: &dyn Progress,
    t0: Instant,
) -> Result<LiveSummary> {
    let RestorePlan {
        vmid,
        lock,
        config_path: conf_path,
        old,
        storage,
        header,
        config_text: text,
        disks: plans,
        to_remove,
        kept,
        taken,
        ..
    } = plan;
    let vmid = vmid.get();
    let log = |line: &str| progress.log(Level::Info, line, false);
    let session = vmdump_launch::Session::open_async(&opts.run_dir).await?;
    let mut allocated = Allocated {
        volumes: Vec::new(),
        records: Vec::new(),
        committed: false,
        progress,
    };
    // Declared after `allocated`: dropped first, so a volume's directory is empty then.
    let mut overlays = Overlays {
        files: Vec::new(),
        keep: false,
    };
    let socket = session.path().join("live-restore.nbd");
    let mut disks = Vec::new();
    let mut starts = Vec::new();
    let mut server = Server::new(ServerOptions::default());
    for p in &plans {
        let (vol, record) = allocate(
            &storage, &p.storage, vmid, &p.format, p.size, &taken, &session,
        )?;
        log(&format!("new volume ID is '{}'", vol.volid));
        allocated.volumes.push(vol.clone());
        allocated.records.push(record);
        let overlay = overlay_path(&vol.path);
        overlays.files.push(overlay.clone());
        vmdump_blockdev::qemu_img::create(
            &overlay,
            "qcow2",
            vmdump_vma::round_to_sectors(p.size),
            None,
        )
        .map_err(|source| Error::Disk {
            what: "create the overlay of",
            device: p.devname.clone(),
            source: Box::new(source),
        })?;
        log(&format!(
            "map '{}' to '{}' (live: the guest's writes go to '{}' until the copy is complete)",
            p.devname,
            vol.path.display(),
            overlay.display()
        ));
        let disk = archive
            .disk(&p.devname)
            .ok_or_else(|| Error::Mapping(format!("archive device '{}' has no data", p.devname)))?;
        let source: Arc<dyn Source> = Arc::new(disk);
        server.add_export(
            p.devname.clone(),
            SourceExport::new(source, Some(format!("{} (live-restore)", p.devname))),
        );
        starts.push(DiskOverlay {
            key: p.virtdev.clone(),
            overlay,
            socket: socket.clone(),
            export: p.devname.clone(),
        });
        disks.push(RestoredDisk {
            virtdev: p.virtdev.clone(),
            devname: p.devname.clone(),
            volid: vol.volid.to_string(),
            path: vol.path.clone(),
            format: vol.format.clone(),
        });
    }
    let nbd = server.serve_unix(&socket).await.map_err(Error::Nbd)?;

    // The config, locked until the copy is complete.
    let text = new_config(&text, &disks, &plans, &kept, opts, &conf_path)?;
    let mut cfg = QemuConfig::parse(&text, &conf_path.display().to_string())?;
    cfg.set("lock", LIVE_LOCK)?;
    if opts.cancel.is_cancelled() {
        nbd.shutdown().await;
        return Err(Error::Interrupted);
    }
    write_configs(opts, &header, old.is_some(), &conf_path, &cfg.to_string())?;
    // From here on nothing is removed, not even by the next run if this one is killed.
    allocated.committed = true;
    allocated.records.clear();
    overlays.keep = true;
    // The VM runtime takes the VM lock itself; the config's lock keeps users away.
    drop(lock);

    let vms = Runtime::new(opts.root.clone()).with_run_base(&opts.run_dir);
    let mut pid = None;
    let result = run_vm(&vms, vmid, starts, opts, progress, t0, &mut pid).await;
    let started_after = match result {
        Ok(s) => s,
        Err(e) => {
            if pid.is_some() || vms.run_dir(vmid).live_pid().is_some() {
                let line = match vms.stop_with(vmid, STOP_TIMEOUT, true).await {
                    Ok(true) => format!("VM {vmid} stopped"),
                    Ok(false) => format!("VM {vmid} is not running (QEMU exited)"),
                    Err(se) => format!("cannot stop VM {vmid}: {se}"),
                };
                progress.log(Level::Warn, &line, false);
            }
            nbd.shutdown().await;
            let vols: Vec<String> = disks.iter().map(|d| d.volid.clone()).collect();
            let ovls: Vec<String> = overlays
                .files
                .iter()
                .map(|f| f.display().to_string())
                .collect();
            return Err(Error::LiveFailed {
                vmid,
                kept: format!(
                    "its volumes {} hold the part copied so far and the guest's writes, the overlays {} (qcow2 over the archive's disks) every write of the guest; {} keeps 'lock: {LIVE_LOCK}'",
                    vols.join(", "),
                    ovls.join(", "),
                    conf_path.display()
                ),
                source: Box::new(e),
            });
        }
    };
    nbd.shutdown().await;
    drop(archive);
    for f in &overlays.files {
        if let Err(e) = std::fs::remove_file(f) {
            progress.log(
                Level::Warn,
                &format!("cannot remove the overlay '{}': {e}", f.display()),
                false,
            );
        }
    }
    {
        let _lock = vmdump_guest::VmLock::acquire(&opts.run_dir, vmid, Duration::from_secs(30))
            .await
            .map_err(|source| Error::LockFile {
                path: opts.run_dir.clone(),
                source: Box::new(source),
            })?;
        let mut cfg = QemuConfig::load(&conf_path)?;
        if cfg.lock() == Some(LIVE_LOCK) {
            cfg.remove("lock");
            cfg.save(&conf_path)?;
        }
    }
    let removed = remove_old(&storage, &to_remove, progress);
    let seconds = t0.elapsed().as_secs_f64();
    log(&format!(
        "live-restore of VM {vmid} complete in {seconds:.1} s: the archive is detached, the VM runs from its local disks"
    ));
    Ok(LiveSummary {
        disks,
        config_path: conf_path,
        removed,
        pid: pid.unwrap_or_default(),
        started_after,
        seconds,
    })
}

fn qmp_err(step: &str) -> impl FnOnce(vmdump_qmp::Error) -> Error + '_ {
    move |source| Error::Qmp {
        step: step.to_string(),
        source,
    }
}

/// Start the VM on its overlays, mirror every disk onto its volume, pivot, delete the
/// overlay and NBD nodes. Returns the seconds from `t0` to the VM running; `pid` is set as
/// soon as QEMU runs.
#[allow(clippy::too_many_arguments)]
async fn run_vm(
    vms: &Runtime,
    vmid: u32,
    starts: Vec<DiskOverlay>,
    opts: &Options,
    progress: &dyn Progress,
    t0: Instant,
    pid: &mut Option<u32>,
) -> Result<f64> {
    let log = |line: &str| progress.log(Level::Info, line, false);
    log(&format!("starting VM {vmid} on the archive"));
    let keys: Vec<String> = starts.iter().map(|s| s.key.clone()).collect();
    let started = vms
        .start(
            vmid,
            &StartOptions {
                paused: true,
                skiplock: true,
                overlays: starts,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| Error::Guest(Box::new(e)))?;
    *pid = Some(started.pid);
    let qmp = vms
        .connect(vmid)
        .await
        .map_err(|e| Error::Guest(Box::new(e)))?;
    let speed = opts.bwlimit.filter(|&k| k > 0).map(|k| k * 1024);
    for key in &keys {
        let (_, ovl, _) = overlay_nodes(key);
        let (target, _) = vmdump_guest::node_names(
            key.parse()
                .map_err(|_| Error::Mapping(format!("'{key}' is not a disk key")))?,
        );
        let mut m = BlockdevMirror::new(format!("{JOB_PREFIX}{key}"), ovl, target, SyncMode::Full);
        m.copy_mode = Some(CopyMode::WriteBlocking);
        m.speed = speed;
        m.auto_dismiss = Some(false);
        qmp.blockdev_mirror(&m)
            .await
            .map_err(qmp_err("blockdev-mirror"))?;
    }
    qmp.cont().await.map_err(qmp_err("cont"))?;
    let started_after = t0.elapsed().as_secs_f64();
    log(&format!(
        "VM {vmid} started (pid {}) after {started_after:.1} s; copying the rest of its disks in the background",
        started.pid
    ));
    copy(&qmp, vmid, &keys, opts, progress).await?;
    for key in &keys {
        let (src, ovl, ovlf) = overlay_nodes(key);
        for node in [ovl, ovlf, src] {
            qmp.blockdev_del(&node)
                .await
                .map_err(qmp_err("blockdev-del"))?;
        }
    }
    Ok(started_after)
}

/// Waits for every mirror to be ready, pivots them, waits for them to conclude; shows
/// progress every second.
async fn copy(
    qmp: &Client,
    vmid: u32,
    keys: &[String],
    opts: &Options,
    progress: &dyn Progress,
) -> Result<()> {
    let t = Instant::now();
    let mut completing = false;
    loop {
        if opts.cancel.is_cancelled() {
            return Err(Error::Interrupted);
        }
        let jobs = qmp.query_jobs().await.map_err(qmp_err("query-jobs"))?;
        let mut mine = Vec::new();
        for key in keys {
            let id = format!("{JOB_PREFIX}{key}");
            let Some(j) = jobs.iter().find(|j| j.id == id) else {
                return Err(Error::Mirror {
                    disk: key.clone(),
                    msg: format!("job {id} vanished from VM {vmid}"),
                });
            };
            if let Some(e) = &j.error {
                return Err(Error::Mirror {
                    disk: key.clone(),
                    msg: e.clone(),
                });
            }
            if j.status == "concluded" && !completing {
                return Err(Error::Mirror {
                    disk: key.clone(),
                    msg: "the job ended before the copy was complete".into(),
                });
            }
            mine.push(j);
        }
        let done: u64 = mine.iter().map(|j| j.current_progress).sum();
        let total: u64 = mine.iter().map(|j| j.total_progress).sum::<u64>().max(1);
        let percent = (done.min(total) * 100 / total) as u32;
        progress.log(
            Level::Info,
            &format!(
                "live-restore: {percent}% ({} of {}) in {} s",
                done,
                total,
                t.elapsed().as_secs()
            ),
            true,
        );
        progress.update(&Transfer {
            transferred: done.min(total),
            zero: 0,
            total,
            elapsed: t.elapsed(),
        });
        if completing {
            if mine.iter().all(|j| j.status == "concluded") {
                for key in keys {
                    qmp.job_dismiss(&format!("{JOB_PREFIX}{key}"))
                        .await
                        .map_err(qmp_err("job-dismiss"))?;
                }
                return Ok(());
            }
        } else if mine.iter().all(|j| j.status == "ready") {
            progress.log(
                Level::Info,
                &format!("live-restore: all disks copied, VM {vmid} switches to its local disks"),
                false,
            );
            for key in keys {
                qmp.job_complete(&format!("{JOB_PREFIX}{key}"))
                    .await
                    .map_err(qmp_err("job-complete"))?;
            }
            completing = true;
            continue;
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlays_sit_beside_their_volume() {
        assert_eq!(
            overlay_path(Path::new("/s/images/101/vm-101-disk-0.raw")),
            Path::new("/s/images/101/vm-101-disk-0.raw.live-restore.qcow2")
        );
    }

    #[test]
    fn kept_overlays_survive_and_others_are_removed() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        std::fs::write(&a, b"x").unwrap();
        drop(Overlays {
            files: vec![a.clone()],
            keep: true,
        });
        assert!(a.exists());
        drop(Overlays {
            files: vec![a.clone()],
            keep: false,
        });
        assert!(!a.exists());
    }
}

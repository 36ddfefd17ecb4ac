//! Backup fleecing (pull mode, `--fleecing enabled=1[,storage=<id>]`): a guest write to a
//! not-yet-saved cluster copies the old data into a local fleecing image instead of waiting
//! for the archive, and vmdump pulls the point-in-time view through an NBD export.
//!
//! Per disk, in QEMU (the graph of `docs/design/fleecing.md`, verified on 7.2 in
//! `shared/ref/qemu-7.2-lab.md` §B):
//!
//! ```text
//! guest ─► vmdump-fcbw-<node> (copy-before-write, on-cbw-error=break-snapshot, cbw-timeout=45)
//!              │ file                        │ target (old data)
//!              ▼                             ▼
//!          <node> (the disk)          vmdump-fl-<node> (fleecing image, discard=unmap)
//! vmdump-snap-<node> (snapshot-access over the filter) ─► NBD export <drive> ─► vmdump
//! ```
//!
//! The filters of all disks are inserted while the guest is paused for a moment (`stop`,
//! then `cont`; inside the fs-freeze when the agent runs), so every disk shares one instant,
//! as the one transaction of the push path does. While the guest is still held, QEMU also
//! gives each disk's allocation map at that instant (a read-only export of the disk's own
//! node). vmdump then reads each disk's export over four connections in windows: sparse
//! reads of the map's data (64 KiB pieces on QEMU 7.2, larger from 8.0:
//! `vmdump_blockdev::SnapshotRules`), a hole as one window with no read, and a discard of
//! every window once read, which frees its old data in the fleecing image and stops further
//! copies there. The data goes
//! through the push path's cluster assembler, channel and VMA writer thread, and the archive
//! is committed as there.
//!
//! A full or failing fleecing image breaks the snapshot, never a guest write: the next read
//! fails and so does the backup. Fleecing images are named `vm-<vmid>-fleece-<n>` (qcow2 on
//! storages that take it; raw on btrfs, `disk.raw` in its own subvolume as Proxmox's
//! `vdisk_alloc` makes it; created and removed by `vmdump_blockdev::volume`), listed in the
//! guest config's `[special:fleecing]` (`fleecing-images: <volid>,...`, as Proxmox records
//! them) before they are created, and removed at the end; a killed run's images are removed
//! by the next backup of the guest ([`remove_leftovers`]) and its QEMU nodes by
//! [`clean_stale`].

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::mpsc;
use vmdump_blockdev::{volume, Extent, SnapshotExport, SnapshotRules, SparsePiece};
use vmdump_config::qmdump::BackupDisk;
use vmdump_config::{Fleecing, QemuConfig, StorageConfig, StorageType, VolumeId, VolumeRef};
use vmdump_guest::Hold;
use vmdump_qmp::{Client, NbdExport, RunState};
use vmdump_task::{Cancel, Level, Transfer};

use crate::cluster::Assembler;
use crate::error::{Error, Result};
use crate::job::{self, SourceDisk, PREFIX};
use crate::live::{
    archive_failed, freeze_marked, qemu_gone, set_hold, start_archive, write_out, ArchiveSide,
    LiveOptions, LiveOutcome,
};
use crate::log::TaskLog;
use crate::pipeline::{Msg, Shared};
use crate::progress::ProgressLines;

/// The guest config section and key listing fleecing images (Proxmox's names).
const SECTION: &str = "fleecing";
const KEY: &str = "fleecing-images";
/// Proxmox's copy-before-write timeout: a stuck fleecing write breaks the snapshot after
/// this many seconds instead of hanging the guest.
const CBW_TIMEOUT: u64 = 45;
/// Bytes handled per step: one sparse read, one discard.
const WINDOW: u64 = 4 << 20;
/// The longest window over a hole of the disk's map (one TRIM, no read).
const HOLE_WINDOW: u64 = 1 << 30;
/// Windows in flight per disk.
const DEPTH: usize = 4;
/// NBD connections per disk export, windows spread over them in turn. QEMU's NBD server
/// works on at most 16 requests of a connection at once, and under the 7.2 rules every
/// request is 64 KiB: four connections keep 64 in progress (docs/benchmarks.md, fleecing).
const CONNECTIONS: usize = 4;

/// Where the fleecing images of a backup go (`LiveOptions::fleecing`).
#[derive(Debug, Clone)]
pub struct FleecingPlan {
    /// The guest.
    pub vmid: u32,
    /// The guest config, where the images are recorded (`[special:fleecing]`).
    pub config_path: PathBuf,
    /// The storage configuration.
    pub storage: StorageConfig,
    /// The storage of each disk's fleecing image, by config key (`scsi0`).
    pub storages: Vec<(String, String)>,
}

impl FleecingPlan {
    /// The plan of a guest's backup: the images on `fleecing`'s storage, or each disk's own
    /// (a disk given as a plain path has none: the backup fails with a clear error).
    pub fn new(
        vmid: u32,
        config_path: &Path,
        storage: StorageConfig,
        fleecing: &Fleecing,
        disks: &[BackupDisk],
    ) -> Self {
        let storages = disks
            .iter()
            .filter_map(|d| {
                let sid = match (&fleecing.storage, &d.volume) {
                    (Some(s), _) => s.clone(),
                    (None, VolumeRef::Volume(v)) => v.storage.clone(),
                    (None, _) => return None,
                };
                Some((d.key.to_string(), sid))
            })
            .collect();
        FleecingPlan {
            vmid,
            config_path: config_path.to_path_buf(),
            storage,
            storages,
        }
    }
}

/// One fleecing image of this run.
#[derive(Debug, Clone)]
struct Image {
    volid: VolumeId,
    path: PathBuf,
    format: &'static str,
    /// Btrfs: the volume's own subvolume, holding `disk.raw`.
    subvolume: Option<PathBuf>,
}

fn fl_node(d: &SourceDisk) -> String {
    format!("{PREFIX}fl-{}", d.node)
}

fn cbw_node(d: &SourceDisk) -> String {
    format!("{PREFIX}fcbw-{}", d.node)
}

fn snap_node(d: &SourceDisk) -> String {
    format!("{PREFIX}snap-{}", d.node)
}

fn export_id(d: &SourceDisk) -> String {
    format!("{PREFIX}exp-{}", d.drive)
}

/// Picks the image of every disk: `vm-<vmid>-fleece-<n>` with the smallest free `n`, qcow2
/// where the storage takes it (dir), raw otherwise (btrfs). Nothing is created.
fn choose_images(plan: &FleecingPlan, disks: &[SourceDisk]) -> Result<Vec<Image>> {
    let mut out: Vec<Image> = Vec::new();
    for d in disks {
        let sid = plan
            .storages
            .iter()
            .find(|(k, _)| *k == d.key)
            .map(|(_, s)| s.as_str())
            .ok_or_else(|| {
                Error::option(
                    "fleecing",
                    format!(
                        "disk '{}' is not on a storage; set the fleecing storage",
                        d.key
                    ),
                )
            })?;
        let entry = plan.storage.storage(sid)?;
        if !entry.has_content("images") {
            return Err(Error::option(
                "fleecing",
                format!("storage '{sid}' does not allow content 'images'"),
            ));
        }
        let format = match entry.kind() {
            StorageType::Btrfs => "raw",
            k if k.is_path_based() => "qcow2",
            _ => return Err(Error::Unsupported("fleecing images on this storage type")),
        };
        let mut n = 0u32;
        let image = loop {
            let volid = VolumeId::parse(&format!(
                "{sid}:{vmid}/vm-{vmid}-fleece-{n}.{format}",
                vmid = plan.vmid
            ))?;
            let resolved = plan.storage.resolve(&volid)?;
            let (path, subvolume) = (resolved.path, resolved.subvolume);
            let used = path.symlink_metadata().is_ok()
                || subvolume
                    .as_ref()
                    .is_some_and(|d| d.symlink_metadata().is_ok())
                || out.iter().any(|i| i.path == path);
            if !used {
                break Image {
                    volid,
                    path,
                    format,
                    subvolume,
                };
            }
            n += 1;
        };
        out.push(image);
    }
    Ok(out)
}

/// Writes the list of fleecing images into the guest config (`[special:fleecing]`; the
/// section goes when the list is empty).
fn record(config_path: &Path, volids: &[String]) -> Result<()> {
    let mut cfg = QemuConfig::load(config_path)?;
    if volids.is_empty() {
        if !cfg.remove_special(SECTION) {
            return Ok(());
        }
    } else {
        cfg.set_special(SECTION, KEY, &volids.join(","))?;
    }
    cfg.save(config_path)?;
    Ok(())
}

/// Creates an image (on btrfs: `disk.raw` in its own subvolume, as restored disks), without
/// preallocation: it starts near empty.
fn create(image: &Image, size: u64) -> Result<()> {
    volume::create(
        &image.path,
        image.subvolume.as_deref(),
        image.format,
        size,
        None,
    )
    .map_err(|source| Error::FleecingImage {
        what: "create",
        volume: image.volid.to_string(),
        source: Box::new(source),
    })
}

/// Deletes an image (and its btrfs subvolume); a missing one is fine.
fn delete(volid: &VolumeId, path: &Path, subvolume: Option<&Path>) -> Result<()> {
    volume::remove(path, subvolume).map_err(|source| Error::FleecingImage {
        what: "remove",
        volume: volid.to_string(),
        source: Box::new(source),
    })
}

fn delete_volid(storage: &StorageConfig, volid: &str) -> Result<()> {
    let vol = VolumeId::parse(volid)?;
    let resolved = storage.resolve(&vol)?;
    delete(&vol, &resolved.path, resolved.subvolume.as_deref())
}

/// Removes the fleecing images a killed earlier backup left (listed in the guest config's
/// `[special:fleecing]`) and the section, logging `removing (old) fleecing image '<volid>'`
/// as vzdump does. An image that cannot be removed stays listed for the next run.
pub(crate) fn remove_leftovers(
    config_path: &Path,
    root: &vmdump_config::ConfigRoot,
    log: &TaskLog<'_>,
) -> Result<()> {
    let cfg = QemuConfig::load(config_path)?;
    let Some(list) = cfg.special(SECTION, KEY) else {
        if cfg
            .sections()
            .iter()
            .any(|s| matches!(s, vmdump_config::SectionKind::Special(n) if n == SECTION))
        {
            record(config_path, &[])?;
        }
        return Ok(());
    };
    let storage = root.storage()?;
    let mut kept = Vec::new();
    for volid in list.split(',').map(str::trim).filter(|v| !v.is_empty()) {
        log.info(&format!("removing (old) fleecing image '{volid}'"));
        if let Err(e) = delete_volid(&storage, volid) {
            log.warn(&format!(
                "cannot remove fleecing image '{volid}': {}",
                vmdump_task::one_line(&e)
            ));
            kept.push(volid.to_string());
        }
    }
    record(config_path, &kept)
}

/// Removes this run's images and their record; failures are warnings (the record keeps
/// what could not be removed, for the next run).
fn remove_images(plan: &FleecingPlan, images: &[Image], log: &TaskLog<'_>) {
    let mut kept = Vec::new();
    for i in images {
        if let Ok(m) = std::fs::metadata(&i.path) {
            use std::os::unix::fs::MetadataExt;
            log.info(&format!(
                "fleecing image '{}' held {} KiB at the end",
                i.volid,
                m.blocks() / 2
            ));
        }
        if let Err(e) = delete(&i.volid, &i.path, i.subvolume.as_deref()) {
            log.warn(&format!(
                "cannot remove fleecing image '{}': {}",
                i.volid,
                vmdump_task::one_line(&e)
            ));
            kept.push(i.volid.to_string());
        }
    }
    if let Err(e) = record(&plan.config_path, &kept) {
        log.warn(&format!(
            "cannot update the fleecing images in the guest config: {e}"
        ));
    }
}

/// Removes what a killed backup with fleecing left in QEMU: exports, the NBD server, the
/// snapshot-access nodes, the filters (the devices get their disks back first) and the
/// fleecing nodes. Returns what was removed (for the task log).
pub(crate) async fn clean_stale(qmp: &Client) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let exports = qmp
        .execute("query-block-exports", None)
        .await
        .map_err(|e| Error::qmp("query-block-exports", e))?;
    let stale_exports: Vec<String> = exports
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("id").and_then(|i| i.as_str()))
        .filter(|id| id.starts_with(PREFIX))
        .map(str::to_string)
        .collect();
    for id in &stale_exports {
        if let Err(e) = qmp.block_export_del(id, true).await {
            tracing::debug!(export = %id, error = %e, "block-export-del");
        }
        done.push(format!("export '{id}'"));
    }
    let nodes = qmp
        .query_named_block_nodes()
        .await
        .map_err(|e| Error::qmp("query-named-block-nodes", e))?;
    let named = |prefix: &str| -> Vec<String> {
        let p = format!("{PREFIX}{prefix}");
        nodes
            .iter()
            .filter(|n| n.node_name.starts_with(&p))
            .map(|n| n.node_name.clone())
            .collect()
    };
    let (snaps, filters, images) = (named("snap-"), named("fcbw-"), named("fl-"));
    if !stale_exports.is_empty() || !snaps.is_empty() {
        // Only a backup with fleecing starts QEMU's NBD server while a `vmdump-` export or
        // snapshot node exists.
        let _ = qmp.nbd_server_stop().await;
    }
    for n in &snaps {
        job::del_node(qmp, n).await?;
        done.push(format!("node '{n}'"));
    }
    let blocks = qmp
        .query_block()
        .await
        .map_err(|e| Error::qmp("query-block", e))?;
    let cbw_prefix = format!("{PREFIX}fcbw-");
    for b in &blocks {
        let (Some(qdev), Some(ins)) = (&b.qdev, &b.inserted) else {
            continue;
        };
        if let Some(orig) = ins.node_name.strip_prefix(&cbw_prefix) {
            qmp.qom_set(qdev, "drive", json!(orig))
                .await
                .map_err(|e| Error::qmp(format!("qom-set {qdev} drive"), e))?;
            done.push(format!("filter on '{qdev}'"));
        }
    }
    for n in filters.iter().chain(&images) {
        job::del_node(qmp, n).await?;
        done.push(format!("node '{n}'"));
    }
    Ok(done)
}

/// What this run built in QEMU, torn down in reverse.
#[derive(Debug, Default)]
struct Graph {
    images: Vec<String>,
    server: bool,
    filters: Vec<String>,
    /// Devices switched to a filter: (qdev, the disk node to give back).
    swapped: Vec<(String, String)>,
    snaps: Vec<String>,
    exports: Vec<String>,
}

impl Graph {
    /// The verified order: exports, server, snapshot nodes, devices back to their disks,
    /// filters, fleecing nodes. Failures are logged; every step is tried.
    async fn teardown(&mut self, qmp: &Client, log: &TaskLog<'_>) {
        if qmp.is_closed() {
            return;
        }
        let warn = |what: String, e: &dyn std::fmt::Display| {
            log.warn(&format!("cleanup of the fleecing setup: {what}: {e}"));
        };
        for id in self.exports.drain(..) {
            if let Err(e) = qmp.block_export_del(&id, true).await {
                warn(format!("block-export-del {id}"), &e);
            }
        }
        if std::mem::take(&mut self.server) {
            if let Err(e) = qmp.nbd_server_stop().await {
                warn("nbd-server-stop".into(), &e);
            }
        }
        for n in self.snaps.drain(..) {
            if let Err(e) = job::del_node(qmp, &n).await {
                warn(format!("blockdev-del {n}"), &e);
            }
        }
        for (qdev, node) in self.swapped.drain(..) {
            if let Err(e) = qmp.qom_set(&qdev, "drive", json!(node)).await {
                warn(format!("qom-set {qdev} drive {node}"), &e);
            }
        }
        for n in self.filters.drain(..).chain(self.images.drain(..)) {
            if let Err(e) = job::del_node(qmp, &n).await {
                warn(format!("blockdev-del {n}"), &e);
            }
        }
    }
}

/// One backup with fleecing of `keys` of the QEMU behind `qmp` into `dat` (the caller,
/// `live::run`, deletes `dat` on failure).
pub(crate) async fn run(
    qmp: &Client,
    keys: &[String],
    configs: &[(String, Vec<u8>)],
    dat: &Path,
    opts: &LiveOptions,
    plan: &FleecingPlan,
    log: &TaskLog<'_>,
) -> Result<LiveOutcome> {
    for what in job::clean_stale(qmp).await? {
        log.warn(&format!("removed stale {what} left by an earlier backup"));
    }
    let disks = job::resolve_disks(qmp, keys).await?;
    let images = choose_images(plan, &disks)?;
    let volids: Vec<String> = images.iter().map(|i| i.volid.to_string()).collect();
    // Recorded before they exist: a crash from here on leaves nothing unlisted.
    record(&plan.config_path, &volids)?;
    let mut out = Ok(());
    for (i, d) in images.iter().zip(&disks) {
        if let Err(e) = create(i, d.size) {
            out = Err(e);
            break;
        }
    }
    let out = match out {
        Ok(()) => {
            let mut graph = Graph::default();
            let res = with_images(qmp, &disks, &images, configs, dat, opts, log, &mut graph).await;
            graph.teardown(qmp, log).await;
            res
        }
        Err(e) => Err(e),
    };
    remove_images(plan, &images, log);
    out
}

#[allow(clippy::too_many_arguments)]
async fn with_images(
    qmp: &Client,
    disks: &[SourceDisk],
    images: &[Image],
    configs: &[(String, Vec<u8>)],
    dat: &Path,
    opts: &LiveOptions,
    log: &TaskLog<'_>,
    graph: &mut Graph,
) -> Result<LiveOutcome> {
    // Archive side: the push path's writer thread, fed by this task.
    let ArchiveSide {
        uuid,
        devs,
        shared,
        tx,
        writer,
    } = start_archive(dat, opts, configs, disks)?;

    let socket = opts.socket_dir.join(format!(
        "vmdump-{}-{}.fleece.nbd",
        opts.vmid,
        std::process::id()
    ));
    let mut frozen = None;
    let mut down = None;
    let res = async {
        let maps = attach(
            qmp,
            disks,
            images,
            &socket,
            opts,
            log,
            &uuid,
            graph,
            &mut frozen,
            &mut down,
        )
        .await?;
        let version = qmp.greeting().version;
        let rules = SnapshotRules::for_qemu(version.major, version.minor);
        tracing::debug!(%version, ?rules, "reading the fleecing exports");
        let pace = Pace::new(opts.speed);
        transfer(
            qmp,
            disks,
            &devs,
            &socket,
            rules,
            &maps,
            tx,
            &shared,
            &opts.cancel,
            &pace,
            log,
        )
        .await
    }
    .await;
    let pulled = match res {
        Ok(p) => p,
        Err(e) => {
            if !matches!(e, Error::Interrupted) {
                log.error(&vmdump_task::one_line(&e));
            }
            shared.abandon();
            if let Some(out) = writer.join() {
                out.abort();
            }
            return Err(e);
        }
    };
    // The guest is free of the filters before the archive is finished.
    graph.teardown(qmp, log).await;
    let Some(output) = writer.join() else {
        return Err(archive_failed(&shared));
    };
    if shared.failed() {
        output.abort();
        return Err(archive_failed(&shared));
    }
    let Pulled {
        mut lines,
        start,
        total,
    } = pulled;
    let transfer = Transfer {
        transferred: shared.transferred(),
        zero: shared.zero(),
        total,
        elapsed: start.elapsed(),
    };
    log.progress().update(&transfer);
    if let Some(line) = lines.finish(&transfer) {
        log.line(Level::Info, &line, true);
    }
    write_out(output).await?;
    Ok(LiveOutcome {
        transfer,
        uuid: uuid.to_string(),
        disks: disks.to_vec(),
        frozen,
        down,
        unallocated: 0,
    })
}

/// Fleecing nodes, NBD server, then at one instant for all disks (guest paused, inside the
/// freeze): filters, devices switched to them, snapshot-access nodes; thaw, exports, and the
/// `cont` of suspend/stop mode.
#[allow(clippy::too_many_arguments)]
async fn attach(
    qmp: &Client,
    disks: &[SourceDisk],
    images: &[Image],
    socket: &Path,
    opts: &LiveOptions,
    log: &TaskLog<'_>,
    uuid: &uuid::Uuid,
    graph: &mut Graph,
    frozen: &mut Option<Duration>,
    down: &mut Option<Duration>,
) -> Result<Vec<Option<Vec<Extent>>>> {
    for (d, i) in disks.iter().zip(images) {
        log.info(&format!(
            "{}: attaching fleecing image {} to QEMU",
            d.drive, i.volid
        ));
        let node = fl_node(d);
        let args = json!({
            "driver": i.format,
            "node-name": node,
            "discard": "unmap",
            "file": {"driver": "file", "filename": i.path, "discard": "unmap"},
        });
        qmp.blockdev_add(args)
            .await
            .map_err(|e| Error::qmp(format!("blockdev-add {node}"), e))?;
        graph.images.push(node);
    }
    let _ = std::fs::remove_file(socket);
    qmp.nbd_server_start_unix(socket)
        .await
        .map_err(|e| Error::qmp("nbd-server-start", e))?;
    graph.server = true;
    let blocks = qmp
        .query_block()
        .await
        .map_err(|e| Error::qmp("query-block", e))?;
    let qdev = |d: &SourceDisk| {
        blocks
            .iter()
            .find(|b| b.inserted.as_ref().is_some_and(|i| i.node_name == d.node))
            .and_then(|b| b.qdev.clone())
    };
    let running = qmp
        .query_status()
        .await
        .map_err(|e| Error::qmp("query-status", e))?
        .status
        == RunState::Running;

    let mark = opts.mark.as_ref();
    let agent = if running {
        freeze_marked(opts, log).await
    } else {
        None
    };
    log.info("starting backup via QMP command");
    // One instant for every disk: the guest's CPUs stop (QEMU drains its I/O) while the
    // filters go in.
    let paused = if running {
        let hold = match agent {
            None => Hold::Paused,
            Some(_) => Hold::FrozenPaused,
        };
        set_hold(mark, hold, log);
        match qmp.stop().await {
            Ok(()) => true,
            Err(e) => {
                log.warn(&format!(
                    "cannot pause the guest for the fleecing setup: {e}"
                ));
                false
            }
        }
    } else {
        false
    };
    if paused {
        crate::vm::stall("fleece-paused");
    }
    let inserted = insert(qmp, disks, graph, &qdev).await;
    // The guest is held (or does not run): the images are as at the instant.
    let maps = if inserted.is_ok() && (paused || !running) {
        instant_maps(qmp, disks, socket, graph, log).await
    } else {
        vec![None; disks.len()]
    };
    if paused {
        if let Err(e) = qmp.cont().await {
            log.warn(&format!("cannot resume the guest: {e}"));
        } else if agent.is_none() {
            set_hold(mark, Hold::None, log);
        } else {
            set_hold(mark, Hold::Frozen, log);
        }
    }
    if let Some((agent, at)) = agent {
        crate::freeze::thaw(&agent, log).await;
        *frozen = Some(at.elapsed());
        set_hold(mark, Hold::None, log);
    }
    inserted?;
    for d in disks {
        let mut export = NbdExport::new(export_id(d), snap_node(d), &d.drive);
        // TRIM (the discard of saved ranges) needs a writable export.
        export.writable = true;
        qmp.block_export_add(&export)
            .await
            .map_err(|e| Error::qmp(format!("block-export-add {}", export.id), e))?;
        graph.exports.push(export.id);
    }
    log.info(&format!("started backup task '{uuid}'"));
    if let Some(since) = opts.resume {
        if let Err(e) = qmp.cont().await {
            log.warn(&format!("cannot resume the guest: {e}"));
        } else {
            let d = since.elapsed();
            *down = Some(d);
            set_hold(mark, Hold::None, log);
            log.info(&format!("resuming VM again after {} seconds", d.as_secs()));
        }
    } else if opts.was_running {
        log.info("resuming VM again");
    }
    Ok(maps)
}

/// Longest the guest waits for the disks' maps; past it they are read whole.
const MAP_TIMEOUT: Duration = Duration::from_secs(1);

/// The allocation map of every disk at the backup instant, asked of QEMU over a read-only
/// NBD export of each disk's own node (its `base:allocation` block status, whatever the
/// format: raw holes, qcow2 clusters, a backing chain), before the guest runs on. Under the
/// 7.2 rules the pull asks the snapshot once per 64 KiB, holes too (a 64 GiB qcow2 holding
/// 100 MiB took 16 s against QEMU's push 0.3 s); with the map it skips them. The disk's own
/// node has none of the snapshot's bugs, so the map comes in a few large requests. It must be
/// taken while the guest cannot write: later, a hole may be a range the guest discarded,
/// whose old data is in the fleecing image. `None` for a disk whose map failed or took too
/// long: it is read whole.
async fn instant_maps(
    qmp: &Client,
    disks: &[SourceDisk],
    socket: &Path,
    graph: &mut Graph,
    log: &TaskLog<'_>,
) -> Vec<Option<Vec<Extent>>> {
    let started = Instant::now();
    let mut maps = Vec::with_capacity(disks.len());
    for d in disks {
        let left = MAP_TIMEOUT.saturating_sub(started.elapsed());
        let map = match tokio::time::timeout(left, instant_map(qmp, d, socket, graph)).await {
            Ok(Ok(map)) => map,
            Ok(Err(e)) => {
                log.warn(&format!(
                    "{}: no map at the instant ({e}); reading it whole",
                    d.drive
                ));
                maps.push(None);
                continue;
            }
            Err(_) => {
                log.warn(&format!(
                    "{}: no map at the instant within {} ms; reading it whole",
                    d.drive,
                    MAP_TIMEOUT.as_millis()
                ));
                maps.push(None);
                continue;
            }
        };
        let data: u64 = map.iter().filter(|e| !e.zero).map(|e| e.length).sum();
        log.info(&format!(
            "{}: {} of {} allocated at the backup instant, holes skipped",
            d.drive,
            crate::progress::render_bytes(data as f64, 2),
            crate::progress::render_bytes(d.size as f64, 2),
        ));
        maps.push(Some(map));
    }
    tracing::debug!(elapsed = ?started.elapsed(), "maps of the disks at the instant");
    maps
}

/// One disk's map: a read-only export of its node (removed with the others at teardown).
async fn instant_map(
    qmp: &Client,
    d: &SourceDisk,
    socket: &Path,
    graph: &mut Graph,
) -> Result<Vec<Extent>> {
    let id = format!("{PREFIX}map-{}", d.drive);
    let export = NbdExport::new(&id, &d.node, &id);
    qmp.block_export_add(&export)
        .await
        .map_err(|e| Error::qmp(format!("block-export-add {id}"), e))?;
    graph.exports.push(id.clone());
    let fleecing = |source| Error::Fleecing {
        device: d.drive.clone(),
        source: Box::new(source),
    };
    // The disk's own node: no 64 KiB rule.
    let rules = SnapshotRules {
        align_64k: false,
        in_flight: 1,
    };
    let disk = SnapshotExport::connect(socket, &id, rules)
        .await
        .map_err(fleecing)?;
    let map = disk.extents(0..d.size).await;
    let _ = disk.close().await;
    // The extents cover 0..size in order (the NBD client asks again where a reply ends):
    // nothing is left out to be taken for a hole.
    map.map_err(fleecing)
}

/// The filters and snapshot-access nodes (the guest is paused or not running).
async fn insert(
    qmp: &Client,
    disks: &[SourceDisk],
    graph: &mut Graph,
    qdev: &dyn Fn(&SourceDisk) -> Option<String>,
) -> Result<()> {
    for d in disks {
        let cbw = cbw_node(d);
        let args = json!({
            "driver": "copy-before-write",
            "node-name": cbw,
            "file": d.node,
            "target": fl_node(d),
            "on-cbw-error": "break-snapshot",
            "cbw-timeout": CBW_TIMEOUT,
        });
        qmp.blockdev_add(args)
            .await
            .map_err(|e| Error::qmp(format!("blockdev-add {cbw}"), e))?;
        graph.filters.push(cbw.clone());
        if let Some(q) = qdev(d) {
            qmp.qom_set(&q, "drive", json!(cbw))
                .await
                .map_err(|e| Error::qmp(format!("qom-set {q} drive"), e))?;
            graph.swapped.push((q, d.node.clone()));
        }
        let snap = snap_node(d);
        let args = json!({
            "driver": "snapshot-access",
            "node-name": snap,
            "file": cbw,
            "discard": "unmap",
        });
        qmp.blockdev_add(args)
            .await
            .map_err(|e| Error::qmp(format!("blockdev-add {snap}"), e))?;
        graph.snaps.push(snap);
    }
    Ok(())
}

/// Reads every disk's export into the writer, with progress lines; the sender is dropped at
/// the end so the writer can finish.
#[allow(clippy::too_many_arguments)]
async fn transfer(
    qmp: &Client,
    disks: &[SourceDisk],
    devs: &[u8],
    socket: &Path,
    rules: SnapshotRules,
    maps: &[Option<Vec<Extent>>],
    tx: mpsc::Sender<Msg>,
    shared: &Shared,
    cancel: &Cancel,
    pace: &Pace,
    log: &TaskLog<'_>,
) -> Result<Pulled> {
    let total: u64 = disks.iter().map(|d| d.size).sum();
    let start = Instant::now();
    let snapshot = |elapsed| Transfer {
        transferred: shared.transferred(),
        zero: shared.zero(),
        total,
        elapsed,
    };
    let mut lines = ProgressLines::new();
    let pull = async move {
        let res = async {
            for ((d, &dev), map) in disks.iter().zip(devs).zip(maps) {
                let mut snaps = Vec::with_capacity(CONNECTIONS);
                for _ in 0..CONNECTIONS {
                    let snap = SnapshotExport::connect(socket, &d.drive, rules)
                        .await
                        .map_err(|source| Error::Fleecing {
                            device: d.drive.clone(),
                            source: Box::new(source),
                        })?;
                    snaps.push(Arc::new(snap));
                }
                let map = map.as_deref();
                let res = pull_disk(&snaps, map, d, dev, &tx, shared, cancel, pace).await;
                for snap in snaps {
                    if let Ok(snap) = Arc::try_unwrap(snap) {
                        let _ = snap.close().await;
                    }
                }
                res?;
            }
            Ok::<_, Error>(())
        }
        .await;
        // The writer ends once every sender is gone.
        drop(tx);
        res
    };
    tokio::pin!(pull);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let res = loop {
        tokio::select! {
            r = &mut pull => break r,
            _ = tick.tick() => {
                let t = snapshot(start.elapsed());
                log.progress().update(&t);
                if let Some(line) = lines.tick(&t) {
                    log.line(Level::Info, &line, true);
                }
            }
        }
    };
    if let Err(e) = res {
        if matches!(e, Error::Fleecing { .. }) && qemu_gone(qmp).await {
            return Err(Error::QemuExited);
        }
        return Err(e);
    }
    Ok(Pulled {
        lines,
        start,
        total,
    })
}

/// The rate limit (`bwlimit`) of the reads. The holes of a disk's map at the instant are not
/// read and do not count, as QEMU's `sync=top` push skips unallocated clusters uncounted;
/// without a map every byte counts, zero ranges QEMU reports included.
struct Pace {
    speed: u64,
    start: Instant,
    done: std::sync::atomic::AtomicU64,
}

impl Pace {
    fn new(speed: u64) -> Self {
        Pace {
            speed,
            start: Instant::now(),
            done: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Counts `bytes` and sleeps until they are due.
    async fn wait(&self, bytes: u64) {
        if self.speed == 0 {
            return;
        }
        let done = self
            .done
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed)
            + bytes;
        let due = Duration::from_secs_f64(done as f64 / self.speed as f64);
        if let Some(ahead) = due.checked_sub(self.start.elapsed()) {
            tokio::time::sleep(ahead).await;
        }
    }
}

/// The end of the reads: the progress state for the final line once the writer is done.
struct Pulled {
    lines: ProgressLines,
    start: Instant,
    total: u64,
}

/// What one window read: zero ranges and data, in order.
enum Piece {
    Zero(u64, u64),
    Data(u64, bytes::Bytes),
}

/// One window: a sparse read (data, and the holes QEMU reports, in one request per 64 KiB
/// under the 7.2 rules) of the whole window, or only of its `data` ranges when the disk's map
/// at the instant is known (the rest reads as zeros); then its discard (the data is ours once
/// read: QEMU may drop the old data and stop copying guest writes there).
async fn fetch(
    snap: Arc<SnapshotExport>,
    pos: u64,
    end: u64,
    data: Option<Vec<Range<u64>>>,
) -> vmdump_blockdev::Result<Vec<Piece>> {
    // One range: the whole window.
    #[allow(clippy::single_range_in_vec_init)]
    let data = data.unwrap_or_else(|| vec![pos..end]);
    let mut out = Vec::new();
    let mut at = pos;
    for r in data {
        if r.start > at {
            out.push(Piece::Zero(at, r.start - at));
        }
        out.extend(
            snap.read_sparse(r.start, r.end - r.start)
                .await?
                .into_iter()
                .map(|p| match p {
                    SparsePiece::Zero { offset, len } => Piece::Zero(offset, len),
                    SparsePiece::Data { offset, data } => Piece::Data(offset, data),
                }),
        );
        at = r.end;
    }
    if end > at {
        out.push(Piece::Zero(at, end - at));
    }
    snap.discard(pos, end - pos).await?;
    Ok(out)
}

/// Where the hole at `pos` (a window boundary) ends, for one window over all of it: the next
/// window boundary at or before the next data, at most [`HOLE_WINDOW`] on, or the disk's end.
fn hole_end(map: &[Extent], pos: u64, size: u64) -> u64 {
    let i = map.partition_point(|e| e.end() <= pos);
    let run = match map.get(i) {
        Some(e) if e.zero => map[i..]
            .iter()
            .take_while(|e| e.zero)
            .last()
            .map_or(pos, Extent::end),
        _ => return pos,
    };
    let end = if run >= size {
        size
    } else {
        run / WINDOW * WINDOW
    };
    end.min(pos + HOLE_WINDOW).max(pos)
}

/// The ranges of `pos..end` to read, given the disk's map at the instant: its data extents,
/// widened to whole 64 KiB clusters (the 7.2 request rule), merged and clipped to the window.
fn window_data(map: &[Extent], pos: u64, end: u64) -> Vec<Range<u64>> {
    const CLUSTER: u64 = vmdump_nbd::client::ALIGN_64K;
    let first = map.partition_point(|e| e.end() <= pos);
    let mut out: Vec<Range<u64>> = Vec::new();
    for e in map[first..].iter().take_while(|e| e.offset < end) {
        if e.zero {
            continue;
        }
        let start = (e.offset.max(pos) / CLUSTER * CLUSTER).max(pos);
        let stop = e.end().min(end).next_multiple_of(CLUSTER).min(end);
        match out.last_mut() {
            Some(last) if last.end >= start => last.end = last.end.max(stop),
            _ => out.push(start..stop),
        }
    }
    out
}

/// One disk: windows fetched [`DEPTH`] at a time, over the export's connections in turn,
/// assembled into whole clusters in order and handed to the writer.
#[allow(clippy::too_many_arguments)]
async fn pull_disk(
    snaps: &[Arc<SnapshotExport>],
    map: Option<&[Extent]>,
    d: &SourceDisk,
    dev: u8,
    tx: &mpsc::Sender<Msg>,
    shared: &Shared,
    cancel: &Cancel,
    pace: &Pace,
) -> Result<()> {
    let fleecing = |source| Error::Fleecing {
        device: d.drive.clone(),
        source: Box::new(source),
    };
    let mut asm = Assembler::new(d.size);
    let mut ready = Vec::new();
    let mut queue = std::collections::VecDeque::new();
    let mut next = 0;
    let mut turn = 0;
    let res = loop {
        while queue.len() < DEPTH && next < d.size {
            let mut end = (next + WINDOW).min(d.size);
            let snap = &snaps[turn % snaps.len()];
            turn += 1;
            let data = map.map(|m| window_data(m, next, end));
            if let (Some(m), Some(data)) = (map, &data) {
                if data.is_empty() {
                    end = end.max(hole_end(m, next, d.size));
                }
            }
            // What the rate limit counts: the reads (every byte without a map).
            let paced = data
                .as_ref()
                .map_or(end - next, |d| d.iter().map(|r| r.end - r.start).sum());
            let task = tokio::spawn(fetch(Arc::clone(snap), next, end, data));
            queue.push_back((paced, task));
            next = end;
        }
        let Some((len, task)) = queue.pop_front() else {
            break Ok(());
        };
        if cancel.is_cancelled() {
            break Err(Error::Interrupted);
        }
        if shared.failed() {
            break Err(archive_failed(shared));
        }
        let pieces = match task.await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => break Err(fleecing(e)),
            Err(e) => {
                break Err(fleecing(vmdump_blockdev::Error::Io {
                    what: "read",
                    path: PathBuf::from(&d.drive),
                    source: std::io::Error::other(e),
                }))
            }
        };
        let mut bad = None;
        for p in pieces {
            let put = match p {
                Piece::Zero(o, l) => asm.write_zeroes(o, l, |c| ready.push(c)),
                Piece::Data(o, data) => asm.write(o, &data, |c| ready.push(c)),
            };
            if let Err(e) = put {
                bad = Some(e);
                break;
            }
        }
        if let Some(e) = bad {
            break Err(Error::Transfer(Arc::new(
                crate::error::Failure::OutOfRange {
                    device: d.drive.clone(),
                    offset: e.offset,
                    len: e.len,
                    size: e.size,
                },
            )));
        }
        let mut sent = true;
        for cluster in ready.drain(..) {
            if tx.send(Msg { dev, cluster }).await.is_err() {
                sent = false;
                break;
            }
        }
        if !sent {
            break Err(archive_failed(shared));
        }
        pace.wait(len).await;
    };
    for (_, task) in queue {
        task.abort();
    }
    res?;
    if let Some(cluster) = asm.first_missing() {
        return Err(Error::Incomplete {
            device: d.drive.clone(),
            cluster,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(offset: u64, length: u64, zero: bool) -> Extent {
        Extent {
            offset,
            length,
            zero,
        }
    }

    #[test]
    fn a_window_reads_the_data_of_the_map_in_whole_clusters() {
        const K: u64 = 1024;
        const M: u64 = 1024 * K;
        let map = [
            ext(0, 4 * K, false),
            ext(4 * K, 200 * K, true),
            ext(204 * K, 8 * K, false),
            ext(212 * K, 4 * M - 212 * K, true),
            ext(4 * M, 3 * M, false),
            ext(7 * M, 5 * M + 512, true),
        ];
        // 0-4K and 204K-212K widen to 0-64K and 192K-256K.
        assert_eq!(
            window_data(&map, 0, 4 * M),
            vec![0..64 * K, 192 * K..256 * K]
        );
        // An extent across windows is clipped to each.
        assert_eq!(window_data(&map, 4 * M, 8 * M), vec![4 * M..7 * M]);
        // All holes: nothing to read; the disk's short tail too.
        assert!(window_data(&map, 8 * M, 12 * M).is_empty());
        assert!(window_data(&map, 12 * M, 12 * M + 512).is_empty());
        // Neighbouring data widened into one cluster merges.
        let map = [
            ext(0, 10 * K, false),
            ext(10 * K, 10 * K, true),
            ext(20 * K, 100 * K, false),
            ext(120 * K, 8 * K, true),
            ext(128 * K, 1, false),
            ext(128 * K + 1, 64 * K - 1, true),
        ];
        assert_eq!(window_data(&map, 0, 192 * K), vec![0..192 * K]);
        // A data tail of a disk that is not a cluster multiple ends at the disk's end.
        let map = [ext(0, 64 * K, true), ext(64 * K, 1000, false)];
        assert_eq!(
            window_data(&map, 0, 64 * K + 1000),
            vec![64 * K..64 * K + 1000]
        );
    }

    #[test]
    fn a_hole_is_one_window_up_to_the_window_before_the_next_data() {
        const M: u64 = 1 << 20;
        const G: u64 = 1 << 30;
        let size = 3 * G + 512;
        let map = [
            ext(0, 4 * M, false),
            ext(4 * M, 30 * M + 5, true),
            ext(34 * M + 5, 2 * M, false),
            ext(36 * M + 5, size - 36 * M - 5, true),
        ];
        // From 4 MiB to the window boundary before the data at 34 MiB.
        assert_eq!(hole_end(&map, 4 * M, size), 32 * M);
        // Not at a hole: no longer.
        assert_eq!(hole_end(&map, 0, size), 0);
        assert_eq!(hole_end(&map, 32 * M, size), 32 * M);
        // A hole running to the end: 1 GiB at most, then the disk's odd end.
        assert_eq!(hole_end(&map, 40 * M, size), 40 * M + G);
        assert_eq!(hole_end(&map, 3 * G - 4 * M, size), size);
    }

    fn disk(key: &str) -> SourceDisk {
        SourceDisk {
            key: key.into(),
            drive: format!("drive-{key}"),
            node: format!("drive-{key}"),
            size: 1 << 20,
            top_only: false,
        }
    }

    #[test]
    fn images_are_named_as_proxmox_names_them_and_skip_taken_names() {
        let tmp = tempfile::tempdir().expect("tmp");
        let text = format!(
            "dir: local\n\tpath {0}/a\n\tcontent images\n\nbtrfs: fast\n\tpath {0}/b\n\tcontent images\n\ndir: bk\n\tpath {0}/c\n\tcontent backup\n",
            tmp.path().display()
        );
        let storage = StorageConfig::parse(&text, "storage.cfg").expect("parse");
        std::fs::create_dir_all(tmp.path().join("a/images/100")).expect("dir");
        std::fs::write(tmp.path().join("a/images/100/vm-100-fleece-0.qcow2"), b"").expect("w");
        let plan = FleecingPlan {
            vmid: 100,
            config_path: tmp.path().join("100.conf"),
            storage,
            storages: vec![
                ("scsi0".into(), "local".into()),
                ("scsi1".into(), "local".into()),
                ("scsi2".into(), "fast".into()),
            ],
        };
        let imgs =
            choose_images(&plan, &[disk("scsi0"), disk("scsi1"), disk("scsi2")]).expect("images");
        let ids: Vec<String> = imgs.iter().map(|i| i.volid.to_string()).collect();
        assert_eq!(
            ids,
            [
                "local:100/vm-100-fleece-1.qcow2",
                "local:100/vm-100-fleece-2.qcow2",
                "fast:100/vm-100-fleece-0.raw"
            ]
        );
        assert_eq!(imgs[2].format, "raw");
        let sv = tmp.path().join("b/images/100/vm-100-fleece-0");
        assert_eq!(imgs[2].path, sv.join("disk.raw"));
        assert_eq!(imgs[2].subvolume.as_deref(), Some(sv.as_path()));
        assert_eq!(imgs[0].subvolume, None);
        // Created as restored disks are (off btrfs the subvolume is a plain directory; the
        // real btrfs case is in cli/tests/backup_fleecing.rs), removed with its directory.
        create(&imgs[2], 3 << 20).expect("create");
        assert_eq!(
            std::fs::metadata(&imgs[2].path).expect("image").len(),
            3 << 20
        );
        create(&imgs[0], 3 << 20).expect("create");
        let info = vmdump_blockdev::qemu_img::info(&imgs[0].path).expect("info");
        assert_eq!(
            (info.format.as_str(), info.virtual_size),
            ("qcow2", 3 << 20)
        );
        delete_volid(&plan.storage, "fast:100/vm-100-fleece-0.raw").expect("delete");
        assert!(!sv.exists());
        delete_volid(&plan.storage, "fast:100/vm-100-fleece-0.raw").expect("gone is fine");
        delete(&imgs[0].volid, &imgs[0].path, None).expect("delete");
        assert!(!imgs[0].path.exists());
        let mut bad = plan.clone();
        bad.storages = vec![("scsi0".into(), "bk".into())];
        let e = choose_images(&bad, &[disk("scsi0")]).expect_err("no images content");
        assert!(e.to_string().contains("content 'images'"), "{e}");
        let e = choose_images(&plan, &[disk("virtio0")]).expect_err("no storage");
        assert!(e.to_string().contains("not on a storage"), "{e}");
    }
}

//! The restore operation in two steps: [`plan`] (lock, checks on the existing VM, the
//! archive header, the target of every disk, what an overwrite removes and keeps; nothing is
//! written) and apply (allocate, write, rewrite the config, commit, remove the old disks).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use vmdump_config::qmdump::parse_maps;
use vmdump_config::{
    write_atomic, ConfigRoot, QemuConfig, StorageConfig, VmId, VolumeId, VolumeRef,
};
use vmdump_task::{Cancel, Level, Progress, Transfer};

use crate::error::{Error, Result};
use crate::input::Input;
use crate::pipeline::{self, DiskSink, Stats};
use crate::plan::{plan_disks, DiskPlan};
use crate::rewrite::{mac_prefix_from_datacenter, rewrite_config, OsRandom, Rewrite};
use crate::volume::{allocate, remove_volid, Volume};

/// What to restore where.
#[derive(Debug, Clone)]
pub struct Options {
    /// Configuration root (storage.cfg, qemu-server/).
    pub root: ConfigRoot,
    /// The VM id to restore to.
    pub vmid: VmId,
    /// Put every disk on this storage (else the storage of each map line, else `local`).
    pub storage: Option<String>,
    /// Overwrite an existing (stopped, unprotected) VM.
    pub force: bool,
    /// New MAC addresses and smbios1 uuid.
    pub unique: bool,
    /// Read bandwidth limit in KiB/s (`None` or 0: unlimited).
    pub bwlimit: Option<u64>,
    /// Directory of running VMs' sockets (to refuse overwriting a running VM).
    pub run_dir: PathBuf,
    /// Cancelled (e.g. by a signal handler) to abort; the restore then cleans up.
    pub cancel: Cancel,
}

impl Options {
    /// Options with defaults: no storage override, no force/unique/limit, the run directory
    /// the VM runtime's ([`vmdump_guest::run_base_from_env`]).
    pub fn new(root: ConfigRoot, vmid: VmId) -> Self {
        let run_dir = vmdump_guest::run_base_from_env();
        Options {
            root,
            vmid,
            storage: None,
            force: false,
            unique: false,
            bwlimit: None,
            run_dir,
            cancel: Cancel::new(),
        }
    }
}

/// One restored disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredDisk {
    /// Config key (`scsi0`).
    pub virtdev: String,
    /// Archive device name.
    pub devname: String,
    /// The new volume.
    pub volid: String,
    /// Its path.
    pub path: PathBuf,
    /// Its format.
    pub format: String,
}

/// What a successful restore did.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The restored disks.
    pub disks: Vec<RestoredDisk>,
    /// The written config file.
    pub config_path: PathBuf,
    /// Old volumes removed (`--force`).
    pub removed: Vec<String>,
    /// Old volumes kept as `unusedN`.
    pub kept_unused: Vec<String>,
    /// Data figures.
    pub stats: Stats,
}

/// Removes the new volumes unless the restore committed, saying so for each. Each volume is
/// also recorded in the run's session (before it is created), so a killed restore's volumes
/// are removed by the next run.
pub(crate) struct Allocated<'a> {
    pub(crate) volumes: Vec<Volume>,
    pub(crate) records: Vec<vmdump_launch::VolumeRecord>,
    pub(crate) committed: bool,
    pub(crate) progress: &'a dyn Progress,
}

impl Drop for Allocated<'_> {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for v in &self.volumes {
            match v.remove() {
                Ok(()) => self.progress.log(
                    Level::Info,
                    &format!("temporary volume '{}' successfully removed", v.volid),
                    false,
                ),
                Err(e) => self.progress.log(
                    Level::Warn,
                    &format!(
                        "cannot remove temporary volume '{}': {}",
                        v.volid,
                        vmdump_task::one_line(&e)
                    ),
                    false,
                ),
            }
        }
    }
}

/// Whether a VM is running: a live QEMU owns its run directory, or its QMP socket accepts
/// connections.
pub(crate) fn vm_running(run_dir: &std::path::Path, vmid: u32) -> bool {
    let rd = vmdump_guest::RunDir::new(run_dir, vmid);
    rd.live_pid().is_some()
        || UnixStream::connect(rd.qmp_socket()).is_ok()
        || UnixStream::connect(rd.control_socket()).is_ok()
}

/// Everything a restore will read and write, checked before anything is written (the
/// result of [`plan`]). Holds the VM lock until it is applied or dropped.
pub struct RestorePlan {
    pub(crate) vmid: VmId,
    pub(crate) lock: vmdump_guest::VmLock,
    /// The config file that will be written.
    pub config_path: PathBuf,
    pub(crate) old: Option<QemuConfig>,
    pub(crate) storage: StorageConfig,
    pub(crate) reader: Option<vmdump_vma::Reader<Input>>,
    pub(crate) header: vmdump_vma::Header,
    /// The archived config's text.
    pub(crate) config_text: String,
    /// Where every disk goes.
    pub disks: Vec<DiskPlan>,
    /// Old volumes (`--force`) that are replaced by restored disks and removed at the end.
    pub to_remove: Vec<VolumeId>,
    /// Old volumes that stay, referenced as `unusedN`.
    pub kept: Vec<VolumeId>,
    /// Volume names the old config uses (never given to a new disk).
    pub(crate) taken: Vec<String>,
}

impl std::fmt::Debug for RestorePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestorePlan")
            .field("vmid", &self.vmid)
            .field("config_path", &self.config_path)
            .field("disks", &self.disks)
            .field("to_remove", &self.to_remove)
            .field("kept", &self.kept)
            .finish_non_exhaustive()
    }
}

/// Takes the VM lock, checks the VM to restore to (exists only with `force`; then not
/// locked, protected or running), reads the archive header from `source`, and plans every
/// disk. Nothing is written. The header's lines go to `progress`.
pub fn plan(
    source: Box<dyn Read + Send>,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<RestorePlan> {
    plan_with(opts, progress, |log| {
        let input = Input::open(source, opts.bwlimit.map(|k| k.saturating_mul(1024)))?;
        log(&format!("archive compression: {}", input.codec()));
        let reader = vmdump_vma::Reader::new(input)?;
        let header = reader.header().clone();
        Ok((Some(reader), header))
    })
}

/// [`plan`] with the archive header from `open` (called once the VM checks passed; it gets
/// the log): a streaming restore reads it from the stream, a live-restore from the
/// archive's index.
pub(crate) fn plan_with(
    opts: &Options,
    progress: &dyn Progress,
    open: impl FnOnce(&dyn Fn(&str)) -> Result<(Option<vmdump_vma::Reader<Input>>, vmdump_vma::Header)>,
) -> Result<RestorePlan> {
    let vmid = opts.vmid;
    let conf_path = opts.root.qemu_config_path(vmid.get());
    // The VM lock keeps `vmdump vm start` (and a second restore) away until we are done.
    let lock = vmdump_guest::VmLock::try_acquire(&opts.run_dir, vmid.get())
        .map_err(|source| Error::LockFile {
            path: opts.run_dir.clone(),
            source: Box::new(source),
        })?
        .ok_or(Error::Locked { vmid: vmid.get() })?;
    let old = if conf_path.exists() {
        if !opts.force {
            return Err(Error::Exists { vmid: vmid.get() });
        }
        let old = QemuConfig::load(&conf_path)?;
        if let Some(what) = old.lock() {
            return Err(Error::ConfigLocked {
                vmid: vmid.get(),
                what: what.to_string(),
            });
        }
        if old
            .get("protection")
            .and_then(vmdump_config::parse_bool)
            .unwrap_or(false)
        {
            return Err(Error::Protected { vmid: vmid.get() });
        }
        if vm_running(&opts.run_dir, vmid.get()) {
            return Err(Error::Running { vmid: vmid.get() });
        }
        Some(old)
    } else {
        None
    };
    let storage = opts.root.storage()?;
    let log = |line: &str| progress.log(Level::Info, line, false);

    let (reader, header) = open(&log)?;
    for c in &header.configs {
        log(&format!("CFG: size: {} name: {}", c.data.len(), c.name));
    }
    for d in &header.devices {
        log(&format!(
            "DEV: dev_id={} size: {} devname: {}",
            d.id, d.size, d.name
        ));
    }
    let conf = header.config("qemu-server.conf").ok_or(Error::NoConfig)?;
    let config_text = std::str::from_utf8(&conf.data)
        .map_err(|e| Error::Mapping(format!("qemu-server.conf is not UTF-8: {e}")))?
        .to_string();
    let maps = parse_maps(&config_text, "qemu-server.conf")?;
    let disks = plan_disks(&header, &maps, &storage, opts.storage.as_deref())?;

    // Names the old config uses stay reserved, so old and new disks never collide.
    let taken: Vec<String> = old
        .as_ref()
        .map(|o| {
            o.entries()
                .filter_map(|(_, v)| v.split(',').next())
                .filter(|v| v.contains(':'))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    // --force: old disks that were restored are replaced; other owned volumes stay as unusedN.
    let (to_remove, kept) = match &old {
        Some(o) => old_volumes(o, vmid.get(), &storage, &disks)?,
        None => (Vec::new(), Vec::new()),
    };
    Ok(RestorePlan {
        vmid,
        lock,
        config_path: conf_path,
        old,
        storage,
        reader,
        header,
        config_text,
        disks,
        to_remove,
        kept,
        taken,
    })
}

/// Restore the archive read from `source` as VM `opts.vmid`: [`plan`], then apply. Progress
/// and the qmrestore-style log lines go to `progress`. All-or-nothing: on any error
/// (including a cancel) the new volumes are removed (each removal is logged), no config is
/// written, and an existing VM stays as it was.
pub fn restore(
    source: Box<dyn Read + Send>,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Summary> {
    let plan = plan(source, opts, progress)?;
    apply(plan, opts, progress)
}

/// The side effects of a planned restore.
fn apply(plan: RestorePlan, opts: &Options, progress: &dyn Progress) -> Result<Summary> {
    let RestorePlan {
        vmid,
        lock: _lock,
        config_path: conf_path,
        old,
        storage,
        reader,
        header,
        config_text: text,
        disks: plans,
        to_remove,
        kept,
        taken,
    } = plan;
    let vmid = vmid.get();
    let reader = reader.expect("a streaming plan holds the archive reader");
    let log = |line: &str| progress.log(Level::Info, line, false);
    // Records this run's helpers and new volumes; reaps what killed runs left first.
    let session = vmdump_launch::Session::open(&opts.run_dir)?;
    let mut allocated = Allocated {
        volumes: Vec::new(),
        records: Vec::new(),
        committed: false,
        progress,
    };
    let mut sinks = Vec::new();
    let mut disks = Vec::new();
    for p in &plans {
        let (vol, record) = allocate(
            &storage, &p.storage, vmid, &p.format, p.size, &taken, &session,
        )?;
        log(&format!("new volume ID is '{}'", vol.volid));
        allocated.volumes.push(vol.clone());
        allocated.records.push(record);
        let target =
            vmdump_blockdev::open_target(&vol.path, &vol.format, vol.preallocated, Some(&session))
                .map_err(|source| Error::Disk {
                    what: "open",
                    device: p.devname.clone(),
                    source: Box::new(source),
                })?;
        log(&format!(
            "map '{}' to '{}' (write zeros = 0)",
            p.devname,
            vol.path.display()
        ));
        sinks.push(DiskSink {
            dev_id: p.dev_id,
            name: p.devname.clone(),
            size: p.size,
            target,
        });
        disks.push(RestoredDisk {
            virtdev: p.virtdev.clone(),
            devname: p.devname.clone(),
            volid: vol.volid.to_string(),
            path: vol.path.clone(),
            format: vol.format.clone(),
        });
    }

    // Progress counts whole 64 KiB clusters read (as `vma extract -v` does).
    let total_size: u64 = plans
        .iter()
        .map(|p| vmdump_vma::cluster_count(p.size) * vmdump_vma::CLUSTER_SIZE as u64)
        .sum();
    let stats = pipeline::run(reader, sinks, &opts.cancel, &mut |p| {
        progress.log(
            Level::Info,
            &format!(
                "progress {}% (read {} bytes, duration {} sec)",
                p.percent, p.bytes, p.seconds as u64
            ),
            true,
        );
        progress.update(&Transfer {
            transferred: p.bytes,
            zero: 0,
            total: total_size,
            elapsed: std::time::Duration::from_secs_f64(p.seconds),
        });
    })?;
    for line in stats.tally.summary() {
        log(&line);
    }

    // The new config.
    let new_text = new_config(&text, &disks, &plans, &kept, opts, &conf_path)?;

    if opts.cancel.is_cancelled() {
        return Err(Error::Interrupted);
    }
    write_configs(opts, &header, old.is_some(), &conf_path, &new_text)?;
    allocated.committed = true;

    let removed = remove_old(&storage, &to_remove, progress);
    Ok(Summary {
        disks,
        config_path: conf_path,
        removed,
        kept_unused: kept.iter().map(ToString::to_string).collect(),
        stats,
    })
}

/// Removes the old VM's replaced volumes (`--force`, after the new config is in place);
/// a failure is a warning. Returns the removed volume ids.
pub(crate) fn remove_old(
    storage: &StorageConfig,
    to_remove: &[VolumeId],
    progress: &dyn Progress,
) -> Vec<String> {
    let mut removed = Vec::new();
    for v in to_remove {
        match remove_volid(storage, v) {
            Ok(_) => {
                progress.log(Level::Info, &format!("removed old volume '{v}'"), false);
                removed.push(v.to_string());
            }
            Err(e) => progress.log(
                Level::Warn,
                &format!(
                    "cannot remove old volume '{v}': {}",
                    vmdump_task::one_line(&e)
                ),
                false,
            ),
        }
    }
    removed
}

/// The restored VM's config: the archived one with the new volumes and sizes (and with
/// `unique`, new MACs), the old VM's kept volumes as `unusedN`. Checked to parse.
pub(crate) fn new_config(
    text: &str,
    disks: &[RestoredDisk],
    plans: &[DiskPlan],
    kept: &[VolumeId],
    opts: &Options,
    conf_path: &std::path::Path,
) -> Result<String> {
    let mac_prefix = std::fs::read_to_string(opts.root.dir().join("datacenter.cfg"))
        .ok()
        .and_then(|t| mac_prefix_from_datacenter(&t))
        .or_else(|| Some(crate::rewrite::DEFAULT_MAC_PREFIX.to_string()));
    let rw = Rewrite {
        volumes: disks
            .iter()
            .map(|d| (d.virtdev.clone(), d.volid.clone()))
            .collect::<BTreeMap<_, _>>(),
        // The volumes were created with the archived size in whole sectors.
        sizes: plans
            .iter()
            .map(|p| (p.virtdev.clone(), vmdump_vma::round_to_sectors(p.size)))
            .collect(),
        unique: opts.unique,
        mac_prefix,
    };
    let mut new_text = rewrite_config(text, &rw, &mut OsRandom, "qemu-server.conf")?;
    let mut next_unused = 0;
    for v in kept {
        if new_text.contains(&v.to_string()) {
            continue;
        }
        while new_text.contains(&format!("\nunused{next_unused}:")) {
            next_unused += 1;
        }
        if !new_text.ends_with('\n') && !new_text.is_empty() {
            new_text.push('\n');
        }
        new_text.push_str(&format!("unused{next_unused}: {v}\n"));
        next_unused += 1;
    }
    let display = conf_path.display().to_string();
    QemuConfig::parse(&new_text, &display)?;

    Ok(new_text)
}

/// Writes the firewall file (or removes the old VM's) and then the config, each atomically.
pub(crate) fn write_configs(
    opts: &Options,
    header: &vmdump_vma::Header,
    had_old: bool,
    conf_path: &std::path::Path,
    text: &str,
) -> Result<()> {
    let vmid = opts.vmid.get();
    let fw_path = opts.root.dir().join("firewall").join(format!("{vmid}.fw"));
    match header.config("qemu-server.fw") {
        Some(fw) => write_atomic(&fw_path, &fw.data)?,
        None if had_old => {
            let _ = std::fs::remove_file(&fw_path);
        }
        None => {}
    }
    write_atomic(conf_path, text.as_bytes())?;
    Ok(())
}

/// The old VM's volumes owned by `vmid` on path-based storage: `(replaced, kept)`. A volume
/// is replaced if its drive key is restored; any other (drives not in the backup, unusedN)
/// is kept and referenced as `unusedN` in the new config.
fn old_volumes(
    old: &QemuConfig,
    vmid: u32,
    storage: &StorageConfig,
    plans: &[DiskPlan],
) -> Result<(Vec<VolumeId>, Vec<VolumeId>)> {
    let restored: BTreeSet<&str> = plans.iter().map(|p| p.virtdev.as_str()).collect();
    let owned = |v: &VolumeId| {
        v.owner() == Some(vmid)
            && storage
                .get(&v.storage)
                .is_some_and(|e| e.kind().is_path_based())
    };
    let mut remove = Vec::new();
    let mut keep = Vec::new();
    for d in old.drives()? {
        if d.is_cdrom() {
            continue;
        }
        if let VolumeRef::Volume(v) = d.volume()? {
            if !owned(&v) {
                continue;
            }
            if restored.contains(d.key.to_string().as_str()) {
                remove.push(v);
            } else {
                keep.push(v);
            }
        }
    }
    for (_, v) in old.unused() {
        let volid = v.split(',').next().unwrap_or(v);
        if let Ok(v) = VolumeId::parse(volid) {
            if owned(&v) && !keep.contains(&v) && !remove.contains(&v) {
                keep.push(v);
            }
        }
    }
    Ok((remove, keep))
}

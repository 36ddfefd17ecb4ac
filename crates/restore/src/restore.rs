//! The restore operation: plan, allocate, write, rewrite the config, commit.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vmdump_config::qmdump::parse_maps;
use vmdump_config::{write_atomic, ConfigRoot, QemuConfig, StorageConfig, VolumeId, VolumeRef};

use crate::error::{Error, Result};
use crate::input::Input;
use crate::pipeline::{self, Sink, Stats};
use crate::plan::{plan, DiskPlan};
use crate::rewrite::{mac_prefix_from_datacenter, rewrite_config, OsRandom, Rewrite};
use crate::volume::{allocate, remove_volid, Volume};

/// What to restore where.
#[derive(Debug, Clone)]
pub struct Options {
    /// Configuration root (storage.cfg, qemu-server/).
    pub root: ConfigRoot,
    /// The VM id to restore to.
    pub vmid: u32,
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
    /// Set (e.g. by a signal handler) to abort; the restore then cleans up.
    pub interrupt: Arc<AtomicBool>,
}

impl Options {
    /// Options with defaults: no storage override, no force/unique/limit, the run directory
    /// the VM runtime's ([`vmdump_guest::run_base_from_env`]).
    pub fn new(root: ConfigRoot, vmid: u32) -> Self {
        let run_dir = vmdump_guest::run_base_from_env();
        Options {
            root,
            vmid,
            storage: None,
            force: false,
            unique: false,
            bwlimit: None,
            run_dir,
            interrupt: Arc::new(AtomicBool::new(false)),
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

/// Removes the new volumes unless the restore committed. Each volume is also recorded in the
/// run's session (before it is created), so a killed restore's volumes are removed by the
/// next run.
struct Allocated {
    volumes: Vec<Volume>,
    records: Vec<vmdump_launch::VolumeRecord>,
    committed: bool,
}

impl Drop for Allocated {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for v in &self.volumes {
            match v.remove() {
                Ok(()) => tracing::info!("temporary volume '{}' successfully removed", v.volid),
                Err(e) => tracing::warn!("cannot remove temporary volume '{}': {e}", v.volid),
            }
        }
    }
}

/// Whether a VM is running: a live QEMU owns its run directory, or its QMP socket accepts
/// connections.
pub fn vm_running(run_dir: &std::path::Path, vmid: u32) -> bool {
    let rd = vmdump_guest::RunDir::new(run_dir, vmid);
    rd.live_pid().is_some()
        || UnixStream::connect(rd.qmp_socket()).is_ok()
        || UnixStream::connect(rd.control_socket()).is_ok()
}

fn percent(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        part as f64 * 100.0 / total as f64
    }
}

/// `%.3g` as C prints it, for the figures qmrestore users know.
pub(crate) fn g3(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let digits = 3i32 - 1 - v.abs().log10().floor() as i32;
    let s = format!("{:.*}", digits.max(0) as usize, v);
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Restore the archive read from `source` as VM `opts.vmid`. Progress and the qmrestore-style
/// log lines go to `log`. All-or-nothing: on any error (including an interrupt) the new
/// volumes are removed, no config is written, and an existing VM stays as it was.
pub fn restore(
    source: Box<dyn Read + Send>,
    opts: &Options,
    log: &mut dyn FnMut(&str),
) -> Result<Summary> {
    let vmid = opts.vmid;
    let conf_path = opts.root.qemu_config_path(vmid);
    // The VM lock keeps `vmdump vm start` (and a second restore) away until we are done.
    let _lock = vmdump_guest::VmLock::try_acquire(&opts.run_dir, vmid)
        .map_err(|e| Error::Internal(format!("take the VM lock: {e}")))?
        .ok_or(Error::Locked { vmid })?;
    let old = if conf_path.exists() {
        if !opts.force {
            return Err(Error::Exists { vmid });
        }
        let old = QemuConfig::load(&conf_path)?;
        if let Some(what) = old.lock() {
            return Err(Error::ConfigLocked {
                vmid,
                what: what.to_string(),
            });
        }
        if old
            .get("protection")
            .and_then(vmdump_config::parse_bool)
            .unwrap_or(false)
        {
            return Err(Error::Protected { vmid });
        }
        if vm_running(&opts.run_dir, vmid) {
            return Err(Error::Running { vmid });
        }
        Some(old)
    } else {
        None
    };
    let storage = opts.root.storage()?;
    // Records this run's helpers and new volumes; reaps what killed runs left first.
    let session = vmdump_launch::Session::open(&opts.run_dir)
        .map_err(|e| Error::Internal(format!("open the run session: {e}")))?;

    let input = Input::open(source, opts.bwlimit.map(|k| k.saturating_mul(1024)))?;
    log(&format!("archive compression: {}", input.codec()));
    let reader = vmdump_vma::Reader::new(input)?;
    let header = reader.header().clone();
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
    let text = std::str::from_utf8(&conf.data)
        .map_err(|e| Error::Mapping(format!("qemu-server.conf is not UTF-8: {e}")))?;
    let maps = parse_maps(text, "qemu-server.conf")?;
    let plans = plan(&header, &maps, &storage, opts.storage.as_deref())?;

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

    let mut allocated = Allocated {
        volumes: Vec::new(),
        records: Vec::new(),
        committed: false,
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
        sinks.push(Sink {
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

    let stats = pipeline::run(reader, sinks, &opts.interrupt, &mut |p| {
        log(&format!(
            "progress {}% (read {} bytes, duration {} sec)",
            p.percent, p.bytes, p.seconds as u64
        ));
    })?;
    let total = stats.total();
    if total == 0 {
        log("vma archive contains no image data");
    } else {
        log(&format!(
            "total bytes read {}, sparse bytes {} ({}%)",
            total,
            stats.sparse(),
            g3(percent(stats.sparse(), total))
        ));
        log(&format!(
            "space reduction due to 4K zero blocks {}%",
            g3(percent(total - stats.written(), total))
        ));
    }

    // The new config.
    let mac_prefix = std::fs::read_to_string(opts.root.dir().join("datacenter.cfg"))
        .ok()
        .and_then(|t| mac_prefix_from_datacenter(&t))
        .or_else(|| Some(crate::rewrite::DEFAULT_MAC_PREFIX.to_string()));
    let rw = Rewrite {
        volumes: disks
            .iter()
            .map(|d| (d.virtdev.clone(), d.volid.clone()))
            .collect::<BTreeMap<_, _>>(),
        unique: opts.unique,
        mac_prefix,
    };
    let mut new_text = rewrite_config(text, &rw, &mut OsRandom, "qemu-server.conf")?;

    // --force: old disks that were restored are replaced; other owned volumes stay as unusedN.
    let (to_remove, kept) = match &old {
        Some(o) => old_volumes(o, vmid, &storage, &plans)?,
        None => (Vec::new(), Vec::new()),
    };
    let mut next_unused = 0;
    for v in &kept {
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

    if opts.interrupt.load(Ordering::Relaxed) {
        return Err(Error::Interrupted);
    }
    let fw_path = opts.root.dir().join("firewall").join(format!("{vmid}.fw"));
    match header.config("qemu-server.fw") {
        Some(fw) => write_atomic(&fw_path, &fw.data)?,
        None if old.is_some() => {
            let _ = std::fs::remove_file(&fw_path);
        }
        None => {}
    }
    write_atomic(&conf_path, new_text.as_bytes())?;
    allocated.committed = true;

    let mut removed = Vec::new();
    for v in &to_remove {
        match remove_volid(&storage, v) {
            Ok(_) => {
                log(&format!("removed old volume '{v}'"));
                removed.push(v.to_string());
            }
            Err(e) => log(&format!("WARN: cannot remove old volume '{v}': {e}")),
        }
    }
    Ok(Summary {
        disks,
        config_path: conf_path,
        removed,
        kept_unused: kept.iter().map(ToString::to_string).collect(),
        stats,
    })
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

#[cfg(test)]
mod tests {
    use super::g3;

    #[test]
    fn percent_format_like_c() {
        assert_eq!(g3(50.0), "50");
        assert_eq!(g3(12.3456), "12.3");
        assert_eq!(g3(100.0), "100");
        assert_eq!(g3(0.5), "0.5");
        assert_eq!(g3(0.0), "0");
        assert_eq!(g3(99.99), "100");
    }
}

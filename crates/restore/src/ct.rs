//! Container restore (`pct restore`): a vzdump container archive (`.tar[.zst|.gz|.lzo]`,
//! ours or GNU tar's) into new volumes and a merged config.
//!
//! The archive's first members are `./etc/vzdump/pct.conf` and `./etc/vzdump/pct.fw`; they
//! are read first and decide the layout. **Simple mode** (no `rootfs`/`mpN` given): every
//! volume mount point of the backup is recreated on `storage` with its size; bind and device
//! mounts come back into the config without data. **Advanced mode**: the given `rootfs` and
//! `mpN` replace the layout. Members are then extracted in one pass by `vmdump_tar::unpack`
//! (mount points' members into their own volumes), which refuses absolute names, `..`,
//! paths through symlinks, and device nodes for unprivileged targets, and skips `./dev/*` as
//! Proxmox does. The config is merged as `pct restore` does and written last; on any error
//! the new volumes are removed and no config is written. With `force`, an existing stopped
//! container's old volumes are removed only after the new config is in place.

use std::io::Read;
use std::path::PathBuf;

use vmdump_config::{ConfigRoot, LxcConfig, MountPoint, VmId};
use vmdump_lxc::{volume, Access, CtState, CtVolume, OtherMount, Runtime};
use vmdump_tar::{IdMap, Reader, UnpackOptions};
use vmdump_task::{Cancel, Level, Progress};

use crate::error::{Error, Result};
use crate::rewrite::{random_mac, OsRandom};

/// Keys never taken from the backup (pve-container's restore merge).
const NOT_RESTORED: [&str; 7] = [
    "digest",
    "unprivileged",
    "parent",
    "template",
    "lock",
    "rootfs",
    "snapshots",
];

/// The most bytes of `pct.conf` / `pct.fw` read from an archive.
const MAX_CONFIG: u64 = 1 << 20;

/// How to restore a container.
#[derive(Debug, Clone)]
pub struct CtOptions {
    /// Configuration root.
    pub root: ConfigRoot,
    /// Run directory base (locks, mounts, sessions).
    pub run_dir: PathBuf,
    /// The container to create.
    pub vmid: VmId,
    /// Target storage of the volumes (default `local`).
    pub storage: Option<String>,
    /// Advanced mode: `rootfs` as `<storage>:<GiB>` (0: a directory on a dir storage).
    pub rootfs: Option<String>,
    /// Advanced mode: `mpN` values (`<storage>:<GiB>,mp=/path[,backup=1]`), by key.
    pub mps: Vec<(String, String)>,
    /// Overwrite an existing (stopped) container.
    pub force: bool,
    /// New MAC addresses for the network devices.
    pub unique: bool,
    /// Start the container after the restore.
    pub start: bool,
    /// Restore as unprivileged (`Some`) instead of as the backup was.
    pub unprivileged: Option<bool>,
    /// Limit of the archive's read rate in KiB/s (vzdump's `bwlimit`; `None` or 0: none).
    pub bwlimit: Option<u64>,
    /// Aborts the restore.
    pub cancel: Cancel,
}

impl CtOptions {
    /// Defaults for restoring into `vmid`.
    pub fn new(root: ConfigRoot, vmid: VmId) -> Self {
        CtOptions {
            root,
            run_dir: vmdump_launch::run_base_from_env(),
            vmid,
            storage: None,
            rootfs: None,
            mps: Vec::new(),
            force: false,
            unique: false,
            start: false,
            unprivileged: None,
            bwlimit: None,
            cancel: Cancel::new(),
        }
    }
}

/// What a container restore produced.
#[derive(Debug, Clone)]
pub struct CtSummary {
    /// The written config.
    pub config_path: PathBuf,
    /// The new volumes.
    pub volumes: Vec<String>,
    /// Files and bytes extracted.
    pub stats: vmdump_tar::UnpackStats,
}

/// Whether the decompressed start of an archive is a tar stream (not VMA).
pub fn is_container_archive(head: &[u8]) -> bool {
    head.len() >= 512 && !head.starts_with(b"VMA\0") && &head[257..262] == b"ustar"
}

/// Parses `<storage>:<GiB>` into storage and bytes.
fn storage_size(vmid: u32, s: &str) -> Result<(String, u64)> {
    let bad = || Error::Mapping(format!("CT {vmid}: '{s}' is not <storage>:<size in GiB>"));
    let (st, size) = s.split_once(':').ok_or_else(bad)?;
    let gib: f64 = size.parse().map_err(|_| bad())?;
    if !gib.is_finite() || gib < 0.0 {
        return Err(bad());
    }
    Ok((st.to_string(), (gib * f64::from(1u32 << 30)) as u64))
}

/// One volume to create: key, the mount point props (`mp=`, `backup=`...), storage, size.
struct NewVolume {
    key: String,
    mp: String,
    rest: Vec<(String, String)>,
    storage: String,
    size: u64,
}

/// Created volumes, destroyed on drop unless committed (each removal is logged).
struct Created<'a> {
    vols: Vec<CtVolume>,
    /// Session records of the new volumes: a killed run's are removed by the next run.
    records: Vec<vmdump_launch::VolumeRecord>,
    committed: bool,
    progress: &'a dyn Progress,
}

impl Drop for Created<'_> {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for v in self.vols.iter().rev() {
            match volume::destroy(v) {
                Ok(()) => self.progress.log(
                    Level::Info,
                    &format!("removed new volume '{}'", v.volid),
                    false,
                ),
                Err(e) => self.progress.log(
                    Level::Warn,
                    &format!("cannot remove new volume '{}': {e}", v.volid),
                    false,
                ),
            }
        }
    }
}

/// Restores a container archive from `source` (compressed or not) into container `vmid`.
pub fn restore_ct(
    source: Box<dyn Read + Send>,
    opts: &CtOptions,
    progress: &dyn Progress,
) -> Result<CtSummary> {
    let vmid = opts.vmid.get();
    let log = |l: Level, s: &str| progress.log(l, s, false);
    let _lock = vmdump_guest::VmLock::try_acquire(&opts.run_dir, vmid)
        .map_err(|e| Error::Internal(e.to_string()))?
        .ok_or(Error::Locked { vmid })?;
    let rt = Runtime::new(opts.root.clone(), opts.run_dir.clone());
    for m in rt.recover(vmid) {
        log(Level::Warn, &m);
    }
    // An existing guest: only a stopped container, only with force.
    if opts.root.qemu_config_path(vmid).exists() {
        return Err(Error::Exists { vmid });
    }
    let old = if rt.exists(vmid) {
        if !opts.force {
            return Err(Error::Exists { vmid });
        }
        let cfg = rt.config(vmid)?;
        if let Some(l) = cfg.lock() {
            return Err(Error::ConfigLocked {
                vmid,
                what: l.to_string(),
            });
        }
        if rt.state(vmid)? != CtState::Stopped {
            return Err(Error::Running { vmid });
        }
        Some(rt.volumes(vmid, &cfg)?.0)
    } else {
        None
    };

    let source: Box<dyn Read + Send> = match opts.bwlimit {
        Some(k) if k > 0 => Box::new(crate::input::Throttle::new(source, k.saturating_mul(1024))),
        _ => source,
    };
    let dec = vmdump_compress::Decoder::detect(std::io::BufReader::with_capacity(1 << 20, source))
        .map_err(|e| Error::Decompress {
            tool: "detect".into(),
            detail: e.to_string(),
        })?;
    let mut reader = Reader::new(dec);
    // ./etc/vzdump/pct.conf, then ./etc/vzdump/pct.fw.
    let mut conf_text = None;
    let mut fw = Vec::new();
    for _ in 0..2 {
        let Some(e) = reader.next_entry().map_err(Error::Tar)? else {
            break;
        };
        match e.meta.name.as_slice() {
            b"./etc/vzdump/pct.conf" | b"etc/vzdump/pct.conf" => {
                conf_text = Some(reader.read_all(MAX_CONFIG).map_err(Error::Tar)?);
            }
            b"./etc/vzdump/pct.fw" | b"etc/vzdump/pct.fw" => {
                fw = reader.read_all(MAX_CONFIG).map_err(Error::Tar)?;
            }
            _ => return Err(Error::NoCtConfig),
        }
    }
    let conf_text = String::from_utf8(conf_text.ok_or(Error::NoCtConfig)?)
        .map_err(|_| Error::Mapping("pct.conf is not UTF-8".into()))?;
    let backup = LxcConfig::parse(&conf_text, "pct.conf").map_err(Error::Config)?;
    let unprivileged = opts.unprivileged.unwrap_or_else(|| backup.unprivileged());

    // The layout.
    let default_storage = opts.storage.clone().unwrap_or_else(|| "local".into());
    let mut plan: Vec<NewVolume> = Vec::new();
    let mut others: Vec<(String, String)> = Vec::new();
    let storage_cfg = opts.root.storage().map_err(Error::Config)?;
    if opts.rootfs.is_some() || !opts.mps.is_empty() {
        let rootfs = opts
            .rootfs
            .clone()
            .ok_or_else(|| Error::Mapping("advanced mode needs --rootfs".into()))?;
        let (st, size) = storage_size(vmid, &rootfs)?;
        plan.push(NewVolume {
            key: "rootfs".into(),
            mp: "/".into(),
            rest: Vec::new(),
            storage: st,
            size,
        });
        for (key, spec) in &opts.mps {
            let (vol, props) = spec.split_once(',').unwrap_or((spec, ""));
            let (st, size) = storage_size(vmid, vol)?;
            let mut mp = None;
            let mut rest = Vec::new();
            for p in props.split(',').filter(|p| !p.is_empty()) {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                if k == "mp" {
                    mp = Some(v.to_string());
                } else if k != "size" {
                    rest.push((k.to_string(), v.to_string()));
                }
            }
            plan.push(NewVolume {
                key: key.clone(),
                mp: mp.ok_or_else(|| Error::Mapping(format!("{key}: no mp=<path>")))?,
                rest,
                storage: st,
                size,
            });
        }
    } else {
        let mut mps: Vec<MountPoint> = backup
            .rootfs()
            .map_err(Error::Config)?
            .into_iter()
            .collect();
        mps.extend(backup.mount_points().map_err(Error::Config)?);
        if mps.first().is_none_or(|m| m.key != "rootfs") {
            return Err(Error::Mapping("pct.conf has no rootfs".into()));
        }
        for mp in mps {
            match volume::resolve(&storage_cfg, &mp) {
                // A storage volume of the backup (its storage need not exist here).
                Ok(Ok(_)) | Err(_)
                    if vmdump_config::VolumeRef::parse(mp.volume())
                        .is_ok_and(|r| matches!(r, vmdump_config::VolumeRef::Volume(_))) =>
                {
                    let size = mp
                        .props
                        .get("size")
                        .and_then(vmdump_config::parse_size)
                        .unwrap_or(0);
                    let rest = mp
                        .props
                        .iter()
                        .filter(|(k, _)| !["volume", "size", "mp"].contains(k))
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect();
                    plan.push(NewVolume {
                        key: mp.key.clone(),
                        mp: mp.path().to_string(),
                        rest,
                        storage: default_storage.clone(),
                        size,
                    });
                }
                _ => others.push((mp.key.clone(), mp.props.to_string())),
            }
        }
    }

    // Create the volumes (images recorded in the run session first).
    let session = vmdump_launch::Session::open(&opts.run_dir)?;
    let mut created = Created {
        vols: Vec::new(),
        records: Vec::new(),
        committed: false,
        progress,
    };
    let owner = if unprivileged {
        (100_000, 100_000)
    } else {
        (0, 0)
    };
    let mut taken: Vec<String> = Vec::new();
    let mut config_values: Vec<(String, String)> = Vec::new();
    for nv in &plan {
        let image =
            volume::wants_image(&storage_cfg, &nv.storage, nv.size).map_err(Error::Config)?;
        let volid = volume::allocate_name(&storage_cfg, &nv.storage, vmid, image, &taken)
            .map_err(Error::Config)?;
        taken.push(volid.to_string());
        let size_text = if nv.size == 0 {
            "0T".to_string()
        } else {
            vmdump_config::format_size(nv.size)
        };
        let mut value = format!("{volid}");
        if nv.key != "rootfs" {
            value.push_str(&format!(",mp={}", nv.mp));
        }
        for (k, v) in &nv.rest {
            value.push_str(&format!(",{k}={v}"));
        }
        value.push_str(&format!(",size={size_text}"));
        let mp = MountPoint::parse(&nv.key, &value).map_err(Error::Config)?;
        let Ok(vol) = volume::resolve(&storage_cfg, &mp).map_err(Error::Config)? else {
            return Err(Error::Mapping(format!("{}: not a storage volume", nv.key)));
        };
        if nv.size == 0 && vol.layout.is_image() {
            return Err(Error::Mapping(format!("{}: an image needs a size", nv.key)));
        }
        log(Level::Info, &format!("new volume ID is '{volid}'"));
        // Recorded before it exists: a run killed from here on leaves nothing the next run
        // does not remove.
        let record = match vol.layout {
            vmdump_lxc::Layout::Image => session.record_volume(&vol.path, None)?,
            vmdump_lxc::Layout::ImageInSubvolume => {
                session.record_volume(&vol.path, vol.subvolume())?
            }
            vmdump_lxc::Layout::Dir | vmdump_lxc::Layout::Subvolume => {
                session.record_tree(&vol.path)?
            }
        };
        created.records.push(record);
        volume::create(&vol, owner)?;
        created.vols.push(vol);
        config_values.push((nv.key.clone(), value));
    }

    // Extract.
    let ct_dir = rt.ct_dir(vmid);
    std::fs::create_dir_all(&ct_dir).map_err(|e| Error::Volume {
        what: "create directory",
        path: ct_dir.clone(),
        source: e,
    })?;
    let stats = {
        let mut mounts = Vec::new();
        for v in &created.vols {
            mounts.push(Access::open(&v.path, v.layout, &ct_dir, false)?);
        }
        let unpack_opts = UnpackOptions {
            idmap: unprivileged.then(IdMap::unprivileged),
            exclude_dev: true,
            refuse_devices: unprivileged,
            mounts: created
                .vols
                .iter()
                .zip(&mounts)
                .skip(1)
                .map(|(v, a)| {
                    (
                        v.mp.trim_start_matches('/').to_string(),
                        a.dir().to_path_buf(),
                    )
                })
                .collect(),
        };
        log(Level::Info, "extracting archive");
        let cancel = opts.cancel.clone();
        let res = vmdump_tar::unpack(&mut reader, mounts[0].dir(), &unpack_opts, &|| {
            cancel.is_cancelled()
        });
        if opts.cancel.is_cancelled() {
            return Err(Error::Interrupted);
        }
        let stats = res.map_err(Error::Tar)?;
        // The rest of the stream (end blocks) must be readable: a truncated archive fails.
        for w in &stats.warnings {
            log(Level::Warn, w);
        }
        log(
            Level::Info,
            &format!("Total bytes read: {}", reader.position()),
        );
        stats
    };

    // Merge the config.
    let mut text = String::new();
    let mut rng = OsRandom;
    for (k, v) in backup.entries() {
        if NOT_RESTORED.contains(&k)
            || vmdump_config_indexed(k, "mp")
            || vmdump_config_indexed(k, "unused")
        {
            continue;
        }
        let v = if opts.unique && vmdump_config_indexed(k, "net") {
            v.split(',')
                .map(|p| match p.split_once('=') {
                    Some(("hwaddr", _)) => format!("hwaddr={}", random_mac(None, &mut rng)),
                    _ => p.to_string(),
                })
                .collect::<Vec<_>>()
                .join(",")
        } else {
            v.to_string()
        };
        text.push_str(&format!("{k}: {v}\n"));
    }
    if backup.hostname().is_none() {
        text.push_str(&format!("hostname: CT{vmid}\n"));
    }
    for (k, v) in &config_values {
        text.push_str(&format!("{k}: {v}\n"));
    }
    for (k, v) in &others {
        text.push_str(&format!("{k}: {v}\n"));
    }
    if unprivileged {
        text.push_str("unprivileged: 1\n");
    }
    let config_path = opts.root.lxc_config_path(vmid);
    let cfg = LxcConfig::parse(&text, &config_path.display().to_string()).map_err(Error::Config)?;
    if let Some(d) = config_path.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::Volume {
            what: "create directory",
            path: d.to_path_buf(),
            source: e,
        })?;
    }
    if !fw.is_empty() {
        let fw_path = opts.root.dir().join("firewall").join(format!("{vmid}.fw"));
        if let Some(d) = fw_path.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        std::fs::write(&fw_path, &fw).map_err(|e| Error::Volume {
            what: "write",
            path: fw_path.clone(),
            source: e,
        })?;
    }
    cfg.save(&config_path).map_err(Error::Config)?;
    created.committed = true;
    for r in created.records.drain(..) {
        r.commit();
    }
    let volumes: Vec<String> = created.vols.iter().map(|v| v.volid.to_string()).collect();
    // With force: the old volumes go once the new config is in place.
    if let Some(old) = old {
        for v in old {
            if !volumes.contains(&v.volid.to_string()) {
                match volume::destroy(&v) {
                    Ok(()) => log(Level::Info, &format!("removed old volume '{}'", v.volid)),
                    Err(e) => log(
                        Level::Warn,
                        &format!("cannot remove old volume '{}': {e}", v.volid),
                    ),
                }
            }
        }
    }
    if opts.start {
        rt.start(vmid)?;
        log(Level::Info, &format!("CT {vmid} started"));
    }
    let _ = OtherMount::Bind(PathBuf::new());
    Ok(CtSummary {
        config_path,
        volumes,
        stats,
    })
}

/// `key` is `<prefix><N>`.
fn vmdump_config_indexed(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix)
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

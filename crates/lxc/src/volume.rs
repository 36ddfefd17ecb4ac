//! Container volumes as Proxmox lays them out:
//! - `dir` storage, `size>0`: a raw image with ext4, `<storage>:<vmid>/vm-<vmid>-disk-N.raw` →
//!   `<path>/images/<vmid>/vm-<vmid>-disk-N.raw`;
//! - `dir` storage, `size=0`: a plain directory, `<storage>:<vmid>/subvol-<vmid>-disk-N.subvol`;
//! - `btrfs` storage: a subvolume `<path>/images/<vmid>/subvol-<vmid>-disk-N.subvol` (any size;
//!   its read-only snapshot is `<subvol>@<name>`), or a raw image inside a subvolume
//!   (`vm-<vmid>-disk-N.raw` → `<path>/images/<vmid>/vm-<vmid>-disk-N/disk.raw`).

use std::path::{Path, PathBuf};

use vmdump_config::{MountPoint, StorageConfig, StorageType, VolumeId, VolumeRef};

use crate::error::{Error, Result};
use crate::tool;

/// How a volume stores its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A raw image file holding an ext4 filesystem (mounted through a loop device).
    Image,
    /// A plain directory on a `dir` storage.
    Dir,
    /// A btrfs subvolume (a directory that has snapshots).
    Subvolume,
    /// A raw image inside a btrfs subvolume (`.../vm-N-disk-M/disk.raw`).
    ImageInSubvolume,
}

impl Layout {
    /// Whether the files are reached by mounting an image.
    pub fn is_image(self) -> bool {
        matches!(self, Layout::Image | Layout::ImageInSubvolume)
    }
}

/// One mount point of a container with a storage volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtVolume {
    /// `rootfs` or `mpN`.
    pub key: String,
    /// Mount path in the container (`/` or `/data`).
    pub mp: String,
    /// The volume.
    pub volid: VolumeId,
    /// The image file or the directory on the host.
    pub path: PathBuf,
    /// How it stores files.
    pub layout: Layout,
    /// `size=` of the mount point in bytes (0 for directories without a quota).
    pub size: u64,
    /// Whether vzdump includes it (`rootfs` always, `mpN` with `backup=1`).
    pub backup: bool,
}

impl CtVolume {
    /// The btrfs subvolume holding it, if any (what a snapshot is taken of).
    pub fn subvolume(&self) -> Option<&Path> {
        match self.layout {
            Layout::Subvolume => Some(&self.path),
            Layout::ImageInSubvolume => self.path.parent(),
            _ => None,
        }
    }
}

/// What a mount point refers to when it is not a storage volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OtherMount {
    /// A bind mount of a host directory (never backed up).
    Bind(PathBuf),
    /// A device mount (never backed up).
    Device(PathBuf),
}

/// Resolves a mount point: a storage volume, or a bind/device mount.
pub fn resolve(
    storage: &StorageConfig,
    mp: &MountPoint,
) -> vmdump_config::Result<std::result::Result<CtVolume, OtherMount>> {
    let size = match mp.props.get("size") {
        Some(s) => vmdump_config::parse_size(s).ok_or_else(|| vmdump_config::Error::Volume {
            volume: mp.volume().to_string(),
            msg: format!("invalid size '{s}'"),
        })?,
        None => 0,
    };
    let volid = match VolumeRef::parse(mp.volume())? {
        VolumeRef::Volume(v) => v,
        VolumeRef::Path(p) if p.starts_with("/dev") => return Ok(Err(OtherMount::Device(p))),
        VolumeRef::Path(p) => return Ok(Err(OtherMount::Bind(p))),
        _ => return Ok(Err(OtherMount::Bind(PathBuf::from(mp.volume())))),
    };
    let entry = storage.storage(&volid.storage)?;
    let file = volid.file_name().to_string();
    let dir = storage.image_dir(&volid.storage, volid.owner().unwrap_or(0))?;
    let (path, layout) = match (entry.kind(), file.strip_suffix(".raw")) {
        (StorageType::Btrfs, Some(stem)) => {
            (dir.join(stem).join("disk.raw"), Layout::ImageInSubvolume)
        }
        (StorageType::Btrfs, None) => (dir.join(&file), Layout::Subvolume),
        (_, Some(_)) => (dir.join(&file), Layout::Image),
        (_, None) => (dir.join(&file), Layout::Dir),
    };
    Ok(Ok(CtVolume {
        key: mp.key.clone(),
        mp: mp.path().to_string(),
        volid,
        path,
        layout,
        size,
        backup: mp.backup(),
    }))
}

/// The next free volume name on `storage` for `vmid`: `vm-<vmid>-disk-N.raw` (`image`) or
/// `subvol-<vmid>-disk-N.subvol`, N counting both kinds and the names in `taken`.
pub fn allocate_name(
    storage: &StorageConfig,
    id: &str,
    vmid: u32,
    image: bool,
    taken: &[String],
) -> vmdump_config::Result<VolumeId> {
    let dir = storage.image_dir(id, vmid)?;
    let mut used = std::collections::BTreeSet::new();
    let mut note = |name: &str| {
        let file = name.rsplit(['/', ':']).next().unwrap_or(name);
        for prefix in [format!("vm-{vmid}-disk-"), format!("subvol-{vmid}-disk-")] {
            if let Some(rest) = file.strip_prefix(&prefix) {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                if let Ok(n) = digits.parse::<u64>() {
                    used.insert(n);
                }
            }
        }
    };
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            note(&e.file_name().to_string_lossy());
        }
    }
    for t in taken {
        note(t);
    }
    let n = (0u64..)
        .find(|n| !used.contains(n))
        .expect("a free index exists");
    let name = if image {
        format!("{vmid}/vm-{vmid}-disk-{n}.raw")
    } else {
        format!("{vmid}/subvol-{vmid}-disk-{n}.subvol")
    };
    VolumeId::parse(&format!("{id}:{name}"))
}

/// Whether a storage keeps container volumes as images when `size` > 0 (`dir`) or always as
/// subvolumes (`btrfs`, as Proxmox's btrfs plugin does for containers).
pub fn wants_image(storage: &StorageConfig, id: &str, size: u64) -> vmdump_config::Result<bool> {
    Ok(match storage.storage(id)?.kind() {
        StorageType::Btrfs => false,
        _ => size > 0,
    })
}

/// Creates a new, empty volume: an image of `vol.size` bytes with ext4 (root directory owned
/// by `root_owner`), or a directory/subvolume owned by `root_owner`.
pub fn create(vol: &CtVolume, root_owner: (u32, u32)) -> Result<()> {
    let (uid, gid) = root_owner;
    if let Some(parent) = vol.path.parent() {
        if vol.layout != Layout::ImageInSubvolume {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io("create directory", parent, e))?;
        }
    }
    match vol.layout {
        Layout::Image | Layout::ImageInSubvolume => {
            if vol.layout == Layout::ImageInSubvolume {
                let sv = vol
                    .subvolume()
                    .expect("an image in a subvolume has a parent");
                if let Some(p) = sv.parent() {
                    std::fs::create_dir_all(p).map_err(|e| Error::io("create directory", p, e))?;
                }
                tool::run_args(
                    "btrfs",
                    [
                        std::ffi::OsStr::new("-q"),
                        "subvolume".as_ref(),
                        "create".as_ref(),
                        sv.as_os_str(),
                    ],
                )?;
            }
            let f = std::fs::File::options()
                .write(true)
                .create_new(true)
                .open(&vol.path)
                .map_err(|e| Error::io("create image", &vol.path, e))?;
            f.set_len(vol.size)
                .map_err(|e| Error::io("size image", &vol.path, e))?;
            drop(f);
            tool::run_args(
                "mkfs.ext4",
                [
                    "-q".into(),
                    "-F".into(),
                    "-E".into(),
                    format!("root_owner={uid}:{gid}"),
                    vol.path.display().to_string(),
                ],
            )?;
        }
        Layout::Dir => {
            std::fs::create_dir(&vol.path)
                .map_err(|e| Error::io("create directory", &vol.path, e))?;
        }
        Layout::Subvolume => {
            tool::run_args(
                "btrfs",
                [
                    std::ffi::OsStr::new("-q"),
                    "subvolume".as_ref(),
                    "create".as_ref(),
                    vol.path.as_os_str(),
                ],
            )?;
        }
    }
    if !vol.layout.is_image() {
        std::os::unix::fs::chown(&vol.path, Some(uid), Some(gid))
            .map_err(|e| Error::io("chown", &vol.path, e))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&vol.path, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| Error::io("chmod", &vol.path, e))?;
    }
    Ok(())
}

/// Removes a volume and its data.
pub fn destroy(vol: &CtVolume) -> Result<()> {
    match vol.layout {
        Layout::Image => {
            std::fs::remove_file(&vol.path).map_err(|e| Error::io("remove", &vol.path, e))
        }
        Layout::Dir => {
            std::fs::remove_dir_all(&vol.path).map_err(|e| Error::io("remove", &vol.path, e))
        }
        Layout::Subvolume | Layout::ImageInSubvolume => {
            let sv = vol.subvolume().expect("subvolume layouts have one");
            tool::run_args(
                "btrfs",
                [
                    std::ffi::OsStr::new("-q"),
                    "subvolume".as_ref(),
                    "delete".as_ref(),
                    sv.as_os_str(),
                ],
            )
            .map(|_| ())
        }
    }
}

/// Whether the volume's data exists on the host.
pub fn exists(vol: &CtVolume) -> bool {
    vol.path.exists()
}

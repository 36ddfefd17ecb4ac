//! Container volumes as Proxmox lays them out:
//! - `dir` storage, `size>0`: a raw image with ext4, `<storage>:<vmid>/vm-<vmid>-disk-N.raw` →
//!   `<path>/images/<vmid>/vm-<vmid>-disk-N.raw`;
//! - `dir` storage, `size=0`: a plain directory, `<storage>:<vmid>/subvol-<vmid>-disk-N.subvol`;
//! - `btrfs` storage: a subvolume `<path>/images/<vmid>/subvol-<vmid>-disk-N.subvol` (any size;
//!   its read-only snapshot is `<subvol>@<name>`), or a raw image inside a subvolume
//!   (`vm-<vmid>-disk-N.raw` → `<path>/images/<vmid>/vm-<vmid>-disk-N/disk.raw`).
//!
//! The paths are `vmdump_config`'s layout (`StorageConfig::resolve`); images and subvolumes
//! are made and removed by [`vmdump_blockdev::volume`], the one home of volume files (off
//! btrfs a subvolume is a plain directory there).

use std::path::{Path, PathBuf};

use vmdump_blockdev::volume;
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
    let resolved = storage.resolve(&volid)?;
    let layout = match &resolved.subvolume {
        Some(sv) if *sv == resolved.path => Layout::Subvolume,
        Some(_) => Layout::ImageInSubvolume,
        None if volid.file_name().ends_with(".raw") => Layout::Image,
        None => Layout::Dir,
    };
    let path = resolved.path;
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
/// by `root_owner`), or a directory/subvolume owned by `root_owner`. A failed creation leaves
/// nothing behind.
pub fn create(vol: &CtVolume, root_owner: (u32, u32)) -> Result<()> {
    let (uid, gid) = root_owner;
    if vol.layout.is_image() {
        volume::create(&vol.path, vol.subvolume(), "raw", vol.size, None)
            .map_err(|e| Error::volume("create", vol, e))?;
        let mkfs = tool::run_args(
            "mkfs.ext4",
            [
                "-q".into(),
                "-F".into(),
                "-E".into(),
                format!("root_owner={uid}:{gid}"),
                vol.path.display().to_string(),
            ],
        );
        if let Err(e) = mkfs {
            let _ = destroy(vol);
            return Err(e);
        }
        return Ok(());
    }
    if let Some(parent) = vol.path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io("create directory", parent, e))?;
    }
    if vol.layout == Layout::Subvolume {
        volume::create_subvolume(&vol.path).map_err(|e| Error::volume("create", vol, e))?;
    } else {
        std::fs::create_dir(&vol.path).map_err(|e| Error::io("create directory", &vol.path, e))?;
    }
    let owned = std::os::unix::fs::chown(&vol.path, Some(uid), Some(gid))
        .map_err(|e| Error::io("chown", &vol.path, e))
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&vol.path, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| Error::io("chmod", &vol.path, e))
        });
    if owned.is_err() {
        let _ = destroy(vol);
    }
    owned
}

/// Removes a volume and its data (an image with its subvolume, a directory or subvolume with
/// everything in it); a missing one is fine.
pub fn destroy(vol: &CtVolume) -> Result<()> {
    match vol.layout {
        Layout::Image | Layout::ImageInSubvolume => volume::remove(&vol.path, vol.subvolume()),
        Layout::Dir | Layout::Subvolume => volume::remove_dir(&vol.path),
    }
    .map_err(|e| Error::volume("remove", vol, e))
}

/// Whether the volume's data exists on the host.
pub fn exists(vol: &CtVolume) -> bool {
    vol.path.exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(dir: &Path) -> StorageConfig {
        StorageConfig::parse(
            &format!(
                "dir: local\n\tpath {0}/d\n\tcontent rootdir\n\nbtrfs: bt\n\tpath {0}/b\n\tcontent rootdir\n",
                dir.display()
            ),
            "storage.cfg",
        )
        .unwrap()
    }

    fn vol(storage: &StorageConfig, value: &str) -> CtVolume {
        resolve(storage, &MountPoint::parse("rootfs", value).unwrap())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn layouts_are_the_storage_layout_of_the_volume() {
        let t = tempfile::tempdir().unwrap();
        let s = storage(t.path());
        let cases = [
            (
                "local:100/vm-100-disk-0.raw,size=8M",
                "d/images/100/vm-100-disk-0.raw",
                Layout::Image,
            ),
            (
                "local:100/subvol-100-disk-1.subvol,size=0",
                "d/images/100/subvol-100-disk-1.subvol",
                Layout::Dir,
            ),
            (
                "bt:100/subvol-100-disk-2.subvol,size=8G",
                "b/images/100/subvol-100-disk-2.subvol",
                Layout::Subvolume,
            ),
            (
                "bt:100/vm-100-disk-3.raw,size=8M",
                "b/images/100/vm-100-disk-3/disk.raw",
                Layout::ImageInSubvolume,
            ),
        ];
        for (value, path, layout) in cases {
            let v = vol(&s, value);
            assert_eq!(
                (v.path.as_path(), v.layout),
                (t.path().join(path).as_path(), layout)
            );
        }
        let v = vol(&s, "bt:100/vm-100-disk-3.raw,size=8M");
        assert_eq!(
            v.subvolume(),
            Some(t.path().join("b/images/100/vm-100-disk-3").as_path())
        );
        let sv = vol(&s, "bt:100/subvol-100-disk-2.subvol");
        assert_eq!(sv.subvolume(), Some(sv.path.as_path()));
        assert_eq!(vol(&s, "local:100/vm-100-disk-0.raw").subvolume(), None);
    }

    #[test]
    fn directory_volumes_are_created_owned_and_destroyed_with_their_contents() {
        let t = tempfile::tempdir().unwrap();
        let s = storage(t.path());
        // Off btrfs a subvolume is a plain directory (the volume module's fallback).
        for value in [
            "local:100/subvol-100-disk-0.subvol,size=0",
            "bt:100/subvol-100-disk-1.subvol,size=0",
        ] {
            let v = vol(&s, value);
            create(&v, (0, 0)).unwrap();
            let md = std::fs::metadata(&v.path).unwrap();
            use std::os::unix::fs::PermissionsExt;
            assert!(
                md.is_dir() && md.permissions().mode() & 0o777 == 0o755,
                "{value}"
            );
            std::fs::create_dir_all(v.path.join("etc")).unwrap();
            std::fs::write(v.path.join("etc/hostname"), b"ct\n").unwrap();
            assert!(
                create(&v, (0, 0)).is_err(),
                "an existing volume is not replaced"
            );
            assert!(v.path.join("etc/hostname").exists());
            destroy(&v).unwrap();
            assert!(!exists(&v), "{value}");
            destroy(&v).unwrap();
        }
    }

    #[test]
    fn an_image_in_a_subvolume_is_an_ext4_image_and_goes_with_its_directory() {
        let t = tempfile::tempdir().unwrap();
        let s = storage(t.path());
        let v = vol(&s, "bt:100/vm-100-disk-0.raw,size=16M");
        create(&v, (0, 0)).unwrap();
        assert_eq!(std::fs::metadata(&v.path).unwrap().len(), 16 << 20);
        let out = tool::run_args(
            "blkid",
            ["-o", "value", "-s", "TYPE"]
                .iter()
                .map(std::ffi::OsStr::new)
                .chain([v.path.as_os_str()]),
        )
        .unwrap();
        assert_eq!(out.trim(), "ext4");
        destroy(&v).unwrap();
        assert!(!v.subvolume().unwrap().exists());
    }
}

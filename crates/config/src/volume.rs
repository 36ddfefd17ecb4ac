//! Volume ids (`local:100/vm-100-disk-0.qcow2`) and where they live on dir and btrfs storage.
//!
//! Layout (as Proxmox's Dir and BTRFS plugins):
//! - images: `<path>/images/<vmid>/<name>`; linked clones `<basevmid>/<basename>/<vmid>/<name>`
//!   live at `<path>/images/<vmid>/<name>`;
//! - on btrfs, raw images are subvolumes: volume `100/vm-100-disk-0.raw` is the file
//!   `<path>/images/100/vm-100-disk-0/disk.raw` in the subvolume `vm-100-disk-0`; container
//!   volumes `subvol-<vmid>-disk-<N>.subvol` are subvolumes themselves; other formats are plain
//!   files as on dir ([`ResolvedVolume::subvolume`]);
//! - `iso/<f>` → `<path>/template/iso/<f>`, `vztmpl/<f>` → `<path>/template/cache/<f>`,
//!   `backup/<f>` → `<path>/dump/<f>`, `snippets/<f>` → `<path>/snippets/<f>`,
//!   `import/<f>` → `<path>/import/<f>`.

use std::fmt;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::storage::{StorageConfig, StorageType};

/// What a drive's `file` refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeRef {
    /// `<storage>:<volume name>`.
    Volume(VolumeId),
    /// An absolute path (block device or file) outside any storage.
    Path(PathBuf),
    /// `none` (an empty CD-ROM drive).
    None,
    /// `cdrom` (the host's CD-ROM drive).
    HostCdrom,
}

impl VolumeRef {
    /// Parse a drive `file` value.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "none" => return Ok(VolumeRef::None),
            "cdrom" => return Ok(VolumeRef::HostCdrom),
            _ => {}
        }
        if s.starts_with('/') {
            return Ok(VolumeRef::Path(PathBuf::from(s)));
        }
        VolumeId::parse(s).map(VolumeRef::Volume)
    }
}

impl fmt::Display for VolumeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VolumeRef::Volume(v) => v.fmt(f),
            VolumeRef::Path(p) => write!(f, "{}", p.display()),
            VolumeRef::None => f.write_str("none"),
            VolumeRef::HostCdrom => f.write_str("cdrom"),
        }
    }
}

/// `<storage>:<volume name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VolumeId {
    /// The storage id.
    pub storage: String,
    /// The name inside the storage, e.g. `100/vm-100-disk-0.qcow2`.
    pub name: String,
}

impl VolumeId {
    /// Parse `<storage>:<name>`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |msg: &str| Error::Volume {
            volume: s.to_string(),
            msg: msg.to_string(),
        };
        let (storage, name) = s
            .split_once(':')
            .ok_or_else(|| bad("expected '<storage>:<volume>' or an absolute path"))?;
        if !crate::storage::valid_storage_id(storage) {
            return Err(bad("invalid storage id"));
        }
        if name.is_empty()
            || name.starts_with('/')
            || name.split('/').any(|c| c == ".." || c.is_empty())
        {
            return Err(bad("invalid volume name"));
        }
        Ok(VolumeId {
            storage: storage.to_string(),
            name: name.to_string(),
        })
    }

    /// For image volumes: the owning VMID (the last `<vmid>/` component).
    pub fn owner(&self) -> Option<u32> {
        let comps: Vec<&str> = self.name.split('/').collect();
        match comps.as_slice() {
            [vmid, _] | [_, _, vmid, _] => vmid.parse().ok(),
            _ => None,
        }
    }

    /// The file name (last path component).
    pub fn file_name(&self) -> &str {
        self.name.rsplit('/').next().unwrap_or(&self.name)
    }

    /// The format implied by the file extension (`raw`, `qcow2`, `vmdk`), or `subvol` for
    /// container subvolumes.
    pub fn format_from_name(&self) -> Option<&'static str> {
        format_from_name(self.file_name())
    }
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.storage, self.name)
    }
}

/// Format from a file name's extension.
pub fn format_from_name(name: &str) -> Option<&'static str> {
    if name.ends_with(".raw") {
        Some("raw")
    } else if name.ends_with(".qcow2") {
        Some("qcow2")
    } else if name.ends_with(".vmdk") {
        Some("vmdk")
    } else if name.starts_with("subvol-") || name.starts_with("basevol-") {
        Some("subvol")
    } else {
        None
    }
}

/// A volume resolved to a host path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedVolume {
    /// The file (or block device) QEMU opens.
    pub path: PathBuf,
    /// The image format, from the name (or `raw` for plain paths without a known extension).
    pub format: String,
    /// On btrfs, the volume's own subvolume: the directory `vm-<vmid>-disk-<N>` holding a raw
    /// image's `disk.raw`, or a container's `subvol-<vmid>-disk-<N>.subvol` itself. `None`
    /// on dir storage, for other formats and for paths outside a storage. Created and removed
    /// by `vmdump_blockdev::volume`.
    pub subvolume: Option<PathBuf>,
}

impl StorageConfig {
    /// Resolve a volume id to its host path on a dir or btrfs storage.
    pub fn resolve(&self, vol: &VolumeId) -> Result<ResolvedVolume> {
        let entry = self.storage(&vol.storage)?;
        let base = self.base_path(&vol.storage)?;
        let bad = |msg: &str| Error::Volume {
            volume: vol.to_string(),
            msg: msg.to_string(),
        };
        let comps: Vec<&str> = vol.name.split('/').collect();
        let mut subvolume = None;
        let path = match comps.as_slice() {
            ["iso", f] => base.join("template/iso").join(f),
            ["vztmpl", f] => base.join("template/cache").join(f),
            ["backup", f] => base.join("dump").join(f),
            ["snippets", f] => base.join("snippets").join(f),
            ["import", f] => base.join("import").join(f),
            [vmid, f] | [_, _, vmid, f] => {
                if vmid.parse::<u32>().is_err() {
                    return Err(bad("not an image volume of a known layout"));
                }
                let dir = base.join("images").join(vmid);
                let btrfs = *entry.kind() == StorageType::Btrfs;
                match f.strip_suffix(".raw") {
                    Some(stem) if btrfs => {
                        let sv = dir.join(stem);
                        subvolume = Some(sv.clone());
                        sv.join("disk.raw")
                    }
                    _ if btrfs && format_from_name(f) == Some("subvol") => {
                        subvolume = Some(dir.join(f));
                        dir.join(f)
                    }
                    _ => dir.join(f),
                }
            }
            _ => return Err(bad("not an image volume of a known layout")),
        };
        let format = vol.format_from_name().unwrap_or("raw").to_string();
        Ok(ResolvedVolume {
            path,
            format,
            subvolume,
        })
    }

    /// Resolve a drive's volume reference: storage volumes via [`Self::resolve`], absolute
    /// paths as they are (format from the extension, else `raw`). `None` for `none`/`cdrom`.
    pub fn resolve_ref(&self, vol: &VolumeRef) -> Result<Option<ResolvedVolume>> {
        match vol {
            VolumeRef::Volume(v) => self.resolve(v).map(Some),
            VolumeRef::Path(p) => Ok(Some(ResolvedVolume {
                format: p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(format_from_name)
                    .unwrap_or("raw")
                    .to_string(),
                path: p.clone(),
                subvolume: None,
            })),
            VolumeRef::None | VolumeRef::HostCdrom => Ok(None),
        }
    }

    /// The directory holding a guest's images on a storage.
    pub fn image_dir(&self, storage: &str, vmid: u32) -> Result<PathBuf> {
        Ok(self
            .base_path(storage)?
            .join("images")
            .join(vmid.to_string()))
    }

    /// Choose a new image volume `vm-<vmid>-disk-<N>.<format>` on `storage` with the smallest
    /// N that is neither on disk nor in `taken` (volume names or ids already used, e.g. by the
    /// config being restored). Nothing is created.
    pub fn allocate_image_name(
        &self,
        storage: &str,
        vmid: u32,
        format: &str,
        taken: &[&str],
    ) -> Result<VolumeId> {
        let entry = self.storage(storage)?;
        if entry.disabled() {
            return Err(Error::Storage {
                storage: storage.into(),
                msg: "is disabled".into(),
            });
        }
        if !entry.has_content("images") {
            return Err(Error::Storage {
                storage: storage.into(),
                msg: "does not allow content 'images'".into(),
            });
        }
        if !["raw", "qcow2", "vmdk"].contains(&format) {
            return Err(Error::Storage {
                storage: storage.into(),
                msg: format!("cannot hold images in format '{format}'"),
            });
        }
        let dir = self.image_dir(storage, vmid)?;
        let prefix = format!("vm-{vmid}-disk-");
        let mut used = std::collections::BTreeSet::new();
        let mut note = |name: &str| {
            let file = name.rsplit(['/', ':']).next().unwrap_or(name);
            if let Some(rest) = file.strip_prefix(&prefix) {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                if let Ok(n) = digits.parse::<u64>() {
                    used.insert(n);
                }
            }
        };
        match std::fs::read_dir(&dir) {
            Ok(rd) => {
                for e in rd {
                    let e = e.map_err(|source| Error::Read {
                        path: dir.clone(),
                        source,
                    })?;
                    note(&e.file_name().to_string_lossy());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(Error::Read { path: dir, source }),
        }
        for t in taken {
            note(t);
        }
        let n = (0u64..)
            .find(|n| !used.contains(n))
            .expect("a free index exists");
        Ok(VolumeId {
            storage: storage.into(),
            name: format!("{vmid}/vm-{vmid}-disk-{n}.{format}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg() -> StorageConfig {
        StorageConfig::parse(
            "dir: local\n\tpath /srv/vz\n\tcontent images,backup,iso\n\nbtrfs: fast\n\tpath /mnt/b\n\tcontent images\n\nlvmthin: lvm\n\tthinpool data\n\tvgname pve\n",
            "storage.cfg",
        )
        .unwrap()
    }

    #[test]
    fn dir_paths() {
        let c = cfg();
        let r = c
            .resolve(&VolumeId::parse("local:100/vm-100-disk-0.qcow2").unwrap())
            .unwrap();
        assert_eq!(r.path, Path::new("/srv/vz/images/100/vm-100-disk-0.qcow2"));
        assert_eq!(r.format, "qcow2");
        let r = c
            .resolve(&VolumeId::parse("local:iso/debian.iso").unwrap())
            .unwrap();
        assert_eq!(r.path, Path::new("/srv/vz/template/iso/debian.iso"));
        let r = c
            .resolve(
                &VolumeId::parse("local:100/base-100-disk-0.qcow2/101/vm-101-disk-0.qcow2")
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(r.path, Path::new("/srv/vz/images/101/vm-101-disk-0.qcow2"));
        let r = c
            .resolve(
                &VolumeId::parse("local:backup/vzdump-qemu-100-2025_01_01-00_00_00.vma.zst")
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(
            r.path,
            Path::new("/srv/vz/dump/vzdump-qemu-100-2025_01_01-00_00_00.vma.zst")
        );
    }

    #[test]
    fn btrfs_raw_is_a_subvolume() {
        let c = cfg();
        let r = c
            .resolve(&VolumeId::parse("fast:100/vm-100-disk-1.raw").unwrap())
            .unwrap();
        assert_eq!(
            r.path,
            Path::new("/mnt/b/images/100/vm-100-disk-1/disk.raw")
        );
        assert_eq!(
            r.subvolume.as_deref(),
            Some(Path::new("/mnt/b/images/100/vm-100-disk-1"))
        );
        let r = c
            .resolve(&VolumeId::parse("fast:100/vm-100-disk-2.qcow2").unwrap())
            .unwrap();
        assert_eq!(r.path, Path::new("/mnt/b/images/100/vm-100-disk-2.qcow2"));
        assert_eq!(r.subvolume, None);
        let r = c
            .resolve(&VolumeId::parse("fast:100/subvol-100-disk-3.subvol").unwrap())
            .unwrap();
        let sv = Path::new("/mnt/b/images/100/subvol-100-disk-3.subvol");
        assert_eq!((r.path.as_path(), r.subvolume.as_deref()), (sv, Some(sv)));
        // On dir storage, neither a raw image nor a container directory is a subvolume.
        for name in [
            "local:100/vm-100-disk-1.raw",
            "local:100/subvol-100-disk-3.subvol",
        ] {
            let r = c.resolve(&VolumeId::parse(name).unwrap()).unwrap();
            assert_eq!(r.subvolume, None, "{name}");
        }
    }

    #[test]
    fn bad_volumes() {
        let c = cfg();
        assert!(matches!(
            c.resolve(&VolumeId::parse("nope:100/x.raw").unwrap()),
            Err(Error::NoSuchStorage(_))
        ));
        assert!(c
            .resolve(&VolumeId::parse("lvm:vm-100-disk-0").unwrap())
            .is_err());
        assert!(c
            .resolve(&VolumeId::parse("local:abc/x.raw").unwrap())
            .is_err());
        assert!(VolumeId::parse("local:../etc/passwd").is_err());
        assert!(VolumeId::parse("local:").is_err());
        assert!(VolumeId::parse("novolume").is_err());
        assert_eq!(
            VolumeRef::parse("/dev/sdb").unwrap(),
            VolumeRef::Path("/dev/sdb".into())
        );
    }

    #[test]
    fn allocation_picks_the_smallest_free_index() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "dir: local\n\tpath {}\n\tcontent images\n",
            dir.path().display()
        );
        let c = StorageConfig::parse(&text, "storage.cfg").unwrap();
        let v = c.allocate_image_name("local", 100, "raw", &[]).unwrap();
        assert_eq!(v.to_string(), "local:100/vm-100-disk-0.raw");
        std::fs::create_dir_all(dir.path().join("images/100")).unwrap();
        std::fs::write(dir.path().join("images/100/vm-100-disk-0.raw"), b"").unwrap();
        std::fs::write(dir.path().join("images/100/vm-100-disk-2.qcow2"), b"").unwrap();
        let v = c.allocate_image_name("local", 100, "qcow2", &[]).unwrap();
        assert_eq!(v.name, "100/vm-100-disk-1.qcow2");
        let v = c
            .allocate_image_name("local", 100, "raw", &["local:100/vm-100-disk-1.raw"])
            .unwrap();
        assert_eq!(v.name, "100/vm-100-disk-3.raw");
        assert!(c.allocate_image_name("local", 100, "subvol", &[]).is_err());
        assert!(c.allocate_image_name("other", 100, "raw", &[]).is_err());
    }
}

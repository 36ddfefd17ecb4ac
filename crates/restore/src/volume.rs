//! New image volumes of a restore on dir and btrfs storage, and the removal of old ones.
//!
//! The files are made and removed by [`vmdump_blockdev::volume`] (the one home of volume
//! files): raw volumes are sparse files of the device's size (they read as zeros, so zero
//! blocks are never written); qcow2 and vmdk volumes come from `qemu-img create` (qcow2 with
//! the storage's `preallocation`, Proxmox's default `metadata`); a fresh image reads as zeros
//! too. On btrfs a raw volume `vm-<vmid>-disk-<N>.raw` is the file `disk.raw` inside the
//! subvolume `vm-<vmid>-disk-<N>` (the layout of `StorageConfig::resolve`).

use std::io::ErrorKind as IoKind;
use std::path::PathBuf;
use std::sync::Arc;

use vmdump_blockdev::volume;
use vmdump_config::{StorageConfig, VolumeId};
use vmdump_launch::{Session, VolumeRecord};

use crate::error::{Error, Result};

/// A volume created by this restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// The volume id (`local:101/vm-101-disk-0.raw`).
    pub volid: VolumeId,
    /// The image file.
    pub path: PathBuf,
    /// Image format.
    pub format: String,
    /// Btrfs: the volume's own subvolume that holds `disk.raw`.
    pub subvol_dir: Option<PathBuf>,
    /// A qcow2 image created with its metadata preallocated (`preallocation` other than
    /// `off`): writes to it do not allocate.
    pub preallocated: bool,
}

/// Create a new, zero-reading volume of `size` bytes rounded up to whole 512-byte sectors
/// (what QEMU creates for every format; see [`vmdump_vma::round_to_sectors`]) for `vmid` on
/// `storage`, picking the smallest free `vm-<vmid>-disk-<N>` not in `taken`. The volume is
/// recorded in `session` before it is created: if this process dies before the record is
/// dropped, the next run removes the volume.
pub fn allocate(
    storage: &StorageConfig,
    sid: &str,
    vmid: u32,
    format: &str,
    size: u64,
    taken: &[String],
    session: &Arc<Session>,
) -> Result<(Volume, VolumeRecord)> {
    let entry = storage.storage(sid)?;
    let prealloc = entry.preallocation().unwrap_or(DEFAULT_PREALLOCATION);
    let size = vmdump_vma::round_to_sectors(size);
    let mut taken: Vec<String> = taken.to_vec();
    // Another process may create the same name between the choice and the creation: retry.
    for _ in 0..16 {
        let refs: Vec<&str> = taken.iter().map(String::as_str).collect();
        let volid = storage.allocate_image_name(sid, vmid, format, &refs)?;
        let resolved = storage.resolve(&volid)?;
        let (path, subvol_dir) = (resolved.path, resolved.subvolume);
        let record = session.record_volume(&path, subvol_dir.as_deref())?;
        match volume::create(&path, subvol_dir.as_deref(), format, size, Some(prealloc)) {
            Ok(()) => {
                let volume = Volume {
                    volid,
                    path,
                    format: format.to_string(),
                    subvol_dir,
                    preallocated: format == "qcow2" && prealloc != "off",
                };
                return Ok((volume, record));
            }
            Err(e) if e.io_kind() == Some(IoKind::AlreadyExists) => {
                taken.push(volid.to_string());
            }
            Err(source) => {
                return Err(Error::VolumeFiles {
                    what: "create",
                    volume: volid.to_string(),
                    source: Box::new(source),
                })
            }
        }
    }
    Err(Error::Storage {
        storage: sid.to_string(),
        msg: format!("could not find a free volume name for VM {vmid}"),
    })
}

/// qcow2 `preallocation` when the storage sets none (Proxmox's default).
const DEFAULT_PREALLOCATION: &str = "metadata";

impl Volume {
    /// Delete the volume (file, and the btrfs subvolume); a missing one is fine.
    pub fn remove(&self) -> Result<()> {
        volume::remove(&self.path, self.subvol_dir.as_deref()).map_err(|source| {
            Error::VolumeFiles {
                what: "remove",
                volume: self.volid.to_string(),
                source: Box::new(source),
            }
        })
    }
}

/// Delete an existing storage volume by id (an old disk replaced by `--force`).
pub fn remove_volid(storage: &StorageConfig, volid: &VolumeId) -> Result<PathBuf> {
    let resolved = storage.resolve(volid)?;
    Volume {
        volid: volid.clone(),
        path: resolved.path.clone(),
        format: resolved.format,
        subvol_dir: resolved.subvolume,
        preallocated: false,
    }
    .remove()?;
    Ok(resolved.path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn storage(dir: &Path) -> StorageConfig {
        StorageConfig::parse(
            &format!(
                "dir: local\n\tpath {0}/d\n\tcontent images\n\nbtrfs: b\n\tpath {0}/b\n\tcontent images\n",
                dir.display()
            ),
            "storage.cfg",
        )
        .unwrap()
    }

    fn session(dir: &Path) -> Arc<Session> {
        Session::open(&dir.join("run")).unwrap()
    }

    #[test]
    fn raw_qcow2_and_btrfs_volumes() {
        let t = tempfile::tempdir().unwrap();
        let s = storage(t.path());
        let run = session(t.path());
        let (a, ra) = allocate(&s, "local", 101, "raw", 1 << 20, &[], &run).unwrap();
        let record = std::fs::read_to_string(run.path().join("volume-0")).unwrap();
        assert!(record.contains("vm-101-disk-0.raw"), "{record}");
        ra.commit();
        assert!(!run.path().join("volume-0").exists());
        assert_eq!(a.volid.to_string(), "local:101/vm-101-disk-0.raw");
        let md = std::fs::metadata(&a.path).unwrap();
        assert_eq!(md.len(), 1 << 20);
        let (b, _rb) = allocate(&s, "local", 101, "qcow2", 1 << 20, &[], &run).unwrap();
        assert_eq!(b.volid.to_string(), "local:101/vm-101-disk-1.qcow2");
        assert!(!a.preallocated, "raw");
        assert!(
            b.preallocated,
            "qcow2 with the default preallocation=metadata"
        );
        assert!(
            std::fs::metadata(&b.path).unwrap().len() >= 1 << 20,
            "clusters mapped"
        );
        let (c, _rc) = allocate(
            &s,
            "local",
            101,
            "raw",
            4096,
            &["local:101/vm-101-disk-2.raw".into()],
            &run,
        )
        .unwrap();
        assert_eq!(c.volid.name, "101/vm-101-disk-3.raw");
        let (d, _rd) = allocate(&s, "b", 101, "raw", 4096, &[], &run).unwrap();
        assert!(
            d.path.ends_with("images/101/vm-101-disk-0/disk.raw"),
            "{d:?}"
        );
        for v in [&a, &b, &c, &d] {
            assert!(v.path.exists());
            v.remove().unwrap();
            assert!(!v.path.exists());
        }
        assert!(!t.path().join("b/images/101/vm-101-disk-0").exists());
    }

    #[test]
    fn qcow2_without_preallocation_is_not_preallocated() {
        let t = tempfile::tempdir().unwrap();
        let s = StorageConfig::parse(
            &format!(
                "dir: local\n\tpath {}\n\tcontent images\n\tpreallocation off\n",
                t.path().display()
            ),
            "storage.cfg",
        )
        .unwrap();
        let (v, _r) =
            allocate(&s, "local", 101, "qcow2", 1 << 20, &[], &session(t.path())).unwrap();
        assert!(!v.preallocated);
        // No data clusters mapped: the file holds only the header and tables (with
        // preallocated metadata it spans the whole disk).
        assert!(std::fs::metadata(&v.path).unwrap().len() < 1 << 20);
        v.remove().unwrap();
    }
}

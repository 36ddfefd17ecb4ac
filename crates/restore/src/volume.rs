//! Creating and removing image volumes on dir and btrfs storage.
//!
//! Raw volumes are sparse files of the device's size (they read as zeros, so zero blocks are
//! never written). qcow2 and vmdk volumes are created with `qemu-img create` (qcow2 with
//! the storage's `preallocation`, Proxmox's default `metadata`); a fresh image reads as zeros
//! too. On btrfs a raw volume `vm-<vmid>-disk-<N>.raw` is the file `disk.raw` inside the
//! directory (a subvolume on a real btrfs) `vm-<vmid>-disk-<N>`.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind as IoKind;
use std::path::{Path, PathBuf};
use std::process::Command;

use vmdump_config::{StorageConfig, StorageType, VolumeId};

use std::sync::Arc;

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
    /// Btrfs: the per-volume directory that holds `disk.raw`.
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
    let btrfs = *entry.kind() == StorageType::Btrfs;
    let mut taken: Vec<String> = taken.to_vec();
    // Another process may create the same name between the choice and the creation: retry.
    for _ in 0..16 {
        let refs: Vec<&str> = taken.iter().map(String::as_str).collect();
        let volid = storage.allocate_image_name(sid, vmid, format, &refs)?;
        let resolved = storage.resolve(&volid)?;
        let path = resolved.path;
        let dir = path
            .parent()
            .expect("image paths have a parent directory")
            .to_path_buf();
        let subvol_dir = (btrfs && format == "raw").then(|| dir.clone());
        let image_dir = if subvol_dir.is_some() {
            dir.parent()
                .expect("subvolume directories have a parent")
                .to_path_buf()
        } else {
            dir.clone()
        };
        std::fs::create_dir_all(&image_dir).map_err(|source| Error::Volume {
            what: "create image directory",
            path: image_dir.clone(),
            source,
        })?;
        let record = session.record_volume(&path, subvol_dir.as_deref())?;
        if let Some(sv) = &subvol_dir {
            match create_subvolume(sv) {
                Ok(()) => {}
                Err(e) if e.kind() == IoKind::AlreadyExists => {
                    taken.push(volid.to_string());
                    continue;
                }
                Err(source) => {
                    return Err(Error::Volume {
                        what: "create subvolume",
                        path: sv.clone(),
                        source,
                    })
                }
            }
        }
        let prealloc = entry.preallocation().unwrap_or(DEFAULT_PREALLOCATION);
        let size = vmdump_vma::round_to_sectors(size);
        let created = if format == "raw" {
            create_raw(&path, size)
        } else {
            create_image(&path, format, size, prealloc)
        };
        match created {
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
            Err(Error::Volume { source, .. }) if source.kind() == IoKind::AlreadyExists => {
                taken.push(volid.to_string());
            }
            Err(e) => {
                if let Some(sv) = &subvol_dir {
                    let _ = remove_subvolume(sv);
                }
                return Err(e);
            }
        }
    }
    Err(Error::Storage {
        storage: sid.to_string(),
        msg: format!("could not find a free volume name for VM {vmid}"),
    })
}

fn create_raw(path: &Path, size: u64) -> Result<()> {
    let verr = |source| Error::Volume {
        what: "create volume",
        path: path.to_path_buf(),
        source,
    };
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(verr)?;
    if let Err(e) = f.set_len(size) {
        let _ = std::fs::remove_file(path);
        return Err(verr(e));
    }
    Ok(())
}

/// qcow2 `preallocation` when the storage sets none (Proxmox's default).
const DEFAULT_PREALLOCATION: &str = "metadata";

fn create_image(path: &Path, format: &str, size: u64, prealloc: &str) -> Result<()> {
    // Reserve the name first so a concurrent allocation cannot take it.
    File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| Error::Volume {
            what: "create volume",
            path: path.to_path_buf(),
            source,
        })?;
    let prealloc = (format == "qcow2").then_some(prealloc);
    let result =
        vmdump_blockdev::qemu_img::create(path, format, size, prealloc).map_err(|e| Error::Tool {
            tool: "qemu-img create".into(),
            detail: e.to_string(),
        });
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

fn is_btrfs(dir: &Path) -> bool {
    Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "btrfs")
        .unwrap_or(false)
}

fn create_subvolume(dir: &Path) -> std::io::Result<()> {
    if dir.exists() {
        return Err(IoKind::AlreadyExists.into());
    }
    let parent = dir.parent().unwrap_or(Path::new("/"));
    if is_btrfs(parent) {
        let st = Command::new("btrfs")
            .args(["subvolume", "create"])
            .arg(dir)
            .output()?;
        if !st.status.success() {
            return Err(std::io::Error::other(format!(
                "btrfs subvolume create: {}",
                String::from_utf8_lossy(&st.stderr).trim()
            )));
        }
        Ok(())
    } else {
        // Not a btrfs file system (tests): a plain directory has the same layout.
        std::fs::create_dir(dir)
    }
}

fn remove_subvolume(dir: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(dir.join("disk.raw"));
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == IoKind::NotFound => Ok(()),
        Err(_) => {
            let st = Command::new("btrfs")
                .args(["subvolume", "delete"])
                .arg(dir)
                .output()?;
            if st.status.success() {
                Ok(())
            } else {
                Err(std::io::Error::other(format!(
                    "btrfs subvolume delete: {}",
                    String::from_utf8_lossy(&st.stderr).trim()
                )))
            }
        }
    }
}

impl Volume {
    /// Delete the volume (file, and the btrfs volume directory).
    pub fn remove(&self) -> Result<()> {
        let verr = |source| Error::Volume {
            what: "remove volume",
            path: self.path.clone(),
            source,
        };
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == IoKind::NotFound => {}
            Err(e) => return Err(verr(e)),
        }
        if let Some(sv) = &self.subvol_dir {
            remove_subvolume(sv).map_err(verr)?;
        }
        Ok(())
    }
}

/// Delete an existing storage volume by id (an old disk replaced by `--force`).
pub fn remove_volid(storage: &StorageConfig, volid: &VolumeId) -> Result<PathBuf> {
    let entry = storage.storage(&volid.storage)?;
    let path = storage.resolve(volid)?.path;
    let subvol_dir = (*entry.kind() == StorageType::Btrfs && volid.name.ends_with(".raw"))
        .then(|| path.parent().map(Path::to_path_buf))
        .flatten();
    Volume {
        volid: volid.clone(),
        path: path.clone(),
        format: String::new(),
        subvol_dir,
        preallocated: false,
    }
    .remove()?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

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

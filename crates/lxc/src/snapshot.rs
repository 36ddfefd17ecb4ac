//! Storage snapshots of container volumes for snapshot-mode backups.
//!
//! [`backend`] picks the implementation for a volume: btrfs subvolumes here (a read-only
//! snapshot `<subvol>@vzdump`, as Proxmox's btrfs plugin names it). ZFS (`zfs snapshot
//! pool/subvol-N-disk-M@vzdump`), LVM-thin (`lvcreate -s -n snap_vm-N-disk-M_vzdump`) and Ceph
//! (`rbd snap create`) fit the same trait; they cannot run on this project's hosts yet. A
//! volume without a backend has no snapshots: the backup falls back to suspend mode.

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::tool;
use crate::volume::{CtVolume, Layout};

/// The snapshot name vzdump uses.
pub const SNAPSHOT_NAME: &str = "vzdump";

/// A storage that can snapshot a container volume.
pub trait SnapshotBackend: std::fmt::Debug + Send + Sync {
    /// The backend's name (`btrfs`).
    fn name(&self) -> &'static str;
    /// Whether a snapshot `name` of `vol` exists.
    fn exists(&self, vol: &CtVolume, name: &str) -> bool;
    /// Takes a read-only snapshot `name` of `vol`.
    fn create(&self, vol: &CtVolume, name: &str) -> Result<()>;
    /// Deletes the snapshot `name` of `vol`.
    fn remove(&self, vol: &CtVolume, name: &str) -> Result<()>;
    /// Where the snapshot's files are and how to read them (a directory, or an image to
    /// mount read-only).
    fn source(&self, vol: &CtVolume, name: &str) -> (PathBuf, Layout);
}

/// btrfs: `btrfs subvolume snapshot -r <subvol> <subvol>@<name>`.
#[derive(Debug)]
pub struct Btrfs;

fn snap_dir(sv: &Path, name: &str) -> PathBuf {
    let mut s = sv.as_os_str().to_os_string();
    s.push(format!("@{name}"));
    PathBuf::from(s)
}

impl SnapshotBackend for Btrfs {
    fn name(&self) -> &'static str {
        "btrfs"
    }

    fn exists(&self, vol: &CtVolume, name: &str) -> bool {
        vol.subvolume()
            .is_some_and(|sv| snap_dir(sv, name).exists())
    }

    fn create(&self, vol: &CtVolume, name: &str) -> Result<()> {
        let sv = vol.subvolume().expect("btrfs volumes are subvolumes");
        tool::run_args(
            "btrfs",
            [
                "-q".as_ref(),
                "subvolume".as_ref(),
                "snapshot".as_ref(),
                "-r".as_ref(),
                "--".as_ref(),
                sv.as_os_str(),
                snap_dir(sv, name).as_os_str(),
            ],
        )
        .map(|_| ())
    }

    fn remove(&self, vol: &CtVolume, name: &str) -> Result<()> {
        let sv = vol.subvolume().expect("btrfs volumes are subvolumes");
        tool::run_args(
            "btrfs",
            [
                "-q".as_ref(),
                "subvolume".as_ref(),
                "delete".as_ref(),
                "--".as_ref(),
                snap_dir(sv, name).as_os_str(),
            ],
        )
        .map(|_| ())
    }

    fn source(&self, vol: &CtVolume, name: &str) -> (PathBuf, Layout) {
        let sv = vol.subvolume().expect("btrfs volumes are subvolumes");
        let dir = snap_dir(sv, name);
        match vol.layout {
            Layout::ImageInSubvolume => (dir.join("disk.raw"), Layout::Image),
            _ => (dir, Layout::Dir),
        }
    }
}

/// The snapshot backend of a volume, `None` if its storage has no snapshots.
pub fn backend(vol: &CtVolume) -> Option<&'static dyn SnapshotBackend> {
    match vol.layout {
        Layout::Subvolume | Layout::ImageInSubvolume => Some(&Btrfs),
        Layout::Image | Layout::Dir => None,
    }
}

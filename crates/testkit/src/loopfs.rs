//! File systems on loop files, mounted for a test and unmounted (lazily, with the loop
//! device detached) when dropped: btrfs for subvolume storages. Needs root, as CI runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;

use crate::process::run;

/// A file system on `<image>`, mounted at [`path`](Self::path) until dropped.
#[derive(Debug)]
pub struct LoopFs {
    mnt: PathBuf,
}

impl LoopFs {
    /// A fresh btrfs of `mib` MiB in the file `image` (created), mounted at `mnt` (created).
    pub fn btrfs(image: &Path, mnt: &Path, mib: u64) -> Result<Self> {
        std::fs::create_dir_all(mnt)?;
        run(Command::new("truncate")
            .args(["-s", &format!("{mib}M")])
            .arg(image))?;
        run(Command::new("mkfs.btrfs").arg("-q").arg(image))?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(image)
            .arg(mnt))?;
        Ok(LoopFs {
            mnt: mnt.to_path_buf(),
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// The btrfs subvolumes on it (paths relative to the top level).
    pub fn subvolumes(&self) -> Result<Vec<String>> {
        let out = run(Command::new("btrfs")
            .args(["subvolume", "list"])
            .arg(&self.mnt))?;
        Ok(out
            .lines()
            .filter_map(|l| l.split(" path ").nth(1).map(str::to_string))
            .collect())
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .args(["-l", "-d"])
            .arg(&self.mnt)
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_btrfs_is_mounted_until_dropped() {
        let t = tempfile::tempdir().unwrap();
        let mnt = t.path().join("mnt");
        let fs = LoopFs::btrfs(&t.path().join("b.img"), &mnt, 128).unwrap();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let line = mounts
            .lines()
            .find(|l| l.split(' ').nth(1) == Some(mnt.to_str().unwrap()))
            .unwrap_or_else(|| panic!("{} not mounted", mnt.display()));
        assert!(line.contains(" btrfs "), "{line}");
        run(Command::new("btrfs")
            .args(["subvolume", "create"])
            .arg(mnt.join("sv")))
        .unwrap();
        assert_eq!(fs.subvolumes().unwrap(), vec!["sv".to_string()]);
        drop(fs);
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(!mounts.contains(mnt.to_str().unwrap()), "{mounts}");
    }
}

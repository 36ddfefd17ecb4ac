//! Small file systems mounted for a test and unmounted (lazily, a loop device detached) when
//! dropped, even when the test panics: a btrfs on a loop file for subvolume storages, a
//! tmpfs of a few MiB for a disk that fills up. Needs root, as CI runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;

use crate::process::run;

/// A file system mounted at [`path`](Self::path) until dropped.
#[derive(Debug)]
pub struct TestMount {
    mnt: PathBuf,
}

impl TestMount {
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
        Ok(TestMount {
            mnt: mnt.to_path_buf(),
        })
    }

    /// A tmpfs of `mib` MiB mounted at `mnt` (created).
    pub fn tmpfs(mnt: &Path, mib: u64) -> Result<Self> {
        std::fs::create_dir_all(mnt)?;
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(mnt))?;
        Ok(TestMount {
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

impl Drop for TestMount {
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
        let fs = TestMount::btrfs(&t.path().join("b.img"), &mnt, 128).unwrap();
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

    #[test]
    fn a_tmpfs_fills_at_its_size() {
        let t = tempfile::tempdir().unwrap();
        let mnt = t.path().join("small");
        let fs = TestMount::tmpfs(&mnt, 1).unwrap();
        let e = std::fs::write(mnt.join("f"), vec![0u8; 2 << 20]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(28), "{e}");
        drop(fs);
        assert!(std::fs::write(mnt.join("f"), vec![0u8; 2 << 20]).is_ok());
    }
}

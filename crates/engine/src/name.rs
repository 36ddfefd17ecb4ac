//! File names of a backup: `vzdump-qemu-<vmid>-YYYY_MM_DD-HH_MM_SS.vma[.zst|.lzo|.gz]` in
//! local time, with `.log`, `.notes`, `.protected` and the `.dat` temporary beside it.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Local};

use crate::options::Compression;

/// Extension of an archive being written.
const TEMPORARY_EXT: &str = ".dat";

/// Start of every file name of a backup of `vmid`.
fn prefix(vmid: u32) -> String {
    format!("vzdump-qemu-{vmid}-")
}

/// The names of one guest's backup in one directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveName {
    dir: PathBuf,
    base: String,
    compress: Compression,
}

impl ArchiveName {
    /// Names for a backup of `vmid` started at `start` (formatted in local time).
    pub fn new(dir: &Path, vmid: u32, start: DateTime<Local>, compress: Compression) -> Self {
        Self {
            dir: dir.to_path_buf(),
            base: format!("{}{}", prefix(vmid), start.format("%Y_%m_%d-%H_%M_%S")),
            compress,
        }
    }

    /// `vzdump-qemu-<vmid>-<time>`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The archive's file name, e.g. `vzdump-qemu-100-2025_01_05-02_00_01.vma.zst`.
    pub fn file_name(&self) -> String {
        format!("{}.vma{}", self.base, self.compress.extension())
    }

    /// The final archive path.
    pub fn archive(&self) -> PathBuf {
        self.dir.join(self.file_name())
    }

    /// Where the archive is written until it is complete: the final name with its last
    /// extension replaced by `.dat` (`x.vma.zst` → `x.vma.dat`, `x.vma` → `x.dat`).
    pub fn temporary(&self) -> PathBuf {
        let name = match self.compress {
            Compression::None => format!("{}{TEMPORARY_EXT}", self.base),
            _ => format!("{}.vma{TEMPORARY_EXT}", self.base),
        };
        self.dir.join(name)
    }

    /// True if `file_name` is a [`temporary`](Self::temporary) of a backup of `vmid`, of
    /// any time and compression.
    pub fn is_temporary_of(file_name: &str, vmid: u32) -> bool {
        file_name.starts_with(&prefix(vmid)) && file_name.ends_with(TEMPORARY_EXT)
    }

    /// The log copied next to the archive.
    pub fn log(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.base))
    }

    /// `<archive>.notes`.
    pub fn notes(&self) -> PathBuf {
        self.dir.join(format!("{}.notes", self.file_name()))
    }

    /// `<archive>.protected`.
    pub fn protected(&self) -> PathBuf {
        self.dir.join(format!("{}.protected", self.file_name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn names_follow_vzdump() {
        let t = Local
            .with_ymd_and_hms(2025, 1, 5, 2, 0, 1)
            .single()
            .expect("valid local time");
        let n = ArchiveName::new(Path::new("/d"), 100, t, Compression::Zstd);
        assert_eq!(n.file_name(), "vzdump-qemu-100-2025_01_05-02_00_01.vma.zst");
        assert_eq!(
            n.temporary(),
            Path::new("/d/vzdump-qemu-100-2025_01_05-02_00_01.vma.dat")
        );
        assert_eq!(
            n.log(),
            Path::new("/d/vzdump-qemu-100-2025_01_05-02_00_01.log")
        );
        assert_eq!(
            n.notes(),
            Path::new("/d/vzdump-qemu-100-2025_01_05-02_00_01.vma.zst.notes")
        );
        assert_eq!(
            n.protected(),
            Path::new("/d/vzdump-qemu-100-2025_01_05-02_00_01.vma.zst.protected")
        );
        let plain = ArchiveName::new(Path::new("/d"), 100, t, Compression::None);
        assert_eq!(
            plain.temporary(),
            Path::new("/d/vzdump-qemu-100-2025_01_05-02_00_01.dat")
        );
        let lzo = ArchiveName::new(Path::new("/d"), 100, t, Compression::Lzo);
        assert!(lzo.file_name().ends_with(".vma.lzo"));
        let gz = ArchiveName::new(Path::new("/d"), 100, t, Compression::Gzip);
        assert!(gz.file_name().ends_with(".vma.gz"));
    }
}

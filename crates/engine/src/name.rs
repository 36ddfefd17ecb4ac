//! File names of a backup: `vzdump-qemu-<vmid>-YYYY_MM_DD-HH_MM_SS.vma[.zst|.lzo|.gz]` in
//! local time, with `.log`, `.notes`, `.protected` and the `.dat` temporary beside it.
//!
//! Names have one-second resolution, so two backups of a guest can meet on one name (two
//! jobs with different run directories, a clock step). [`ArchiveName::reserve`] claims a
//! name by creating its `.log` exclusively, moving on to the next free second when a name
//! is in use; the final rename never replaces a file ([`rename_new`]).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Local};
use vmdump_config::Codec;
use vmdump_store::{layout, GuestType};

/// Extension of an archive being written.
const TEMPORARY_EXT: &str = ".dat";

/// Starts of every file name of a backup of `vmid`, VM or container (the naming rule lives in
/// the store; VMIDs are unique across both).
fn prefixes(vmid: u32) -> [String; 2] {
    [
        layout::prefix(GuestType::Qemu, vmid),
        layout::prefix(GuestType::Lxc, vmid),
    ]
}

/// The archive extension of a guest type and codec: `.vma[.zst]`, `.tar[.zst]`.
fn extension(kind: GuestType, codec: Codec) -> String {
    let vma = codec.vma_extension();
    match kind {
        GuestType::Qemu => vma.to_string(),
        _ => vma.replacen(".vma", ".tar", 1),
    }
}

/// The inner extension replaced by `.dat` for a compressed temporary (`.vma`, `.tar`).
fn inner(kind: GuestType) -> &'static str {
    match kind {
        GuestType::Qemu => ".vma",
        _ => ".tar",
    }
}

/// The names of one guest's backup in one directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveName {
    dir: PathBuf,
    base: String,
    compress: Codec,
    kind: GuestType,
}

impl ArchiveName {
    /// Names for a backup of the guest `vmid` of `kind` started at `start` (formatted in local
    /// time): `vzdump-qemu-...vma.zst` for VMs, `vzdump-lxc-...tar.zst` for containers.
    pub fn new(
        kind: GuestType,
        dir: &Path,
        vmid: u32,
        start: DateTime<Local>,
        compress: Codec,
    ) -> Self {
        Self {
            dir: dir.to_path_buf(),
            base: layout::base_name(kind, vmid, start),
            compress,
            kind,
        }
    }

    /// The directory the archive goes to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `vzdump-qemu-<vmid>-<time>`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The archive's file name, e.g. `vzdump-qemu-100-2025_01_05-02_00_01.vma.zst`.
    pub fn file_name(&self) -> String {
        format!("{}{}", self.base, extension(self.kind, self.compress))
    }

    /// The final archive path.
    pub fn archive(&self) -> PathBuf {
        self.dir.join(self.file_name())
    }

    /// Where the archive is written until it is complete: the final name with its last
    /// extension replaced by `.dat` (`x.vma.zst` → `x.vma.dat`, `x.vma` → `x.dat`).
    pub fn temporary(&self) -> PathBuf {
        let name = match self.compress {
            Codec::None => format!("{}{TEMPORARY_EXT}", self.base),
            _ => format!("{}{}{TEMPORARY_EXT}", self.base, inner(self.kind)),
        };
        self.dir.join(name)
    }

    /// True if `file_name` is a [`temporary`](Self::temporary) of a backup of `vmid`, of
    /// any time and compression.
    pub fn is_temporary_of(file_name: &str, vmid: u32) -> bool {
        prefixes(vmid)
            .iter()
            .any(|p| file_name.starts_with(p.as_str()))
            && file_name.ends_with(TEMPORARY_EXT)
    }

    /// True if `file_name` is the task directory (`<base>.tmp`, see `tmpdir`) of a backup of
    /// `vmid`, of any time.
    pub fn is_task_dir_of(file_name: &str, vmid: u32) -> bool {
        prefixes(vmid)
            .iter()
            .any(|p| file_name.starts_with(p.as_str()))
            && file_name.ends_with(".tmp")
    }

    /// The log belonging to a temporary's file name (`x.vma.dat` and `x.dat` → `x.log`).
    pub fn log_of_temporary(file_name: &str) -> Option<String> {
        let stem = file_name.strip_suffix(TEMPORARY_EXT)?;
        let base = stem
            .strip_suffix(".vma")
            .or_else(|| stem.strip_suffix(".tar"))
            .unwrap_or(stem);
        Some(format!("{base}.log"))
    }

    /// Claims the first name at or after `start` (one-second steps, at most `tries`) whose
    /// archive (any compression), temporary and log do not exist, by creating its log
    /// exclusively. Returns the names and the open, empty log.
    pub fn reserve(
        kind: GuestType,
        dir: &Path,
        vmid: u32,
        start: DateTime<Local>,
        compress: Codec,
        tries: u32,
    ) -> io::Result<(Self, File)> {
        for step in 0..tries.max(1) {
            let at = start + chrono::Duration::seconds(i64::from(step));
            let name = ArchiveName::new(kind, dir, vmid, at, compress);
            if name.in_use() {
                continue;
            }
            match File::options()
                .write(true)
                .create_new(true)
                .open(name.log())
            {
                Ok(f) => return Ok((name, f)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("no free backup name in {tries} seconds after {start}"),
        ))
    }

    /// Whether a file of a backup with this base name exists (any compression).
    fn in_use(&self) -> bool {
        [Codec::None, Codec::Zstd, Codec::Lzo, Codec::Gzip]
            .iter()
            .any(|&c| {
                let other = ArchiveName {
                    compress: c,
                    ..self.clone()
                };
                other.archive().exists() || other.temporary().exists()
            })
            || self.log().exists()
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

/// Renames `from` to `to` unless `to` exists (atomically: `renameat2(RENAME_NOREPLACE)`).
pub fn rename_new(from: &Path, to: &Path) -> io::Result<()> {
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        from,
        rustix::fs::CWD,
        to,
        rustix::fs::RenameFlags::NOREPLACE,
    )
    .map_err(io::Error::from)
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
        let n = ArchiveName::new(GuestType::Qemu, Path::new("/d"), 100, t, Codec::Zstd);
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
        let plain = ArchiveName::new(GuestType::Qemu, Path::new("/d"), 100, t, Codec::None);
        assert_eq!(
            plain.temporary(),
            Path::new("/d/vzdump-qemu-100-2025_01_05-02_00_01.dat")
        );
        let lzo = ArchiveName::new(GuestType::Qemu, Path::new("/d"), 100, t, Codec::Lzo);
        assert!(lzo.file_name().ends_with(".vma.lzo"));
        let gz = ArchiveName::new(GuestType::Qemu, Path::new("/d"), 100, t, Codec::Gzip);
        assert!(gz.file_name().ends_with(".vma.gz"));
        let ct = ArchiveName::new(GuestType::Lxc, Path::new("/d"), 100, t, Codec::Zstd);
        assert_eq!(ct.file_name(), "vzdump-lxc-100-2025_01_05-02_00_01.tar.zst");
        assert_eq!(
            ct.temporary(),
            Path::new("/d/vzdump-lxc-100-2025_01_05-02_00_01.tar.dat")
        );
        assert!(ArchiveName::is_temporary_of(
            "vzdump-lxc-100-2025_01_05-02_00_01.tar.dat",
            100
        ));
        assert_eq!(
            ArchiveName::log_of_temporary("vzdump-lxc-100-2025_01_05-02_00_01.tar.dat").as_deref(),
            Some("vzdump-lxc-100-2025_01_05-02_00_01.log")
        );
        let plain_ct = ArchiveName::new(GuestType::Lxc, Path::new("/d"), 100, t, Codec::None);
        assert_eq!(
            plain_ct.file_name(),
            "vzdump-lxc-100-2025_01_05-02_00_01.tar"
        );
    }

    #[test]
    fn reserve_skips_names_in_use_and_rename_never_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = Local
            .with_ymd_and_hms(2025, 1, 5, 2, 0, 1)
            .single()
            .expect("valid local time");
        // Second 01 has an archive (other compression), 02 a log, 03 a temporary.
        std::fs::write(
            dir.path()
                .join("vzdump-qemu-100-2025_01_05-02_00_01.vma.gz"),
            b"a",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("vzdump-qemu-100-2025_01_05-02_00_02.log"),
            b"b",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("vzdump-qemu-100-2025_01_05-02_00_03.dat"),
            b"c",
        )
        .expect("write");
        let (n, _log) = ArchiveName::reserve(GuestType::Qemu, dir.path(), 100, t, Codec::Zstd, 10)
            .expect("reserve");
        assert_eq!(n.base(), "vzdump-qemu-100-2025_01_05-02_00_04");
        assert!(n.log().exists(), "the log claims the name");
        let (n2, _) = ArchiveName::reserve(GuestType::Qemu, dir.path(), 100, t, Codec::Zstd, 10)
            .expect("again");
        assert_eq!(n2.base(), "vzdump-qemu-100-2025_01_05-02_00_05");
        assert!(ArchiveName::reserve(GuestType::Qemu, dir.path(), 100, t, Codec::Zstd, 3).is_err());

        let a = dir.path().join("a");
        let b = dir
            .path()
            .join("vzdump-qemu-100-2025_01_05-02_00_01.vma.gz");
        std::fs::write(&a, b"new").expect("write");
        let e = rename_new(&a, &b).expect_err("must not replace");
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&b).expect("read"), b"a");
        rename_new(&a, &dir.path().join("c")).expect("free name");
    }
}

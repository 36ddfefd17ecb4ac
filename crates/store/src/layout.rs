//! Backup file names as Proxmox VE writes and reads them (pve-storage `archive_info`):
//! `vzdump-<type>-<vmid>-<YYYY_MM_DD-HH_MM_SS>.vma[.zst|.lzo|.gz]` (VMs) or `.tar[...]`
//! (containers), the time being the backup start in local time, with `<base>.log`,
//! `<archive>.notes`, `<archive>.protected` and, while it is written, the `.dat` temporary.

use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Local, NaiveDateTime};

/// The time format inside names (local time of the backup start).
pub const TIME_FORMAT: &str = "%Y_%m_%d-%H_%M_%S";

/// The kind of guest a backup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestType {
    /// A QEMU VM (`.vma`).
    Qemu,
    /// A container (`.tar`).
    Lxc,
    /// Legacy OpenVZ container (read only).
    Openvz,
}

impl GuestType {
    /// The name used in file names and options.
    pub fn as_str(self) -> &'static str {
        match self {
            GuestType::Qemu => "qemu",
            GuestType::Lxc => "lxc",
            GuestType::Openvz => "openvz",
        }
    }

    /// Parses `qemu`, `lxc` or `openvz`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "qemu" => Some(GuestType::Qemu),
            "lxc" => Some(GuestType::Lxc),
            "openvz" => Some(GuestType::Openvz),
            _ => None,
        }
    }
}

impl fmt::Display for GuestType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Start of every file name of a backup of this guest: `vzdump-<type>-<vmid>-`.
pub fn prefix(kind: GuestType, vmid: u32) -> String {
    format!("vzdump-{}-{vmid}-", kind.as_str())
}

/// `vzdump-<type>-<vmid>-<YYYY_MM_DD-HH_MM_SS>`: the base name of a backup started at
/// `start` (the engine's `ArchiveName` adds the extensions).
pub fn base_name(kind: GuestType, vmid: u32, start: DateTime<Local>) -> String {
    format!("{}{}", prefix(kind, vmid), start.format(TIME_FORMAT))
}

/// What an archive's file name says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveInfo {
    /// Guest type.
    pub kind: GuestType,
    /// Guest id.
    pub vmid: u32,
    /// Backup start in local time; `None` for a non-standard (renamed) name, which pruning
    /// never touches.
    pub time: Option<NaiveDateTime>,
    /// `vma`, `tar` or `tgz`.
    pub format: &'static str,
    /// `zst`, `lzo`, `gz`, `bz2`, or `None`.
    pub compression: Option<&'static str>,
    /// `vzdump-<type>-<vmid>-<rest>` without the archive extensions (the `.log`'s stem).
    pub base: String,
}

/// Parses an archive's file name; `None` if it is not one (logs, notes, temporaries and
/// foreign files are not archives).
pub fn parse_archive_name(name: &str) -> Option<ArchiveInfo> {
    let rest = name.strip_prefix("vzdump-")?;
    let (kind, rest) = rest.split_once('-')?;
    let kind = GuestType::parse(kind)?;
    let (vmid, _) = rest.split_once('-')?;
    if vmid.is_empty() || !vmid.bytes().all(|b| b.is_ascii_digit()) || vmid.starts_with('0') {
        return None;
    }
    let vmid: u32 = vmid.parse().ok()?;
    let (stem, compression) = match name.rsplit_once('.') {
        Some((s, "zst")) => (s, Some("zst")),
        Some((s, "lzo")) => (s, Some("lzo")),
        Some((s, "gz")) => (s, Some("gz")),
        Some((s, "bz2")) => (s, Some("bz2")),
        _ => (name, None),
    };
    let (base, format) = match stem.rsplit_once('.')? {
        (b, "vma") => (b, "vma"),
        (b, "tar") => (b, "tar"),
        (b, "tgz") if compression.is_none() => (b, "tgz"),
        _ => return None,
    };
    let time_text = &base[prefix(kind, vmid).len().min(base.len())..];
    let standard = (100..=999_999_999).contains(&vmid) && time_text.len() == 19;
    let time = standard
        .then(|| NaiveDateTime::parse_from_str(time_text, TIME_FORMAT).ok())
        .flatten();
    Some(ArchiveInfo {
        kind,
        vmid,
        time,
        format,
        compression,
        base: base.to_string(),
    })
}

/// `<archive>.notes`.
pub fn notes_path(archive: &Path) -> PathBuf {
    with_suffix(archive, ".notes")
}

/// `<archive>.protected`.
pub fn protected_path(archive: &Path) -> PathBuf {
    with_suffix(archive, ".protected")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn base_names_follow_vzdump() {
        let t = Local
            .with_ymd_and_hms(2025, 1, 5, 2, 0, 1)
            .single()
            .expect("valid local time");
        let base = base_name(GuestType::Qemu, 100, t);
        assert_eq!(base, "vzdump-qemu-100-2025_01_05-02_00_01");
        let parsed = parse_archive_name(&format!("{base}.vma.zst")).expect("archive");
        assert_eq!(parsed.time, Some(t.naive_local()));
    }

    #[test]
    fn parses_archive_names() {
        let i = parse_archive_name("vzdump-qemu-100-2025_01_05-02_00_01.vma.zst").expect("ok");
        assert_eq!(i.kind, GuestType::Qemu);
        assert_eq!(i.vmid, 100);
        assert_eq!(i.format, "vma");
        assert_eq!(i.compression, Some("zst"));
        assert_eq!(i.base, "vzdump-qemu-100-2025_01_05-02_00_01");
        assert_eq!(i.time.expect("standard").to_string(), "2025-01-05 02:00:01");
        let t = parse_archive_name("vzdump-lxc-101-2025_01_05-02_00_01.tar").expect("ok");
        assert_eq!(
            (t.kind, t.format, t.compression),
            (GuestType::Lxc, "tar", None)
        );
        // Renamed: an archive, but not a standard name.
        let r = parse_archive_name("vzdump-qemu-100-before-upgrade.vma.gz").expect("archive");
        assert_eq!(r.time, None);
        for not in [
            "vzdump-qemu-100-2025_01_05-02_00_01.log",
            "vzdump-qemu-100-2025_01_05-02_00_01.vma.zst.notes",
            "vzdump-qemu-100-2025_01_05-02_00_01.vma.zst.protected",
            "vzdump-qemu-100-2025_01_05-02_00_01.vma.dat",
            "vzdump-qemu-100-2025_01_05-02_00_01.dat",
            "vzdump-foo-100-2025_01_05-02_00_01.vma",
            "vzdump-qemu-0100-2025_01_05-02_00_01.vma",
            "notes.txt",
        ] {
            assert!(parse_archive_name(not).is_none(), "{not}");
        }
        // Out-of-range dates are not standard names.
        let bad = parse_archive_name("vzdump-qemu-100-2025_13_05-02_00_01.vma").expect("archive");
        assert_eq!(bad.time, None);
    }
}

//! The vzdump "backup copy" of a qemu-server config and its `#qmdump#map` lines.
//!
//! The copy stored in an archive as `qemu-server.conf` is the main section without `lock:`,
//! `parent:` and `unusedN:` lines (snapshot, `[PENDING]` and `[special:...]` sections are
//! dropped), followed by one line per backed-up disk:
//! `#qmdump#map:<key>:<device name>:<storage id>:<format>:`. Restore reads those lines to map
//! archive devices back to config keys.

use tracing::info;

use crate::drive::{Bus, Drive, DriveKey};
use crate::error::{Error, Result};
use crate::guestfile::LineKind;
use crate::qemu::{entry_key, indexed, QemuConfig};
use crate::storage::StorageConfig;
use crate::volume::VolumeRef;

/// One `#qmdump#map:` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmdumpMap {
    /// The config key (`scsi0`, `efidisk0`, ...).
    pub virtdev: String,
    /// The archive device name (`drive-scsi0`, `drive-tpmstate0-backup`).
    pub devname: String,
    /// The storage id the disk came from (empty for plain paths).
    pub storeid: String,
    /// The image format (`raw`, `qcow2`, ...), may be empty.
    pub format: String,
}

const MAP_PREFIX: &str = "#qmdump#map:";

impl QmdumpMap {
    /// Parse one line; `Ok(None)` if it is not a map line.
    pub fn parse_line(line: &str) -> Result<Option<Self>> {
        let line = line.trim_end_matches(['\r', '\n']);
        let Some(rest) = line.strip_prefix(MAP_PREFIX) else {
            return Ok(None);
        };
        let bad = |msg: &str| Error::value("#qmdump#map", format!("{msg} in '{line}'"));
        let rest = rest
            .strip_suffix(':')
            .ok_or_else(|| bad("no trailing ':'"))?;
        let fields: Vec<&str> = rest.split(':').collect();
        let [virtdev, devname, storeid, format] = fields.as_slice() else {
            return Err(bad("expected 4 fields"));
        };
        if virtdev.is_empty() || devname.is_empty() {
            return Err(bad("empty device"));
        }
        if fields.iter().any(|f| f.contains(char::is_whitespace)) {
            return Err(bad("whitespace"));
        }
        Ok(Some(QmdumpMap {
            virtdev: virtdev.to_string(),
            devname: devname.to_string(),
            storeid: storeid.to_string(),
            format: format.to_string(),
        }))
    }

    /// The line text without newline.
    pub fn to_line(&self) -> String {
        format!(
            "{MAP_PREFIX}{}:{}:{}:{}:",
            self.virtdev, self.devname, self.storeid, self.format
        )
    }
}

/// All map lines of an archived config, with errors at their line (`source` names the file).
pub fn parse_maps(text: &str, source: &str) -> Result<Vec<QmdumpMap>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(m) = QmdumpMap::parse_line(line).map_err(|e| e.at(source, i + 1))? {
            if out.iter().any(|o: &QmdumpMap| o.devname == m.devname) {
                return Err(Error::parse(
                    source,
                    i + 1,
                    format!("duplicate device '{}'", m.devname),
                ));
            }
            out.push(m);
        }
    }
    Ok(out)
}

/// A disk that goes into the backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupDisk {
    /// The config key.
    pub key: DriveKey,
    /// The drive definition.
    pub drive: Drive,
    /// The archive device name: `drive-<key>`, or `drive-tpmstate0-backup` for the TPM state.
    pub devname: String,
    /// The volume.
    pub volume: VolumeRef,
    /// Storage id (empty for absolute paths).
    pub storeid: String,
    /// Format: `format=`, else from the volume name, else `raw`.
    pub format: String,
    /// `size=` in bytes, if the config states it.
    pub size: Option<u64>,
}

impl BackupDisk {
    /// The map line for this disk.
    pub fn map(&self) -> QmdumpMap {
        QmdumpMap {
            virtdev: self.key.to_string(),
            devname: self.devname.clone(),
            storeid: self.storeid.clone(),
            format: self.format.clone(),
        }
    }
}

/// A disk left out of the backup and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExcludedDisk {
    /// The config key.
    pub key: DriveKey,
    /// The volume text.
    pub volume: String,
    /// `backup=no`, `cdrom`, `efidisk without OVMF`.
    pub reason: &'static str,
}

/// The archive device name of a disk.
pub fn device_name(key: DriveKey) -> String {
    match key.bus {
        Bus::TpmState => format!("drive-{key}-backup"),
        _ => key.drive_id(),
    }
}

/// Choose the disks vzdump would back up: every disk that is not a CD-ROM and not `backup=0`;
/// `efidisk0` only with `bios: ovmf` (as Proxmox); `tpmstate0` always. Logs Proxmox's
/// `include disk` / `exclude disk` lines at info level.
pub fn backup_disks(cfg: &QemuConfig) -> Result<(Vec<BackupDisk>, Vec<ExcludedDisk>)> {
    let mut inc = Vec::new();
    let mut exc = Vec::new();
    for drive in cfg.drives()? {
        let key = drive.key;
        let volume = drive.volume()?;
        let excluded = |reason| ExcludedDisk {
            key,
            volume: drive.file().to_string(),
            reason,
        };
        if drive.is_cdrom() || matches!(volume, VolumeRef::None | VolumeRef::HostCdrom) {
            exc.push(excluded("cdrom"));
            continue;
        }
        if key.bus == Bus::EfiDisk && cfg.bios() != "ovmf" {
            exc.push(excluded("efidisk without OVMF"));
            continue;
        }
        if !drive.backup().map_err(|e| cfg_err(cfg, &key, e))? {
            info!("exclude disk '{key}' '{}' (backup=no)", drive.file());
            exc.push(excluded("backup=no"));
            continue;
        }
        let (storeid, name_format) = match &volume {
            VolumeRef::Volume(v) => (v.storage.clone(), v.format_from_name()),
            VolumeRef::Path(p) => (
                String::new(),
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(crate::volume::format_from_name),
            ),
            VolumeRef::None | VolumeRef::HostCdrom => unreachable!("excluded above"),
        };
        let format = drive.format().or(name_format).unwrap_or("raw").to_string();
        let size = drive.size().map_err(|e| cfg_err(cfg, &key, e))?;
        info!(
            "include disk '{key}' '{}'{}",
            drive.file(),
            size.map(|s| format!(" {}", crate::drive::format_size(s)))
                .unwrap_or_default()
        );
        inc.push(BackupDisk {
            key,
            devname: device_name(key),
            drive,
            volume,
            storeid,
            format,
            size,
        });
    }
    Ok((inc, exc))
}

fn cfg_err(cfg: &QemuConfig, key: &DriveKey, e: Error) -> Error {
    e.at(cfg.source(), cfg.line_of(&key.to_string()).unwrap_or(0))
}

/// Build the archived `qemu-server.conf`: the main section without `lock:`, `parent:` and
/// `unusedN:` lines (other sections dropped, each logged), plus one map line per disk.
pub fn backup_copy(cfg: &QemuConfig, disks: &[BackupDisk]) -> String {
    let file = cfg.file();
    let mut out = String::new();
    for line in &file.sections[0].lines {
        if let Some(key) = entry_key(&line.kind) {
            if key == "lock" || key == "parent" {
                continue;
            }
            if indexed(key, "unused").is_some() {
                if let LineKind::Entry { value, .. } = &line.kind {
                    info!("skip unused drive '{value}' (not included into backup)");
                }
                continue;
            }
        }
        if let LineKind::Comment(c) = &line.kind {
            // A config restored from an archive never keeps old map lines; be safe anyway.
            if c.starts_with("qmdump#") || c.starts_with("vzdump#") {
                continue;
            }
        }
        out.push_str(line.raw.trim_end_matches('\r'));
        out.push('\n');
    }
    for section in &file.sections[1..] {
        if let Some(h) = &section.header {
            info!(
                "skipping section {} (not included into backup)",
                h.raw.trim()
            );
        }
    }
    for d in disks {
        out.push_str(&d.map().to_line());
        out.push('\n');
    }
    out
}

/// Convenience: choose disks and build the copy in one go; also resolves nothing on disk.
pub fn backup_config(cfg: &QemuConfig) -> Result<(String, Vec<BackupDisk>, Vec<ExcludedDisk>)> {
    let (inc, exc) = backup_disks(cfg)?;
    Ok((backup_copy(cfg, &inc), inc, exc))
}

/// Check that every storage-backed disk of the backup resolves on `storage` (fails early with
/// the storage or volume named).
pub fn check_resolvable(storage: &StorageConfig, disks: &[BackupDisk]) -> Result<()> {
    for d in disks {
        storage.resolve_ref(&d.volume)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_lines() {
        let m = QmdumpMap::parse_line("#qmdump#map:scsi0:drive-scsi0:local-lvm:raw:")
            .unwrap()
            .unwrap();
        assert_eq!(m.virtdev, "scsi0");
        assert_eq!(m.storeid, "local-lvm");
        assert_eq!(m.to_line(), "#qmdump#map:scsi0:drive-scsi0:local-lvm:raw:");
        let m = QmdumpMap::parse_line("#qmdump#map:virtio1:drive-virtio1:::")
            .unwrap()
            .unwrap();
        assert_eq!(m.storeid, "");
        assert_eq!(m.format, "");
        assert!(QmdumpMap::parse_line("# just a comment").unwrap().is_none());
        assert!(QmdumpMap::parse_line("#qmdump#map:scsi0:drive-scsi0:local:raw").is_err());
        assert!(QmdumpMap::parse_line("#qmdump#map:scsi0:drive-scsi0:raw:").is_err());
        let e = parse_maps("a: 1\n#qmdump#map:x:y:z\n", "qemu-server.conf").unwrap_err();
        assert!(e.to_string().starts_with("qemu-server.conf:2:"), "{e}");
    }
}

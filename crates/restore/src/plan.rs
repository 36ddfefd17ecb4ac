//! Target planning: which archive device goes to which storage, in which format.
//!
//! Pure: reads the archive header, the `#qmdump#map` lines and `storage.cfg`; creates nothing.

use vmdump_config::qmdump::QmdumpMap;
use vmdump_config::{StorageConfig, StorageType};
use vmdump_vma::Header;

use crate::error::{Error, Result};

/// Where one archive device will be restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPlan {
    /// Archive device id.
    pub dev_id: u8,
    /// Archive device name (`drive-scsi0`).
    pub devname: String,
    /// Config key (`scsi0`).
    pub virtdev: String,
    /// Device size in bytes.
    pub size: u64,
    /// Target storage id.
    pub storage: String,
    /// Target image format (`raw`, `qcow2`, `vmdk`).
    pub format: String,
}

/// Formats a storage type can hold images in, the default first.
fn formats(kind: &StorageType) -> &'static [&'static str] {
    match kind {
        // Proxmox's btrfs plugin stores raw images only (as subvolumes).
        StorageType::Btrfs => &["raw"],
        _ => &["raw", "qcow2", "vmdk"],
    }
}

/// Plan every (non-vmstate) device of the archive. The storage is `target_storage`, else the
/// map line's storage, else `local`; the format is the map line's if the storage supports it,
/// else the storage's default.
pub fn plan_disks(
    header: &Header,
    maps: &[QmdumpMap],
    storage: &StorageConfig,
    target_storage: Option<&str>,
) -> Result<Vec<DiskPlan>> {
    for m in maps {
        if !header.devices.iter().any(|d| d.name == m.devname) {
            return Err(Error::Mapping(format!(
                "#qmdump#map line for '{}' names device '{}', which is not in the archive",
                m.virtdev, m.devname
            )));
        }
    }
    let mut out = Vec::new();
    for dev in &header.devices {
        if dev.is_vmstate() {
            tracing::warn!("skipping vmstate stream (dev_id {}): not restored", dev.id);
            continue;
        }
        let Some(m) = maps.iter().find(|m| m.devname == dev.name) else {
            return Err(Error::Mapping(format!(
                "archive device '{}' (dev_id {}) has no #qmdump#map line in qemu-server.conf",
                dev.name, dev.id
            )));
        };
        let sid = match target_storage {
            Some(s) => s.to_string(),
            None if !m.storeid.is_empty() => m.storeid.clone(),
            None => "local".to_string(),
        };
        let entry = storage.get(&sid).ok_or_else(|| Error::Storage {
            storage: sid.clone(),
            msg: format!(
                "does not exist (needed for '{}'; choose another with --storage)",
                m.virtdev
            ),
        })?;
        if !entry.kind().is_path_based() {
            return Err(Error::Storage {
                storage: sid,
                msg: format!(
                    "type '{}' cannot hold restored disks (dir and btrfs can)",
                    entry.kind().as_str()
                ),
            });
        }
        if entry.disabled() {
            return Err(Error::Storage {
                storage: sid,
                msg: "is disabled".into(),
            });
        }
        if !entry.has_content("images") {
            return Err(Error::Storage {
                storage: sid,
                msg: "does not allow content 'images'".into(),
            });
        }
        let supported = formats(entry.kind());
        let default = if supported.contains(&entry.default_format()) {
            entry.default_format()
        } else {
            supported[0]
        };
        let format = if m.format.is_empty() {
            default.to_string()
        } else if supported.contains(&m.format.as_str()) {
            m.format.clone()
        } else {
            tracing::info!(
                "format '{}' of '{}' is not supported on storage '{sid}', using '{default}'",
                m.format,
                m.virtdev
            );
            default.to_string()
        };
        out.push(DiskPlan {
            dev_id: dev.id,
            devname: dev.name.clone(),
            virtdev: m.virtdev.clone(),
            size: dev.size,
            storage: sid,
            format,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmdump_config::qmdump::parse_maps;

    fn header() -> Header {
        let mut w = vmdump_vma::Writer::with_identity(Vec::new(), [1; 16], Some(1));
        w.add_config("qemu-server.conf", b"memory: 512\n").unwrap();
        let a = w.register_device("drive-scsi0", 65536).unwrap();
        let b = w.register_device("drive-virtio1", 65536).unwrap();
        w.write_zero_cluster(a, 0).unwrap();
        w.write_zero_cluster(b, 0).unwrap();
        let (bytes, _) = w.finish().unwrap();
        vmdump_vma::Reader::new(&bytes[..])
            .unwrap()
            .header()
            .clone()
    }

    fn storage() -> StorageConfig {
        StorageConfig::parse(
            "dir: local\n\tpath /srv/a\n\tcontent images\n\ndir: other\n\tpath /srv/b\n\tcontent images\n\tformat qcow2\n\nbtrfs: fast\n\tpath /srv/c\n\tcontent images\n\ndir: isos\n\tpath /srv/d\n\tcontent iso\n\nlvmthin: lvm\n\tthinpool data\n\tvgname pve\n\tcontent images\n",
            "storage.cfg",
        )
        .unwrap()
    }

    #[test]
    fn storage_and_format_choice() {
        let maps = parse_maps(
            "#qmdump#map:scsi0:drive-scsi0:other:qcow2:\n#qmdump#map:virtio1:drive-virtio1:::\n",
            "c",
        )
        .unwrap();
        let p = plan_disks(&header(), &maps, &storage(), None).unwrap();
        assert_eq!(
            (p[0].storage.as_str(), p[0].format.as_str()),
            ("other", "qcow2")
        );
        assert_eq!(
            (p[1].storage.as_str(), p[1].format.as_str()),
            ("local", "raw")
        );
        let p = plan_disks(&header(), &maps, &storage(), Some("fast")).unwrap();
        assert!(p.iter().all(|d| d.storage == "fast" && d.format == "raw"));
        let p = plan_disks(&header(), &maps, &storage(), Some("other")).unwrap();
        assert_eq!(
            p[1].format, "qcow2",
            "empty format takes the storage default"
        );
    }

    #[test]
    fn refusals_name_the_problem() {
        let maps = parse_maps(
            "#qmdump#map:scsi0:drive-scsi0:local:raw:\n#qmdump#map:virtio1:drive-virtio1:local:raw:\n",
            "c",
        )
        .unwrap();
        for (sid, needle) in [
            ("nope", "does not exist"),
            ("isos", "content 'images'"),
            ("lvm", "type 'lvmthin'"),
        ] {
            let e = plan_disks(&header(), &maps, &storage(), Some(sid)).unwrap_err();
            assert!(e.to_string().contains(needle), "{e}");
        }
        let e = plan_disks(&header(), &maps[..1], &storage(), None).unwrap_err();
        assert!(e.to_string().contains("'drive-virtio1'"), "{e}");
        let extra = parse_maps("#qmdump#map:scsi3:drive-scsi3:local:raw:\n", "c").unwrap();
        let all: Vec<_> = maps.iter().chain(&extra).cloned().collect();
        let e = plan_disks(&header(), &all, &storage(), None).unwrap_err();
        assert!(e.to_string().contains("drive-scsi3"), "{e}");
    }
}

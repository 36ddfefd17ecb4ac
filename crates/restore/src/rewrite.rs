//! The config rewrite of a restore: the archived `qemu-server.conf` becomes the new VM's
//! config, line by line, as qmrestore does it.
//!
//! - `#qmdump#...`, `#vzdump#...`, `lock:`, `unusedN:` and `parent:` lines are dropped;
//! - a disk with `backup=0` is commented out (the archive holds no data for it);
//! - a restored disk points at its new volume id, without `format=` (the format may change),
//!   and its `size=` names the restored volume's size (the archive's, whole sectors);
//! - `vmgenid` is regenerated unless it is `0` (disabled);
//! - with `unique`, every `netN` MAC address and the `smbios1` uuid are regenerated;
//! - legacy `vlanN: model=mac,...` lines (Proxmox 1.x) become `netN` lines on `vmbrN`;
//! - anything after the main section (snapshot, `[PENDING]`, `[special:...]`) is dropped.
//!
//! Every other line (comments, the description, unknown keys) is kept byte for byte.

use std::collections::BTreeMap;

use vmdump_config::{Drive, DriveKey, NetDevice, PropertyString};

use crate::error::{Error, Result};

/// The prefix of generated MAC addresses when `datacenter.cfg` sets no `mac_prefix`: the
/// Proxmox OUI, Proxmox VE's default since 8.1.
pub const DEFAULT_MAC_PREFIX: &str = "BC:24:11";

/// Where the random bits for MAC addresses and uuids come from (tests inject a counter).
pub trait Randomness {
    /// 16 random bytes.
    fn bytes16(&mut self) -> [u8; 16];
}

/// Randomness from the operating system (uuid v4 generator).
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRandom;

impl Randomness for OsRandom {
    fn bytes16(&mut self) -> [u8; 16] {
        *uuid::Uuid::new_v4().as_bytes()
    }
}

/// What the rewrite needs to know.
#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    /// Restored disks: config key (`scsi0`) → new volume id (`local:101/vm-101-disk-0.raw`).
    pub volumes: BTreeMap<String, String>,
    /// Restored disks: config key → size in bytes of the new volume (`size=`).
    pub sizes: BTreeMap<String, u64>,
    /// Regenerate MAC addresses and the smbios1 uuid.
    pub unique: bool,
    /// Prefix of new MAC addresses (`XX:XX:XX`, upper or lower case); `None` for a fully
    /// random, locally administered address.
    pub mac_prefix: Option<String>,
}

/// A random MAC address the way Proxmox makes one: six random bytes with the multicast bit
/// cleared and the locally-administered bit set, upper-case hex, then the start replaced by
/// `prefix` if one is given.
pub fn random_mac(prefix: Option<&str>, rng: &mut dyn Randomness) -> String {
    let b = rng.bytes16();
    let first = (b[0] & 0xfe) | 0x02;
    let addr = format!(
        "{first:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}",
        b[1], b[2], b[3], b[4], b[5]
    );
    match prefix {
        Some(p) if !p.is_empty() && p.len() < addr.len() => {
            format!("{}{}", p.to_ascii_uppercase(), &addr[p.len()..])
        }
        _ => addr,
    }
}

/// A random (version 4) uuid in its text form.
pub fn random_uuid(rng: &mut dyn Randomness) -> String {
    uuid::Builder::from_random_bytes(rng.bytes16())
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// Rewrite the archived config text into the restored VM's config (see the module docs).
/// `source` names the text in errors.
pub fn rewrite_config(
    text: &str,
    rw: &Rewrite,
    rng: &mut dyn Randomness,
    source: &str,
) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut netcount = 0u32;
    for (no, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        if line.starts_with('[') {
            // Snapshot and other sections are never restored.
            break;
        }
        if line.starts_with("#qmdump#") || line.starts_with("#vzdump#") {
            continue;
        }
        let Some((key, value)) = entry(line) else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let at = |e: vmdump_config::Error| {
            Error::Config(vmdump_config::Error::Parse {
                file: source.to_string(),
                line: no + 1,
                msg: e.to_string(),
            })
        };
        if key == "lock" || key == "parent" || indexed(key, "unused") {
            continue;
        }
        if let Some(n) = key.strip_prefix("vlan").filter(|n| is_index(n)) {
            for dev in value.split(',').filter(|d| !d.is_empty()) {
                let (model, mac) = dev.split_once('=').unwrap_or((dev, ""));
                let mac = if mac.is_empty() || rw.unique {
                    random_mac(rw.mac_prefix.as_deref(), rng)
                } else {
                    mac.to_string()
                };
                out.push_str(&format!("net{netcount}: {model}={mac},bridge=vmbr{n}\n"));
                netcount += 1;
            }
            continue;
        }
        if let Some(n) = key.strip_prefix("net").filter(|n| is_index(n)) {
            if rw.unique {
                let index = n.parse().map_err(|_| {
                    Error::Config(vmdump_config::Error::Value {
                        key: key.to_string(),
                        msg: "bad index".into(),
                    })
                })?;
                let mut net = NetDevice::parse(index, value).map_err(at)?;
                if net.macaddr().is_some() {
                    net.set_macaddr(&random_mac(rw.mac_prefix.as_deref(), rng));
                }
                out.push_str(&format!("{key}: {}\n", net.props));
                continue;
            }
        } else if let Some(dk) = DriveKey::parse(key) {
            let mut drive = Drive::parse(dk, value).map_err(at)?;
            if !drive.backup().map_err(at)? {
                out.push('#');
                out.push_str(line);
                out.push('\n');
                continue;
            }
            if let Some(volid) = rw.volumes.get(key) {
                drive.props.remove("format");
                drive.set_volume(volid);
                if let Some(&size) = rw.sizes.get(key) {
                    drive.props.set("size", vmdump_config::format_size(size));
                }
                out.push_str(&format!("{key}: {drive}\n"));
                continue;
            }
        } else if key == "vmgenid" {
            let v = if value == "0" {
                "0".to_string()
            } else {
                random_uuid(rng)
            };
            out.push_str(&format!("vmgenid: {v}\n"));
            continue;
        } else if key == "smbios1" && rw.unique {
            let mut p = PropertyString::parse(value, None).map_err(at)?;
            p.set("uuid", random_uuid(rng));
            out.push_str(&format!("smbios1: {p}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    Ok(out)
}

/// `key: value` of a config line (not comments or blank lines).
fn entry(line: &str) -> Option<(&str, &str)> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let (k, v) = line.split_once(':')?;
    let k = k.trim();
    if k.is_empty() || k.contains(char::is_whitespace) {
        return None;
    }
    Some((k, v.trim()))
}

fn is_index(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && (n == "0" || !n.starts_with('0'))
}

fn indexed(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix).is_some_and(is_index)
}

/// `mac_prefix` from a `datacenter.cfg` text, if set.
pub fn mac_prefix_from_datacenter(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = entry(l)?;
        (k == "mac_prefix" && !v.is_empty()).then(|| v.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic "randomness": a counter in every byte.
    struct Counter(u8);
    impl Randomness for Counter {
        fn bytes16(&mut self) -> [u8; 16] {
            self.0 += 1;
            [self.0; 16]
        }
    }

    const ARCHIVED: &str = "\
#my description
#second line
agent: 1
boot: order=scsi0;net0
cores: 2
lock: backup
memory: 2048
name: web
net0: virtio=AA:BB:CC:DD:EE:01,bridge=vmbr0,firewall=1
net1: model=e1000,macaddr=AA:BB:CC:DD:EE:02,bridge=vmbr1
parent: snap1
scsi0: local-lvm:vm-100-disk-0,format=raw,iothread=1,size=32G
scsi1: local:100/vm-100-disk-1.qcow2,backup=0,size=8G
ide2: none,media=cdrom
efidisk0: local:100/vm-100-disk-2.raw,efitype=4m,size=528K
smbios1: uuid=11111111-2222-3333-4444-555555555555,manufacturer=QUNNRQ==,base64=1
unused0: local:100/vm-100-disk-9.raw
vmgenid: 0a0b0c0d-0000-4000-8000-000000000001
#qmdump#map:scsi0:drive-scsi0:local-lvm:raw:
#qmdump#map:efidisk0:drive-efidisk0:local:raw:
";

    fn rw(unique: bool) -> Rewrite {
        Rewrite {
            volumes: [
                (
                    "scsi0".to_string(),
                    "fast:101/vm-101-disk-0.raw".to_string(),
                ),
                (
                    "efidisk0".to_string(),
                    "fast:101/vm-101-disk-1.qcow2".to_string(),
                ),
            ]
            .into(),
            sizes: [
                ("scsi0".to_string(), 32 << 30),
                ("efidisk0".to_string(), 540_672),
            ]
            .into(),
            unique,
            mac_prefix: Some(DEFAULT_MAC_PREFIX.into()),
        }
    }

    #[test]
    fn size_names_the_restored_volume() {
        // A 1 000 001-byte disk is archived and restored as 1 000 448 bytes (whole
        // sectors): the config says so, not the size it had before the backup.
        let text = "scsi0: local:100/vm-100-disk-0.raw,size=1000001\nvirtio1: local:100/b.raw\n";
        let rw = Rewrite {
            volumes: [
                (
                    "scsi0".to_string(),
                    "fast:101/vm-101-disk-0.raw".to_string(),
                ),
                (
                    "virtio1".to_string(),
                    "fast:101/vm-101-disk-1.raw".to_string(),
                ),
            ]
            .into(),
            sizes: [
                ("scsi0".to_string(), 1_000_448),
                ("virtio1".to_string(), 64 << 20),
            ]
            .into(),
            ..Rewrite::default()
        };
        let out = rewrite_config(text, &rw, &mut Counter(0), "x").unwrap();
        assert_eq!(
            out,
            "scsi0: fast:101/vm-101-disk-0.raw,size=977K\nvirtio1: fast:101/vm-101-disk-1.raw,size=64M\n"
        );
    }

    #[test]
    fn plain_restore_rules() {
        let out =
            rewrite_config(ARCHIVED, &rw(false), &mut Counter(0), "qemu-server.conf").unwrap();
        let expected = "\
#my description
#second line
agent: 1
boot: order=scsi0;net0
cores: 2
memory: 2048
name: web
net0: virtio=AA:BB:CC:DD:EE:01,bridge=vmbr0,firewall=1
net1: model=e1000,macaddr=AA:BB:CC:DD:EE:02,bridge=vmbr1
scsi0: fast:101/vm-101-disk-0.raw,iothread=1,size=32G
#scsi1: local:100/vm-100-disk-1.qcow2,backup=0,size=8G
ide2: none,media=cdrom
efidisk0: fast:101/vm-101-disk-1.qcow2,efitype=4m,size=528K
smbios1: uuid=11111111-2222-3333-4444-555555555555,manufacturer=QUNNRQ==,base64=1
vmgenid: 01010101-0101-4101-8101-010101010101
";
        assert_eq!(out, expected);
        // The result is a valid config.
        vmdump_config::QemuConfig::parse(&out, "new").unwrap();
    }

    #[test]
    fn unique_changes_macs_and_smbios_uuid_only() {
        let out = rewrite_config(ARCHIVED, &rw(true), &mut Counter(0), "qemu-server.conf").unwrap();
        assert!(out.contains("net0: virtio=BC:24:11:01:01:01,bridge=vmbr0,firewall=1\n"));
        assert!(out.contains("net1: model=e1000,macaddr=BC:24:11:02:02:02,bridge=vmbr1\n"));
        assert!(out.contains(
            "smbios1: uuid=03030303-0303-4303-8303-030303030303,manufacturer=QUNNRQ==,base64=1\n"
        ));
        let plain = rewrite_config(ARCHIVED, &rw(false), &mut Counter(0), "x").unwrap();
        let differing: Vec<_> = out
            .lines()
            .zip(plain.lines())
            .filter(|(a, b)| a != b)
            .map(|(a, _)| a.split(':').next().unwrap_or_default().to_string())
            .collect();
        assert_eq!(differing, ["net0", "net1", "smbios1", "vmgenid"]);
    }

    #[test]
    fn vmgenid_zero_stays_and_sections_drop() {
        let text = "memory: 512\nvmgenid: 0\n\n[snap1]\nmemory: 256\n";
        let out = rewrite_config(text, &Rewrite::default(), &mut Counter(0), "x").unwrap();
        assert_eq!(out, "memory: 512\nvmgenid: 0\n\n");
    }

    #[test]
    fn legacy_vlan_lines_become_nets() {
        let text = "vlan1: e1000=AA:00:00:00:00:01,virtio\n";
        let rw = Rewrite::default();
        let out = rewrite_config(text, &rw, &mut Counter(0), "x").unwrap();
        assert_eq!(
            out,
            "net0: e1000=AA:00:00:00:00:01,bridge=vmbr1\nnet1: virtio=02:01:01:01:01:01,bridge=vmbr1\n"
        );
    }

    #[test]
    fn mac_shape() {
        // Without prefix: unicast, locally administered.
        let m = random_mac(None, &mut Counter(0xfe));
        assert_eq!(m, "FE:FF:FF:FF:FF:FF");
        let first = u8::from_str_radix(&m[..2], 16).unwrap();
        assert_eq!(first & 1, 0);
        assert_eq!(first & 2, 2);
        assert_eq!(
            random_mac(Some("bc:24:11"), &mut OsRandom).len(),
            "BC:24:11:00:00:00".len()
        );
        assert!(random_mac(Some("bc:24:11"), &mut OsRandom).starts_with("BC:24:11:"));
    }

    #[test]
    fn bad_drive_line_names_the_line() {
        let text = "memory: 512\nscsi0: nostorage\n";
        let e = rewrite_config(
            text,
            &Rewrite::default(),
            &mut Counter(0),
            "qemu-server.conf",
        )
        .unwrap_err();
        let chain = format!("{}", std::error::Error::source(&e).unwrap());
        assert!(chain.contains("qemu-server.conf:2"), "{chain}");
    }

    #[test]
    fn datacenter_prefix() {
        assert_eq!(
            mac_prefix_from_datacenter("keyboard: de\nmac_prefix: 02:AB\n").as_deref(),
            Some("02:AB")
        );
        assert_eq!(mac_prefix_from_datacenter("keyboard: de\n"), None);
    }
}

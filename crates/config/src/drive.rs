//! Disk definitions of qemu-server configs: `scsi0: local:100/vm-100-disk-0.qcow2,size=32G`.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::propstring::PropertyString;
use crate::volume::VolumeRef;

/// The bus (or special role) of a disk key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Bus {
    /// `ideN`, N in 0..=3.
    Ide,
    /// `sataN`, N in 0..=5.
    Sata,
    /// `scsiN`, N in 0..=30.
    Scsi,
    /// `virtioN`, N in 0..=15.
    Virtio,
    /// `efidisk0`: OVMF variables.
    EfiDisk,
    /// `tpmstate0`: swtpm state.
    TpmState,
}

impl Bus {
    /// The key prefix (`scsi`, `efidisk`, ...).
    pub fn prefix(self) -> &'static str {
        match self {
            Bus::Ide => "ide",
            Bus::Sata => "sata",
            Bus::Scsi => "scsi",
            Bus::Virtio => "virtio",
            Bus::EfiDisk => "efidisk",
            Bus::TpmState => "tpmstate",
        }
    }

    /// Highest index allowed on this bus (Proxmox limits).
    pub fn max_index(self) -> u32 {
        match self {
            Bus::Ide => 3,
            Bus::Sata => 5,
            Bus::Scsi => 30,
            Bus::Virtio => 15,
            Bus::EfiDisk | Bus::TpmState => 0,
        }
    }

    const ALL: [Bus; 6] = [
        Bus::Ide,
        Bus::Sata,
        Bus::Scsi,
        Bus::Virtio,
        Bus::EfiDisk,
        Bus::TpmState,
    ];
}

/// A disk key such as `scsi0`, `virtio1`, `efidisk0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DriveKey {
    /// The bus.
    pub bus: Bus,
    /// The index on the bus.
    pub index: u32,
}

impl DriveKey {
    /// Parse a config key; `None` if it is not a disk key (e.g. `memory`, `unused0`, `net0`).
    pub fn parse(key: &str) -> Option<Self> {
        for bus in Bus::ALL {
            if let Some(n) = key.strip_prefix(bus.prefix()) {
                if n.is_empty() || (n.len() > 1 && n.starts_with('0')) {
                    return None;
                }
                let index: u32 = n.parse().ok()?;
                return (index <= bus.max_index()).then_some(DriveKey { bus, index });
            }
        }
        None
    }

    /// The QEMU drive id / block node name Proxmox uses: `drive-<key>`.
    pub fn drive_id(&self) -> String {
        format!("drive-{self}")
    }
}

impl fmt::Display for DriveKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.bus.prefix(), self.index)
    }
}

impl FromStr for DriveKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        DriveKey::parse(s).ok_or_else(|| Error::value(s, "not a disk key"))
    }
}

/// A disk definition: the property string with typed accessors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    /// Which disk.
    pub key: DriveKey,
    /// The full property string (`file` is the default key).
    pub props: PropertyString,
}

impl Drive {
    /// Parse the value of a disk key and validate the typed properties.
    pub fn parse(key: DriveKey, value: &str) -> Result<Self> {
        let props = PropertyString::parse(value, Some("file"))?;
        let drive = Drive { key, props };
        let k = key.to_string();
        if drive.props.get("file").is_none() {
            return Err(Error::value(&k, "no volume (file=)"));
        }
        drive.volume()?;
        drive.size()?;
        drive.backup()?;
        for b in ["iothread", "ro", "ssd", "replicate", "snapshot", "shared"] {
            drive
                .props
                .get_bool(b)
                .map_err(|e| Error::value(&k, e.to_string()))?;
        }
        if let Some(m) = drive.props.get("media") {
            if m != "cdrom" && m != "disk" {
                return Err(Error::value(
                    &k,
                    format!("media '{m}' is not cdrom or disk"),
                ));
            }
        }
        if let Some(c) = drive.props.get("cache") {
            if !["none", "writeback", "writethrough", "directsync", "unsafe"].contains(&c) {
                return Err(Error::value(&k, format!("unknown cache mode '{c}'")));
            }
        }
        if let Some(f) = drive.props.get("format") {
            if !["raw", "qcow2", "vmdk", "qed", "cow", "vdi", "cloop"].contains(&f) {
                return Err(Error::value(&k, format!("unknown format '{f}'")));
            }
        }
        Ok(drive)
    }

    /// The volume: `<storage>:<volume>`, an absolute path, `none` or `cdrom`.
    pub fn volume(&self) -> Result<VolumeRef> {
        let file = self.props.get("file").unwrap_or("none");
        VolumeRef::parse(file)
    }

    /// The raw `file` value.
    pub fn file(&self) -> &str {
        self.props.get("file").unwrap_or("none")
    }

    /// Replace the volume (restore points disks at new volumes).
    pub fn set_volume(&mut self, volume: &str) {
        self.props.set_default("file", volume);
    }

    /// `media=cdrom`.
    pub fn is_cdrom(&self) -> bool {
        self.props.get("media") == Some("cdrom")
    }

    /// `size=` in bytes (suffixes K, M, G, T; none means bytes).
    pub fn size(&self) -> Result<Option<u64>> {
        self.props
            .get("size")
            .map(|s| {
                parse_size(s).ok_or_else(|| Error::value("size", format!("'{s}' is not a size")))
            })
            .transpose()
    }

    /// `backup=` (default: true).
    pub fn backup(&self) -> Result<bool> {
        Ok(self.props.get_bool("backup")?.unwrap_or(true))
    }

    /// `format=`, if given.
    pub fn format(&self) -> Option<&str> {
        self.props.get("format")
    }

    /// `cache=`, if given.
    pub fn cache(&self) -> Option<&str> {
        self.props.get("cache")
    }

    /// `iothread=1`.
    pub fn iothread(&self) -> bool {
        self.props
            .get_bool("iothread")
            .ok()
            .flatten()
            .unwrap_or(false)
    }

    /// `ro=1`.
    pub fn read_only(&self) -> bool {
        self.props.get_bool("ro").ok().flatten().unwrap_or(false)
    }

    /// `discard=on`.
    pub fn discard(&self) -> bool {
        self.props.get("discard") == Some("on")
    }

    /// Any other property.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.props.get(key)
    }
}

impl fmt::Display for Drive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.props.fmt(f)
    }
}

/// Parse a Proxmox size: `32G`, `512M`, `1T`, `64K`, plain bytes; fractions allowed (`1.5G`).
pub fn parse_size(s: &str) -> Option<u64> {
    let (num, mult) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 1u64 << 10),
        b'M' | b'm' => (&s[..s.len() - 1], 1 << 20),
        b'G' | b'g' => (&s[..s.len() - 1], 1 << 30),
        b'T' | b't' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult);
    }
    let f: f64 = num.parse().ok()?;
    (f.is_finite() && f >= 0.0 && f * (mult as f64) < u64::MAX as f64)
        .then_some((f * mult as f64) as u64)
}

/// Format a byte count the way Proxmox writes `size=` (largest exact unit).
pub fn format_size(bytes: u64) -> String {
    for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(DriveKey::parse("scsi30").unwrap().index, 30);
        assert!(DriveKey::parse("scsi31").is_none());
        assert!(DriveKey::parse("ide4").is_none());
        assert!(DriveKey::parse("virtio01").is_none());
        assert!(DriveKey::parse("unused0").is_none());
        assert!(DriveKey::parse("efidisk1").is_none());
        assert_eq!(
            DriveKey::parse("tpmstate0").unwrap().drive_id(),
            "drive-tpmstate0"
        );
        assert_eq!(DriveKey::parse("sata5").unwrap().to_string(), "sata5");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("32G"), Some(32 << 30));
        assert_eq!(parse_size("4M"), Some(4 << 20));
        assert_eq!(parse_size("528K"), Some(528 << 10));
        assert_eq!(parse_size("1.5G"), Some(3 << 29));
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("G"), None);
        assert_eq!(parse_size("-1G"), None);
        assert_eq!(parse_size("99999999999T"), None);
        assert_eq!(format_size(32 << 30), "32G");
        assert_eq!(format_size(528 << 10), "528K");
        assert_eq!(format_size(1000), "1000");
    }

    #[test]
    fn drives() {
        let key = DriveKey::parse("ide2").unwrap();
        let d = Drive::parse(key, "none,media=cdrom").unwrap();
        assert!(d.is_cdrom());
        assert_eq!(d.volume().unwrap(), VolumeRef::None);
        let key = DriveKey::parse("scsi1").unwrap();
        let d = Drive::parse(key, "/dev/sdb,backup=0,iothread=1").unwrap();
        assert!(!d.backup().unwrap());
        assert!(d.iothread());
        assert!(Drive::parse(key, "local:1/x.raw,size=huge").is_err());
        assert!(Drive::parse(key, "local:1/x.raw,cache=maybe").is_err());
        assert!(Drive::parse(key, "local:1/x.raw,backup=2").is_err());
        assert!(Drive::parse(key, "size=1G").is_err());
        assert!(Drive::parse(key, "relative/path.raw").is_err());
    }
}

//! qemu-server guest configs (`qemu-server/<vmid>.conf`).

use std::fmt;
use std::path::Path;

use crate::drive::{Drive, DriveKey};
use crate::error::{Error, Result};
use crate::guestfile::{GuestFile, LineKind, SectionKind};
use crate::propstring::{parse_bool, PropertyString};

/// `agent:` (`1`, `0`, or `[enabled=]<bool>,fstrim_cloned_disks=..,freeze-fs-on-backup=..,type=..`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AgentOptions {
    /// Whether the guest agent is configured.
    pub enabled: bool,
    /// `fstrim_cloned_disks`.
    pub fstrim_cloned_disks: bool,
    /// `freeze-fs-on-backup` (default true).
    pub freeze_fs_on_backup: bool,
    /// `type` (`virtio` default, `isa`).
    pub kind: String,
}

impl AgentOptions {
    /// Parse the `agent` value.
    pub fn parse(value: &str) -> Result<Self> {
        let p = PropertyString::parse(value, Some("enabled"))?;
        for (k, _) in p.iter() {
            if ![
                "enabled",
                "fstrim_cloned_disks",
                "freeze-fs-on-backup",
                "type",
            ]
            .contains(&k)
            {
                return Err(Error::value("agent", format!("unknown option '{k}'")));
            }
        }
        let kind = p.get("type").unwrap_or("virtio").to_string();
        if kind != "virtio" && kind != "isa" {
            return Err(Error::value("agent", format!("unknown type '{kind}'")));
        }
        Ok(AgentOptions {
            enabled: p.get_bool("enabled")?.unwrap_or(false),
            fstrim_cloned_disks: p.get_bool("fstrim_cloned_disks")?.unwrap_or(false),
            freeze_fs_on_backup: p.get_bool("freeze-fs-on-backup")?.unwrap_or(true),
            kind,
        })
    }
}

/// A network device `netN: <model>=<mac>,bridge=..,...` (or `model=..,macaddr=..`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetDevice {
    /// The index N.
    pub index: u32,
    /// The full property string.
    pub props: PropertyString,
}

/// NIC models Proxmox accepts as the first key.
const NIC_MODELS: [&str; 9] = [
    "virtio", "e1000", "e1000e", "rtl8139", "vmxnet3", "ne2k_pci", "pcnet", "i82551", "i82557b",
];

impl NetDevice {
    /// Parse a `netN` value.
    pub fn parse(index: u32, value: &str) -> Result<Self> {
        let props = PropertyString::parse(value, Some("model"))?;
        let dev = NetDevice { index, props };
        if dev.model().is_none() {
            return Err(Error::value(&format!("net{index}"), "no NIC model"));
        }
        if let Some(mac) = dev.macaddr() {
            if !valid_mac(mac) {
                return Err(Error::value(
                    &format!("net{index}"),
                    format!("invalid MAC address '{mac}'"),
                ));
            }
        }
        Ok(dev)
    }

    /// The NIC model (`virtio`, `e1000`, ...).
    pub fn model(&self) -> Option<&str> {
        if let Some(m) = self.props.get("model") {
            return Some(m);
        }
        self.props
            .iter()
            .map(|(k, _)| k)
            .find(|k| NIC_MODELS.contains(k))
    }

    /// The MAC address (`<model>=<mac>` or `macaddr=`).
    pub fn macaddr(&self) -> Option<&str> {
        if let Some(m) = self.props.get("macaddr") {
            return Some(m);
        }
        let model = self
            .props
            .get("model")
            .is_none()
            .then(|| self.model())
            .flatten()?;
        self.props.get(model)
    }

    /// Replace the MAC address, keeping the form it was written in.
    pub fn set_macaddr(&mut self, mac: &str) {
        if self.props.contains("macaddr") || self.props.contains("model") {
            self.props.set("macaddr", mac);
        } else if let Some(model) = self.model().map(str::to_string) {
            self.props.set(&model, mac);
        }
    }

    /// `bridge=`.
    pub fn bridge(&self) -> Option<&str> {
        self.props.get("bridge")
    }

    /// `link_down=1`.
    pub fn link_down(&self) -> bool {
        self.props
            .get("link_down")
            .and_then(parse_bool)
            .unwrap_or(false)
    }
}

fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// A qemu-server config: the exact lines plus typed access to the main section.
///
/// Unknown keys, comments, snapshot, `[PENDING]` and `[special:...]` sections are kept; an
/// unedited config writes back byte for byte, and an edit changes only its own line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuConfig {
    file: GuestFile,
}

impl QemuConfig {
    /// Parse config text; `source` names the file in errors. The typed keys (memory, cores,
    /// sockets, agent, disks, netN, ...) are validated, with errors at their line.
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        let cfg = QemuConfig {
            file: GuestFile::parse(text, source)?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::file::read_text(path)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Write atomically to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::file::write_atomic(path, self.to_string().as_bytes())
    }

    /// The name used in errors (file path).
    pub fn source(&self) -> &str {
        &self.file.source
    }

    fn validate(&self) -> Result<()> {
        let src = &self.file.source;
        for (si, section) in self.file.sections.iter().enumerate() {
            // The pending section holds partial changes plus `delete:`; snapshots hold full
            // configs. Disks and numbers are checked everywhere except in special sections.
            if matches!(section.kind, SectionKind::Special(_)) {
                continue;
            }
            for (key, value, no) in section.entries() {
                check_value(key, value).map_err(|e| e.at(src, no))?;
            }
            let _ = si;
        }
        Ok(())
    }

    /// A main-section value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.file.main().value(key)
    }

    /// Set a main-section value (replacing its line or adding one); validates typed keys.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        if value.is_empty() || value.contains('\n') {
            return Err(Error::value(key, "empty or multi-line value"));
        }
        check_value(key, value)?;
        self.file.main_mut().set(key, value);
        Ok(())
    }

    /// Remove a main-section key; returns its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.file.main_mut().remove(key)
    }

    /// Main-section `(key, value)` pairs in file order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.file.main().entries().map(|(k, v, _)| (k, v))
    }

    /// The 1-based line of a main-section key (for messages).
    pub fn line_of(&self, key: &str) -> Option<usize> {
        self.file.main().get(key).map(|l| l.no).filter(|n| *n > 0)
    }

    /// A value of the `[special:<section>]` section (Proxmox's `[special:fleecing]` holds
    /// `fleecing-images`).
    pub fn special(&self, section: &str, key: &str) -> Option<&str> {
        self.file.special(section)?.value(key)
    }

    /// Sets `key: value` in `[special:<section>]`, adding the section at the end if needed.
    pub fn set_special(&mut self, section: &str, key: &str, value: &str) -> Result<()> {
        if value.is_empty() || value.contains('\n') {
            return Err(Error::value(key, "empty or multi-line value"));
        }
        let valid = !section.is_empty()
            && section
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c));
        if !valid {
            return Err(Error::value(
                key,
                format!("invalid section name '{section}'"),
            ));
        }
        self.file.special_mut(section).set(key, value);
        Ok(())
    }

    /// Removes the `[special:<section>]` section; whether there was one.
    pub fn remove_special(&mut self, section: &str) -> bool {
        self.file.remove_special(section)
    }

    /// Section kinds in file order (main first).
    pub fn sections(&self) -> Vec<SectionKind> {
        self.file.sections.iter().map(|s| s.kind.clone()).collect()
    }

    /// Snapshot names.
    pub fn snapshots(&self) -> Vec<&str> {
        self.file
            .sections
            .iter()
            .filter_map(|s| match &s.kind {
                SectionKind::Snapshot(n) => Some(n.as_str()),
                _ => None,
            })
            .collect()
    }

    /// The description (`#` lines of the main section, decoded).
    pub fn description(&self) -> String {
        self.file.description()
    }

    fn num(&self, key: &str) -> Result<Option<u64>> {
        self.get(key)
            .map(|v| parse_num(key, v).map_err(|e| self.file.err_at(key, e)))
            .transpose()
    }

    /// `name`.
    pub fn name(&self) -> Option<&str> {
        self.get("name")
    }

    /// `memory` in MiB (`memory: 2048` or `memory: current=2048`); Proxmox's default 512.
    pub fn memory_mib(&self) -> Result<u64> {
        match self.get("memory") {
            None => Ok(512),
            Some(v) => parse_memory(v).map_err(|e| self.file.err_at("memory", e)),
        }
    }

    /// `cores` (default 1).
    pub fn cores(&self) -> Result<u64> {
        Ok(self.num("cores")?.unwrap_or(1))
    }

    /// `sockets` (default 1).
    pub fn sockets(&self) -> Result<u64> {
        Ok(self.num("sockets")?.unwrap_or(1))
    }

    /// `vcpus` (hot-plugged vCPUs at start), if set.
    pub fn vcpus(&self) -> Result<Option<u64>> {
        self.num("vcpus")
    }

    /// `machine` type (`q35`, `pc`, `pc-i440fx-7.2`, `pc-q35-8.1+pve0`; also the property
    /// string form `type=q35,viommu=...`), if set.
    pub fn machine(&self) -> Option<String> {
        let v = self.get("machine")?;
        match PropertyString::parse(v, Some("type")) {
            Ok(p) => p.get("type").map(str::to_string),
            Err(_) => Some(v.to_string()),
        }
    }

    /// `agent` (absent = disabled).
    pub fn agent(&self) -> Result<AgentOptions> {
        match self.get("agent") {
            None => Ok(AgentOptions {
                freeze_fs_on_backup: true,
                kind: "virtio".into(),
                ..Default::default()
            }),
            Some(v) => AgentOptions::parse(v).map_err(|e| self.file.err_at("agent", e)),
        }
    }

    /// `bios` (`seabios` default, `ovmf`).
    pub fn bios(&self) -> &str {
        self.get("bios").unwrap_or("seabios")
    }

    /// Boot order from `boot: order=scsi0;net0` (or the legacy `bootdisk:`), as device keys.
    pub fn boot_order(&self) -> Vec<String> {
        if let Some(b) = self.get("boot") {
            if let Ok(p) = PropertyString::parse(b, Some("legacy")) {
                if let Some(order) = p.get("order") {
                    return order
                        .split(';')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect();
                }
            }
        }
        self.get("bootdisk")
            .map(|d| vec![d.to_string()])
            .unwrap_or_default()
    }

    /// `args`: extra QEMU arguments, split shell-like.
    pub fn args(&self) -> Result<Vec<String>> {
        match self.get("args") {
            None => Ok(Vec::new()),
            Some(v) => split_args(v).map_err(|e| self.file.err_at("args", e)),
        }
    }

    /// `lock`, if the guest is locked (`backup`, `migrate`, ...).
    pub fn lock(&self) -> Option<&str> {
        self.get("lock")
    }

    /// `template: 1`.
    pub fn is_template(&self) -> bool {
        self.get("template").and_then(parse_bool).unwrap_or(false)
    }

    /// All disks of the main section, in file order.
    pub fn drives(&self) -> Result<Vec<Drive>> {
        let mut out = Vec::new();
        for (key, value, no) in self.file.main().entries() {
            if let Some(dk) = DriveKey::parse(key) {
                out.push(Drive::parse(dk, value).map_err(|e| e.at(&self.file.source, no))?);
            }
        }
        Ok(out)
    }

    /// One disk.
    pub fn drive(&self, key: DriveKey) -> Result<Option<Drive>> {
        let k = key.to_string();
        self.get(&k)
            .map(|v| Drive::parse(key, v).map_err(|e| self.file.err_at(&k, e)))
            .transpose()
    }

    /// Replace (or add) a disk definition.
    pub fn set_drive(&mut self, drive: &Drive) {
        self.file
            .main_mut()
            .set(&drive.key.to_string(), &drive.to_string());
    }

    /// All `netN` devices in file order.
    pub fn nets(&self) -> Result<Vec<NetDevice>> {
        let mut out = Vec::new();
        for (key, value, no) in self.file.main().entries() {
            if let Some(i) = indexed(key, "net") {
                out.push(NetDevice::parse(i, value).map_err(|e| e.at(&self.file.source, no))?);
            }
        }
        Ok(out)
    }

    /// Replace (or add) a network device.
    pub fn set_net(&mut self, net: &NetDevice) {
        self.file
            .main_mut()
            .set(&format!("net{}", net.index), &net.props.to_string());
    }

    /// `unusedN` volumes.
    pub fn unused(&self) -> Vec<(&str, &str)> {
        self.entries()
            .filter(|(k, _)| indexed(k, "unused").is_some())
            .collect()
    }

    pub(crate) fn file(&self) -> &GuestFile {
        &self.file
    }
}

impl fmt::Display for QemuConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.file.fmt(f)
    }
}

/// `prefix<N>` → N.
pub(crate) fn indexed(key: &str, prefix: &str) -> Option<u32> {
    let n = key.strip_prefix(prefix)?;
    if n.is_empty() || (n.len() > 1 && n.starts_with('0')) {
        return None;
    }
    n.parse().ok()
}

fn parse_num(key: &str, v: &str) -> Result<u64> {
    v.parse::<u64>()
        .map_err(|_| Error::value(key, format!("'{v}' is not a non-negative integer")))
}

fn parse_memory(v: &str) -> Result<u64> {
    let p = PropertyString::parse(v, Some("current"))?;
    let cur = p
        .get("current")
        .ok_or_else(|| Error::value("memory", "no size"))?;
    let n = parse_num("memory", cur)?;
    if n < 16 {
        return Err(Error::value(
            "memory",
            format!("{n} MiB is below the minimum of 16"),
        ));
    }
    Ok(n)
}

/// Validate the value of a typed key (everything else is free text).
fn check_value(key: &str, value: &str) -> Result<()> {
    match key {
        "cores" | "sockets" | "vcpus" => {
            let n = parse_num(key, value)?;
            if n == 0 {
                return Err(Error::value(key, "must be at least 1"));
            }
        }
        "memory" => {
            parse_memory(value)?;
        }
        "balloon" | "shares" | "cpuunits" => {
            parse_num(key, value)?;
        }
        "agent" => {
            AgentOptions::parse(value)?;
        }
        "onboot" | "template" | "protection" | "kvm" | "acpi" | "tablet" | "numa" => {
            if parse_bool(value).is_none() {
                return Err(Error::value(key, format!("'{value}' is not a boolean")));
            }
        }
        "args" => {
            split_args(value)?;
        }
        _ => {
            if let Some(dk) = DriveKey::parse(key) {
                Drive::parse(dk, value).map_err(|e| match e {
                    Error::Value { .. } => e,
                    other => Error::value(key, other.to_string()),
                })?;
            } else if let Some(i) = indexed(key, "net") {
                NetDevice::parse(i, value)?;
            }
        }
    }
    Ok(())
}

/// Split a command line the way a POSIX shell splits words: whitespace separates, single
/// quotes are literal, double quotes allow `\"`, `\\`, `\$`, `` \` ``; a backslash outside quotes
/// escapes the next character.
pub fn split_args(s: &str) -> Result<Vec<String>> {
    split_words(s).map_err(|m| Error::value("args", m))
}

/// [`split_args`] with a bare message as error, for callers naming their own key.
pub(crate) fn split_words(s: &str) -> std::result::Result<Vec<String>, &'static str> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("unterminated single quote"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(n @ ('"' | '\\' | '$' | '`')) => cur.push(n),
                            Some(n) => {
                                cur.push('\\');
                                cur.push(n);
                            }
                            None => return Err("unterminated double quote"),
                        },
                        Some(c) => cur.push(c),
                        None => return Err("unterminated double quote"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(n) => cur.push(n),
                    None => return Err("trailing backslash"),
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// Whether a line kind is a main-section entry with this key (used by the backup copy).
pub(crate) fn entry_key(kind: &LineKind) -> Option<&str> {
    match kind {
        LineKind::Entry { key, .. } => Some(key),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_sections_are_added_found_and_removed() {
        for text in [
            "memory: 512\nscsi0: local:100/vm-100-disk-0.raw\n",
            "memory: 512\n\n[snap1]\nmemory: 256\n",
            "memory: 512",
        ] {
            let mut c = QemuConfig::parse(text, "t").unwrap();
            assert_eq!(c.special("fleecing", "fleecing-images"), None);
            c.set_special(
                "fleecing",
                "fleecing-images",
                "local:100/vm-100-fleece-0.qcow2",
            )
            .unwrap();
            let out = c.to_string();
            assert!(
                out.ends_with(
                    "\n\n[special:fleecing]\nfleecing-images: local:100/vm-100-fleece-0.qcow2\n"
                ),
                "{out:?}"
            );
            let again = QemuConfig::parse(&out, "t").unwrap();
            assert_eq!(
                again.special("fleecing", "fleecing-images"),
                Some("local:100/vm-100-fleece-0.qcow2")
            );
            assert_eq!(again.sections().len(), c.sections().len());
            assert!(c.remove_special("fleecing"));
            assert!(!c.remove_special("fleecing"));
            let back = c.to_string();
            assert_eq!(back.trim_end(), text.trim_end(), "{back:?}");
        }
        let mut c = QemuConfig::parse("memory: 512\n", "t").unwrap();
        assert!(c.set_special("a b", "k", "v").is_err());
    }

    #[test]
    fn shell_split() {
        assert_eq!(
            split_args(
                r#"-kernel /a/vmlinuz -append "console=ttyS0 panic=-1 quiet" -x 'a b' c\ d"#
            )
            .unwrap(),
            vec![
                "-kernel",
                "/a/vmlinuz",
                "-append",
                "console=ttyS0 panic=-1 quiet",
                "-x",
                "a b",
                "c d"
            ]
        );
        assert_eq!(split_args(r#""" x"#).unwrap(), vec!["", "x"]);
        assert!(split_args("'open").is_err());
        assert!(split_args("\"open").is_err());
    }

    #[test]
    fn nets() {
        let n = NetDevice::parse(0, "virtio=BC:24:11:AA:BB:CC,bridge=vmbr0,firewall=1").unwrap();
        assert_eq!(n.model(), Some("virtio"));
        assert_eq!(n.macaddr(), Some("BC:24:11:AA:BB:CC"));
        let mut n2 = n.clone();
        n2.set_macaddr("02:00:00:00:00:01");
        assert_eq!(
            n2.props.to_string(),
            "virtio=02:00:00:00:00:01,bridge=vmbr0,firewall=1"
        );
        let n = NetDevice::parse(1, "model=e1000,macaddr=02:00:00:00:00:02").unwrap();
        assert_eq!(n.model(), Some("e1000"));
        assert_eq!(n.macaddr(), Some("02:00:00:00:00:02"));
        assert!(NetDevice::parse(0, "virtio=zz:zz").is_err());
        assert!(NetDevice::parse(0, "bridge=vmbr0").is_err());
    }
}

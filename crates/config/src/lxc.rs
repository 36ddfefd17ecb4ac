//! Container configs (`lxc/<vmid>.conf`): parsed and written back unchanged, with typed
//! access to `hostname`, `rootfs` and `mpN`.

use std::fmt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::guestfile::{GuestFile, SectionKind};
use crate::propstring::PropertyString;
use crate::qemu::indexed;
use crate::volume::VolumeRef;

/// A mount point: `rootfs` or `mpN` (`[volume=]<vol>,mp=<path>,size=..,backup=..`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPoint {
    /// `rootfs` or `mpN`.
    pub key: String,
    /// The property string.
    pub props: PropertyString,
}

impl MountPoint {
    /// Parse a `rootfs`/`mpN` value.
    pub fn parse(key: &str, value: &str) -> Result<Self> {
        let props = PropertyString::parse(value, Some("volume"))?;
        let mp = MountPoint {
            key: key.to_string(),
            props,
        };
        let vol = mp
            .props
            .get("volume")
            .ok_or_else(|| Error::value(key, "no volume"))?;
        VolumeRef::parse(vol)?;
        if key != "rootfs" && mp.props.get("mp").is_none() {
            return Err(Error::value(key, "no mount path (mp=)"));
        }
        mp.props.get_bool("backup")?;
        Ok(mp)
    }

    /// The volume (`local:100/vm-100-disk-0.raw`, `local:subvol-100-disk-0`, or a host path
    /// for bind mounts).
    pub fn volume(&self) -> &str {
        self.props.get("volume").unwrap_or("")
    }

    /// The mount path in the container (`/` for rootfs).
    pub fn path(&self) -> &str {
        if self.key == "rootfs" {
            "/"
        } else {
            self.props.get("mp").unwrap_or("")
        }
    }

    /// Whether vzdump includes it: rootfs always, `mpN` only with `backup=1`.
    pub fn backup(&self) -> bool {
        self.key == "rootfs"
            || self
                .props
                .get_bool("backup")
                .ok()
                .flatten()
                .unwrap_or(false)
    }
}

/// An LXC container config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LxcConfig {
    file: GuestFile,
}

impl LxcConfig {
    /// Parse text; `source` names the file in errors.
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        let cfg = LxcConfig {
            file: GuestFile::parse(text, source)?,
        };
        for s in &cfg.file.sections {
            if matches!(s.kind, SectionKind::Special(_)) {
                continue;
            }
            for (k, v, no) in s.entries() {
                if k == "rootfs" || indexed(k, "mp").is_some() {
                    MountPoint::parse(k, v).map_err(|e| e.at(source, no))?;
                }
            }
        }
        Ok(cfg)
    }

    /// Read `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::file::read_text(path)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Write atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::file::write_atomic(path, self.to_string().as_bytes())
    }

    /// A main-section value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.file.main().value(key)
    }

    /// Set a main-section value.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        if value.is_empty() || value.contains('\n') {
            return Err(Error::value(key, "empty or multi-line value"));
        }
        if key == "rootfs" || indexed(key, "mp").is_some() {
            MountPoint::parse(key, value)?;
        }
        self.file.main_mut().set(key, value);
        Ok(())
    }

    /// Remove a main-section key; returns its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.file.main_mut().remove(key)
    }

    /// Main-section entries `(key, value)` in file order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.file.main().entries().map(|(k, v, _)| (k, v))
    }

    /// `lock`.
    pub fn lock(&self) -> Option<&str> {
        self.get("lock")
    }

    /// `unprivileged: 1`.
    pub fn unprivileged(&self) -> bool {
        self.get("unprivileged")
            .and_then(crate::propstring::parse_bool)
            .unwrap_or(false)
    }

    /// The config as vzdump stores it in the archive (`./etc/vzdump/pct.conf`): the main
    /// section without `lock`, `parent`, and without snapshot and pending sections.
    pub fn backup_copy(&self) -> LxcConfig {
        let mut c = self.clone();
        c.file
            .sections
            .retain(|s| !matches!(s.kind, SectionKind::Snapshot(_) | SectionKind::Pending));
        c.remove("lock");
        c.remove("parent");
        c
    }

    /// `hostname`.
    pub fn hostname(&self) -> Option<&str> {
        self.get("hostname")
    }

    /// `rootfs`.
    pub fn rootfs(&self) -> Result<Option<MountPoint>> {
        self.get("rootfs")
            .map(|v| MountPoint::parse("rootfs", v))
            .transpose()
    }

    /// `mpN` mount points in file order.
    pub fn mount_points(&self) -> Result<Vec<MountPoint>> {
        self.file
            .main()
            .entries()
            .filter(|(k, _, _)| indexed(k, "mp").is_some())
            .map(|(k, v, no)| MountPoint::parse(k, v).map_err(|e| e.at(&self.file.source, no)))
            .collect()
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
}

impl fmt::Display for LxcConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.file.fmt(f)
    }
}

//! Listing a backup storage and editing its backups: notes, protection, removal.
//!
//! A listing reads the directory once; the `.notes`/`.protected` markers are found in the same
//! pass, so only archives (for their size) and existing notes files are touched again.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use chrono::{Local, NaiveDateTime, TimeZone};
use serde::Serialize;
use vmdump_config::ConfigRoot;

use crate::error::{Error, Result};
use crate::layout::{self, parse_archive_name, GuestType};

/// A backup storage: a storage id and its dump directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storage {
    id: String,
    dir: PathBuf,
    max_protected: Option<i64>,
}

/// Which backups to list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this guest.
    pub vmid: Option<u32>,
    /// Only this guest type.
    pub kind: Option<GuestType>,
}

impl Filter {
    fn matches(&self, kind: GuestType, vmid: u32) -> bool {
        self.vmid.is_none_or(|v| v == vmid) && self.kind.is_none_or(|k| k == kind)
    }
}

/// One backup on a storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backup {
    /// `<storage>:backup/<file name>`.
    pub volid: String,
    /// Guest id.
    pub vmid: u32,
    /// Guest type.
    #[serde(rename = "type")]
    pub kind: GuestType,
    /// Backup start, seconds since the epoch (from the name; the file's mtime for renamed
    /// backups).
    pub time: i64,
    /// Archive size in bytes.
    pub size: u64,
    /// `zst`, `lzo`, `gz`, `bz2`, or `None`.
    pub compression: Option<&'static str>,
    /// The notes (first line), if any.
    pub notes: Option<String>,
    /// Whether it is protected.
    pub protected: bool,
    /// Start time from the name (local wall clock); `None` for a renamed backup.
    #[serde(skip)]
    pub local_time: Option<NaiveDateTime>,
    /// The archive's file name.
    #[serde(skip)]
    pub file_name: String,
    /// `vzdump-<type>-<vmid>-<time>` (the `.log`'s stem).
    #[serde(skip)]
    pub base: String,
}

impl Storage {
    /// The storage `id` from `storage.cfg` of `root`; it must be a path storage allowing
    /// content `backup`.
    pub fn open(root: &ConfigRoot, id: &str) -> Result<Self> {
        let cfg = root.storage().map_err(Error::Config)?;
        let entry = cfg.storage(id).map_err(Error::Config)?;
        if !entry.has_content("backup") {
            return Err(Error::Storage {
                storage: id.to_string(),
                msg: "does not allow content 'backup'".into(),
            });
        }
        let base = cfg.base_path(id).map_err(Error::Config)?;
        Ok(Storage {
            id: id.to_string(),
            dir: base.join("dump"),
            max_protected: entry.max_protected_backups(),
        })
    }

    /// A storage at a plain directory (a `dumpdir`, or tests).
    pub fn at(id: &str, dir: impl Into<PathBuf>) -> Self {
        Storage {
            id: id.to_string(),
            dir: dir.into(),
            max_protected: None,
        }
    }

    /// Sets `max-protected-backups` (`-1` = unlimited; unset = 5, Proxmox's default).
    pub fn with_max_protected(mut self, max: Option<i64>) -> Self {
        self.max_protected = max;
        self
    }

    /// The storage id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The dump directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `max-protected-backups` with Proxmox's default of 5; `None` = unlimited.
    pub fn max_protected(&self) -> Option<u64> {
        match self.max_protected {
            Some(n) if n < 0 => None,
            Some(n) => Some(n as u64),
            None => Some(5),
        }
    }

    /// The backups matching `filter`, sorted by volid (Proxmox's order). A missing
    /// directory is an empty storage.
    pub fn list(&self, filter: &Filter) -> Result<Vec<Backup>> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read", &self.dir, e)),
        };
        let mut names = Vec::new();
        let mut markers = HashSet::new();
        for entry in rd {
            let entry = entry.map_err(|e| Error::io("read", &self.dir, e))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.ends_with(".notes") || name.ends_with(".protected") {
                markers.insert(name);
            } else if name.starts_with("vzdump-") {
                names.push(name);
            }
        }
        let mut out = Vec::new();
        for name in names {
            let Some(info) = parse_archive_name(&name) else {
                continue;
            };
            if !filter.matches(info.kind, info.vmid) {
                continue;
            }
            let path = self.dir.join(&name);
            let meta = match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => m,
                Ok(_) => continue,
                // Removed while listing.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("stat", &path, e)),
            };
            let notes = if markers.contains(&format!("{name}.notes")) {
                read_notes(&layout::notes_path(&path))?
            } else {
                None
            };
            let time = match info.time {
                Some(t) => local_epoch(&t),
                None => meta
                    .modified()
                    .ok()
                    .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs() as i64),
            };
            out.push(Backup {
                volid: format!("{}:backup/{name}", self.id),
                vmid: info.vmid,
                kind: info.kind,
                time,
                size: meta.len(),
                compression: info.compression,
                notes,
                protected: markers.contains(&format!("{name}.protected")),
                local_time: info.time,
                file_name: name,
                base: info.base,
            });
        }
        out.sort_by(|a, b| a.volid.cmp(&b.volid));
        Ok(out)
    }

    /// The backup with this volid (`<storage>:backup/<file>`) or plain file name.
    pub fn backup(&self, volid: &str) -> Result<Backup> {
        let file = self.file_of(volid)?;
        let info = parse_archive_name(file).ok_or_else(|| Error::InvalidVolid(volid.into()))?;
        self.list(&Filter {
            vmid: Some(info.vmid),
            kind: Some(info.kind),
        })?
        .into_iter()
        .find(|b| b.file_name == file)
        .ok_or_else(|| Error::NotFound(volid.to_string()))
    }

    /// The file name a volid names on this storage.
    fn file_of<'a>(&self, volid: &'a str) -> Result<&'a str> {
        let file = match volid.split_once(':') {
            Some((sid, rest)) if sid == self.id => rest
                .strip_prefix("backup/")
                .ok_or_else(|| Error::InvalidVolid(volid.into()))?,
            Some(_) => return Err(Error::InvalidVolid(volid.into())),
            None => volid,
        };
        if file.is_empty() || file.contains('/') || parse_archive_name(file).is_none() {
            return Err(Error::InvalidVolid(volid.into()));
        }
        Ok(file)
    }

    /// The archive's path.
    pub fn path(&self, backup: &Backup) -> PathBuf {
        self.dir.join(&backup.file_name)
    }

    /// Sets the notes (one UTF-8 line; empty deletes the notes file).
    pub fn set_notes(&self, backup: &Backup, text: &str) -> Result<()> {
        let text = text.trim_end_matches('\n');
        if text.contains('\n') {
            return Err(Error::Notes("must be a single line".into()));
        }
        let path = layout::notes_path(&self.path(backup));
        if text.is_empty() {
            return remove_if_exists(&path);
        }
        vmdump_config::write_atomic(&path, text.as_bytes()).map_err(Error::Config)
    }

    /// Protects or unprotects a backup. Protecting checks `max-protected-backups` for the
    /// guest's backups on this storage.
    pub fn set_protected(&self, backup: &Backup, protected: bool) -> Result<()> {
        let path = layout::protected_path(&self.path(backup));
        if !protected {
            return remove_if_exists(&path);
        }
        if backup.protected {
            return Ok(());
        }
        self.check_protected_limit(backup.kind, backup.vmid)?;
        std::fs::write(&path, b"").map_err(|e| Error::io("write", &path, e))
    }

    /// Fails if the guest already has `max-protected-backups` protected backups here.
    pub fn check_protected_limit(&self, kind: GuestType, vmid: u32) -> Result<()> {
        let Some(max) = self.max_protected() else {
            return Ok(());
        };
        let count = self
            .list(&Filter {
                vmid: Some(vmid),
                kind: Some(kind),
            })?
            .iter()
            .filter(|b| b.protected)
            .count() as u64;
        if count >= max {
            return Err(Error::Limit(format!(
                "backup limit of {max} protected backups for guest {vmid} on storage '{}' \
                 reached (max-protected-backups)",
                self.id
            )));
        }
        Ok(())
    }

    /// Removes a backup: the archive, its `.log` and `.notes`. Refused for a protected
    /// backup (the marker is checked on disk, now).
    pub fn remove(&self, backup: &Backup) -> Result<()> {
        let archive = self.path(backup);
        if layout::protected_path(&archive).exists() {
            return Err(Error::Protected(backup.volid.clone()));
        }
        remove_if_exists(&archive)?;
        remove_if_exists(&self.dir.join(format!("{}.log", backup.base)))?;
        remove_if_exists(&layout::notes_path(&archive))
    }
}

/// Seconds since the epoch of a local wall-clock time (the earliest, if it is ambiguous).
fn local_epoch(t: &NaiveDateTime) -> i64 {
    Local
        .from_local_datetime(t)
        .earliest()
        .map_or_else(|| t.and_utc().timestamp(), |l| l.timestamp())
}

fn read_notes(path: &Path) -> Result<Option<String>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let line = text.lines().next().unwrap_or("").to_string();
            Ok((!line.is_empty()).then_some(line))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

//! `storage.cfg`: storage definitions in Proxmox section-config syntax.
//!
//! ```text
//! dir: local
//!         path /var/lib/vmdump
//!         content images,rootdir,iso,vztmpl,backup
//!         prune-backups keep-last=3
//! ```
//!
//! (property lines are indented with one tab)
//!
//! A header `<type>: <id>` starts an entry; indented `key [value]` lines are its properties (a
//! key alone is a flag, i.e. `1`); a blank line ends it; `#` lines are comments. Types `dir`
//! and `btrfs` are understood; any other type is kept as an entry vmdump cannot use. Every line
//! keeps its text, so an unedited file writes back byte for byte.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::keep::KeepOptions;
use crate::propstring::parse_bool;

/// Where the implicit `local` storage lives when there is no storage.cfg. Proxmox uses
/// `/var/lib/vz`; vmdump is standalone and keeps its own tree. [`crate::ConfigRoot`] can
/// override it (environment variable `VMDUMP_LOCAL_PATH`).
pub const DEFAULT_LOCAL_PATH: &str = "/var/lib/vmdump";

/// Content types Proxmox knows.
pub const CONTENT_TYPES: [&str; 8] = [
    "images", "rootdir", "vztmpl", "iso", "backup", "snippets", "import", "none",
];

/// Properties of `dir` and `btrfs` storages in Proxmox's schema; others get a warning with
/// their line (a typo such as `contents` would otherwise be silently ignored).
const PROPERTIES: [&str; 17] = [
    "path",
    "content",
    "content-dirs",
    "shared",
    "disable",
    "nodes",
    "format",
    "preallocation",
    "prune-backups",
    "max-protected-backups",
    "maxfiles",
    "mkdir",
    "create-base-path",
    "create-subdirs",
    "is_mountpoint",
    "bwlimit",
    "snapshot-as-volume-chain",
];

/// Storage type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageType {
    /// A directory (`dir`).
    Dir,
    /// A btrfs file system (`btrfs`): raw images are subvolumes holding `disk.raw`.
    Btrfs,
    /// Anything else (`lvmthin`, `zfspool`, `nfs`, `pbs`, ...): kept, not usable by vmdump.
    Other(String),
}

impl StorageType {
    fn parse(s: &str) -> Self {
        match s {
            "dir" => StorageType::Dir,
            "btrfs" => StorageType::Btrfs,
            o => StorageType::Other(o.to_string()),
        }
    }

    /// The name as written in storage.cfg.
    pub fn as_str(&self) -> &str {
        match self {
            StorageType::Dir => "dir",
            StorageType::Btrfs => "btrfs",
            StorageType::Other(s) => s,
        }
    }

    /// Whether vmdump can hold files on it (dir and btrfs are both path based).
    pub fn is_path_based(&self) -> bool {
        matches!(self, StorageType::Dir | StorageType::Btrfs)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PropLine {
    Prop {
        raw: String,
        key: String,
        value: Option<String>,
        no: usize,
    },
    Comment(String),
}

/// One storage definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageEntry {
    kind: StorageType,
    id: String,
    header_raw: String,
    lines: Vec<PropLine>,
    no: usize,
}

impl StorageEntry {
    /// A new entry with the given properties (rendered with a tab indent, as Proxmox does).
    pub fn new(kind: StorageType, id: &str, props: &[(&str, &str)]) -> Result<Self> {
        if !valid_storage_id(id) {
            return Err(Error::value(
                "storage",
                format!("invalid storage id '{id}'"),
            ));
        }
        let mut e = StorageEntry {
            header_raw: format!("{}: {id}", kind.as_str()),
            kind,
            id: id.to_string(),
            lines: Vec::new(),
            no: 0,
        };
        for (k, v) in props {
            e.set(k, v);
        }
        e.validate()?;
        Ok(e)
    }

    /// The storage id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The type.
    pub fn kind(&self) -> &StorageType {
        &self.kind
    }

    /// 1-based line of the header in storage.cfg (0 for entries not read from a file).
    pub fn line(&self) -> usize {
        self.no
    }

    /// A property's value; flags written without a value read as `"1"`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.lines.iter().find_map(|l| match l {
            PropLine::Prop { key: k, value, .. } if k == key => {
                Some(value.as_deref().unwrap_or("1"))
            }
            _ => None,
        })
    }

    /// All properties in file order; flags without a value read as `"1"`.
    pub fn props(&self) -> impl Iterator<Item = (&str, &str)> {
        self.lines.iter().filter_map(|l| match l {
            PropLine::Prop { key, value, .. } => {
                Some((key.as_str(), value.as_deref().unwrap_or("1")))
            }
            PropLine::Comment(_) => None,
        })
    }

    /// Set a property (replacing its line, or appending `\t<key> <value>`).
    pub fn set(&mut self, key: &str, value: &str) {
        let raw = format!("\t{key} {value}");
        for l in &mut self.lines {
            if let PropLine::Prop {
                key: k,
                value: v,
                raw: r,
                ..
            } = l
            {
                if k == key {
                    *v = Some(value.to_string());
                    *r = raw;
                    return;
                }
            }
        }
        self.lines.push(PropLine::Prop {
            raw,
            key: key.to_string(),
            value: Some(value.to_string()),
            no: 0,
        });
    }

    /// Remove a property.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let pos = self
            .lines
            .iter()
            .position(|l| matches!(l, PropLine::Prop { key: k, .. } if k == key))?;
        match self.lines.remove(pos) {
            PropLine::Prop { value, .. } => Some(value.unwrap_or_else(|| "1".into())),
            PropLine::Comment(_) => None,
        }
    }

    /// `path`: the base directory of dir/btrfs storages.
    pub fn path(&self) -> Option<&Path> {
        self.get("path").map(Path::new)
    }

    /// `content` as a list (empty if unset).
    pub fn content(&self) -> Vec<&str> {
        self.get("content")
            .map(|c| {
                c.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether `content` lists `what` (`images`, `backup`, ...).
    pub fn has_content(&self, what: &str) -> bool {
        self.content().contains(&what)
    }

    /// `prune-backups`, if set.
    pub fn prune_backups(&self) -> Result<Option<KeepOptions>> {
        self.get("prune-backups")
            .map(KeepOptions::parse)
            .transpose()
    }

    /// `shared`.
    pub fn shared(&self) -> bool {
        self.get("shared").and_then(parse_bool).unwrap_or(false)
    }

    /// `disable`.
    pub fn disabled(&self) -> bool {
        self.get("disable").and_then(parse_bool).unwrap_or(false)
    }

    /// `nodes` (empty: all nodes).
    pub fn nodes(&self) -> Vec<&str> {
        self.get("nodes")
            .map(|n| {
                n.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `max-protected-backups` (-1: unlimited).
    pub fn max_protected_backups(&self) -> Option<i64> {
        self.get("max-protected-backups")
            .and_then(|v| v.parse().ok())
    }

    /// `format`: the default image format of the storage.
    pub fn format(&self) -> Option<&str> {
        self.get("format")
    }

    /// `preallocation` (`off|metadata|falloc|full`).
    pub fn preallocation(&self) -> Option<&str> {
        self.get("preallocation")
    }

    /// The default format for new images: `format`, else `raw` (Proxmox's default for both
    /// dir and btrfs).
    pub fn default_format(&self) -> &str {
        self.format().unwrap_or("raw")
    }

    fn prop_line(&self, key: &str) -> usize {
        self.lines
            .iter()
            .find_map(|l| match l {
                PropLine::Prop { key: k, no, .. } if k == key => Some(*no),
                _ => None,
            })
            .unwrap_or(self.no)
    }

    fn validate(&self) -> Result<()> {
        let at =
            |key: &str, msg: String| Error::value(key, msg).at("storage.cfg", self.prop_line(key));
        if self.kind.is_path_based() {
            match self.path() {
                None => {
                    return Err(Error::value(
                        "path",
                        format!("{} storage '{}' has no path", self.kind.as_str(), self.id),
                    )
                    .at("storage.cfg", self.no))
                }
                Some(p) if !p.is_absolute() => {
                    return Err(at("path", format!("'{}' is not absolute", p.display())))
                }
                _ => {}
            }
        }
        if self.kind.is_path_based() {
            for c in self.content() {
                if !CONTENT_TYPES.contains(&c) {
                    return Err(at("content", format!("unknown content type '{c}'")));
                }
            }
        }
        for flag in ["shared", "disable"] {
            if let Some(v) = self.get(flag) {
                if parse_bool(v).is_none() {
                    return Err(at(flag, format!("'{v}' is not a boolean")));
                }
            }
        }
        if let Some(v) = self.get("max-protected-backups") {
            if v.parse::<i64>().map_or(true, |n| n < -1) {
                return Err(at(
                    "max-protected-backups",
                    format!("'{v}' is not an integer >= -1"),
                ));
            }
        }
        if let Some(f) = self.format() {
            if self.kind.is_path_based() && !["raw", "qcow2", "vmdk", "subvol"].contains(&f) {
                return Err(at("format", format!("unknown format '{f}'")));
            }
        }
        if let Some(p) = self.preallocation() {
            if !["off", "metadata", "falloc", "full"].contains(&p) {
                return Err(at("preallocation", format!("unknown preallocation '{p}'")));
            }
        }
        if let Err(e) = self.prune_backups() {
            return Err(at("prune-backups", e.to_string()));
        }
        Ok(())
    }

    fn write(&self, out: &mut String) {
        out.push_str(&self.header_raw);
        out.push('\n');
        for l in &self.lines {
            match l {
                PropLine::Prop { raw, .. } | PropLine::Comment(raw) => out.push_str(raw),
            }
            out.push('\n');
        }
    }
}

/// Storage ids: a letter, then letters, digits, `-`, `_`, `.`; no trailing punctuation.
pub fn valid_storage_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphabetic()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
        && b[b.len() - 1].is_ascii_alphanumeric()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    /// Blank or comment line outside entries, kept as is.
    Other(String),
    Entry(StorageEntry),
}

/// The parsed storage.cfg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    items: Vec<Item>,
    /// Whether the text ended without a newline (kept for byte-exact output).
    no_final_eol: bool,
    /// What parsing ignored (`file:line: ...`).
    warnings: Vec<String>,
}

impl StorageConfig {
    /// Parse storage.cfg text; `source` names the file in errors.
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        let mut items = Vec::new();
        let mut current: Option<StorageEntry> = None;
        let mut ids = std::collections::HashMap::new();
        let mut warnings = Vec::new();
        let lines: Vec<&str> = text.split('\n').collect();
        let no_final_eol = !text.is_empty() && !text.ends_with('\n');
        let count = if text.ends_with('\n') || text.is_empty() {
            lines.len() - 1
        } else {
            lines.len()
        };
        let finish = |cur: &mut Option<StorageEntry>, items: &mut Vec<Item>| -> Result<()> {
            if let Some(e) = cur.take() {
                e.validate().map_err(|err| match err {
                    Error::Parse { line, msg, .. } => Error::parse(source, line, msg),
                    other => other,
                })?;
                items.push(Item::Entry(e));
            }
            Ok(())
        };
        for (i, raw) in lines.iter().take(count).enumerate() {
            let no = i + 1;
            let text = raw.trim_end_matches('\r');
            if text.trim().is_empty() {
                finish(&mut current, &mut items)?;
                items.push(Item::Other(raw.to_string()));
                continue;
            }
            if text.trim_start().starts_with('#') {
                match &mut current {
                    Some(e) => e.lines.push(PropLine::Comment(raw.to_string())),
                    None => items.push(Item::Other(raw.to_string())),
                }
                continue;
            }
            if text.starts_with([' ', '\t']) {
                let Some(e) = &mut current else {
                    return Err(Error::parse(
                        source,
                        no,
                        format!(
                            "property line outside of a storage entry: '{}'",
                            text.trim()
                        ),
                    ));
                };
                let t = text.trim();
                let (key, value) = match t.split_once(char::is_whitespace) {
                    Some((k, v)) => (k, Some(v.trim().to_string())),
                    None => (t, None),
                };
                if e.get(key).is_some() {
                    return Err(Error::parse(
                        source,
                        no,
                        format!("duplicate property '{key}' in storage '{}'", e.id),
                    ));
                }
                if e.kind.is_path_based() && !PROPERTIES.contains(&key) {
                    warnings.push(format!(
                        "{source}:{no}: unknown property '{key}' of storage '{}' ignored",
                        e.id
                    ));
                }
                e.lines.push(PropLine::Prop {
                    raw: raw.to_string(),
                    key: key.to_string(),
                    value,
                    no,
                });
                continue;
            }
            let Some((kind, id)) = text.split_once(':') else {
                // Most likely a property line that lost its indent: say so at this line,
                // before the entry it belongs to is checked (and found wanting).
                let hint = if current.is_some() {
                    " (property lines must be indented)"
                } else {
                    ""
                };
                return Err(Error::parse(
                    source,
                    no,
                    format!(
                        "expected '<type>: <storage id>', found '{}'{hint}",
                        text.trim()
                    ),
                ));
            };
            finish(&mut current, &mut items)?;
            let (kind, id) = (kind.trim(), id.trim());
            if kind.is_empty() || kind.contains(char::is_whitespace) || !valid_storage_id(id) {
                return Err(Error::parse(
                    source,
                    no,
                    format!("invalid storage header '{}'", text.trim()),
                ));
            }
            if let Some(first) = ids.insert(id.to_string(), no) {
                return Err(Error::parse(
                    source,
                    no,
                    format!("duplicate storage id '{id}' (first at line {first})"),
                ));
            }
            current = Some(StorageEntry {
                kind: StorageType::parse(kind),
                id: id.to_string(),
                header_raw: raw.to_string(),
                lines: Vec::new(),
                no,
            });
        }
        finish(&mut current, &mut items)?;
        for w in &warnings {
            tracing::warn!("{w}");
        }
        Ok(StorageConfig {
            items,
            no_final_eol,
            warnings,
        })
    }

    /// Read a storage.cfg file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::file::read_text(path)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The configuration used when there is no storage.cfg: one `dir` storage `local` at
    /// `local_path` for every content type vmdump uses.
    pub fn default_with_local(local_path: &Path) -> Self {
        let text = format!(
            "dir: local\n\tpath {}\n\tcontent images,rootdir,iso,vztmpl,backup,snippets\n",
            local_path.display()
        );
        Self::parse(&text, "<default storage.cfg>").expect("the default storage.cfg is valid")
    }

    /// What parsing ignored, as `file:line: ...` messages (unknown properties).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// All entries in file order.
    pub fn entries(&self) -> impl Iterator<Item = &StorageEntry> {
        self.items.iter().filter_map(|i| match i {
            Item::Entry(e) => Some(e),
            Item::Other(_) => None,
        })
    }

    /// The entry with this id.
    pub fn get(&self, id: &str) -> Option<&StorageEntry> {
        self.entries().find(|e| e.id == id)
    }

    /// The entry with this id, or [`Error::NoSuchStorage`].
    pub fn storage(&self, id: &str) -> Result<&StorageEntry> {
        self.get(id)
            .ok_or_else(|| Error::NoSuchStorage(id.to_string()))
    }

    /// Mutable access to an entry.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut StorageEntry> {
        self.items.iter_mut().find_map(|i| match i {
            Item::Entry(e) if e.id == id => Some(e),
            _ => None,
        })
    }

    /// Add an entry at the end (separated by a blank line).
    pub fn add(&mut self, entry: StorageEntry) -> Result<()> {
        if self.get(&entry.id).is_some() {
            return Err(Error::Storage {
                storage: entry.id,
                msg: "already exists".into(),
            });
        }
        if self.no_final_eol {
            self.no_final_eol = false;
        }
        if matches!(self.items.last(), Some(Item::Entry(_))) {
            self.items.push(Item::Other(String::new()));
        }
        self.items.push(Item::Entry(entry));
        Ok(())
    }

    /// Remove an entry.
    pub fn remove(&mut self, id: &str) -> Option<StorageEntry> {
        let pos = self
            .items
            .iter()
            .position(|i| matches!(i, Item::Entry(e) if e.id == id))?;
        match self.items.remove(pos) {
            Item::Entry(e) => Some(e),
            Item::Other(_) => None,
        }
    }

    /// Write atomically (temp file + rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::file::write_atomic(path, self.to_string().as_bytes())
    }

    /// Every storage that can hold `content` and is enabled.
    pub fn with_content<'a>(&'a self, content: &'a str) -> impl Iterator<Item = &'a StorageEntry> {
        self.entries()
            .filter(move |e| !e.disabled() && e.has_content(content))
    }

    /// The base path of a path-based storage, or an error naming the storage.
    pub fn base_path(&self, id: &str) -> Result<PathBuf> {
        let e = self.storage(id)?;
        if !e.kind.is_path_based() {
            return Err(Error::Storage {
                storage: id.to_string(),
                msg: format!("type '{}' is not supported by vmdump", e.kind.as_str()),
            });
        }
        e.path()
            .map(Path::to_path_buf)
            .ok_or_else(|| Error::Storage {
                storage: id.to_string(),
                msg: "no path".into(),
            })
    }
}

impl fmt::Display for StorageConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        for item in &self.items {
            match item {
                Item::Other(raw) => {
                    out.push_str(raw);
                    out.push('\n');
                }
                Item::Entry(e) => e.write(&mut out),
            }
        }
        if self.no_final_eol && out.ends_with('\n') {
            out.pop();
        }
        f.write_str(&out)
    }
}

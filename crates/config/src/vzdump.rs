//! `vzdump.conf`: backup defaults as `key: value` lines with `#` comments.
//!
//! Every key of the vzdump option schema that makes sense as a default is typed in
//! [`VzdumpOptions`]; an unknown key or an invalid value is an error at its line. The file's
//! text is kept, so it writes back byte for byte.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use vmdump_compress::Codec;

use crate::error::{Error, Result};
use crate::keep::KeepOptions;
use crate::propstring::{parse_bool, PropertyString};

/// Consistency mode of a backup (`mode`); the one definition used by `vzdump.conf`, the
/// engine and the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Live backup (default): fs-freeze, start the jobs, thaw; copy-before-write keeps the
    /// point in time.
    #[default]
    Snapshot,
    /// Pause the guest while the job starts.
    Suspend,
    /// Shut the guest down for the start of the backup.
    Stop,
}

impl Mode {
    /// The option value.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Snapshot => "snapshot",
            Mode::Suspend => "suspend",
            Mode::Stop => "stop",
        }
    }
}

impl FromStr for Mode {
    type Err = Error;

    /// `snapshot`, `suspend` or `stop`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "snapshot" => Ok(Mode::Snapshot),
            "suspend" => Ok(Mode::Suspend),
            "stop" => Ok(Mode::Stop),
            _ => Err(Error::value(
                "mode",
                format!("'{s}' is not one of snapshot, suspend, stop"),
            )),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `fleecing: [enabled=]<bool>[,storage=<id>]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fleecing {
    /// Whether fleecing is on.
    pub enabled: bool,
    /// Storage for the fleecing images (default: each disk's own storage).
    pub storage: Option<String>,
}

impl FromStr for Fleecing {
    type Err = Error;

    /// `[enabled=]<bool>[,storage=<id>]` (unknown keys and invalid storage ids are errors).
    fn from_str(v: &str) -> Result<Self> {
        let key = "fleecing";
        let p = PropertyString::parse(v, Some("enabled"))?;
        for (k, _) in p.iter() {
            if k != "enabled" && k != "storage" {
                return Err(Error::value(key, format!("unknown option '{k}'")));
            }
        }
        let storage = p.get("storage").map(str::to_string);
        if let Some(s) = &storage {
            if !crate::storage::valid_storage_id(s) {
                return Err(Error::value(key, format!("invalid storage id '{s}'")));
            }
        }
        Ok(Fleecing {
            enabled: p.get_bool("enabled")?.unwrap_or(false),
            storage,
        })
    }
}

/// `performance: max-workers=<1..256>,pbs-entries-max=<n>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Performance {
    /// Backup I/O workers for VMs (default 16).
    pub max_workers: Option<u32>,
    /// pxar in-memory entry limit (CT to PBS only).
    pub pbs_entries_max: Option<u64>,
}

impl Performance {
    /// `self` with the keys `over` sets replaced (the command line over `vzdump.conf`).
    pub fn merged(self, over: Performance) -> Performance {
        Performance {
            max_workers: over.max_workers.or(self.max_workers),
            pbs_entries_max: over.pbs_entries_max.or(self.pbs_entries_max),
        }
    }
}

impl FromStr for Performance {
    type Err = Error;

    /// `max-workers=<1..256>,pbs-entries-max=<n>` (unknown keys are errors).
    fn from_str(v: &str) -> Result<Self> {
        let key = "performance";
        let p = PropertyString::parse(v, None)?;
        let mut perf = Performance::default();
        for (k, val) in p.iter() {
            match k {
                "max-workers" => {
                    let n: u32 = int_opt(k, val)?;
                    if !(1..=256).contains(&n) {
                        return Err(Error::value(
                            key,
                            format!("max-workers {n} is not in 1..256"),
                        ));
                    }
                    perf.max_workers = Some(n);
                }
                "pbs-entries-max" => perf.pbs_entries_max = Some(int_opt(k, val)?),
                other => return Err(Error::value(key, format!("unknown option '{other}'"))),
            }
        }
        Ok(perf)
    }
}

/// Typed vzdump defaults; `None` means not set in vzdump.conf.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct VzdumpOptions {
    /// `mode`.
    pub mode: Option<Mode>,
    /// `compress`.
    pub compress: Option<Codec>,
    /// `zstd` threads (0: half the CPUs).
    pub zstd: Option<u32>,
    /// `pigz` threads.
    pub pigz: Option<u32>,
    /// `storage`.
    pub storage: Option<String>,
    /// `dumpdir`.
    pub dumpdir: Option<PathBuf>,
    /// `tmpdir`.
    pub tmpdir: Option<PathBuf>,
    /// `bwlimit` in KiB/s (0: unlimited).
    pub bwlimit: Option<u64>,
    /// `ionice` 0..=8.
    pub ionice: Option<u8>,
    /// `lockwait` in minutes.
    pub lockwait: Option<u64>,
    /// `stopwait` in minutes.
    pub stopwait: Option<u64>,
    /// `prune-backups`.
    pub prune_backups: Option<KeepOptions>,
    /// `remove`.
    pub remove: Option<bool>,
    /// `script`: hook script path.
    pub script: Option<PathBuf>,
    /// `exclude-path` (CT only), in order: each line split shell-like.
    pub exclude_path: Vec<String>,
    /// `stdexcludes`.
    pub stdexcludes: Option<bool>,
    /// `mailto`.
    pub mailto: Option<String>,
    /// `mailnotification` (`always|failure`).
    pub mailnotification: Option<String>,
    /// `notification-mode` (`auto|legacy-sendmail|notification-system`).
    pub notification_mode: Option<String>,
    /// `notes-template`.
    pub notes_template: Option<String>,
    /// `protected`.
    pub protected: Option<bool>,
    /// `fleecing`.
    pub fleecing: Option<Fleecing>,
    /// `performance`.
    pub performance: Option<Performance>,
    /// `pbs-change-detection-mode` (`legacy|data|metadata`).
    pub pbs_change_detection_mode: Option<String>,
    /// `node`.
    pub node: Option<String>,
    /// `quiet`.
    pub quiet: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    raw: String,
    entry: Option<(String, String)>,
}

/// The parsed vzdump.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VzdumpConf {
    lines: Vec<Line>,
    no_final_eol: bool,
    options: VzdumpOptions,
    warnings: Vec<String>,
}

/// `compress`: `0` or `none`, `1` or `lzo`, `gzip`, `zstd` ([`Codec`]'s spellings).
pub fn parse_compress(v: &str) -> Result<Codec> {
    v.parse().map_err(|_| {
        Error::value(
            "compress",
            format!("'{v}' is not one of 0, 1, gzip, lzo, zstd"),
        )
    })
}

fn bool_opt(key: &str, v: &str) -> Result<bool> {
    parse_bool(v).ok_or_else(|| Error::value(key, format!("'{v}' is not a boolean")))
}

fn int_opt<T: std::str::FromStr>(key: &str, v: &str) -> Result<T> {
    v.parse::<T>()
        .map_err(|_| Error::value(key, format!("'{v}' is not a valid non-negative integer")))
}

fn one_of(key: &str, v: &str, allowed: &[&str]) -> Result<String> {
    if allowed.contains(&v) {
        Ok(v.to_string())
    } else {
        Err(Error::value(
            key,
            format!("'{v}' is not one of {}", allowed.join(", ")),
        ))
    }
}

fn abs_path(key: &str, v: &str) -> Result<PathBuf> {
    if v.starts_with('/') {
        Ok(PathBuf::from(v))
    } else {
        Err(Error::value(key, format!("'{v}' is not an absolute path")))
    }
}

impl VzdumpOptions {
    /// Apply one `key: value`.
    pub fn apply(&mut self, key: &str, v: &str) -> Result<()> {
        match key {
            "mode" => self.mode = Some(v.parse()?),
            "compress" => self.compress = Some(parse_compress(v)?),
            "zstd" => self.zstd = Some(int_opt(key, v)?),
            "pigz" => self.pigz = Some(int_opt(key, v)?),
            "storage" => {
                if !crate::storage::valid_storage_id(v) {
                    return Err(Error::value(key, format!("invalid storage id '{v}'")));
                }
                self.storage = Some(v.to_string());
            }
            "dumpdir" => self.dumpdir = Some(abs_path(key, v)?),
            "tmpdir" => self.tmpdir = Some(abs_path(key, v)?),
            "bwlimit" => self.bwlimit = Some(int_opt(key, v)?),
            "ionice" => {
                let n: u8 = int_opt(key, v)?;
                if n > 8 {
                    return Err(Error::value(key, format!("{n} is above the maximum 8")));
                }
                self.ionice = Some(n);
            }
            "lockwait" => self.lockwait = Some(int_opt(key, v)?),
            "stopwait" => self.stopwait = Some(int_opt(key, v)?),
            "prune-backups" => self.prune_backups = Some(KeepOptions::parse(v)?),
            "maxfiles" => {
                return Err(Error::value(
                    key,
                    "was removed in Proxmox VE 9; use 'prune-backups: keep-last=N'",
                ))
            }
            "remove" => self.remove = Some(bool_opt(key, v)?),
            "script" => self.script = Some(abs_path(key, v)?),
            // One line holds shell-quoted patterns (Proxmox splits it like a command line);
            // repeated lines add up.
            "exclude-path" => self
                .exclude_path
                .extend(crate::qemu::split_words(v).map_err(|m| Error::value(key, m))?),
            "stdexcludes" => self.stdexcludes = Some(bool_opt(key, v)?),
            "mailto" => self.mailto = Some(v.to_string()),
            "mailnotification" => {
                self.mailnotification = Some(one_of(key, v, &["always", "failure"])?);
            }
            "notification-mode" => {
                self.notification_mode = Some(one_of(
                    key,
                    v,
                    &["auto", "legacy-sendmail", "notification-system"],
                )?);
            }
            "notes-template" => {
                if v.len() > 1024 {
                    return Err(Error::value(key, "longer than 1024 characters"));
                }
                self.notes_template = Some(v.to_string());
            }
            "protected" => self.protected = Some(bool_opt(key, v)?),
            "fleecing" => self.fleecing = Some(v.parse()?),
            "performance" => self.performance = Some(v.parse()?),
            "pbs-change-detection-mode" => {
                self.pbs_change_detection_mode =
                    Some(one_of(key, v, &["legacy", "data", "metadata"])?);
            }
            "node" => self.node = Some(v.to_string()),
            "quiet" => self.quiet = Some(bool_opt(key, v)?),
            other => return Err(Error::value(other, "unknown vzdump option")),
        }
        Ok(())
    }
}

/// Every key of the vzdump option schema [`VzdumpOptions::apply`] understands.
pub const KEYS: [&str; 27] = [
    "mode",
    "compress",
    "zstd",
    "pigz",
    "storage",
    "dumpdir",
    "tmpdir",
    "bwlimit",
    "ionice",
    "lockwait",
    "stopwait",
    "prune-backups",
    "maxfiles",
    "remove",
    "script",
    "exclude-path",
    "stdexcludes",
    "mailto",
    "mailnotification",
    "notification-mode",
    "notes-template",
    "protected",
    "fleecing",
    "performance",
    "pbs-change-detection-mode",
    "node",
    "quiet",
];

impl VzdumpConf {
    /// Parse text; `source` names the file in errors.
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        let mut options = VzdumpOptions::default();
        let mut lines = Vec::new();
        let mut seen = std::collections::HashMap::new();
        let mut warnings = Vec::new();
        let no_final_eol = !text.is_empty() && !text.ends_with('\n');
        let mut raws: Vec<&str> = text.split('\n').collect();
        if text.is_empty() || text.ends_with('\n') {
            raws.pop();
        }
        for (i, raw) in raws.into_iter().enumerate() {
            let no = i + 1;
            let t = raw.trim();
            if t.is_empty() || t.starts_with('#') {
                lines.push(Line {
                    raw: raw.to_string(),
                    entry: None,
                });
                continue;
            }
            let Some((key, value)) = t.split_once(':') else {
                return Err(Error::parse(
                    source,
                    no,
                    format!("expected 'key: value', found '{t}'"),
                ));
            };
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(Error::parse(source, no, format!("invalid key '{key}'")));
            }
            if value.is_empty() {
                return Err(Error::parse(source, no, format!("empty value for '{key}'")));
            }
            if !KEYS.contains(&key) {
                // Proxmox adds keys over time; a newer file must not stop every backup.
                warnings.push(format!("{source}:{no}: unknown key '{key}' ignored"));
                lines.push(Line {
                    raw: raw.to_string(),
                    entry: Some((key.to_string(), value.to_string())),
                });
                continue;
            }
            if key != "exclude-path" {
                if let Some(first) = seen.insert(key.to_string(), no) {
                    return Err(Error::parse(
                        source,
                        no,
                        format!("duplicate key '{key}' (first at line {first})"),
                    ));
                }
            }
            options.apply(key, value).map_err(|e| e.at(source, no))?;
            lines.push(Line {
                raw: raw.to_string(),
                entry: Some((key.to_string(), value.to_string())),
            });
        }
        Ok(VzdumpConf {
            lines,
            no_final_eol,
            options,
            warnings,
        })
    }

    /// Read `path`; a missing file is an empty config (all defaults).
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::parse("", "vzdump.conf"),
            Err(source) => Err(Error::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// The typed options.
    pub fn options(&self) -> &VzdumpOptions {
        &self.options
    }

    /// What parsing ignored, as `file:line: ...` messages (unknown keys).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The keys the file sets, in file order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.lines
            .iter()
            .filter_map(|l| l.entry.as_ref().map(|(k, _)| k.as_str()))
    }

    /// A raw value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.lines.iter().find_map(|l| match &l.entry {
            Some((k, v)) if k == key => Some(v.as_str()),
            _ => None,
        })
    }

    /// Set a value (validated), replacing its line or appending one.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let mut opts = self.options.clone();
        if key == "exclude-path" {
            return Err(Error::value(key, "is a list; edit the file"));
        }
        opts.apply(key, value)?;
        self.options = opts;
        let raw = format!("{key}: {value}");
        if let Some(l) = self
            .lines
            .iter_mut()
            .find(|l| matches!(&l.entry, Some((k, _)) if k == key))
        {
            l.raw = raw;
            l.entry = Some((key.into(), value.into()));
        } else {
            self.no_final_eol = false;
            self.lines.push(Line {
                raw,
                entry: Some((key.into(), value.into())),
            });
        }
        Ok(())
    }

    /// Write atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::file::write_atomic(path, self.to_string().as_bytes())
    }
}

impl fmt::Display for VzdumpConf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, l) in self.lines.iter().enumerate() {
            f.write_str(&l.raw)?;
            if i + 1 < self.lines.len() || !self.no_final_eol {
                f.write_str("\n")?;
            }
        }
        Ok(())
    }
}

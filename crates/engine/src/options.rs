//! Backup options and how the command line, `vzdump.conf` and the schema defaults combine
//! (vzdump's precedence: command line, then `vzdump.conf`, then the default).

use std::path::PathBuf;

use crate::error::{Error, Result};

/// Consistency mode of a VM backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Live: fs-freeze, start the jobs, thaw; copy-before-write keeps the point in time.
    #[default]
    Snapshot,
    /// Pause the VM while the jobs start (not supported yet).
    Suspend,
    /// Shut the VM down, back it up from a paused QEMU (not supported yet for running VMs).
    Stop,
}

impl Mode {
    /// Parses `snapshot`, `suspend` or `stop`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "snapshot" => Ok(Mode::Snapshot),
            "suspend" => Ok(Mode::Suspend),
            "stop" => Ok(Mode::Stop),
            other => Err(Error::option(
                "mode",
                format!("'{other}' is not one of snapshot, suspend, stop"),
            )),
        }
    }

    /// The option value.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Snapshot => "snapshot",
            Mode::Suspend => "suspend",
            Mode::Stop => "stop",
        }
    }
}

/// Whole-stream compression of the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Plain `.vma`.
    #[default]
    None,
    /// lzop container, `.vma.lzo` (`compress 1` means this).
    Lzo,
    /// gzip, `.vma.gz`.
    Gzip,
    /// zstd, `.vma.zst`.
    Zstd,
}

impl Compression {
    /// Parses the `compress` option: `0`, `1`, `gzip`, `lzo`, `zstd`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "0" => Ok(Compression::None),
            "1" | "lzo" => Ok(Compression::Lzo),
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            other => Err(Error::option(
                "compress",
                format!("'{other}' is not one of 0, 1, gzip, lzo, zstd"),
            )),
        }
    }

    /// Extension after `.vma`, with its dot (empty for no compression).
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Lzo => ".lzo",
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
        }
    }

    /// The option value as vzdump prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "0",
            Compression::Lzo => "lzo",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// Where archives go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A storage from `storage.cfg` (its `dump/` directory).
    Storage(String),
    /// A plain directory.
    Dumpdir(PathBuf),
}

/// `performance` property string: only `max-workers` matters for VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Performance {
    /// QEMU backup copy workers per job (1..=256).
    pub max_workers: Option<u32>,
}

impl Performance {
    /// Parses `max-workers=N[,pbs-entries-max=M]`.
    pub fn parse(s: &str) -> Result<Self> {
        let mut perf = Performance::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').unwrap_or(("max-workers", part));
            match key {
                "max-workers" => {
                    let n: u32 = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=256).contains(n))
                        .ok_or_else(|| {
                            Error::option(
                                "performance",
                                format!("max-workers '{value}' is not in 1..256"),
                            )
                        })?;
                    perf.max_workers = Some(n);
                }
                // Containers only; accepted so a shared vzdump.conf works.
                "pbs-entries-max" => {}
                other => {
                    return Err(Error::option(
                        "performance",
                        format!("unknown key '{other}'"),
                    ))
                }
            }
        }
        Ok(perf)
    }
}

/// One layer of settings (the command line, or `vzdump.conf`): every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// `mode`.
    pub mode: Option<Mode>,
    /// `compress`.
    pub compress: Option<Compression>,
    /// `zstd` threads (0 = half the CPUs).
    pub zstd: Option<u32>,
    /// `storage`.
    pub storage: Option<String>,
    /// `dumpdir`.
    pub dumpdir: Option<PathBuf>,
    /// `bwlimit` in KiB/s (0 = none).
    pub bwlimit: Option<u64>,
    /// `performance`.
    pub performance: Performance,
    /// `notes-template`.
    pub notes_template: Option<String>,
    /// `protected`.
    pub protected: Option<bool>,
    /// `lockwait` in minutes.
    pub lockwait: Option<u64>,
}

impl Settings {
    /// Reads the keys we understand from `vzdump.conf` pairs; returns warnings for keys we
    /// ignore (they are valid vzdump keys with no effect here) and errors for bad values.
    pub fn from_vzdump_conf<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<(Self, Vec<String>)> {
        let mut s = Settings::default();
        let mut warnings = Vec::new();
        for (key, value) in pairs {
            let value = value.trim();
            match key {
                "mode" => s.mode = Some(Mode::parse(value)?),
                "compress" => s.compress = Some(Compression::parse(value)?),
                "zstd" => s.zstd = Some(parse_num("zstd", value)?),
                "storage" => s.storage = Some(value.to_string()),
                "dumpdir" => s.dumpdir = Some(PathBuf::from(value)),
                "bwlimit" => s.bwlimit = Some(parse_num("bwlimit", value)?),
                "performance" => s.performance = Performance::parse(value)?,
                "notes-template" => s.notes_template = Some(value.to_string()),
                "protected" => s.protected = Some(parse_bool("protected", value)?),
                "lockwait" => s.lockwait = Some(parse_num("lockwait", value)?),
                "ionice"
                | "stopwait"
                | "tmpdir"
                | "remove"
                | "prune-backups"
                | "maxfiles"
                | "script"
                | "mailto"
                | "mailnotification"
                | "notification-mode"
                | "exclude-path"
                | "stdexcludes"
                | "pigz"
                | "fleecing"
                | "quiet"
                | "node"
                | "pbs-change-detection-mode" => {
                    warnings.push(format!(
                        "vzdump.conf: '{key}' is not supported yet, ignored"
                    ));
                }
                other => warnings.push(format!("vzdump.conf: unknown key '{other}' ignored")),
            }
        }
        Ok((s, warnings))
    }
}

fn parse_num<T: std::str::FromStr>(key: &str, value: &str) -> Result<T> {
    value
        .parse()
        .map_err(|_| Error::option(key, format!("'{value}' is not a non-negative integer")))
}

fn parse_bool(key: &str, value: &str) -> Result<bool> {
    match value {
        "1" | "yes" | "true" | "on" => Ok(true),
        "0" | "no" | "false" | "off" => Ok(false),
        other => Err(Error::option(key, format!("'{other}' is not a boolean"))),
    }
}

/// vzdump's default `lockwait`, in minutes.
pub const DEFAULT_LOCKWAIT: u64 = 180;

/// The settings a backup runs with, after combining the layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Consistency mode.
    pub mode: Mode,
    /// Compression.
    pub compress: Compression,
    /// zstd worker threads (already resolved: 0 became half the CPUs).
    pub zstd_threads: u32,
    /// Where the archive goes.
    pub target: Target,
    /// Rate limit in KiB/s, 0 = none.
    pub bwlimit: u64,
    /// QEMU copy workers per job.
    pub max_workers: Option<u32>,
    /// Notes template (only with a storage target).
    pub notes_template: Option<String>,
    /// Mark protected (only with a storage target).
    pub protected: bool,
    /// Longest wait for the node-global lock, in minutes (vzdump's default 180).
    pub lockwait: u64,
}

impl Resolved {
    /// Combines the command line over `vzdump.conf` over the defaults. Returns warnings to log.
    pub fn combine(cli: &Settings, conf: &Settings) -> Result<(Self, Vec<String>)> {
        let mut warnings = Vec::new();
        let target = match (&cli.storage, &cli.dumpdir) {
            (Some(_), Some(_)) => {
                return Err(Error::option(
                    "storage",
                    "'storage' and 'dumpdir' cannot be used together",
                ))
            }
            (Some(s), None) => Target::Storage(s.clone()),
            (None, Some(d)) => Target::Dumpdir(d.clone()),
            (None, None) => match (&conf.storage, &conf.dumpdir) {
                (Some(s), Some(_)) => {
                    warnings.push(
                        "vzdump.conf sets both 'storage' and 'dumpdir'; ignoring 'dumpdir'"
                            .to_string(),
                    );
                    Target::Storage(s.clone())
                }
                (Some(s), None) => Target::Storage(s.clone()),
                (None, Some(d)) => Target::Dumpdir(d.clone()),
                (None, None) => Target::Storage("local".to_string()),
            },
        };
        let zstd = cli.zstd.or(conf.zstd).unwrap_or(1);
        let zstd_threads = if zstd == 0 {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
            cpus.div_ceil(2)
        } else {
            zstd
        };
        let storage_target = matches!(target, Target::Storage(_));
        let notes_template = cli
            .notes_template
            .clone()
            .or_else(|| conf.notes_template.clone())
            .filter(|_| storage_target);
        if let Some(t) = &notes_template {
            crate::notes::validate(t)?;
        }
        Ok((
            Resolved {
                mode: cli.mode.or(conf.mode).unwrap_or_default(),
                compress: cli.compress.or(conf.compress).unwrap_or_default(),
                zstd_threads,
                target,
                bwlimit: cli.bwlimit.or(conf.bwlimit).unwrap_or(0),
                max_workers: cli.performance.max_workers.or(conf.performance.max_workers),
                notes_template,
                protected: storage_target && cli.protected.or(conf.protected).unwrap_or(false),
                lockwait: cli.lockwait.or(conf.lockwait).unwrap_or(DEFAULT_LOCKWAIT),
            },
            warnings,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(pairs: &[(&str, &str)]) -> Settings {
        Settings::from_vzdump_conf(pairs.iter().copied())
            .expect("valid conf")
            .0
    }

    #[test]
    fn command_line_wins_over_conf_over_default() {
        let c = conf(&[("compress", "lzo"), ("bwlimit", "100"), ("zstd", "3")]);
        let cli = Settings {
            compress: Some(Compression::Zstd),
            ..Default::default()
        };
        let (r, w) = Resolved::combine(&cli, &c).expect("combine");
        assert!(w.is_empty());
        assert_eq!(r.compress, Compression::Zstd);
        assert_eq!(r.bwlimit, 100);
        assert_eq!(r.zstd_threads, 3);
        assert_eq!(r.mode, Mode::Snapshot);
        assert_eq!(r.target, Target::Storage("local".into()));
    }

    #[test]
    fn storage_and_dumpdir_precedence() {
        let both = conf(&[("storage", "nfs1"), ("dumpdir", "/d")]);
        let (r, w) = Resolved::combine(&Settings::default(), &both).expect("combine");
        assert_eq!(r.target, Target::Storage("nfs1".into()));
        assert_eq!(w.len(), 1);
        // A command-line dumpdir beats a storage from the conf file.
        let cli = Settings {
            dumpdir: Some("/x".into()),
            ..Default::default()
        };
        let (r, _) = Resolved::combine(&cli, &both).expect("combine");
        assert_eq!(r.target, Target::Dumpdir("/x".into()));
        let cli = Settings {
            dumpdir: Some("/x".into()),
            storage: Some("s".into()),
            ..Default::default()
        };
        assert!(Resolved::combine(&cli, &Settings::default()).is_err());
    }

    #[test]
    fn notes_and_protected_need_a_storage() {
        let c = conf(&[("notes-template", "{{guestname}}"), ("protected", "1")]);
        let cli = Settings {
            dumpdir: Some("/x".into()),
            ..Default::default()
        };
        let (r, _) = Resolved::combine(&cli, &c).expect("combine");
        assert_eq!(r.notes_template, None);
        assert!(!r.protected);
        let (r, _) = Resolved::combine(&Settings::default(), &c).expect("combine");
        assert_eq!(r.notes_template.as_deref(), Some("{{guestname}}"));
        assert!(r.protected);
    }

    #[test]
    fn performance_merges_per_key() {
        let c = conf(&[("performance", "max-workers=8")]);
        let (r, _) = Resolved::combine(&Settings::default(), &c).expect("combine");
        assert_eq!(r.max_workers, Some(8));
        let cli = Settings {
            performance: Performance::parse("max-workers=2").expect("parse"),
            ..Default::default()
        };
        assert_eq!(
            Resolved::combine(&cli, &c).expect("combine").0.max_workers,
            Some(2)
        );
        assert!(Performance::parse("max-workers=0").is_err());
        assert!(Performance::parse("max-workers=257").is_err());
        assert!(Performance::parse("bogus=1").is_err());
    }

    #[test]
    fn compress_values() {
        assert_eq!(Compression::parse("1").expect("1"), Compression::Lzo);
        assert_eq!(Compression::parse("0").expect("0"), Compression::None);
        assert!(Compression::parse("bzip2").is_err());
        assert!(Mode::parse("live").is_err());
    }

    #[test]
    fn lockwait_defaults_to_180_minutes_and_layers() {
        let (r, _) = Resolved::combine(&Settings::default(), &Settings::default()).expect("ok");
        assert_eq!(r.lockwait, 180);
        let c = conf(&[("lockwait", "5")]);
        let (r, _) = Resolved::combine(&Settings::default(), &c).expect("ok");
        assert_eq!(r.lockwait, 5);
        let cli = Settings {
            lockwait: Some(0),
            ..Default::default()
        };
        let (r, _) = Resolved::combine(&cli, &c).expect("ok");
        assert_eq!(r.lockwait, 0);
    }

    #[test]
    fn zstd_zero_means_half_the_cpus() {
        let c = conf(&[("zstd", "0")]);
        let (r, _) = Resolved::combine(&Settings::default(), &c).expect("combine");
        assert!(r.zstd_threads >= 1);
    }

    #[test]
    fn unknown_conf_keys_warn_and_bad_values_fail() {
        let (_, w) =
            Settings::from_vzdump_conf([("stopwait", "10"), ("frobnicate", "1")]).expect("conf");
        assert_eq!(w.len(), 2);
        assert!(Settings::from_vzdump_conf([("bwlimit", "fast")]).is_err());
    }
}

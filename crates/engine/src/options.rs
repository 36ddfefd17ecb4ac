//! How the command line, `vzdump.conf` and the schema defaults combine (vzdump's precedence:
//! command line, then `vzdump.conf`, then the default).
//!
//! Both layers are [`VzdumpOptions`]: the option types (mode, compression, performance) and
//! their spellings are defined once, in `vmdump-config`; the CLI fills a `VzdumpOptions` from
//! its arguments.

use std::path::PathBuf;

use vmdump_config::{Codec, Fleecing, Mode, VzdumpOptions};

use crate::error::{Error, Result};

/// Where archives go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A storage from `storage.cfg` (its `dump/` directory).
    Storage(String),
    /// A plain directory.
    Dumpdir(PathBuf),
}

/// `vzdump.conf` keys of the schema this engine does not implement yet: set, they get a
/// warning (vzdump would act on them).
pub const UNSUPPORTED_KEYS: [&str; 9] = [
    "remove",
    "prune-backups",
    "mailto",
    "mailnotification",
    "notification-mode",
    "pigz",
    "quiet",
    "node",
    "pbs-change-detection-mode",
];

/// vzdump's default `stopwait`, in minutes.
pub const DEFAULT_STOPWAIT: u64 = 10;

/// vzdump's default `ionice`.
pub const DEFAULT_IONICE: u8 = 7;

/// vzdump's default `lockwait`, in minutes.
pub const DEFAULT_LOCKWAIT: u64 = 180;

/// The settings a backup runs with, after combining the layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Consistency mode.
    pub mode: Mode,
    /// Compression.
    pub compress: Codec,
    /// zstd worker threads (already resolved: 0 became half the CPUs).
    pub zstd_threads: u32,
    /// Where the archive goes.
    pub destination: Destination,
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
    /// Longest wait for a clean shutdown in stop mode, in minutes (vzdump's default 10).
    pub stopwait: u64,
    /// I/O priority of vmdump's own I/O and compressor threads: 0..=7 best-effort level,
    /// 8 idle (vzdump's default 7).
    pub ionice: u8,
    /// Temporary directory (vzdump's `tmpdir`): scratch space of the run.
    pub tmpdir: Option<PathBuf>,
    /// Hook script.
    pub script: Option<PathBuf>,
    /// Settings only container backups use.
    pub ct: CtSettings,
    /// Backup fleecing of VMs (`Some` only when enabled; its storage `None`: each disk's
    /// own).
    pub fleecing: Option<Fleecing>,
}

/// Settings only container backups use (vzdump's `exclude-path`, `stdexcludes`); `stopwait`
/// and `tmpdir` are every guest's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtSettings {
    /// Exclude patterns: `vzdump.conf`'s, then the command line's (they add up).
    pub exclude_path: Vec<String>,
    /// Add the standard excludes (`/tmp/?*`, `/var/tmp/?*`, `/var/run/?*.pid`).
    pub stdexcludes: bool,
}

impl CtSettings {
    fn combine(cli: &VzdumpOptions, conf: &VzdumpOptions) -> Self {
        CtSettings {
            exclude_path: conf
                .exclude_path
                .iter()
                .chain(&cli.exclude_path)
                .cloned()
                .collect(),
            stdexcludes: cli.stdexcludes.or(conf.stdexcludes).unwrap_or(true),
        }
    }
}

impl Resolved {
    /// Combines the command line over `vzdump.conf` over the defaults. Returns warnings to log.
    pub fn combine(cli: &VzdumpOptions, conf: &VzdumpOptions) -> Result<(Self, Vec<String>)> {
        let mut warnings = Vec::new();
        let destination = match (&cli.storage, &cli.dumpdir) {
            (Some(_), Some(_)) => {
                return Err(Error::option(
                    "storage",
                    "'storage' and 'dumpdir' cannot be used together",
                ))
            }
            (Some(s), None) => Destination::Storage(s.clone()),
            (None, Some(d)) => Destination::Dumpdir(d.clone()),
            (None, None) => match (&conf.storage, &conf.dumpdir) {
                (Some(s), Some(_)) => {
                    warnings.push(
                        "vzdump.conf sets both 'storage' and 'dumpdir'; ignoring 'dumpdir'"
                            .to_string(),
                    );
                    Destination::Storage(s.clone())
                }
                (Some(s), None) => Destination::Storage(s.clone()),
                (None, Some(d)) => Destination::Dumpdir(d.clone()),
                (None, None) => Destination::Storage("local".to_string()),
            },
        };
        let zstd = cli.zstd.or(conf.zstd).unwrap_or(1);
        let zstd_threads = if zstd == 0 {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
            cpus.div_ceil(2)
        } else {
            zstd
        };
        let storage_target = matches!(destination, Destination::Storage(_));
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
                compress: cli.compress.or(conf.compress).unwrap_or(Codec::None),
                zstd_threads,
                destination,
                bwlimit: cli.bwlimit.or(conf.bwlimit).unwrap_or(0),
                max_workers: conf
                    .performance
                    .unwrap_or_default()
                    .merged(cli.performance.unwrap_or_default())
                    .max_workers,
                notes_template,
                protected: storage_target && cli.protected.or(conf.protected).unwrap_or(false),
                lockwait: cli.lockwait.or(conf.lockwait).unwrap_or(DEFAULT_LOCKWAIT),
                stopwait: cli.stopwait.or(conf.stopwait).unwrap_or(DEFAULT_STOPWAIT),
                ionice: {
                    let n = cli.ionice.or(conf.ionice).unwrap_or(DEFAULT_IONICE);
                    if n > 8 {
                        return Err(Error::option("ionice", format!("{n} is not in 0..=8")));
                    }
                    n
                },
                tmpdir: cli.tmpdir.clone().or_else(|| conf.tmpdir.clone()),
                script: cli.script.clone().or_else(|| conf.script.clone()),
                ct: CtSettings::combine(cli, conf),
                fleecing: cli
                    .fleecing
                    .clone()
                    .or_else(|| conf.fleecing.clone())
                    .filter(|f| f.enabled),
            },
            warnings,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(text: &str) -> VzdumpOptions {
        vmdump_config::VzdumpConf::parse(text, "vzdump.conf")
            .expect("valid conf")
            .options()
            .clone()
    }

    fn cli() -> VzdumpOptions {
        VzdumpOptions::default()
    }

    #[test]
    fn command_line_wins_over_conf_over_default() {
        let c = conf("compress: lzo\nbwlimit: 100\nzstd: 3\n");
        let mut cl = cli();
        cl.compress = Some(Codec::Zstd);
        let (r, w) = Resolved::combine(&cl, &c).expect("combine");
        assert!(w.is_empty());
        assert_eq!(r.compress, Codec::Zstd);
        assert_eq!(r.bwlimit, 100);
        assert_eq!(r.zstd_threads, 3);
        assert_eq!(r.mode, Mode::Snapshot);
        assert_eq!(r.destination, Destination::Storage("local".into()));
    }

    #[test]
    fn fleecing_from_the_command_line_or_the_conf_and_only_when_enabled() {
        let c = conf("fleecing: enabled=1,storage=fast\n");
        let (r, _) = Resolved::combine(&cli(), &c).expect("combine");
        let f = r.fleecing.expect("on");
        assert_eq!(f.storage.as_deref(), Some("fast"));
        let mut cl = cli();
        cl.fleecing = Some("0".parse().expect("fleecing"));
        let (r, _) = Resolved::combine(&cl, &c).expect("combine");
        assert_eq!(r.fleecing, None);
        cl.fleecing = Some("enabled=1".parse().expect("fleecing"));
        let (r, _) = Resolved::combine(&cl, &cli()).expect("combine");
        assert_eq!(r.fleecing.expect("on").storage, None);
    }

    #[test]
    fn storage_and_dumpdir_precedence() {
        let both = conf("storage: nfs1\ndumpdir: /d\n");
        let (r, w) = Resolved::combine(&cli(), &both).expect("combine");
        assert_eq!(r.destination, Destination::Storage("nfs1".into()));
        assert_eq!(w.len(), 1);
        // A command-line dumpdir beats a storage from the conf file.
        let mut cl = cli();
        cl.dumpdir = Some("/x".into());
        let (r, _) = Resolved::combine(&cl, &both).expect("combine");
        assert_eq!(r.destination, Destination::Dumpdir("/x".into()));
        cl.storage = Some("s".into());
        assert!(Resolved::combine(&cl, &cli()).is_err());
    }

    #[test]
    fn notes_and_protected_need_a_storage() {
        let c = conf("notes-template: {{guestname}}\nprotected: 1\n");
        let mut cl = cli();
        cl.dumpdir = Some("/x".into());
        let (r, _) = Resolved::combine(&cl, &c).expect("combine");
        assert_eq!(r.notes_template, None);
        assert!(!r.protected);
        let (r, _) = Resolved::combine(&cli(), &c).expect("combine");
        assert_eq!(r.notes_template.as_deref(), Some("{{guestname}}"));
        assert!(r.protected);
    }

    #[test]
    fn performance_merges_per_key() {
        let c = conf("performance: max-workers=8\n");
        let (r, _) = Resolved::combine(&cli(), &c).expect("combine");
        assert_eq!(r.max_workers, Some(8));
        let mut cl = cli();
        cl.performance = Some("max-workers=2".parse().expect("parse"));
        assert_eq!(
            Resolved::combine(&cl, &c).expect("combine").0.max_workers,
            Some(2)
        );
        cl.performance = Some("pbs-entries-max=5".parse().expect("parse"));
        assert_eq!(
            Resolved::combine(&cl, &c).expect("combine").0.max_workers,
            Some(8),
            "a command-line performance without max-workers keeps the conf's"
        );
    }

    #[test]
    fn lockwait_defaults_to_180_minutes_and_layers() {
        let (r, _) = Resolved::combine(&cli(), &cli()).expect("ok");
        assert_eq!(r.lockwait, 180);
        let c = conf("lockwait: 5\n");
        let (r, _) = Resolved::combine(&cli(), &c).expect("ok");
        assert_eq!(r.lockwait, 5);
        let mut cl = cli();
        cl.lockwait = Some(0);
        let (r, _) = Resolved::combine(&cl, &c).expect("ok");
        assert_eq!(r.lockwait, 0);
    }

    #[test]
    fn stopwait_ionice_tmpdir_script_layer_over_the_defaults() {
        let (r, _) = Resolved::combine(&cli(), &cli()).expect("ok");
        assert_eq!(
            (r.stopwait, r.ionice, r.tmpdir, r.script),
            (10, 7, None, None)
        );
        let c = conf("stopwait: 3\nionice: 8\ntmpdir: /t\nscript: /h\n");
        let (r, _) = Resolved::combine(&cli(), &c).expect("ok");
        assert_eq!(r.stopwait, 3);
        assert_eq!(r.ionice, 8);
        assert_eq!(r.tmpdir, Some("/t".into()));
        assert_eq!(r.script, Some("/h".into()));
        let mut cl = cli();
        cl.stopwait = Some(1);
        cl.script = Some("/h2".into());
        let (r, _) = Resolved::combine(&cl, &c).expect("ok");
        assert_eq!((r.stopwait, r.script), (1, Some("/h2".into())));
        cl.ionice = Some(9);
        assert!(Resolved::combine(&cl, &c).is_err());
    }

    #[test]
    fn zstd_zero_means_half_the_cpus() {
        let (r, _) = Resolved::combine(&cli(), &conf("zstd: 0\n")).expect("combine");
        assert!(r.zstd_threads >= 1);
    }
}

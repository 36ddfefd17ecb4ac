//! `jobs.cfg`: scheduled backup jobs in Proxmox VE's section-config syntax, beside
//! storage.cfg and vzdump.conf in the config root.
//!
//! ```text
//! vzdump: backup-1a2b3c4d-5e6f
//!         schedule sat 02:00
//!         all 1
//!         compress zstd
//!         enabled 1
//!         prune-backups keep-last=3,keep-weekly=4
//!         storage local
//!         repeat-missed 0
//!         comment weekly full
//! ```
//!
//! Keys: `schedule` (required; checked by the scheduler's calendar-event parser, not here),
//! `enabled` (default 1), `repeat-missed` (default 0), `comment` (at most 512 characters,
//! stored with `%XX` escapes for `%` and control characters), the selection `vmid` (list),
//! `all`, `exclude`, and every vzdump option ([`VzdumpOptions`], validated the same way as in
//! vzdump.conf). Sections of other types are kept untouched.
//!
//! The file uses the same section-config model as storage.cfg ([`StorageConfig`] parses and
//! renders it, keeping every line's text); this module adds the job semantics.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::propstring::parse_bool;
use crate::root::ConfigRoot;
use crate::storage::{StorageConfig, StorageEntry, StorageType};
use crate::vzdump::VzdumpOptions;

/// The section type of a backup job.
pub const JOB_TYPE: &str = "vzdump";

/// One backup job, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupJobConfig {
    /// Job id.
    pub id: String,
    /// Calendar event text.
    pub schedule: String,
    /// `enabled` (default true).
    pub enabled: bool,
    /// `repeat-missed` (default false).
    pub repeat_missed: bool,
    /// `comment`, decoded.
    pub comment: Option<String>,
    /// `vmid`: explicit guests.
    pub vmids: Vec<u32>,
    /// `all` (implied by `exclude`).
    pub all: bool,
    /// `exclude`.
    pub exclude: Vec<u32>,
    /// The vzdump options, typed.
    pub options: VzdumpOptions,
    /// The vzdump options as `key value` pairs, in file order (what `show` prints).
    pub option_pairs: Vec<(String, String)>,
}

/// The parsed jobs.cfg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobsConfig {
    sections: StorageConfig,
}

fn vmid_list(key: &str, v: &str) -> Result<Vec<u32>> {
    v.split([',', ' ', ';'])
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u32>()
                .ok()
                .filter(|n| *n >= 100)
                .ok_or_else(|| Error::value(key, format!("'{s}' is not a VMID")))
        })
        .collect()
}

/// Escapes a comment for the file: `%`, control characters and non-ASCII as `%XX`.
pub fn encode_comment(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b == b'%' || b.is_ascii_control() || !b.is_ascii() {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

/// Reverses [`encode_comment`] (invalid escapes stay as written).
pub fn decode_comment(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn job_from(e: &StorageEntry) -> Result<BackupJobConfig> {
    let mut job = BackupJobConfig {
        id: e.id().to_string(),
        schedule: String::new(),
        enabled: true,
        repeat_missed: false,
        comment: None,
        vmids: Vec::new(),
        all: false,
        exclude: Vec::new(),
        options: VzdumpOptions::default(),
        option_pairs: Vec::new(),
    };
    let bool_of = |key: &str, v: &str| {
        parse_bool(v).ok_or_else(|| Error::value(key, format!("'{v}' is not a boolean")))
    };
    for (key, value) in e.props() {
        match key {
            "schedule" => job.schedule = value.to_string(),
            "enabled" => job.enabled = bool_of(key, value)?,
            "repeat-missed" => job.repeat_missed = bool_of(key, value)?,
            "comment" => {
                let c = decode_comment(value);
                if c.chars().count() > 512 {
                    return Err(Error::value(key, "longer than 512 characters"));
                }
                job.comment = Some(c);
            }
            "vmid" => job.vmids = vmid_list(key, value)?,
            "all" => job.all = bool_of(key, value)?,
            "exclude" => job.exclude = vmid_list(key, value)?,
            _ => {
                job.options.apply(key, value)?;
                job.option_pairs.push((key.to_string(), value.to_string()));
            }
        }
    }
    if job.schedule.trim().is_empty() {
        return Err(Error::value(
            "schedule",
            format!("job '{}' has no schedule", job.id),
        ));
    }
    if !job.exclude.is_empty() {
        job.all = true;
    }
    if job.all && !job.vmids.is_empty() {
        return Err(Error::value(
            "vmid",
            format!(
                "job '{}': 'vmid' cannot be combined with 'all' or 'exclude'",
                job.id
            ),
        ));
    }
    if !job.all && job.vmids.is_empty() {
        return Err(Error::value(
            "vmid",
            format!("job '{}' selects no guests (set 'vmid' or 'all')", job.id),
        ));
    }
    Ok(job)
}

impl JobsConfig {
    /// Parses jobs.cfg text; every `vzdump` section must be a valid job. `source` names the
    /// file in errors.
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        let sections = StorageConfig::parse(text, source)?;
        let cfg = JobsConfig { sections };
        for e in cfg.sections.entries().filter(|e| is_job(e)) {
            job_from(e).map_err(|err| err.at(source, e.line()))?;
        }
        Ok(cfg)
    }

    /// Reads a jobs.cfg; a missing file is an empty one.
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Self::parse("", &path.display().to_string());
        }
        let text = crate::file::read_text(path)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Writes atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.sections.save(path)
    }

    /// All backup jobs in file order.
    pub fn jobs(&self) -> Vec<BackupJobConfig> {
        self.sections
            .entries()
            .filter(|e| is_job(e))
            .filter_map(|e| job_from(e).ok())
            .collect()
    }

    /// The job with this id.
    pub fn get(&self, id: &str) -> Option<BackupJobConfig> {
        self.sections
            .get(id)
            .filter(|e| is_job(e))
            .and_then(|e| job_from(e).ok())
    }

    /// Adds a job with these `key value` properties (validated as a whole).
    pub fn add(&mut self, id: &str, props: &[(&str, &str)]) -> Result<()> {
        if self.sections.get(id).is_some() {
            return Err(Error::value("id", format!("job '{id}' already exists")));
        }
        let props: Vec<(String, String)> = props.iter().map(|(k, v)| encode(k, v)).collect();
        let refs: Vec<(&str, &str)> = props
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let entry = StorageEntry::new(StorageType::Other(JOB_TYPE.into()), id, &refs)?;
        job_from(&entry)?;
        self.sections.add(entry)
    }

    /// Sets (`Some`) or deletes (`None`) properties of a job; the result must stay valid.
    pub fn set(&mut self, id: &str, changes: &[(&str, Option<&str>)]) -> Result<()> {
        let entry = self
            .sections
            .get_mut(id)
            .filter(|e| is_job(e))
            .ok_or_else(|| Error::value("id", format!("job '{id}' does not exist")))?;
        let mut edited = entry.clone();
        for (key, value) in changes {
            match value {
                Some(v) => {
                    let (k, v) = encode(key, v);
                    edited.set(&k, &v);
                }
                None => {
                    edited.remove(key);
                }
            }
        }
        job_from(&edited)?;
        *entry = edited;
        Ok(())
    }

    /// Removes a job; false if it did not exist.
    pub fn remove(&mut self, id: &str) -> bool {
        if self.sections.get(id).is_some_and(is_job) {
            self.sections.remove(id);
            true
        } else {
            false
        }
    }
}

fn is_job(e: &StorageEntry) -> bool {
    e.kind().as_str() == JOB_TYPE
}

fn encode(key: &str, value: &str) -> (String, String) {
    let v = if key == "comment" {
        encode_comment(value)
    } else {
        value.to_string()
    };
    (key.to_string(), v)
}

impl ConfigRoot {
    /// `<root>/jobs.cfg`.
    pub fn jobs_cfg_path(&self) -> PathBuf {
        self.dir().join("jobs.cfg")
    }

    /// jobs.cfg (empty when missing).
    pub fn jobs(&self) -> Result<JobsConfig> {
        JobsConfig::load(&self.jobs_cfg_path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "vzdump: backup-1a2b3c4d-5e6f\n\tschedule sat 02:00\n\tall 1\n\tcompress zstd\n\tenabled 1\n\tmode snapshot\n\tnotes-template {{guestname}}\n\tprune-backups keep-last=3,keep-weekly=4\n\tstorage pbs1\n\tfleecing enabled=1,storage=local-lvm\n\trepeat-missed 0\n\tcomment weekly full\n\nvzdump: nightly\n\tschedule 21:30\n\tvmid 100,101\n\tenabled 0\n";

    #[test]
    fn parses_proxmox_jobs_and_round_trips() {
        let cfg = JobsConfig::parse(SAMPLE, "jobs.cfg").expect("valid");
        let jobs = cfg.jobs();
        assert_eq!(jobs.len(), 2);
        let j = &jobs[0];
        assert_eq!(j.id, "backup-1a2b3c4d-5e6f");
        assert_eq!(j.schedule, "sat 02:00");
        assert!(j.all && j.enabled && !j.repeat_missed);
        assert_eq!(j.comment.as_deref(), Some("weekly full"));
        assert_eq!(
            j.options.prune_backups.map(|k| k.to_string()).as_deref(),
            Some("keep-last=3,keep-weekly=4")
        );
        assert_eq!(jobs[1].vmids, [100, 101]);
        assert!(!jobs[1].enabled);
        let mut out = Vec::new();
        let tmp = std::env::temp_dir().join(format!("jobs-{}.cfg", std::process::id()));
        cfg.save(&tmp).expect("save");
        out.extend(std::fs::read(&tmp).expect("read"));
        let _ = std::fs::remove_file(&tmp);
        assert_eq!(String::from_utf8(out).expect("utf8"), SAMPLE);
    }

    #[test]
    fn edits_validate() {
        let mut cfg = JobsConfig::parse(SAMPLE, "jobs.cfg").expect("valid");
        cfg.add(
            "weekly",
            &[
                ("schedule", "sun 03:00"),
                ("vmid", "100"),
                ("comment", "a%b\nc"),
            ],
        )
        .expect("add");
        assert_eq!(
            cfg.get("weekly").expect("added").comment.as_deref(),
            Some("a%b\nc")
        );
        assert!(cfg
            .add("weekly", &[("schedule", "x"), ("all", "1")])
            .is_err());
        assert!(cfg.add("bad", &[("vmid", "100")]).is_err(), "no schedule");
        assert!(cfg
            .add(
                "bad",
                &[("schedule", "daily"), ("compress", "rar"), ("all", "1")]
            )
            .is_err());
        assert!(cfg
            .add(
                "bad",
                &[("schedule", "daily"), ("frobnicate", "1"), ("all", "1")]
            )
            .is_err());
        cfg.set("weekly", &[("enabled", Some("0")), ("comment", None)])
            .expect("set");
        let w = cfg.get("weekly").expect("exists");
        assert!(!w.enabled);
        assert_eq!(w.comment, None);
        assert!(
            cfg.set("weekly", &[("vmid", None)]).is_err(),
            "selects nothing"
        );
        assert!(cfg.remove("weekly"));
        assert!(!cfg.remove("weekly"));
        assert!(JobsConfig::parse("vzdump: x\n\tall 1\n", "jobs.cfg").is_err());
    }
}

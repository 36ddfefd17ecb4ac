//! The on-disk task registry: every backup, restore and prune — started from the command
//! line, the scheduler or the web API — is a task with an id, a state, start and end times
//! and a log kept on disk, so any process can list them and follow one live.
//!
//! ```text
//! <task dir>/                       $VMDUMP_TASK_DIR, default /var/log/vmdump/tasks
//!   <UPID>.log                      the task log as it is written (`INFO: ...` lines), ending
//!                                   with `TASK OK` or `TASK ERROR: <message>`
//!   <UPID>.progress                 `<transferred> <total>` bytes, rewritten about twice a second
//!   <UPID>.status                   written once at the end: `<end time> OK|ERROR: <message>`
//! ```
//!
//! The registry keeps the newest [`DEFAULT_KEEP`] tasks (`$VMDUMP_TASK_KEEP` says otherwise):
//! starting a task removes the files of older ones that have ended. A running task is never
//! removed, however old.
//!
//! A task id is Proxmox's UPID form, `UPID:<node>:<pid>:<pstart>:<starttime>:<type>:<id>:<user>:`
//! (pid, process start time and start time in upper-case hex). A task without a status file
//! runs while its process (pid and start time) lives; once that process is gone the task
//! counts as failed ("unexpected end"), so a killed vmdump never leaves a task "running".

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vmdump_launch::ProcId;

use crate::{Level, Progress, Transfer};

/// Where tasks live unless `$VMDUMP_TASK_DIR` says otherwise.
pub const DEFAULT_TASK_DIR: &str = "/var/log/vmdump/tasks";

/// The environment variable naming the task directory.
pub const TASK_DIR_ENV: &str = "VMDUMP_TASK_DIR";

/// How many tasks the registry keeps unless `$VMDUMP_TASK_KEEP` says otherwise (Proxmox's
/// task list shows about as many).
pub const DEFAULT_KEEP: usize = 1000;

/// The environment variable naming how many tasks to keep.
pub const TASK_KEEP_ENV: &str = "VMDUMP_TASK_KEEP";

/// The least time between two progress file updates.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// A task id (`UPID:node:pid:pstart:starttime:type:id:user:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upid {
    /// Host name.
    pub node: String,
    /// The process running the task.
    pub proc: ProcId,
    /// Start, seconds since the epoch.
    pub start: i64,
    /// What the task does: `vzdump`, `qmrestore`, `vzrestore`, `prune`, `jobrun`.
    pub kind: String,
    /// What it works on (a VMID, a storage, a job id; may be empty).
    pub id: String,
    /// Who started it (`root@cli`, `root@scheduler`, `<token>@token`).
    pub user: String,
}

/// Whether `s` may stand in a UPID field: letters, digits, `-`, `_`, `.`, `@`.
fn field_ok(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

impl Upid {
    /// Parses a task id; `None` for anything that is not one (so it can never name a file
    /// outside the task directory).
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix("UPID:")?.strip_suffix(':')?;
        let f: Vec<&str> = rest.split(':').collect();
        if f.len() != 7 || !f.iter().all(|x| field_ok(x)) || f[0].is_empty() || f[4].is_empty() {
            return None;
        }
        let hex = |x: &str| u64::from_str_radix(x, 16).ok();
        Some(Upid {
            node: f[0].to_string(),
            proc: ProcId {
                pid: u32::try_from(hex(f[1])?).ok()?,
                start: hex(f[2])?,
            },
            start: i64::try_from(hex(f[3])?).ok()?,
            kind: f[4].to_string(),
            id: f[5].to_string(),
            user: f[6].to_string(),
        })
    }
}

impl fmt::Display for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "UPID:{}:{:08X}:{:08X}:{:08X}:{}:{}:{}:",
            self.node, self.proc.pid, self.proc.start, self.start, self.kind, self.id, self.user
        )
    }
}

/// Where a task is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskStatus {
    /// Its process still runs it.
    Running,
    /// It ended successfully.
    Ok,
    /// It failed (or its process ended without a result).
    Error(String),
}

impl TaskStatus {
    /// `running`, `ok` or `error`.
    pub fn as_str(&self) -> &'static str {
        match self {
            TaskStatus::Running => "running",
            TaskStatus::Ok => "ok",
            TaskStatus::Error(_) => "error",
        }
    }
}

/// What the registry knows of one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    /// Its id.
    pub upid: Upid,
    /// State.
    pub status: TaskStatus,
    /// End, seconds since the epoch, once it ended.
    pub end: Option<i64>,
    /// The last transfer counters: bytes done and in all.
    pub progress: Option<(u64, u64)>,
}

/// The task directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDir {
    dir: PathBuf,
    keep: usize,
}

fn now_epoch() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

fn write_atomic(path: &Path, text: &str) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

impl TaskDir {
    /// The registry in `dir` (created on the first task), keeping [`DEFAULT_KEEP`] tasks.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        TaskDir {
            dir: dir.into(),
            keep: DEFAULT_KEEP,
        }
    }

    /// The same registry keeping the newest `keep` tasks (at least one: the new one).
    pub fn keeping(mut self, keep: usize) -> Self {
        self.keep = keep.max(1);
        self
    }

    /// `$VMDUMP_TASK_DIR`, else [`DEFAULT_TASK_DIR`]; keeping `$VMDUMP_TASK_KEEP` tasks, else
    /// [`DEFAULT_KEEP`] (a value that is not a number is ignored).
    pub fn from_env() -> Self {
        let dir = Self::new(
            std::env::var_os(TASK_DIR_ENV)
                .filter(|v| !v.is_empty())
                .map_or_else(|| PathBuf::from(DEFAULT_TASK_DIR), PathBuf::from),
        );
        match std::env::var(TASK_KEEP_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
        {
            Some(keep) => dir.keeping(keep),
            None => dir,
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, upid: &Upid, ext: &str) -> PathBuf {
        self.dir.join(format!("{upid}.{ext}"))
    }

    /// The log file of a task.
    pub fn log_path(&self, upid: &Upid) -> PathBuf {
        self.file(upid, "log")
    }

    /// Starts a task of this process: claims a new id (the next free second if this one is
    /// taken) and creates its log. `kind`, `id` and `user` must be UPID fields (letters,
    /// digits, `-_.@`).
    pub fn start(&self, kind: &str, id: &str, user: &str) -> io::Result<TaskFile> {
        for f in [kind, id, user] {
            if !field_ok(f) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("'{f}' cannot stand in a task id"),
                ));
            }
        }
        std::fs::create_dir_all(&self.dir)?;
        let mut upid = Upid {
            node: hostname(),
            proc: ProcId::current(),
            start: now_epoch(),
            kind: kind.to_string(),
            id: id.to_string(),
            user: user.to_string(),
        };
        loop {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(self.log_path(&upid))
            {
                Ok(file) => {
                    // A registry that cannot be trimmed still takes the task.
                    if let Err(e) = self.rotate() {
                        tracing::warn!("trimming the task registry {}: {e}", self.dir.display());
                    }
                    return Ok(TaskFile {
                        upid: upid.clone(),
                        progress_path: self.file(&upid, "progress"),
                        status_path: self.file(&upid, "status"),
                        inner: Mutex::new(Inner {
                            log: Some(file),
                            last_progress: None,
                            ended: false,
                        }),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => upid.start += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// What is known of a task; `NotFound` when it does not exist here.
    pub fn info(&self, upid: &Upid) -> io::Result<TaskInfo> {
        let log = self.log_path(upid);
        let meta = std::fs::metadata(&log)?;
        let (status, end) = match std::fs::read_to_string(self.file(upid, "status")) {
            Ok(text) => parse_status(&text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if upid.proc.is_alive() {
                    (TaskStatus::Running, None)
                } else {
                    let end = meta
                        .modified()
                        .ok()
                        .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
                        .map(|d| d.as_secs() as i64);
                    (TaskStatus::Error("unexpected end of task".into()), end)
                }
            }
            Err(e) => return Err(e),
        };
        let progress = std::fs::read_to_string(self.file(upid, "progress"))
            .ok()
            .and_then(|t| {
                let mut it = t.split_whitespace().map(str::parse::<u64>);
                Some((it.next()?.ok()?, it.next()?.ok()?))
            });
        Ok(TaskInfo {
            upid: upid.clone(),
            status,
            end,
            progress,
        })
    }

    /// Removes the files of ended tasks beyond the newest `keep` ones.
    fn rotate(&self) -> io::Result<()> {
        for upid in self.ids()?.into_iter().skip(self.keep) {
            // A task that cannot be read (gone meanwhile, an unreadable status) is left
            // alone; the others are still trimmed.
            match self.info(&upid) {
                Ok(i) if i.status != TaskStatus::Running => {}
                _ => continue,
            }
            // The log last: a task is listed by its log. A `.tmp` is what a process killed
            // while replacing the file left.
            for ext in ["status", "status.tmp", "progress", "progress.tmp", "log"] {
                match std::fs::remove_file(self.file(&upid, ext)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The ids of the tasks here, newest first.
    fn ids(&self) -> io::Result<Vec<Upid>> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut ids = Vec::new();
        for entry in rd {
            let name = entry?.file_name();
            let Some(name) = name.to_str().and_then(|n| n.strip_suffix(".log")) else {
                continue;
            };
            if let Some(upid) = Upid::parse(name) {
                ids.push(upid);
            }
        }
        ids.sort_by_key(|u| std::cmp::Reverse((u.start, u.to_string())));
        Ok(ids)
    }

    /// The tasks here, newest first, at most `limit`.
    pub fn list(&self, limit: usize) -> io::Result<Vec<TaskInfo>> {
        let mut ids = self.ids()?;
        ids.truncate(limit);
        let mut out = Vec::with_capacity(ids.len());
        for upid in ids {
            // A task removed while listing, or one that cannot be read, is not listed; the
            // others are.
            if let Ok(i) = self.info(&upid) {
                out.push(i);
            }
        }
        Ok(out)
    }
}

fn parse_status(text: &str) -> (TaskStatus, Option<i64>) {
    let text = text.trim_end();
    let (end, rest) = text.split_once(' ').unwrap_or((text, ""));
    let end = end.parse().ok();
    let status = if rest == "OK" {
        TaskStatus::Ok
    } else {
        TaskStatus::Error(
            rest.strip_prefix("ERROR: ")
                .unwrap_or("unknown result")
                .to_string(),
        )
    };
    (status, end)
}

struct Inner {
    log: Option<File>,
    last_progress: Option<Instant>,
    ended: bool,
}

/// A running task of this process: a [`Progress`] that writes the task log (and the
/// transfer counters) into the registry. [`finish`](Self::finish) records the result; a task
/// dropped without one is recorded as failed.
pub struct TaskFile {
    upid: Upid,
    progress_path: PathBuf,
    status_path: PathBuf,
    inner: Mutex<Inner>,
}

impl fmt::Debug for TaskFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskFile")
            .field("upid", &self.upid)
            .finish_non_exhaustive()
    }
}

impl TaskFile {
    /// The task's id.
    pub fn upid(&self) -> &Upid {
        &self.upid
    }

    fn write_line(inner: &mut Inner, line: &str) {
        if let Some(f) = inner.log.as_mut() {
            if f.write_all(line.as_bytes()).is_err() {
                // A full disk must not stop the task; the log just ends here.
                inner.log = None;
            }
        }
    }

    /// Records the result: the last log line (`TASK OK` / `TASK ERROR: <message>`) and the
    /// status file. Only the first call counts.
    pub fn finish(&self, result: std::result::Result<(), String>) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if inner.ended {
            return;
        }
        inner.ended = true;
        let status = match &result {
            Ok(()) => "OK".to_string(),
            Err(msg) => format!("ERROR: {}", msg.replace('\n', " ")),
        };
        Self::write_line(&mut inner, &format!("TASK {status}\n"));
        if let Some(f) = inner.log.take() {
            let _ = f.sync_all();
        }
        let _ = write_atomic(&self.status_path, &format!("{} {status}\n", now_epoch()));
    }
}

impl Drop for TaskFile {
    fn drop(&mut self) {
        self.finish(Err("task ended without a result".into()));
    }
}

impl Progress for TaskFile {
    fn log(&self, level: Level, line: &str, _progress: bool) {
        if let Ok(mut inner) = self.inner.lock() {
            if !inner.ended {
                Self::write_line(&mut inner, &format!("{}: {line}\n", level.prefix()));
            }
        }
    }

    fn update(&self, t: &Transfer) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let due = inner
            .last_progress
            .is_none_or(|at| at.elapsed() >= PROGRESS_EVERY)
            || (t.total > 0 && t.transferred >= t.total);
        if due && !inner.ended {
            inner.last_progress = Some(Instant::now());
            let _ = write_atomic(
                &self.progress_path,
                &format!("{} {}\n", t.transferred, t.total),
            );
        }
    }
}

/// Two receivers as one: every line and update goes to both (e.g. the terminal and the task
/// log).
pub struct Tee<'a>(pub &'a dyn Progress, pub &'a dyn Progress);

impl Progress for Tee<'_> {
    fn log(&self, level: Level, line: &str, progress: bool) {
        self.0.log(level, line, progress);
        self.1.log(level, line, progress);
    }

    fn update(&self, transfer: &Transfer) {
        self.0.update(transfer);
        self.1.update(transfer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upid_round_trips_and_rejects_path_escapes() {
        let u = Upid {
            node: "host".into(),
            proc: ProcId { pid: 42, start: 7 },
            start: 0x6000_0000,
            kind: "vzdump".into(),
            id: "100".into(),
            user: "root@cli".into(),
        };
        let s = u.to_string();
        assert_eq!(
            s,
            "UPID:host:0000002A:00000007:60000000:vzdump:100:root@cli:"
        );
        assert_eq!(Upid::parse(&s), Some(u));
        for bad in [
            "UPID:host:0000002A:00000007:60000000:vzdump:../x:root@cli:",
            "UPID:host:2A:7:60:vzdump:1/2:root:",
            "UPID:host:2A:7:60:vzdump:100:root",
            "host:2A:7:60:vzdump:100:root:",
            "UPID:host:zz:7:60:vzdump:100:root:",
        ] {
            assert_eq!(Upid::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_task_runs_then_records_its_result_and_log() {
        let tmp = std::env::temp_dir().join(format!("vmdump-task-test-{}", std::process::id()));
        let dir = TaskDir::new(&tmp);
        let a = dir.start("vzdump", "100", "root@cli").unwrap();
        let b = dir.start("vzdump", "100", "root@cli").unwrap();
        assert_ne!(a.upid(), b.upid(), "two tasks in one second get two ids");
        a.log(Level::Info, "hello", false);
        a.update(&Transfer {
            transferred: 5,
            total: 10,
            ..Default::default()
        });
        let info = dir.info(a.upid()).unwrap();
        assert_eq!(info.status, TaskStatus::Running);
        assert_eq!(info.progress, Some((5, 10)));
        a.finish(Ok(()));
        drop(b);
        let info = dir.info(a.upid()).unwrap();
        assert_eq!(info.status, TaskStatus::Ok);
        assert!(info.end.is_some());
        let log = std::fs::read_to_string(dir.log_path(a.upid())).unwrap();
        assert_eq!(log, "INFO: hello\nTASK OK\n");
        let list = dir.list(10).unwrap();
        assert_eq!(list.len(), 2);
        assert!(list
            .iter()
            .any(|t| matches!(&t.status, TaskStatus::Error(m) if m.contains("without a result"))));
        // A task whose process is gone counts as failed.
        let dead = Upid {
            proc: ProcId {
                pid: u32::MAX - 1,
                start: 1,
            },
            ..a.upid().clone()
        };
        std::fs::write(dir.log_path(&dead), "INFO: x\n").unwrap();
        assert!(matches!(
            dir.info(&dead).unwrap().status,
            TaskStatus::Error(_)
        ));
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn the_newest_tasks_are_kept_and_a_running_one_however_old() {
        let tmp = std::env::temp_dir().join(format!("vmdump-task-keep-{}", std::process::id()));
        let dir = TaskDir::new(&tmp).keeping(3);
        std::fs::create_dir_all(&tmp).unwrap();
        // Five ended tasks, a second apart, and an old one this (live) process still runs.
        let ended: Vec<Upid> = (0..5)
            .map(|i| {
                let u = Upid {
                    node: "host".into(),
                    proc: ProcId {
                        pid: u32::MAX - 1,
                        start: 1,
                    },
                    start: 1000 + i,
                    kind: "vzdump".into(),
                    id: "100".into(),
                    user: "root@cli".into(),
                };
                std::fs::write(dir.log_path(&u), "TASK OK\n").unwrap();
                std::fs::write(dir.file(&u, "status"), "1 OK\n").unwrap();
                std::fs::write(dir.file(&u, "progress"), "1 1\n").unwrap();
                std::fs::write(dir.file(&u, "status.tmp"), "1 O").unwrap();
                std::fs::write(dir.file(&u, "progress.tmp"), "1").unwrap();
                u
            })
            .collect();
        let running = Upid {
            proc: ProcId::current(),
            start: 10,
            ..ended[0].clone()
        };
        std::fs::write(dir.log_path(&running), "INFO: still here\n").unwrap();
        assert_eq!(dir.list(100).unwrap().len(), 6);

        let new = dir.start("vzdump", "101", "root@cli").unwrap();
        let left: Vec<Upid> = dir.list(100).unwrap().into_iter().map(|t| t.upid).collect();
        assert_eq!(
            left,
            vec![
                new.upid().clone(),
                ended[4].clone(),
                ended[3].clone(),
                running.clone()
            ]
        );
        // Every file of a removed task is gone, not only its log.
        for u in &ended[..3] {
            for ext in ["log", "status", "progress", "status.tmp", "progress.tmp"] {
                assert!(!dir.file(u, ext).exists(), "{u}.{ext} left");
            }
        }
        new.finish(Ok(()));

        // A task whose status cannot be read is left alone; older ones are still trimmed.
        let odd = Upid {
            start: 2000,
            ..ended[0].clone()
        };
        std::fs::write(dir.log_path(&odd), "x\n").unwrap();
        std::fs::create_dir(dir.file(&odd, "status")).unwrap();
        let dir = dir.keeping(1);
        let last = dir.start("vzdump", "102", "root@cli").unwrap();
        let left: Vec<Upid> = dir.list(100).unwrap().into_iter().map(|t| t.upid).collect();
        assert_eq!(
            left,
            vec![last.upid().clone(), running],
            "the odd one is not listed"
        );
        assert!(dir.log_path(&odd).exists(), "the odd one is kept");
        assert!(
            !dir.log_path(&ended[4]).exists(),
            "an older readable one is trimmed"
        );
        last.finish(Ok(()));
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn the_number_kept_comes_from_the_environment() {
        // The only test of this process that reads the variable.
        std::env::set_var(TASK_KEEP_ENV, "7");
        assert_eq!(TaskDir::from_env().keep, 7);
        std::env::set_var(TASK_KEEP_ENV, "0");
        assert_eq!(TaskDir::from_env().keep, 1, "the new task is always kept");
        std::env::set_var(TASK_KEEP_ENV, "many");
        assert_eq!(TaskDir::from_env().keep, DEFAULT_KEEP);
        std::env::remove_var(TASK_KEEP_ENV);
        assert_eq!(TaskDir::from_env().keep, DEFAULT_KEEP);
    }
}

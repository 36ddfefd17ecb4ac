//! Sessions: what one vmdump run started or created, recorded so a later run can clean up.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tracing::warn;

use crate::error::{Error, Result};
use crate::process::{self, ProcId};

/// The directory of all sessions under a run base.
const SESSIONS: &str = "session";
/// How long a reaped helper may take to die after SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// One vmdump run's records: `<run base>/session/<pid>-<start>-<n>/`. Removed when dropped
/// (after the helpers and volume records it holds are gone).
#[derive(Debug)]
pub struct Session {
    dir: PathBuf,
    seq: AtomicU64,
}

impl Session {
    /// Reap what crashed runs left under `run_base` ([`reap_leftovers`]), then create this
    /// run's session directory.
    pub fn open(run_base: &Path) -> Result<Arc<Self>> {
        static SESSION_SEQ: AtomicU64 = AtomicU64::new(0);
        reap_leftovers(run_base);
        let me = ProcId::current();
        let n = SESSION_SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = run_base
            .join(SESSIONS)
            .join(format!("{}-{}-{n}", me.pid, me.start));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io("create session directory", &dir, e))?;
        Ok(Arc::new(Session {
            dir,
            seq: AtomicU64::new(0),
        }))
    }

    /// [`Session::open`] for async code: the reaping (which may wait for killed helpers to
    /// exit) runs on the blocking pool.
    pub async fn open_async(run_base: &Path) -> Result<Arc<Self>> {
        let base = run_base.to_path_buf();
        tokio::task::spawn_blocking(move || Session::open(&base))
            .await
            .map_err(|e| Error::io("open a session in", run_base, std::io::Error::other(e)))?
    }

    /// The session directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn next(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// A new private directory inside the session (sockets of a helper); removed with the
    /// session, or by the reaper if this run dies.
    pub fn temp_dir(&self, prefix: &str) -> Result<PathBuf> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.dir.join(format!("tmp-{prefix}-{}", self.next()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io("create directory", &dir, e))?;
        Ok(dir)
    }

    /// Start `cmd` as a helper of this run: it is killed when vmdump dies (see
    /// [`crate::spawn`]) and recorded in the session until it has exited. `what` names it in
    /// messages.
    pub fn spawn(self: &Arc<Self>, what: &str, cmd: Command) -> Result<Helper> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = crate::spawn::spawn_bound(cmd).map_err(|source| Error::Spawn {
            program: program.clone(),
            source,
        })?;
        let pid = child.id();
        let id = ProcId::of(pid).unwrap_or(ProcId { pid, start: 0 });
        let record = self.dir.join(format!("proc-{pid}"));
        let text = json!({"pid": pid, "start": id.start, "program": program, "what": what});
        if let Err(e) = std::fs::write(&record, text.to_string()) {
            // The death signal still holds; only a later run's report would miss it.
            warn!(
                "cannot record helper {what} (pid {pid}) in {}: {e}",
                record.display()
            );
        }
        Ok(Helper {
            child: Some(child),
            status: None,
            id,
            what: what.to_string(),
            record,
            _session: Arc::clone(self),
        })
    }

    /// Record that `path` (and, if given, its own directory `dir`) is about to be created as a
    /// new volume: if this run dies before [`VolumeRecord::commit`], the next run removes it.
    pub fn record_volume(
        self: &Arc<Self>,
        path: &Path,
        dir: Option<&Path>,
    ) -> Result<VolumeRecord> {
        let record = self.dir.join(format!("volume-{}", self.next()));
        let text = json!({"path": path, "dir": dir});
        std::fs::write(&record, text.to_string())
            .map_err(|e| Error::io("record new volume in", &record, e))?;
        Ok(VolumeRecord {
            record,
            _session: Arc::clone(self),
        })
    }
}

impl Session {
    /// Record that the directory tree at `path` (a directory volume, or a btrfs subvolume
    /// without nested ones: empty subvolumes go with `rmdir`) is about to be created as a new
    /// volume: if this run dies before [`VolumeRecord::commit`], the next run removes it with
    /// everything in it.
    pub fn record_tree(self: &Arc<Self>, path: &Path) -> Result<VolumeRecord> {
        let record = self.dir.join(format!("volume-{}", self.next()));
        let text = json!({"tree": path});
        std::fs::write(&record, text.to_string())
            .map_err(|e| Error::io("record new volume in", &record, e))?;
        Ok(VolumeRecord {
            record,
            _session: Arc::clone(self),
        })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!("cannot remove {}: {e}", self.dir.display());
            }
        }
    }
}

/// A volume being created by this run (see [`Session::record_volume`]).
#[derive(Debug)]
pub struct VolumeRecord {
    record: PathBuf,
    _session: Arc<Session>,
}

impl VolumeRecord {
    /// The volume is complete and owned by a config (or removed by the caller): forget it.
    pub fn commit(self) {}
}

impl Drop for VolumeRecord {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.record);
    }
}

/// A helper process of this run: killed with vmdump, recorded in the session, killed and
/// reaped when dropped.
#[derive(Debug)]
pub struct Helper {
    child: Option<Child>,
    /// How it exited, once reaped.
    status: Option<ExitStatus>,
    id: ProcId,
    what: String,
    record: PathBuf,
    _session: Arc<Session>,
}

impl Helper {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.id.pid
    }

    /// What the helper is (for messages).
    pub fn what(&self) -> &str {
        &self.what
    }

    /// Its exit status if it has exited (then it is reaped and its record removed; later
    /// calls return the same status).
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else {
            return Ok(self.status);
        };
        let status = child.try_wait()?;
        if status.is_some() {
            self.child = None;
            self.status = status;
            let _ = std::fs::remove_file(&self.record);
        }
        Ok(status)
    }

    /// Whether it has been reaped already.
    pub fn has_exited(&self) -> bool {
        self.child.is_none()
    }

    /// Wait up to `timeout` for it to exit, polling (never blocks the async runtime).
    pub async fn wait_timeout(&mut self, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(Some(st));
            }
            if self.child.is_none() || tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// [`Helper::wait_timeout`] for synchronous callers (never call it from async code).
    pub fn wait_timeout_blocking(
        &mut self,
        timeout: Duration,
    ) -> std::io::Result<Option<ExitStatus>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(Some(st));
            }
            if self.child.is_none() || std::time::Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Send `sig` while it runs.
    pub fn signal(&self, sig: rustix::process::Signal) {
        if self.child.is_some() {
            process::signal(self.id.pid, sig);
        }
    }

    /// SIGKILL and wait up to `timeout` for the exit, polling (never blocks the async
    /// runtime); true if it is gone.
    pub async fn kill_async(&mut self, timeout: Duration) -> bool {
        self.signal(rustix::process::Signal::KILL);
        matches!(self.wait_timeout(timeout).await, Ok(Some(_))) || self.child.is_none()
    }

    /// SIGKILL and reap, blocking (for `Drop` and synchronous code). A killed process exits
    /// at once (unless stuck in the kernel), so the wait is short.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            self.status = child.wait().ok();
            let _ = std::fs::remove_file(&self.record);
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if self.child.is_some() {
            tracing::debug!(pid = self.id.pid, what = %self.what, "killing helper");
            self.kill();
        }
    }
}

/// What [`reap_leftovers`] cleaned up.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reaped {
    /// Helper processes that still ran and were killed: `(pid, program)`.
    pub killed: Vec<(u32, String)>,
    /// Partial volumes removed.
    pub volumes: Vec<PathBuf>,
    /// Sessions of dead runs removed (owner pids).
    pub sessions: Vec<u32>,
}

impl Reaped {
    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.killed.is_empty() && self.volumes.is_empty() && self.sessions.is_empty()
    }
}

/// [`reap_leftovers`] for async code (on the blocking pool).
pub async fn reap_leftovers_async(run_base: &Path) -> Reaped {
    let base = run_base.to_path_buf();
    tokio::task::spawn_blocking(move || reap_leftovers(&base))
        .await
        .unwrap_or_default()
}

/// Clean up after runs that died (SIGKILL, power loss, a crash) under `run_base`: kill their
/// helpers that still run, remove their partial volumes and temporary directories; each with
/// a warning. Sessions of live runs are left alone. Failures are warned about, never fatal.
pub fn reap_leftovers(run_base: &Path) -> Reaped {
    let mut reaped = Reaped::default();
    let Ok(entries) = std::fs::read_dir(run_base.join(SESSIONS)) else {
        return reaped;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let mut parts = name.split('-');
        let (Some(pid), Some(start)) = (
            parts.next().and_then(|p| p.parse::<u32>().ok()),
            parts.next().and_then(|s| s.parse::<u64>().ok()),
        ) else {
            continue;
        };
        if (ProcId { pid, start }).is_alive() {
            continue;
        }
        reap_session(&entry.path(), pid, &mut reaped);
    }
    reaped
}

fn read_record(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn reap_session(dir: &Path, owner: u32, reaped: &mut Reaped) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    // Processes first: a helper may still hold a volume open.
    files.sort_by_key(|p| {
        !p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("proc-"))
    });
    for file in files {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("proc-") {
            let Some(v) = read_record(&file) else {
                continue;
            };
            let (Some(pid), Some(start)) = (
                v["pid"].as_u64().and_then(|p| u32::try_from(p).ok()),
                v["start"].as_u64(),
            ) else {
                continue;
            };
            let id = ProcId { pid, start };
            if id.is_alive() {
                let program = v["program"].as_str().unwrap_or("?").to_string();
                warn!(
                    "killing {program} (pid {pid}) left running by an interrupted vmdump run (pid {owner})"
                );
                process::signal(pid, rustix::process::Signal::KILL);
                if !process::wait_exit_blocking(id, KILL_GRACE) {
                    warn!("{program} (pid {pid}) did not exit after SIGKILL");
                }
                reaped.killed.push((pid, program));
            }
        } else if name.starts_with("volume-") {
            let Some(v) = read_record(&file) else {
                continue;
            };
            if let Some(tree) = v["tree"].as_str().map(PathBuf::from) {
                match std::fs::remove_dir_all(&tree) {
                    Ok(()) => {
                        warn!(
                            "removed partial volume {} left by an interrupted vmdump run (pid {owner})",
                            tree.display()
                        );
                        reaped.volumes.push(tree);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => warn!("cannot remove partial volume {}: {e}", tree.display()),
                }
                continue;
            }
            let Some(path) = v["path"].as_str().map(PathBuf::from) else {
                continue;
            };
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    warn!(
                        "removed partial volume {} left by an interrupted vmdump run (pid {owner})",
                        path.display()
                    );
                    reaped.volumes.push(path.clone());
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn!("cannot remove partial volume {}: {e}", path.display()),
            }
            if let Some(d) = v["dir"].as_str() {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => reaped.sessions.push(owner),
        Err(e) => warn!("cannot remove {}: {e}", dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session dir named after a dead owner, as a SIGKILLed run leaves it.
    fn dead_session(base: &Path) -> PathBuf {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start = ProcId::of(pid).map_or(1, |p| p.start);
        child.wait().unwrap();
        let dir = base.join(SESSIONS).join(format!("{pid}-{start}-0"));
        std::fs::create_dir_all(dir.join("tmp-qsd-0")).unwrap();
        dir
    }

    #[test]
    fn reaps_helpers_volumes_and_dirs_of_dead_runs_only() {
        let base = tempfile::tempdir().unwrap();
        // A live session (ours) with a helper: untouched by the reaper.
        let live = Session::open(base.path()).unwrap();
        let mut sleeper = Command::new("sleep");
        sleeper.arg("30");
        let mut helper = live.spawn("sleep", sleeper).unwrap();
        // A dead run's session with a running stray process, a partial volume and a volume
        // record whose file was never created.
        let dead = dead_session(base.path());
        let mut stray = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let stray_id = ProcId::of(stray.id()).unwrap();
        std::fs::write(
            dead.join(format!("proc-{}", stray_id.pid)),
            json!({"pid": stray_id.pid, "start": stray_id.start, "program": "sleep"}).to_string(),
        )
        .unwrap();
        // A recycled pid: same pid, other start time: must not be killed.
        std::fs::write(
            dead.join(format!("proc-{}", helper.pid())),
            json!({"pid": helper.pid(), "start": 1, "program": "sleep"}).to_string(),
        )
        .unwrap();
        let vol = base.path().join("vm-100-disk-0.qcow2");
        std::fs::write(&vol, b"partial").unwrap();
        std::fs::write(
            dead.join("volume-0"),
            json!({"path": vol, "dir": null}).to_string(),
        )
        .unwrap();
        std::fs::write(
            dead.join("volume-1"),
            json!({"path": base.path().join("never-created"), "dir": null}).to_string(),
        )
        .unwrap();

        let reaped = reap_leftovers(base.path());
        assert_eq!(reaped.killed, vec![(stray_id.pid, "sleep".to_string())]);
        assert_eq!(reaped.volumes, vec![vol.clone()]);
        assert_eq!(reaped.sessions.len(), 1);
        assert!(stray.wait().unwrap().code().is_none(), "killed by a signal");
        assert!(!vol.exists());
        assert!(!dead.exists());
        assert!(live.path().exists());
        assert!(
            helper.try_wait().unwrap().is_none(),
            "the live run's helper still runs"
        );
        assert!(reap_leftovers(base.path()).is_empty());
        drop(helper);
        let dir = live.path().to_path_buf();
        drop(live);
        assert!(!dir.exists());
    }

    #[test]
    fn a_dead_runs_directory_volume_goes_with_its_contents_and_a_committed_one_stays() {
        let base = tempfile::tempdir().unwrap();
        let dead = dead_session(base.path());
        let tree = base.path().join("subvol-100-disk-0.subvol");
        std::fs::create_dir_all(tree.join("etc/deep")).unwrap();
        std::fs::write(tree.join("etc/deep/file"), b"partial").unwrap();
        std::fs::write(dead.join("volume-0"), json!({"tree": tree}).to_string()).unwrap();
        let reaped = reap_leftovers(base.path());
        assert_eq!(reaped.volumes, vec![tree.clone()]);
        assert!(!tree.exists());

        // A live run's record: committed, it is forgotten and the volume stays.
        let live = Session::open(base.path()).unwrap();
        let kept = base.path().join("subvol-101-disk-0.subvol");
        let record = live.record_tree(&kept).unwrap();
        std::fs::create_dir(&kept).unwrap();
        assert_eq!(
            std::fs::read_dir(live.path()).unwrap().count(),
            1,
            "the record is in the session"
        );
        record.commit();
        assert_eq!(std::fs::read_dir(live.path()).unwrap().count(), 0);
        drop(live);
        assert!(reap_leftovers(base.path()).is_empty());
        assert!(kept.exists());
    }

    #[test]
    fn helper_dies_with_the_spawning_process_not_with_the_spawning_thread() {
        let base = tempfile::tempdir().unwrap();
        let session = Session::open(base.path()).unwrap();
        // Spawned from a short-lived thread: the helper must survive that thread's end.
        let s = Arc::clone(&session);
        let mut helper = std::thread::spawn(move || {
            let mut c = Command::new("sleep");
            c.arg("30");
            s.spawn("sleep", c).unwrap()
        })
        .join()
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            helper.try_wait().unwrap().is_none(),
            "killed with its thread"
        );
        let record = session.path().join(format!("proc-{}", helper.pid()));
        assert!(record.exists());
        helper.kill();
        assert!(!record.exists());
    }
}

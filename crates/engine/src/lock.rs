//! The node-global backup lock: one backup job at a time per run directory, as vzdump's
//! `flock` on `/var/run/vzdump.lock`. Holding it is also what makes leftovers of an earlier
//! run (QEMU jobs, `.dat` files) safe to remove: nobody else can be writing them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmdump_guest::try_lock_file;
use vmdump_task::Cancel;

use crate::error::{Error, Result};
use crate::name::ArchiveName;

/// File name of the lock in the run directory.
pub const LOCK_FILE: &str = "backup.lock";

/// How often a waiting job retries.
const POLL: Duration = Duration::from_millis(200);

/// The held lock; released on drop, and by the kernel if the process dies.
#[derive(Debug)]
pub struct JobLock {
    _file: File,
    path: PathBuf,
}

impl JobLock {
    /// Take `<run_dir>/backup.lock`, waiting up to `wait` (vzdump's `lockwait`).
    /// `on_wait` is called once if the lock is busy (to log that the job waits);
    /// `cancel` ends the wait early.
    pub async fn acquire(
        run_dir: &Path,
        wait: Duration,
        cancel: &Cancel,
        on_wait: impl FnOnce(),
    ) -> Result<Self> {
        let path = run_dir.join(LOCK_FILE);
        let io_err = |what: &'static str, source: std::io::Error| Error::File {
            what,
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(run_dir).map_err(|e| io_err("create lock directory", e))?;
        let deadline = Instant::now() + wait;
        let mut on_wait = Some(on_wait);
        loop {
            if let Some(file) = try_lock_file(&path).map_err(|e| io_err("lock", e))? {
                return Ok(JobLock { _file: file, path });
            }
            if cancel.is_cancelled() {
                return Err(Error::Interrupted);
            }
            if Instant::now() >= deadline {
                return Err(Error::Lock {
                    path: path.clone(),
                    detail: if wait.is_zero() {
                        "(wait = 0)"
                    } else {
                        "- got timeout"
                    },
                });
            }
            if let Some(f) = on_wait.take() {
                f();
            }
            tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Remove the temporary files (`vzdump-qemu-<vmid>-*.dat`, `*.vma.dat`) an earlier,
/// killed backup of `vmid` left in `dir`. Call only while holding the [`JobLock`]. A
/// temporary whose `.log` is locked belongs to a backup running now (a job with another run
/// directory writing to the same directory) and is left alone. Returns the removed paths.
pub fn remove_stale_temporaries(dir: &Path, vmid: u32) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if ArchiveName::is_temporary_of(name, vmid)
            && e.file_type().is_ok_and(|t| t.is_file())
            && !in_use(dir, name)
            && std::fs::remove_file(e.path()).is_ok()
        {
            removed.push(e.path());
        }
    }
    removed.sort();
    removed
}

/// Whether the backup that writes temporary `name` in `dir` still runs (holds its log's lock).
fn in_use(dir: &Path, name: &str) -> bool {
    let Some(log) = ArchiveName::log_of_temporary(name).map(|l| dir.join(l)) else {
        return false;
    };
    if !log.exists() {
        return false;
    }
    // An error (e.g. a read-only directory) counts as in use: never remove what may be live.
    !matches!(try_lock_file(&log), Ok(Some(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn second_job_waits_then_times_out_and_gets_it_after_release() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stop = Cancel::new();
        let first = JobLock::acquire(dir.path(), Duration::ZERO, &stop, || {})
            .await
            .expect("first");
        let mut waited = false;
        let t0 = Instant::now();
        let err = JobLock::acquire(dir.path(), Duration::from_millis(500), &stop, || {
            waited = true;
        })
        .await
        .expect_err("busy");
        assert!(waited, "the wait was not announced");
        assert!(t0.elapsed() >= Duration::from_millis(450));
        assert!(
            err.to_string().contains("got timeout"),
            "unexpected message: {err}"
        );
        let err = JobLock::acquire(dir.path(), Duration::ZERO, &stop, || {})
            .await
            .expect_err("busy");
        assert!(err.to_string().contains("(wait = 0)"), "{err}");
        drop(first);
        JobLock::acquire(dir.path(), Duration::ZERO, &stop, || {})
            .await
            .expect("free after release");
    }

    #[test]
    fn only_this_guests_temporaries_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let names = [
            "vzdump-qemu-100-2025_01_05-02_00_01.vma.dat",
            "vzdump-qemu-100-2025_01_05-02_00_02.dat",
            "vzdump-qemu-100-2025_01_05-02_00_03.vma.zst",
            "vzdump-qemu-1000-2025_01_05-02_00_01.vma.dat",
            "vzdump-qemu-101-2025_01_05-02_00_01.dat",
        ];
        for n in names {
            std::fs::write(dir.path().join(n), b"x").expect("write");
        }
        // A backup running now (its log locked) keeps its temporary.
        let running = "vzdump-qemu-100-2025_01_05-02_00_04.vma.dat";
        std::fs::write(dir.path().join(running), b"x").expect("write");
        let log = dir.path().join("vzdump-qemu-100-2025_01_05-02_00_04.log");
        let _held = try_lock_file(&log).expect("lock").expect("free");
        // A killed one's log is not locked any more.
        std::fs::write(
            dir.path().join("vzdump-qemu-100-2025_01_05-02_00_01.log"),
            b"",
        )
        .expect("write");
        let removed = remove_stale_temporaries(dir.path(), 100);
        assert_eq!(
            removed,
            vec![dir.path().join(names[0]), dir.path().join(names[1])]
        );
        assert!(
            dir.path().join(running).exists(),
            "a live backup's .dat was removed"
        );
        for n in &names[2..] {
            assert!(dir.path().join(n).exists(), "{n} was removed");
        }
    }
}

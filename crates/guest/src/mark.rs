//! The backup mark: `<run base>/<vmid>.backup`, held (`flock`) by the backup of that VM for
//! its whole duration, and naming what the backup has done to the guest so far.
//!
//! A backup changes the guest's state for a moment (filesystems frozen, CPUs paused, QEMU shut
//! down and started again paused). If vmdump dies in that moment (SIGKILL, power cut of the
//! host process), nothing in QEMU says who paused the guest or why. The mark does: its owner
//! holds the `flock` (the kernel drops it when the owner dies, so a free lock means a dead
//! owner, with no pid-reuse question) and its text is the hold the guest is in:
//!
//! ```text
//! pid 4242
//! hold paused
//! ```
//!
//! The next backup of the VM, `vmdump vm status` and `vmdump vm start` find a mark without a
//! live owner and undo its hold ([`crate::Runtime::recover`]): thaw, `cont`, or start the VM
//! again. The same free mark tells that a `lock: backup` in the guest config is stale.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::rundir::try_lock_file;

/// What a backup has done to the guest, as far as it must be undone if the backup dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Nothing to undo.
    None,
    /// The guest's filesystems may be frozen by the agent: thaw them.
    Frozen,
    /// The guest's CPUs may be stopped (QMP `stop`, or QEMU started with `-S`): `cont`.
    Paused,
    /// Both, the filesystems frozen and then the CPUs stopped (the fleecing setup's pause
    /// inside a freeze): `cont` first (the agent runs in the guest), then thaw.
    FrozenPaused,
    /// The guest may be shut down for the backup: start it again.
    Stopped,
}

impl Hold {
    fn as_str(self) -> &'static str {
        match self {
            Hold::None => "none",
            Hold::Frozen => "frozen",
            Hold::Paused => "paused",
            Hold::FrozenPaused => "frozen-paused",
            Hold::Stopped => "stopped",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Hold::None,
            "frozen" => Hold::Frozen,
            "paused" => Hold::Paused,
            "frozen-paused" => Hold::FrozenPaused,
            "stopped" => Hold::Stopped,
            _ => return None,
        })
    }
}

/// What a mark file says (see [`BackupMark::inspect`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkState {
    /// No backup of this VM runs, and none left a mark.
    Free,
    /// A backup of this VM runs now (process `pid`).
    Live {
        /// The owner's pid.
        pid: Option<u32>,
    },
}

/// A held backup mark; removed on drop (and its lock released by the kernel if the process
/// dies without dropping it).
#[derive(Debug)]
pub struct BackupMark {
    file: File,
    path: PathBuf,
    vmid: u32,
    keep: bool,
}

/// A mark left by a dead owner: taken over by this process, with what it said.
#[derive(Debug)]
pub struct Leftover {
    /// The mark, now ours (drop it when the hold is undone).
    pub mark: BackupMark,
    /// The hold the dead backup left.
    pub hold: Hold,
    /// The dead backup's pid, if it was written.
    pub pid: Option<u32>,
}

impl BackupMark {
    /// `<base>/<vmid>.backup`.
    pub fn path(base: &Path, vmid: u32) -> PathBuf {
        base.join(format!("{vmid}.backup"))
    }

    /// Take the mark without waiting. `Ok(Err(state))` if another live process holds it.
    /// A mark a dead owner left is taken over: see [`Leftover`] (`hold` says what it left).
    pub fn acquire(base: &Path, vmid: u32) -> Result<std::result::Result<Leftover, MarkState>> {
        let path = Self::path(base, vmid);
        let io = |source| Error::Io {
            vmid,
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(base).map_err(|source| Error::Io {
            vmid,
            path: base.to_path_buf(),
            source,
        })?;
        let mut tries = 0;
        loop {
            let Some(file) = try_lock_file(&path).map_err(io)? else {
                // `inspect` in another process holds it for a moment only.
                tries += 1;
                if tries < 10 {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                }
                let (pid, _) = read(&path);
                return Ok(Err(MarkState::Live { pid }));
            };
            // The previous owner may have removed the file between our open and our lock:
            // then we hold a lock on an unlinked inode; try again.
            if !same_file(&file, &path) {
                continue;
            }
            let (pid, hold) = read(&path);
            return Ok(Ok(Leftover {
                mark: BackupMark {
                    file,
                    path,
                    vmid,
                    keep: false,
                },
                hold: hold.unwrap_or(Hold::None),
                pid,
            }));
        }
    }

    /// Whether a live process holds the mark of `vmid` (without taking it).
    pub fn inspect(base: &Path, vmid: u32) -> Result<MarkState> {
        let path = Self::path(base, vmid);
        if !path.exists() {
            return Ok(MarkState::Free);
        }
        match try_lock_file(&path) {
            Ok(Some(_)) => Ok(MarkState::Free),
            Ok(None) => Ok(MarkState::Live { pid: read(&path).0 }),
            Err(source) => Err(Error::Io { vmid, path, source }),
        }
    }

    /// Release the lock but keep the file (and its hold) for a later recovery.
    pub fn keep(mut self) {
        self.keep = true;
    }

    /// Record the guest's hold (written before the state change it protects).
    pub fn set(&mut self, hold: Hold) -> Result<()> {
        let text = format!("pid {}\nhold {}\n", std::process::id(), hold.as_str());
        let res = (|| {
            self.file.set_len(0)?;
            use std::io::Seek;
            self.file.seek(std::io::SeekFrom::Start(0))?;
            self.file.write_all(text.as_bytes())?;
            self.file.sync_data()
        })();
        res.map_err(|source| Error::Io {
            vmid: self.vmid,
            path: self.path.clone(),
            source,
        })
    }
}

impl Drop for BackupMark {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        // Remove while still holding the lock; the lock goes with the file handle.
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the backup mark");
            }
        }
    }
}

fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn read(path: &Path) -> (Option<u32>, Option<Hold>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut pid = None;
    let mut hold = None;
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("pid", v)) => pid = v.trim().parse().ok(),
            Some(("hold", v)) => hold = Hold::parse(v.trim()),
            _ => {}
        }
    }
    (pid, hold)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_mark_is_live_and_a_dropped_one_is_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut held = BackupMark::acquire(dir.path(), 100)
            .expect("io")
            .expect("free");
        assert_eq!(held.hold, Hold::None);
        held.mark.set(Hold::Paused).expect("set");
        assert_eq!(
            BackupMark::inspect(dir.path(), 100).expect("io"),
            MarkState::Live {
                pid: Some(std::process::id())
            }
        );
        // flock is per open file: a second acquire in this process sees it held, too.
        assert!(BackupMark::acquire(dir.path(), 100).expect("io").is_err());
        drop(held);
        assert!(!BackupMark::path(dir.path(), 100).exists());
        assert_eq!(
            BackupMark::inspect(dir.path(), 100).expect("io"),
            MarkState::Free
        );
    }

    #[test]
    fn a_mark_left_by_a_dead_owner_is_taken_over_with_its_hold() {
        let dir = tempfile::tempdir().expect("tempdir");
        // What a killed owner leaves: the file, no lock.
        std::fs::write(
            BackupMark::path(dir.path(), 100),
            "pid 4000000\nhold stopped\n",
        )
        .expect("write");
        assert_eq!(
            BackupMark::inspect(dir.path(), 100).expect("io"),
            MarkState::Free
        );
        let left = BackupMark::acquire(dir.path(), 100)
            .expect("io")
            .expect("free");
        assert_eq!(left.hold, Hold::Stopped);
        assert_eq!(left.pid, Some(4_000_000));
    }
}

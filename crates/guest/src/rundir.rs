//! The per-VM run directory: sockets, pid file, serial log.
//!
//! `<run base>/<vmid>/` (run base default `/run/vmdump`, `$VMDUMP_RUN_DIR` overrides it):
//!
//! | file | what |
//! | --- | --- |
//! | `qmp.sock` | QMP monitor for long-lived clients (the backup engine) |
//! | `ctl.sock` | a second QMP monitor for short control connections (`vmdump vm status`, ...) |
//! | `qga.sock` | guest agent channel (only with `agent: 1`) |
//! | `qemu.pid` | QEMU's pid (`-pidfile`) |
//! | `serial.log` | the guest's first serial port |
//! | `qemu.log` | QEMU's stdout and stderr while it starts (and of a backup helper) |
//!
//! The helper processes of a vmdump run (the paused QEMU of a stopped-VM backup,
//! `qemu-storage-daemon`) and the volumes a restore is creating are recorded in the run's
//! session under `<run base>/session/` (see `vmdump-launch`). A backup helper QEMU uses this
//! VM's run directory like the VM itself (same sockets and pid file), so `vmdump vm status`
//! shows it and `vmdump vm start` refuses to start a second QEMU on the same disks.
//!
//! QEMU serves one client per monitor, so a backup holding `qmp.sock` does not block status
//! queries on `ctl.sock`. Events are delivered on both.

use std::path::{Path, PathBuf};

use tracing::debug;

use crate::error::{Error, Result};

/// Take an exclusive `flock` on `path` (created if missing) without waiting: the open file
/// holds it until dropped, and the kernel drops it if the process dies. `None` if another
/// process holds it.
pub fn try_lock_file(path: &Path) -> std::io::Result<Option<std::fs::File>> {
    use rustix::fs::{flock, FlockOperation};
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(file)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// One VM's run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    vmid: u32,
    dir: PathBuf,
}

/// The files QEMU creates in a run directory (everything but the serial log).
const RUNTIME_FILES: [&str; 4] = ["qmp.sock", "ctl.sock", "qga.sock", "qemu.pid"];

impl RunDir {
    /// `<base>/<vmid>`.
    pub fn new(base: &Path, vmid: u32) -> Self {
        RunDir {
            vmid,
            dir: base.join(vmid.to_string()),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// QMP socket for long-lived clients.
    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }

    /// QMP socket for short control connections.
    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("ctl.sock")
    }

    /// Guest agent socket.
    pub fn qga_socket(&self) -> PathBuf {
        self.dir.join("qga.sock")
    }

    /// QEMU pid file.
    pub fn pidfile(&self) -> PathBuf {
        self.dir.join("qemu.pid")
    }

    /// Serial console log.
    pub fn serial_log(&self) -> PathBuf {
        self.dir.join("serial.log")
    }

    /// QEMU's own stdout and stderr (the start of a VM, the backup helper).
    pub fn qemu_log(&self) -> PathBuf {
        self.dir.join("qemu.log")
    }

    /// Create the directory (mode 0700 for a fresh one).
    pub fn create(&self) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|source| self.io(&self.dir, source))
    }

    /// The pid of a live QEMU that belongs to this run directory, if any. A pid file whose
    /// process is gone (or is another program now) is stale.
    pub fn live_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.pidfile()).ok()?;
        let pid: u32 = text.trim().parse().ok()?;
        vmdump_launch::process::has_arg(pid, &self.pidfile()).then_some(pid)
    }

    /// Remove sockets and the pid file (the serial log stays for post-mortems) and the
    /// directory if it is then empty. Only call when no QEMU of this VM runs.
    pub fn clean(&self) -> Result<()> {
        for f in RUNTIME_FILES {
            let p = self.dir.join(f);
            match std::fs::remove_file(&p) {
                Ok(()) => debug!(path = %p.display(), "removed"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(self.io(&p, source)),
            }
        }
        Ok(())
    }

    /// Remove the whole directory including the serial log.
    pub fn remove(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(self.io(&self.dir, source)),
        }
    }

    /// Whether any runtime file (socket, pid file) is left.
    pub fn has_leftovers(&self) -> bool {
        RUNTIME_FILES.iter().any(|f| self.dir.join(f).exists())
    }

    fn io(&self, path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            vmid: self.vmid,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// An exclusive per-VM lock (`<run base>/<vmid>.lock`, `flock`), held while a lifecycle
/// operation changes the VM's state so two vmdump processes never start or clean up the same
/// VM at once. Released on drop (and by the kernel if the process dies).
#[derive(Debug)]
pub struct VmLock {
    _file: std::fs::File,
}

impl VmLock {
    fn path(base: &Path, vmid: u32) -> PathBuf {
        base.join(format!("{vmid}.lock"))
    }

    /// Take the lock without waiting; `None` if another process holds it.
    pub fn try_acquire(base: &Path, vmid: u32) -> Result<Option<Self>> {
        std::fs::create_dir_all(base).map_err(|source| Error::Io {
            vmid,
            path: base.to_path_buf(),
            source,
        })?;
        let path = Self::path(base, vmid);
        match try_lock_file(&path) {
            Ok(file) => Ok(file.map(|f| VmLock { _file: f })),
            Err(source) => Err(Error::Io { vmid, path, source }),
        }
    }

    /// Take the lock, waiting up to `timeout`.
    pub async fn acquire(base: &Path, vmid: u32, timeout: std::time::Duration) -> Result<Self> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(l) = Self::try_acquire(base, vmid)? {
                return Ok(l);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Busy { vmid });
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

//! A VM that is not running is backed up from a QEMU started paused in prelaunch (`-S`) that
//! opens only the disks, under the same node names a running VM uses (`drive-<key>`); it is
//! quit afterwards. The guest never runs, so the disks cannot change.
//!
//! This launcher lives in the engine because `vmdump-guest` had not landed when the engine was
//! written. It uses `-machine none`: block jobs do not need a machine, and no guest device
//! means no firmware, memory or CPU setup.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use vmdump_qmp::Client;

use crate::error::{Error, Result};

/// One disk to open: archive device name (`drive-scsi0`), host path, format.
#[derive(Debug, Clone)]
pub struct StoppedDisk {
    /// QEMU drive id, used as the node name.
    pub drive: String,
    /// Image path (file or block device).
    pub path: PathBuf,
    /// `raw`, `qcow2`, ...
    pub format: String,
}

/// A QEMU started only for a backup.
#[derive(Debug)]
pub struct PausedQemu {
    child: Child,
    /// Its monitor.
    pub qmp: Client,
    dir: PathBuf,
}

impl PausedQemu {
    /// Starts `qemu-system-x86_64 -S -machine none` with the disks; sockets and the QEMU log
    /// go into `dir` (created).
    pub async fn start(dir: &Path, disks: &[StoppedDisk]) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::file("create run dir", dir, e))?;
        let qmp_path = dir.join("backup-qmp.sock");
        let log_path = dir.join("backup-qemu.log");
        let _ = std::fs::remove_file(&qmp_path);
        let log =
            std::fs::File::create(&log_path).map_err(|e| Error::file("create", &log_path, e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Error::file("create", &log_path, e))?;
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-S", "-nodefaults", "-display", "none", "-machine", "none"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()));
        for d in disks {
            let proto = match std::fs::metadata(&d.path) {
                Ok(m) if std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()) => {
                    "host_device"
                }
                Ok(_) => "file",
                Err(e) => return Err(Error::file("open disk image", &d.path, e)),
            };
            cmd.arg("-blockdev").arg(format!(
                "driver={},node-name={},file.driver={proto},file.filename={}",
                d.format,
                d.drive,
                d.path.display()
            ));
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| Error::Qemu {
                output: format!("cannot run qemu-system-x86_64: {e}"),
            })?;
        let qmp = match Client::connect_retry(
            &qmp_path,
            Duration::from_secs(30),
            Duration::from_secs(20),
        )
        .await
        {
            Ok(q) => q,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let text = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(Error::Qemu {
                    output: format!("QEMU did not start: {} ({e})", text.trim()),
                });
            }
        };
        Ok(Self {
            child,
            qmp,
            dir: dir.to_path_buf(),
        })
    }

    /// Quits QEMU (kills it if `quit` does not work within 10 s).
    pub async fn stop(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.qmp.quit()).await;
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.dir.join("backup-qmp.sock"));
    }
}

impl Drop for PausedQemu {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

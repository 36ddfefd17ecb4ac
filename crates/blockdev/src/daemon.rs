//! `qemu-storage-daemon` exporting one image over NBD.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use vmdump_launch::{Helper, Session};

use crate::error::{Error, Result};

/// Export name of every [`StorageDaemon`].
pub const EXPORT_NAME: &str = "disk";
const START_TIMEOUT: Duration = Duration::from_secs(20);
const QUIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `qemu-storage-daemon` with a `file` + format blockdev, an NBD server on a unix
/// socket and one export named [`EXPORT_NAME`], plus a QMP monitor. The process is started
/// through `vmdump-launch` (it dies with vmdump and is recorded in the session), its sockets
/// live in a directory of the session. [`StorageDaemon::stop`] quits it over QMP (qcow2
/// metadata and bitmaps are written back cleanly); dropping it without `stop` sends SIGTERM
/// (which the daemon also handles as a clean quit) and kills it after a deadline.
#[derive(Debug)]
pub struct StorageDaemon {
    helper: Helper,
    qmp: vmdump_qmp::Client,
    dir: PathBuf,
    path: PathBuf,
    format: String,
    read_only: bool,
}

impl StorageDaemon {
    /// Start the daemon for `path` and wait until its monitor answers (by then the export
    /// exists: the daemon sets up its command line before it serves the monitor). `format:
    /// None` detects the format with `qemu-img info`. With `direct_io` a writable image
    /// bypasses the page cache (`O_DIRECT`, native AIO) where the file system allows it, so
    /// written data reaches the disk while the writer works, with one copy less. That pays
    /// off when writes do not allocate (qcow2 with preallocated metadata); an allocating
    /// write through `O_DIRECT` waits for its metadata. Reads always keep the page cache.
    pub async fn start(
        session: &Arc<Session>,
        path: &Path,
        format: Option<&str>,
        read_only: bool,
        direct_io: bool,
    ) -> Result<Self> {
        let path = std::fs::canonicalize(path).map_err(|e| Error::io("open", path, e))?;
        let format = match format {
            Some(f) => f.to_owned(),
            None => crate::qemu_img::detect_format(&path)?,
        };
        if path.to_str().is_none() {
            return Err(Error::Path { path });
        }
        let launch = |source| Error::Launch {
            tool: "qemu-storage-daemon",
            path: path.clone(),
            source,
        };
        let dir = session.temp_dir("qsd").map_err(launch)?;
        let nbd_sock = dir.join("nbd.sock");
        let qmp_sock = dir.join("qmp.sock");
        let discard = if read_only { "ignore" } else { "unmap" };
        let direct = direct_io && !read_only && crate::raw::supports_direct_io(&path);
        let aio = if direct { "native" } else { "threads" };
        let blockdev = serde_json::json!({
            "driver": format,
            "node-name": "fmt0",
            "read-only": read_only,
            "discard": discard,
            "file": {
                "driver": crate::raw::protocol_driver(&path).map_err(|e| Error::io("open", &path, e))?,
                "filename": path,
                "read-only": read_only,
                "discard": discard,
                "aio": aio,
                "cache": { "direct": direct },
            },
        });
        let export = serde_json::json!({
            "type": "nbd",
            "id": "e0",
            "node-name": "fmt0",
            "name": EXPORT_NAME,
            "writable": !read_only,
        });
        let stderr_path = dir.join("stderr");
        let stderr = std::fs::File::create(&stderr_path)
            .map_err(|e| Error::io("create", &stderr_path, e))?;
        let remove_dir = |e| {
            let _ = std::fs::remove_dir_all(&dir);
            e
        };
        let mut cmd = Command::new("qemu-storage-daemon");
        cmd.arg("--chardev")
            .arg(format!(
                "socket,id=m0,path={},server=on,wait=off",
                vmdump_launch::qemu_opt_path(&qmp_sock)
            ))
            .args(["--monitor", "chardev=m0"])
            .arg("--blockdev")
            .arg(blockdev.to_string())
            .arg("--nbd-server")
            .arg(format!(
                "addr.type=unix,addr.path={}",
                vmdump_launch::qemu_opt_path(&nbd_sock)
            ))
            .arg("--export")
            .arg(export.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let helper = session
            .spawn("qemu-storage-daemon", cmd)
            .map_err(launch)
            .map_err(remove_dir)?;
        let mut daemon = Starting {
            helper,
            stderr: stderr_path,
            path: path.clone(),
        };
        let qmp = match daemon.connect(&qmp_sock).await {
            Ok(q) => q,
            Err(e) => {
                daemon.helper.kill();
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        tracing::debug!(image = %path.display(), %format, read_only, direct,
            "qemu-storage-daemon exporting image");
        Ok(StorageDaemon {
            helper: daemon.helper,
            qmp,
            dir,
            path,
            format,
            read_only,
        })
    }

    /// The NBD unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("nbd.sock")
    }

    /// The image format in use.
    pub fn format(&self) -> &str {
        &self.format
    }

    /// The image path (canonical).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Process id of the daemon.
    pub fn pid(&self) -> u32 {
        self.helper.pid()
    }

    /// Whether the export is read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Quit over QMP and wait; killed after a deadline. A non-zero exit is an error.
    pub async fn stop(mut self) -> Result<()> {
        if let Err(e) = self.qmp.quit().await {
            // `quit` may race with the monitor closing; the exit status decides.
            tracing::debug!(error = %e, "qemu-storage-daemon: quit");
        }
        let status = self
            .helper
            .wait_timeout(QUIT_TIMEOUT)
            .await
            .map_err(|e| Error::io("wait for qemu-storage-daemon of", &self.path, e))?;
        let stderr = read_trimmed(&self.dir.join("stderr"));
        let _ = std::fs::remove_dir_all(&self.dir);
        match status {
            Some(st) if st.success() => Ok(()),
            Some(st) => Err(self.tool(format!("exited with {st}: {stderr}"))),
            None => {
                self.helper.kill();
                Err(self.tool(format!("did not quit within {QUIT_TIMEOUT:?}")))
            }
        }
    }

    fn tool(&self, detail: String) -> Error {
        Error::Tool {
            tool: "qemu-storage-daemon",
            path: self.path.clone(),
            detail,
        }
    }
}

impl Drop for StorageDaemon {
    fn drop(&mut self) {
        if !self.helper.has_exited() {
            self.helper.signal(rustix::process::Signal::TERM);
            if !matches!(self.helper.wait_timeout_blocking(QUIT_TIMEOUT), Ok(Some(_))) {
                tracing::warn!(image = %self.path.display(), "qemu-storage-daemon did not quit, killing it");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read_trimmed(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// A daemon until its monitor answered.
struct Starting {
    helper: Helper,
    stderr: PathBuf,
    path: PathBuf,
}

impl Starting {
    /// The daemon's exit as an error, if it has exited.
    fn exited(&mut self) -> Result<()> {
        match self
            .helper
            .try_wait()
            .map_err(|e| Error::io("wait for qemu-storage-daemon of", &self.path, e))?
        {
            Some(st) => Err(Error::Tool {
                tool: "qemu-storage-daemon",
                path: self.path.clone(),
                detail: format!("exited with {st}: {}", read_trimmed(&self.stderr)),
            }),
            None => Ok(()),
        }
    }

    /// Connect to the monitor; a daemon that exits is reported at once with its stderr.
    async fn connect(&mut self, qmp_sock: &Path) -> Result<vmdump_qmp::Client> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            self.exited()?;
            match vmdump_qmp::Client::connect_with_timeout(qmp_sock, Duration::from_secs(5)).await {
                Ok(c) => return Ok(c),
                Err(vmdump_qmp::Error::Connect { .. })
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(source) => {
                    // The monitor socket exists before the daemon checks its image: a daemon
                    // that fails then may take the connection down with it. Its exit (and
                    // stderr) is the better report.
                    if let Ok(Some(_)) = self.helper.wait_timeout(Duration::from_secs(1)).await {
                        self.exited()?;
                    }
                    return Err(Error::Qmp {
                        path: self.path.clone(),
                        source,
                    });
                }
            }
        }
    }
}

//! Offline access to any QEMU image format (qcow2, raw, vmdk, vdi, ...) through
//! `qemu-storage-daemon`.
//!
//! [`Daemon`] starts `qemu-storage-daemon` with a `file` + format blockdev, an NBD server on a
//! unix socket in a private temporary directory and one export named [`EXPORT_NAME`], plus a
//! QMP monitor socket. Stopping is graceful (`quit` over QMP, so qcow2 metadata and persistent
//! bitmaps are written back cleanly), falling back to SIGKILL after a deadline. `Drop` always
//! stops and reaps the process, on error paths and during panics too. On request
//! ([`Image::open_direct`]) a writable image bypasses the page cache (`O_DIRECT`, native AIO).
//!
//! [`Image`] is the blocking facade for synchronous callers such as the VMA CLI: it owns a
//! small tokio runtime, a [`Daemon`] and a connected [`Client`]. Async callers use [`Daemon`]
//! and connect their own [`Client`] (an [`Image`] must not be created or dropped inside an
//! async context, because it blocks on its own runtime).

use std::io::{BufRead, BufReader, Write};
use std::ops::Range;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::client::{BlockExtent, Client, ClientOptions};
use crate::error::{Error, Result};

/// Export name used by [`Daemon`].
pub const EXPORT_NAME: &str = "disk";
const START_TIMEOUT: Duration = Duration::from_secs(20);
const QUIT_TIMEOUT: Duration = Duration::from_secs(10);

fn tool_error(tool: &'static str, path: &Path, detail: impl Into<String>) -> Error {
    Error::Tool {
        tool,
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

fn run_tool(tool: &'static str, path: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| tool_error(tool, path, format!("cannot run: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(tool_error(
            tool,
            path,
            format!("{}: {}", out.status, stderr.trim()),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What `qemu-img info` says about an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Format name (`qcow2`, `raw`, `vmdk`, ...).
    pub format: String,
    /// Virtual disk size in bytes.
    pub virtual_size: u64,
    /// Bytes allocated on the host, if known.
    pub actual_size: Option<u64>,
}

/// Runs `qemu-img info --output=json -U` (force-share, so it works next to a running QEMU).
pub fn info(path: &Path) -> Result<ImageInfo> {
    let p = path
        .to_str()
        .ok_or_else(|| Error::Usage(format!("non-utf-8 path {}", path.display())))?;
    let out = run_tool("qemu-img", path, &["info", "--output=json", "-U", "--", p])?;
    let v: serde_json::Value = serde_json::from_str(&out)
        .map_err(|e| tool_error("qemu-img", path, format!("bad info json: {e}")))?;
    let format = v["format"]
        .as_str()
        .ok_or_else(|| tool_error("qemu-img", path, "info has no format"))?
        .to_owned();
    let virtual_size = v["virtual-size"]
        .as_u64()
        .ok_or_else(|| tool_error("qemu-img", path, "info has no virtual-size"))?;
    Ok(ImageInfo {
        format,
        virtual_size,
        actual_size: v["actual-size"].as_u64(),
    })
}

/// Detects the image format with `qemu-img info`.
pub fn detect_format(path: &Path) -> Result<String> {
    Ok(info(path)?.format)
}

/// Creates an image: `qemu-img create -f <format> <path> <size>`.
pub fn create(path: &Path, format: &str, size: u64) -> Result<()> {
    let p = path
        .to_str()
        .ok_or_else(|| Error::Usage(format!("non-utf-8 path {}", path.display())))?;
    run_tool(
        "qemu-img",
        path,
        &["create", "-q", "-f", format, "--", p, &size.to_string()],
    )?;
    Ok(())
}

/// Whether the image file `path` can be opened with `O_DIRECT`: not every file system
/// allows it, and QEMU fails to open an image with `cache.direct=on` where it does not.
pub fn supports_direct_io(path: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .is_ok()
}

/// A running `qemu-storage-daemon` exporting one image over NBD on a private unix socket.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    dir: tempfile::TempDir,
    path: PathBuf,
    format: String,
    read_only: bool,
}

impl Daemon {
    /// Starts the daemon and waits until its NBD socket accepts connections. `format: None`
    /// detects the format with `qemu-img info`. The image is accessed through the host's
    /// page cache.
    pub fn start(path: &Path, format: Option<&str>, read_only: bool) -> Result<Self> {
        Self::start_with(path, format, read_only, false)
    }

    /// Like [`Daemon::start`]; with `direct_io` a writable image bypasses the page cache
    /// (`O_DIRECT`, native AIO) where the file system allows it, so written data goes to the
    /// disk while the writer works instead of all at the flush on close, with one copy less.
    /// That pays off when writes do not allocate (qcow2 with preallocated metadata): an
    /// allocating write through `O_DIRECT` waits for its metadata, and is slower than cached.
    pub fn start_with(
        path: &Path,
        format: Option<&str>,
        read_only: bool,
        direct_io: bool,
    ) -> Result<Self> {
        let path = std::fs::canonicalize(path).map_err(|source| Error::Connect {
            addr: path.display().to_string(),
            source,
        })?;
        let format = match format {
            Some(f) => f.to_owned(),
            None => detect_format(&path)?,
        };
        let filename = path
            .to_str()
            .ok_or_else(|| Error::Usage(format!("non-utf-8 path {}", path.display())))?;
        let dir = tempfile::Builder::new().prefix("vmdump-qsd-").tempdir()?;
        let nbd_sock = dir.path().join("nbd.sock");
        let qmp_sock = dir.path().join("qmp.sock");
        let discard = if read_only { "ignore" } else { "unmap" };
        // Reads keep the page cache (and its read-ahead).
        let direct = direct_io && !read_only && supports_direct_io(&path);
        let aio = if direct { "native" } else { "threads" };
        let blockdev = serde_json::json!({
            "driver": format,
            "node-name": "fmt0",
            "read-only": read_only,
            "discard": discard,
            "file": {
                "driver": "file",
                "filename": filename,
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
        let stderr = std::fs::File::create(dir.path().join("stderr"))?;
        let child = Command::new("qemu-storage-daemon")
            .arg("--chardev")
            .arg(format!(
                "socket,id=m0,path={},server=on,wait=off",
                qmp_sock.display()
            ))
            .args(["--monitor", "chardev=m0"])
            .arg("--blockdev")
            .arg(blockdev.to_string())
            .arg("--nbd-server")
            .arg(format!("addr.type=unix,addr.path={}", nbd_sock.display()))
            .arg("--export")
            .arg(export.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| tool_error("qemu-storage-daemon", &path, format!("cannot run: {e}")))?;
        let mut daemon = Self {
            child: Some(child),
            dir,
            path,
            format,
            read_only,
        };
        daemon.wait_ready(&nbd_sock)?;
        tracing::debug!(image = %daemon.path.display(), format = %daemon.format, read_only,
            direct, "qemu-storage-daemon exporting image");
        Ok(daemon)
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr"))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    fn wait_ready(&mut self, sock: &Path) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    return Err(tool_error(
                        "qemu-storage-daemon",
                        &self.path,
                        format!("exited with {status}: {}", self.stderr_text()),
                    ));
                }
            }
            // Probe the QMP socket, not the NBD one: an NBD probe would make the daemon log
            // a failed negotiation.
            if sock.exists() && self.dir.path().join("qmp.sock").exists() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!("qemu-storage-daemon for {}", self.path.display()),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The NBD unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("nbd.sock")
    }

    /// The image format in use.
    pub fn format(&self) -> &str {
        &self.format
    }

    /// The image path (canonical).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Process id of the daemon while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the export is read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Asks the daemon to quit over QMP and waits; kills it after a deadline.
    pub fn stop(mut self) -> Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Err(e) = self.qmp_quit() {
            tracing::debug!(error = %e, "qemu-storage-daemon: qmp quit failed, killing");
            let _ = child.kill();
        }
        let deadline = Instant::now() + QUIT_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                return if status.success() {
                    Ok(())
                } else {
                    Err(tool_error(
                        "qemu-storage-daemon",
                        &self.path,
                        format!("exited with {status}: {}", self.stderr_text()),
                    ))
                };
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Timeout {
                    what: format!("qemu-storage-daemon for {} to quit", self.path.display()),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn qmp_quit(&self) -> std::io::Result<()> {
        let s = UnixStream::connect(self.dir.path().join("qmp.sock"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut r = BufReader::new(s.try_clone()?);
        let mut w = s;
        let mut line = String::new();
        r.read_line(&mut line)?; // greeting
        w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")?;
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 || line.contains("\"return\"") {
                break;
            }
        }
        w.write_all(b"{\"execute\":\"quit\"}\n")?;
        // QEMU drops queued commands of a monitor that disconnects: wait for the answer.
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 || line.contains("\"return\"") {
                return Ok(());
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            tracing::warn!(image = %self.path.display(), error = %e, "stopping qemu-storage-daemon");
        }
    }
}

/// Blocking access to an image: a [`Daemon`], a connected [`Client`] and a private runtime.
pub struct Image {
    client: Option<Client>,
    daemon: Option<Daemon>,
    rt: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("daemon", &self.daemon)
            .finish()
    }
}

impl Image {
    /// Opens `path` (format detected when `None`), read-only or read-write.
    pub fn open(path: &Path, format: Option<&str>, read_only: bool) -> Result<Self> {
        Self::open_with(path, format, read_only, &ClientOptions::default())
    }

    /// Opens `path` of `format` read-write, bypassing the page cache where the file system
    /// allows it (see [`Daemon::start_with`]).
    pub fn open_direct(path: &Path, format: &str) -> Result<Self> {
        Self::open_inner(path, Some(format), false, true, &ClientOptions::default())
    }

    /// Like [`Image::open`] with explicit client options.
    pub fn open_with(
        path: &Path,
        format: Option<&str>,
        read_only: bool,
        options: &ClientOptions,
    ) -> Result<Self> {
        Self::open_inner(path, format, read_only, false, options)
    }

    fn open_inner(
        path: &Path,
        format: Option<&str>,
        read_only: bool,
        direct_io: bool,
        options: &ClientOptions,
    ) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vmdump-image")
            .enable_all()
            .build()?;
        let daemon = Daemon::start_with(path, format, read_only, direct_io)?;
        // The socket file appears at bind(), a moment before listen(): retry briefly.
        let client = rt.block_on(async {
            let mut tries = 0;
            loop {
                match Client::connect_unix(daemon.socket(), EXPORT_NAME, options).await {
                    Err(Error::Connect { .. }) if tries < 50 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => return other,
                }
            }
        })?;
        Ok(Self {
            client: Some(client),
            daemon: Some(daemon),
            rt,
        })
    }

    fn client(&self) -> Result<&Client> {
        self.client.as_ref().ok_or(Error::Closed)
    }

    /// The async client (use with [`Image::runtime`]).
    pub fn nbd(&self) -> Result<&Client> {
        self.client()
    }

    /// The image's runtime handle, to drive [`Image::nbd`] from synchronous code.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        self.rt.handle()
    }

    /// The daemon behind this image.
    pub fn daemon(&self) -> Option<&Daemon> {
        self.daemon.as_ref()
    }

    /// Virtual size in bytes.
    pub fn size(&self) -> u64 {
        self.client.as_ref().map_or(0, Client::size)
    }

    /// Format name.
    pub fn format(&self) -> &str {
        self.daemon.as_ref().map_or("", Daemon::format)
    }

    /// Fills `buf` from `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let data = self.read(offset, buf.len() as u64)?;
        buf.copy_from_slice(&data);
        Ok(())
    }

    /// Reads `len` bytes at `offset`.
    pub fn read(&self, offset: u64, len: u64) -> Result<Bytes> {
        let c = self.client()?;
        self.rt.block_on(c.read(offset, len))
    }

    /// Writes `data` at `offset`.
    pub fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        let c = self.client()?;
        self.rt
            .block_on(c.write(offset, Bytes::copy_from_slice(data)))
    }

    /// Zeroes `len` bytes at `offset` (may deallocate).
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        let c = self.client()?;
        self.rt.block_on(c.write_zeroes(offset, len, false, false))
    }

    /// `base:allocation` extents of `range` (flags: 1 = hole, 2 = reads as zero).
    pub fn extents(&self, range: Range<u64>) -> Result<Vec<BlockExtent>> {
        let c = self.client()?;
        let len = range.end.saturating_sub(range.start);
        if len == 0 {
            return Ok(Vec::new());
        }
        self.rt
            .block_on(c.block_status(range.start, len, crate::server::BASE_ALLOCATION))
    }

    /// Flushes written data to the image.
    pub fn flush(&self) -> Result<()> {
        let c = self.client()?;
        self.rt.block_on(c.flush())
    }

    /// Flushes, disconnects and stops the daemon, reporting any failure.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        let mut result = Ok(());
        if let Some(c) = self.client.take() {
            let read_only = self.daemon.as_ref().is_none_or(Daemon::read_only);
            result = self.rt.block_on(async {
                if !read_only {
                    c.flush().await?;
                }
                c.disconnect().await
            });
        }
        if let Some(d) = self.daemon.take() {
            let stopped = d.stop();
            if result.is_ok() {
                result = stopped;
            }
        }
        result
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "closing image");
        }
    }
}

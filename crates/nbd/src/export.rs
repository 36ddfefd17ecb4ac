//! What a [`crate::Server`] serves: the [`Export`] trait the backup engine implements.

use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

pub use crate::proto::option::BlockSize;
pub use crate::proto::reply::Extent;

/// What an export supports; drives the advertised transmission flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Refuse every write (advertises `NBD_FLAG_READ_ONLY`).
    pub read_only: bool,
    /// [`Export::read`] is implemented. Without it READ fails with `EINVAL`.
    pub read: bool,
    /// [`Export::block_status`] is implemented (offers `base:allocation`).
    pub block_status: bool,
    /// Advertise `NBD_CMD_TRIM`.
    pub trim: bool,
    /// Advertise `NBD_CMD_WRITE_ZEROES`. QEMU sends zero clusters as full-size zero WRITEs
    /// when this is off, so a backup sink wants it on.
    pub write_zeroes: bool,
    /// Advertise `NBD_CMD_FLAG_FAST_ZERO`.
    pub fast_zero: bool,
    /// Advertise `NBD_CMD_FLAG_FUA` (passed to [`Export::write`] as [`WriteFlags::fua`]).
    pub fua: bool,
    /// Advertise `NBD_CMD_FLUSH`. QEMU flushes only when the export is closed, right before
    /// `NBD_CMD_DISC`; keep it on so that moment is visible.
    pub flush: bool,
    /// Advertise `NBD_FLAG_CAN_MULTI_CONN`.
    pub multi_conn: bool,
    /// Size constraints sent in `NBD_INFO_BLOCK_SIZE` when the client asks. `None` sends no
    /// constraints (the spec defaults: 1 byte minimum, 4 KiB preferred, 32 MiB maximum).
    pub block_size: Option<BlockSize>,
}

impl Default for Capabilities {
    /// A writable sink: write, write-zeroes, trim (as write-zeroes) and flush; no reads.
    fn default() -> Self {
        Self {
            read_only: false,
            read: false,
            block_status: false,
            trim: true,
            write_zeroes: true,
            fast_zero: false,
            fua: false,
            flush: true,
            multi_conn: false,
            block_size: None,
        }
    }
}

/// Flags of an `NBD_CMD_WRITE`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteFlags {
    /// Force unit access: the data must be durable when the call returns.
    pub fua: bool,
}

/// Flags of an `NBD_CMD_WRITE_ZEROES`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZeroFlags {
    /// `NBD_CMD_FLAG_NO_HOLE`: the range must be allocated, not punched (QEMU's backup job
    /// always sets it).
    pub no_hole: bool,
    /// `NBD_CMD_FLAG_FAST_ZERO`: fail with `ENOTSUP` rather than write zeroes slowly.
    pub fast_zero: bool,
    /// Force unit access.
    pub fua: bool,
}

/// A block device served over NBD. The server calls these concurrently (up to the configured
/// number of requests in flight per connection, in any order) and replies by cookie, so
/// implementations must tolerate out-of-order writes: QEMU's backup job runs up to 64 copy
/// workers.
///
/// Errors become NBD errnos via [`crate::proto::errno::from_io`] (a raw OS error of a known
/// NBD value passes through; other kinds map to `EIO`, `EINVAL`, `ENOSPC`, ...).
pub trait Export: Send + Sync + 'static {
    /// Export size in bytes (fixed for the export's lifetime).
    fn size(&self) -> u64;

    /// What the export supports.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// Free-form description sent in `NBD_OPT_LIST` and `NBD_INFO_DESCRIPTION`.
    fn description(&self) -> Option<String> {
        None
    }

    /// Stores `data` at `offset` (range already checked against [`Export::size`]).
    fn write(
        &self,
        offset: u64,
        data: Bytes,
        flags: WriteFlags,
    ) -> impl Future<Output = io::Result<()>> + Send;

    /// Makes `len` bytes at `offset` read as zeroes.
    fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        flags: ZeroFlags,
    ) -> impl Future<Output = io::Result<()>> + Send;

    /// Discards a range. The default zeroes it, which is always a valid trim.
    fn trim(&self, offset: u64, len: u32) -> impl Future<Output = io::Result<()>> + Send {
        self.write_zeroes(offset, len, ZeroFlags::default())
    }

    /// Makes every completed write durable.
    fn flush(&self) -> impl Future<Output = io::Result<()>> + Send {
        async { Ok(()) }
    }

    /// Reads `len` bytes at `offset` (only called when [`Capabilities::read`] is set).
    fn read(&self, offset: u64, len: u32) -> impl Future<Output = io::Result<Bytes>> + Send {
        let _ = (offset, len);
        async { Err(io::Error::from(io::ErrorKind::Unsupported)) }
    }

    /// `base:allocation` extents covering at least the first byte of `offset..offset+len`
    /// (only called when [`Capabilities::block_status`] is set). Flags are
    /// `STATE_HOLE | STATE_ZERO` bits.
    fn block_status(
        &self,
        offset: u64,
        len: u32,
    ) -> impl Future<Output = io::Result<Vec<Extent>>> + Send {
        let _ = (offset, len);
        async { Err(io::Error::from(io::ErrorKind::Unsupported)) }
    }
}

impl<E: Export> Export for Arc<E> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
    fn description(&self) -> Option<String> {
        (**self).description()
    }
    fn write(
        &self,
        offset: u64,
        data: Bytes,
        flags: WriteFlags,
    ) -> impl Future<Output = io::Result<()>> + Send {
        (**self).write(offset, data, flags)
    }
    fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        flags: ZeroFlags,
    ) -> impl Future<Output = io::Result<()>> + Send {
        (**self).write_zeroes(offset, len, flags)
    }
    fn trim(&self, offset: u64, len: u32) -> impl Future<Output = io::Result<()>> + Send {
        (**self).trim(offset, len)
    }
    fn flush(&self) -> impl Future<Output = io::Result<()>> + Send {
        (**self).flush()
    }
    fn read(&self, offset: u64, len: u32) -> impl Future<Output = io::Result<Bytes>> + Send {
        (**self).read(offset, len)
    }
    fn block_status(
        &self,
        offset: u64,
        len: u32,
    ) -> impl Future<Output = io::Result<Vec<Extent>>> + Send {
        (**self).block_status(offset, len)
    }
}

/// An [`Export`] backed by a regular file of fixed size: positional writes on the blocking
/// pool, zeroes written as zero bytes (so `NO_HOLE` always holds), reads supported. Used by
/// tests and benchmarks, and a fine sink for "NBD to raw file".
#[derive(Debug, Clone)]
pub struct FileExport {
    file: Arc<std::fs::File>,
    size: u64,
    read_only: bool,
}

const ZERO_BUF: usize = 1 << 20;

impl FileExport {
    /// Creates (or truncates) `path` as a sparse file of `size` bytes.
    pub fn create(path: &Path, size: u64) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.set_len(size)?;
        Ok(Self {
            file: Arc::new(file),
            size,
            read_only: false,
        })
    }

    /// Opens an existing file; its current length is the export size.
    pub fn open(path: &Path, read_only: bool) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            file: Arc::new(file),
            size,
            read_only,
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&std::fs::File) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let file = Arc::clone(&self.file);
        tokio::task::spawn_blocking(move || f(&file))
            .await
            .map_err(io::Error::other)?
    }
}

impl Export for FileExport {
    fn size(&self) -> u64 {
        self.size
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            read_only: self.read_only,
            read: true,
            fua: true,
            ..Capabilities::default()
        }
    }

    async fn write(&self, offset: u64, data: Bytes, flags: WriteFlags) -> io::Result<()> {
        self.blocking(move |f| {
            use std::os::unix::fs::FileExt;
            f.write_all_at(&data, offset)?;
            if flags.fua {
                f.sync_data()?;
            }
            Ok(())
        })
        .await
    }

    async fn write_zeroes(&self, offset: u64, len: u32, flags: ZeroFlags) -> io::Result<()> {
        if flags.fast_zero {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        self.blocking(move |f| {
            use std::os::unix::fs::FileExt;
            let zeros = vec![0u8; ZERO_BUF.min(len as usize)];
            let mut done = 0u64;
            while done < u64::from(len) {
                let n = (u64::from(len) - done).min(zeros.len() as u64) as usize;
                f.write_all_at(&zeros[..n], offset + done)?;
                done += n as u64;
            }
            Ok(())
        })
        .await
    }

    async fn flush(&self) -> io::Result<()> {
        self.blocking(|f| f.sync_data()).await
    }

    async fn read(&self, offset: u64, len: u32) -> io::Result<Bytes> {
        self.blocking(move |f| {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; len as usize];
            f.read_exact_at(&mut buf, offset)?;
            Ok(Bytes::from(buf))
        })
        .await
    }
}

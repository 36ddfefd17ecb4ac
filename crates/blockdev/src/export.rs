//! Any [`Source`] served read-only over NBD: the [`vmdump_nbd::Export`] of `vmdump map`.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use vmdump_nbd::export::{Capabilities, Extent as NbdExtent, WriteFlags, ZeroFlags};
use vmdump_nbd::proto::reply::{STATE_HOLE, STATE_ZERO};

use crate::Source;

/// A read-only NBD export of a disk: READ and `base:allocation` block status (zero runs as
/// holes), reads on tokio's blocking pool, any failure (a missing cluster of a truncated
/// archive) an `EIO` reply, never zeros. Safe for several connections at once.
#[derive(Clone)]
pub struct SourceExport {
    disk: Arc<dyn Source>,
    description: Option<String>,
}

impl std::fmt::Debug for SourceExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceExport")
            .field("size", &self.disk.size())
            .finish_non_exhaustive()
    }
}

impl SourceExport {
    /// Serve `disk`, with `description` in `NBD_OPT_LIST` and `NBD_INFO_DESCRIPTION`.
    pub fn new(disk: Arc<dyn Source>, description: Option<String>) -> Self {
        SourceExport { disk, description }
    }
}

fn to_io(e: crate::Error) -> io::Error {
    tracing::warn!("nbd export: {}", chain(&e));
    io::Error::other(e)
}

/// The error and its sources on one line (libraries do not use anyhow).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn read_only() -> io::Error {
    io::Error::from(io::ErrorKind::PermissionDenied)
}

impl vmdump_nbd::Export for SourceExport {
    fn size(&self) -> u64 {
        self.disk.size()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            read_only: true,
            read: true,
            block_status: true,
            trim: false,
            write_zeroes: false,
            fast_zero: false,
            fua: false,
            flush: false,
            multi_conn: true,
            block_size: None,
        }
    }

    fn description(&self) -> Option<String> {
        self.description.clone()
    }

    async fn write(&self, _offset: u64, _data: Bytes, _flags: WriteFlags) -> io::Result<()> {
        Err(read_only())
    }

    async fn write_zeroes(&self, _offset: u64, _len: u32, _flags: ZeroFlags) -> io::Result<()> {
        Err(read_only())
    }

    async fn read(&self, offset: u64, len: u32) -> io::Result<Bytes> {
        let disk = Arc::clone(&self.disk);
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len as usize];
            disk.read_at(&mut buf, offset).map_err(to_io)?;
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(io::Error::other)?
    }

    async fn block_status(&self, offset: u64, len: u32) -> io::Result<Vec<NbdExtent>> {
        let disk = Arc::clone(&self.disk);
        tokio::task::spawn_blocking(move || {
            let end = offset + u64::from(len);
            let extents = disk.extents(offset..end).map_err(to_io)?;
            Ok(extents
                .into_iter()
                .filter(|e| e.offset < end)
                .map(|e| NbdExtent {
                    length: (e.end().min(end) - e.offset) as u32,
                    flags: if e.zero { STATE_HOLE | STATE_ZERO } else { 0 },
                })
                .collect())
        })
        .await
        .map_err(io::Error::other)?
    }
}

//! A point-in-time view of a running VM's disk that QEMU exports over NBD (the
//! `snapshot-access` node of a backup with fleecing), read with our NBD client.
//!
//! QEMU 7.2 has two bugs on such exports (`docs/protocols/nbd.md`): a READ or BLOCK_STATUS
//! that starts in a cluster already copied to the fleecing image and runs past the copied run
//! returns live data for it, and an unaligned TRIM aborts QEMU. [`SnapshotRules::for_qemu`]
//! keeps every request 64 KiB-aligned and at most 64 KiB long there; from 8.0 on (both bugs
//! fixed) requests are as large as the caller asks. Discards only cover whole 64 KiB clusters
//! (or the tail of the disk) either way: trimming less is always allowed.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use vmdump_nbd::client::ReadPiece;
use vmdump_nbd::{Client, ClientOptions};

use crate::error::{Error, Result};
use crate::Extent;

/// A part of [`SnapshotExport::read_sparse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SparsePiece {
    /// Bytes at `offset`.
    Data {
        /// Absolute offset.
        offset: u64,
        /// The bytes.
        data: Bytes,
    },
    /// `len` bytes at `offset` that read as zeros.
    Zero {
        /// Absolute offset.
        offset: u64,
        /// Length.
        len: u64,
    },
}

/// How requests to a snapshot export are shaped for the QEMU serving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotRules {
    /// Cut every READ, BLOCK_STATUS and TRIM at 64 KiB boundaries (QEMU < 8.0).
    pub align_64k: bool,
    /// Requests in flight at once.
    pub in_flight: usize,
}

impl SnapshotRules {
    /// The rules for QEMU `major.minor`: the 7.2 workarounds below 8.0 (many small requests
    /// pipelined), larger requests from 8.0 on, where `hbitmap_status()` and the unaligned
    /// discard of `snapshot-access` are fixed.
    pub fn for_qemu(major: u32, minor: u32) -> Self {
        let _ = minor;
        if major < 8 {
            SnapshotRules {
                align_64k: true,
                in_flight: 64,
            }
        } else {
            SnapshotRules {
                align_64k: false,
                in_flight: 8,
            }
        }
    }
}

/// A connected snapshot export (async; clone-free, one per disk).
#[derive(Debug)]
pub struct SnapshotExport {
    client: Client,
    socket: PathBuf,
    rules: SnapshotRules,
}

impl SnapshotExport {
    /// Connects to export `name` on the unix socket `socket` (structured replies and
    /// `base:allocation` negotiated).
    pub async fn connect(socket: &Path, name: &str, rules: SnapshotRules) -> Result<Self> {
        let opts = ClientOptions {
            structured: true,
            meta_contexts: vec![vmdump_nbd::server::BASE_ALLOCATION.to_owned()],
            max_in_flight: rules.in_flight,
            align_64k: rules.align_64k,
            connect_timeout: Duration::from_secs(30),
        };
        let client = Client::connect_unix(socket, name, &opts)
            .await
            .map_err(|source| Error::Nbd {
                what: "connect to",
                path: socket.to_path_buf(),
                source,
            })?;
        if !client.has_context(vmdump_nbd::server::BASE_ALLOCATION) {
            return Err(Error::Tool {
                tool: "qemu nbd export",
                path: socket.to_path_buf(),
                detail: format!("export '{name}' offers no base:allocation"),
            });
        }
        Ok(SnapshotExport {
            client,
            socket: socket.to_path_buf(),
            rules,
        })
    }

    /// The rules requests follow.
    pub fn rules(&self) -> SnapshotRules {
        self.rules
    }

    /// Disk size in bytes.
    pub fn size(&self) -> u64 {
        self.client.size()
    }

    fn at(&self, what: &'static str, offset: u64) -> impl Fn(vmdump_nbd::Error) -> Error + '_ {
        move |source| Error::NbdAt {
            what,
            path: self.socket.clone(),
            offset,
            source,
        }
    }

    /// Which parts of `range` read as zeros: extents covering the whole range, in order,
    /// adjacent ones of the same kind merged.
    pub async fn extents(&self, range: Range<u64>) -> Result<Vec<Extent>> {
        crate::check_range(
            &self.socket,
            self.size(),
            range.start,
            range.end - range.start,
        )?;
        let list = self
            .client
            .block_status(
                range.start,
                range.end - range.start,
                vmdump_nbd::server::BASE_ALLOCATION,
            )
            .await
            .map_err(self.at("block status", range.start))?;
        Ok(crate::image::extents_of(&list))
    }

    /// Reads `len` bytes at `offset` (pipelined pieces under the rules).
    pub async fn read(&self, offset: u64, len: u64) -> Result<Bytes> {
        crate::check_range(&self.socket, self.size(), offset, len)?;
        self.client
            .read(offset, len)
            .await
            .map_err(self.at("read", offset))
    }

    /// Reads `len` bytes at `offset` as they lie: data pieces, and the ranges QEMU reports as
    /// holes (reading as zeros) without their bytes; in order and contiguous. One request per
    /// piece under the rules, where block status and then the data would take two.
    pub async fn read_sparse(&self, offset: u64, len: u64) -> Result<Vec<SparsePiece>> {
        crate::check_range(&self.socket, self.size(), offset, len)?;
        let pieces = self
            .client
            .read_pieces(offset, len)
            .await
            .map_err(self.at("read", offset))?;
        Ok(pieces
            .into_iter()
            .map(|p| match p {
                ReadPiece::Data { offset, data } => SparsePiece::Data { offset, data },
                ReadPiece::Hole { offset, len } => SparsePiece::Zero { offset, len },
            })
            .collect())
    }

    /// Drops `offset..offset+len` from the snapshot: QEMU discards it from the fleecing image
    /// and stops copying guest writes there. Only whole 64 KiB clusters (and the disk's tail)
    /// are discarded. The range must never be read again.
    pub async fn discard(&self, offset: u64, len: u64) -> Result<()> {
        crate::check_range(&self.socket, self.size(), offset, len)?;
        let size = self.size();
        let start = offset.next_multiple_of(vmdump_nbd::client::ALIGN_64K);
        let end = if offset + len == size {
            size
        } else {
            (offset + len) / vmdump_nbd::client::ALIGN_64K * vmdump_nbd::client::ALIGN_64K
        };
        if start >= end {
            return Ok(());
        }
        self.client
            .trim(start, end - start)
            .await
            .map_err(self.at("discard", start))
    }

    /// Disconnects cleanly.
    pub async fn close(self) -> Result<()> {
        self.client.disconnect().await.map_err(|source| Error::Nbd {
            what: "disconnect from",
            path: self.socket.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::SnapshotRules;

    #[test]
    fn qemu_7_2_gets_the_64k_workarounds_and_8_0_does_not() {
        assert!(SnapshotRules::for_qemu(7, 2).align_64k);
        assert!(SnapshotRules::for_qemu(6, 2).align_64k);
        assert!(!SnapshotRules::for_qemu(8, 0).align_64k);
        assert!(!SnapshotRules::for_qemu(9, 1).align_64k);
    }
}

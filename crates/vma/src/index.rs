//! Random access into an uncompressed, seekable archive.

use std::io::{self, Read, Seek, SeekFrom};

use crate::error::{Error, Result};
use crate::format::*;
use crate::header::Header;
use crate::reader::{parse_extent_header, read_full, read_header};

const MISSING: u64 = u64::MAX;
const OFFSET_BITS: u64 = (1 << 48) - 1;

/// Location of every cluster of every device, built by reading only the extent
/// headers (the data blocks are skipped with seeks).
///
/// Memory: 8 bytes per cluster of every device. Building refuses archives whose
/// devices announce far more clusters than the file could hold (hostile or truncated
/// input), so memory stays proportional to the archive size.
#[derive(Debug, Clone)]
pub struct Index {
    header: Header,
    /// Per dev_id: `mask << 48 | file offset of the first stored block`, or MISSING.
    entries: Vec<Vec<u64>>,
    extents: u64,
    truncated_at: Option<u64>,
}

/// A piece of a device range as the archive stores it ([`Index::map`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// `len` bytes that read as zeros (blocks the archive marks as zero).
    Zero {
        /// Length in bytes.
        len: u64,
    },
    /// `len` bytes stored contiguously in the archive at `archive_offset`.
    Data {
        /// Byte offset in the (uncompressed) archive.
        archive_offset: u64,
        /// Length in bytes.
        len: u64,
    },
}

impl Piece {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match *self {
            Piece::Zero { len } | Piece::Data { len, .. } => len,
        }
    }

    /// Whether the piece is empty (never returned by [`Index::map`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Index {
    /// Build the index. Checks every extent header (magic, MD5, uuid, reserved, block
    /// accounting, device ids, ranges, duplicates, truncation) but not data.
    pub fn build<R: Read + Seek>(r: &mut R) -> Result<Index> {
        Self::scan(r, false)
    }

    /// Build the index of an archive that may be truncated: an extent cut off by the end of
    /// the input ends the scan instead of failing it ([`Index::truncated_at`] tells where),
    /// and the clusters it and everything after it held are missing, so reading them is an
    /// [`Error::MissingCluster`]. Every other check of [`Index::build`] still applies.
    pub fn build_partial<R: Read + Seek>(r: &mut R) -> Result<Index> {
        Self::scan(r, true)
    }

    fn scan<R: Read + Seek>(r: &mut R, partial: bool) -> Result<Index> {
        let file_len = r.seek(SeekFrom::End(0)).map_err(|e| Error::io(0, e))?;
        r.seek(SeekFrom::Start(0)).map_err(|e| Error::io(0, e))?;
        let header = read_header(r)?;
        let total: u64 = header
            .devices
            .iter()
            .map(|d| if d.is_vmstate() { 0 } else { d.cluster_count() })
            .sum();
        if total.saturating_mul(8) > file_len.saturating_mul(2).saturating_add(1 << 20) {
            return Err(Error::BadHeader {
                reason: format!(
                    "devices announce {total} clusters, more than an archive of {file_len} bytes can hold"
                ),
            });
        }
        let mut entries = vec![Vec::new(); 256];
        for d in &header.devices {
            if !d.is_vmstate() {
                entries[usize::from(d.id)] = vec![MISSING; d.cluster_count() as usize];
            }
        }
        let mut offset = u64::from(header.header_size);
        let mut index = 0u64;
        let mut truncated_at = None;
        loop {
            let mut h = [0u8; EXTENT_HEADER_SIZE];
            let n = read_full(r, &mut h).map_err(|e| Error::io(offset, e))?;
            if n == 0 {
                break;
            }
            if n < EXTENT_HEADER_SIZE {
                if partial {
                    truncated_at = Some(offset);
                    break;
                }
                return Err(Error::TruncatedExtent {
                    index,
                    offset,
                    expected: EXTENT_HEADER_SIZE as u64,
                    got: n as u64,
                });
            }
            let (block_count, infos) = parse_extent_header(&h, &header.uuid, index, offset)?;
            let len = u64::from(block_count) * BLOCK_SIZE as u64;
            let data_start = offset + EXTENT_HEADER_SIZE as u64;
            if data_start + len > file_len {
                if partial {
                    truncated_at = Some(offset);
                    break;
                }
                return Err(Error::TruncatedExtent {
                    index,
                    offset,
                    expected: EXTENT_HEADER_SIZE as u64 + len,
                    got: file_len - offset,
                });
            }
            if data_start + len > OFFSET_BITS {
                return Err(Error::Limit {
                    what: "archive size for random access",
                    limit: OFFSET_BITS,
                    got: data_start + len,
                });
            }
            let mut at = data_start;
            for (slot, b) in infos.iter().enumerate() {
                let dev_id = b.dev_id();
                if dev_id == 0 {
                    continue;
                }
                let Some(dev) = header.device(dev_id) else {
                    return Err(Error::UnknownDevice {
                        index,
                        offset,
                        slot,
                        dev_id,
                    });
                };
                let cluster = u64::from(b.cluster());
                if !dev.is_vmstate() {
                    let list = &mut entries[usize::from(dev_id)];
                    let Some(e) = list.get_mut(cluster as usize) else {
                        return Err(Error::ClusterOutOfRange {
                            dev_id,
                            device: dev.name.clone(),
                            cluster,
                            cluster_count: dev.cluster_count(),
                            extent: Some(index),
                            offset: Some(offset),
                        });
                    };
                    if *e != MISSING {
                        return Err(Error::DuplicateCluster {
                            dev_id,
                            device: dev.name.clone(),
                            cluster,
                            extent: Some(index),
                            offset: Some(offset),
                        });
                    }
                    *e = (u64::from(b.mask()) << 48) | at;
                }
                at += u64::from(b.block_count()) * BLOCK_SIZE as u64;
            }
            r.seek(SeekFrom::Current(len as i64))
                .map_err(|e| Error::io(data_start, e))?;
            offset = data_start + len;
            index += 1;
        }
        Ok(Index {
            header,
            entries,
            extents: index,
            truncated_at,
        })
    }

    /// Where a partially built index ([`Index::build_partial`]) found the archive cut off:
    /// the offset of the first incomplete extent. `None` for a complete archive.
    pub fn truncated_at(&self) -> Option<u64> {
        self.truncated_at
    }

    /// Whether every cluster of every (non-vmstate) device is present.
    pub fn is_complete(&self) -> bool {
        self.entries.iter().all(|l| l.iter().all(|e| *e != MISSING))
    }

    /// How the `len` bytes of device `dev_id` at `offset` are stored: zero runs and
    /// contiguous archive ranges, merged where adjacent, in device order, covering exactly
    /// the request clipped to the device size. A cluster absent from the archive is an
    /// [`Error::MissingCluster`]; an unknown device is a usage error.
    pub fn map(&self, dev_id: u8, offset: u64, len: u64) -> Result<Vec<Piece>> {
        let dev = self.device_of(dev_id)?;
        let end = offset.saturating_add(len).min(dev.size);
        let mut out: Vec<Piece> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let cluster = pos / CLUSTER_SIZE as u64;
            let block = ((pos % CLUSTER_SIZE as u64) / BLOCK_SIZE as u64) as usize;
            let in_block = pos % BLOCK_SIZE as u64;
            let n = (BLOCK_SIZE as u64 - in_block).min(end - pos);
            let Some((mask, data)) = self.cluster(dev_id, cluster) else {
                return Err(self.missing(dev_id, cluster));
            };
            let piece = if mask & (1 << block) == 0 {
                Piece::Zero { len: n }
            } else {
                let k = u64::from((mask & ((1u16 << block) - 1)).count_ones());
                Piece::Data {
                    archive_offset: data + k * BLOCK_SIZE as u64 + in_block,
                    len: n,
                }
            };
            match (out.last_mut(), piece) {
                (Some(Piece::Zero { len }), Piece::Zero { len: n }) => *len += n,
                (
                    Some(Piece::Data {
                        archive_offset: a,
                        len,
                    }),
                    Piece::Data {
                        archive_offset: b,
                        len: n,
                    },
                ) if *a + *len == b => *len += n,
                _ => out.push(piece),
            }
            pos += n;
        }
        Ok(out)
    }

    /// Allocation of device `dev_id` from `offset` for up to `len` bytes, clipped to the
    /// device: `(length, zero)` runs in order, merged where adjacent, at 4 KiB block
    /// granularity. Missing clusters count as data, so a client that skips zero runs still
    /// reads them and gets the error.
    pub fn allocation(&self, dev_id: u8, offset: u64, len: u64) -> Result<Vec<(u64, bool)>> {
        let dev = self.device_of(dev_id)?;
        let end = offset.saturating_add(len).min(dev.size);
        let mut out: Vec<(u64, bool)> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let cluster = pos / CLUSTER_SIZE as u64;
            let block = ((pos % CLUSTER_SIZE as u64) / BLOCK_SIZE as u64) as usize;
            let n = (BLOCK_SIZE as u64 - pos % BLOCK_SIZE as u64).min(end - pos);
            let zero = self
                .cluster(dev_id, cluster)
                .is_some_and(|(mask, _)| mask & (1 << block) == 0);
            match out.last_mut() {
                Some((l, z)) if *z == zero => *l += n,
                _ => out.push((n, zero)),
            }
            pos += n;
        }
        Ok(out)
    }

    fn device_of(&self, dev_id: u8) -> Result<&crate::header::Device> {
        self.header
            .device(dev_id)
            .ok_or_else(|| Error::Usage(format!("no device with id {dev_id}")))
    }

    fn missing(&self, dev_id: u8, cluster: u64) -> Error {
        let dev = self.header.device(dev_id).expect("checked by the caller");
        let list = &self.entries[usize::from(dev_id)];
        let missing = list[cluster as usize..]
            .iter()
            .take_while(|e| **e == MISSING)
            .count() as u64;
        Error::MissingCluster {
            dev_id,
            device: dev.name.clone(),
            first: cluster,
            missing: missing.max(1),
            cluster_count: dev.cluster_count(),
        }
    }

    /// The archive header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Number of extents.
    pub fn extent_count(&self) -> u64 {
        self.extents
    }

    /// `(mask, file offset of the first stored block)` of a cluster, if present.
    pub fn cluster(&self, dev_id: u8, cluster: u64) -> Option<(u16, u64)> {
        let e = *self
            .entries
            .get(usize::from(dev_id))?
            .get(cluster as usize)?;
        (e != MISSING).then_some(((e >> 48) as u16, e & OFFSET_BITS))
    }

    /// Read device bytes at `offset` into `buf`; returns bytes read (short only at the
    /// device end). A cluster absent from the archive is an error.
    pub fn read_at<R: Read + Seek>(
        &self,
        r: &mut R,
        dev_id: u8,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize> {
        let mut done = 0usize;
        for piece in self.map(dev_id, offset, buf.len() as u64)? {
            let out = &mut buf[done..done + piece.len() as usize];
            match piece {
                Piece::Zero { .. } => out.fill(0),
                Piece::Data { archive_offset, .. } => {
                    r.seek(SeekFrom::Start(archive_offset))
                        .map_err(|e| Error::io(archive_offset, e))?;
                    r.read_exact(out)
                        .map_err(|e| Error::io(archive_offset, e))?;
                }
            }
            done += out.len();
        }
        Ok(done)
    }

    /// A `Read + Seek` view of one device.
    pub fn device_reader<R: Read + Seek>(&self, r: R, dev_id: u8) -> Result<DeviceReader<'_, R>> {
        let Some(dev) = self.header.device(dev_id) else {
            return Err(Error::Usage(format!("no device with id {dev_id}")));
        };
        Ok(DeviceReader {
            index: self,
            inner: r,
            dev_id,
            size: dev.size,
            pos: 0,
        })
    }
}

/// One device of an indexed archive as a seekable byte stream of exactly its size.
#[derive(Debug)]
pub struct DeviceReader<'a, R> {
    index: &'a Index,
    inner: R,
    dev_id: u8,
    size: u64,
    pos: u64,
}

impl<R> DeviceReader<'_, R> {
    /// Device size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl<R: Read + Seek> Read for DeviceReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self
            .index
            .read_at(&mut self.inner, self.dev_id, self.pos, buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read + Seek> Seek for DeviceReader<'_, R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let Some(new) = new else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the device start",
            ));
        };
        self.pos = new;
        Ok(new)
    }
}

//! Streaming, validating archive reader (works on pipes and stdin).

use std::io::{ErrorKind as IoKind, Read};

use bytes::{Bytes, BytesMut};

use crate::cluster_set::ClusterSet;
use crate::error::{Error, Result};
use crate::format::*;
use crate::header::Header;
use crate::recycle::Recycler;

/// One cluster as stored in an extent, borrowed from the reader's buffer.
#[derive(Debug, Clone, Copy)]
pub struct Cluster<'a> {
    /// Device id.
    pub dev_id: u8,
    /// Cluster number within the device.
    pub cluster: u64,
    /// Bit i set: block i is stored in `data`.
    pub mask: u16,
    data: &'a [u8],
    offset: usize,
}

impl<'a> Cluster<'a> {
    /// The stored blocks, concatenated in bit order (`popcount(mask)` x 4 KiB).
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Where [`data`](Self::data) starts within the extent's data
    /// ([`Extent::bytes`]), to take shared slices of it instead of copies.
    pub fn data_offset(&self) -> usize {
        self.offset
    }

    /// Byte offset of this cluster within its device.
    pub fn device_offset(&self) -> u64 {
        self.cluster * CLUSTER_SIZE as u64
    }

    /// True if the cluster stores no block (all zeros).
    pub fn is_zero(&self) -> bool {
        self.mask == 0
    }

    /// Block `i` (0..16) if stored.
    pub fn block(&self, i: usize) -> Option<&'a [u8]> {
        if i >= BLOCKS_PER_CLUSTER || self.mask & (1 << i) == 0 {
            return None;
        }
        let n = (self.mask & ((1u16 << i) - 1)).count_ones() as usize;
        Some(&self.data[n * BLOCK_SIZE..(n + 1) * BLOCK_SIZE])
    }

    /// Stored blocks as `(block index, 4 KiB data)`, ascending.
    pub fn blocks(&self) -> impl Iterator<Item = (usize, &'a [u8])> + 'a {
        let mask = self.mask;
        let data = self.data;
        (0..BLOCKS_PER_CLUSTER)
            .filter(move |i| mask & (1 << i) != 0)
            .enumerate()
            .map(move |(n, i)| (i, &data[n * BLOCK_SIZE..(n + 1) * BLOCK_SIZE]))
    }

    /// The cluster as runs of adjacent blocks of one kind, clipped to a device of `size`
    /// bytes: stored data (a range of [`data`](Self::data), or of the extent's data when
    /// shifted by [`data_offset`](Self::data_offset)) or unset blocks (zeros). This is how
    /// extract and restore write a cluster: one write per run.
    pub fn runs(&self, size: u64) -> impl Iterator<Item = Run> + 'a {
        let mask = self.mask;
        let base = self.device_offset();
        let end = size.min(base + CLUSTER_SIZE as u64);
        let mut i = 0usize;
        let mut stored = 0usize;
        std::iter::from_fn(move || {
            let start = base + (i * BLOCK_SIZE) as u64;
            if i >= BLOCKS_PER_CLUSTER || start >= end {
                return None;
            }
            let set = mask & (1 << i) != 0;
            let mut j = i;
            while j < BLOCKS_PER_CLUSTER && (mask & (1 << j) != 0) == set {
                j += 1;
            }
            let len = (end.min(base + (j * BLOCK_SIZE) as u64) - start) as usize;
            let data = set.then(|| {
                let at = stored * BLOCK_SIZE;
                stored += j - i;
                at..at + len
            });
            i = j;
            Some(Run {
                offset: start,
                len,
                data,
            })
        })
    }

    /// Write the full 64 KiB cluster into `out` (zeros for unset blocks). `out` may be
    /// shorter than 64 KiB (end of device): blocks are clipped to it.
    pub fn expand_into(&self, out: &mut [u8]) {
        let out_len = out.len().min(CLUSTER_SIZE);
        out[..out_len].fill(0);
        for (i, b) in self.blocks() {
            let start = i * BLOCK_SIZE;
            if start >= out_len {
                break;
            }
            let end = out_len.min(start + BLOCK_SIZE);
            out[start..end].copy_from_slice(&b[..end - start]);
        }
    }
}

/// A run of adjacent blocks of one cluster (see [`Cluster::runs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// Byte offset in the device.
    pub offset: u64,
    /// Length in bytes (clipped to the device end).
    pub len: usize,
    /// Where the stored bytes lie in [`Cluster::data`]; `None` for unset (zero) blocks.
    pub data: Option<std::ops::Range<usize>>,
}

/// One validated extent, borrowed from the reader.
#[derive(Debug)]
pub struct Extent<'a> {
    index: u64,
    offset: u64,
    infos: &'a [BlockInfo; SLOTS_PER_EXTENT],
    data: &'a Bytes,
}

impl<'a> Extent<'a> {
    /// Extent index (0-based).
    pub fn index(&self) -> u64 {
        self.index
    }
    /// Byte offset of the extent header in the archive stream.
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// Number of 4 KiB data blocks.
    pub fn block_count(&self) -> usize {
        self.data.len() / BLOCK_SIZE
    }
    /// The extent's data blocks (all clusters, in slot order) as a shared buffer: slices of
    /// it stay valid after the reader moved on, without copying.
    pub fn bytes(&self) -> &'a Bytes {
        self.data
    }
    /// Clusters in slot order.
    pub fn clusters(&self) -> impl Iterator<Item = Cluster<'a>> + 'a {
        let data: &'a [u8] = self.data;
        let mut at = 0usize;
        self.infos.iter().filter(|b| b.dev_id() != 0).map(move |b| {
            let n = b.block_count() as usize * BLOCK_SIZE;
            let c = Cluster {
                dev_id: b.dev_id(),
                cluster: u64::from(b.cluster()),
                mask: b.mask(),
                data: &data[at..at + n],
                offset: at,
            };
            at += n;
            c
        })
    }
}

/// Per-device figures gathered while reading.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceReadStats {
    /// Clusters seen.
    pub clusters: u64,
    /// Bytes of stored (non-zero) blocks.
    pub stored_bytes: u64,
    /// Bytes of unset (zero) blocks, whole clusters counted.
    pub zero_bytes: u64,
}

/// What [`Reader::finish`] reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Extents read.
    pub extents: u64,
    /// Archive bytes read, header included.
    pub bytes_read: u64,
    /// Per device id (index = dev_id; index 0 unused).
    pub devices: Vec<DeviceReadStats>,
}

/// Extent buffers a reader keeps for reuse while callers still hold slices of them.
const RECYCLE: usize = 8;

/// Streaming VMA reader. Validates the header in [`Reader::new`], each extent in
/// [`Reader::next_extent`] (before any of its clusters is handed out), and
/// completeness in [`Reader::finish`].
pub struct Reader<R: Read> {
    inner: R,
    header: Header,
    offset: u64,
    extent_index: u64,
    buf: Bytes,
    /// Earlier extent buffers, reused once nobody holds a slice of them any more.
    recycle: Recycler,
    infos: [BlockInfo; SLOTS_PER_EXTENT],
    seen: Vec<ClusterSet>,
    vmstate_next: Vec<u64>,
    stats: ReadStats,
    eof: bool,
    poisoned: bool,
}

impl<R: Read> std::fmt::Debug for Reader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("uuid", &self.header.uuid_string())
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

/// Read until `buf` is full or EOF; returns the bytes read.
pub(crate) fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == IoKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Read and validate a header from the start of a stream.
pub fn read_header<R: Read + ?Sized>(r: &mut R) -> Result<Header> {
    let mut buf = vec![0u8; HEADER_FIXED_SIZE];
    let n = read_full(r, &mut buf).map_err(|e| Error::io(0, e))?;
    if n >= 4 && buf[..4] != MAGIC {
        let mut found = [0u8; 4];
        found.copy_from_slice(&buf[..4]);
        return Err(Error::BadMagic { found });
    }
    if n < HEADER_FIXED_SIZE {
        return Err(Error::TruncatedHeader {
            got: n as u64,
            expected: HEADER_FIXED_SIZE as u64,
        });
    }
    let size = Header::size_from_prefix(&buf)?;
    buf.resize(size, 0);
    let m = read_full(r, &mut buf[HEADER_FIXED_SIZE..])
        .map_err(|e| Error::io(HEADER_FIXED_SIZE as u64, e))?;
    if HEADER_FIXED_SIZE + m < size {
        return Err(Error::TruncatedHeader {
            got: (HEADER_FIXED_SIZE + m) as u64,
            expected: size as u64,
        });
    }
    Header::parse(&buf)
}

/// Parse and check one extent header (magic, MD5, uuid, reserved field, and
/// `block_count` against the masks). Returns block_count and the slots.
pub fn parse_extent_header(
    h: &[u8; EXTENT_HEADER_SIZE],
    uuid: &[u8; 16],
    index: u64,
    offset: u64,
) -> Result<(u16, [BlockInfo; SLOTS_PER_EXTENT])> {
    if h[..4] != EXTENT_MAGIC {
        let mut found = [0u8; 4];
        found.copy_from_slice(&h[..4]);
        return Err(Error::BadExtentMagic {
            index,
            offset,
            found,
        });
    }
    let mut copy = *h;
    copy[E_MD5..E_MD5 + 16].fill(0);
    if md5(&copy) != h[E_MD5..E_MD5 + 16] {
        return Err(Error::ExtentChecksum { index, offset });
    }
    if h[E_UUID..E_UUID + 16] != uuid[..] {
        let mut found = [0u8; 16];
        found.copy_from_slice(&h[E_UUID..E_UUID + 16]);
        return Err(Error::ExtentUuid {
            index,
            offset,
            found: uuid_to_string(&found),
            expected: uuid_to_string(uuid),
        });
    }
    let reserved = be_u16(h, E_RESERVED);
    if reserved != 0 {
        return Err(Error::ExtentReserved {
            index,
            offset,
            value: reserved,
        });
    }
    let block_count = be_u16(h, E_BLOCK_COUNT);
    let mut infos = [BlockInfo::default(); SLOTS_PER_EXTENT];
    let mut counted = 0u32;
    for (i, info) in infos.iter_mut().enumerate() {
        *info = BlockInfo(be_u64(h, E_BLOCKINFO + 8 * i));
        if info.dev_id() != 0 {
            counted += info.block_count();
        }
    }
    if counted != u32::from(block_count) {
        return Err(Error::BlockCount {
            index,
            offset,
            block_count,
            counted,
        });
    }
    Ok((block_count, infos))
}

impl<R: Read> Reader<R> {
    /// Read and validate the header.
    pub fn new(mut inner: R) -> Result<Self> {
        let header = read_header(&mut inner)?;
        let offset = u64::from(header.header_size);
        Ok(Reader {
            inner,
            seen: vec![ClusterSet::default(); 256],
            vmstate_next: vec![0; 256],
            stats: ReadStats {
                extents: 0,
                bytes_read: offset,
                devices: vec![DeviceReadStats::default(); 256],
            },
            header,
            offset,
            extent_index: 0,
            buf: Bytes::new(),
            recycle: Recycler::new(RECYCLE),
            infos: [BlockInfo::default(); SLOTS_PER_EXTENT],
            eof: false,
            poisoned: false,
        })
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Byte offset of the next extent in the stream.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Statistics so far.
    pub fn stats(&self) -> &ReadStats {
        &self.stats
    }

    /// Give back the underlying reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Read and validate the next extent; `None` at a clean EOF. All of the extent's
    /// clusters are checked (device, range, duplicates) before it is returned.
    pub fn next_extent(&mut self) -> Result<Option<Extent<'_>>> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        if self.eof {
            return Ok(None);
        }
        match self.load_extent() {
            Ok(true) => {}
            Ok(false) => {
                self.eof = true;
                return Ok(None);
            }
            Err(e) => {
                self.poisoned = true;
                return Err(e);
            }
        }
        Ok(Some(Extent {
            index: self.extent_index - 1,
            offset: self.offset - self.buf.len() as u64 - EXTENT_HEADER_SIZE as u64,
            infos: &self.infos,
            data: &self.buf,
        }))
    }

    /// Call `f` for every cluster of the rest of the archive, then [`finish`](Self::finish).
    pub fn for_each_cluster<E: From<Error>>(
        mut self,
        mut f: impl FnMut(&Header, Cluster<'_>) -> Result<(), E>,
    ) -> Result<ReadStats, E> {
        if self.poisoned {
            return Err(Error::Poisoned.into());
        }
        while !self.eof {
            match self.load_extent() {
                Ok(true) => {}
                Ok(false) => {
                    self.eof = true;
                    break;
                }
                Err(e) => return Err(e.into()),
            }
            let ext = Extent {
                index: self.extent_index - 1,
                offset: self.offset - self.buf.len() as u64 - EXTENT_HEADER_SIZE as u64,
                infos: &self.infos,
                data: &self.buf,
            };
            for c in ext.clusters() {
                f(&self.header, c)?;
            }
        }
        Ok(self.finish()?)
    }

    /// Check that every cluster of every device (except vmstate) was seen. Call after
    /// [`next_extent`](Self::next_extent) returned `None`.
    pub fn finish(self) -> Result<ReadStats> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        if !self.eof {
            return Err(Error::Usage(
                "reader finished before the end of the archive".into(),
            ));
        }
        self.check_complete(|_| true)?;
        Ok(self.stats)
    }

    /// Like [`finish`](Self::finish), but checks completeness only of the devices for
    /// which `want` returns true (e.g. the ones being extracted).
    pub fn finish_for(self, want: impl Fn(u8) -> bool) -> Result<ReadStats> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        self.check_complete(want)?;
        Ok(self.stats)
    }

    fn check_complete(&self, want: impl Fn(u8) -> bool) -> Result<()> {
        for d in &self.header.devices {
            if d.is_vmstate() || !want(d.id) {
                continue;
            }
            let seen = &self.seen[usize::from(d.id)];
            let count = d.cluster_count();
            if let Some(first) = seen.first_missing(count) {
                return Err(Error::MissingCluster {
                    dev_id: d.id,
                    device: d.name.clone(),
                    first,
                    missing: count - seen.len(),
                    cluster_count: count,
                });
            }
        }
        Ok(())
    }

    /// Returns false at a clean EOF.
    fn load_extent(&mut self) -> Result<bool> {
        let index = self.extent_index;
        let offset = self.offset;
        let mut h = [0u8; EXTENT_HEADER_SIZE];
        let n = read_full(&mut self.inner, &mut h).map_err(|e| Error::io(offset, e))?;
        if n == 0 {
            return Ok(false);
        }
        if n < EXTENT_HEADER_SIZE {
            return Err(Error::TruncatedExtent {
                index,
                offset,
                expected: EXTENT_HEADER_SIZE as u64,
                got: n as u64,
            });
        }
        let (block_count, infos) = parse_extent_header(&h, &self.header.uuid, index, offset)?;
        let len = usize::from(block_count) * BLOCK_SIZE;
        let mut buf = self.free_buffer();
        buf.resize(len, 0);
        let res = read_full(&mut self.inner, &mut buf);
        self.buf = buf.freeze();
        let m = res.map_err(|e| Error::io(offset + EXTENT_HEADER_SIZE as u64, e))?;
        if m < len {
            return Err(Error::TruncatedExtent {
                index,
                offset,
                expected: (EXTENT_HEADER_SIZE + len) as u64,
                got: (EXTENT_HEADER_SIZE + m) as u64,
            });
        }
        self.check_slots(&infos, index, offset)?;
        self.infos = infos;
        self.offset += (EXTENT_HEADER_SIZE + len) as u64;
        self.stats.bytes_read = self.offset;
        self.stats.extents += 1;
        self.extent_index += 1;
        Ok(true)
    }

    /// A buffer for the next extent: the current one or an older one if no slice of it is
    /// held any more, else a new one. At most [`RECYCLE`] old buffers are watched for reuse.
    fn free_buffer(&mut self) -> BytesMut {
        self.recycle.hold(std::mem::take(&mut self.buf));
        self.recycle.reclaim().unwrap_or_default()
    }

    fn check_slots(&mut self, infos: &[BlockInfo], index: u64, offset: u64) -> Result<()> {
        for (slot, b) in infos.iter().enumerate() {
            let dev_id = b.dev_id();
            if dev_id == 0 {
                continue;
            }
            let Some(dev) = self.header.device(dev_id) else {
                return Err(Error::UnknownDevice {
                    index,
                    offset,
                    slot,
                    dev_id,
                });
            };
            let cluster = u64::from(b.cluster());
            let i = usize::from(dev_id);
            if dev.is_vmstate() {
                if cluster != self.vmstate_next[i] {
                    return Err(Error::VmstateOrder {
                        dev_id,
                        cluster,
                        expected: self.vmstate_next[i],
                        extent: Some(index),
                        offset: Some(offset),
                    });
                }
                self.vmstate_next[i] += 1;
            } else {
                let count = dev.cluster_count();
                if cluster >= count {
                    return Err(Error::ClusterOutOfRange {
                        dev_id,
                        device: dev.name.clone(),
                        cluster,
                        cluster_count: count,
                        extent: Some(index),
                        offset: Some(offset),
                    });
                }
                let mask = b.mask();
                if mask != 0 {
                    let last_block = 15 - mask.leading_zeros() as u64;
                    let start = cluster * CLUSTER_SIZE as u64 + last_block * BLOCK_SIZE as u64;
                    if start >= dev.size {
                        return Err(Error::BlockPastEnd {
                            dev_id,
                            device: dev.name.clone(),
                            cluster,
                            block: last_block as u32,
                            size: dev.size,
                            extent: Some(index),
                            offset: Some(offset),
                        });
                    }
                }
                if !self.seen[i].insert(cluster) {
                    return Err(Error::DuplicateCluster {
                        dev_id,
                        device: dev.name.clone(),
                        cluster,
                        extent: Some(index),
                        offset: Some(offset),
                    });
                }
            }
            let stored = u64::from(b.block_count()) * BLOCK_SIZE as u64;
            let st = &mut self.stats.devices[i];
            st.clusters += 1;
            st.stored_bytes += stored;
            st.zero_bytes += CLUSTER_SIZE as u64 - stored;
        }
        Ok(())
    }
}

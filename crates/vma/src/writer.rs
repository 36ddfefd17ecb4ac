//! Streaming archive writer, byte-compatible with Proxmox's `vma-writer.c`.

use std::io::{IoSlice, Seek, SeekFrom, Write};

use bytes::Bytes;

use crate::cluster_set::ClusterSet;
use crate::error::{Error, Result};
use crate::format::*;
use crate::header::{header_md5, BlobTable};

/// Handle of a registered device (its dev_id, 1..=254).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(u8);

impl DeviceId {
    /// The on-disk dev_id.
    pub fn get(self) -> u8 {
        self.0
    }
}

/// Per-device figures reported by [`Writer::finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStats {
    /// Device id.
    pub id: DeviceId,
    /// Device name.
    pub name: String,
    /// Device size in bytes.
    pub size: u64,
    /// Bytes in 4 KiB blocks found to be zero (counted as Proxmox does: all 16 blocks
    /// of a cluster, including those past the device end).
    pub zero_bytes: u64,
}

/// What [`Writer::finish`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteStats {
    /// Bytes written to the output.
    pub bytes_written: u64,
    /// Extents written.
    pub extents: u64,
    /// Per device, in id order.
    pub devices: Vec<DeviceStats>,
}

#[derive(Debug)]
struct DevState {
    name: String,
    size: u64,
    clusters: u64,
    written: ClusterSet,
    zero_bytes: u64,
    vmstate: bool,
}

/// Stored data of the extent being built, in order: a range of the writer's own buffer, or
/// a slice of the caller's buffer kept by reference until the extent is written.
#[derive(Debug)]
enum Piece {
    Own { start: usize, len: usize },
    Shared(Bytes),
}

/// Writes `data` at an earlier offset of the output and returns to its end.
type PatchFn<W> = fn(&mut W, u64, &[u8]) -> std::io::Result<()>;

fn patch_at<W: Write + Seek>(out: &mut W, at: u64, data: &[u8]) -> std::io::Result<()> {
    let end = out.stream_position()?;
    out.seek(SeekFrom::Start(at))?;
    out.write_all(data)?;
    out.seek(SeekFrom::Start(end))?;
    Ok(())
}

/// Streaming VMA writer.
///
/// Call order: [`add_config`](Writer::add_config) and
/// [`register_device`](Writer::register_device) in any mix, then
/// [`write_cluster`](Writer::write_cluster) /
/// [`write_zero_cluster`](Writer::write_zero_cluster) for every cluster of every
/// device in any order, then [`finish`](Writer::finish). The header goes out with the
/// first extent; ctime is taken then unless it was pinned.
///
/// Memory: one extent buffer (3.7 MiB) and one bit per written cluster. No allocation
/// per cluster. [`write_cluster_shared`](Writer::write_cluster_shared) keeps references to
/// the caller's buffers instead of copying them (written with one vectored write per
/// extent).
pub struct Writer<W: Write> {
    out: W,
    uuid: [u8; 16],
    ctime: Option<i64>,
    blobs: BlobTable,
    config_ptrs: Vec<(u32, u32)>,
    devices: Vec<DevState>,
    header_written: bool,
    data_started: bool,
    extent: Vec<u8>,
    pos: usize,
    pieces: Vec<Piece>,
    shared_bytes: usize,
    in_place: Option<PatchFn<W>>,
    extent_start: Option<u64>,
    in_place_bytes: usize,
    slots: usize,
    bytes_written: u64,
    extents: u64,
    poisoned: bool,
}

impl<W: Write> std::fmt::Debug for Writer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("uuid", &uuid_to_string(&self.uuid))
            .field("devices", &self.devices.len())
            .field("bytes_written", &self.bytes_written)
            .finish_non_exhaustive()
    }
}

impl<W: Write> Writer<W> {
    /// Writer with a random (v4) uuid; ctime is taken when the header is written.
    pub fn new(out: W) -> Self {
        Self::with_identity(out, *uuid::Uuid::new_v4().as_bytes(), None)
    }

    /// Writer with a fixed uuid and, if given, a fixed ctime (for reproducible output,
    /// or to use the uuid QEMU's `backup` command returned).
    pub fn with_identity(out: W, uuid: [u8; 16], ctime: Option<i64>) -> Self {
        Writer {
            out,
            uuid,
            ctime,
            blobs: BlobTable::new(),
            config_ptrs: Vec::new(),
            devices: Vec::new(),
            header_written: false,
            data_started: false,
            extent: vec![0u8; MAX_EXTENT_SIZE],
            pos: EXTENT_HEADER_SIZE,
            pieces: Vec::with_capacity(SLOTS_PER_EXTENT * 2),
            shared_bytes: 0,
            in_place: None,
            extent_start: None,
            in_place_bytes: 0,
            slots: 0,
            bytes_written: 0,
            extents: 0,
            poisoned: false,
        }
    }

    /// A writer for a seekable output that writes cluster data as it arrives and seeks
    /// back to fill in each extent header when the extent is complete, instead of
    /// gathering the extent (up to 3.7 MiB) in memory first. The bytes are the same as
    /// [`new`](Writer::new)'s; the caller's buffers stay hot in the CPU cache, which makes
    /// copying a disk into an uncompressed archive about as cheap as `cp`.
    pub fn new_in_place(out: W) -> Self
    where
        W: Seek,
    {
        Self::with_identity_in_place(out, *uuid::Uuid::new_v4().as_bytes(), None)
    }

    /// [`new_in_place`](Writer::new_in_place) with a fixed uuid and ctime.
    pub fn with_identity_in_place(out: W, uuid: [u8; 16], ctime: Option<i64>) -> Self
    where
        W: Seek,
    {
        let mut w = Self::with_identity(out, uuid, ctime);
        w.in_place = Some(patch_at::<W>);
        w
    }

    /// The archive uuid.
    pub fn uuid(&self) -> [u8; 16] {
        self.uuid
    }

    /// The output.
    pub fn get_ref(&self) -> &W {
        &self.out
    }

    /// Store a config file. `name` is stored as given (Proxmox stores the basename of
    /// the path). At most 256 configs; data at most 65535 bytes.
    pub fn add_config(&mut self, name: &str, data: &[u8]) -> Result<()> {
        self.check_open()?;
        if self.data_started {
            return Err(Error::Usage("config added after the first cluster".into()));
        }
        if self.config_ptrs.len() >= MAX_CONFIGS {
            return Err(Error::Limit {
                what: "number of configs",
                limit: MAX_CONFIGS as u64,
                got: self.config_ptrs.len() as u64 + 1,
            });
        }
        check_name(name, "config name")?;
        if data.len() > MAX_BLOB_LEN {
            return Err(Error::Limit {
                what: "config size",
                limit: MAX_BLOB_LEN as u64,
                got: data.len() as u64,
            });
        }
        let lens = [name.len() + 1, data.len()]
            .into_iter()
            .chain(self.devices.iter().map(|d| d.name.len() + 1));
        self.check_header_size(self.blobs.projected_size(lens))?;
        let np = self.blobs.push_str(name)?;
        let dp = self.blobs.push(data)?;
        self.config_ptrs.push((np, dp));
        Ok(())
    }

    /// Register a device of `size` bytes (> 0). Ids are assigned 1, 2, ... in call
    /// order; at most 254 devices; only before the first cluster.
    pub fn register_device(&mut self, name: &str, size: u64) -> Result<DeviceId> {
        self.check_open()?;
        if self.data_started {
            return Err(Error::Usage(format!(
                "device '{name}' registered after the first cluster was written"
            )));
        }
        if self.devices.len() >= MAX_DEVICES {
            return Err(Error::Limit {
                what: "number of devices",
                limit: MAX_DEVICES as u64,
                got: self.devices.len() as u64 + 1,
            });
        }
        if size == 0 {
            return Err(Error::Usage(format!("device '{name}' has size 0")));
        }
        check_name(name, "device name")?;
        let clusters = cluster_count(size);
        if clusters > 1 << 32 {
            return Err(Error::Limit {
                what: "device clusters",
                limit: 1 << 32,
                got: clusters,
            });
        }
        let lens = self
            .devices
            .iter()
            .map(|d| d.name.len() + 1)
            .chain([name.len() + 1]);
        self.check_header_size(self.blobs.projected_size(lens))?;
        self.devices.push(DevState {
            name: name.to_owned(),
            size,
            clusters,
            written: ClusterSet::default(),
            zero_bytes: 0,
            vmstate: name == VMSTATE_NAME,
        });
        Ok(DeviceId(self.devices.len() as u8))
    }

    /// Write cluster `cluster` of `dev`. `data` is 64 KiB, or shorter for the last
    /// cluster as long as it covers the device end. Bytes past the device end are
    /// treated as zero. Returns the zero bytes found (4 KiB granularity).
    pub fn write_cluster(&mut self, dev: DeviceId, cluster: u64, data: &[u8]) -> Result<u64> {
        self.store_cluster(dev, cluster, data, None)
    }

    /// Like [`write_cluster`](Writer::write_cluster), but stores no copy: the non-zero
    /// blocks are kept as slices of `data` (a cheap reference count) until their extent is
    /// written, with one vectored write. A partial last block (device size not a multiple
    /// of 4 KiB) is still copied, to pad it with zeros. The archive bytes are the same.
    /// (An [in-place](Writer::new_in_place) writer writes the blocks at once instead.)
    pub fn write_cluster_shared(
        &mut self,
        dev: DeviceId,
        cluster: u64,
        data: &Bytes,
    ) -> Result<u64> {
        self.store_cluster(dev, cluster, data, Some(data))
    }

    fn store_cluster(
        &mut self,
        dev: DeviceId,
        cluster: u64,
        data: &[u8],
        shared: Option<&Bytes>,
    ) -> Result<u64> {
        let valid = self.prepare(dev, cluster)?;
        if data.len() > CLUSTER_SIZE || (data.len() < valid && data.len() < CLUSTER_SIZE) {
            return Err(Error::Usage(format!(
                "device {} ({}): cluster {cluster} buffer has {} bytes, needs {valid}..={CLUSTER_SIZE}",
                dev.0,
                self.devices[usize::from(dev.0) - 1].name,
                data.len()
            )));
        }
        let valid = valid.min(data.len());
        let mut mask = 0u16;
        let mut zero = 0u64;
        // A run of consecutive full non-zero blocks is stored in one piece.
        let mut run: Option<(usize, usize)> = None;
        for i in 0..BLOCKS_PER_CLUSTER {
            let start = i * BLOCK_SIZE;
            let end = valid.min(start + BLOCK_SIZE);
            if start >= valid || is_zero(&data[start..end]) {
                zero += BLOCK_SIZE as u64;
                if let Some((a, b)) = run.take() {
                    self.store_run(data, shared, a, b)?;
                }
                continue;
            }
            mask |= 1 << i;
            if end - start == BLOCK_SIZE {
                run = Some(run.map_or((start, end), |(a, _)| (a, end)));
            } else {
                if let Some((a, b)) = run.take() {
                    self.store_run(data, shared, a, b)?;
                }
                self.store_short_block(&data[start..end])?;
            }
        }
        if let Some((a, b)) = run {
            self.store_run(data, shared, a, b)?;
        }
        self.commit(dev, cluster, mask, zero)?;
        Ok(zero)
    }

    /// Store the full blocks `data[a..b]`: straight to the output (in place), as a slice of
    /// the caller's buffer (shared), or as a copy in the extent buffer.
    fn store_run(&mut self, data: &[u8], shared: Option<&Bytes>, a: usize, b: usize) -> Result<()> {
        if self.in_place.is_some() {
            self.emit_data(&data[a..b])
        } else if let Some(bytes) = shared {
            let piece = bytes.slice(a..b);
            self.shared_bytes += piece.len();
            self.pieces.push(Piece::Shared(piece));
            Ok(())
        } else {
            for block in data[a..b].chunks(BLOCK_SIZE) {
                self.push_own(block);
            }
            Ok(())
        }
    }

    /// Store the device's last, partial block, zero-padded to 4 KiB.
    fn store_short_block(&mut self, block: &[u8]) -> Result<()> {
        if self.in_place.is_some() {
            let mut padded = [0u8; BLOCK_SIZE];
            padded[..block.len()].copy_from_slice(block);
            self.emit_data(&padded)
        } else {
            self.push_own(block);
            Ok(())
        }
    }

    /// In-place mode: write extent data now (its header is filled in later).
    fn emit_data(&mut self, buf: &[u8]) -> Result<()> {
        self.emit_raw(buf)?;
        self.in_place_bytes += buf.len();
        Ok(())
    }

    /// Copy one (possibly short) block into the extent buffer, zero-padded to 4 KiB.
    fn push_own(&mut self, block: &[u8]) {
        let dst = &mut self.extent[self.pos..self.pos + BLOCK_SIZE];
        dst[..block.len()].copy_from_slice(block);
        dst[block.len()..].fill(0);
        match self.pieces.last_mut() {
            Some(Piece::Own { start, len }) if *start + *len == self.pos => *len += BLOCK_SIZE,
            _ => self.pieces.push(Piece::Own {
                start: self.pos,
                len: BLOCK_SIZE,
            }),
        }
        self.pos += BLOCK_SIZE;
    }

    /// Record cluster `cluster` of `dev` as all zeros (no data is stored).
    pub fn write_zero_cluster(&mut self, dev: DeviceId, cluster: u64) -> Result<()> {
        self.prepare(dev, cluster)?;
        self.commit(dev, cluster, 0, CLUSTER_SIZE as u64)
    }

    /// Record the `count` clusters from `first` on of `dev` as all zeros (a hole of the
    /// disk): the same bytes as [`write_zero_cluster`](Writer::write_zero_cluster) for each.
    pub fn write_zero_clusters(&mut self, dev: DeviceId, first: u64, count: u64) -> Result<()> {
        for cluster in first..first.saturating_add(count) {
            self.write_zero_cluster(dev, cluster)?;
        }
        Ok(())
    }

    /// Number of devices registered.
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// Write the last extent (and the header if nothing was written yet), check that
    /// every cluster of every device was written exactly once, flush the output and
    /// return it with statistics.
    pub fn finish(mut self) -> Result<(W, WriteStats)> {
        self.check_open()?;
        for (i, d) in self.devices.iter().enumerate() {
            if d.vmstate {
                continue;
            }
            if let Some(first) = d.written.first_missing(d.clusters) {
                return Err(Error::MissingCluster {
                    dev_id: i as u8 + 1,
                    device: d.name.clone(),
                    first,
                    missing: d.clusters - d.written.len(),
                    cluster_count: d.clusters,
                });
            }
        }
        if !self.header_written || self.slots > 0 || self.extent_start.is_some() {
            self.flush_extent()?;
        }
        let off = self.bytes_written;
        self.out.flush().map_err(|e| Error::io(off, e))?;
        let devices = self
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| DeviceStats {
                id: DeviceId(i as u8 + 1),
                name: d.name.clone(),
                size: d.size,
                zero_bytes: d.zero_bytes,
            })
            .collect();
        let stats = WriteStats {
            bytes_written: self.bytes_written,
            extents: self.extents,
            devices,
        };
        Ok((self.out, stats))
    }

    fn check_open(&self) -> Result<()> {
        if self.poisoned {
            Err(Error::Poisoned)
        } else {
            Ok(())
        }
    }

    fn check_header_size(&self, table: usize) -> Result<()> {
        let size = HEADER_FIXED_SIZE + table;
        if size > MAX_WRITER_HEADER_SIZE {
            return Err(Error::Limit {
                what: "header size",
                limit: MAX_WRITER_HEADER_SIZE as u64,
                got: size as u64,
            });
        }
        Ok(())
    }

    /// Validate a cluster write, make room in the extent, and return how many bytes of
    /// the cluster lie inside the device.
    fn prepare(&mut self, dev: DeviceId, cluster: u64) -> Result<usize> {
        self.check_open()?;
        let Some(d) = usize::from(dev.0)
            .checked_sub(1)
            .and_then(|i| self.devices.get(i))
        else {
            return Err(Error::Usage(format!("no such device id {}", dev.0)));
        };
        if !d.vmstate && cluster >= d.clusters {
            return Err(Error::ClusterOutOfRange {
                dev_id: dev.0,
                device: d.name.clone(),
                cluster,
                cluster_count: d.clusters,
                extent: None,
                offset: None,
            });
        }
        if cluster >= 1 << 32 {
            return Err(Error::Limit {
                what: "cluster number",
                limit: (1 << 32) - 1,
                got: cluster,
            });
        }
        if d.written.contains(cluster) {
            return Err(Error::DuplicateCluster {
                dev_id: dev.0,
                device: d.name.clone(),
                cluster,
                extent: None,
                offset: None,
            });
        }
        let valid = if d.vmstate {
            CLUSTER_SIZE
        } else {
            (d.size - cluster * CLUSTER_SIZE as u64).min(CLUSTER_SIZE as u64) as usize
        };
        self.data_started = true;
        if self.slots >= WRITER_CLUSTERS_PER_EXTENT {
            self.flush_extent()?;
        }
        if self.in_place.is_some() && self.extent_start.is_none() {
            // Archive header (first extent only), then a placeholder for the extent header.
            self.write_archive_header()?;
            self.extent_start = Some(self.bytes_written);
            self.emit_raw(&[0u8; EXTENT_HEADER_SIZE])?;
        }
        Ok(valid)
    }

    fn write_archive_header(&mut self) -> Result<()> {
        if self.header_written {
            return Ok(());
        }
        let h = match self.header_bytes() {
            Ok(h) => h,
            Err(e) => {
                self.poisoned = true;
                return Err(e);
            }
        };
        self.header_written = true;
        self.emit_raw(&h)
    }

    fn commit(&mut self, dev: DeviceId, cluster: u64, mask: u16, zero: u64) -> Result<()> {
        let d = &mut self.devices[usize::from(dev.0) - 1];
        d.written.insert(cluster);
        d.zero_bytes += zero;
        let info = BlockInfo::new(mask, dev.0, cluster as u32);
        let at = E_BLOCKINFO + 8 * self.slots;
        self.extent[at..at + 8].copy_from_slice(&info.to_be());
        self.slots += 1;
        Ok(())
    }

    fn header_bytes(&mut self) -> Result<Vec<u8>> {
        if self.devices.is_empty() && self.config_ptrs.is_empty() {
            // header_size would be 12288, which readers (Proxmox's too) reject.
            return Err(Error::Usage(
                "an archive needs at least one config or device".into(),
            ));
        }
        for d in &self.devices {
            // Device-name blobs are allocated when the header is written, after all configs.
            let name = d.name.clone();
            self.blobs.push_str(&name)?;
        }
        let header_size = HEADER_FIXED_SIZE + self.blobs.buf.len();
        self.check_header_size(self.blobs.buf.len())?;
        let mut h = vec![0u8; header_size];
        put(&mut h, 0, &MAGIC);
        put(&mut h, H_VERSION, &VERSION.to_be_bytes());
        put(&mut h, H_UUID, &self.uuid);
        let ctime = self.ctime.unwrap_or_else(now);
        put(&mut h, H_CTIME, &ctime.to_be_bytes());
        put(
            &mut h,
            H_BLOB_OFFSET,
            &(HEADER_FIXED_SIZE as u32).to_be_bytes(),
        );
        put(&mut h, H_BLOB_SIZE, &(self.blobs.pos as u32).to_be_bytes());
        put(&mut h, H_HEADER_SIZE, &(header_size as u32).to_be_bytes());
        for (i, (np, dp)) in self.config_ptrs.iter().enumerate() {
            put(&mut h, H_CONFIG_NAMES + 4 * i, &np.to_be_bytes());
            put(&mut h, H_CONFIG_DATA + 4 * i, &dp.to_be_bytes());
        }
        // Name blobs were pushed in id order right after the configs: recover their
        // offsets by walking from the first device blob.
        let mut ptr = self.blobs.pos;
        for d in self.devices.iter().rev() {
            ptr -= d.name.len() + 1 + 2;
        }
        for (i, d) in self.devices.iter().enumerate() {
            let at = H_DEV_INFO + DEV_INFO_SIZE * (i + 1);
            put(&mut h, at, &(ptr as u32).to_be_bytes());
            put(&mut h, at + 8, &d.size.to_be_bytes());
            ptr += d.name.len() + 1 + 2;
        }
        h[HEADER_FIXED_SIZE..].copy_from_slice(&self.blobs.buf);
        let md5 = header_md5(&h);
        put(&mut h, H_MD5, &md5);
        Ok(h)
    }

    fn flush_extent(&mut self) -> Result<()> {
        self.write_archive_header()?;
        let block_count = ((self.pos - EXTENT_HEADER_SIZE
            + self.shared_bytes
            + self.in_place_bytes)
            / BLOCK_SIZE) as u16;
        let uuid = self.uuid;
        let e = &mut self.extent;
        put(e, 0, &EXTENT_MAGIC);
        put(e, E_RESERVED, &[0, 0]);
        put(e, E_BLOCK_COUNT, &block_count.to_be_bytes());
        put(e, E_UUID, &uuid);
        e[E_MD5..E_MD5 + 16].fill(0);
        let md5 = md5(&e[..EXTENT_HEADER_SIZE]);
        put(e, E_MD5, &md5);
        let (res, at) = if let (Some(patch), Some(at)) = (self.in_place, self.extent_start.take()) {
            // The data is out already: fill in the placeholder.
            (
                patch(&mut self.out, at, &self.extent[..EXTENT_HEADER_SIZE]),
                at,
            )
        } else {
            let len = self.pos + self.shared_bytes;
            let at = self.bytes_written;
            let res = if self.shared_bytes == 0 {
                // Everything is in the extent buffer, in order.
                self.out.write_all(&self.extent[..len])
            } else {
                let mut slices = Vec::with_capacity(self.pieces.len() + 1);
                slices.push(IoSlice::new(&self.extent[..EXTENT_HEADER_SIZE]));
                for p in &self.pieces {
                    slices.push(IoSlice::new(match p {
                        Piece::Own { start, len } => &self.extent[*start..*start + *len],
                        Piece::Shared(b) => b,
                    }));
                }
                write_all_vectored(&mut self.out, &mut slices)
            };
            if res.is_ok() {
                self.bytes_written += len as u64;
            }
            (res, at)
        };
        if let Err(err) = res {
            self.poisoned = true;
            return Err(Error::io(at, err));
        }
        self.extents += 1;
        self.extent[E_BLOCKINFO..EXTENT_HEADER_SIZE].fill(0);
        self.pos = EXTENT_HEADER_SIZE;
        self.pieces.clear();
        self.shared_bytes = 0;
        self.in_place_bytes = 0;
        self.slots = 0;
        Ok(())
    }

    fn emit_raw(&mut self, buf: &[u8]) -> Result<()> {
        let off = self.bytes_written;
        if let Err(err) = self.out.write_all(buf) {
            self.poisoned = true;
            return Err(Error::io(off, err));
        }
        self.bytes_written += buf.len() as u64;
        Ok(())
    }
}

/// `Write::write_all_vectored` (unstable in std): write every slice, in order.
fn write_all_vectored<W: Write>(
    out: &mut W,
    mut slices: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match out.write_vectored(slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn check_name(name: &str, what: &'static str) -> Result<()> {
    if name.is_empty() || crate::header::has_control(name) {
        return Err(Error::Usage(format!(
            "{what} '{}' must be non-empty and contain no NUL, newline or other control character",
            name.escape_debug()
        )));
    }
    if name.len() + 1 > MAX_BLOB_LEN {
        return Err(Error::Limit {
            what,
            limit: MAX_BLOB_LEN as u64 - 1,
            got: name.len() as u64,
        });
    }
    Ok(())
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// True if every byte is zero. Works on 16-byte words so it vectorizes.
pub fn is_zero(buf: &[u8]) -> bool {
    let mut chunks = buf.chunks_exact(64);
    for c in &mut chunks {
        let mut acc = 0u128;
        for w in c.chunks_exact(16) {
            let mut a = [0u8; 16];
            a.copy_from_slice(w);
            acc |= u128::from_ne_bytes(a);
        }
        if acc != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

//! The archive side of a backup: a streaming VMA writer (Proxmox layout: blob order and table
//! growth, at most 58 clusters per extent, per-4 KiB zero masks, zero clusters recorded) over
//! a compressor over the `.dat` file.
//!
//! This writer lives in the engine because `vmdump-vma`'s streaming `Writer` had not landed
//! when the engine was written; it implements exactly the subset the backup needs (append
//! clusters in any order, each once) and is meant to be replaced by `vma::Writer`.

use std::io::Write;

use md5::{Digest, Md5};

/// Size of a VMA data block (zero detection granularity).
pub const BLOCK_SIZE: usize = 4096;
/// Clusters per extent written by Proxmox (59 slots, one always left empty).
const CLUSTERS_PER_EXTENT: usize = 58;
const HEADER_FIXED: usize = 12288;
const EXTENT_HEADER: usize = 512;
const MAX_DEVICES: usize = 254;
const MAX_CONFIGS: usize = 256;

/// Errors of the VMA writer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// Writing the output failed.
    #[error("write failed")]
    Io(#[from] std::io::Error),
    /// A cluster outside the device, or written twice, or an unknown device.
    #[error("device {dev}: cluster {cluster}: {detail}")]
    Cluster {
        /// dev_id.
        dev: u8,
        /// Cluster number.
        cluster: u64,
        /// What is wrong.
        detail: &'static str,
    },
    /// Registration limits (devices, configs, blob sizes) or registration after data.
    #[error("{0}")]
    Layout(String),
    /// `finish` found clusters that never arrived.
    #[error("device {dev}: incomplete, cluster {cluster} missing")]
    Incomplete {
        /// dev_id.
        dev: u8,
        /// First missing cluster.
        cluster: u64,
    },
}

#[derive(Debug)]
struct Device {
    name: String,
    size: u64,
    seen: Vec<u64>,
    remaining: u64,
}

/// Writes a VMA stream to `W`.
pub struct VmaWriter<W: Write> {
    out: W,
    uuid: [u8; 16],
    ctime: Option<i64>,
    configs: Vec<(String, Vec<u8>)>,
    devices: Vec<Device>,
    header_written: bool,
    slots: Vec<u64>,
    data: Vec<u8>,
    bytes_out: u64,
}

impl<W: Write> std::fmt::Debug for VmaWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmaWriter")
            .field("devices", &self.devices.len())
            .field("bytes_out", &self.bytes_out)
            .finish_non_exhaustive()
    }
}

impl<W: Write> VmaWriter<W> {
    /// A writer with this archive uuid; `ctime` defaults to the time the header is written.
    pub fn new(out: W, uuid: [u8; 16]) -> Self {
        Self {
            out,
            uuid,
            ctime: None,
            configs: Vec::new(),
            devices: Vec::new(),
            header_written: false,
            slots: Vec::with_capacity(CLUSTERS_PER_EXTENT),
            data: Vec::with_capacity(EXTENT_HEADER + CLUSTERS_PER_EXTENT * 65536),
            bytes_out: 0,
        }
    }

    /// Pins the header's creation time (tests).
    pub fn set_ctime(&mut self, ctime: i64) {
        self.ctime = Some(ctime);
    }

    /// Adds a config file (`qemu-server.conf`); before any data.
    pub fn add_config(&mut self, name: &str, data: &[u8]) -> Result<(), WriteError> {
        if self.header_written {
            return Err(WriteError::Layout("config added after data".into()));
        }
        if self.configs.len() >= MAX_CONFIGS {
            return Err(WriteError::Layout("too many config files".into()));
        }
        if data.len() > 65535 || name.len() + 1 > 65535 {
            return Err(WriteError::Layout(format!(
                "config '{name}' is {} bytes, more than 65535",
                data.len()
            )));
        }
        self.configs.push((name.to_string(), data.to_vec()));
        Ok(())
    }

    /// Registers a device and returns its dev_id (1..=254); before any data.
    pub fn register_device(&mut self, name: &str, size: u64) -> Result<u8, WriteError> {
        if self.header_written {
            return Err(WriteError::Layout("device registered after data".into()));
        }
        if self.devices.len() >= MAX_DEVICES {
            return Err(WriteError::Layout("too many drives".into()));
        }
        if size == 0 {
            return Err(WriteError::Layout(format!("device '{name}' has size 0")));
        }
        let clusters = size.div_ceil(65536);
        if clusters > u64::from(u32::MAX) + 1 {
            return Err(WriteError::Layout(format!("device '{name}' is too large")));
        }
        self.devices.push(Device {
            name: name.to_string(),
            size,
            seen: vec![0; clusters.div_ceil(64) as usize],
            remaining: clusters,
        });
        Ok(self.devices.len() as u8)
    }

    /// Bytes written to the output so far.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out
    }

    /// Appends cluster `cluster` of `dev`: `data` holds the cluster's bytes (short for the last
    /// cluster), `None` means all zero. Returns whether the cluster was all zero.
    pub fn write_cluster(
        &mut self,
        dev: u8,
        cluster: u64,
        data: Option<&[u8]>,
    ) -> Result<bool, WriteError> {
        let idx = usize::from(dev)
            .checked_sub(1)
            .filter(|&i| i < self.devices.len())
            .ok_or(WriteError::Cluster {
                dev,
                cluster,
                detail: "unknown device",
            })?;
        let d = &mut self.devices[idx];
        let start = cluster * 65536;
        if start >= d.size {
            return Err(WriteError::Cluster {
                dev,
                cluster,
                detail: "beyond the end of the device",
            });
        }
        let len = (d.size - start).min(65536) as usize;
        let (word, bit) = ((cluster / 64) as usize, cluster % 64);
        if d.seen[word] & (1 << bit) != 0 {
            return Err(WriteError::Cluster {
                dev,
                cluster,
                detail: "written twice",
            });
        }
        if let Some(bytes) = data {
            if bytes.len() != len && bytes.len() != 65536 {
                return Err(WriteError::Cluster {
                    dev,
                    cluster,
                    detail: "wrong data length",
                });
            }
        }
        d.seen[word] |= 1 << bit;
        d.remaining -= 1;
        if self.slots.len() >= CLUSTERS_PER_EXTENT {
            self.flush_extent()?;
        }
        let mut mask: u16 = 0;
        if let Some(bytes) = data {
            let bytes = &bytes[..len];
            for (i, block) in bytes.chunks(BLOCK_SIZE).enumerate() {
                if !is_zero(block) {
                    mask |= 1 << i;
                    self.data.extend_from_slice(block);
                    if block.len() < BLOCK_SIZE {
                        // The block straddles the device end: pad with zeros.
                        self.data
                            .resize(self.data.len() + BLOCK_SIZE - block.len(), 0);
                    }
                }
            }
        }
        let info = (u64::from(mask) << 48) | (u64::from(dev) << 32) | cluster;
        self.slots.push(info);
        Ok(mask == 0)
    }

    fn flush_extent(&mut self) -> Result<(), WriteError> {
        if !self.header_written {
            self.write_header()?;
        }
        let blocks = self.data.len() / BLOCK_SIZE;
        let mut head = [0u8; EXTENT_HEADER];
        head[0..4].copy_from_slice(b"VMAE");
        head[6..8].copy_from_slice(&(blocks as u16).to_be_bytes());
        head[8..24].copy_from_slice(&self.uuid);
        for (i, info) in self.slots.iter().enumerate() {
            head[40 + i * 8..48 + i * 8].copy_from_slice(&info.to_be_bytes());
        }
        let digest = Md5::digest(head);
        head[24..40].copy_from_slice(&digest);
        self.out.write_all(&head)?;
        self.out.write_all(&self.data)?;
        self.bytes_out += (EXTENT_HEADER + self.data.len()) as u64;
        self.slots.clear();
        self.data.clear();
        Ok(())
    }

    fn write_header(&mut self) -> Result<(), WriteError> {
        // Blob buffer: configs (name, data) in order, then device names, with Proxmox's table
        // growth so header_size matches byte for byte.
        let mut blobs: Vec<u8> = vec![0];
        let mut table = 0usize;
        let mut add = |blobs: &mut Vec<u8>, bytes: &[u8]| -> u32 {
            let pos = blobs.len();
            if table == 0 || table < pos + bytes.len() + 2 {
                table += (bytes.len() + 2).div_ceil(512) * 512;
            }
            blobs.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
            blobs.extend_from_slice(bytes);
            pos as u32
        };
        let mut cfg_ptrs = Vec::new();
        for (name, data) in &self.configs {
            let mut n = name.as_bytes().to_vec();
            n.push(0);
            let np = add(&mut blobs, &n);
            let dp = add(&mut blobs, data);
            cfg_ptrs.push((np, dp));
        }
        let mut dev_ptrs = Vec::new();
        for d in &self.devices {
            let mut n = d.name.as_bytes().to_vec();
            n.push(0);
            dev_ptrs.push(add(&mut blobs, &n));
        }
        let header_size = HEADER_FIXED + table;
        let mut h = vec![0u8; header_size];
        h[0..4].copy_from_slice(b"VMA\0");
        h[4..8].copy_from_slice(&1u32.to_be_bytes());
        h[8..24].copy_from_slice(&self.uuid);
        let ctime = self.ctime.unwrap_or_else(|| chrono::Utc::now().timestamp());
        h[24..32].copy_from_slice(&ctime.to_be_bytes());
        h[48..52].copy_from_slice(&(HEADER_FIXED as u32).to_be_bytes());
        h[52..56].copy_from_slice(&(blobs.len() as u32).to_be_bytes());
        h[56..60].copy_from_slice(&(header_size as u32).to_be_bytes());
        for (i, (np, dp)) in cfg_ptrs.iter().enumerate() {
            h[2044 + i * 4..2048 + i * 4].copy_from_slice(&np.to_be_bytes());
            h[3068 + i * 4..3072 + i * 4].copy_from_slice(&dp.to_be_bytes());
        }
        for (i, (d, p)) in self.devices.iter().zip(&dev_ptrs).enumerate() {
            let at = 4096 + 32 * (i + 1);
            h[at..at + 4].copy_from_slice(&p.to_be_bytes());
            h[at + 8..at + 16].copy_from_slice(&d.size.to_be_bytes());
        }
        h[HEADER_FIXED..HEADER_FIXED + blobs.len()].copy_from_slice(&blobs);
        let digest = Md5::digest(&h);
        h[32..48].copy_from_slice(&digest);
        self.out.write_all(&h)?;
        self.bytes_out += header_size as u64;
        self.header_written = true;
        Ok(())
    }

    /// Checks that every cluster arrived, writes the last extent and returns the output.
    pub fn finish(mut self) -> Result<W, WriteError> {
        for (i, d) in self.devices.iter().enumerate() {
            if d.remaining > 0 {
                let clusters = d.size.div_ceil(65536);
                let missing = (0..clusters)
                    .find(|&n| d.seen[(n / 64) as usize] & (1 << (n % 64)) == 0)
                    .unwrap_or(0);
                return Err(WriteError::Incomplete {
                    dev: (i + 1) as u8,
                    cluster: missing,
                });
            }
        }
        if !self.slots.is_empty() || !self.header_written {
            self.flush_extent()?;
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Whether a buffer is all zero bytes (fast path over 8-byte words).
pub fn is_zero(buf: &[u8]) -> bool {
    let chunks = buf.chunks_exact(8);
    let tail = chunks.remainder();
    chunks
        .map(|c| u64::from_ne_bytes(c.try_into().expect("chunks_exact yields 8 bytes")))
        .all(|w| w == 0)
        && tail.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_and_extents() {
        let mut w = VmaWriter::new(Vec::new(), [7; 16]);
        w.set_ctime(1_700_000_000);
        w.add_config("qemu-server.conf", b"memory: 512\n")
            .expect("cfg");
        let dev = w
            .register_device("drive-scsi0", 65536 * 2 + 100)
            .expect("dev");
        assert_eq!(dev, 1);
        assert!(w.write_cluster(1, 2, Some(&[5; 100])).is_ok());
        assert!(w.write_cluster(1, 0, None).expect("zero"));
        let mut half = vec![0u8; 65536];
        half[4096 * 3] = 1;
        assert!(!w.write_cluster(1, 1, Some(&half)).expect("data"));
        assert!(w.write_cluster(1, 1, None).is_err(), "twice");
        let out = w.finish().expect("finish");
        assert_eq!(&out[0..4], b"VMA\0");
        let header_size = u32::from_be_bytes(out[56..60].try_into().expect("4")) as usize;
        assert_eq!(header_size, 12288 + 512);
        // One extent: 3 slots, 2 data blocks.
        let e = &out[header_size..];
        assert_eq!(&e[0..4], b"VMAE");
        assert_eq!(u16::from_be_bytes([e[6], e[7]]), 2);
        assert_eq!(e.len(), 512 + 2 * 4096);
        let slot = |i: usize| u64::from_be_bytes(e[40 + i * 8..48 + i * 8].try_into().expect("8"));
        assert_eq!(slot(0), (1 << 48) | (1 << 32) | 2);
        assert_eq!(slot(1), (1 << 32));
        assert_eq!(slot(2), (1 << (48 + 3)) | (1 << 32) | 1);
        assert_eq!(slot(3), 0);
    }

    #[test]
    fn incomplete_device_is_refused() {
        let mut w = VmaWriter::new(Vec::new(), [1; 16]);
        w.add_config("qemu-server.conf", b"x").expect("cfg");
        w.register_device("drive-virtio0", 3 * 65536).expect("dev");
        w.write_cluster(1, 0, None).expect("ok");
        match w.finish() {
            Err(WriteError::Incomplete { dev: 1, cluster: 1 }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn extents_hold_58_clusters() {
        let mut w = VmaWriter::new(Vec::new(), [1; 16]);
        w.add_config("qemu-server.conf", b"x").expect("cfg");
        w.register_device("drive-virtio0", 59 * 65536).expect("dev");
        for n in 0..59 {
            w.write_cluster(1, n, None).expect("ok");
        }
        let out = w.finish().expect("finish");
        // header (12288+512) + two empty-data extents.
        assert_eq!(out.len(), 12800 + 512 * 2);
    }

    #[test]
    fn zero_check() {
        assert!(is_zero(&[0; 4097]));
        let mut b = vec![0; 4097];
        b[4096] = 1;
        assert!(!is_zero(&b));
        b[4096] = 0;
        b[3] = 1;
        assert!(!is_zero(&b));
    }
}

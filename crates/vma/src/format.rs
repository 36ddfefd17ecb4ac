//! Constants of the VMA format. Never change these: they are the on-disk format.

/// Header magic: `VMA\0`.
pub const MAGIC: [u8; 4] = *b"VMA\0";
/// Extent header magic: `VMAE`.
pub const EXTENT_MAGIC: [u8; 4] = *b"VMAE";
/// The only format version.
pub const VERSION: u32 = 1;
/// Size of a data block, the unit of zero detection.
pub const BLOCK_SIZE: usize = 4096;
/// Size of a cluster, the unit of the device address space.
pub const CLUSTER_SIZE: usize = 65536;
/// Blocks per cluster (bits in a blockinfo mask).
pub const BLOCKS_PER_CLUSTER: usize = CLUSTER_SIZE / BLOCK_SIZE;
/// Size of an extent header.
pub const EXTENT_HEADER_SIZE: usize = 512;
/// Blockinfo slots per extent header.
pub const SLOTS_PER_EXTENT: usize = 59;
/// Clusters the Proxmox writer (and ours) puts in one extent: one slot stays unused.
pub const WRITER_CLUSTERS_PER_EXTENT: usize = SLOTS_PER_EXTENT - 1;
/// Largest possible extent: header plus 59 full clusters.
pub const MAX_EXTENT_SIZE: usize = EXTENT_HEADER_SIZE + SLOTS_PER_EXTENT * CLUSTER_SIZE;
/// Size of the fixed part of the archive header; the blob buffer follows.
pub const HEADER_FIXED_SIZE: usize = 12288;
/// Largest header the Proxmox writer produces (8 clusters).
pub const MAX_WRITER_HEADER_SIZE: usize = 8 * CLUSTER_SIZE;
/// Largest header our reader accepts (bounds memory on hostile input; a header holding
/// 256 configs of 65535 bytes and 254 device names fits).
pub const MAX_READER_HEADER_SIZE: usize = 32 * 1024 * 1024;
/// Highest device id written (and the most devices a writer registers); ids start at 1.
pub const MAX_DEVICES: usize = 254;
/// Highest device id read: slot 255 is valid in the header, though no writer uses it.
pub const MAX_DEVICE_ID: usize = 255;
/// Config slots in the header.
pub const MAX_CONFIGS: usize = 256;
/// Largest blob (config data or name including NUL).
pub const MAX_BLOB_LEN: usize = 65535;
/// Name of the RAM-state stream, whose clusters come in sequence and whose size is not checked.
pub const VMSTATE_NAME: &str = "vmstate";

// Header field offsets.
pub(crate) const H_VERSION: usize = 4;
pub(crate) const H_UUID: usize = 8;
pub(crate) const H_CTIME: usize = 24;
pub(crate) const H_MD5: usize = 32;
pub(crate) const H_BLOB_OFFSET: usize = 48;
pub(crate) const H_BLOB_SIZE: usize = 52;
pub(crate) const H_HEADER_SIZE: usize = 56;
pub(crate) const H_CONFIG_NAMES: usize = 2044;
pub(crate) const H_CONFIG_DATA: usize = 3068;
pub(crate) const H_DEV_INFO: usize = 4096;
pub(crate) const DEV_INFO_SIZE: usize = 32;

// Extent header field offsets.
pub(crate) const E_RESERVED: usize = 4;
pub(crate) const E_BLOCK_COUNT: usize = 6;
pub(crate) const E_UUID: usize = 8;
pub(crate) const E_MD5: usize = 24;
pub(crate) const E_BLOCKINFO: usize = 40;

const _: () = assert!(E_BLOCKINFO + SLOTS_PER_EXTENT * 8 == EXTENT_HEADER_SIZE);
const _: () = assert!(H_DEV_INFO + 256 * DEV_INFO_SIZE == HEADER_FIXED_SIZE);
const _: () = assert!(H_CONFIG_DATA + MAX_CONFIGS * 4 + 4 == H_DEV_INFO);

pub(crate) fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub(crate) fn be_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

pub(crate) fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

pub(crate) fn put(b: &mut [u8], at: usize, v: &[u8]) {
    b[at..at + v.len()].copy_from_slice(v);
}

/// Number of clusters a device of `size` bytes spans.
pub fn cluster_count(size: u64) -> u64 {
    size.div_ceil(CLUSTER_SIZE as u64)
}

/// Lower-case hyphenated text form of a raw uuid.
pub fn uuid_to_string(uuid: &[u8; 16]) -> String {
    uuid::Uuid::from_bytes(*uuid).hyphenated().to_string()
}

pub(crate) fn md5(data: &[u8]) -> [u8; 16] {
    use md5::Digest;
    md5::Md5::digest(data).into()
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One 64-bit blockinfo entry of an extent header:
/// `mask << 48 | reserved << 40 | dev_id << 32 | cluster`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockInfo(pub u64);

impl BlockInfo {
    /// Build an entry from its parts (reserved byte zero).
    pub fn new(mask: u16, dev_id: u8, cluster: u32) -> Self {
        BlockInfo((u64::from(mask) << 48) | (u64::from(dev_id) << 32) | u64::from(cluster))
    }
    /// Bit i set: 4 KiB block i of the cluster is stored.
    pub fn mask(self) -> u16 {
        (self.0 >> 48) as u16
    }
    /// Reserved byte (bits 40..48); readers ignore it, as Proxmox does.
    pub fn reserved(self) -> u8 {
        (self.0 >> 40) as u8
    }
    /// Device id; 0 marks an unused slot.
    pub fn dev_id(self) -> u8 {
        (self.0 >> 32) as u8
    }
    /// Cluster number within the device.
    pub fn cluster(self) -> u32 {
        self.0 as u32
    }
    /// Number of data blocks this slot contributes.
    pub fn block_count(self) -> u32 {
        self.mask().count_ones()
    }
}

impl BlockInfo {
    /// Big-endian on-disk bytes.
    pub fn to_be(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blockinfo_bit_ranges() {
        let b = BlockInfo(0xABCD_00EF_1234_5678);
        assert_eq!(b.mask(), 0xABCD);
        assert_eq!(b.reserved(), 0x00);
        assert_eq!(b.dev_id(), 0xEF);
        assert_eq!(b.cluster(), 0x1234_5678);
        assert_eq!(BlockInfo::new(0xABCD, 0xEF, 0x1234_5678), b);
        assert_eq!(BlockInfo(0x0000_7700_0000_0000).reserved(), 0x77);
        assert_eq!(
            BlockInfo::new(0xFFFF, 1, 0).to_be(),
            [0xFF, 0xFF, 0, 1, 0, 0, 0, 0]
        );
        assert_eq!(b.block_count(), 0xABCDu16.count_ones());
    }

    /// The sizes in numbers, as the format reference (`vma-format.md`, Proxmox's `vma.h`)
    /// states them, not in terms of each other; and our own bound on hostile headers, as
    /// documented.
    #[test]
    fn sizes_are_the_formats_in_numbers() {
        assert_eq!(BLOCKS_PER_CLUSTER, 16);
        assert_eq!(WRITER_CLUSTERS_PER_EXTENT, 58);
        assert_eq!(MAX_EXTENT_SIZE, 3_867_136);
        assert_eq!(MAX_WRITER_HEADER_SIZE, 524_288);
        assert_eq!(MAX_READER_HEADER_SIZE, 33_554_432);
    }

    #[test]
    fn cluster_counts() {
        assert_eq!(cluster_count(1), 1);
        assert_eq!(cluster_count(65536), 1);
        assert_eq!(cluster_count(65537), 2);
        assert_eq!(cluster_count(540672), 9);
    }
}

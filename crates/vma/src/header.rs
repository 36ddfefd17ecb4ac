//! The archive header: fixed part, blob buffer, config table and device table.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::format::*;

/// One stored config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Stored name (without NUL), e.g. `qemu-server.conf`.
    pub name: String,
    /// Raw contents.
    pub data: Vec<u8>,
}

/// One device of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Device id, 1..=254.
    pub id: u8,
    /// Name, e.g. `drive-scsi0`.
    pub name: String,
    /// Size in bytes (> 0).
    pub size: u64,
}

impl Device {
    /// Number of clusters the device spans.
    pub fn cluster_count(&self) -> u64 {
        cluster_count(self.size)
    }
    /// True for the RAM-state stream.
    pub fn is_vmstate(&self) -> bool {
        self.name == VMSTATE_NAME
    }
}

/// A parsed, validated archive header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Archive uuid (repeated in every extent).
    pub uuid: [u8; 16],
    /// Creation time, Unix seconds.
    pub ctime: i64,
    /// Total header length in bytes; the first extent starts here.
    pub header_size: u32,
    /// Offset of the blob buffer from the header start.
    pub blob_buffer_offset: u32,
    /// Used length of the blob buffer.
    pub blob_buffer_size: u32,
    /// Config files in slot order.
    pub configs: Vec<Config>,
    /// Devices in id order.
    pub devices: Vec<Device>,
    dev_index: Vec<u8>,
}

impl Header {
    /// Device with this id, if it exists.
    pub fn device(&self, id: u8) -> Option<&Device> {
        match self.dev_index.get(usize::from(id)) {
            Some(&i) if i != u8::MAX => self.devices.get(usize::from(i)),
            _ => None,
        }
    }

    /// First config with this name.
    pub fn config(&self, name: &str) -> Option<&Config> {
        self.configs.iter().find(|c| c.name == name)
    }

    /// Uuid as lower-case text.
    pub fn uuid_string(&self) -> String {
        uuid_to_string(&self.uuid)
    }

    /// Length of the whole header, read from its first 12288 bytes, after checking the
    /// magic and bounds. Lets a streaming reader know how much more to read.
    pub fn size_from_prefix(prefix: &[u8]) -> Result<usize> {
        if prefix.len() < HEADER_FIXED_SIZE {
            return Err(Error::TruncatedHeader {
                got: prefix.len() as u64,
                expected: HEADER_FIXED_SIZE as u64,
            });
        }
        if prefix[..4] != MAGIC {
            let mut found = [0u8; 4];
            found.copy_from_slice(&prefix[..4]);
            return Err(Error::BadMagic { found });
        }
        let size = be_u32(prefix, H_HEADER_SIZE) as usize;
        if size <= HEADER_FIXED_SIZE {
            return Err(Error::BadHeader {
                reason: format!("header_size {size} must be larger than {HEADER_FIXED_SIZE}"),
            });
        }
        if size > MAX_READER_HEADER_SIZE {
            return Err(Error::BadHeader {
                reason: format!("header_size {size} exceeds the limit of {MAX_READER_HEADER_SIZE}"),
            });
        }
        Ok(size)
    }

    /// Parse and validate a complete header (`buf.len()` must equal header_size).
    #[allow(clippy::needless_range_loop)]
    pub fn parse(buf: &[u8]) -> Result<Header> {
        let header_size = Self::size_from_prefix(buf)?;
        if buf.len() != header_size {
            return Err(Error::TruncatedHeader {
                got: buf.len() as u64,
                expected: header_size as u64,
            });
        }
        let mut stored = [0u8; 16];
        stored.copy_from_slice(&buf[H_MD5..H_MD5 + 16]);
        let computed = header_md5(buf);
        if stored != computed {
            return Err(Error::HeaderChecksum {
                stored: hex(&stored),
                computed: hex(&computed),
            });
        }
        let version = be_u32(buf, H_VERSION);
        if version != VERSION {
            return Err(Error::UnsupportedVersion { version });
        }
        let blob_off = be_u32(buf, H_BLOB_OFFSET);
        let blob_size = be_u32(buf, H_BLOB_SIZE);
        if (blob_off as usize) < HEADER_FIXED_SIZE
            || u64::from(blob_off) + u64::from(blob_size) > header_size as u64
        {
            return Err(Error::BadHeader {
                reason: format!(
                    "blob buffer (offset {blob_off}, size {blob_size}) outside header of {header_size} bytes"
                ),
            });
        }
        let blobs = BlobIndex::new(&buf[blob_off as usize..(blob_off + blob_size) as usize]);

        let mut configs = Vec::new();
        for i in 0..MAX_CONFIGS {
            let np = be_u32(buf, H_CONFIG_NAMES + 4 * i);
            let dp = be_u32(buf, H_CONFIG_DATA + 4 * i);
            if np == 0 || dp == 0 {
                continue;
            }
            let (Some(name), Some(data)) = (blobs.string(np), blobs.blob(dp)) else {
                return Err(Error::BadHeader {
                    reason: format!("config slot {i} has invalid data pointers ({np}, {dp})"),
                });
            };
            check_name_text(&name, "config")?;
            configs.push(Config {
                name,
                data: data.to_vec(),
            });
        }

        let mut devices = Vec::new();
        let mut dev_index = vec![u8::MAX; 256];
        // Writers use ids 1..=254 (Proxmox keeps 255 "for safety"), but a device in slot
        // 255 is valid for every reader.
        for id in 1..=MAX_DEVICE_ID {
            let at = H_DEV_INFO + DEV_INFO_SIZE * id;
            let np = be_u32(buf, at);
            let size = be_u64(buf, at + 8);
            if size == 0 || np == 0 {
                continue;
            }
            let Some(name) = blobs.string(np) else {
                tracing::warn!(dev_id = id, "ignoring device with an unresolvable name");
                continue;
            };
            check_name_text(&name, "device")?;
            dev_index[id] = devices.len() as u8;
            devices.push(Device {
                id: id as u8,
                name,
                size,
            });
        }

        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&buf[H_UUID..H_UUID + 16]);
        Ok(Header {
            uuid,
            ctime: be_u64(buf, H_CTIME) as i64,
            header_size: header_size as u32,
            blob_buffer_offset: blob_off,
            blob_buffer_size: blob_size,
            configs,
            devices,
            dev_index,
        })
    }
}

/// True if `name` holds a control character (newline, tab, NUL, DEL, C1 controls):
/// such a name would inject fake lines into `vma list` / `extract -r` output, which
/// qmrestore-style tools parse.
pub(crate) fn has_control(name: &str) -> bool {
    name.chars().any(char::is_control)
}

/// Refuse a config or device name of an archive that holds a control character.
fn check_name_text(name: &str, what: &str) -> Result<()> {
    if has_control(name) {
        return Err(Error::BadHeader {
            reason: format!(
                "{what} name '{}' contains a control character",
                name.escape_debug()
            ),
        });
    }
    Ok(())
}

/// MD5 of a header with its md5 field taken as zero.
pub(crate) fn header_md5(buf: &[u8]) -> [u8; 16] {
    use md5::Digest;
    let mut h = md5::Md5::new();
    h.update(&buf[..H_MD5]);
    h.update([0u8; 16]);
    h.update(&buf[H_MD5 + 16..]);
    h.finalize().into()
}

/// Blobs of a blob buffer, indexed by offset, as the Proxmox reader walks them.
struct BlobIndex<'a> {
    buf: &'a [u8],
    blobs: HashMap<u32, (usize, usize)>,
}

impl<'a> BlobIndex<'a> {
    fn new(buf: &'a [u8]) -> Self {
        let mut blobs = HashMap::new();
        let mut pos = 1usize;
        while pos + 2 <= buf.len() {
            let len = usize::from(u16::from_le_bytes([buf[pos], buf[pos + 1]]));
            if pos + 2 + len > buf.len() {
                break;
            }
            blobs.insert(pos as u32, (pos + 2, len));
            pos += 2 + len;
        }
        BlobIndex { buf, blobs }
    }

    fn blob(&self, ptr: u32) -> Option<&'a [u8]> {
        let &(start, len) = self.blobs.get(&ptr)?;
        Some(&self.buf[start..start + len])
    }

    fn string(&self, ptr: u32) -> Option<String> {
        let b = self.blob(ptr)?;
        let (&last, body) = b.split_last()?;
        if last != 0 {
            return None;
        }
        Some(String::from_utf8_lossy(body).into_owned())
    }
}

/// The growing blob table of a writer, grown exactly as Proxmox's writer grows it
/// (so that `header_size` and every blob offset match byte for byte).
#[derive(Debug, Clone)]
pub(crate) struct BlobTable {
    pub(crate) buf: Vec<u8>,
    pub(crate) pos: usize,
}

impl BlobTable {
    pub(crate) fn new() -> Self {
        BlobTable {
            buf: Vec::new(),
            pos: 1,
        }
    }

    /// Table size after appending blobs of these lengths (without doing it).
    pub(crate) fn projected_size(&self, lens: impl IntoIterator<Item = usize>) -> usize {
        let (mut size, mut pos) = (self.buf.len(), self.pos);
        for len in lens {
            size = Self::grow(size, pos, len);
            pos += len + 2;
        }
        size
    }

    fn grow(size: usize, pos: usize, len: usize) -> usize {
        let mut new = size;
        if size == 0 || size < pos + len + 2 {
            new = size + (len + 2).div_ceil(512) * 512;
        }
        // Proxmox's first allocation overruns by one byte when len + 2 is a multiple
        // of 512; we add one more sector instead of corrupting memory.
        if new < pos + len + 2 {
            new += 512;
        }
        new
    }

    pub(crate) fn push(&mut self, data: &[u8]) -> Result<u32> {
        if data.len() > MAX_BLOB_LEN {
            return Err(Error::Limit {
                what: "blob length",
                limit: MAX_BLOB_LEN as u64,
                got: data.len() as u64,
            });
        }
        let new = Self::grow(self.buf.len(), self.pos, data.len());
        self.buf.resize(new, 0);
        let at = self.pos;
        self.buf[at..at + 2].copy_from_slice(&(data.len() as u16).to_le_bytes());
        self.buf[at + 2..at + 2 + data.len()].copy_from_slice(data);
        self.pos += data.len() + 2;
        Ok(at as u32)
    }

    pub(crate) fn push_str(&mut self, s: &str) -> Result<u32> {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.push(&v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_growth_follows_proxmox() {
        let mut t = BlobTable::new();
        assert_eq!(t.push(&[1; 7]).unwrap(), 1); // S=512, P=10
        assert_eq!((t.buf.len(), t.pos), (512, 10));
        assert_eq!(t.push(&[2; 600]).unwrap(), 10); // S < 612 -> S += 1024
        assert_eq!((t.buf.len(), t.pos), (1536, 612));
        assert_eq!(t.buf[10..12], [0x58, 0x02]); // 600 little-endian
        assert_eq!(t.projected_size([100, 1000]), 1536 + 1024);
    }

    #[test]
    fn first_blob_edge_case_stays_in_bounds() {
        let mut t = BlobTable::new();
        t.push(&[1; 510]).unwrap();
        assert!(t.buf.len() >= t.pos);
        assert_eq!(t.buf.len(), 1024);
    }

    #[test]
    fn blob_index_skips_overrun() {
        let buf = [0u8, 3, 0, b'a', b'b', 0, 9, 0, 1];
        let idx = BlobIndex::new(&buf);
        assert_eq!(idx.string(1).as_deref(), Some("ab"));
        assert!(idx.blob(6).is_none());
    }

    /// The header of an archive (configs `a.conf` = "x" and `b.conf` = "yy", devices
    /// `drive-scsi0` of 1 MiB and `drive-scsi1` of 64 KiB + 1) as our writer writes it.
    fn written() -> Vec<u8> {
        let mut w = crate::Writer::with_identity(Vec::new(), [7; 16], Some(1_700_000_000));
        w.add_config("a.conf", b"x").unwrap();
        w.add_config("b.conf", b"yy").unwrap();
        let d0 = w.register_device("drive-scsi0", 1 << 20).unwrap();
        let d1 = w.register_device("drive-scsi1", 65537).unwrap();
        w.write_zero_clusters(d0, 0, 16).unwrap();
        w.write_zero_clusters(d1, 0, 2).unwrap();
        let (mut a, _) = w.finish().unwrap();
        a.truncate(be_u32(&a, H_HEADER_SIZE) as usize);
        a
    }

    /// `h` with its md5 made right again after a change.
    fn resealed(mut h: Vec<u8>) -> Vec<u8> {
        let md5 = header_md5(&h);
        put(&mut h, H_MD5, &md5);
        h
    }

    fn bad_header(h: Vec<u8>) -> String {
        match Header::parse(&resealed(h)) {
            Err(Error::BadHeader { reason }) => reason,
            other => panic!("not refused as a bad header: {other:?}"),
        }
    }

    #[test]
    fn a_written_header_parses_into_its_configs_and_devices() {
        let h = Header::parse(&written()).unwrap();
        assert_eq!(h.uuid_string(), "07070707-0707-0707-0707-070707070707");
        assert_eq!(h.ctime, 1_700_000_000);
        assert_eq!((h.header_size, h.blob_buffer_offset), (12288 + 512, 12288));
        assert_eq!(h.config("b.conf").unwrap().data, b"yy");
        assert!(h.config("c.conf").is_none());
        assert_eq!(h.device(2).unwrap().name, "drive-scsi1");
        assert_eq!(h.device(2).unwrap().cluster_count(), 2);
        assert!(h.device(0).is_none() && h.device(3).is_none() && h.device(255).is_none());
    }

    #[test]
    fn header_sizes_are_bounded_at_the_limits() {
        let mut prefix = vec![0u8; HEADER_FIXED_SIZE];
        put(&mut prefix, 0, &MAGIC);
        let with_size = |mut p: Vec<u8>, size: usize| {
            put(&mut p, H_HEADER_SIZE, &(size as u32).to_be_bytes());
            Header::size_from_prefix(&p)
        };
        assert_eq!(
            with_size(prefix.clone(), HEADER_FIXED_SIZE + 1).unwrap(),
            HEADER_FIXED_SIZE + 1
        );
        assert_eq!(
            with_size(prefix.clone(), MAX_READER_HEADER_SIZE).unwrap(),
            MAX_READER_HEADER_SIZE
        );
        for size in [HEADER_FIXED_SIZE, MAX_READER_HEADER_SIZE + 1] {
            assert!(
                matches!(
                    with_size(prefix.clone(), size),
                    Err(Error::BadHeader { .. })
                ),
                "{size}"
            );
        }
    }

    #[test]
    fn the_blob_buffer_must_lie_inside_the_header() {
        let h = written();
        let size = h.len() as u32;
        // Reaching exactly to the end of the header: fine (the rest of the table is zeros).
        let mut whole = h.clone();
        put(&mut whole, H_BLOB_SIZE, &(size - 12288).to_be_bytes());
        let parsed = Header::parse(&resealed(whole)).unwrap();
        assert_eq!(parsed.blob_buffer_size, size - 12288);
        assert_eq!(parsed.devices.len(), 2);
        // One byte past the end, or starting inside the fixed part: refused.
        let mut past = h.clone();
        put(&mut past, H_BLOB_SIZE, &(size - 12288 + 1).to_be_bytes());
        assert!(bad_header(past).contains("outside header"));
        let mut early = h.clone();
        put(&mut early, H_BLOB_OFFSET, &12287u32.to_be_bytes());
        assert!(bad_header(early).contains("outside header"));
    }

    #[test]
    fn slots_missing_a_pointer_or_a_size_are_unused() {
        let mut h = written();
        // Config 0 without its data, config 1 without its name: both slots are empty.
        put(&mut h, H_CONFIG_DATA, &0u32.to_be_bytes());
        put(&mut h, H_CONFIG_NAMES + 4, &0u32.to_be_bytes());
        // Device 2 with its name but size 0: no device.
        put(
            &mut h,
            H_DEV_INFO + DEV_INFO_SIZE * 2 + 8,
            &0u64.to_be_bytes(),
        );
        let parsed = Header::parse(&resealed(h)).unwrap();
        assert_eq!(parsed.configs, vec![]);
        assert_eq!(parsed.devices.len(), 1);
        assert_eq!(parsed.devices[0].name, "drive-scsi0");
        assert!(parsed.device(2).is_none());
    }

    #[test]
    fn names_with_control_characters_are_refused() {
        let h = written();
        let at = |name: &[u8]| {
            h.windows(name.len())
                .position(|w| w == name)
                .expect("name in the blob buffer")
        };
        for (name, what) in [(&b"b.conf\0"[..], "config"), (b"drive-scsi1\0", "device")] {
            let mut bad = h.clone();
            bad[at(name) + 1] = b'\n';
            let reason = bad_header(bad);
            assert!(
                reason.contains(what) && reason.contains("control character"),
                "{reason}"
            );
        }
        // The writer refuses them too.
        let mut w = crate::Writer::new(Vec::new());
        assert!(w.add_config("a\nb.conf", b"").is_err());
        assert!(w.register_device("drive\u{7f}", 1).is_err());
        assert!(!has_control("drive-scsi0 ü"));
    }

    /// Table sizes computed by hand from Proxmox's rule (grow by whole sectors when
    /// `size < pos + len + 2`), with our extra sector where its first allocation overruns.
    #[test]
    fn blob_tables_grow_only_when_a_blob_does_not_fit() {
        for (lens, size, pos) in [
            (&[509][..], 512, 512),    // ends exactly at the end of the first sector
            (&[510], 1024, 513),       // Proxmox overruns by one byte: one sector more
            (&[7, 500], 512, 512),     // the second blob fits exactly
            (&[7, 501], 1024, 513),    // one byte more: one more sector
            (&[7, 300], 512, 312),     // fits
            (&[510, 511], 2048, 1026), // 513 bytes need two more sectors
            (&[0, 511], 1536, 516),
        ] {
            let mut t = BlobTable::new();
            assert_eq!(
                t.projected_size(lens.iter().copied()),
                size,
                "{lens:?} projected"
            );
            for &len in lens {
                t.push(&vec![1; len]).unwrap();
            }
            assert_eq!((t.buf.len(), t.pos), (size, pos), "{lens:?}");
        }
    }
}

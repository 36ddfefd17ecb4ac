//! The one error type of this crate.

use std::io;

/// Broad category of an [`Error`], for callers that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The underlying reader or writer failed.
    Io,
    /// The archive bytes are damaged or inconsistent (checksum, magic, accounting,
    /// duplicate or missing clusters, truncation).
    Corrupt,
    /// The archive is well formed but uses something we do not support (version).
    Unsupported,
    /// A value lies outside a format limit (too many devices, blob too large,
    /// cluster past the device end).
    OutOfBounds,
    /// The API was used in a way the format forbids (registering a device after data,
    /// writing a cluster twice, finishing with clusters missing).
    Usage,
}

/// Everything that can go wrong while reading or writing a VMA archive.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// I/O failure at a byte offset of the archive stream.
    #[error("i/o error at archive offset {offset}")]
    Io {
        /// Byte offset in the archive stream.
        offset: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The stream does not start with `VMA\0`.
    #[error("not a vma archive: bad header magic {found:02x?}")]
    BadMagic {
        /// The first four bytes found.
        found: [u8; 4],
    },
    /// Version other than 1.
    #[error("unsupported vma version {version}")]
    UnsupportedVersion {
        /// The version field.
        version: u32,
    },
    /// The header MD5 does not match its contents.
    #[error("vma header checksum mismatch (stored {stored}, computed {computed})")]
    HeaderChecksum {
        /// Hex MD5 stored in the header.
        stored: String,
        /// Hex MD5 computed over the header.
        computed: String,
    },
    /// A structural problem in the header (sizes, offsets, pointers).
    #[error("invalid vma header: {reason}")]
    BadHeader {
        /// What is wrong.
        reason: String,
    },
    /// The archive ended before the header was complete.
    #[error("truncated vma header: got {got} of {expected} bytes")]
    TruncatedHeader {
        /// Bytes read.
        got: u64,
        /// Bytes needed.
        expected: u64,
    },
    /// The stream ended inside an extent.
    #[error(
        "truncated archive: extent {index} at offset {offset} needs {expected} bytes, got {got}"
    )]
    TruncatedExtent {
        /// Extent index (0-based).
        index: u64,
        /// Byte offset of the extent header.
        offset: u64,
        /// Bytes the extent needs (header plus data).
        expected: u64,
        /// Bytes that were available.
        got: u64,
    },
    /// Extent header magic is not `VMAE`.
    #[error("extent {index} at offset {offset}: bad magic {found:02x?}")]
    BadExtentMagic {
        /// Extent index.
        index: u64,
        /// Byte offset of the extent header.
        offset: u64,
        /// Bytes found.
        found: [u8; 4],
    },
    /// Extent header MD5 mismatch.
    #[error("extent {index} at offset {offset}: header checksum mismatch")]
    ExtentChecksum {
        /// Extent index.
        index: u64,
        /// Byte offset of the extent header.
        offset: u64,
    },
    /// Extent uuid differs from the archive uuid.
    #[error(
        "extent {index} at offset {offset}: uuid {found} does not match archive uuid {expected}"
    )]
    ExtentUuid {
        /// Extent index.
        index: u64,
        /// Byte offset of the extent header.
        offset: u64,
        /// Uuid in the extent.
        found: String,
        /// Archive uuid.
        expected: String,
    },
    /// Reserved field of an extent header is not zero.
    #[error("extent {index} at offset {offset}: reserved field is {value:#06x}, expected 0")]
    ExtentReserved {
        /// Extent index.
        index: u64,
        /// Byte offset of the extent header.
        offset: u64,
        /// The value found.
        value: u16,
    },
    /// block_count disagrees with the masks of the used slots.
    #[error("extent {index} at offset {offset}: block_count is {block_count} but the slot masks add up to {counted} blocks")]
    BlockCount {
        /// Extent index.
        index: u64,
        /// Byte offset of the extent header.
        offset: u64,
        /// The block_count field.
        block_count: u16,
        /// Sum of popcount(mask) over used slots.
        counted: u32,
    },
    /// A slot names a device that is not in the header.
    #[error("extent {index} at offset {offset}, slot {slot}: unknown device id {dev_id}")]
    UnknownDevice {
        /// Extent index.
        index: u64,
        /// Byte offset of the extent header.
        offset: u64,
        /// Slot in the extent.
        slot: usize,
        /// The device id.
        dev_id: u8,
    },
    /// A cluster (or one of its stored blocks) lies past the device end.
    #[error("device {dev_id} ({device}): cluster {cluster} is out of range (device has {cluster_count} clusters){}", location(*extent, *offset))]
    ClusterOutOfRange {
        /// Device id.
        dev_id: u8,
        /// Device name.
        device: String,
        /// Cluster number.
        cluster: u64,
        /// Number of clusters of the device.
        cluster_count: u64,
        /// Extent index, when reading.
        extent: Option<u64>,
        /// Byte offset of the extent header, when reading.
        offset: Option<u64>,
    },
    /// A stored block starts at or past the device end.
    #[error("device {dev_id} ({device}): cluster {cluster} stores block {block} past the device end ({size} bytes){}", location(*extent, *offset))]
    BlockPastEnd {
        /// Device id.
        dev_id: u8,
        /// Device name.
        device: String,
        /// Cluster number.
        cluster: u64,
        /// Block index within the cluster.
        block: u32,
        /// Device size.
        size: u64,
        /// Extent index.
        extent: Option<u64>,
        /// Byte offset of the extent header.
        offset: Option<u64>,
    },
    /// A cluster occurs twice.
    #[error("device {dev_id} ({device}): duplicate cluster {cluster}{}", location(*extent, *offset))]
    DuplicateCluster {
        /// Device id.
        dev_id: u8,
        /// Device name.
        device: String,
        /// Cluster number.
        cluster: u64,
        /// Extent index, when reading.
        extent: Option<u64>,
        /// Byte offset of the extent header, when reading.
        offset: Option<u64>,
    },
    /// Clusters never seen (reader at EOF) or never written (writer at finish).
    #[error("device {dev_id} ({device}): missing cluster {first} ({missing} of {cluster_count} clusters missing)")]
    MissingCluster {
        /// Device id.
        dev_id: u8,
        /// Device name.
        device: String,
        /// First missing cluster number.
        first: u64,
        /// How many clusters are missing.
        missing: u64,
        /// Number of clusters of the device.
        cluster_count: u64,
    },
    /// vmstate clusters must come in sequence.
    #[error("device {dev_id} (vmstate): cluster {cluster} out of order, expected {expected}{}", location(*extent, *offset))]
    VmstateOrder {
        /// Device id.
        dev_id: u8,
        /// Cluster found.
        cluster: u64,
        /// Cluster expected.
        expected: u64,
        /// Extent index.
        extent: Option<u64>,
        /// Byte offset.
        offset: Option<u64>,
    },
    /// A format limit was exceeded while writing.
    #[error("{what}: limit is {limit}, got {got}")]
    Limit {
        /// Which limit.
        what: &'static str,
        /// The limit.
        limit: u64,
        /// The offending value.
        got: u64,
    },
    /// The writer was used in an order the format does not allow.
    #[error("{0}")]
    Usage(String),
    /// A previous error left the writer or reader unusable.
    #[error("archive stream is unusable after an earlier error")]
    Poisoned,
    /// Writing extracted data to a device's target failed.
    #[error("write to {device} at offset {offset} failed")]
    DeviceWrite {
        /// Device name.
        device: String,
        /// Byte offset in the device.
        offset: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A line of an `extract -r` device map is malformed.
    #[error("read map failed - {0}")]
    DeviceMap(String),
    /// Reading an `extract -r` device map failed.
    #[error("read map failed")]
    DeviceMapRead {
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Reading a disk being archived failed.
    #[error("read error on {device} at offset {offset}")]
    DiskRead {
        /// The disk's device name.
        device: String,
        /// Byte offset in the disk.
        offset: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A file of `create` or `extract` could not be created, written, sized or fsynced.
    #[error("can't {op} {}", path.display())]
    File {
        /// What was done: `open file`, `create file`, `fsync`, ...
        op: &'static str,
        /// The file or directory.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The target directory of an extract could not be created (Proxmox's message).
    #[error("unable to create target directory {}", path.display())]
    TargetDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Giving an extracted disk its final name failed.
    #[error("rename {} to {} failed", from.display(), to.display())]
    Rename {
        /// The temporary name.
        from: std::path::PathBuf,
        /// The final name.
        to: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A config or device name from the archive cannot be a file name.
    #[error("refusing unsafe {what} name '{}' from the archive", name.escape_debug())]
    UnsafeName {
        /// `config` or `device`.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// The `extract -r` device map has no line for a device.
    #[error("no device name mapping for {device}")]
    NoMapping {
        /// Device name.
        device: String,
    },
    /// The `extract -r` device map asks for a target format other than raw.
    #[error(
        "unsupported format '{format}' for device {device} (only raw targets are supported so far)"
    )]
    TargetFormat {
        /// Device name.
        device: String,
        /// The format asked for.
        format: String,
    },
    /// An `extract -r` target's size does not fit the device (Proxmox's message).
    #[error(
        "vma_reader_register_bs for stream {device} failed - unexpected size {size} != {expected}"
    )]
    TargetSize {
        /// Device name.
        device: String,
        /// The target's size.
        size: u64,
        /// The device's size.
        expected: u64,
    },
}

fn location(extent: Option<u64>, offset: Option<u64>) -> String {
    match (extent, offset) {
        (Some(e), Some(o)) => format!(" in extent {e} at offset {o}"),
        (Some(e), None) => format!(" in extent {e}"),
        _ => String::new(),
    }
}

impl Error {
    /// Category of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { .. }
            | Error::DeviceWrite { .. }
            | Error::DiskRead { .. }
            | Error::File { .. }
            | Error::TargetDir { .. }
            | Error::Rename { .. } => ErrorKind::Io,
            Error::UnsupportedVersion { .. } => ErrorKind::Unsupported,
            Error::Limit { .. } | Error::ClusterOutOfRange { .. } | Error::BlockPastEnd { .. } => {
                ErrorKind::OutOfBounds
            }
            Error::Usage(_)
            | Error::Poisoned
            | Error::DeviceMap(_)
            | Error::UnsafeName { .. }
            | Error::NoMapping { .. }
            | Error::TargetFormat { .. }
            | Error::TargetSize { .. } => ErrorKind::Usage,
            _ => ErrorKind::Corrupt,
        }
    }

    pub(crate) fn io(offset: u64, source: io::Error) -> Self {
        Error::Io { offset, source }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

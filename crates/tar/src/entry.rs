//! One archive member's metadata, as written and as read.

/// What a member is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A regular file of this (real) size.
    File {
        /// Size in bytes (for sparse files: the apparent size).
        size: u64,
    },
    /// A directory.
    Dir,
    /// A symbolic link to this target.
    Symlink(Vec<u8>),
    /// A hard link to an earlier member of this name.
    HardLink(Vec<u8>),
    /// A character device (major, minor).
    Char(u32, u32),
    /// A block device (major, minor).
    Block(u32, u32),
    /// A named pipe.
    Fifo,
}

impl Kind {
    /// The tar type flag.
    pub(crate) fn flag(&self) -> u8 {
        match self {
            Kind::File { .. } => b'0',
            Kind::HardLink(_) => b'1',
            Kind::Symlink(_) => b'2',
            Kind::Char(..) => b'3',
            Kind::Block(..) => b'4',
            Kind::Dir => b'5',
            Kind::Fifo => b'6',
        }
    }

    /// A device node (character or block).
    pub fn is_device(&self) -> bool {
        matches!(self, Kind::Char(..) | Kind::Block(..))
    }
}

/// A member's metadata. Names are raw bytes as stored (`./etc/vzdump/pct.conf`; a
/// directory's name may end in `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// The member name.
    pub name: Vec<u8>,
    /// What it is.
    pub kind: Kind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Numeric owner.
    pub uid: u64,
    /// Numeric group.
    pub gid: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds of the modification time.
    pub mtime_nsec: u32,
    /// Extended attributes (`SCHILY.xattr.<name>`), in order.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// The access ACL as text (`SCHILY.acl.access`: `user::rw-\nuser:1234:rw-\n...`).
    pub acl_access: Option<String>,
    /// The default ACL of a directory as text (`SCHILY.acl.default`).
    pub acl_default: Option<String>,
}

impl Meta {
    /// Metadata with the given name and kind, mode 0644, root-owned, time 0.
    pub fn new(name: impl Into<Vec<u8>>, kind: Kind) -> Self {
        Meta {
            name: name.into(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            xattrs: Vec::new(),
            acl_access: None,
            acl_default: None,
        }
    }

    /// The name as text (lossy), for messages.
    pub fn name_lossy(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

/// A data segment of a sparse file: `len` bytes at `offset`; everything else reads as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Offset in the file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

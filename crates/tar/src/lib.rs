//! Container archives: the tar side of vzdump's LXC backups, in-process.
//!
//! **Why our own format code.** The archives must be what Proxmox's `tar cpf - --numeric-owner
//! --acls --xattrs --sparse ...` writes, so `pct restore` and GNU tar read them, and we must
//! read GNU tar's. The Rust `tar` crate 0.4 normalises names (`./etc/vzdump/pct.conf` loses its
//! `./`, which is how Proxmox finds the config), names special files after their source path,
//! cannot read PAX sparse 1.0, and splits PAX values at newlines (GNU's ACL texts have them):
//! see `shared/ref/containers-lab.md` §5 and `docs/design/containers.md`. The format is small;
//! owning it gives exact names, bounded parsing and a safe extractor.
//!
//! **Layers.** [`Writer`] and [`Reader`] are the format (std `Read`/`Write`, no filesystem):
//! ustar headers, PAX records (`path`, `linkpath`, `uid`, `gid`, `size`, `mtime`,
//! `SCHILY.xattr.*`, `SCHILY.acl.*`), PAX sparse 1.0, GNU `L`/`K` long names on reading.
//! [`Packer`] archives a filesystem tree as vzdump's tar flags do; [`unpack`] extracts with
//! the checks a restore needs (names, symlink escapes, device nodes). [`Excludes`] are
//! vzdump's exclude patterns with tar's anchoring; [`IdMap`] maps unprivileged containers' ids.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod acl;
mod entry;
mod error;
mod header;
mod idmap;
mod pack;
mod pattern;
mod read;
mod unpack;
mod write;

pub use entry::{Kind, Meta, Segment};
pub use error::{Error, ErrorKind, Result};
pub use idmap::{IdMap, IdRange, OVERFLOW_ID};
pub use pack::{PackOptions, PackStats, Packer};
pub use pattern::{glob_match, Excludes, STD_EXCLUDES};
pub use read::{Entry, Reader, MAX_EXTENDED, MAX_SEGMENTS};
pub use unpack::{member_path, unpack, UnpackOptions, UnpackStats};
pub use write::{Appended, Writer};

/// The GNU tar flags vzdump archives a container with (PVE's `@COMMON_TAR_FLAGS`): the
/// archives [`Packer`] writes are what `tar cpf - <these flags>` writes, and the interop
/// tests hold them side by side.
pub const VZDUMP_TAR_FLAGS: &[&str] = &[
    "--one-file-system",
    "-p",
    "--sparse",
    "--numeric-owner",
    "--acls",
    "--xattrs",
    "--xattrs-include=user.*",
    "--xattrs-include=security.capability",
    "--warning=no-file-ignored",
    "--warning=no-xattr-write",
];

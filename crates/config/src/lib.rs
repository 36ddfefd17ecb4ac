//! Proxmox-compatible configuration: storage.cfg, vzdump.conf, qemu-server and lxc configs.
//!
//! vmdump reads and writes the same files Proxmox VE does, so configs and archives carry over
//! both ways. Everything lives under a [`ConfigRoot`] (default `/etc/vmdump`, overridable by
//! the CLI's `--root` and `$VMDUMP_ROOT`):
//!
//! | file | type |
//! | --- | --- |
//! | `storage.cfg` | [`StorageConfig`] (types `dir`, `btrfs`; others kept) |
//! | `vzdump.conf` | [`VzdumpConf`] with typed [`VzdumpOptions`] |
//! | `qemu-server/<vmid>.conf` | [`QemuConfig`] with [`Drive`]s, [`NetDevice`]s, [`AgentOptions`] |
//! | `lxc/<vmid>.conf` | [`LxcConfig`] with [`MountPoint`]s |
//!
//! Without a storage.cfg there is one `dir` storage `local` at [`DEFAULT_LOCAL_PATH`]
//! (`$VMDUMP_LOCAL_PATH` or [`ConfigRoot::with_local_path`] override it).
//!
//! Invariants:
//! - Parsers keep every line's text: an unedited file writes back byte for byte, and an edit
//!   (`set`, `set_drive`, ...) re-renders only its own line. Unknown keys, comments, snapshot,
//!   `[PENDING]` and `[special:...]` sections are kept.
//! - Malformed lines and invalid values of typed keys are errors naming `file:line`.
//! - Volume ids resolve to host paths with the Proxmox dir/btrfs layout ([`volume`]).
//! - [`qmdump`] builds the config copy vzdump stores in an archive (with `#qmdump#map` lines)
//!   and parses those lines back for restore.
//!
//! Synchronous and I/O-light: files are read whole (they are small) and written atomically.
//!
//! ```no_run
//! # fn demo() -> vmdump_config::Result<()> {
//! let root = vmdump_config::ConfigRoot::from_env(None);
//! let storage = root.storage()?;
//! let vm = root.qemu_config(100)?;
//! for drive in vm.drives()? {
//!     if let Some(r) = storage.resolve_ref(&drive.volume()?)? {
//!         println!("{} -> {} ({})", drive.key, r.path.display(), r.format);
//!     }
//! }
//! let (archived_conf, disks, _excluded) = vmdump_config::qmdump::backup_config(&vm)?;
//! # let _ = (archived_conf, disks); Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod drive;
mod error;
mod file;
mod guestfile;
pub mod jobs;
mod keep;
mod lxc;
pub mod notifications;
mod propstring;
mod qemu;
pub mod qmdump;
mod root;
mod storage;
mod vmid;
pub mod volume;
mod vzdump;

pub use drive::{format_size, parse_size, Bus, Drive, DriveKey};
pub use error::{Error, ErrorKind, Result};
pub use file::write_atomic;
pub use guestfile::SectionKind;
pub use jobs::{BackupJobConfig, JobsConfig};
pub use keep::KeepOptions;
pub use lxc::{LxcConfig, MountPoint};
pub use propstring::{parse_bool, PropertyString};
pub use qemu::{split_args, AgentOptions, NetDevice, QemuConfig};
pub use root::{ConfigRoot, DEFAULT_ROOT, LOCAL_PATH_ENV, ROOT_ENV};
pub use storage::{
    valid_storage_id, StorageConfig, StorageEntry, StorageType, CONTENT_TYPES, DEFAULT_LOCAL_PATH,
};
pub use vmdump_compress::Codec;
pub use vmid::VmId;
pub use volume::{ResolvedVolume, VolumeId, VolumeRef};
pub use vzdump::{parse_compress, Fleecing, Mode, Performance, VzdumpConf, VzdumpOptions};

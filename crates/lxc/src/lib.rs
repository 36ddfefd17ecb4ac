//! Container runtime: LXC containers described by Proxmox-style configs (`lxc/<vmid>.conf`).
//!
//! - [`Runtime`]: the LXC config generated from the container config (root filesystem
//!   through `loop:` for images and `dir:` for directories and subvolumes, `mpN` bind-mounted,
//!   `lxc.idmap` for unprivileged containers, raw `lxc.*` keys passed on), start, clean
//!   shutdown, stop, freeze, thaw, state, list; guards that undo a freeze or a backup's stop
//!   on every way out and markers that let the next run repair a killed one
//!   ([`Runtime::recover`]).
//! - [`volume`]: container volumes as Proxmox lays them out on `dir` (raw ext4 images, plain
//!   directories) and `btrfs` storage (subvolumes), their names, creation and removal.
//! - [`Access`]: a volume's files as a directory (images loop-mounted until drop).
//! - [`snapshot`]: storage snapshots behind [`SnapshotBackend`] (btrfs; the extension point
//!   for ZFS, LVM-thin and Ceph).
//! - [`Runtime::create`]: a new container from an LXC template or a tarball.
//!
//! Short tools (`lxc-*`, `mount`, `btrfs`, `mkfs.ext4`) run to completion inside the call;
//! `lxc-start` goes through `vmdump_launch::spawn` (its monitor outlives vmdump).

#![warn(missing_docs)]

mod create;
mod error;
mod mount;
mod runtime;
pub mod snapshot;
mod tool;
pub mod volume;

pub use create::{CreateSpec, Template};
pub use error::{Error, Result};
pub use mount::{reap_stale as reap_stale_mounts, Access};
pub use runtime::{CtState, CtSummary, FrozenGuard, Runtime, StoppedGuard};
pub use snapshot::{SnapshotBackend, SNAPSHOT_NAME};
pub use tool::{describe as describe_command, run as run_tool};
pub use volume::{CtVolume, Layout, OtherMount};

//! QEMU Machine Protocol (QMP) and guest agent (QGA) clients.
//!
//! The backup drives QEMU's block layer through QMP (block jobs, `blockdev-add`, dirty bitmaps,
//! the built-in NBD server) and quiesces guest filesystems through the agent. This crate is
//! the protocol layer only: it knows the wire format, the commands' argument shapes and the
//! quirks of QEMU 7.2, not the backup sequence (that is `vmdump-engine`).
//!
//! Layers, bottom up:
//! - [`codec`]: sans-I/O line splitter/encoder shared by both protocols, including QGA's `0xFF`
//!   resync sentinel.
//! - [`Client`] (QMP): greeting + `qmp_capabilities`, then a background reader task; requests
//!   carry an `id` and are matched to replies, so commands from several tasks may be in flight
//!   while events ([`Event`]) stream to every [`Events`] subscription. Each command has a
//!   deadline ([`Error::Timeout`]); QEMU's errors come back as [`Error::Remote`] with class and
//!   description.
//! - Typed commands in [`cmd`], as methods on [`Client`].
//! - [`qga::Client`]: request/response with short deadlines and `guest-sync-delimited` resync
//!   after every timeout, because a paused VM never answers and stale replies arrive later.
//!
//! Non-goals: QMP out-of-band execution, TCP sockets, the full QAPI schema. The `qapi` crate was
//! considered; it generates bindings for a whole schema version and brings its own transport,
//! while we need a few dozen commands with 7.2-specific guards (e.g. refusing an empty
//! `block-dirty-bitmap-merge`, which crashes 7.2), so the commands are written by hand over
//! `serde_json`.
//!
//! Invariants: a connection never blocks on a slow subscriber (events go through a bounded
//! broadcast channel; a lagging subscriber loses old events and gets a warning); when QEMU
//! exits, every waiting command fails with [`Error::Closed`] and event streams end.
//!
//! ```no_run
//! # async fn demo() -> vmdump_qmp::Result<()> {
//! use std::time::Duration;
//! use vmdump_qmp::{event::name, Client};
//!
//! let qmp = Client::connect("/run/vmdump/100/qmp.sock").await?;
//! let mut events = qmp.events();
//! qmp.stop().await?;
//! events.wait_named(name::STOP, Duration::from_secs(5)).await?;
//! qmp.cont().await?;
//!
//! let agent = vmdump_qmp::qga::Client::connect("/run/vmdump/100/qga.sock").await?;
//! let frozen = agent.fsfreeze_freeze().await?;
//! // ... point in time ...
//! agent.fsfreeze_thaw().await?;
//! # let _ = frozen; Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
pub mod cmd;
pub mod codec;
mod connection;
mod error;
pub mod event;
mod greeting;
pub mod qga;

pub use client::{Client, DEFAULT_TIMEOUT};
pub use cmd::bitmap::{BitmapAdd, BitmapMerge, BitmapRef, BitmapSource, DirtyBitmapInfo};
pub use cmd::block::{
    BackupPerf, BitmapSyncMode, BlockDeviceInfo, BlockInfo, BlockdevBackup, ImageInfo, SyncMode,
};
pub use cmd::job::{BlockJobInfo, JobInfo};
pub use cmd::machine::{RunState, StatusInfo};
pub use cmd::mirror::{BlockdevMirror, CopyMode};
pub use cmd::nbd_server::NbdExport;
pub use cmd::transaction::{Action, CompletionMode};
pub use error::{Error, ErrorKind, Result};
pub use event::{Event, Events};
pub use greeting::{Greeting, Version};

#[cfg(test)]
mod tests {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}

    #[test]
    fn handles_can_cross_tasks() {
        send_sync::<crate::Client>();
        send_sync::<crate::qga::Client>();
        send::<crate::Events>();
        send_sync::<crate::Error>();
    }
}

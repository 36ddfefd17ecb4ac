//! NBD (Network Block Device) protocol: a server for push backups and a client for snapshot
//! reads. A pure protocol crate: it starts no processes and knows nothing of QEMU's tools
//! (offline image access through `qemu-storage-daemon` lives in `vmdump-blockdev`).
//!
//! # Purpose
//! - **Push mode** (`blockdev-backup` to an NBD target): QEMU is the client and writes the
//!   point-in-time disk into our [`Server`], whose [`Export`] trait the backup engine
//!   implements. QEMU 7.2 writes 1 MiB pieces out of order (64 copy workers), sends zero
//!   regions as `WRITE_ZEROES` with `NO_HOLE`, and sends `FLUSH` then `DISC` only when the
//!   target node is closed; the server reports that as [`server::Disconnect::is_clean_commit`].
//! - **Pull mode** (fleecing, snapshot-access): our [`Client`] reads a QEMU NBD export with
//!   structured replies, `base:allocation` and `qemu:dirty-bitmap:*` block status, and can
//!   split every READ/BLOCK_STATUS/TRIM into 64 KiB-aligned pieces ([`ClientOptions::align_64k`])
//!   to dodge QEMU 7.2's snapshot-access bugs.
//!
//! # Layout
//! `proto/` is sans-I/O: every message decodes from a `BytesMut` and encodes into one, with
//! every peer-supplied length checked before anything is allocated (32 MiB payloads, 64 KiB
//! options, 4 KiB strings). `server` and `client` are thin tokio layers on top; the server
//! reads WRITE payloads into reused buffers (`pool`).
//!
//! # Non-goals
//! TLS, oldstyle negotiation, extended headers, `NBD_CMD_RESIZE`.
//!
//! # Example
//! ```no_run
//! # async fn demo() -> vmdump_nbd::Result<()> {
//! use vmdump_nbd::{export::FileExport, Server, ServerOptions};
//! let mut server = Server::new(ServerOptions::default());
//! server.add_export("backup", FileExport::create("/tmp/t.raw".as_ref(), 64 << 20)?);
//! let mut handle = server.serve_unix("/tmp/nbd.sock").await?;
//! // QEMU: blockdev-add driver=nbd server.path=/tmp/nbd.sock export=backup; blockdev-backup ...
//! let done = handle.wait_disconnect("backup").await;
//! assert!(done.is_some_and(|d| d.is_clean_commit()));
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
mod error;
pub mod export;
mod pool;
pub mod proto;
pub mod server;

pub use client::{Client, ClientOptions};
pub use error::{Error, ErrorKind, Result};
pub use export::Export;
pub use server::{Server, ServerHandle, ServerOptions};

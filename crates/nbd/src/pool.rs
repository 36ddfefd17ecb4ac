//! Reused payload buffers for the server's `NBD_CMD_WRITE` requests.
//!
//! A push backup receives its whole disk as 1 MiB writes. Reading each into a fresh
//! allocation made the kernel hand out (and zero) new pages for every request: ~180 000 page
//! faults per 2 GiB. A payload is read into a buffer from this pool instead and handed to the
//! export as [`Bytes`]; when the export drops the last slice of it (after the archive writer
//! wrote it out), the buffer goes back to the pool, so a backup runs on a few dozen warm
//! buffers.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Buffers of at most this many bytes are kept (larger ones are rare: freed on drop).
const KEEP_BYTES: usize = 4 << 20;

/// A pool of payload buffers, shared by the connections of one server.
#[derive(Debug, Clone)]
pub(crate) struct PayloadPool {
    free: Arc<Mutex<Vec<Vec<u8>>>>,
    keep: usize,
}

/// A buffer on loan; returns to its pool when dropped (that is, when the last [`Bytes`]
/// slice of it is gone).
struct Loan {
    buf: Vec<u8>,
    pool: PayloadPool,
}

impl AsRef<[u8]> for Loan {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        self.pool.give_back(buf);
    }
}

impl PayloadPool {
    /// A pool keeping at most `keep` idle buffers.
    pub(crate) fn new(keep: usize) -> Self {
        Self {
            free: Arc::new(Mutex::new(Vec::with_capacity(keep))),
            keep,
        }
    }

    /// An empty buffer with room for at least `len` bytes (a kept one if there is one).
    pub(crate) fn take(&self, len: usize) -> Vec<u8> {
        let kept = self.free.lock().ok().and_then(|mut f| f.pop());
        let mut buf = kept.unwrap_or_default();
        buf.clear();
        buf.reserve(len);
        buf
    }

    /// Makes `buf` (filled by the caller) an immutable payload that comes back here when
    /// its last slice is dropped.
    pub(crate) fn freeze(&self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Loan {
            buf,
            pool: self.clone(),
        })
    }

    fn give_back(&self, buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > KEEP_BYTES {
            return;
        }
        if let Ok(mut free) = self.free.lock() {
            if free.len() < self.keep {
                free.push(buf);
            }
        }
    }

    /// Idle buffers in the pool.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.free.lock().map_or(0, |f| f.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_returns_when_its_last_slice_is_dropped_and_is_reused() {
        let pool = PayloadPool::new(2);
        let mut buf = pool.take(1000);
        buf.extend_from_slice(&[7; 1000]);
        let ptr = buf.as_ptr();
        let payload = pool.freeze(buf);
        let slice = payload.slice(100..200);
        drop(payload);
        assert_eq!(pool.idle(), 0, "a slice is still out");
        assert_eq!(&slice[..], &[7; 100][..]);
        drop(slice);
        assert_eq!(pool.idle(), 1);
        let again = pool.take(500);
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), ptr, "the same allocation comes back");
        assert_eq!(pool.idle(), 0);
    }

    #[test]
    fn at_most_keep_buffers_are_kept() {
        let pool = PayloadPool::new(2);
        let payloads: Vec<Bytes> = (0..4)
            .map(|_| {
                let mut b = pool.take(10);
                b.push(1);
                pool.freeze(b)
            })
            .collect();
        drop(payloads);
        assert_eq!(pool.idle(), 2);
        // A kept buffer grown past KEEP_BYTES is freed instead of kept.
        let huge = pool.take(KEEP_BYTES + 1);
        assert_eq!(pool.idle(), 1);
        drop(pool.freeze(huge));
        assert_eq!(pool.idle(), 1, "an oversized buffer is not kept");
    }
}

//! Reuse of shared data buffers: a buffer handed out as [`Bytes`] slices (extent data to the
//! restore writers, cluster data to the VMA writer) is written into again once the last slice
//! is gone, so a stream runs on a handful of warm buffers instead of allocating one per
//! extent.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// Buffers whose slices may still be held elsewhere, oldest first.
#[derive(Debug)]
pub struct Recycler {
    held: VecDeque<Bytes>,
    keep: usize,
}

impl Recycler {
    /// Watches at most `keep` buffers; beyond that the oldest is forgotten (its memory is
    /// freed when its last slice goes).
    pub fn new(keep: usize) -> Self {
        Recycler {
            held: VecDeque::with_capacity(keep + 1),
            keep: keep.max(1),
        }
    }

    /// Watch `buf` until no slice of it is left. Empty buffers are not worth watching.
    pub fn hold(&mut self, buf: Bytes) {
        if buf.is_empty() {
            return;
        }
        self.held.push_back(buf);
        while self.held.len() > self.keep {
            self.held.pop_front();
        }
    }

    /// A watched buffer that nobody shares any more, the oldest first; `None` if every one
    /// is still held.
    pub fn reclaim(&mut self) -> Option<BytesMut> {
        for _ in 0..self.held.len() {
            let buf = self.held.pop_front()?;
            match buf.try_into_mut() {
                Ok(free) => return Some(free),
                Err(shared) => self.held.push_back(shared),
            }
        }
        None
    }

    /// Buffers watched now.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether no buffer is watched.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(len: usize, fill: u8) -> Bytes {
        BytesMut::from(&vec![fill; len][..]).freeze()
    }

    #[test]
    fn a_buffer_comes_back_once_its_last_slice_is_gone() {
        let mut r = Recycler::new(4);
        let a = buffer(1024, 1);
        let slice = a.slice(10..20);
        r.hold(a);
        assert!(r.reclaim().is_none(), "a slice is still out");
        assert_eq!(r.len(), 1);
        assert!(!r.is_empty());
        drop(slice);
        let free = r.reclaim().expect("free now");
        assert_eq!(free.len(), 1024);
        assert!(free.capacity() >= 1024, "the same allocation");
        assert!(r.is_empty());
    }

    #[test]
    fn held_buffers_are_skipped_and_the_oldest_free_one_wins() {
        let mut r = Recycler::new(4);
        let a = buffer(100, 1);
        let a_slice = a.slice(..1);
        r.hold(a);
        r.hold(buffer(200, 2));
        r.hold(buffer(300, 3));
        assert_eq!(r.reclaim().unwrap()[0], 2);
        assert_eq!(r.reclaim().unwrap()[0], 3);
        assert!(r.reclaim().is_none());
        assert_eq!(r.len(), 1, "the held one is still watched");
        drop(a_slice);
        assert_eq!(r.reclaim().unwrap()[0], 1);
    }

    #[test]
    fn at_most_keep_buffers_are_watched_and_empty_ones_never() {
        let mut r = Recycler::new(2);
        r.hold(Bytes::new());
        assert!(r.is_empty());
        let slices: Vec<Bytes> = (0..5u8)
            .map(|i| {
                let b = buffer(64, i);
                let s = b.slice(..1);
                r.hold(b);
                s
            })
            .collect();
        assert_eq!(r.len(), 2);
        drop(slices);
        // The two newest are the ones kept.
        assert_eq!(r.reclaim().unwrap()[0], 3);
        assert_eq!(r.reclaim().unwrap()[0], 4);
        assert!(r.reclaim().is_none());
    }
}

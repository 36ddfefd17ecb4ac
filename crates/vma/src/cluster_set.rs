//! A set of cluster numbers: one bit per cluster, allocated in chunks only where
//! clusters were seen, so a hostile header announcing a huge device costs nothing
//! until data for it actually arrives.

use std::collections::HashMap;

const CHUNK_BITS: u64 = 32768; // 4 KiB of bitmap per chunk
const WORDS: usize = (CHUNK_BITS / 64) as usize;

#[derive(Debug, Default, Clone)]
pub(crate) struct ClusterSet {
    chunks: HashMap<u64, Box<[u64; WORDS]>>,
    len: u64,
}

impl ClusterSet {
    /// Insert; returns false if the cluster was already present.
    pub(crate) fn insert(&mut self, cluster: u64) -> bool {
        let chunk = cluster / CHUNK_BITS;
        let bit = cluster % CHUNK_BITS;
        let words = self
            .chunks
            .entry(chunk)
            .or_insert_with(|| Box::new([0u64; WORDS]));
        let w = &mut words[(bit / 64) as usize];
        let m = 1u64 << (bit % 64);
        if *w & m != 0 {
            return false;
        }
        *w |= m;
        self.len += 1;
        true
    }

    pub(crate) fn contains(&self, cluster: u64) -> bool {
        let chunk = cluster / CHUNK_BITS;
        let bit = cluster % CHUNK_BITS;
        self.chunks
            .get(&chunk)
            .is_some_and(|w| w[(bit / 64) as usize] & (1u64 << (bit % 64)) != 0)
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Smallest cluster in `0..count` not in the set.
    pub(crate) fn first_missing(&self, count: u64) -> Option<u64> {
        if self.len >= count {
            // Only clusters below count are ever inserted by callers.
            return None;
        }
        let mut chunk = 0u64;
        loop {
            let base = chunk * CHUNK_BITS;
            if base >= count {
                return None;
            }
            match self.chunks.get(&chunk) {
                None => return Some(base),
                Some(words) => {
                    for (i, w) in words.iter().enumerate() {
                        if *w != u64::MAX {
                            let c = base + i as u64 * 64 + u64::from(w.trailing_ones());
                            return (c < count).then_some(c);
                        }
                    }
                }
            }
            chunk += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_basics() {
        let mut s = ClusterSet::default();
        assert_eq!(s.first_missing(3), Some(0));
        assert!(s.insert(0));
        assert!(!s.insert(0));
        assert!(s.insert(1));
        assert!(s.contains(1));
        assert_eq!(s.first_missing(3), Some(2));
        assert!(s.insert(2));
        assert_eq!(s.first_missing(3), None);
        assert!(s.insert(CHUNK_BITS * 5 + 7));
        assert_eq!(s.len(), 4);
        let mut full = ClusterSet::default();
        for c in 0..CHUNK_BITS + 3 {
            full.insert(c);
        }
        assert_eq!(full.first_missing(CHUNK_BITS + 10), Some(CHUNK_BITS + 3));
    }
}

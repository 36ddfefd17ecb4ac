//! A set of cluster numbers: one bit per cluster, allocated in chunks only where
//! clusters were seen, so a hostile header announcing a huge device costs nothing
//! until data for it actually arrives.

use std::collections::HashMap;

const CHUNK_BITS: u64 = 32768; // 4 KiB of bitmap per chunk
const WORDS: usize = (CHUNK_BITS / 64) as usize;

type Chunk = [u64; WORDS];

#[derive(Debug, Default, Clone)]
pub(crate) struct ClusterSet {
    chunks: HashMap<u64, Box<Chunk>>,
    /// The chunk used last, kept out of the map: clusters near each other (the usual order,
    /// and every run of zero clusters) skip the hash lookup.
    hot: Option<(u64, Box<Chunk>)>,
    len: u64,
}

impl ClusterSet {
    /// Insert; returns false if the cluster was already present.
    pub(crate) fn insert(&mut self, cluster: u64) -> bool {
        let bit = cluster % CHUNK_BITS;
        let words = self.chunk_mut(cluster / CHUNK_BITS);
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
        let bit = cluster % CHUNK_BITS;
        self.chunk(cluster / CHUNK_BITS)
            .is_some_and(|w| w[(bit / 64) as usize] & (1u64 << (bit % 64)) != 0)
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The chunk `n`, if any cluster in it was inserted.
    fn chunk(&self, n: u64) -> Option<&Chunk> {
        match &self.hot {
            Some((i, words)) if *i == n => Some(words),
            _ => self.chunks.get(&n).map(|w| &**w),
        }
    }

    /// The chunk `n`, created empty if needed, made the hot one.
    fn chunk_mut(&mut self, n: u64) -> &mut Chunk {
        if !matches!(&self.hot, Some((i, _)) if *i == n) {
            let words = self
                .chunks
                .remove(&n)
                .unwrap_or_else(|| Box::new([0u64; WORDS]));
            if let Some((i, old)) = self.hot.replace((n, words)) {
                self.chunks.insert(i, old);
            }
        }
        &mut self.hot.as_mut().expect("the hot chunk was just set").1
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
            match self.chunk(chunk) {
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

    /// Going back and forth between chunks (the hot one and those in the map) loses nothing.
    #[test]
    fn chunks_keep_their_bits_when_the_hot_one_changes() {
        let mut s = ClusterSet::default();
        let far = CHUNK_BITS * 9 + 100;
        assert!(s.insert(5));
        assert!(s.insert(far));
        assert!(s.insert(CHUNK_BITS + 1));
        // Chunk 0 is in the map now; chunk 1 is hot.
        assert!(s.contains(5) && s.contains(far) && s.contains(CHUNK_BITS + 1));
        assert!(!s.contains(6) && !s.contains(far + 1) && !s.contains(CHUNK_BITS));
        assert!(!s.insert(5), "a duplicate in a chunk of the map");
        assert!(!s.insert(CHUNK_BITS + 1), "a duplicate after a swap");
        assert!(!s.insert(far), "a duplicate in a chunk swapped out twice");
        assert_eq!(s.len(), 3);
        // Fill chunk 0 (made hot) but for one cluster: first_missing reads the hot chunk.
        for c in (0..CHUNK_BITS).filter(|&c| c != 5 && c != 4000) {
            assert!(s.insert(c));
        }
        assert_eq!(s.first_missing(CHUNK_BITS * 10), Some(4000));
        assert!(s.insert(4000));
        // Chunk 0 is full and hot; chunk 1 (in the map) has only cluster CHUNK_BITS + 1.
        assert_eq!(s.first_missing(CHUNK_BITS * 10), Some(CHUNK_BITS));
        assert_eq!(s.first_missing(CHUNK_BITS), None);
        assert_eq!(s.len(), CHUNK_BITS + 2);
        // A clone has the same bits, hot chunk included.
        let c = s.clone();
        assert!(c.contains(4000) && c.contains(far) && !c.contains(far - 1));
    }
}

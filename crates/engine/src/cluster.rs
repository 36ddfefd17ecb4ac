//! Turns NBD writes (any offset, any length, any order) into whole 64 KiB clusters, each
//! exactly once.
//!
//! QEMU's backup job sends 64 KiB-aligned requests of up to 1 MiB, so nearly every piece maps
//! straight onto whole clusters: those are passed on as one [`Cluster`] run per request,
//! holding a slice of the request's payload (no copy, one hand-off to the writer per request).
//! Unaligned pieces are still handled: they are collected in a per-cluster buffer until the
//! cluster is covered. A piece that touches a cluster already emitted, or bytes of a partial
//! cluster already filled, is dropped for those bytes: the first copy is the point-in-time
//! data (copy-before-write sends the old contents before the guest's write lands), so it
//! must win.

use std::collections::HashMap;
use std::ops::Range;

use bytes::Bytes;

/// Cluster size of VMA and of QEMU's backup job with an NBD target.
pub const CLUSTER_SIZE: u64 = 65536;

/// A run of complete clusters ready for the archive: `len` bytes of the device from the
/// start of cluster `num` on. Every cluster of the run is whole; only the device's last
/// cluster may be short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// Number of the run's first cluster within the device.
    pub num: u64,
    /// Their bytes (`len` of them), or `None` when QEMU said they are all zero.
    pub data: Option<Bytes>,
    /// Bytes of the device the run covers.
    pub len: usize,
}

impl Cluster {
    /// Number of clusters in the run.
    pub fn count(&self) -> u64 {
        (self.len as u64).div_ceil(CLUSTER_SIZE)
    }

    /// The clusters of the run one by one: (number, bytes covered, data slice if any).
    pub fn each(&self) -> impl Iterator<Item = (u64, usize, Option<Bytes>)> + '_ {
        (0..self.count()).map(move |i| {
            let start = (i * CLUSTER_SIZE) as usize;
            let end = (start + CLUSTER_SIZE as usize).min(self.len);
            let data = self.data.as_ref().map(|d| d.slice(start..end));
            (self.num + i, end - start, data)
        })
    }
}

/// A piece of data that does not fit the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutOfRange {
    /// Start of the piece.
    pub offset: u64,
    /// Its length.
    pub len: u64,
    /// The device size.
    pub size: u64,
}

impl std::fmt::Display for OutOfRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "write of {} bytes at offset {:#x} goes past the end of the disk ({} bytes)",
            self.len, self.offset, self.size
        )
    }
}

#[derive(Debug)]
struct Partial {
    buf: Vec<u8>,
    /// Filled byte ranges, sorted and merged.
    filled: Vec<Range<usize>>,
    /// Whether any byte came from a data write (else the cluster is all zero).
    has_data: bool,
}

impl Partial {
    fn new(len: usize) -> Self {
        Self {
            buf: vec![0; len],
            filled: Vec::new(),
            has_data: false,
        }
    }

    /// The parts of `r` not yet filled.
    fn gaps(&self, r: Range<usize>) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        let mut start = r.start;
        for f in &self.filled {
            if f.end <= start {
                continue;
            }
            if f.start >= r.end {
                break;
            }
            if f.start > start {
                out.push(start..f.start);
            }
            start = start.max(f.end);
            if start >= r.end {
                break;
            }
        }
        if start < r.end {
            out.push(start..r.end);
        }
        out
    }

    fn mark(&mut self, r: Range<usize>) {
        self.filled.push(r);
        self.filled.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<usize>> = Vec::with_capacity(self.filled.len());
        for r in self.filled.drain(..) {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        self.filled = merged;
    }

    fn is_full(&self) -> bool {
        matches!(self.filled.as_slice(), [r] if r.start == 0 && r.end == self.buf.len())
    }
}

/// Collects the writes for one device.
#[derive(Debug)]
pub struct Assembler {
    size: u64,
    clusters: u64,
    done: Vec<u64>,
    done_count: u64,
    partial: HashMap<u64, Partial>,
    duplicate_bytes: u64,
}

impl Assembler {
    /// An assembler for a device of `size` bytes.
    pub fn new(size: u64) -> Self {
        let clusters = size.div_ceil(CLUSTER_SIZE);
        Self {
            size,
            clusters,
            done: vec![0; clusters.div_ceil(64) as usize],
            done_count: 0,
            partial: HashMap::new(),
            duplicate_bytes: 0,
        }
    }

    /// Number of clusters of the device.
    #[cfg(test)]
    pub fn clusters(&self) -> u64 {
        self.clusters
    }

    /// Whether every cluster has been emitted.
    #[cfg(test)]
    pub fn is_complete(&self) -> bool {
        self.done_count == self.clusters
    }

    /// The first cluster not emitted yet.
    pub fn first_missing(&self) -> Option<u64> {
        (0..self.clusters).find(|&n| !self.is_done(n))
    }

    /// Number of clusters emitted so far.
    pub fn done(&self) -> u64 {
        self.done_count
    }

    /// Emits every cluster not emitted yet as zero runs of at most `max_len` bytes (a
    /// multiple of [`CLUSTER_SIZE`]), in order: the clusters a `sync=top` job skipped because
    /// the image never allocated them. Partly filled clusters are zero where nothing arrived.
    pub fn fill_missing(&mut self, max_len: usize, mut emit: impl FnMut(Cluster)) {
        let max = (max_len as u64 / CLUSTER_SIZE).max(1);
        let mut n = 0;
        while n < self.clusters {
            if self.is_done(n) {
                n += 1;
                continue;
            }
            if let Some(part) = self.partial.remove(&n) {
                self.set_done(n);
                emit(Cluster {
                    num: n,
                    data: part.has_data.then(|| Bytes::from(part.buf)),
                    len: self.cluster_len(n),
                });
                // Cluster n is done now: the next round steps over it.
                continue;
            }
            let start = n;
            while n < self.clusters
                && n - start < max
                && !self.is_done(n)
                && !self.partial.contains_key(&n)
            {
                self.set_done(n);
                n += 1;
            }
            let len = (n * CLUSTER_SIZE).min(self.size) - start * CLUSTER_SIZE;
            emit(Cluster {
                num: start,
                data: None,
                len: len as usize,
            });
        }
    }

    /// Bytes dropped because their cluster (or those bytes) had already arrived.
    #[cfg(test)]
    pub fn duplicate_bytes(&self) -> u64 {
        self.duplicate_bytes
    }

    fn is_done(&self, n: u64) -> bool {
        self.done[(n / 64) as usize] & (1 << (n % 64)) != 0
    }

    fn set_done(&mut self, n: u64) {
        self.done[(n / 64) as usize] |= 1 << (n % 64);
        self.done_count += 1;
    }

    fn cluster_len(&self, n: u64) -> usize {
        (self.size - n * CLUSTER_SIZE).min(CLUSTER_SIZE) as usize
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), OutOfRange> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(OutOfRange {
                offset,
                len,
                size: self.size,
            }),
        }
    }

    /// Accepts `data` at `offset`; calls `emit` for every run of clusters it completes.
    pub fn write(
        &mut self,
        offset: u64,
        data: &Bytes,
        mut emit: impl FnMut(Cluster),
    ) -> Result<(), OutOfRange> {
        self.check(offset, data.len() as u64)?;
        self.accept(offset, data.len() as u64, Some(data), &mut emit);
        Ok(())
    }

    /// Accepts `len` zero bytes at `offset` (NBD WRITE_ZEROES).
    pub fn write_zeroes(
        &mut self,
        offset: u64,
        len: u64,
        mut emit: impl FnMut(Cluster),
    ) -> Result<(), OutOfRange> {
        self.check(offset, len)?;
        self.accept(offset, len, None, &mut emit);
        Ok(())
    }

    /// Splits `[offset, offset+len)` at cluster boundaries. Consecutive whole clusters not
    /// seen before become one run (a slice of `data`); every other piece goes through
    /// [`Assembler::put`].
    fn accept(
        &mut self,
        offset: u64,
        len: u64,
        data: Option<&Bytes>,
        emit: &mut impl FnMut(Cluster),
    ) {
        let end = offset + len;
        let mut pos = offset;
        // The run being collected: first cluster, its start within the piece, bytes.
        let mut run: Option<(u64, usize, usize)> = None;
        let flush = |run: &mut Option<(u64, usize, usize)>, emit: &mut dyn FnMut(Cluster)| {
            if let Some((num, at, len)) = run.take() {
                emit(Cluster {
                    num,
                    data: data.map(|d| d.slice(at..at + len)),
                    len,
                });
            }
        };
        while pos < end {
            let n = pos / CLUSTER_SIZE;
            let cstart = n * CLUSTER_SIZE;
            let clen = self.cluster_len(n);
            let piece_end = end.min(cstart + clen as u64);
            let within = (pos - cstart) as usize..(piece_end - cstart) as usize;
            let src = (pos - offset) as usize..(piece_end - offset) as usize;
            let whole = within.start == 0
                && within.end == clen
                && !self.is_done(n)
                && (self.partial.is_empty() || !self.partial.contains_key(&n));
            if whole {
                self.set_done(n);
                match &mut run {
                    Some((_, _, l)) => *l += clen,
                    None => run = Some((n, src.start, clen)),
                }
            } else {
                flush(&mut run, &mut *emit);
                self.put(n, within, data.map(|d| &d[src]), &mut *emit);
            }
            pos = piece_end;
        }
        flush(&mut run, &mut *emit);
    }

    /// A piece of cluster `n` that is not a new whole cluster: dropped if the cluster is
    /// done, else collected in its partial buffer.
    fn put(
        &mut self,
        n: u64,
        within: Range<usize>,
        data: Option<&[u8]>,
        emit: &mut impl FnMut(Cluster),
    ) {
        if self.is_done(n) {
            self.duplicate_bytes += within.len() as u64;
            return;
        }
        let len = self.cluster_len(n);
        let part = self.partial.entry(n).or_insert_with(|| Partial::new(len));
        let mut dup = within.len() as u64;
        for gap in part.gaps(within.clone()) {
            dup -= gap.len() as u64;
            if let Some(d) = data {
                let from = gap.start - within.start..gap.end - within.start;
                part.buf[gap.clone()].copy_from_slice(&d[from]);
                part.has_data = true;
            }
            part.mark(gap);
        }
        self.duplicate_bytes += dup;
        if part.is_full() {
            let part = self
                .partial
                .remove(&n)
                .expect("the partial cluster was just looked up");
            self.set_done(n);
            emit(Cluster {
                num: n,
                data: part.has_data.then(|| Bytes::from(part.buf)),
                len,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(data: &[u8]) -> Bytes {
        Bytes::copy_from_slice(data)
    }

    /// The runs in `out` split into single clusters.
    fn singles(out: &[Cluster]) -> Vec<(u64, usize, Option<Bytes>)> {
        out.iter().flat_map(|c| c.each()).collect()
    }

    /// What `fill_missing` emits, as (first cluster, bytes, has data).
    fn fill(a: &mut Assembler, max_len: usize) -> Vec<(u64, usize, bool)> {
        let mut out = Vec::new();
        a.fill_missing(max_len, |c| out.push((c.num, c.len, c.data.is_some())));
        out
    }

    #[test]
    fn fill_missing_emits_the_gaps_as_zero_runs_in_order() {
        const C: usize = CLUSTER_SIZE as usize;
        // 10 whole clusters and a short 11th of 4608 bytes.
        let mut a = Assembler::new(10 * CLUSTER_SIZE + 4608);
        let got = collect(
            &mut a,
            &[
                (2 * CLUSTER_SIZE, Some(vec![7; 2 * C]), 0),
                (7 * CLUSTER_SIZE, None, CLUSTER_SIZE),
            ],
        );
        assert_eq!(got.len(), 2);
        assert_eq!(a.done(), 3);
        let runs = fill(&mut a, 2 * C);
        assert_eq!(
            runs,
            vec![
                (0, 2 * C, false),
                (4, 2 * C, false),
                (6, C, false),
                (8, 2 * C, false),
                (10, 4608, false),
            ]
        );
        assert_eq!(a.done(), 11);
        assert_eq!(a.first_missing(), None);
        // Nothing is left to fill, and later writes to filled clusters are duplicates.
        assert!(fill(&mut a, 2 * C).is_empty());
        assert!(collect(&mut a, &[(0, Some(vec![1; C]), 0)]).is_empty());
        assert_eq!(a.duplicate_bytes(), CLUSTER_SIZE);
    }

    #[test]
    fn fill_missing_runs_are_at_least_one_cluster_and_reach_the_end() {
        const C: usize = CLUSTER_SIZE as usize;
        let mut a = Assembler::new(3 * CLUSTER_SIZE);
        assert_eq!(a.done(), 0);
        assert_eq!(
            fill(&mut a, 100),
            vec![(0, C, false), (1, C, false), (2, C, false)]
        );
        let mut b = Assembler::new(3 * CLUSTER_SIZE);
        assert_eq!(fill(&mut b, 1 << 30), vec![(0, 3 * C, false)]);
        assert!(b.is_complete());
    }

    #[test]
    fn fill_missing_completes_a_partial_cluster_with_zeros() {
        const C: usize = CLUSTER_SIZE as usize;
        let mut a = Assembler::new(4 * CLUSTER_SIZE);
        let got = collect(&mut a, &[(CLUSTER_SIZE + 10, Some(vec![9; 100]), 0)]);
        assert!(got.is_empty());
        let mut out = Vec::new();
        a.fill_missing(4 * C, |c| out.push(c));
        assert_eq!(out.len(), 3);
        assert_eq!(
            (out[0].num, out[0].len, out[0].data.is_none()),
            (0, C, true)
        );
        assert_eq!((out[1].num, out[1].len), (1, C));
        let data = out[1].data.as_ref().expect("the partial cluster has data");
        assert!(data[..10].iter().all(|&x| x == 0));
        assert!(data[10..110].iter().all(|&x| x == 9));
        assert!(data[110..].iter().all(|&x| x == 0));
        assert_eq!(
            (out[2].num, out[2].len, out[2].data.is_none()),
            (2, 2 * C, true)
        );
        assert!(a.is_complete());
    }

    fn collect(a: &mut Assembler, ops: &[(u64, Option<Vec<u8>>, u64)]) -> Vec<Cluster> {
        let mut out = Vec::new();
        for (off, data, len) in ops {
            match data {
                Some(d) => a.write(*off, &b(d), |c| out.push(c)).expect("in range"),
                None => a
                    .write_zeroes(*off, *len, |c| out.push(c))
                    .expect("in range"),
            }
        }
        out
    }

    #[test]
    fn aligned_megabyte_is_one_run_of_sixteen_clusters() {
        let mut a = Assembler::new(4 << 20);
        let data: Vec<u8> = (0..1 << 20).map(|i| (i / 65536) as u8 + 1).collect();
        let out = collect(&mut a, &[(1 << 20, Some(data.clone()), 0)]);
        assert_eq!(out.len(), 1, "one hand-off for the whole request");
        assert_eq!((out[0].num, out[0].count(), out[0].len), (16, 16, 1 << 20));
        assert_eq!(out[0].data.as_deref(), Some(&data[..]));
        let one = singles(&out);
        assert_eq!(one.len(), 16);
        assert_eq!(one[15].0, 31);
        assert!(one[3].2.as_ref().expect("data").iter().all(|&b| b == 4));
        assert!(!a.is_complete());
        assert_eq!(a.first_missing(), Some(0));
    }

    #[test]
    fn a_run_stops_at_clusters_already_there_or_partly_there() {
        // Clusters 2 (done) and 5 (partial) split a 0..8 write into runs 0..2, 3..5, 6..8;
        // 5 completes from its partial buffer with the earlier bytes first.
        let mut a = Assembler::new(8 * CLUSTER_SIZE);
        let mut out = Vec::new();
        a.write(2 * CLUSTER_SIZE, &b(&vec![9; 65536]), |c| out.push(c))
            .expect("ok");
        a.write(5 * CLUSTER_SIZE, &b(&[8; 100]), |c| out.push(c))
            .expect("ok");
        a.write(0, &b(&vec![1; 8 << 16]), |c| out.push(c))
            .expect("ok");
        let runs: Vec<(u64, u64)> = out.iter().map(|c| (c.num, c.count())).collect();
        assert_eq!(runs, vec![(2, 1), (0, 2), (3, 2), (5, 1), (6, 2)]);
        let c5 = out[3].data.as_ref().expect("data");
        assert!(c5[..100].iter().all(|&b| b == 8) && c5[100..].iter().all(|&b| b == 1));
        assert!(a.is_complete());
        assert_eq!(a.duplicate_bytes(), 65536 + 100);
        // Zeroes make runs without data.
        let mut z = Assembler::new(3 * CLUSTER_SIZE + 10);
        let out = collect(&mut z, &[(0, None, 3 * CLUSTER_SIZE + 10)]);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].count(), out[0].len, out[0].data.is_none()),
            (4, 3 * 65536 + 10, true)
        );
        assert_eq!(singles(&out)[3].1, 10, "the short last cluster");
    }

    #[test]
    fn zeroes_and_short_last_cluster() {
        let size = 3 * CLUSTER_SIZE + 4096 + 512;
        let mut a = Assembler::new(size);
        let out = collect(
            &mut a,
            &[
                (3 * CLUSTER_SIZE, Some(vec![7; 4608]), 0),
                (0, None, 3 * CLUSTER_SIZE),
            ],
        );
        let out = singles(&out);
        assert_eq!(out.len(), 4);
        assert_eq!(out[0].1, 4608);
        assert_eq!(out[0].0, 3);
        assert!(out[1..].iter().all(|c| c.2.is_none() && c.1 == 65536));
        assert!(a.is_complete());
        assert_eq!(a.first_missing(), None);
    }

    #[test]
    fn a_write_over_two_filled_pieces_keeps_both() {
        // Two separate pieces of cluster 0 arrive first; a whole-cluster write then fills
        // only the gaps around and between them: the first copies win.
        let mut a = Assembler::new(2 * CLUSTER_SIZE);
        let mut out = Vec::new();
        a.write(1000, &b(&[1; 1000]), |c| out.push(c)).expect("ok");
        a.write(5000, &b(&[2; 1000]), |c| out.push(c)).expect("ok");
        assert!(out.is_empty());
        a.write(0, &b(&vec![3; CLUSTER_SIZE as usize]), |c| out.push(c))
            .expect("ok");
        assert_eq!(out.len(), 1);
        let d = out[0].data.as_ref().expect("data");
        assert!(d[..1000].iter().all(|&b| b == 3));
        assert!(d[1000..2000].iter().all(|&b| b == 1));
        assert!(d[2000..5000].iter().all(|&b| b == 3));
        assert!(d[5000..6000].iter().all(|&b| b == 2));
        assert!(d[6000..].iter().all(|&b| b == 3));
        assert_eq!(a.duplicate_bytes(), 2000);
        // A cluster that arrives whole twice: the second copy is dropped and counted.
        let whole = vec![4; CLUSTER_SIZE as usize];
        a.write(CLUSTER_SIZE, &b(&whole), |c| out.push(c))
            .expect("ok");
        let whole = vec![5; CLUSTER_SIZE as usize];
        a.write(CLUSTER_SIZE, &b(&whole), |c| out.push(c))
            .expect("ok");
        assert_eq!(out.len(), 2);
        assert!(out[1].data.as_ref().expect("data").iter().all(|&b| b == 4));
        assert_eq!(a.duplicate_bytes(), 2000 + CLUSTER_SIZE);
    }

    #[test]
    fn unaligned_pieces_assemble_and_first_copy_wins() {
        let mut a = Assembler::new(2 * CLUSTER_SIZE);
        let mut out = Vec::new();
        // 100..70000 spans both clusters partially.
        a.write(100, &b(&vec![1; 69900]), |c| out.push(c))
            .expect("ok");
        assert!(out.is_empty());
        // Overlapping rewrite of 0..200 with 2: only 0..100 is new.
        a.write(0, &b(&[2; 200]), |c| out.push(c)).expect("ok");
        assert_eq!(out.len(), 1);
        let c0 = out[0].data.as_ref().expect("data");
        assert!(c0[..100].iter().all(|&b| b == 2));
        assert!(c0[100..].iter().all(|&b| b == 1));
        assert_eq!(a.duplicate_bytes(), 100);
        // Rest of cluster 1 as zeroes.
        a.write_zeroes(70000, 2 * CLUSTER_SIZE - 70000, |c| out.push(c))
            .expect("ok");
        assert_eq!(out.len(), 2);
        let c1 = out[1].data.as_ref().expect("data");
        assert!(c1[..70000 - 65536].iter().all(|&b| b == 1));
        assert!(c1[70000 - 65536..].iter().all(|&b| b == 0));
        // A whole-cluster rewrite after completion is dropped.
        a.write(0, &b(&vec![9; 65536]), |c| out.push(c))
            .expect("ok");
        assert_eq!(out.len(), 2);
        assert!(a.is_complete());
    }

    #[test]
    fn partial_zero_only_cluster_is_zero() {
        let mut a = Assembler::new(CLUSTER_SIZE);
        let mut out = Vec::new();
        a.write_zeroes(0, 512, |c| out.push(c)).expect("ok");
        a.write_zeroes(512, CLUSTER_SIZE - 512, |c| out.push(c))
            .expect("ok");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data, None);
    }

    #[test]
    fn out_of_range_is_an_error() {
        let mut a = Assembler::new(CLUSTER_SIZE);
        let e = a
            .write(65000, &b(&[0; 1000]), |_| {})
            .expect_err("past the end");
        assert!(e.to_string().contains("past the end"), "{e}");
        assert!(a.write_zeroes(u64::MAX, 2, |_| {}).is_err());
    }

    #[test]
    fn random_pieces_reassemble_exactly() {
        // Deterministic pseudo-random split of a disk into pieces, delivered in shuffled
        // order; the result must equal the source with every cluster once.
        let size = 7 * CLUSTER_SIZE + 1234;
        let src: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        let mut seed = 0x1234_5678_u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut cuts = vec![0u64, size];
        for _ in 0..40 {
            cuts.push(rnd() % size);
        }
        cuts.sort_unstable();
        cuts.dedup();
        let mut pieces: Vec<(u64, u64)> = cuts.windows(2).map(|w| (w[0], w[1])).collect();
        for i in (1..pieces.len()).rev() {
            let j = (rnd() % (i as u64 + 1)) as usize;
            pieces.swap(i, j);
        }
        let mut a = Assembler::new(size);
        let mut out = vec![None; a.clusters() as usize];
        for (s, e) in pieces {
            a.write(s, &b(&src[s as usize..e as usize]), |run| {
                for (n, len, data) in run.each() {
                    let n = n as usize;
                    assert!(out[n].is_none(), "cluster {n} twice");
                    out[n] = Some((len, data));
                }
            })
            .expect("in range");
        }
        assert!(a.is_complete());
        let mut rebuilt = Vec::new();
        for (len, data) in out.into_iter().map(|c| c.expect("every cluster")) {
            let data = data.expect("data");
            assert_eq!(data.len(), len);
            rebuilt.extend_from_slice(&data);
        }
        assert_eq!(rebuilt, src);
    }
}

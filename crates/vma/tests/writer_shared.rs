//! `write_cluster_shared` must produce exactly the bytes of `write_cluster`, whatever the
//! mix of zero blocks, partial last blocks, devices and short writes of the output.

use std::io::Write;

use bytes::Bytes;
use vmdump_vma::{Error, Reader, Writer, CLUSTER_SIZE};

/// An output that takes at most `max` bytes per call (and one slice per vectored call), so
/// the vectored path has to resume in the middle of slices.
struct Trickle {
    out: Vec<u8>,
    max: usize,
    calls: usize,
}

impl Write for Trickle {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.calls += 1;
        let n = buf.len().min(self.max);
        self.out.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An output that fails every other call with `Interrupted` (the caller is to retry), takes
/// at most `max` bytes per call, and fails for good (EIO) once it holds `fail_after` bytes.
struct Flaky {
    out: Vec<u8>,
    max: usize,
    fail_after: usize,
    calls: usize,
}

impl Flaky {
    fn new(max: usize, fail_after: usize) -> Self {
        Flaky {
            out: Vec::new(),
            max,
            fail_after,
            calls: 0,
        }
    }
}

impl Write for Flaky {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.calls += 1;
        if self.calls % 2 == 1 {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        if self.out.len() >= self.fail_after {
            return Err(std::io::Error::from_raw_os_error(EIO));
        }
        let n = buf
            .len()
            .min(self.max)
            .min(self.fail_after - self.out.len());
        self.out.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// EIO's number on Linux.
const EIO: i32 = 5;

/// Cluster `c` of a device: a pattern of zero and non-zero 4 KiB blocks that changes
/// from cluster to cluster (all-zero clusters included).
fn cluster(dev: usize, c: u64) -> Vec<u8> {
    let mut buf = vec![0u8; CLUSTER_SIZE];
    let pattern = (c as usize * 7 + dev * 13) % 11;
    for (i, block) in buf.chunks_mut(4096).enumerate() {
        let keep = match pattern {
            0 => false,
            1 => true,
            k => (i + k) % k != 0,
        };
        if keep {
            for (j, b) in block.iter_mut().enumerate() {
                *b = (j as u8) ^ (i as u8) ^ (c as u8) ^ (dev as u8 * 31) | 1;
            }
        }
    }
    buf
}

/// Register the devices and write every cluster, the devices interleaved as a live backup
/// would; `shared(c)` picks `write_cluster_shared` for cluster `c`, else `write_cluster`.
fn fill<W: Write>(w: &mut Writer<W>, sizes: &[u64], shared: impl Fn(u64) -> bool) {
    w.add_config("qemu-server.conf", b"memory: 512\n").unwrap();
    let ids: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, s)| w.register_device(&format!("drive-scsi{i}"), *s).unwrap())
        .collect();
    let counts: Vec<u64> = sizes
        .iter()
        .map(|s| s.div_ceil(CLUSTER_SIZE as u64))
        .collect();
    let most = counts.iter().copied().max().unwrap_or(0);
    for c in 0..most {
        for (d, id) in ids.iter().enumerate() {
            if c >= counts[d] {
                continue;
            }
            let mut data = cluster(d, c);
            let end = (sizes[d] - c * CLUSTER_SIZE as u64).min(CLUSTER_SIZE as u64) as usize;
            data.truncate(end);
            let zero = if shared(c) {
                w.write_cluster_shared(*id, c, &Bytes::from(data)).unwrap()
            } else {
                w.write_cluster(*id, c, &data).unwrap()
            };
            assert_eq!(zero % 4096, 0);
        }
    }
}

fn archive(shared: Option<usize>, sizes: &[u64]) -> Vec<u8> {
    let out = Trickle {
        out: Vec::new(),
        max: shared.unwrap_or(usize::MAX),
        calls: 0,
    };
    let mut w = Writer::with_identity(out, [7; 16], Some(1_700_000_000));
    fill(&mut w, sizes, |c| shared.is_some() && c % 5 != 3);
    let (out, _) = w.finish().unwrap();
    if shared == Some(1000) {
        assert!(out.calls > 100, "the slow output was not exercised");
    }
    out.out
}

/// Device sizes of the comparisons: several extents, a partial last block (size not a
/// multiple of 4 KiB), a device smaller than a cluster.
const SIZES: [u64; 3] = [
    200 * CLUSTER_SIZE as u64 + 12_345,
    3 * 4096 + 17,
    64 * CLUSTER_SIZE as u64,
];

#[test]
fn shared_clusters_write_the_same_bytes() {
    let copied = archive(None, &SIZES);
    for max in [usize::MAX, 1000, 65536 + 3] {
        let shared = archive(Some(max), &SIZES);
        assert_eq!(shared.len(), copied.len(), "max {max}");
        assert!(shared == copied, "archives differ with output chunk {max}");
    }
    // And it is a valid archive.
    let mut r = Reader::new(&copied[..]).unwrap();
    while r.next_extent().unwrap().is_some() {}
    r.finish().unwrap();
}

#[test]
fn in_place_writer_writes_the_same_bytes() {
    let copied = archive(None, &SIZES);
    let mut w = Writer::with_identity_in_place(
        std::io::Cursor::new(Vec::new()),
        [7; 16],
        Some(1_700_000_000),
    );
    fill(&mut w, &SIZES, |c| c % 3 == 0);
    let (out, stats) = w.finish().unwrap();
    let out = out.into_inner();
    assert_eq!(stats.bytes_written, out.len() as u64);
    assert!(out == copied, "in-place archive differs");
}

#[test]
fn in_place_config_only_and_rejected_cluster() {
    // Config only: header plus one empty extent, as the buffering writer makes it.
    let mut a = Writer::with_identity(Vec::new(), [1; 16], Some(1));
    a.add_config("x.conf", b"x").unwrap();
    let (a, _) = a.finish().unwrap();
    let mut b = Writer::with_identity_in_place(std::io::Cursor::new(Vec::new()), [1; 16], Some(1));
    b.add_config("x.conf", b"x").unwrap();
    let (b, _) = b.finish().unwrap();
    assert_eq!(a, b.into_inner());

    // A cluster refused after its extent was started leaves a valid archive.
    let mut w = Writer::with_identity_in_place(std::io::Cursor::new(Vec::new()), [2; 16], Some(1));
    let id = w.register_device("d", 2 * CLUSTER_SIZE as u64).unwrap();
    assert!(w.write_cluster(id, 0, &[1u8; 100]).is_err());
    w.write_cluster(id, 0, &[1u8; CLUSTER_SIZE]).unwrap();
    w.write_zero_cluster(id, 1).unwrap();
    let (out, _) = w.finish().unwrap();
    let out = out.into_inner();
    let mut r = Reader::new(&out[..]).unwrap();
    let mut n = 0;
    while let Some(e) = r.next_extent().unwrap() {
        n += e.clusters().count();
    }
    r.finish().unwrap();
    assert_eq!(n, 2);
}

#[test]
fn a_run_of_zero_clusters_writes_what_single_zero_clusters_write() {
    // A hole of 150 clusters (three extents' worth) between data clusters, on two devices,
    // as a live backup hands it over (one WRITE_ZEROES run): the same bytes as cluster by
    // cluster, and a cluster already written stops the run with an error.
    let size = 160 * CLUSTER_SIZE as u64;
    let write = |runs: bool| {
        let mut w = Writer::with_identity(Vec::new(), [3; 16], Some(1_700_000_000));
        w.add_config("qemu-server.conf", b"memory: 512\n").unwrap();
        let a = w.register_device("drive-scsi0", size).unwrap();
        let b = w.register_device("drive-scsi1", size).unwrap();
        for id in [a, b] {
            w.write_cluster(id, 0, &cluster(1, 0)).unwrap();
            if runs {
                w.write_zero_clusters(id, 1, 150).unwrap();
            } else {
                for c in 1..151 {
                    w.write_zero_cluster(id, c).unwrap();
                }
            }
            for c in 151..160 {
                w.write_cluster(id, c, &cluster(2, c)).unwrap();
            }
        }
        if runs {
            assert!(
                w.write_zero_clusters(a, 159, 1).is_err(),
                "cluster 159 is there"
            );
        }
        w.finish().unwrap().0
    };
    let single = write(false);
    assert!(
        write(true) == single,
        "zero runs differ from single zero clusters"
    );
}

#[test]
fn interrupted_writes_are_retried_and_a_failed_write_poisons_the_writer() {
    let copied = archive(None, &SIZES);
    let mut w = Writer::with_identity(
        Flaky::new(65536 + 3, usize::MAX),
        [7; 16],
        Some(1_700_000_000),
    );
    fill(&mut w, &SIZES, |c| c % 5 != 3);
    let (out, _) = w.finish().unwrap();
    assert!(out.calls > 100, "the flaky output was not exercised");
    assert!(
        out.out == copied,
        "archive differs after interrupted writes"
    );

    // An output that fails for good after 1 MiB: the first extent (58 clusters, written
    // when the 59th comes) fails, at its offset after the header, and the writer takes
    // nothing after that: the archive it leaves is not to be finished.
    let mut w = Writer::with_identity(Flaky::new(65536 + 3, 1 << 20), [7; 16], Some(1));
    let id = w
        .register_device("drive-scsi0", 200 * CLUSTER_SIZE as u64)
        .unwrap();
    for c in 0..58 {
        w.write_cluster_shared(id, c, &Bytes::from(cluster(0, c)))
            .unwrap();
    }
    let err = w
        .write_cluster_shared(id, 58, &Bytes::from(cluster(0, 58)))
        .unwrap_err();
    match &err {
        Error::Io { offset, source } => {
            assert_eq!(*offset, 12288 + 512, "{err}");
            assert_eq!(source.raw_os_error(), Some(EIO), "{err}");
        }
        other => panic!("not an i/o error: {other}"),
    }
    let again = w.write_cluster_shared(id, 58, &Bytes::from(cluster(0, 58)));
    assert!(matches!(again, Err(Error::Poisoned)), "{again:?}");
    assert!(matches!(w.write_zero_cluster(id, 59), Err(Error::Poisoned)));
    assert!(matches!(w.finish(), Err(Error::Poisoned)));
}

//! `archive_disks`, the block-run writer of `vma create`: what it reads from the disks (runs
//! of at most `read_clusters`, never a hole the data map reports, nothing past a disk's end),
//! what the archive holds (every byte, sizes rounded up to sectors, odd-size disks whose last
//! block holds data), the progress it reports, and how a read or write error ends it.

mod common;
use common::*;
use std::io::{self, Write};
use std::sync::Mutex;
use vmdump_vma::{
    archive_disks, round_to_sectors, ArchiveDisk, ArchiveProgress, DataMap, DiskSource, Error,
    Reader, Writer,
};

/// A disk in memory that records every read; optionally with a data map of known holes
/// and a byte whose read fails.
struct MemDisk {
    data: Vec<u8>,
    /// Ranges the data map reports as holes (`None`: no data map).
    holes: Option<Vec<(u64, u64)>>,
    fail_at: Option<u64>,
    reads: Mutex<Vec<(u64, usize)>>,
}

impl MemDisk {
    fn new(data: Vec<u8>) -> Self {
        MemDisk {
            data,
            holes: None,
            fail_at: None,
            reads: Mutex::default(),
        }
    }

    fn with_holes(mut self, holes: &[(u64, u64)]) -> Self {
        self.holes = Some(holes.to_vec());
        self
    }

    fn reads(&self) -> Vec<(u64, usize)> {
        self.reads.lock().unwrap().clone()
    }
}

impl DiskSource for MemDisk {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = offset as usize;
        assert!(
            start + buf.len() <= self.data.len(),
            "read of {}+{} past the disk's end {}",
            offset,
            buf.len(),
            self.data.len()
        );
        self.reads.lock().unwrap().push((offset, buf.len()));
        if self
            .fail_at
            .is_some_and(|f| (offset..offset + buf.len() as u64).contains(&f))
        {
            return Err(io::Error::other("bad sector"));
        }
        buf.copy_from_slice(&self.data[start..start + buf.len()]);
        Ok(())
    }

    fn data_map(&self) -> Option<Box<dyn DataMap + '_>> {
        let holes = self.holes.as_ref()?;
        Some(Box::new(HoleMap {
            holes,
            size: self.size(),
            last_start: 0,
        }))
    }
}

struct HoleMap<'a> {
    holes: &'a [(u64, u64)],
    size: u64,
    last_start: u64,
}

impl DataMap for HoleMap<'_> {
    fn is_hole(&mut self, start: u64, end: u64) -> bool {
        assert!(start < end && end <= self.size, "query {start}..{end}");
        assert!(start >= self.last_start, "queries go forward");
        self.last_start = start;
        self.holes.iter().any(|&(a, b)| a <= start && end <= b)
    }
}

/// The figures `archive_disks` must report, computed from the (sector-padded) images:
/// a line at every new whole percent of the device bytes, and zero bytes counted as 16
/// blocks per cluster (blocks past the end count as zero, as Proxmox counts them).
fn progress_model(imgs: &[Vec<u8>]) -> Vec<ArchiveProgress> {
    let total: u64 = imgs.iter().map(|i| i.len() as u64).sum();
    let (mut transferred, mut zero_bytes) = (0u64, 0u64);
    let mut out: Vec<ArchiveProgress> = Vec::new();
    for img in imgs {
        for cluster in img.chunks(CS) {
            transferred += cluster.len() as u64;
            zero_bytes += (0..16)
                .filter(|b| {
                    let block = cluster.get(b * BS..((b + 1) * BS).min(cluster.len()));
                    block.is_none_or(|x| x.iter().all(|&v| v == 0))
                })
                .count() as u64
                * BS as u64;
            let percent = transferred * 100 / total;
            if out.last().is_none_or(|p| p.percent != percent) {
                out.push(ArchiveProgress {
                    percent,
                    transferred,
                    total,
                    zero_bytes,
                });
            }
        }
    }
    out
}

/// The image an archive must hold for `data`: padded with zeros to whole sectors.
fn padded(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    v.resize(round_to_sectors(data.len() as u64) as usize, 0);
    v
}

/// Archive `disks` (named `drive-N`) with two configs into memory; the archive bytes,
/// the progress reports and the writer's figures.
fn archive(
    disks: &[&MemDisk],
    read_clusters: u64,
) -> (Vec<u8>, Vec<ArchiveProgress>, vmdump_vma::WriteStats) {
    let names: Vec<String> = (0..disks.len()).map(|i| format!("drive-{i}")).collect();
    let list: Vec<ArchiveDisk<'_>> = disks
        .iter()
        .zip(&names)
        .map(|(d, name)| ArchiveDisk { name, source: *d })
        .collect();
    let configs = vec![
        ("qemu-server.conf".to_string(), b"memory: 512\n".to_vec()),
        ("qemu-server.fw".to_string(), b"[OPTIONS]\n".to_vec()),
    ];
    let mut w = Writer::with_identity(Vec::new(), [9; 16], Some(1_700_000_000));
    let mut progress = Vec::new();
    archive_disks(&mut w, &configs, &list, read_clusters, |p| progress.push(p)).unwrap();
    let (bytes, stats) = w.finish().unwrap();
    (bytes, progress, stats)
}

/// 5 clusters and 1000 bytes: data, two clusters the map calls holes, a cluster only half
/// of which is a hole (so it is read), a zero cluster the map does not know, and a last
/// partial cluster whose bytes are all data up to the disk's last byte.
fn odd_disk() -> MemDisk {
    let mut data = pseudo_random(7, 5 * CS + 1000);
    data[CS..3 * CS].fill(0);
    data[3 * CS + CS / 2..5 * CS].fill(0);
    assert_ne!(data[5 * CS + 999], 0);
    let holes = [
        (CS as u64, 3 * CS as u64),
        ((3 * CS + CS / 2) as u64, 4 * CS as u64),
    ];
    MemDisk::new(data).with_holes(&holes)
}

#[test]
fn every_byte_is_archived_and_holes_are_never_read() {
    let a = odd_disk();
    let b = MemDisk::new(mixed_image(8, 3 * CS));
    let c = MemDisk::new(pseudo_random(9, 100));
    let (bytes, progress, stats) = archive(&[&a, &b, &c], 2);

    let (h, imgs) = read_all(&bytes).unwrap();
    let cfg: Vec<(&str, &[u8])> = h
        .configs
        .iter()
        .map(|c| (c.name.as_str(), &c.data[..]))
        .collect();
    assert_eq!(
        cfg,
        [
            ("qemu-server.conf", &b"memory: 512\n"[..]),
            ("qemu-server.fw", &b"[OPTIONS]\n"[..])
        ]
    );
    let devs: Vec<(&str, u64)> = h
        .devices
        .iter()
        .map(|d| (d.name.as_str(), d.size))
        .collect();
    assert_eq!(
        devs,
        [
            ("drive-0", 5 * CS as u64 + 1024),
            ("drive-1", 3 * CS as u64),
            ("drive-2", 512)
        ]
    );
    for (i, d) in [&a, &b, &c].iter().enumerate() {
        assert!(imgs[i] == padded(&d.data), "device {i}");
    }

    // Runs of at most two clusters of one kind; the holes (clusters 1 and 2) are not read,
    // the half hole is; nothing past the disk's own end (the archived size is 24 bytes more).
    assert_eq!(
        a.reads(),
        [(0, CS), (3 * CS as u64, 2 * CS), (5 * CS as u64, 1000)]
    );
    assert_eq!(b.reads(), [(0, 2 * CS), (2 * CS as u64, CS)]);
    assert_eq!(c.reads(), [(0, 100)]);

    let padded_imgs: Vec<Vec<u8>> = [&a, &b, &c].iter().map(|d| padded(&d.data)).collect();
    assert_eq!(progress, progress_model(&padded_imgs));
    let last = progress.last().unwrap();
    assert_eq!(
        (last.percent, last.transferred),
        (100, 5 * CS as u64 + 1024 + 3 * CS as u64 + 512)
    );
    let zeros: Vec<u64> = stats.devices.iter().map(|d| d.zero_bytes).collect();
    assert_eq!(zeros.iter().sum::<u64>(), last.zero_bytes);
    // Clusters 1, 2 and 4 whole, half of 3 and the 15 blocks past the end of 5.
    assert_eq!(zeros[0], (3 * 16 + 8 + 15) * BS as u64);
}

#[test]
fn reads_are_runs_of_read_clusters_and_zero_means_one() {
    let disk = MemDisk::new(mixed_image(10, 7 * CS + 4096));
    let (bytes, ..) = archive(&[&disk], 3);
    assert_eq!(read_all(&bytes).unwrap().1[0], disk.data);
    let runs: Vec<(u64, usize)> = [(0, 3 * CS), (3 * CS, 3 * CS), (6 * CS, CS + 4096)]
        .iter()
        .map(|&(o, l)| (o as u64, l))
        .collect();
    assert_eq!(disk.reads(), runs);

    let disk = MemDisk::new(mixed_image(11, 3 * CS));
    let (bytes, ..) = archive(&[&disk], 0);
    assert_eq!(read_all(&bytes).unwrap().1[0], disk.data);
    assert_eq!(
        disk.reads(),
        [(0, CS), (CS as u64, CS), (2 * CS as u64, CS)]
    );

    let disk = MemDisk::new(mixed_image(12, 3 * CS));
    let (bytes, ..) = archive(&[&disk], 1000);
    assert_eq!(read_all(&bytes).unwrap().1[0], disk.data);
    assert_eq!(disk.reads(), [(0, 3 * CS)]);
}

#[test]
fn progress_is_reported_once_per_whole_percent() {
    // 300 clusters, all holes but the last: 300 clusters, 100 distinct percents.
    let mut data = vec![0u8; 300 * CS];
    data[299 * CS..].copy_from_slice(&pseudo_random(13, CS));
    let disk = MemDisk::new(data).with_holes(&[(0, 299 * CS as u64)]);
    let (bytes, progress, _) = archive(&[&disk], 64);
    assert_eq!(read_all(&bytes).unwrap().1[0], disk.data);
    assert_eq!(disk.reads(), [(299 * CS as u64, CS)]);
    assert_eq!(progress, progress_model(std::slice::from_ref(&disk.data)));
    assert_eq!(progress.len(), 101, "0% to 100%, each once");
    assert_eq!(progress[0].percent, 0);
    assert_eq!(progress[0].transferred, CS as u64);
    assert_eq!(progress[100].zero_bytes, 299 * CS as u64);
}

#[test]
fn a_read_error_names_the_disk_and_offset_and_stops_the_reads() {
    let a = MemDisk::new(pseudo_random(14, 2 * CS));
    let mut b = MemDisk::new(pseudo_random(15, 4 * CS));
    b.fail_at = Some(2 * CS as u64 + 5);
    let list = [
        ArchiveDisk {
            name: "drive-scsi0",
            source: &a,
        },
        ArchiveDisk {
            name: "drive-scsi1",
            source: &b,
        },
    ];
    let mut w = Writer::new(Vec::new());
    let e = archive_disks(&mut w, &[], &list, 1, |_| {}).unwrap_err();
    match &e {
        Error::DiskRead {
            device,
            offset,
            source,
        } => {
            assert_eq!(device, "drive-scsi1");
            assert_eq!(*offset, 2 * CS as u64);
            assert_eq!(source.to_string(), "bad sector");
        }
        e => panic!("not a read error: {e:?}"),
    }
    assert_eq!(a.reads().len(), 2);
    assert_eq!(
        b.reads(),
        [(0, CS), (CS as u64, CS), (2 * CS as u64, CS)],
        "no read after the failed one"
    );
}

/// An output that takes `left` bytes, then fails every write.
struct FailAfter {
    left: usize,
}

impl Write for FailAfter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::other("disk full"));
        }
        let n = buf.len().min(self.left);
        self.left -= n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_failing_output_ends_the_run_and_the_reads() {
    let disk = MemDisk::new(pseudo_random(16, 400 * CS));
    let list = [ArchiveDisk {
        name: "drive-scsi0",
        source: &disk,
    }];
    let mut w = Writer::new(FailAfter { left: 100_000 });
    let e = archive_disks(&mut w, &[], &list, 1, |_| {}).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    // The first extent (58 clusters) fails; the reader is at most the channel's depth and
    // the buffers of one extent ahead, not at the end of the disk.
    let read = disk.reads().len();
    assert!((58..=58 + 59 + 6).contains(&read), "{read} clusters read");
}

#[test]
fn sizes_round_up_to_whole_sectors() {
    for (size, want) in [
        (0, 0),
        (1, 512),
        (511, 512),
        (512, 512),
        (513, 1024),
        (65_537, 66_048),
    ] {
        assert_eq!(round_to_sectors(size), want, "{size}");
    }
    let disk = MemDisk::new(vec![1; 700]);
    let d = ArchiveDisk {
        name: "drive-ide0",
        source: &disk,
    };
    assert_eq!(
        format!("{d:?}"),
        r#"ArchiveDisk { name: "drive-ide0", size: 700 }"#
    );
    // Reading the archive back: the 324 bytes past the disk's end are zeros.
    let (bytes, ..) = archive(&[&disk], 4);
    let mut r = Reader::new(&bytes[..]).unwrap();
    assert_eq!(r.header().devices[0].size, 1024);
    let ext = r.next_extent().unwrap().unwrap();
    let c = ext.clusters().next().unwrap();
    assert_eq!(c.mask, 1);
    assert!(c.data()[..700].iter().all(|&b| b == 1));
    assert!(c.data()[700..].iter().all(|&b| b == 0));
}

#[test]
fn disks_ending_in_a_hole_and_all_hole_disks() {
    // Data in clusters 0 and 1, a hole from there to the odd end (the usual sparse disk);
    // and a disk that is all hole (a new, empty one).
    let mut data = pseudo_random(17, 4 * CS + 1000);
    data[2 * CS..].fill(0);
    let tail = MemDisk::new(data).with_holes(&[(2 * CS as u64, 4 * CS as u64 + 1000)]);
    let empty = MemDisk::new(vec![0; 3 * CS]).with_holes(&[(0, 3 * CS as u64)]);
    let (bytes, progress, stats) = archive(&[&tail, &empty], 8);
    let (h, imgs) = read_all(&bytes).unwrap();
    assert_eq!(h.devices[0].size, 4 * CS as u64 + 1024);
    assert!(imgs[0] == padded(&tail.data));
    assert!(imgs[1] == empty.data);
    assert_eq!(tail.reads(), [(0, 2 * CS)]);
    assert!(empty.reads().is_empty());
    let padded_imgs = [padded(&tail.data), empty.data.clone()];
    assert_eq!(progress, progress_model(&padded_imgs));
    let zeros: Vec<u64> = stats.devices.iter().map(|d| d.zero_bytes).collect();
    assert_eq!(zeros, [3 * CS as u64, 3 * CS as u64]);
}

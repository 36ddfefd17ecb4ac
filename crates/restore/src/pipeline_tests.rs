//! The data path on its own: archives made by `vmdump-vma`'s writer, restored into
//! in-memory disks (`vmdump_blockdev::MemDisk`), compared byte for byte.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use vmdump_blockdev::{Finish, MemDisk, ReadAt, Size, WriteAt};
use vmdump_task::Cancel;
use vmdump_vma::{Reader, Writer, BLOCK_SIZE, CLUSTER_SIZE};

use super::{run, DataProgress, DiskSink, Stats};
use crate::error::{Error, ErrorKind};

const CS: u64 = CLUSTER_SIZE as u64;
const BS: usize = BLOCK_SIZE;

/// Deterministic non-zero bytes.
fn noise(len: usize, seed: u8) -> Vec<u8> {
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as u8) | 1
        })
        .collect()
}

/// A disk image whose every cluster is of another kind: all zero, all data, data in the
/// first / a middle / the last 4 KiB block only, a block with only its first and last bytes
/// set. Its size is not a multiple of 64 KiB (nor of 4 KiB) and its last bytes hold data.
fn image(size: u64, seed: u8) -> Vec<u8> {
    let mut d = vec![0u8; size as usize];
    let clusters = size.div_ceil(CS) as usize;
    for c in 0..clusters {
        let base = c * CLUSTER_SIZE;
        let end = (base + CLUSTER_SIZE).min(d.len());
        let fill = noise(end - base, seed.wrapping_add(c as u8));
        let span = |from: usize, to: usize| (base + from).min(end)..(base + to).min(end);
        match c % 6 {
            0 => {}
            1 => d[base..end].copy_from_slice(&fill),
            2 => d[span(0, BS)].copy_from_slice(&fill[..span(0, BS).len()]),
            3 => d[span(7 * BS, 8 * BS)].copy_from_slice(&fill[..span(7 * BS, 8 * BS).len()]),
            4 => d[span(15 * BS, 16 * BS)].copy_from_slice(&fill[..span(15 * BS, 16 * BS).len()]),
            _ => {
                d[base] = 1;
                d[(base + BS - 1).min(end - 1)] = 2;
            }
        }
    }
    // The disk's very last byte holds data.
    *d.last_mut().expect("a non-empty disk") = 0xee;
    d
}

/// An archive of `disks` (`(name, bytes)`), clusters stored in reverse order (archives are
/// out of order; zero clusters go in as such), plus a vmstate stream when `vmstate`.
fn archive(disks: &[(&str, &[u8])], vmstate: bool) -> Vec<u8> {
    let mut w = Writer::with_identity(Vec::new(), [3; 16], Some(1_700_000_000));
    w.add_config("qemu-server.conf", b"memory: 64\n").unwrap();
    let ids: Vec<_> = disks
        .iter()
        .map(|(name, data)| w.register_device(name, data.len() as u64).unwrap())
        .collect();
    let state = vmstate.then(|| {
        (
            w.register_device(vmdump_vma::VMSTATE_NAME, 3 * CS).unwrap(),
            noise(3 * CLUSTER_SIZE, 99),
        )
    });
    for ((_, data), &id) in disks.iter().zip(&ids) {
        for c in (0..data.len().div_ceil(CLUSTER_SIZE)).rev() {
            let chunk = &data[c * CLUSTER_SIZE..((c + 1) * CLUSTER_SIZE).min(data.len())];
            if chunk.iter().all(|&b| b == 0) {
                w.write_zero_cluster(id, c as u64).unwrap();
            } else {
                w.write_cluster(id, c as u64, chunk).unwrap();
            }
        }
    }
    if let Some((id, data)) = &state {
        for c in 0..3 {
            w.write_cluster(*id, c, &data[c as usize * CLUSTER_SIZE..][..CLUSTER_SIZE])
                .unwrap();
        }
    }
    w.finish().unwrap().0
}

/// A target that records its writes and whether it was finished.
#[derive(Clone)]
struct Recorder {
    disk: MemDisk,
    writes: Arc<Mutex<Vec<(u64, usize)>>>,
    finished: Arc<AtomicBool>,
}

impl Recorder {
    fn new(size: u64) -> Self {
        Recorder {
            disk: MemDisk::new(size),
            writes: Arc::default(),
            finished: Arc::default(),
        }
    }

    fn sink(&self, dev_id: u8, name: &str, size: u64) -> DiskSink {
        DiskSink {
            dev_id,
            name: name.to_string(),
            size,
            target: Box::new(self.clone()),
        }
    }
}

impl Size for Recorder {
    fn size(&self) -> u64 {
        self.disk.size()
    }
}

impl WriteAt for Recorder {
    fn write_at(&mut self, data: Bytes, offset: u64) -> vmdump_blockdev::Result<()> {
        self.writes.lock().unwrap().push((offset, data.len()));
        self.disk.write_at(data, offset)
    }
}

impl Finish for Recorder {
    fn finish(self: Box<Self>) -> vmdump_blockdev::Result<()> {
        self.finished.store(true, Ordering::SeqCst);
        Ok(())
    }
}

fn restore_into(
    bytes: &[u8],
    sinks: Vec<DiskSink>,
    cancel: &Cancel,
) -> (crate::Result<Stats>, Vec<DataProgress>) {
    let reader = Reader::new(bytes).unwrap();
    let mut seen = Vec::new();
    let r = run(reader, sinks, cancel, &mut |p| seen.push(p));
    (r, seen)
}

/// Bytes in the non-zero 4 KiB blocks of `data`.
fn nonzero_block_bytes(data: &[u8]) -> u64 {
    data.chunks(BS)
        .filter(|b| b.iter().any(|&x| x != 0))
        .map(|b| b.len() as u64)
        .sum()
}

#[test]
fn restores_every_byte_of_odd_sized_disks_and_skips_the_vmstate() {
    // 13 clusters + 5 KiB + 3 bytes: the last cluster ends inside a 4 KiB block.
    let a = image(13 * CS + 5 * 1024 + 3, 1);
    let b = image(4 * CS + 512, 7);
    let bytes = archive(&[("drive-scsi0", &a), ("drive-virtio1", &b)], true);
    let (ra, rb) = (Recorder::new(a.len() as u64), Recorder::new(b.len() as u64));
    let sinks = vec![
        ra.sink(1, "drive-scsi0", a.len() as u64),
        rb.sink(2, "drive-virtio1", b.len() as u64),
    ];
    let (stats, progress) = restore_into(&bytes, sinks, &Cancel::new());
    let stats = stats.unwrap();
    assert!(ra.disk.contents() == a, "drive-scsi0 differs");
    assert!(rb.disk.contents() == b, "drive-virtio1 differs");
    assert!(ra.finished.load(Ordering::SeqCst) && rb.finished.load(Ordering::SeqCst));

    for (st, data, name) in [
        (&stats.devices[0], &a, "drive-scsi0"),
        (&stats.devices[1], &b, "drive-virtio1"),
    ] {
        assert_eq!(st.name, name);
        assert_eq!(st.bytes, data.len() as u64);
        assert_eq!(st.written, nonzero_block_bytes(data));
        let sparse: u64 = data
            .chunks(CLUSTER_SIZE)
            .filter(|c| c.iter().all(|&x| x == 0))
            .map(|c| c.len() as u64)
            .sum();
        assert_eq!(st.sparse, sparse, "{name}");
    }
    assert_eq!(stats.total(), (a.len() + b.len()) as u64);
    assert_eq!(
        stats.written(),
        nonzero_block_bytes(&a) + nonzero_block_bytes(&b)
    );
    assert_eq!(
        stats.sparse(),
        stats.devices[0].sparse + stats.devices[1].sparse
    );
    assert!(stats.sparse() > 0);
    assert_eq!(stats.archive_bytes, bytes.len() as u64);

    // Progress: rising whole percents, the last one at or past 100 (Proxmox's arithmetic
    // counts whole clusters), its bytes those of the final tally.
    assert!(progress.len() > 10);
    assert!(progress.windows(2).all(|w| w[0].percent < w[1].percent));
    assert!(progress.windows(2).all(|w| w[0].bytes < w[1].bytes));
    assert!(progress.last().unwrap().percent >= 100);
    assert_eq!(progress.last().unwrap().bytes, stats.tally.bytes_read());
    // Every cluster read counts (14 + 5 + the vmstate's 3), measured, as Proxmox does,
    // against the disks' whole clusters only (13 + 4), not the vmstate stream's.
    assert_eq!(stats.tally.bytes_read(), 22 * CS);
    assert_eq!(progress.last().unwrap().percent, 22 * 100 / 17);
}

#[test]
fn writes_only_non_zero_blocks_merging_adjacent_ones() {
    // Cluster 0: blocks 0..4 data, 4..8 zero, 8..16 data. Cluster 1: all data.
    let mut d = vec![0u8; 2 * CLUSTER_SIZE];
    d[..4 * BS].copy_from_slice(&noise(4 * BS, 3));
    d[8 * BS..].copy_from_slice(&noise(24 * BS, 4));
    let bytes = archive(&[("drive-scsi0", &d)], false);
    let r = Recorder::new(d.len() as u64);
    let (stats, _) = restore_into(
        &bytes,
        vec![r.sink(1, "drive-scsi0", d.len() as u64)],
        &Cancel::new(),
    );
    stats.unwrap();
    assert!(r.disk.contents() == d);
    let mut writes = r.writes.lock().unwrap().clone();
    writes.sort_unstable();
    // Clusters are stored in reverse order, so cluster 1 comes in its own extent slot
    // before cluster 0; within one extent adjacent runs are one write.
    let covered: u64 = writes.iter().map(|&(_, len)| len as u64).sum();
    assert_eq!(covered, nonzero_block_bytes(&d));
    assert!(
        writes
            .iter()
            .all(|&(off, len)| off + len as u64 <= 4 * BS as u64 || off >= 8 * BS as u64),
        "a zero block was written: {writes:?}"
    );
    assert!(writes.len() <= 3, "runs were not merged: {writes:?}");
}

#[test]
fn a_device_without_a_sink_is_read_but_not_written() {
    let a = image(3 * CS, 5);
    let b = image(2 * CS + 100, 6);
    let bytes = archive(&[("drive-scsi0", &a), ("drive-scsi1", &b)], false);
    let r = Recorder::new(b.len() as u64);
    let (stats, _) = restore_into(
        &bytes,
        vec![r.sink(2, "drive-scsi1", b.len() as u64)],
        &Cancel::new(),
    );
    let stats = stats.unwrap();
    assert!(r.disk.contents() == b);
    assert_eq!(stats.devices.len(), 1);
    assert_eq!(stats.devices[0].name, "drive-scsi1");
    assert_eq!(stats.archive_bytes, bytes.len() as u64);
}

#[test]
fn a_truncated_archive_fails_and_finishes_no_target() {
    let a = image(20 * CS + 4096, 9);
    let bytes = archive(&[("drive-scsi0", &a)], false);
    for cut in [bytes.len() - 1, bytes.len() / 2] {
        let r = Recorder::new(a.len() as u64);
        let (stats, _) = restore_into(
            &bytes[..cut],
            vec![r.sink(1, "drive-scsi0", a.len() as u64)],
            &Cancel::new(),
        );
        let err = stats.unwrap_err();
        assert!(matches!(err, Error::Archive(_)), "{err:?}");
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert!(
            !r.finished.load(Ordering::SeqCst),
            "a failed restore finished"
        );
    }
}

#[test]
fn an_archive_that_ends_at_an_extent_boundary_is_incomplete() {
    // Enough clusters for several extents; cut after the first one: every extent read is
    // valid, but clusters are missing.
    let a = image(150 * CS, 3);
    let bytes = archive(&[("drive-scsi0", &a)], false);
    let mut reader = Reader::new(&bytes[..]).unwrap();
    reader.next_extent().unwrap().expect("a first extent");
    let cut = reader.offset() as usize;
    assert!(cut < bytes.len());
    let r = Recorder::new(a.len() as u64);
    let (stats, _) = restore_into(
        &bytes[..cut],
        vec![r.sink(1, "drive-scsi0", a.len() as u64)],
        &Cancel::new(),
    );
    let err = stats.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Archive(vmdump_vma::Error::MissingCluster { .. })
        ),
        "{err:?}"
    );
    assert!(!r.finished.load(Ordering::SeqCst));
}

#[test]
fn a_failing_target_is_the_reported_cause() {
    // The target is one block short: the write of the device's last block fails.
    let a = image(6 * CS + 4096, 2);
    let bytes = archive(&[("drive-scsi0", &a)], false);
    let r = Recorder::new(a.len() as u64 - 4096);
    let (stats, _) = restore_into(
        &bytes,
        vec![r.sink(1, "drive-scsi0", a.len() as u64)],
        &Cancel::new(),
    );
    let err = stats.unwrap_err();
    match &err {
        Error::Disk { what, device, .. } => {
            assert_eq!((*what, device.as_str()), ("write", "drive-scsi0"));
        }
        other => panic!("not the writer's error: {other:?}"),
    }
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(!r.finished.load(Ordering::SeqCst));
}

#[test]
fn a_cancelled_restore_stops_and_finishes_no_target() {
    let a = image(4 * CS, 4);
    let bytes = archive(&[("drive-scsi0", &a)], false);
    let cancel = Cancel::new();
    cancel.cancel();
    let r = Recorder::new(a.len() as u64);
    let (stats, progress) = restore_into(
        &bytes,
        vec![r.sink(1, "drive-scsi0", a.len() as u64)],
        &cancel,
    );
    assert!(matches!(stats, Err(Error::Interrupted)), "{stats:?}");
    assert!(progress.is_empty());
    assert!(r.writes.lock().unwrap().is_empty());
    assert!(!r.finished.load(Ordering::SeqCst));
}

#[test]
fn a_cluster_with_one_data_block_is_one_block_write() {
    let mut d = vec![0u8; CLUSTER_SIZE];
    d[..BS].copy_from_slice(&noise(BS, 8));
    let bytes = archive(&[("drive-scsi0", &d)], false);
    let r = Recorder::new(d.len() as u64);
    let (stats, _) = restore_into(
        &bytes,
        vec![r.sink(1, "drive-scsi0", d.len() as u64)],
        &Cancel::new(),
    );
    let stats = stats.unwrap();
    assert_eq!(stats.devices[0].written, BS as u64);
    assert_eq!(stats.devices[0].sparse, 0);
    assert_eq!(*r.writes.lock().unwrap(), [(0, BS)]);
    let mut buf = vec![0u8; BS];
    r.disk.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, d[..BS]);
}

//! Zero detection works per 4 KiB block and looks at every byte: a block that is zero except
//! for one byte (first, middle, last, or in the partial last block of an odd-sized device) is
//! stored and reads back exactly, through every write path of the writer.

use std::io::Cursor;

use bytes::Bytes;
use vmdump_vma::{is_zero, Reader, Writer, CLUSTER_SIZE};

const BLOCK: usize = 4096;

/// Positions inside a block where a single non-zero byte is planted.
const SPOTS: [usize; 5] = [0, 1, BLOCK / 2, BLOCK - 16, BLOCK - 1];

#[test]
fn is_zero_sees_every_byte() {
    for len in [1, 15, 16, 17, 63, 64, 65, BLOCK - 1, BLOCK, CLUSTER_SIZE] {
        let mut buf = vec![0u8; len];
        assert!(is_zero(&buf), "len {len}");
        for at in [0, len / 2, len - 1] {
            buf[at] = 0x80;
            assert!(!is_zero(&buf), "len {len}: byte {at} missed");
            buf[at] = 0;
        }
    }
}

/// Device content: cluster `c` has, in block `b`, one byte set at `SPOTS[(c + b) % 5]`,
/// except every fourth block, which is all zero. The device size is odd so its last block
/// is partial and carries data too.
fn device(size: usize) -> Vec<u8> {
    let mut d = vec![0u8; size];
    for (n, block) in d.chunks_mut(BLOCK).enumerate() {
        if n % 4 == 3 {
            continue;
        }
        let spot = SPOTS[n % SPOTS.len()].min(block.len() - 1);
        block[spot] = (n as u8) | 1;
    }
    let last = size - 1;
    d[last] = 0xee;
    d
}

#[derive(Clone, Copy, Debug)]
enum Path {
    Copy,
    Shared,
    InPlace,
}

fn write(path: Path, disk: &[u8]) -> Vec<u8> {
    fn fill<W: std::io::Write>(w: &mut Writer<W>, disk: &[u8], shared: bool) {
        let id = w.register_device("drive-scsi0", disk.len() as u64).unwrap();
        // Out of order, as a live backup delivers clusters.
        let count = disk.len().div_ceil(CLUSTER_SIZE) as u64;
        let mut order: Vec<u64> = (0..count).rev().collect();
        order.rotate_left(count as usize / 3);
        for c in order {
            let start = c as usize * CLUSTER_SIZE;
            let data = &disk[start..(start + CLUSTER_SIZE).min(disk.len())];
            if shared {
                w.write_cluster_shared(id, c, &Bytes::copy_from_slice(data))
                    .unwrap();
            } else {
                w.write_cluster(id, c, data).unwrap();
            }
        }
    }
    match path {
        Path::Copy | Path::Shared => {
            let mut w = Writer::with_identity(Vec::new(), [3; 16], Some(1));
            fill(&mut w, disk, matches!(path, Path::Shared));
            w.finish().unwrap().0
        }
        Path::InPlace => {
            let mut w = Writer::with_identity_in_place(Cursor::new(Vec::new()), [3; 16], Some(1));
            fill(&mut w, disk, true);
            w.finish().unwrap().0.into_inner()
        }
    }
}

fn read_back(archive: &[u8], size: usize) -> Vec<u8> {
    let mut out = vec![0u8; size];
    let mut seen = 0;
    let mut r = Reader::new(archive).unwrap();
    while let Some(extent) = r.next_extent().unwrap() {
        for c in extent.clusters() {
            let start = c.device_offset() as usize;
            let end = (start + CLUSTER_SIZE).min(size);
            c.expand_into(&mut out[start..end]);
            seen += 1;
        }
    }
    r.finish().unwrap();
    assert_eq!(seen, size.div_ceil(CLUSTER_SIZE), "every cluster once");
    out
}

#[test]
fn blocks_zero_but_for_one_byte_are_kept_on_every_path() {
    // 5 clusters and 3 blocks and 123 bytes: the last block is partial.
    let size = 5 * CLUSTER_SIZE + 3 * BLOCK + 123;
    let disk = device(size);
    for path in [Path::Copy, Path::Shared, Path::InPlace] {
        let archive = write(path, &disk);
        let back = read_back(&archive, size);
        if let Some(at) = back.iter().zip(&disk).position(|(a, b)| a != b) {
            panic!(
                "{path:?}: byte {at} (block {}, offset {} in it) reads {:#x}, wrote {:#x}",
                at / BLOCK,
                at % BLOCK,
                back[at],
                disk[at]
            );
        }
    }
}

#[test]
fn only_truly_zero_blocks_are_left_out() {
    let size = 2 * CLUSTER_SIZE;
    let disk = device(size);
    let archive = write(Path::Copy, &disk);
    let mut r = Reader::new(&archive[..]).unwrap();
    while let Some(extent) = r.next_extent().unwrap() {
        for c in extent.clusters() {
            for b in 0..16 {
                let n = c.cluster as usize * 16 + b;
                let start = n * BLOCK;
                let zero = disk[start..start + BLOCK].iter().all(|&x| x == 0);
                assert_eq!(
                    c.block(b).is_none(),
                    zero,
                    "block {n}: stored={} zero={zero}",
                    c.block(b).is_some()
                );
            }
        }
    }
    r.finish().unwrap();
}

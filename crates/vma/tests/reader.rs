//! Round trips, tolerance of non-Proxmox layouts, every corruption class, and the index.

mod common;
use common::*;
use std::io::{Cursor, Read, Seek, SeekFrom};
use vmdump_vma::{Error, ErrorKind, Index, Piece, Reader};

fn sample() -> (Vec<Vec<u8>>, Vec<u8>) {
    let imgs = vec![
        mixed_image(1, 540_672),
        mixed_image(2, 5 * CS),
        mixed_image(3, 4097),
    ];
    let a = write_images(
        &["drive-efidisk0", "drive-scsi0", "drive-scsi1"],
        &imgs,
        &[
            ("qemu-server.conf", b"memory: 512\n"),
            ("qemu-server.fw", b"[OPTIONS]\n"),
        ],
        11,
    );
    (imgs, a)
}

#[test]
fn round_trip_three_devices_shuffled() {
    let (imgs, a) = sample();
    let (h, got) = read_all(&a).unwrap();
    assert_eq!(h.uuid, [0x42; 16]);
    assert_eq!(h.ctime, 1_700_000_000);
    assert_eq!(h.configs.len(), 2);
    assert_eq!(h.config("qemu-server.fw").unwrap().data, b"[OPTIONS]\n");
    for (i, img) in imgs.iter().enumerate() {
        assert_eq!(sha256(&got[i]), sha256(img), "device {i}");
    }
}

#[test]
fn round_trip_through_a_pipe_reader() {
    // A reader that hands out at most 1000 bytes per call, like a pipe.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(1000).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let (imgs, a) = sample();
    let r = Reader::new(Trickle(&a)).unwrap();
    let mut img = vec![0u8; imgs[0].len()];
    let stats = r
        .for_each_cluster(|_, c| {
            if c.dev_id == 1 {
                let s = c.cluster as usize * CS;
                let e = (s + CS).min(img.len());
                c.expand_into(&mut img[s..e]);
            }
            Ok::<_, Error>(())
        })
        .unwrap();
    assert_eq!(sha256(&img), sha256(&imgs[0]));
    assert_eq!(stats.bytes_read, a.len() as u64);
    assert_eq!(stats.devices[1].clusters, 9);
}

#[test]
fn index_reads_any_offset() {
    let (imgs, a) = sample();
    let mut cur = Cursor::new(&a);
    let idx = Index::build(&mut cur).unwrap();
    assert_eq!(idx.header().devices.len(), 3);
    for (k, img) in imgs.iter().enumerate() {
        let dev = idx.header().devices[k].id;
        let mut r = idx.device_reader(Cursor::new(&a), dev).unwrap();
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(sha256(&all), sha256(img));
        let cases = [
            (0u64, 10usize),
            (4095, 3),
            (65530, 20),
            (img.len() as u64 - 7, 7),
        ];
        for &(off, len) in cases.iter().filter(|(o, l)| *o as usize + l <= img.len()) {
            r.seek(SeekFrom::Start(off)).unwrap();
            let mut b = vec![0u8; len];
            r.read_exact(&mut b).unwrap();
            assert_eq!(&b[..], &img[off as usize..off as usize + len]);
        }
    }
}

#[test]
fn hand_built_59_slot_extents_and_other_padding() {
    // 2 devices; all 59 slots used; configs in reverse blob order; names before configs;
    // padding (used/512+1)*512; one extent per device plus a mixed one.
    let d1 = mixed_image(7, 70 * CS);
    let d2 = pseudo_random(8, 3 * CS + 100);
    let mut hand = Hand::new(vec![
        ("drive-a".into(), d1.len() as u64),
        ("drive-b".into(), d2.len() as u64),
    ]);
    hand.configs.push(("second.conf".into(), b"2".to_vec()));
    let cl = |img: &[u8], c: usize| {
        let mut v = vec![0u8; CS];
        let s = c * CS;
        let e = (s + CS).min(img.len());
        v[..e - s].copy_from_slice(&img[s..e]);
        v
    };
    let slot = |dev, img: &[u8], c: usize| {
        let data = cl(img, c);
        Slot {
            dev,
            cluster: c as u32,
            mask: mask_of(&data),
            data,
        }
    };
    hand.extents
        .push((0..59).map(|c| slot(1, &d1, c)).collect());
    hand.extents.push((0..4).map(|c| slot(2, &d2, c)).collect());
    hand.extents
        .push((59..70).rev().map(|c| slot(1, &d1, c)).collect());
    // a slot with dev_id 0 in the middle is skipped
    let a = hand.build();
    let (h, imgs) = read_all(&a).unwrap();
    assert_eq!(h.configs[0].name, "qemu-server.conf");
    assert_eq!(h.configs[1].name, "second.conf");
    assert_eq!(sha256(&imgs[0]), sha256(&d1));
    assert_eq!(sha256(&imgs[1]), sha256(&d2));
    let idx = Index::build(&mut Cursor::new(&a)).unwrap();
    assert_eq!(idx.extent_count(), 3);
}

fn expect_err(a: &[u8]) -> Error {
    match read_all(a) {
        Ok(_) => panic!("corrupt archive was accepted"),
        Err(e) => e,
    }
}

fn header_size(a: &[u8]) -> usize {
    u32::from_be_bytes(a[56..60].try_into().unwrap()) as usize
}

#[test]
fn corrupt_header_md5() {
    let (_, mut a) = sample();
    a[12288 + 5] ^= 1;
    let e = expect_err(&a);
    assert!(matches!(e, Error::HeaderChecksum { .. }), "{e}");
    // Both sums in hex: the stored field, and the MD5 of the header with that field zeroed.
    let hs = header_size(&a);
    let mut h = a[..hs].to_vec();
    h[32..48].fill(0);
    let computed: [u8; 16] = {
        use md5::Digest;
        md5::Md5::digest(&h).into()
    };
    assert_eq!(
        e.to_string(),
        format!(
            "vma header checksum mismatch (stored {}, computed {})",
            hex::encode(&a[32..48]),
            hex::encode(computed)
        )
    );
    let (_, mut a) = sample();
    a[0] = b'X';
    assert!(matches!(expect_err(&a), Error::BadMagic { .. }));
    let (_, mut a) = sample();
    a[7] = 2;
    reseal_header(&mut a);
    assert!(matches!(
        expect_err(&a),
        Error::UnsupportedVersion { version: 2 }
    ));
}

#[test]
fn corrupt_extent_md5() {
    let (_, mut a) = sample();
    let hs = header_size(&a);
    a[hs + 45] ^= 0x10;
    let e = expect_err(&a);
    assert_eq!(
        e.to_string(),
        format!("extent 0 at offset {hs}: header checksum mismatch")
    );
    assert_eq!(e.kind(), ErrorKind::Corrupt);
}

#[test]
fn corrupt_extent_uuid() {
    let (_, mut a) = sample();
    let hs = header_size(&a);
    a[hs + 8] = 0x43;
    reseal_extent(&mut a[hs..hs + 512]);
    let e = expect_err(&a);
    assert!(matches!(e, Error::ExtentUuid { index: 0, .. }), "{e}");
    assert!(
        e.to_string()
            .contains("does not match archive uuid 42424242-"),
        "{e}"
    );
}

#[test]
fn corrupt_extent_reserved() {
    let (_, mut a) = sample();
    let hs = header_size(&a);
    a[hs + 5] = 1;
    reseal_extent(&mut a[hs..hs + 512]);
    let e = expect_err(&a);
    assert_eq!(
        e.to_string(),
        format!("extent 0 at offset {hs}: reserved field is 0x0001, expected 0")
    );
}

#[test]
fn corrupt_block_count() {
    let (_, mut a) = sample();
    let hs = header_size(&a);
    let bc = u16::from_be_bytes([a[hs + 6], a[hs + 7]]);
    a[hs + 6..hs + 8].copy_from_slice(&(bc - 1).to_be_bytes());
    reseal_extent(&mut a[hs..hs + 512]);
    let e = expect_err(&a);
    assert!(
        e.to_string().contains(&format!(
            "block_count is {} but the slot masks add up to {bc} blocks",
            bc - 1
        )),
        "{e}"
    );
}

fn one_dev_hand(slots: Vec<Vec<(u32, u16)>>) -> Vec<u8> {
    let mut hand = Hand::new(vec![("drive-scsi0".into(), 3 * CS as u64 + 10)]);
    for ext in slots {
        hand.extents.push(
            ext.into_iter()
                .map(|(c, m)| Slot {
                    dev: 1,
                    cluster: c,
                    mask: m,
                    data: vec![0x5A; CS],
                })
                .collect(),
        );
    }
    hand.build()
}

#[test]
fn missing_cluster_is_detected() {
    let a = one_dev_hand(vec![vec![(0, 0xFFFF), (1, 0)], vec![(3, 1)]]);
    let e = expect_err(&a);
    assert_eq!(
        e.to_string(),
        "device 1 (drive-scsi0): missing cluster 2 (1 of 4 clusters missing)"
    );
}

#[test]
fn duplicate_cluster_is_detected() {
    let a = one_dev_hand(vec![
        vec![(0, 0xFFFF), (1, 0), (2, 0)],
        vec![(3, 1), (1, 3)],
    ]);
    let hs = header_size(&a);
    let second = hs + 512 + 16 * BS;
    let e = expect_err(&a);
    assert_eq!(
        e.to_string(),
        format!("device 1 (drive-scsi0): duplicate cluster 1 in extent 1 at offset {second}")
    );
}

#[test]
fn out_of_range_cluster_is_detected() {
    let a = one_dev_hand(vec![vec![(0, 0), (1, 0), (2, 0), (4, 0)]]);
    let e = expect_err(&a);
    assert!(
        e.to_string().starts_with(
            "device 1 (drive-scsi0): cluster 4 is out of range (device has 4 clusters) in extent 0"
        ),
        "{e}"
    );
    // a block past the device end inside the last cluster: only 10 bytes in cluster 3
    let a = one_dev_hand(vec![vec![(0, 0), (1, 0), (2, 0), (3, 0x0003)]]);
    let e = expect_err(&a);
    assert!(
        matches!(
            e,
            Error::BlockPastEnd {
                cluster: 3,
                block: 1,
                ..
            }
        ),
        "{e}"
    );
    // unknown device id
    let mut hand = Hand::new(vec![("d".into(), 4096)]);
    hand.extents.push(vec![Slot {
        dev: 9,
        cluster: 0,
        mask: 0,
        data: vec![],
    }]);
    let e = expect_err(&hand.build());
    assert!(e.to_string().contains("unknown device id 9"), "{e}");
}

#[test]
fn truncated_archives_are_detected() {
    let a = write_images(
        &["drive-scsi0"],
        &[mixed_image(4, 100 * CS)],
        &[("a", b"b")],
        3,
    );
    let hs = header_size(&a);
    // inside the header
    let e = expect_err(&a[..hs - 1]);
    assert!(matches!(e, Error::TruncatedHeader { .. }), "{e}");
    // inside an extent header
    let e = expect_err(&a[..hs + 100]);
    assert!(e.to_string().contains("truncated archive: extent 0"), "{e}");
    // inside extent data
    let e = expect_err(&a[..a.len() - 1]);
    assert!(matches!(e, Error::TruncatedExtent { .. }), "{e}");
    // exactly at an extent boundary: clean EOF, but clusters are missing
    let first_len = 512 + BS * u16::from_be_bytes([a[hs + 6], a[hs + 7]]) as usize;
    let e = expect_err(&a[..hs + first_len]);
    assert!(matches!(e, Error::MissingCluster { .. }), "{e}");
    // index sees truncation too
    let e = Index::build(&mut Cursor::new(&a[..a.len() - 4096])).unwrap_err();
    assert!(matches!(e, Error::TruncatedExtent { .. }), "{e}");
}

#[test]
fn partial_index_serves_what_a_truncated_archive_holds_and_fails_the_rest() {
    let img = mixed_image(4, 100 * CS);
    let a = write_images(
        &["drive-scsi0"],
        std::slice::from_ref(&img),
        &[("a", b"b")],
        3,
    );
    let full = Index::build_partial(&mut Cursor::new(&a)).unwrap();
    assert_eq!(full.truncated_at(), None);
    assert!(full.is_complete());
    // Cut inside the last extent: its clusters and only those are missing.
    let cut = &a[..a.len() - 4096];
    let idx = Index::build_partial(&mut Cursor::new(cut)).unwrap();
    let at = idx.truncated_at().expect("truncation found");
    assert!(at < cut.len() as u64);
    assert!(!idx.is_complete());
    let dev = idx.header().devices[0].id;
    let (mut ok, mut missing) = (0, 0);
    for c in 0..100u64 {
        let mut b = vec![0u8; CS];
        match idx.read_at(&mut Cursor::new(cut), dev, c * CS as u64, &mut b) {
            Ok(n) => {
                assert_eq!(n, CS);
                assert_eq!(&b[..], &img[c as usize * CS..(c as usize + 1) * CS]);
                ok += 1;
            }
            Err(e) => {
                assert!(
                    matches!(e, Error::MissingCluster { first, .. } if first == c),
                    "{e}"
                );
                missing += 1;
            }
        }
    }
    assert!(ok > 0 && missing > 0, "ok {ok} missing {missing}");
    // Allocation reports missing clusters as data (never as a zero hole).
    let alloc = idx.allocation(dev, 0, img.len() as u64).unwrap();
    assert_eq!(alloc.iter().map(|r| r.0).sum::<u64>(), img.len() as u64);
    let mut pos = 0usize;
    for (len, zero) in alloc {
        if zero {
            assert!(img[pos..pos + len as usize].iter().all(|b| *b == 0));
        }
        pos += len as usize;
    }
}

#[test]
fn map_merges_pieces_and_covers_the_request() {
    let (imgs, a) = sample();
    let idx = Index::build(&mut Cursor::new(&a)).unwrap();
    for (k, img) in imgs.iter().enumerate() {
        let dev = idx.header().devices[k].id;
        let pieces = idx.map(dev, 100, img.len() as u64).unwrap();
        assert_eq!(
            pieces.iter().map(|p| p.len()).sum::<u64>(),
            img.len() as u64 - 100
        );
        // Adjacent pieces never merge further.
        for w in pieces.windows(2) {
            if let (
                Piece::Data {
                    archive_offset: x,
                    len,
                },
                Piece::Data {
                    archive_offset: y, ..
                },
            ) = (w[0], w[1])
            {
                assert_ne!(x + len, y);
            }
            assert!(!matches!(
                (w[0], w[1]),
                (Piece::Zero { .. }, Piece::Zero { .. })
            ));
        }
    }
}

#[test]
fn hostile_header_sizes_are_bounded() {
    let (_, mut a) = sample();
    a[56..60].copy_from_slice(&u32::MAX.to_be_bytes());
    let e = expect_err(&a);
    assert!(e.to_string().contains("exceeds the limit"), "{e}");
    let (_, mut a) = sample();
    a[56..60].copy_from_slice(&12288u32.to_be_bytes());
    assert!(matches!(expect_err(&a), Error::BadHeader { .. }));
    // huge device size: streaming reader does not allocate per announced cluster
    let mut hand = Hand::new(vec![("huge".into(), 1 << 48)]);
    hand.extents.push(vec![Slot {
        dev: 1,
        cluster: u32::MAX,
        mask: 0,
        data: vec![],
    }]);
    let built = hand.build();
    let r = Reader::new(&built[..]).unwrap();
    let e = r.for_each_cluster(|_, _| Ok::<_, Error>(())).unwrap_err();
    assert!(e.to_string().contains("missing cluster 0"), "{e}");
    let e = Index::build(&mut Cursor::new(hand.build())).unwrap_err();
    assert!(e.to_string().contains("more than an archive"), "{e}");
}

#[test]
fn cluster_runs_cover_the_device_once_in_block_runs() {
    // One cluster: blocks 0-1 data, 2-4 zero, 5 data, the rest zero; the device ends
    // 100 bytes into block 5.
    let size = 5 * 4096 + 100;
    let mut img = vec![0u8; size];
    img[..2 * 4096].fill(7);
    img[5 * 4096..].fill(9);
    let a = write_images(&["d"], std::slice::from_ref(&img), &[], 1);
    let mut r = Reader::new(&a[..]).unwrap();
    let ext = r.next_extent().unwrap().unwrap();
    let c = ext.clusters().next().unwrap();
    let runs: Vec<_> = c.runs(size as u64).collect();
    let shape: Vec<_> = runs
        .iter()
        .map(|r| (r.offset, r.len, r.data.clone()))
        .collect();
    assert_eq!(
        shape,
        [
            (0, 8192, Some(0..8192)),
            (8192, 3 * 4096, None),
            (5 * 4096, 100, Some(8192..8292)),
        ]
    );
    let mut back = vec![0u8; size];
    for run in &runs {
        if let Some(d) = &run.data {
            back[run.offset as usize..][..run.len].copy_from_slice(&c.data()[d.clone()]);
        }
    }
    assert_eq!(back, img);
}

/// A device whose clusters have every kind of block mask (none, all, first, last, every
/// other, a run in the middle), filled with non-zero bytes where set.
fn masked_image(masks: &[u16]) -> Vec<u8> {
    let mut img = vec![0u8; masks.len() * CS];
    for (c, m) in masks.iter().enumerate() {
        for b in 0..16 {
            if m & (1 << b) != 0 {
                let at = c * CS + b * BS;
                let data = pseudo_random((c * 16 + b) as u64 + 1, BS);
                img[at..at + BS].copy_from_slice(&data);
                img[at] = 0x80 | b as u8;
            }
        }
    }
    img
}

#[test]
fn a_clusters_blocks_zero_test_and_data_offset_agree_with_the_device() {
    let masks = [0u16, 0xFFFF, 0x0001, 0x8000, 0x5555, 0x0FF0, 0, 0x00F3];
    let img = masked_image(&masks);
    let a = write_images(&["drive-scsi0"], std::slice::from_ref(&img), &[], 9);
    let mut r = Reader::new(&a[..]).unwrap();
    let mut seen = 0;
    while let Some(e) = r.next_extent().unwrap() {
        let bytes = e.bytes().clone();
        assert_eq!(e.block_count() * BS, bytes.len());
        let mut at = 0;
        for c in e.clusters() {
            let m = masks[c.cluster as usize];
            assert_eq!(c.mask, m, "cluster {}", c.cluster);
            assert_eq!(c.is_zero(), m == 0, "cluster {}", c.cluster);
            // The cluster's data is the next piece of the extent's data.
            assert_eq!(c.data_offset(), at, "cluster {}", c.cluster);
            assert!(bytes[at..at + c.data().len()] == *c.data());
            at += c.data().len();
            let base = c.cluster as usize * CS;
            let mut listed = Vec::new();
            for b in 0..16 {
                let want = &img[base + b * BS..base + (b + 1) * BS];
                match c.block(b) {
                    Some(d) => {
                        assert!(
                            m & (1 << b) != 0 && d == want,
                            "cluster {} block {b}",
                            c.cluster
                        );
                        listed.push(b);
                    }
                    None => assert_eq!(m & (1 << b), 0, "cluster {} block {b}", c.cluster),
                }
            }
            assert!(c.block(16).is_none());
            assert_eq!(c.blocks().map(|(b, _)| b).collect::<Vec<_>>(), listed);
            seen += 1;
        }
        assert_eq!(at, bytes.len());
    }
    r.finish().unwrap();
    assert_eq!(seen, masks.len());
}

#[test]
fn extents_and_statistics_say_where_and_how_much() {
    // Two devices over three extents (58 clusters each).
    let imgs = vec![mixed_image(5, 100 * CS), mixed_image(6, 20 * CS + 100)];
    let a = write_images(&["drive-scsi0", "drive-scsi1"], &imgs, &[("a", b"b")], 4);
    let mut r = Reader::new(&a[..]).unwrap();
    let hs = header_size(&a) as u64;
    assert_eq!(r.offset(), hs);
    assert_eq!(r.stats().bytes_read, hs);
    let mut index = 0;
    loop {
        let before = r.offset();
        let Some(e) = r.next_extent().unwrap() else {
            break;
        };
        assert_eq!((e.index(), e.offset()), (index, before));
        let at = before as usize;
        assert_eq!(&a[at..at + 4], b"VMAE");
        let count = u16::from_be_bytes([a[at + 6], a[at + 7]]) as usize;
        assert_eq!(e.block_count(), count);
        index += 1;
        assert_eq!(r.offset(), before + 512 + (count * BS) as u64);
        assert_eq!(r.stats().extents, index);
    }
    assert_eq!(index, 3);
    assert_eq!(r.offset(), a.len() as u64);
    let stats = r.finish().unwrap();
    assert_eq!((stats.extents, stats.bytes_read), (3, a.len() as u64));
    for (i, img) in imgs.iter().enumerate() {
        let clusters = img.len().div_ceil(CS) as u64;
        let stored =
            img.chunks(BS).filter(|b| b.iter().any(|&x| x != 0)).count() as u64 * BS as u64;
        let d = &stats.devices[i + 1];
        assert_eq!(
            (d.clusters, d.stored_bytes, d.zero_bytes),
            (clusters, stored, clusters * CS as u64 - stored),
            "device {}",
            i + 1
        );
    }
    // The same through `for_each_cluster`.
    let mut n = 0;
    let again = Reader::new(&a[..])
        .unwrap()
        .for_each_cluster(|_, _| {
            n += 1;
            Ok::<_, Error>(())
        })
        .unwrap();
    assert_eq!(again, stats);
    assert_eq!(n, 121);
}

/// A source that fails every other call with `Interrupted`, hands out at most 1000 bytes per
/// call, and fails for good (EIO) after `fail_after` bytes.
struct Flaky<'a> {
    data: &'a [u8],
    pos: usize,
    fail_after: usize,
    calls: usize,
}

impl Read for Flaky<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.calls += 1;
        if self.calls % 2 == 1 {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        if self.pos >= self.fail_after {
            return Err(std::io::Error::from_raw_os_error(5));
        }
        let n = buf
            .len()
            .min(1000)
            .min(self.data.len() - self.pos)
            .min(self.fail_after - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[test]
fn interrupted_reads_are_retried_and_failed_ones_say_where() {
    let (imgs, a) = sample();
    let flaky = |fail_after| Flaky {
        data: &a,
        pos: 0,
        fail_after,
        calls: 0,
    };
    let mut r = Reader::new(flaky(usize::MAX)).unwrap();
    let mut got: Vec<Vec<u8>> = imgs.iter().map(|i| vec![0; i.len()]).collect();
    while let Some(e) = r.next_extent().unwrap() {
        for c in e.clusters() {
            let img = &mut got[usize::from(c.dev_id) - 1];
            let start = c.device_offset() as usize;
            let end = (start + CS).min(img.len());
            c.expand_into(&mut img[start..end]);
        }
    }
    r.finish().unwrap();
    assert!(got == imgs, "images differ after interrupted reads");

    let hs = header_size(&a);
    let io_offset = |fail_after| match Reader::new(flaky(fail_after)).map(|mut r| {
        while r.next_extent()?.is_some() {}
        Ok(())
    }) {
        Err(Error::Io { offset, source }) | Ok(Err(Error::Io { offset, source })) => {
            assert_eq!(source.raw_os_error(), Some(5));
            offset
        }
        other => panic!("not an i/o error: {other:?}"),
    };
    // In the fixed header, in the blob buffer, in an extent header, in its data.
    assert_eq!(io_offset(100), 0);
    assert_eq!(io_offset(12288 + 10), 12288);
    assert_eq!(io_offset(hs + 10), hs as u64);
    assert_eq!(io_offset(hs + 512 + 10), hs as u64 + 512);
}

#[test]
fn short_or_foreign_starts_are_told_apart() {
    let (_, a) = sample();
    let hs = header_size(&a);
    // Not an archive at all (a few bytes of text): bad magic, not "truncated".
    let e = expect_err(b"hello, this is not an archive\n");
    assert!(matches!(e, Error::BadMagic { .. }), "{e}");
    // Too short to tell: truncated.
    let e = expect_err(b"VM");
    assert!(
        matches!(
            e,
            Error::TruncatedHeader {
                got: 2,
                expected: 12288
            }
        ),
        "{e}"
    );
    // An archive cut inside the fixed part, and inside the blob buffer.
    let e = expect_err(&a[..5000]);
    assert!(
        matches!(
            e,
            Error::TruncatedHeader {
                got: 5000,
                expected: 12288
            }
        ),
        "{e}"
    );
    let e = expect_err(&a[..12288 + 100]);
    assert!(
        matches!(e, Error::TruncatedHeader { got: 12388, expected } if expected as usize == hs),
        "{e}"
    );
    // Cut inside the first extent's data: how much was expected and how much came.
    let count = u16::from_be_bytes([a[hs + 6], a[hs + 7]]) as u64;
    let e = expect_err(&a[..hs + 512 + 3 * BS + 5]);
    assert!(
        matches!(
            e,
            Error::TruncatedExtent { index: 0, offset, expected, got }
                if offset as usize == hs
                    && expected == 512 + count * BS as u64
                    && got == 512 + 3 * BS as u64 + 5
        ),
        "{e}"
    );
}

#[test]
fn finish_for_checks_only_the_devices_asked_for() {
    // Device 1 has 30 clusters, all in the first extent; device 2 has 100.
    let imgs = [mixed_image(7, 30 * CS), mixed_image(8, 100 * CS)];
    let mut w = vmdump_vma::Writer::with_identity(Vec::new(), [0x42; 16], Some(1));
    let d1 = w.register_device("drive-scsi0", 30 * CS as u64).unwrap();
    let d2 = w.register_device("drive-scsi1", 100 * CS as u64).unwrap();
    for c in 0..30 {
        w.write_cluster(d1, c, &imgs[0][c as usize * CS..(c as usize + 1) * CS])
            .unwrap();
    }
    for c in 0..100 {
        w.write_cluster(d2, c, &imgs[1][c as usize * CS..(c as usize + 1) * CS])
            .unwrap();
    }
    let a = w.finish().unwrap().0;
    fn first_extent(a: &[u8]) -> Reader<&[u8]> {
        let mut r = Reader::new(a).unwrap();
        r.next_extent().unwrap().unwrap();
        r
    }
    // After the first extent (58 clusters: device 1's 30 and 28 of device 2).
    let stats = first_extent(&a).finish_for(|id| id == 1).unwrap();
    assert_eq!((stats.extents, stats.devices[1].clusters), (1, 30));
    assert_eq!(stats.devices[2].clusters, 28);
    let e = first_extent(&a).finish_for(|_| true).unwrap_err();
    assert!(
        matches!(
            e,
            Error::MissingCluster {
                dev_id: 2,
                first: 28,
                missing: 72,
                cluster_count: 100,
                ..
            }
        ),
        "{e}"
    );
}

//! The random-access index: allocation and map against a model of the image, cluster
//! locations against the archive bytes, seeks, truncation figures and the bound on the
//! clusters a header may announce.

mod common;
use common::*;
use std::io::{Cursor, ErrorKind as IoKind, Read, Seek, SeekFrom};
use vmdump_vma::{Error, Index, Piece, Reader};

/// A device of 7 clusters and 5000 bytes: data, zero blocks and zero clusters.
fn sample() -> (Vec<u8>, Vec<u8>) {
    let img = mixed_image(21, 7 * CS + 5000);
    let a = write_images(
        &["drive-scsi0"],
        std::slice::from_ref(&img),
        &[("a", b"b")],
        5,
    );
    (img, a)
}

/// Allocation as the index must report it: 4 KiB blocks of the image, zero when the
/// whole block is, clipped to `[off, off + len)` and the image end, merged.
fn model_allocation(img: &[u8], off: u64, len: u64) -> Vec<(u64, bool)> {
    let end = (off + len).min(img.len() as u64);
    let mut out: Vec<(u64, bool)> = Vec::new();
    let mut pos = off;
    while pos < end {
        let b = pos / BS as u64 * BS as u64;
        let block_end = (b + BS as u64).min(img.len() as u64);
        let zero = img[b as usize..block_end as usize].iter().all(|&x| x == 0);
        let n = (b + BS as u64).min(end) - pos;
        match out.last_mut() {
            Some((l, z)) if *z == zero => *l += n,
            _ => out.push((n, zero)),
        }
        pos += n;
    }
    out
}

#[test]
fn allocation_and_map_follow_the_blocks_to_the_byte() {
    let (img, a) = sample();
    let idx = Index::build(&mut Cursor::new(&a)).unwrap();
    let size = img.len() as u64;
    for (off, len) in [
        (0, size),
        (1, 10),
        (4095, 2),
        (4096, 4096),
        (3 * CS as u64 - 7, 9000),
        (size - 5000, 100_000),
        (size - 1, 1),
        (size, 10),
        (100, 0),
    ] {
        let alloc = idx.allocation(1, off, len).unwrap();
        assert_eq!(alloc, model_allocation(&img, off, len), "{off}+{len}");
        let pieces = idx.map(1, off, len).unwrap();
        let mut pos = off as usize;
        for p in &pieces {
            assert!(!p.is_empty());
            let want = &img[pos..pos + p.len() as usize];
            match *p {
                Piece::Zero { len } => assert!(want.iter().all(|&x| x == 0), "{off}+{len}"),
                Piece::Data {
                    archive_offset,
                    len,
                } => assert!(
                    a[archive_offset as usize..(archive_offset + len) as usize] == *want,
                    "{off}+{len} at {archive_offset}"
                ),
            }
            pos += p.len() as usize;
        }
        assert_eq!(pos as u64, (off + len).min(size));
        // The zero pieces are the allocation's zero runs, merged the same way.
        let zeros: Vec<u64> = pieces
            .iter()
            .filter_map(|p| matches!(p, Piece::Zero { .. }).then_some(p.len()))
            .collect();
        let alloc_zeros: Vec<u64> = alloc.iter().filter(|r| r.1).map(|r| r.0).collect();
        assert_eq!(zeros, alloc_zeros, "{off}+{len}");
    }
    assert!(Piece::Zero { len: 0 }.is_empty());
    assert!(Piece::Data {
        archive_offset: 9,
        len: 0
    }
    .is_empty());
    assert!(matches!(idx.allocation(2, 0, 1), Err(Error::Usage(_))));
    assert!(matches!(idx.map(9, 0, 1), Err(Error::Usage(_))));
}

#[test]
fn clusters_are_found_where_the_archive_stores_them() {
    let (img, a) = sample();
    let idx = Index::build(&mut Cursor::new(&a)).unwrap();
    let mut padded = img.clone();
    padded.resize(8 * CS, 0);
    for c in 0..8usize {
        let data = &padded[c * CS..(c + 1) * CS];
        let (mask, off) = idx.cluster(1, c as u64).expect("stored");
        assert_eq!(mask, mask_of(data), "cluster {c}");
        let mut at = off as usize;
        for b in 0..16 {
            if mask & (1 << b) != 0 {
                assert!(
                    a[at..at + BS] == data[b * BS..(b + 1) * BS],
                    "cluster {c} block {b}"
                );
                at += BS;
            }
        }
    }
    assert_eq!(idx.cluster(1, 8), None);
    assert_eq!(idx.cluster(2, 0), None);
}

#[test]
fn a_device_reader_seeks_like_a_file_of_the_device_size() {
    let (img, a) = sample();
    let idx = Index::build(&mut Cursor::new(&a)).unwrap();
    let size = img.len() as u64;
    let mut r = idx.device_reader(Cursor::new(&a), 1).unwrap();
    assert_eq!(r.size(), size);
    assert_eq!(r.seek(SeekFrom::End(-10)).unwrap(), size - 10);
    let mut b = [0u8; 10];
    r.read_exact(&mut b).unwrap();
    assert_eq!(b, img[img.len() - 10..]);
    assert_eq!(r.read(&mut b).unwrap(), 0, "end of the device");
    assert_eq!(
        r.seek(SeekFrom::Current(-(CS as i64))).unwrap(),
        size - CS as u64
    );
    r.read_exact(&mut b).unwrap();
    assert_eq!(b, img[img.len() - CS..][..10]);
    assert_eq!(r.seek(SeekFrom::Current(5)).unwrap(), size - CS as u64 + 15);
    assert_eq!(r.seek(SeekFrom::Start(size + 100)).unwrap(), size + 100);
    assert_eq!(r.read(&mut b).unwrap(), 0, "past the end");
    for bad in [
        SeekFrom::End(-(size as i64) - 1),
        SeekFrom::Current(-(size as i64) - 101),
    ] {
        assert_eq!(r.seek(bad).unwrap_err().kind(), IoKind::InvalidInput);
    }
    assert_eq!(r.seek(SeekFrom::End(-(size as i64))).unwrap(), 0);
    assert!(matches!(
        idx.device_reader(Cursor::new(&a), 3),
        Err(Error::Usage(_))
    ));
}

/// The offsets of the extents of an archive, in order.
fn extent_offsets(a: &[u8]) -> Vec<u64> {
    let mut r = Reader::new(a).unwrap();
    let mut v = Vec::new();
    while let Some(e) = r.next_extent().unwrap() {
        v.push(e.offset());
    }
    v
}

#[test]
fn truncation_is_found_where_it_is_and_missing_runs_are_counted() {
    let img = mixed_image(22, 150 * CS);
    let a = write_images(
        &["drive-scsi0"],
        std::slice::from_ref(&img),
        &[("a", b"b")],
        6,
    );
    let offs = extent_offsets(&a);
    assert_eq!(offs.len(), 3);
    assert_eq!(
        Index::build(&mut Cursor::new(&a)).unwrap().extent_count(),
        3
    );
    let last = offs[2];
    let tail = a.len() as u64 - last;
    // In the last extent's header, then in its data: both cut at that extent.
    for (cut, got) in [(last + 100, 100), (last + 512 + 4096, 512 + 4096)] {
        let part = &a[..cut as usize];
        let idx = Index::build_partial(&mut Cursor::new(part)).unwrap();
        assert_eq!(idx.truncated_at(), Some(last));
        assert_eq!(idx.extent_count(), 2);
        assert!(!idx.is_complete());
        match Index::build(&mut Cursor::new(part)).unwrap_err() {
            Error::TruncatedExtent {
                index,
                offset,
                expected,
                got: g,
            } => {
                assert_eq!((index, offset, g), (2, last, got));
                assert_eq!(expected, if got == 100 { 512 } else { tail });
            }
            e => panic!("{e}"),
        }
        // Which clusters are missing: those of the last extent, counted as runs.
        let missing: Vec<u64> = (0..150).filter(|&c| idx.cluster(1, c).is_none()).collect();
        assert!(!missing.is_empty() && missing.len() < 58);
        // From each missing cluster, the run of missing clusters it starts (the clusters
        // were written shuffled: some runs are longer than one).
        let mut longest = 0;
        for &first in &missing {
            let run = (first..150).take_while(|c| missing.contains(c)).count() as u64;
            longest = longest.max(run);
            match idx.read_at(&mut Cursor::new(part), 1, first * CS as u64, &mut [0u8; 10]) {
                Err(Error::MissingCluster {
                    dev_id,
                    first: f,
                    missing: n,
                    cluster_count,
                    ..
                }) => assert_eq!((dev_id, f, n, cluster_count), (1, first, run, 150)),
                other => panic!("{other:?}"),
            }
        }
        assert!(longest > 1, "no run of missing clusters to count");
    }
    // Cut at the boundary: no truncated extent, but clusters missing.
    let idx = Index::build_partial(&mut Cursor::new(&a[..last as usize])).unwrap();
    assert_eq!(idx.truncated_at(), None);
    assert!(!idx.is_complete());
    let idx = Index::build_partial(&mut Cursor::new(&a)).unwrap();
    assert!(idx.is_complete());
}

#[test]
fn a_header_may_announce_a_quarter_cluster_per_byte_of_file_and_a_mib_more() {
    // An archive of a header only (a hostile or cut one): the bound is
    // clusters * 8 <= file bytes * 2 + 1 MiB, so the index stays proportional to the file.
    let build = |clusters: u64| Hand::new(vec![("d".into(), clusters * CS as u64)]).build();
    let len = build(1).len() as u64;
    let limit = (2 * len + (1 << 20)) / 8;
    let a = build(limit);
    assert_eq!(a.len() as u64, len);
    let idx = Index::build(&mut Cursor::new(a)).unwrap();
    assert_eq!(idx.header().devices[0].cluster_count(), limit);
    assert!(!idx.is_complete());
    let e = Index::build(&mut Cursor::new(build(limit + 1))).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "invalid vma header: devices announce {} clusters, more than an archive of {len} bytes can hold",
            limit + 1
        )
    );
}

#[test]
fn an_archive_of_more_than_twenty_full_extents_is_indexed() {
    // 1300 clusters of data: 23 extents of 3.7 MiB, 85 MB. The offset check against the
    // 48-bit limit must add the extent's length to its data start, not multiply them
    // (which passes 2^48 from the 21st extent on).
    let img = vec![0x5Au8; 1300 * CS];
    let a = write_images(
        &["drive-scsi0"],
        std::slice::from_ref(&img),
        &[("a", b"b")],
        8,
    );
    let idx = Index::build(&mut Cursor::new(&a)).unwrap();
    assert_eq!(idx.extent_count(), 23);
    let mut b = vec![0u8; 3 * BS];
    let n = idx
        .read_at(&mut Cursor::new(&a), 1, img.len() as u64 - 100, &mut b)
        .unwrap();
    assert_eq!(n, 100);
    assert!(b[..100].iter().all(|&x| x == 0x5A));
}

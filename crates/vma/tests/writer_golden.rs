//! Golden-byte tests of the writer: every expected value here is computed by hand from
//! the format rules (Proxmox vma-writer.c), not read back from our own reader.

mod common;
use common::*;
use md5::Digest;
use vmdump_vma::{Error, ErrorKind, Writer};

const UUID: [u8; 16] = [
    0x5f, 0x1c, 0x4a, 0x2e, 0x8b, 0x3d, 0x4e, 0x7a, 0x9c, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd,
];
const CTIME: i64 = 1_708_300_805;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}
fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}
fn md5_with_zeroed(b: &[u8], field: usize) -> [u8; 16] {
    let mut c = b.to_vec();
    c[field..field + 16].fill(0);
    md5::Md5::digest(&c).into()
}

fn check_fixed_header(a: &[u8], header_size: usize, blob_size: u32) {
    assert_eq!(&a[0..4], b"VMA\0");
    assert_eq!(be32(a, 4), 1);
    assert_eq!(&a[8..24], &UUID);
    assert_eq!(be64(a, 24) as i64, CTIME);
    assert_eq!(be32(a, 48), 12288, "blob_buffer_offset");
    assert_eq!(be32(a, 52), blob_size, "blob_buffer_size");
    assert_eq!(be32(a, 56) as usize, header_size, "header_size");
    assert!(a[60..2044].iter().all(|&b| b == 0), "reserved area");
    assert_eq!(
        &a[32..48],
        &md5_with_zeroed(&a[..header_size], 32),
        "header md5"
    );
}

fn check_extent_header(e: &[u8], block_count: u16, slots: &[(u16, u8, u32)]) {
    assert_eq!(&e[0..4], b"VMAE");
    assert_eq!(&e[4..6], &[0, 0]);
    assert_eq!(u16::from_be_bytes([e[6], e[7]]), block_count);
    assert_eq!(&e[8..24], &UUID);
    for i in 0..59 {
        let got = be64(e, 40 + 8 * i);
        let want = slots
            .get(i)
            .map(|&(m, d, c)| (u64::from(m) << 48) | (u64::from(d) << 32) | u64::from(c))
            .unwrap_or(0);
        assert_eq!(got, want, "slot {i}");
    }
    assert_eq!(&e[24..40], &md5_with_zeroed(&e[..512], 24), "extent md5");
}

#[test]
fn config_only_archive_is_header_plus_one_empty_extent() {
    let mut w = Writer::with_identity(Vec::new(), UUID, Some(CTIME));
    w.add_config("qemu-server.conf", b"abc\n").unwrap();
    let (a, stats) = w.finish().unwrap();
    // name blob at 1 (L=17), data blob at 20 (L=4): used 26, table 512.
    assert_eq!(a.len(), 12800 + 512);
    assert_eq!(stats.bytes_written, 13312);
    assert_eq!(stats.extents, 1);
    check_fixed_header(&a, 12800, 26);
    assert_eq!(be32(&a, 2044), 1);
    assert_eq!(be32(&a, 3068), 20);
    assert_eq!(be32(&a, 2048), 0);
    let mut blob = vec![0u8, 17, 0];
    blob.extend_from_slice(b"qemu-server.conf\0");
    blob.extend_from_slice(&[4, 0]);
    blob.extend_from_slice(b"abc\n");
    assert_eq!(&a[12288..12288 + 26], &blob[..]);
    assert!(a[12288 + 26..12800].iter().all(|&b| b == 0));
    assert!(a[4096..12288].iter().all(|&b| b == 0), "no devices");
    check_extent_header(&a[12800..], 0, &[]);
}

#[test]
fn one_device_540672_bytes_out_of_order() {
    let size = 540_672usize; // 8.25 clusters -> 9 clusters, the last has 4 blocks
    let mut img = vec![0u8; size];
    img[CS + 3 * BS..CS + 4 * BS].fill(0x11); // cluster 1: only block 3
    let rnd = pseudo_random(1, 6 * CS);
    for b in rnd.chunks(BS) {
        assert!(b.iter().any(|&x| x != 0));
    }
    img[2 * CS..8 * CS].copy_from_slice(&rnd); // clusters 2..7 full
    img[8 * CS..].fill(0x22); // cluster 8: 16384 bytes
    let mut w = Writer::with_identity(Vec::new(), UUID, Some(CTIME));
    w.add_config("qemu-server.conf", b"memory: 512\n").unwrap();
    let dev = w.register_device("drive-scsi0", size as u64).unwrap();
    assert_eq!(dev.get(), 1);
    let order = [8u64, 0, 1, 2, 3, 4, 5, 6, 7];
    for c in order {
        let start = c as usize * CS;
        let end = (start + CS).min(size);
        w.write_cluster(dev, c, &img[start..end]).unwrap();
    }
    let (a, stats) = w.finish().unwrap();
    // blobs: name@1 (L=17), data@20 (L=12), devname@34 (L=12) -> used 48, table 512
    check_fixed_header(&a, 12800, 48);
    assert_eq!(be32(&a, 4096 + 32), 34, "devname_ptr");
    assert_eq!(be64(&a, 4096 + 32 + 8), size as u64);
    assert_eq!(&a[12288 + 34..12288 + 48], b"\x0c\x00drive-scsi0\0");
    let block_count = 4 + 1 + 6 * 16; // cluster 8, cluster 0 (zero), cluster 1, 2..7
    assert_eq!(a.len(), 12800 + 512 + block_count * BS);
    let e = &a[12800..];
    check_extent_header(
        e,
        block_count as u16,
        &[
            (0x000F, 1, 8),
            (0, 1, 0),
            (0x0008, 1, 1),
            (0xFFFF, 1, 2),
            (0xFFFF, 1, 3),
            (0xFFFF, 1, 4),
            (0xFFFF, 1, 5),
            (0xFFFF, 1, 6),
            (0xFFFF, 1, 7),
        ],
    );
    let data = &e[512..];
    assert_eq!(&data[..4 * BS], &img[8 * CS..]);
    assert_eq!(&data[4 * BS..5 * BS], &img[CS + 3 * BS..CS + 4 * BS]);
    assert_eq!(&data[5 * BS..], &img[2 * CS..8 * CS]);
    // zero bytes as Proxmox counts them: 16 + 15 + 12 zero blocks
    assert_eq!(stats.devices[0].zero_bytes, (16 + 15 + 12) * BS as u64);
    // and it reads back
    let (_, imgs) = read_all(&a).unwrap();
    assert_eq!(sha256(&imgs[0]), sha256(&img));
}

#[test]
fn at_most_58_clusters_per_extent() {
    let mut w = Writer::with_identity(Vec::new(), UUID, Some(CTIME));
    w.add_config("qemu-server.conf", b"x").unwrap();
    let dev = w.register_device("drive-scsi0", 100 * CS as u64).unwrap();
    for c in 0..100 {
        w.write_zero_cluster(dev, c).unwrap();
    }
    let (a, stats) = w.finish().unwrap();
    assert_eq!(stats.extents, 2);
    assert_eq!(a.len(), 12800 + 512 + 512);
    let s0: Vec<_> = (0..58).map(|c| (0u16, 1u8, c as u32)).collect();
    check_extent_header(&a[12800..13312], 0, &s0);
    let s1: Vec<_> = (58..100).map(|c| (0u16, 1u8, c as u32)).collect();
    check_extent_header(&a[13312..], 0, &s1);
}

#[test]
fn extent_boundaries_with_data() {
    // 116 full clusters: exactly two full extents, no trailing empty extent.
    let img = pseudo_random(9, 116 * CS);
    let mut w = Writer::with_identity(Vec::new(), UUID, Some(CTIME));
    w.add_config("qemu-server.conf", b"x").unwrap();
    let dev = w.register_device("d", img.len() as u64).unwrap();
    for c in 0..116 {
        w.write_cluster(dev, c, &img[c as usize * CS..(c as usize + 1) * CS])
            .unwrap();
    }
    let (a, stats) = w.finish().unwrap();
    let ext = 512 + 58 * CS;
    assert_eq!(stats.extents, 2);
    assert_eq!(a.len(), 12800 + 2 * ext);
    assert_eq!(&a[12800 + ext..12800 + ext + 4], b"VMAE");
    assert_eq!(u16::from_be_bytes([a[12806], a[12807]]), 58 * 16);
}

#[test]
fn block_straddling_device_end_is_zero_padded() {
    let mut w = Writer::with_identity(Vec::new(), UUID, Some(CTIME));
    w.add_config("qemu-server.conf", b"x").unwrap();
    let dev = w.register_device("tiny", 5000).unwrap();
    w.write_cluster(dev, 0, &[0xFF; CS]).unwrap();
    let (a, _) = w.finish().unwrap();
    let hs = be32(&a, 56) as usize;
    let e = &a[hs..];
    assert_eq!(u16::from_be_bytes([e[6], e[7]]), 2);
    assert_eq!(be64(e, 40) >> 48, 0x0003);
    let data = &e[512..];
    assert_eq!(data.len(), 2 * BS);
    assert!(data[..5000].iter().all(|&b| b == 0xFF));
    assert!(data[5000..].iter().all(|&b| b == 0));
}

#[test]
fn blob_table_growth_with_large_config() {
    let data = vec![b'a'; 65535];
    let mut w = Writer::with_identity(Vec::new(), UUID, Some(CTIME));
    w.add_config("qemu-server.conf", &data).unwrap();
    let (a, _) = w.finish().unwrap();
    // name: S=512, P=20. data L=65535: 512 < 20+65537 -> S += 66048 -> 66560. P=65557.
    check_fixed_header(&a, 12288 + 66560, 65557);
    assert_eq!(a.len(), 12288 + 66560 + 512);
    let (h, _) = read_all(&a).unwrap();
    assert_eq!(h.configs[0].data, data);

    let mut w = Writer::with_identity(Vec::new(), UUID, Some(CTIME));
    let err = w
        .add_config("qemu-server.conf", &vec![0u8; 65536])
        .unwrap_err();
    assert!(matches!(err, Error::Limit { got: 65536, .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::OutOfBounds);
    assert!(err.to_string().contains("65536"));
}

/// Independent model of Proxmox's table growth, used to predict header_size.
fn model_table(lens: &[usize]) -> (usize, usize) {
    let (mut s, mut p) = (0usize, 1usize);
    for &l in lens {
        if s == 0 || s < p + l + 2 {
            s += (l + 2).div_ceil(512) * 512;
        }
        p += l + 2;
    }
    (s, p)
}

#[test]
fn devices_254_accepted_255th_refused() {
    let mut w = Writer::with_identity(Vec::new(), UUID, Some(CTIME));
    w.add_config("qemu-server.conf", b"cfg\n").unwrap();
    let mut ids = Vec::new();
    for i in 0..254 {
        ids.push(
            w.register_device(&format!("drive-virtio{i}"), 4096)
                .unwrap(),
        );
    }
    assert_eq!(ids.last().unwrap().get(), 254);
    let err = w.register_device("drive-extra", 4096).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Limit {
                what: "number of devices",
                limit: 254,
                got: 255
            }
        ),
        "{err}"
    );
    for (i, id) in ids.iter().enumerate() {
        w.write_cluster(*id, 0, &[i as u8 + 1; 4096]).unwrap();
    }
    let (a, stats) = w.finish().unwrap();
    let mut lens = vec![17, 4];
    lens.extend((0..254).map(|i| format!("drive-virtio{i}").len() + 1));
    let (s, p) = model_table(&lens);
    check_fixed_header(&a, 12288 + s, p as u32);
    // 254 clusters -> 58+58+58+58+22 slots in 5 extents
    assert_eq!(stats.extents, 5);
    let (h, imgs) = read_all(&a).unwrap();
    assert_eq!(h.devices.len(), 254);
    assert_eq!(h.devices[253].id, 254);
    assert_eq!(h.devices[253].name, "drive-virtio253");
    assert!(imgs[253].iter().all(|&b| b == 254));
}

#[test]
fn writer_checks_every_cluster_exactly_once() {
    let mut w = Writer::with_identity(Vec::new(), UUID, Some(CTIME));
    let dev = w.register_device("drive-scsi0", 3 * CS as u64).unwrap();
    w.write_zero_cluster(dev, 0).unwrap();
    let dup = w.write_zero_cluster(dev, 0).unwrap_err();
    assert!(dup.to_string().contains("duplicate cluster 0"), "{dup}");
    assert!(dup.to_string().contains("drive-scsi0"), "{dup}");
    let oor = w.write_zero_cluster(dev, 3).unwrap_err();
    assert!(
        oor.to_string().contains("cluster 3 is out of range"),
        "{oor}"
    );
    let late = w.register_device("late", 1).unwrap_err();
    assert!(
        late.to_string().contains("after the first cluster"),
        "{late}"
    );
    w.write_zero_cluster(dev, 2).unwrap();
    let short = w.write_cluster(dev, 1, &[1u8; 100]).unwrap_err();
    assert!(
        short.to_string().contains("buffer has 100 bytes"),
        "{short}"
    );
    let missing = w.finish().unwrap_err();
    assert_eq!(
        missing.to_string(),
        "device 1 (drive-scsi0): missing cluster 1 (1 of 3 clusters missing)"
    );
    let mut w = Writer::with_identity(Vec::new(), UUID, Some(CTIME));
    assert!(w.register_device("zero", 0).is_err());
    let empty = w.finish().unwrap_err();
    assert!(
        empty.to_string().contains("at least one config or device"),
        "{empty}"
    );
}

/// sha256 of the archive [`pinned_output`] writes; change it only with a format change
/// that Proxmox's tool is shown to read (the test checks that too).
const PINNED_SHA256: &str = "e1fa6a08bbee980b31aee6817c269f7162c30e92e3ab7dd9f76838ddfdd7fccd";

fn pinned_output() -> (Vec<u8>, Vec<u8>) {
    // A whole number of sectors (586): the sizes Proxmox's writer records.
    let img = mixed_image(3, 300_032);
    let a = write_images(
        &["drive-scsi0"],
        std::slice::from_ref(&img),
        &[("qemu-server.conf", b"memory: 64\n")],
        5,
    );
    (a, img)
}

#[test]
fn pinned_output_is_stable_and_read_by_proxmox() {
    // Regression pin of the complete byte stream for a fixed input (layout checked above).
    let (a, img) = pinned_output();
    assert_eq!(sha256(&a), PINNED_SHA256);
    // The pinned bytes are what Proxmox's own tool verifies and extracts.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pinned.vma");
    std::fs::write(&path, &a).unwrap();
    let vma = vmdump_testkit::pve_vma();
    let out = std::process::Command::new(&vma)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let x = dir.path().join("x");
    let out = std::process::Command::new(&vma)
        .arg("extract")
        .arg(&path)
        .arg(&x)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(x.join("disk-drive-scsi0.raw")).unwrap(), img);
    assert_eq!(
        std::fs::read(x.join("qemu-server.conf")).unwrap(),
        b"memory: 64\n"
    );
}

/// What comes after the configs that fill the blob table in [`at_the_header_limit`].
#[derive(Debug, Clone, Copy)]
enum Last {
    /// A config `z` of this many bytes (its name blob takes 4 bytes).
    Config(usize),
    /// A device named with this many `d`s.
    Device(usize),
}

/// Devices `devices` (registered first), configs `c0`..`c7` that fill the blob table to
/// exactly 512000 bytes, the most a header of 8 clusters (524288 bytes) holds, with 4048
/// bytes left (7 of 65535 bytes and one of 49150), then `last`. Says whether the writer
/// took `last`; checks that it refused it only for the header limit, and that what it took
/// makes exactly the header the model predicts.
fn at_the_header_limit(devices: &[&str], last: Last) -> bool {
    let mut w = Writer::with_identity(Vec::new(), UUID, Some(CTIME));
    let mut ids = Vec::new();
    let mut dev_lens = Vec::new();
    for d in devices {
        ids.push(w.register_device(d, 4096).unwrap());
        dev_lens.push(d.len() + 1);
    }
    let mut lens = Vec::new();
    for i in 0..8 {
        let data = vec![b'x'; if i < 7 { 65535 } else { 49150 }];
        w.add_config(&format!("c{i}"), &data).unwrap();
        lens.extend([3, data.len()]);
    }
    let taken = match last {
        Last::Config(len) => {
            lens.extend([2, len]);
            w.add_config("z", &vec![b'y'; len]).map(|()| None)
        }
        Last::Device(n) => {
            dev_lens.push(n + 1);
            w.register_device(&"d".repeat(n), 4096).map(Some)
        }
    };
    // Device names go after the configs, in id order.
    lens.extend(dev_lens);
    let (table, _) = model_table(&lens);
    let fits = 12288 + table <= 524288;
    match taken {
        Ok(id) => {
            assert!(
                fits,
                "{last:?} taken, but the header would be {}",
                12288 + table
            );
            ids.extend(id);
            for id in ids {
                w.write_zero_cluster(id, 0).unwrap();
            }
            let (a, _) = w.finish().unwrap();
            assert_eq!(be32(&a, 56) as usize, 12288 + table);
            let (h, _) = read_all(&a).unwrap();
            assert_eq!(
                h.configs.len(),
                8 + usize::from(matches!(last, Last::Config(_)))
            );
        }
        Err(err) => {
            assert!(!fits, "{last:?} refused, but it fits: {err}");
            assert!(
                matches!(
                    err,
                    Error::Limit {
                        what: "header size",
                        limit: 524288,
                        got
                    } if got as usize == 12288 + table
                ),
                "{err}"
            );
        }
    }
    fits
}

#[test]
fn the_header_limit_counts_every_name_and_config_to_the_byte() {
    // 4048 bytes left: a config `z` (4 bytes of name blob, 2 of length) of 4042 bytes
    // fits exactly, a device name of 4045 bytes (+ NUL + 2) too; the name `d` of a device
    // registered before takes 4 of them.
    for (devices, last_config, last_device) in [(&[][..], 4042, 4045), (&["d"][..], 4038, 4041)] {
        for len in last_config - 2..=last_config + 2 {
            let taken = at_the_header_limit(devices, Last::Config(len));
            assert_eq!(
                taken,
                len <= last_config,
                "{devices:?}, config of {len} bytes"
            );
        }
        for n in last_device - 2..=last_device + 2 {
            let taken = at_the_header_limit(devices, Last::Device(n));
            assert_eq!(
                taken,
                n <= last_device,
                "{devices:?}, device name of {n} bytes"
            );
        }
    }
}

#[test]
fn limits_refuse_one_past_and_say_what_they_got() {
    let mut w = Writer::with_identity(Vec::new(), UUID, Some(CTIME));
    for i in 0..256 {
        w.add_config(&format!("c{i}"), b"").unwrap();
    }
    let err = w.add_config("one-more", b"").unwrap_err();
    assert!(
        matches!(
            err,
            Error::Limit {
                what: "number of configs",
                limit: 256,
                got: 257
            }
        ),
        "{err}"
    );

    // Names: not empty, at most 65534 bytes (65535 with the NUL).
    let mut w = Writer::with_identity(Vec::new(), UUID, Some(CTIME));
    assert!(matches!(w.add_config("", b""), Err(Error::Usage(_))));
    assert!(matches!(w.register_device("", 1), Err(Error::Usage(_))));
    let err = w.add_config(&"n".repeat(65535), b"").unwrap_err();
    assert!(
        matches!(
            err,
            Error::Limit {
                limit: 65534,
                got: 65535,
                ..
            }
        ),
        "{err}"
    );
    w.add_config(&"n".repeat(65534), b"").unwrap();

    // Devices: at most 2^32 clusters (cluster numbers are 32 bits): 256 TiB.
    let most = (1u64 << 32) * CS as u64;
    let big = w.register_device("drive-big", most).unwrap();
    let err = w.register_device("drive-bigger", most + 1).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Limit {
                what: "device clusters",
                limit: 4294967296,
                got: 4294967297
            }
        ),
        "{err}"
    );
    assert_eq!(w.device_count(), 1);
    // The vmstate stream has no size limit, but its cluster numbers are 32 bits too.
    let vmstate = w.register_device("vmstate", 1).unwrap();
    assert_eq!(w.device_count(), 2);
    let err = w.write_zero_cluster(vmstate, 1 << 32).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Limit {
                what: "cluster number",
                limit: 4294967295,
                got: 4294967296
            }
        ),
        "{err}"
    );
    w.write_zero_cluster(big, (1 << 32) - 1).unwrap();
    w.write_zero_cluster(vmstate, (1 << 32) - 1).unwrap();
    let missing = w.finish().unwrap_err();
    assert_eq!(
        missing.to_string(),
        "device 1 (drive-big): missing cluster 0 (4294967295 of 4294967296 clusters missing)"
    );
}

#[test]
fn finish_reports_each_device_by_its_id() {
    let mut w = Writer::with_identity(Vec::new(), UUID, Some(CTIME));
    assert_eq!(w.uuid(), UUID);
    let a = w.register_device("drive-scsi0", 3 * CS as u64).unwrap();
    let b = w.register_device("drive-scsi1", 100).unwrap();
    w.write_cluster(a, 1, &[1; CS]).unwrap();
    w.write_zero_cluster(b, 0).unwrap();
    let err = w.finish().unwrap_err();
    assert_eq!(
        err.to_string(),
        "device 1 (drive-scsi0): missing cluster 0 (2 of 3 clusters missing)"
    );

    let mut w = Writer::with_identity(Vec::new(), UUID, Some(CTIME));
    let a = w.register_device("drive-scsi0", CS as u64).unwrap();
    let b = w.register_device("drive-scsi1", 100).unwrap();
    w.write_cluster(a, 0, &[1; CS]).unwrap();
    w.write_cluster(b, 0, &[0; 100]).unwrap();
    let (_, stats) = w.finish().unwrap();
    let ids: Vec<_> = stats
        .devices
        .iter()
        .map(|d| (d.id.get(), d.zero_bytes))
        .collect();
    // A zero cluster counts all 16 blocks, also past the end of the device.
    assert_eq!(ids, vec![(1, 0), (2, CS as u64)]);
}

#[test]
fn an_unpinned_writer_takes_a_fresh_uuid_and_the_time_of_writing() {
    let secs = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    let mut w = Writer::new(Vec::new());
    let other = Writer::new(Vec::new()).uuid();
    let uuid = w.uuid();
    assert_ne!(uuid, other);
    w.add_config("qemu-server.conf", b"").unwrap();
    let before = secs();
    let (a, _) = w.finish().unwrap();
    let after = secs();
    assert_eq!(&a[8..24], &uuid);
    let ctime = be64(&a, 24) as i64;
    assert!(
        (before..=after).contains(&ctime),
        "{before} {ctime} {after}"
    );
}

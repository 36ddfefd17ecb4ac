//! Whole-stream reading: never panics or allocates without bound; when the streaming
//! reader accepts an archive, the random-access index accepts it too and serves the same
//! bytes for every device.
#![no_main]

use std::io::{Cursor, Read};

use libfuzzer_sys::fuzz_target;
use vmdump_vma::{Index, Reader, CLUSTER_SIZE};

/// Fix up checksums and uuids so the fuzzer reaches the deeper checks: the header MD5,
/// then every extent's uuid and MD5, walking extents by their block_count.
fn reseal(a: &mut [u8]) {
    use md5::Digest;
    if a.len() < 12288 {
        return;
    }
    let hs = u32::from_be_bytes([a[56], a[57], a[58], a[59]]) as usize;
    if hs <= 12288 || hs > a.len() {
        return;
    }
    a[32..48].fill(0);
    let sum: [u8; 16] = md5::Md5::digest(&a[..hs]).into();
    a[32..48].copy_from_slice(&sum);
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&a[8..24]);
    let mut off = hs;
    while off + 512 <= a.len() {
        let e = &mut a[off..off + 512];
        e[8..24].copy_from_slice(&uuid);
        e[24..40].fill(0);
        let sum: [u8; 16] = md5::Md5::digest(&*e).into();
        e[24..40].copy_from_slice(&sum);
        off += 512 + 4096 * usize::from(u16::from_be_bytes([e[6], e[7]]));
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let mut owned = rest.to_vec();
    if mode & 1 == 1 {
        reseal(&mut owned);
    }
    let data = &owned[..];
    let Ok(mut r) = Reader::new(data) else {
        return;
    };
    let header = r.header().clone();
    // Keep images only for small devices, so memory stays bounded. Sizes are any u64 the
    // header announces: add them without overflowing.
    let total = header
        .devices
        .iter()
        .fold(0u64, |t, d| t.saturating_add(d.size));
    if total > 64 * 1024 * 1024 {
        while let Ok(Some(_)) = r.next_extent() {}
        return;
    }
    let mut imgs: Vec<Vec<u8>> = header
        .devices
        .iter()
        .map(|d| vec![0; d.size as usize])
        .collect();
    let mut ok = true;
    loop {
        match r.next_extent() {
            Ok(Some(ext)) => {
                for c in ext.clusters() {
                    let Some(k) = header.devices.iter().position(|d| d.id == c.dev_id) else {
                        continue; // vmstate or unknown is rejected before here
                    };
                    if header.devices[k].is_vmstate() {
                        continue;
                    }
                    let img = &mut imgs[k];
                    let s = c.cluster as usize * CLUSTER_SIZE;
                    let e = (s + CLUSTER_SIZE).min(img.len());
                    assert!(s < e, "reader handed out a cluster past the device end");
                    c.expand_into(&mut img[s..e]);
                }
            }
            Ok(None) => break,
            Err(_) => {
                ok = false;
                break;
            }
        }
    }
    if !ok || r.finish().is_err() {
        return;
    }
    let idx = Index::build(&mut Cursor::new(data)).expect("index accepts what the reader accepts");
    for (k, d) in header.devices.iter().enumerate() {
        if d.is_vmstate() {
            continue;
        }
        let mut dr = idx.device_reader(Cursor::new(data), d.id).expect("device");
        let mut got = Vec::new();
        dr.read_to_end(&mut got).expect("index read");
        assert_eq!(got, imgs[k]);
    }
});

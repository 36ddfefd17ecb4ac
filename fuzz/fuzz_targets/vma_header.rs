//! Header parsing: hostile bytes never panic; accepted headers satisfy the format's
//! invariants; and headers our writer produces from fuzzed configs/devices parse back
//! to exactly those configs/devices.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmdump_vma::{read_header, Header, Writer};

fn check_invariants(h: &Header, len: usize) {
    assert!(h.header_size as usize > 12288 && h.header_size as usize <= len);
    assert!(h.configs.len() <= 256);
    assert!(h.devices.len() <= 254);
    let mut last = 0u8;
    for d in &h.devices {
        assert!(d.id > last && d.id <= 254 && d.size > 0);
        assert_eq!(h.device(d.id), Some(d));
        last = d.id;
    }
    for c in &h.configs {
        assert!(c.data.len() <= 65535);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        // Raw hostile header.
        if let Ok(h) = read_header(&mut &rest[..]) {
            check_invariants(&h, rest.len());
            // Deterministic: parsing the same bytes again gives the same result.
            let again = Header::parse(&rest[..h.header_size as usize]).expect("reparse");
            assert_eq!(again, h);
        }
        return;
    }
    // Structured: use the bytes as configs and device names/sizes, write, read back.
    let mut w = Writer::with_identity(Vec::new(), [3; 16], Some(42));
    let mut configs = Vec::new();
    let mut devices = Vec::new();
    for (i, chunk) in rest.chunks(7).enumerate().take(300) {
        let name: String = chunk.iter().map(|b| char::from(b'a' + b % 26)).collect();
        if chunk[0] & 1 == 0 {
            let data = chunk.repeat(usize::from(chunk[0]));
            if w.add_config(&name, &data).is_ok() {
                configs.push((name, data));
            }
        } else {
            let size = u64::from(chunk[0]) * 65536 + i as u64 + 1;
            if let Ok(id) = w.register_device(&name, size) {
                devices.push((id, name, size));
            }
        }
    }
    for (id, _, size) in &devices {
        for c in 0..size.div_ceil(65536) {
            w.write_zero_cluster(*id, c).expect("zero cluster");
        }
    }
    let Ok((bytes, _)) = w.finish() else {
        // Only possible when nothing fits the header (no configs and no devices).
        assert!(configs.is_empty() && devices.is_empty());
        return;
    };
    let h = read_header(&mut &bytes[..]).expect("our own header parses");
    check_invariants(&h, bytes.len());
    assert_eq!(h.configs.len(), configs.len());
    for (c, (n, d)) in h.configs.iter().zip(&configs) {
        assert_eq!(&c.name, n);
        assert_eq!(&c.data, d);
    }
    assert_eq!(h.devices.len(), devices.len());
    for (d, (id, n, s)) in h.devices.iter().zip(&devices) {
        assert_eq!((d.id, &d.name, d.size), (id.get(), n, *s));
    }
});

//! The raw LZO1X block decoder on hostile bytes: never panics, never grows past the limit,
//! and our compressor's output of the same bytes decodes back to them. The first two bytes
//! give the output limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmdump_compress::{lzo1x_compress, lzo1x_decompress};

fuzz_target!(|data: &[u8]| {
    let Some((limit, rest)) = data.split_at_checked(2) else {
        return;
    };
    let max = usize::from(u16::from_le_bytes([limit[0], limit[1]])) * 16;
    if let Ok(out) = lzo1x_decompress(rest, max) {
        assert!(out.len() <= max, "{} bytes past the limit {max}", out.len());
    }
    let packed = lzo1x_compress(rest);
    let back = lzo1x_decompress(&packed, rest.len()).expect("our own block decodes");
    assert_eq!(back, rest);
});

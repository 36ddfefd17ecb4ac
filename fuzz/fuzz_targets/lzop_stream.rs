//! The lzop container reader on hostile bytes: never panics or over-allocates, stops with an
//! error or at the end; and what our lzop writer makes of the same bytes reads back exactly.
#![no_main]

use std::io::{Read, Write};

use libfuzzer_sys::fuzz_target;
use vmdump_compress::{LzopReader, LzopWriter};

fuzz_target!(|data: &[u8]| {
    let mut r = LzopReader::new(data);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    // Bounded: a stream of tiny blocks declaring large sizes must still end.
    while let Ok(n) = r.read(&mut buf) {
        if n == 0 || total > 256 << 20 {
            break;
        }
        total += n;
    }

    let mut w = LzopWriter::new(Vec::new());
    w.write_all(data).expect("write to memory");
    let packed = w.finish().expect("finish to memory");
    let mut back = Vec::new();
    LzopReader::new(&packed[..])
        .read_to_end(&mut back)
        .expect("our own lzop stream reads");
    assert_eq!(back, data);
});

//! The seekable-zstd seek table on hostile bytes: reading the table and reads through it
//! never panic or over-allocate; an accepted table describes the file (frames back to back
//! up to the table, `frame_at` finds the frame holding each offset); and what our writer
//! makes of the same bytes (small frames) reads back exactly, at random offsets and in
//! parallel.
#![no_main]

use std::io::{Read, Write};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vmdump_compress::{ParallelDecoder, SeekTable, SeekableReader, SeekableWriter};

fuzz_target!(|data: &[u8]| {
    let file = data.to_vec();
    if let Ok(Some(t)) = SeekTable::read(&file) {
        let (mut c, mut d) = (0u64, 0u64);
        for f in t.frames() {
            assert_eq!(f.compressed_offset, c);
            assert_eq!(f.offset, d);
            c += u64::from(f.compressed_len);
            d += u64::from(f.len);
        }
        assert!(c <= data.len() as u64, "frames past the file");
        assert_eq!(d, t.decompressed_size());
        for off in [0, d / 3, d / 2, d.saturating_sub(1), d, d + 1] {
            match t.frame_at(off) {
                Some(i) => {
                    let f = t.frames()[i];
                    assert!(
                        f.offset <= off && off < f.offset + u64::from(f.len),
                        "{off}"
                    );
                }
                None => assert!(off >= d, "no frame for {off} < {d}"),
            }
        }
    }
    if let Ok(Some(r)) = SeekableReader::open(file) {
        let size = r.table().decompressed_size();
        let mut buf = vec![0u8; (size as usize).min(4096)];
        // Corrupt frames are errors; a read past the end is an error too.
        let _ = r.read_exact_at(&mut buf, size / 3);
        let one = buf.len().min(1);
        let _ = r.read_exact_at(&mut buf[..one], size);
    }

    // Our own output of these bytes: 1 KiB frames, two threads.
    let mut w = SeekableWriter::with_frame_size(Vec::new(), 1, 2, 1024).expect("writer");
    w.write_all(data).expect("write to memory");
    let out = w.finish().expect("finish");
    let t = SeekTable::read(&out)
        .expect("our table reads")
        .expect("our file has a table");
    assert_eq!(t.decompressed_size(), data.len() as u64);
    assert_eq!(t.frames().len(), data.len().div_ceil(1024));
    let r = SeekableReader::open(out.clone())
        .expect("open")
        .expect("table");
    if !data.is_empty() {
        let at = data.len() / 2;
        let n = (data.len() - at).min(3000);
        let mut buf = vec![0u8; n];
        r.read_exact_at(&mut buf, at as u64).expect("read back");
        assert_eq!(buf, data[at..at + n]);
    }
    let mut all = Vec::new();
    ParallelDecoder::new(Arc::new(out), t, 2)
        .expect("decoder")
        .read_to_end(&mut all)
        .expect("decode");
    assert!(all == data, "parallel decode differs");
});

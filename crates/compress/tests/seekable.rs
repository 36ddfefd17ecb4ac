//! The zstd seekable format: what we write is an ordinary zstd file for the real `zstd` tool,
//! its seek table gives random access, and a truncated file is recognised as having none.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;

use vmdump_compress::{
    Codec, Decoder, Encoder, EncoderOptions, ParallelDecoder, ReadAtPos, SeekTable, SeekableReader,
    SeekableWriter,
};
use vmdump_testkit::{pseudo_random, Rng};

/// 9 MiB + 5 of half-compressible data: text, zeros and noise.
fn sample() -> Vec<u8> {
    let mut v = Vec::new();
    let mut i = 0u64;
    while v.len() < 9 << 20 {
        match i % 3 {
            0 => v.extend(
                format!("block {i}: the guest wrote this line\n")
                    .bytes()
                    .cycle()
                    .take(100_000),
            ),
            1 => v.extend(std::iter::repeat_n(0u8, 70_000)),
            _ => v.extend(pseudo_random(i, 50_000)),
        }
        i += 1;
    }
    v.extend_from_slice(b"tail!");
    v
}

fn zstd_d(input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("zstd")
        .args(["-d", "-c", "-q"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("zstd must be installed");
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert!(out.status.success(), "zstd -d failed");
    out.stdout
}

fn write(data: &[u8], threads: u32, frame: usize) -> Vec<u8> {
    let mut w = SeekableWriter::with_frame_size(Vec::new(), 3, threads, frame).unwrap();
    for c in data.chunks(77_777) {
        w.write_all(c).unwrap();
    }
    w.finish().unwrap()
}

#[test]
fn seekable_output_is_plain_zstd_with_a_valid_table() {
    let data = sample();
    let single = write(&data, 0, 1 << 20);
    let threaded = write(&data, 3, 1 << 20);
    // Frames are independent: the thread count does not change a byte.
    assert!(single == threaded, "threaded output differs");
    assert!(zstd_d(&single) == data, "zstd -d output differs");
    let mut ours = Vec::new();
    let mut d = Decoder::detect(&single[..]).unwrap();
    assert_eq!(d.codec(), Codec::Zstd);
    d.read_to_end(&mut ours).unwrap();
    assert!(ours == data);

    let table = SeekTable::read(&single).unwrap().expect("a seek table");
    assert_eq!(table.decompressed_size(), data.len() as u64);
    assert_eq!(table.frames().len(), data.len().div_ceil(1 << 20));
    assert!(table.frames().iter().all(|f| f.len <= 1 << 20));
    // The default encoder writes the seekable format too.
    let mut e = Encoder::new(Codec::Zstd, Vec::new(), &EncoderOptions::default()).unwrap();
    e.write_all(&data).unwrap();
    let enc = e.finish().unwrap();
    assert!(SeekTable::read(&enc).unwrap().is_some());
}

#[test]
fn random_and_parallel_reads_match_and_truncation_drops_the_table() {
    let data = sample();
    let file = write(&data, 2, 1 << 20);
    let r = SeekableReader::open(file.clone())
        .unwrap()
        .expect("seekable");
    assert_eq!(r.len_bytes().unwrap(), data.len() as u64);
    let mut rng = Rng(42);
    for _ in 0..300 {
        let off = rng.below(data.len() as u64 - 1);
        let len = (1 + rng.below(200_000)).min(data.len() as u64 - off) as usize;
        let mut b = vec![0u8; len];
        r.read_exact_at(&mut b, off).unwrap();
        assert!(
            b == data[off as usize..off as usize + len],
            "at {off}+{len}"
        );
    }
    let mut b = [0u8; 10];
    assert!(r.read_exact_at(&mut b, data.len() as u64 - 5).is_err());

    let table = r.table().clone();
    let mut p = ParallelDecoder::new(Arc::new(file.clone()), table, 3).unwrap();
    let mut out = Vec::new();
    p.read_to_end(&mut out).unwrap();
    assert!(out == data);

    // A cut file has no table (the caller falls back to streaming); a corrupt frame is an
    // error at the read that needs it.
    assert!(SeekTable::read(&file[..file.len() - 1].to_vec())
        .unwrap()
        .is_none());
    let mut bad = file.clone();
    let f2 = r.table().frames()[2];
    bad[(f2.compressed_offset + 20) as usize] ^= 0xff;
    let r = SeekableReader::open(bad).unwrap().unwrap();
    let mut b = vec![0u8; 100];
    r.read_exact_at(&mut b, 0).unwrap();
    assert!(r.read_exact_at(&mut b, f2.offset + 10).is_err());
}

/// A table of `entries` (compressed, decompressed lengths) after `data` bytes of frames,
/// with descriptor `desc` (bit 7: a 4-byte checksum per entry) and a frame size field of
/// `size` (`None`: the right one).
fn table_file(data: usize, entries: &[(u32, u32)], desc: u8, size: Option<u32>) -> Vec<u8> {
    let entry = if desc & 0x80 != 0 { 12 } else { 8 };
    let body = entries.len() * entry + 9;
    let mut f = vec![0x55u8; data];
    f.extend_from_slice(&0x184D_2A5Eu32.to_le_bytes());
    f.extend_from_slice(&size.unwrap_or(body as u32).to_le_bytes());
    for (c, d) in entries {
        f.extend_from_slice(&c.to_le_bytes());
        f.extend_from_slice(&d.to_le_bytes());
        if entry == 12 {
            f.extend_from_slice(&[0xEE; 4]);
        }
    }
    f.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    f.push(desc);
    f.extend_from_slice(&0x8F92_EAB1u32.to_le_bytes());
    f
}

#[test]
fn seek_tables_are_read_to_their_bounds() {
    // No input: the shortest seekable file, a table of no frames filling the file (17 bytes).
    let empty = write(&[], 0, 1024);
    assert_eq!(empty, table_file(0, &[], 0, None));
    let t = SeekTable::read(&empty).unwrap().expect("an empty table");
    assert!(t.frames().is_empty());
    assert_eq!(t.decompressed_size(), 0);
    assert_eq!(t.frame_at(0), None);
    assert!(zstd_d(&empty).is_empty(), "zstd skips the table");
    // One byte shorter is no table; one junk byte before it is a frame the table misses.
    assert!(SeekTable::read(&empty[1..].to_vec()).unwrap().is_none());
    let mut junk = vec![0u8];
    junk.extend_from_slice(&empty);
    assert!(SeekTable::read(&junk).is_err());

    // Entries at the limits: a frame of exactly 1 GiB is taken, one byte more is not; the
    // entries' compressed lengths must add up to where the table starts.
    let t = SeekTable::read(&table_file(30, &[(10, 5), (20, 1 << 30)], 0, None))
        .unwrap()
        .unwrap();
    assert_eq!(t.decompressed_size(), 5 + (1 << 30));
    let f = t.frames()[1];
    assert_eq!(
        (f.compressed_offset, f.compressed_len, f.offset, f.len),
        (10, 20, 5, 1 << 30)
    );
    assert_eq!(
        (t.frame_at(4), t.frame_at(5), t.frame_at(5 + (1 << 30))),
        (Some(0), Some(1), None)
    );
    let e = SeekTable::read(&table_file(30, &[(10, 5), (20, (1 << 30) + 1)], 0, None)).unwrap_err();
    assert!(e.to_string().contains("frame 1 of 1073741825 bytes"), "{e}");
    for data in [29, 31] {
        let e = SeekTable::read(&table_file(data, &[(10, 5), (20, 7)], 0, None)).unwrap_err();
        assert!(e.to_string().contains("frames cover 30 bytes"), "{e}");
    }
    // Per-entry checksums (descriptor bit 7) make entries 12 bytes long.
    let t = SeekTable::read(&table_file(7, &[(3, 9), (4, 9)], 0x80, None))
        .unwrap()
        .unwrap();
    assert_eq!(t.decompressed_size(), 18);
    assert_eq!(t.frames()[1].compressed_offset, 3);
    // Reserved descriptor bits, a frame size field that is not the table's, a wrong
    // skippable magic, and more entries than the file holds are refused.
    assert!(SeekTable::read(&table_file(7, &[(7, 9)], 0x04, None)).is_err());
    for size in [16, 18, 0] {
        let e = SeekTable::read(&table_file(7, &[(7, 9)], 0, Some(size))).unwrap_err();
        assert!(
            e.to_string()
                .contains("bad skippable frame header at offset 7"),
            "{e}"
        );
    }
    let mut bad_magic = table_file(7, &[(7, 9)], 0, None);
    bad_magic[7] ^= 1;
    assert!(SeekTable::read(&bad_magic).is_err());
    let mut too_many = table_file(0, &[], 0, None);
    too_many[8] = 2;
    let e = SeekTable::read(&too_many).unwrap_err();
    assert!(
        e.to_string().contains("2 frames do not fit in 17 bytes"),
        "{e}"
    );
}

/// A file in memory that counts its reads.
struct Counting(Vec<u8>, std::sync::atomic::AtomicUsize);

impl ReadAtPos for Counting {
    fn read_exact_at_pos(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.0.read_exact_at_pos(buf, offset)
    }
    fn len_bytes(&self) -> std::io::Result<u64> {
        self.0.len_bytes()
    }
}

#[test]
fn files_arcs_and_readers_read_alike_and_eight_frames_are_cached() {
    let data = pseudo_random(7, 20 * 1024 + 100);
    let bytes = write(&data, 0, 1024);
    let table = SeekTable::read(&bytes).unwrap().unwrap();
    assert_eq!(table.frames().len(), 21);
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&bytes).unwrap();
    assert_eq!(file.len_bytes().unwrap(), bytes.len() as u64);
    assert_eq!(SeekTable::read(&file).unwrap().as_ref(), Some(&table));
    let mut b = [0u8; 9];
    file.read_exact_at_pos(&mut b, 3).unwrap();
    assert_eq!(b, bytes[3..12]);
    assert!(file
        .read_exact_at_pos(&mut b, bytes.len() as u64 - 8)
        .is_err());
    let arc = Arc::new(bytes.clone());
    assert_eq!(arc.len_bytes().unwrap(), bytes.len() as u64);
    assert_eq!(SeekTable::read(&arc).unwrap().as_ref(), Some(&table));

    // The reader is a ReadAtPos of the decompressed bytes: a seekable file inside one.
    let r = SeekableReader::open(file).unwrap().unwrap();
    let mut b = vec![0u8; 3000];
    r.read_exact_at_pos(&mut b, 1000).unwrap();
    assert!(b == data[1000..4000]);
    assert!(r.read_exact_at_pos(&mut b, data.len() as u64 - 10).is_err());

    // Frames 0..8 are decompressed once each, read again from the cache; a ninth frame
    // evicts the oldest (frame 0), which is then read from the file again.
    let r = SeekableReader::open(Counting(bytes, Default::default()))
        .unwrap()
        .unwrap();
    let reads = || r.file().1.load(std::sync::atomic::Ordering::Relaxed);
    let start = reads();
    let mut b = [0u8; 10];
    for round in 0..2 {
        for frame in 0..8u64 {
            r.read_exact_at(&mut b, frame * 1024 + 5).unwrap();
            assert_eq!(b, data[frame as usize * 1024 + 5..][..10]);
        }
        assert_eq!(reads() - start, 8, "round {round}");
    }
    r.read_exact_at(&mut b, 8 * 1024).unwrap();
    assert_eq!(reads() - start, 9);
    r.read_exact_at(&mut b, 7 * 1024).unwrap();
    assert_eq!(reads() - start, 9, "frame 7 still cached");
    r.read_exact_at(&mut b, 0).unwrap();
    assert_eq!(reads() - start, 10, "frame 0 was evicted");
    assert_eq!(b, data[..10]);
}

#[test]
fn parallel_decoding_serves_reads_of_any_size_across_frames() {
    let data = pseudo_random(8, 10 * 1024 + 333);
    let bytes = write(&data, 0, 1024);
    let table = SeekTable::read(&bytes).unwrap().unwrap();
    let mut p = ParallelDecoder::new(Arc::new(bytes), table, 2).unwrap();
    // Small and large reads alternate: a large read after a small one inside a frame
    // takes only the frame's rest.
    let mut out = Vec::new();
    let mut sizes = [100usize, 5000, 1, 1023, 7000, 24].iter().cycle();
    loop {
        let mut b = vec![0u8; *sizes.next().unwrap()];
        let n = p.read(&mut b).unwrap();
        if n == 0 {
            break;
        }
        let in_frame = out.len() % 1024;
        assert!(n <= 1024 - in_frame, "a read crosses no frame end");
        out.extend_from_slice(&b[..n]);
    }
    assert!(out == data);
    assert_eq!(p.read(&mut [0u8; 10]).unwrap(), 0, "and stays at the end");
}

/// Counts flushes of the output.
struct Flushes(Vec<u8>, usize);

impl Write for Flushes {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.1 += 1;
        Ok(())
    }
}

#[test]
fn flush_reaches_the_output_and_keeps_a_partial_frame() {
    let data = pseudo_random(9, 2500);
    for threads in [0, 2] {
        let mut w =
            SeekableWriter::with_frame_size(Flushes(Vec::new(), 0), 3, threads, 1024).unwrap();
        w.write_all(&data).unwrap();
        w.flush().unwrap();
        assert_eq!(w.get_ref().1, 1, "threads {threads}");
        let f = w.finish().unwrap();
        assert_eq!(f.1, 2, "finish flushes too");
        let t = SeekTable::read(&f.0).unwrap().unwrap();
        let lens: Vec<u32> = t.frames().iter().map(|f| f.len).collect();
        assert_eq!(lens, [1024, 1024, 452], "the flush cut no frame");
        assert!(zstd_d(&f.0) == data);
    }
}

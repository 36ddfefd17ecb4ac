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

//! The lzop file container around LZO1X blocks, as lzop 1.04 writes and reads it.

use std::io::{self, Read, Write};

use crate::lzo;

/// lzop file magic.
pub const LZOP_MAGIC: [u8; 9] = [0x89, b'L', b'Z', b'O', 0x00, 0x0D, 0x0A, 0x1A, 0x0A];
/// Uncompressed bytes per block (lzop's default).
pub const LZOP_BLOCK_SIZE: usize = 256 * 1024;
/// Largest block lzop accepts; bounds our allocation on hostile input.
const MAX_BLOCK: usize = 64 * 1024 * 1024;

const F_ADLER32_D: u32 = 0x0000_0001;
const F_ADLER32_C: u32 = 0x0000_0002;
const F_H_EXTRA_FIELD: u32 = 0x0000_0040;
const F_CRC32_D: u32 = 0x0000_0100;
const F_CRC32_C: u32 = 0x0000_0200;
const F_MULTIPART: u32 = 0x0000_0400;
const F_H_FILTER: u32 = 0x0000_0800;
const F_H_CRC32: u32 = 0x0000_1000;
const F_OS_UNIX: u32 = 0x0300_0000;

fn adler32(init: u32, data: &[u8]) -> u32 {
    const MOD: u32 = 65521;
    let (mut a, mut b) = (init & 0xffff, init >> 16);
    for chunk in data.chunks(5552) {
        for &x in chunk {
            a += u32::from(x);
            b += a;
        }
        a %= MOD;
        b %= MOD;
    }
    (b << 16) | a
}

fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Streaming lzop encoder: LZO1X blocks of 256 KiB with an Adler-32 of each block's
/// uncompressed data, exactly the checksums lzop writes by default.
pub struct LzopWriter<W: Write> {
    inner: Option<W>,
    buf: Vec<u8>,
    out: Vec<u8>,
    comp: lzo::Compressor,
    header_done: bool,
}

impl<W: Write> LzopWriter<W> {
    /// New encoder writing to `inner`.
    pub fn new(inner: W) -> Self {
        LzopWriter {
            inner: Some(inner),
            buf: Vec::with_capacity(LZOP_BLOCK_SIZE),
            out: Vec::with_capacity(LZOP_BLOCK_SIZE + LZOP_BLOCK_SIZE / 16 + 64 + 3),
            comp: lzo::Compressor::new(),
            header_done: false,
        }
    }

    fn inner(&mut self) -> io::Result<&mut W> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::other("lzop writer already finished"))
    }

    fn header(&mut self) -> io::Result<()> {
        if self.header_done {
            return Ok(());
        }
        let mtime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut h = Vec::with_capacity(64);
        h.extend_from_slice(&0x1040u16.to_be_bytes()); // version
        h.extend_from_slice(&0x20a0u16.to_be_bytes()); // LZO library version
        h.extend_from_slice(&0x0940u16.to_be_bytes()); // version needed to extract
        h.push(1); // method: LZO1X-1
        h.push(5); // level
        h.extend_from_slice(&(F_OS_UNIX | F_ADLER32_D).to_be_bytes());
        h.extend_from_slice(&0o100644u32.to_be_bytes()); // mode
        h.extend_from_slice(&(mtime as u32).to_be_bytes());
        h.extend_from_slice(&((mtime >> 32) as u32).to_be_bytes());
        h.push(0); // no name
        let sum = adler32(1, &h);
        let w = self.inner()?;
        w.write_all(&LZOP_MAGIC)?;
        w.write_all(&h)?;
        w.write_all(&sum.to_be_bytes())?;
        self.header_done = true;
        Ok(())
    }

    fn block(&mut self) -> io::Result<()> {
        self.header()?;
        if self.buf.is_empty() {
            return Ok(());
        }
        self.out.clear();
        self.out.extend_from_slice(&[0; 12]);
        self.comp.compress(&self.buf, &mut self.out);
        let dlen = self.buf.len() as u32;
        let clen = (self.out.len() - 12) as u32;
        let sum = adler32(1, &self.buf);
        self.out[0..4].copy_from_slice(&dlen.to_be_bytes());
        self.out[8..12].copy_from_slice(&sum.to_be_bytes());
        if clen < dlen {
            self.out[4..8].copy_from_slice(&clen.to_be_bytes());
            let Self { inner, out, .. } = self;
            inner
                .as_mut()
                .ok_or_else(|| io::Error::other("lzop writer already finished"))?
                .write_all(out)?;
        } else {
            // Incompressible: stored as is, which lzop marks by equal lengths.
            self.out.truncate(12);
            self.out[4..8].copy_from_slice(&dlen.to_be_bytes());
            let Self {
                inner, out, buf, ..
            } = self;
            let w = inner
                .as_mut()
                .ok_or_else(|| io::Error::other("lzop writer already finished"))?;
            w.write_all(out)?;
            w.write_all(buf)?;
        }
        self.buf.clear();
        Ok(())
    }

    /// Write the last block and the end marker; returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.block()?;
        let mut w = self
            .inner
            .take()
            .ok_or_else(|| io::Error::other("lzop writer already finished"))?;
        w.write_all(&[0, 0, 0, 0])?;
        w.flush()?;
        Ok(w)
    }
}

impl<W: Write> Write for LzopWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(LZOP_BLOCK_SIZE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == LZOP_BLOCK_SIZE {
            self.block()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner()?.flush()
    }
}

/// Streaming lzop decoder: checks the header checksum and every block checksum lzop
/// may have written (Adler-32 or CRC-32, of compressed and uncompressed data).
pub struct LzopReader<R: Read> {
    inner: R,
    flags: u32,
    buf: Vec<u8>,
    cbuf: Vec<u8>,
    pos: usize,
    header_done: bool,
    eof: bool,
    block: u64,
}

impl<R: Read> LzopReader<R> {
    /// New decoder reading from `inner` (which starts with the lzop magic).
    pub fn new(inner: R) -> Self {
        LzopReader {
            inner,
            flags: 0,
            buf: Vec::new(),
            cbuf: Vec::new(),
            pos: 0,
            header_done: false,
            eof: false,
            block: 0,
        }
    }

    fn u8(&mut self, sum: &mut Vec<u8>) -> io::Result<u8> {
        let mut b = [0u8; 1];
        self.inner.read_exact(&mut b)?;
        sum.push(b[0]);
        Ok(b[0])
    }
    fn u16(&mut self, sum: &mut Vec<u8>) -> io::Result<u16> {
        let mut b = [0u8; 2];
        self.inner.read_exact(&mut b)?;
        sum.extend_from_slice(&b);
        Ok(u16::from_be_bytes(b))
    }
    fn u32(&mut self, sum: &mut Vec<u8>) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.inner.read_exact(&mut b)?;
        sum.extend_from_slice(&b);
        Ok(u32::from_be_bytes(b))
    }

    fn header(&mut self) -> io::Result<()> {
        let mut magic = [0u8; 9];
        self.inner.read_exact(&mut magic)?;
        if magic != LZOP_MAGIC {
            return Err(bad("not an lzop stream (bad magic)".into()));
        }
        let mut h = Vec::new();
        let version = self.u16(&mut h)?;
        if version < 0x0940 {
            return Err(bad(format!(
                "lzop format version {version:#06x} is too old"
            )));
        }
        let _lib = self.u16(&mut h)?;
        let _needed = self.u16(&mut h)?;
        let method = self.u8(&mut h)?;
        if !(1..=3).contains(&method) {
            return Err(bad(format!("unsupported lzop method {method}")));
        }
        let _level = self.u8(&mut h)?;
        let flags = self.u32(&mut h)?;
        if flags & (F_H_FILTER | F_MULTIPART) != 0 {
            return Err(bad(format!("unsupported lzop flags {flags:#010x}")));
        }
        let _mode = self.u32(&mut h)?;
        let _mtime_lo = self.u32(&mut h)?;
        let _mtime_hi = self.u32(&mut h)?;
        let name_len = self.u8(&mut h)?;
        let mut name = vec![0u8; usize::from(name_len)];
        self.inner.read_exact(&mut name)?;
        h.extend_from_slice(&name);
        let want = if flags & F_H_CRC32 != 0 {
            crc32(&h)
        } else {
            adler32(1, &h)
        };
        let got = self.u32(&mut Vec::new())?;
        if got != want {
            return Err(bad("lzop header checksum mismatch".into()));
        }
        if flags & F_H_EXTRA_FIELD != 0 {
            let len = self.u32(&mut Vec::new())? as usize;
            if len > MAX_BLOCK {
                return Err(bad("lzop extra field too large".into()));
            }
            let mut extra = vec![0u8; len];
            self.inner.read_exact(&mut extra)?;
            let _sum = self.u32(&mut Vec::new())?;
        }
        self.flags = flags;
        self.header_done = true;
        Ok(())
    }

    fn next_block(&mut self) -> io::Result<()> {
        let mut scratch = Vec::new();
        let dlen = self.u32(&mut scratch)? as usize;
        if dlen == 0 {
            self.eof = true;
            return Ok(());
        }
        if dlen > MAX_BLOCK {
            return Err(bad(format!(
                "lzop block {}: size {dlen} too large",
                self.block
            )));
        }
        let clen = self.u32(&mut scratch)? as usize;
        if clen > dlen {
            return Err(bad(format!(
                "lzop block {}: compressed size {clen} exceeds {dlen}",
                self.block
            )));
        }
        let f = self.flags;
        let d_adler = (f & F_ADLER32_D != 0)
            .then(|| self.u32(&mut scratch))
            .transpose()?;
        let d_crc = (f & F_CRC32_D != 0)
            .then(|| self.u32(&mut scratch))
            .transpose()?;
        let packed = clen < dlen;
        let c_adler = (packed && f & F_ADLER32_C != 0)
            .then(|| self.u32(&mut scratch))
            .transpose()?;
        let c_crc = (packed && f & F_CRC32_C != 0)
            .then(|| self.u32(&mut scratch))
            .transpose()?;
        self.cbuf.resize(clen, 0);
        self.inner.read_exact(&mut self.cbuf)?;
        let block = self.block;
        if c_adler.is_some_and(|s| s != adler32(1, &self.cbuf))
            || c_crc.is_some_and(|s| s != crc32(&self.cbuf))
        {
            return Err(bad(format!(
                "lzop block {block}: compressed data checksum mismatch"
            )));
        }
        self.buf.clear();
        if packed {
            lzo::decompress(&self.cbuf, &mut self.buf, dlen)
                .map_err(|e| bad(format!("lzop block {block}: {e}")))?;
            if self.buf.len() != dlen {
                return Err(bad(format!(
                    "lzop block {block}: decompressed {} bytes, expected {dlen}",
                    self.buf.len()
                )));
            }
        } else {
            std::mem::swap(&mut self.buf, &mut self.cbuf);
        }
        if d_adler.is_some_and(|s| s != adler32(1, &self.buf))
            || d_crc.is_some_and(|s| s != crc32(&self.buf))
        {
            return Err(bad(format!("lzop block {block}: data checksum mismatch")));
        }
        self.pos = 0;
        self.block += 1;
        Ok(())
    }
}

impl<R: Read> Read for LzopReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if !self.header_done {
            self.header()?;
        }
        while self.pos == self.buf.len() {
            if self.eof {
                return Ok(0);
            }
            self.next_block()?;
            if self.eof {
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adler_known_value() {
        assert_eq!(adler32(1, b"Wikipedia"), 0x11E6_0398);
    }

    /// Adler-32 the slow way: every byte reduced at once.
    fn adler_reference(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u64, 0u64);
        for &x in data {
            a = (a + u64::from(x)) % 65521;
            b = (b + a) % 65521;
        }
        ((b << 16) | a) as u32
    }

    #[test]
    fn adler_matches_the_definition_over_long_runs() {
        for len in [0, 1, 5551, 5552, 5553, 20_000] {
            let data: Vec<u8> = (0..len).map(|i| 255 - (i % 7) as u8).collect();
            assert_eq!(adler32(1, &data), adler_reference(&data), "{len} bytes");
        }
    }

    /// Bytes that LZO cannot shrink (a xorshift sequence).
    fn noise(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn read_all(stream: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        LzopReader::new(stream).read_to_end(&mut out)?;
        Ok(out)
    }

    fn be32(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn writer_frames_256_kib_blocks_as_lzop_does() {
        assert_eq!(LZOP_BLOCK_SIZE, 262_144);
        let mut data = vec![7u8; LZOP_BLOCK_SIZE];
        data.extend(noise(LZOP_BLOCK_SIZE));
        data.extend([b'z'; 100]);
        let mut w = LzopWriter::new(Vec::new());
        assert_eq!(
            w.write(&data).unwrap(),
            LZOP_BLOCK_SIZE,
            "one block per write"
        );
        let mut rest = &data[LZOP_BLOCK_SIZE..];
        while !rest.is_empty() {
            let n = w.write(&rest[..rest.len().min(100_000)]).unwrap();
            rest = &rest[n..];
        }
        w.flush().unwrap();
        let out = w.finish().unwrap();

        assert_eq!(out[..9], LZOP_MAGIC);
        let h = &out[9..9 + 25];
        assert_eq!(h[..8], [0x10, 0x40, 0x20, 0xa0, 0x09, 0x40, 1, 5]);
        assert_eq!(be32(h, 8), 0x0300_0001, "Unix, Adler-32 of the data");
        assert_eq!(be32(h, 12), 0o100644);
        assert_eq!(h[24], 0, "no name");
        assert_eq!(be32(&out, 34), adler_reference(h));
        // Blocks: (uncompressed, compressed, Adler-32 of the uncompressed data).
        let mut at = 38;
        for (i, want) in data.chunks(LZOP_BLOCK_SIZE).enumerate() {
            let (dlen, clen) = (be32(&out, at) as usize, be32(&out, at + 4) as usize);
            assert_eq!(dlen, want.len(), "block {i}");
            assert_eq!(be32(&out, at + 8), adler_reference(want), "block {i}");
            let body = &out[at + 12..at + 12 + clen];
            if i == 1 {
                assert_eq!(clen, dlen, "incompressible: stored");
                assert_eq!(body, want);
            } else {
                assert!(clen < dlen, "block {i}: {clen} of {dlen}");
                assert_eq!(crate::lzo1x_decompress(body, dlen).unwrap(), want);
            }
            at += 12 + clen;
        }
        assert_eq!(&out[at..], &[0, 0, 0, 0], "end marker");
        assert_eq!(read_all(&out).unwrap(), data);

        // Reading one byte at a time crosses the block boundaries the same way.
        let mut r = LzopReader::new(&out[..]);
        let mut back = Vec::new();
        let mut b = [0u8; 1];
        while r.read(&mut b).unwrap() == 1 {
            back.push(b[0]);
        }
        assert_eq!(back, data);
        assert_eq!(r.read(&mut b).unwrap(), 0, "EOF stays EOF");

        let empty = LzopWriter::new(Vec::new()).finish().unwrap();
        assert_eq!(empty.len(), 38 + 4, "header and end marker only");
        assert!(read_all(&empty).unwrap().is_empty());
    }

    /// An lzop stream as the lzop tool may write it: `flags` choose the checksums (header CRC-32
    /// with `F_H_CRC32`), `method`, `name`, an optional extra field; blocks are LZO-compressed
    /// when that is smaller, stored otherwise.
    fn stream(version: u16, method: u8, flags: u32, name: &[u8], blocks: &[&[u8]]) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&version.to_be_bytes());
        h.extend_from_slice(&0x20a0u16.to_be_bytes());
        h.extend_from_slice(&0x0940u16.to_be_bytes());
        h.push(method);
        h.push(9);
        h.extend_from_slice(&flags.to_be_bytes());
        h.extend_from_slice(&0o100600u32.to_be_bytes());
        h.extend_from_slice(&[0, 0, 0, 9, 0, 0, 0, 0]);
        h.push(name.len() as u8);
        h.extend_from_slice(name);
        let sum = if flags & F_H_CRC32 != 0 {
            crc32(&h)
        } else {
            adler32(1, &h)
        };
        let mut s = LZOP_MAGIC.to_vec();
        s.extend_from_slice(&h);
        s.extend_from_slice(&sum.to_be_bytes());
        if flags & F_H_EXTRA_FIELD != 0 {
            s.extend_from_slice(&[0, 0, 0, 3, b'x', b'y', b'z', 0xde, 0xad, 0xbe, 0xef]);
        }
        for d in blocks {
            let c = crate::lzo1x_compress(d);
            let body = if c.len() < d.len() { &c[..] } else { d };
            s.extend_from_slice(&(d.len() as u32).to_be_bytes());
            s.extend_from_slice(&(body.len() as u32).to_be_bytes());
            let packed = body.len() < d.len();
            for (bit, sum) in [
                (F_ADLER32_D, adler32(1, d)),
                (F_CRC32_D, crc32(d)),
                (F_ADLER32_C, adler32(1, body)),
                (F_CRC32_C, crc32(body)),
            ] {
                let of_compressed = bit == F_ADLER32_C || bit == F_CRC32_C;
                if flags & bit != 0 && (packed || !of_compressed) {
                    s.extend_from_slice(&sum.to_be_bytes());
                }
            }
            s.extend_from_slice(body);
        }
        s.extend_from_slice(&[0, 0, 0, 0]);
        s
    }

    #[test]
    fn reader_takes_every_checksum_and_header_lzop_may_write() {
        let packed = vec![3u8; 10_000];
        let stored = noise(3000);
        let data = [&packed[..], &stored[..]].concat();
        let all = F_ADLER32_D | F_ADLER32_C | F_CRC32_D | F_CRC32_C;
        for flags in [
            0,
            F_ADLER32_D,
            F_CRC32_D | F_CRC32_C,
            all | F_H_CRC32,
            F_ADLER32_D | F_ADLER32_C | F_H_EXTRA_FIELD,
        ] {
            for method in [1, 2, 3] {
                let s = stream(0x0940, method, flags, b"disk.raw", &[&packed, &stored]);
                assert_eq!(
                    read_all(&s).unwrap(),
                    data,
                    "flags {flags:#x} method {method}"
                );
            }
        }
        // Every checksum is checked: change one byte of each and the stream is refused.
        let s = stream(0x1040, 1, all, b"", &[&packed]);
        let clen = be32(&s, 38 + 4) as usize;
        let body = 38 + 8 + 16;
        for (at, what) in [
            (34, "header checksum"),
            (38 + 8, "data checksum"),
            (38 + 12, "data checksum"),
            (38 + 16, "compressed data checksum"),
            (38 + 20, "compressed data checksum"),
            (body + clen / 2, "compressed data checksum"),
        ] {
            let mut bad = s.clone();
            bad[at] ^= 0x10;
            let e = read_all(&bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "byte {at}");
            assert!(e.to_string().contains(what), "byte {at}: {e}");
        }
        // Errors name the block they are in.
        let s = stream(0x1040, 1, F_ADLER32_D, b"", &[&stored, &stored]);
        let mut bad = s.clone();
        bad[38 + 12 + stored.len() + 8] ^= 1;
        let e = read_all(&bad).unwrap_err().to_string();
        assert!(e.starts_with("lzop block 1: data checksum"), "{e}");
        // Without checksums of the compressed data, a damaged block still fails on the data.
        let s = stream(0x1040, 1, F_CRC32_D, b"", &[&packed]);
        let mut bad = s.clone();
        bad[38 + 12 + be32(&s, 42) as usize / 2] ^= 0x10;
        assert!(read_all(&bad).is_err());
    }

    #[test]
    fn hostile_lzop_streams_are_refused() {
        let block = vec![1u8; 4096];
        let ok = |s: &[u8]| read_all(s).map(|d| d == block).unwrap_or(false);
        assert!(ok(&stream(0x0940, 1, F_ADLER32_D, b"", &[&block])));
        let err = |s: &[u8]| read_all(s).unwrap_err().to_string();
        assert!(err(&stream(0x093f, 1, 0, b"", &[&block])).contains("too old"));
        for method in [0, 4] {
            assert!(err(&stream(0x1040, method, 0, b"", &[&block])).contains("method"));
        }
        for flag in [F_H_FILTER, F_MULTIPART] {
            assert!(err(&stream(0x1040, 1, flag, b"", &[&block])).contains("flags"));
        }
        let mut s = stream(0x1040, 1, 0, b"", &[]);
        s[0] = 0x88;
        assert!(err(&s).contains("bad magic"));

        // Sizes: an extra field or a block above 64 MiB is refused before any allocation;
        // 64 MiB itself passes the size check (and then runs out of input).
        let head = stream(0x1040, 1, 0, b"", &[]);
        let head = &head[..head.len() - 4];
        let with = |tail: &[u8]| [head, tail].concat();
        let max = MAX_BLOCK as u32;
        assert_eq!(MAX_BLOCK, 67_108_864);
        assert!(err(&with(&(max + 1).to_be_bytes())).contains("too large"));
        let e = read_all(&with(&[max.to_be_bytes(), max.to_be_bytes()].concat())).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        assert!(err(&with(&[0, 0, 0, 4, 0, 0, 0, 5])).contains("exceeds"));
        let x = stream(0x1040, 1, F_H_EXTRA_FIELD, b"", &[]);
        let mut big = x[..38].to_vec();
        big.extend_from_slice(&(max + 1).to_be_bytes());
        assert!(err(&big).contains("extra field too large"));
        big[38..42].copy_from_slice(&max.to_be_bytes());
        let e = read_all(&big).unwrap_err();
        assert_eq!(
            e.kind(),
            io::ErrorKind::UnexpectedEof,
            "64 MiB extra field: {e}"
        );

        // A packed block that decodes to fewer bytes than it claims.
        let mut s = stream(0x1040, 1, 0, b"", &[&block]);
        s[38..42].copy_from_slice(&4097u32.to_be_bytes());
        assert!(read_all(&s).is_err());
    }

    #[test]
    fn crc_is_the_standard_crc_32() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn a_block_lzo_does_not_shrink_at_all_is_stored() {
        // LZO output exactly as long as its input: lzop marks stored blocks by equal lengths,
        // so such a block must be stored, never written compressed.
        let data = (0..4096)
            .map(|k| [vec![0u8; k], noise(600)].concat())
            .find(|d| crate::lzo1x_compress(d).len() == d.len())
            .expect("some prefix makes LZO break even");
        let mut w = LzopWriter::new(Vec::new());
        w.write_all(&data).unwrap();
        let out = w.finish().unwrap();
        assert_eq!(be32(&out, 38) as usize, data.len());
        assert_eq!(be32(&out, 42) as usize, data.len(), "stored");
        assert_eq!(&out[50..50 + data.len()], &data[..]);
        assert_eq!(read_all(&out).unwrap(), data);
    }

    #[test]
    fn flush_reaches_the_inner_writer() {
        struct Flushes(usize);
        impl Write for Flushes {
            fn write(&mut self, data: &[u8]) -> io::Result<usize> {
                Ok(data.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                self.0 += 1;
                Ok(())
            }
        }
        let mut w = LzopWriter::new(Flushes(0));
        w.write_all(b"data").unwrap();
        w.flush().unwrap();
        assert_eq!(w.inner.as_ref().unwrap().0, 1);
        assert_eq!(w.finish().unwrap().0, 2, "finish flushes too");
    }
}

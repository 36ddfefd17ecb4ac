//! Streaming compression for VMA archives: zstd (multi-threaded), lzo in the lzop file
//! container, and gzip, plus detection of the codec from magic bytes or file names.
//!
//! # Design
//!
//! VMA compresses the whole archive stream (Proxmox pipes it through `zstd`, `lzop` or
//! `gzip`). We do the same in-process: [`Encoder`] is a `Write` that compresses into any
//! `Write`, and [`Decoder`] is a `Read` that decompresses from any `Read`. Output of our
//! encoders is readable by the `zstd`, `lzop` and `gzip` tools and theirs by our
//! decoders (tested through the real CLIs). Memory is bounded: zstd uses its own
//! window, lzop one 256 KiB block (decoding refuses blocks over 64 MiB), gzip 32 KiB.
//!
//! The LZO1X codec is our own safe-Rust implementation (`lzo` module); zstd and gzip
//! come from the `zstd` and `flate2` crates.
//!
//! # Example
//!
//! ```
//! use std::io::{Read, Write};
//! use vmdump_compress::{Codec, Decoder, Encoder, EncoderOptions};
//!
//! let mut enc = Encoder::new(Codec::Zstd, Vec::new(), &EncoderOptions::default()).unwrap();
//! enc.write_all(b"VMA\0 and more").unwrap();
//! let bytes = enc.finish().unwrap();
//! let mut dec = Decoder::detect(&bytes[..]).unwrap();
//! assert_eq!(dec.codec(), Codec::Zstd);
//! let mut out = Vec::new();
//! dec.read_to_end(&mut out).unwrap();
//! assert_eq!(out, b"VMA\0 and more");
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::io::{self, Read, Write};
use std::path::Path;

mod lzo;
mod lzop;
mod seekable;

pub use lzop::{LzopReader, LzopWriter, LZOP_BLOCK_SIZE, LZOP_MAGIC};
pub use seekable::{
    FrameEntry, ParallelDecoder, ReadAtPos, SeekTable, SeekableReader, SeekableWriter,
    DEFAULT_FRAME_SIZE, SEEKABLE_MAGIC, SEEK_TABLE_MAGIC,
};

/// Compress `input` as one raw LZO1X block (the unit lzop stores), readable by any
/// LZO1X decompressor.
pub fn lzo1x_compress(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 16 + 64);
    lzo::Compressor::new().compress(input, &mut out);
    out
}

/// Decompress one raw LZO1X block that must not grow past `max_len` bytes. Hostile input
/// gives an error, never a panic or a larger allocation.
pub fn lzo1x_decompress(input: &[u8], max_len: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    lzo::decompress(input, &mut out, max_len).map_err(|e| Error::Io {
        codec: Codec::Lzo,
        source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
    })?;
    Ok(out)
}

/// zstd frame magic.
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
/// gzip member magic.
pub const GZIP_MAGIC: [u8; 2] = [0x1F, 0x8B];

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// I/O or codec failure.
    #[error("{codec} stream error")]
    Io {
        /// Codec in use.
        codec: Codec,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// A compression name that is not one of `0`, `1`, `none`, `lzo`, `gzip`, `zstd`.
    #[error("'{0}' is not one of 0, 1, none, lzo, gzip, zstd")]
    UnknownCodec(String),
    /// Invalid option.
    #[error("invalid {codec} option: {reason}")]
    Option {
        /// Codec in use.
        codec: Codec,
        /// What is wrong.
        reason: String,
    },
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A compression format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// Uncompressed.
    None,
    /// zstd frames (`.zst`).
    Zstd,
    /// LZO1X in the lzop container (`.lzo`).
    Lzo,
    /// gzip (`.gz`).
    Gzip,
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Codec {
    type Err = Error;

    /// vzdump's `compress` values, the one spelling every command accepts: `0` or `none`,
    /// `1` or `lzo`, `gzip`, `zstd`.
    fn from_str(name: &str) -> Result<Codec> {
        match name {
            "0" | "none" => Ok(Codec::None),
            "1" | "lzo" => Ok(Codec::Lzo),
            "gzip" => Ok(Codec::Gzip),
            "zstd" => Ok(Codec::Zstd),
            _ => Err(Error::UnknownCodec(name.to_string())),
        }
    }
}

impl Codec {
    /// Name as vzdump's `compress` option spells it (`none` for no compression).
    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Zstd => "zstd",
            Codec::Lzo => "lzo",
            Codec::Gzip => "gzip",
        }
    }

    /// [`Codec::from_str`](std::str::FromStr) without the error.
    pub fn from_name(name: &str) -> Option<Codec> {
        name.parse().ok()
    }

    /// File extension of a VMA archive with this codec (`.vma`, `.vma.zst`, ...).
    pub fn vma_extension(self) -> &'static str {
        match self {
            Codec::None => ".vma",
            Codec::Zstd => ".vma.zst",
            Codec::Lzo => ".vma.lzo",
            Codec::Gzip => ".vma.gz",
        }
    }

    /// Codec from a file name's last extension (`.zst`, `.lzo`, `.gz`; `None` for
    /// anything else, e.g. `.vma`).
    pub fn from_path(path: impl AsRef<Path>) -> Codec {
        match path.as_ref().extension().and_then(|e| e.to_str()) {
            Some("zst") => Codec::Zstd,
            Some("lzo") => Codec::Lzo,
            Some("gz") => Codec::Gzip,
            _ => Codec::None,
        }
    }

    /// Codec from the first bytes of a stream (at least 9 bytes for lzop; anything
    /// unrecognised is taken as uncompressed).
    pub fn from_magic(head: &[u8]) -> Codec {
        if head.starts_with(&ZSTD_MAGIC) {
            Codec::Zstd
        } else if head.starts_with(&GZIP_MAGIC) {
            Codec::Gzip
        } else if head.starts_with(&LZOP_MAGIC) {
            Codec::Lzo
        } else {
            Codec::None
        }
    }
}

/// Encoder settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncoderOptions {
    /// Compression level; `None` = the tool's default (zstd 3, gzip 6).
    pub level: Option<i32>,
    /// zstd worker threads; 0 = single-threaded in the caller's thread.
    pub threads: u32,
}

/// A streaming compressor writing into `W`.
#[non_exhaustive]
pub enum Encoder<W: Write> {
    /// Pass-through.
    None(W),
    /// zstd as one stream (only through [`Encoder::zstd_stream`]; the baseline that
    /// benchmarks compare the seekable format with).
    Zstd(zstd::stream::write::Encoder<'static, W>),
    /// zstd in the seekable format: independent frames and a seek table, the default.
    ZstdSeekable(SeekableWriter<W>),
    /// lzop.
    Lzo(LzopWriter<W>),
    /// gzip.
    Gzip(flate2::write::GzEncoder<W>),
}

impl<W: Write> Encoder<W> {
    /// New encoder for `codec`.
    pub fn new(codec: Codec, w: W, opts: &EncoderOptions) -> Result<Self> {
        let io = |source| Error::Io { codec, source };
        Ok(match codec {
            Codec::None => Encoder::None(w),
            Codec::Zstd => Encoder::ZstdSeekable(
                SeekableWriter::new(w, opts.level.unwrap_or(3), opts.threads).map_err(io)?,
            ),
            Codec::Lzo => Encoder::Lzo(LzopWriter::new(w)),
            Codec::Gzip => {
                let level = opts.level.unwrap_or(6);
                let level = u32::try_from(level)
                    .ok()
                    .filter(|l| *l <= 9)
                    .ok_or_else(|| Error::Option {
                        codec,
                        reason: format!("level {level} not in 0..=9"),
                    })?;
                Encoder::Gzip(flate2::write::GzEncoder::new(
                    w,
                    flate2::Compression::new(level),
                ))
            }
        })
    }

    /// zstd as one stream (`opts.threads` > 0: zstd's own multi-threading), as written
    /// before the seekable format; kept as the benchmark baseline.
    pub fn zstd_stream(w: W, opts: &EncoderOptions) -> Result<Self> {
        let io = |source| Error::Io {
            codec: Codec::Zstd,
            source,
        };
        let mut e = zstd::stream::write::Encoder::new(w, opts.level.unwrap_or(3)).map_err(io)?;
        if opts.threads > 0 {
            e.multithread(opts.threads).map_err(io)?;
        }
        Ok(Encoder::Zstd(e))
    }

    /// The codec.
    pub fn codec(&self) -> Codec {
        match self {
            Encoder::None(_) => Codec::None,
            Encoder::Zstd(_) | Encoder::ZstdSeekable(_) => Codec::Zstd,
            Encoder::Lzo(_) => Codec::Lzo,
            Encoder::Gzip(_) => Codec::Gzip,
        }
    }

    /// Finish the stream (trailers, end markers) and return the inner writer, flushed.
    pub fn finish(self) -> Result<W> {
        let codec = self.codec();
        let io = |source| Error::Io { codec, source };
        let mut w = match self {
            Encoder::None(w) => w,
            Encoder::Zstd(e) => e.finish().map_err(io)?,
            Encoder::ZstdSeekable(e) => e.finish().map_err(io)?,
            Encoder::Lzo(e) => e.finish().map_err(io)?,
            Encoder::Gzip(e) => e.finish().map_err(io)?,
        };
        w.flush().map_err(io)?;
        Ok(w)
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Zstd(e) => e.write(buf),
            Encoder::ZstdSeekable(e) => e.write(buf),
            Encoder::Lzo(e) => e.write(buf),
            Encoder::Gzip(e) => e.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.write_all(buf),
            Encoder::Zstd(e) => e.write_all(buf),
            Encoder::ZstdSeekable(e) => e.write_all(buf),
            Encoder::Lzo(e) => e.write_all(buf),
            Encoder::Gzip(e) => e.write_all(buf),
        }
    }

    /// Pass-through hands the slices on (one `writev` for a file); the compressors take them
    /// one at a time.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write_vectored(bufs),
            _ => {
                let first = bufs.iter().find(|b| !b.is_empty());
                self.write(first.map_or(&[][..], |b| &b[..]))
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Zstd(e) => e.flush(),
            Encoder::ZstdSeekable(e) => e.flush(),
            Encoder::Lzo(e) => e.flush(),
            Encoder::Gzip(e) => e.flush(),
        }
    }
}

/// A reader that first replays bytes already read for detection.
pub struct Peeked<R> {
    head: Vec<u8>,
    pos: usize,
    inner: R,
}

impl<R: Read> Read for Peeked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.head.len() {
            let n = buf.len().min(self.head.len() - self.pos);
            buf[..n].copy_from_slice(&self.head[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        self.inner.read(buf)
    }
}

impl<R: Read> io::BufRead for BufPeeked<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.0.fill_buf()
    }
    fn consume(&mut self, amt: usize) {
        self.0.consume(amt);
    }
}

impl<R: Read> Read for BufPeeked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

/// Buffered [`Peeked`], as the zstd and gzip decoders want.
pub struct BufPeeked<R: Read>(io::BufReader<Peeked<R>>);

/// A streaming decompressor reading from `R`.
#[non_exhaustive]
pub enum Decoder<R: Read> {
    /// Pass-through.
    None(Peeked<R>),
    /// zstd (all frames).
    Zstd(zstd::stream::read::Decoder<'static, BufPeeked<R>>),
    /// lzop.
    Lzo(LzopReader<Peeked<R>>),
    /// gzip (all members, as `zcat` does).
    Gzip(flate2::read::MultiGzDecoder<Peeked<R>>),
}

impl<R: Read> Decoder<R> {
    /// Detect the codec from the first bytes of `r` and wrap it. A stream shorter than
    /// a magic number is passed through.
    pub fn detect(mut r: R) -> Result<Self> {
        let mut head = vec![0u8; LZOP_MAGIC.len()];
        let mut n = 0;
        while n < head.len() {
            match r.read(&mut head[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(Error::Io {
                        codec: Codec::None,
                        source,
                    })
                }
            }
        }
        head.truncate(n);
        let codec = Codec::from_magic(&head);
        Self::with_codec(
            codec,
            Peeked {
                head,
                pos: 0,
                inner: r,
            },
        )
    }

    /// Wrap `r` (already peeked or not) for a known codec.
    pub fn with_codec(codec: Codec, r: Peeked<R>) -> Result<Self> {
        let io = |source| Error::Io { codec, source };
        Ok(match codec {
            Codec::None => Decoder::None(r),
            Codec::Zstd => {
                let buf = BufPeeked(io::BufReader::with_capacity(
                    zstd::stream::read::Decoder::<&[u8]>::recommended_output_size().max(1 << 17),
                    r,
                ));
                let mut d = zstd::stream::read::Decoder::with_buffer(buf).map_err(io)?;
                // Allow the largest windows zstd --long writes.
                d.window_log_max(31).map_err(io)?;
                Decoder::Zstd(d)
            }
            Codec::Lzo => Decoder::Lzo(LzopReader::new(r)),
            Codec::Gzip => Decoder::Gzip(flate2::read::MultiGzDecoder::new(r)),
        })
    }

    /// The detected codec.
    pub fn codec(&self) -> Codec {
        match self {
            Decoder::None(_) => Codec::None,
            Decoder::Zstd(_) => Codec::Zstd,
            Decoder::Lzo(_) => Codec::Lzo,
            Decoder::Gzip(_) => Codec::Gzip,
        }
    }
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::None(r) => r.read(buf),
            Decoder::Zstd(d) => d.read(buf),
            Decoder::Lzo(d) => d.read(buf),
            Decoder::Gzip(d) => d.read(buf),
        }
    }
}

impl<R: Read> Peeked<R> {
    /// Wrap a reader without peeking.
    pub fn new(inner: R) -> Self {
        Peeked {
            head: Vec::new(),
            pos: 0,
            inner,
        }
    }
}

#[cfg(test)]
mod block_api_tests {
    use super::*;

    #[test]
    fn lzo_block_round_trip_and_limits() {
        let data: Vec<u8> = (0..100_000u32)
            .map(|i| (i % 251) as u8 ^ (i / 4096) as u8)
            .collect();
        let packed = lzo1x_compress(&data);
        assert!(packed.len() < data.len() / 2, "{} bytes", packed.len());
        assert_eq!(lzo1x_decompress(&packed, data.len()).unwrap(), data);
        // One byte short of the output: refused, not truncated.
        let e = lzo1x_decompress(&packed, data.len() - 1).unwrap_err();
        assert_eq!(e.to_string(), "lzo stream error");
        assert!(lzo1x_decompress(&[], 10).is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Codec; 4] = [Codec::None, Codec::Zstd, Codec::Lzo, Codec::Gzip];

    #[test]
    fn names_extensions_paths_and_magic_agree() {
        let names = ["none", "zstd", "lzo", "gzip"];
        let exts = [".vma", ".vma.zst", ".vma.lzo", ".vma.gz"];
        for ((c, name), ext) in ALL.into_iter().zip(names).zip(exts) {
            assert_eq!(c.name(), name);
            assert_eq!(c.to_string(), name);
            assert_eq!(name.parse::<Codec>().unwrap(), c);
            assert_eq!(Codec::from_name(name), Some(c));
            assert_eq!(c.vma_extension(), ext);
            assert_eq!(Codec::from_path(format!("/dump/vzdump-qemu-100{ext}")), c);
        }
        assert_eq!("0".parse::<Codec>().unwrap(), Codec::None);
        assert_eq!("1".parse::<Codec>().unwrap(), Codec::Lzo);
        assert_eq!(Codec::from_name("zst"), None);
        let e = "lz4".parse::<Codec>().unwrap_err();
        assert!(matches!(&e, Error::UnknownCodec(n) if n == "lz4"));
        assert_eq!(
            e.to_string(),
            "'lz4' is not one of 0, 1, none, lzo, gzip, zstd"
        );
        assert_eq!(Codec::from_path("a.tar"), Codec::None);
        assert_eq!(Codec::from_path("zst"), Codec::None);

        assert_eq!(Codec::from_magic(&[0x28, 0xB5, 0x2F, 0xFD, 0]), Codec::Zstd);
        assert_eq!(Codec::from_magic(&[0x1F, 0x8B]), Codec::Gzip);
        assert_eq!(Codec::from_magic(&LZOP_MAGIC), Codec::Lzo);
        for head in [
            &b"VMA\0"[..],
            &[0x28, 0xB5, 0x2F],
            &[0x1F],
            &LZOP_MAGIC[..8],
            &[],
        ] {
            assert_eq!(Codec::from_magic(head), Codec::None, "{head:02x?}");
        }
    }

    /// Hands out at most 3 bytes per read and an `Interrupted` error before every read.
    struct Stutter<'a> {
        data: &'a [u8],
        interrupt: bool,
    }

    impl Read for Stutter<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.interrupt = !self.interrupt;
            if self.interrupt {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = buf.len().min(3).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// Reads `d` to the end in reads of varying sizes (retrying `Interrupted`).
    fn read_all(mut d: impl Read) -> Vec<u8> {
        let mut out = Vec::new();
        for size in [1usize, 7, 2, 4096, 5].iter().cycle() {
            let mut b = vec![0u8; *size];
            match d.read(&mut b) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&b[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("{e}"),
            }
        }
        out
    }

    /// Counts flushes of the output (in a cell the test keeps).
    struct Flushes(Vec<u8>, std::rc::Rc<std::cell::Cell<usize>>);

    impl Write for Flushes {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.1.set(self.1.get() + 1);
            Ok(())
        }
    }

    fn flushes() -> (Flushes, std::rc::Rc<std::cell::Cell<usize>>) {
        let count = std::rc::Rc::default();
        (Flushes(Vec::new(), std::rc::Rc::clone(&count)), count)
    }

    fn encode(
        codec: Codec,
        make: impl FnOnce(Flushes) -> Encoder<Flushes>,
        data: &[u8],
    ) -> Vec<u8> {
        let (out, count) = flushes();
        let mut e = make(out);
        assert_eq!(e.codec(), codec);
        let (a, rest) = data.split_at(1000);
        let (b, rest) = rest.split_at(3000);
        let n = e.write(a).unwrap();
        e.write_all(&a[n..]).unwrap();
        let mut rest_b = b;
        while !rest_b.is_empty() {
            // An empty slice first: the data is taken from the first non-empty one.
            let slices = [io::IoSlice::new(&[]), io::IoSlice::new(rest_b)];
            let n = e.write_vectored(&slices).unwrap();
            assert!(n > 0 && n <= rest_b.len());
            rest_b = &rest_b[n..];
        }
        e.write_all(rest).unwrap();
        let before = count.get();
        e.flush().unwrap();
        assert!(count.get() > before, "{codec}: flush reaches the output");
        let before = count.get();
        let out = e.finish().unwrap();
        assert!(count.get() > before, "{codec}: finish flushes the output");
        out.0
    }

    #[test]
    fn every_encoder_round_trips_through_detection() {
        let mut data = b"VMA\0".to_vec();
        for i in 0..20_000u32 {
            data.extend_from_slice(format!("line {i}: the guest wrote this\n").as_bytes());
        }
        for codec in ALL {
            let opts = EncoderOptions::default();
            let bytes = encode(codec, |w| Encoder::new(codec, w, &opts).unwrap(), &data);
            assert_eq!(Codec::from_magic(&bytes), codec);
            if codec != Codec::None {
                assert!(
                    bytes.len() < data.len() / 2,
                    "{codec}: {} bytes",
                    bytes.len()
                );
            }
            let d = Decoder::detect(Stutter {
                data: &bytes,
                interrupt: false,
            })
            .unwrap();
            assert_eq!(d.codec(), codec);
            assert!(read_all(d) == data, "{codec}");
        }
        for threads in [0, 2] {
            let opts = EncoderOptions {
                level: Some(1),
                threads,
            };
            let bytes = encode(
                Codec::Zstd,
                |w| Encoder::zstd_stream(w, &opts).unwrap(),
                &data,
            );
            let d = Decoder::detect(&bytes[..]).unwrap();
            assert!(read_all(d) == data, "zstd stream, {threads} threads");
        }
    }

    #[test]
    fn pass_through_keeps_slices_and_short_streams() {
        let mut e = Encoder::new(Codec::None, Vec::new(), &EncoderOptions::default()).unwrap();
        let slices = [io::IoSlice::new(b"ab"), io::IoSlice::new(b"cde")];
        assert_eq!(e.write_vectored(&slices).unwrap(), 5, "one writev for both");
        assert_eq!(e.finish().unwrap(), b"abcde");
        // Shorter than every magic: passed through as it is.
        for len in 0..LZOP_MAGIC.len() {
            let d = Decoder::detect(Stutter {
                data: &LZOP_MAGIC[..len],
                interrupt: true,
            })
            .unwrap();
            assert_eq!(d.codec(), Codec::None);
            assert_eq!(read_all(d), &LZOP_MAGIC[..len]);
        }
        let d = Decoder::with_codec(Codec::None, Peeked::new(&b"xyz"[..])).unwrap();
        assert_eq!(read_all(d), b"xyz");
    }

    #[test]
    fn gzip_levels_and_read_errors() {
        let data = vec![7u8; 100_000];
        let size = |level| {
            let opts = EncoderOptions {
                level: Some(level),
                threads: 0,
            };
            let mut e = Encoder::new(Codec::Gzip, Vec::new(), &opts).unwrap();
            e.write_all(&data).unwrap();
            e.finish().unwrap().len()
        };
        assert!(size(0) > data.len(), "level 0 stores");
        assert!(size(9) < 1000);
        for level in [10, -1] {
            let opts = EncoderOptions {
                level: Some(level),
                threads: 0,
            };
            let e = Encoder::new(Codec::Gzip, Vec::new(), &opts).err().unwrap();
            assert_eq!(
                e.to_string(),
                format!("invalid gzip option: level {level} not in 0..=9")
            );
        }

        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("gone"))
            }
        }
        let e = Decoder::detect(Broken).err().unwrap();
        assert!(
            matches!(&e, Error::Io { codec: Codec::None, source } if source.to_string() == "gone")
        );
    }

    #[test]
    fn raw_lzo_blocks_are_checked() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 7) as u8).collect();
        let packed = lzo1x_compress(&data);
        assert_eq!(lzo1x_decompress(&packed, data.len()).unwrap(), data);
        assert_eq!(lzo1x_decompress(&lzo1x_compress(&[]), 0).unwrap(), b"");
        assert_eq!(lzo1x_decompress(&lzo1x_compress(b"x"), 1).unwrap(), b"x");
        let e = lzo1x_decompress(&packed[..packed.len() - 1], data.len()).unwrap_err();
        assert!(
            matches!(&e, Error::Io { codec: Codec::Lzo, source } if source.kind() == io::ErrorKind::InvalidData)
        );
        // The reason reaches the caller as the source's text.
        let reason = |e: Error| match e {
            Error::Io { source, .. } => source.to_string(),
            e => panic!("{e}"),
        };
        assert_eq!(reason(e), "input ends inside an lzo instruction");
        let e = lzo1x_decompress(&packed, data.len() - 1).unwrap_err();
        assert_eq!(reason(e), "lzo output exceeds the block size");
    }
}

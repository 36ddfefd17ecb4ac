//! The streaming archive writer: POSIX.1-2001 (pax) members as GNU tar writes them with
//! vzdump's flags — ustar headers, a PAX extended header where needed (long names and link
//! targets, large numbers, sub-second mtimes, `SCHILY.xattr.*`, `SCHILY.acl.*`), PAX sparse
//! 1.0 for sparse files, and the end-of-archive blocks padded to GNU tar's 10 KiB record.
//! Names are written exactly as given (`./etc/vzdump/pct.conf` keeps its `./`).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

use crate::entry::{Kind, Meta, Segment};
use crate::error::{Error, Result};
use crate::header::{self, field, BLOCK};

/// GNU tar's default record size (blocking factor 20): the archive is padded to it.
const RECORD: u64 = 20 * BLOCK as u64;
/// Copy buffer.
const CHUNK: usize = 256 * 1024;

/// How a regular file's data went into the archive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    /// Bytes of data the source had fewer than announced, written as zeros (GNU tar's
    /// "File shrank by N bytes; padding with zeros").
    pub padded: u64,
}

/// Writes a tar stream into `W`.
#[derive(Debug)]
pub struct Writer<W: Write> {
    w: W,
    pos: u64,
    buf: Vec<u8>,
}

fn write_err(source: io::Error) -> Error {
    Error::Stream {
        what: "write archive",
        source,
    }
}

impl<W: Write> Writer<W> {
    /// A writer at the start of an archive.
    pub fn new(w: W) -> Self {
        Writer {
            w,
            pos: 0,
            buf: Vec::new(),
        }
    }

    /// Bytes written so far (uncompressed).
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn put(&mut self, data: &[u8]) -> Result<()> {
        self.w.write_all(data).map_err(write_err)?;
        self.pos += data.len() as u64;
        Ok(())
    }

    fn pad(&mut self, len: u64) -> Result<()> {
        let n = header::padding(len);
        if n > 0 {
            self.put(&[0u8; BLOCK][..n])?;
        }
        Ok(())
    }

    /// Writes the header (and PAX header) of `meta` with `size` data bytes following;
    /// `stored_name` replaces the ustar name (sparse files), `extra` adds PAX records.
    fn headers(
        &mut self,
        meta: &Meta,
        size: u64,
        stored_name: Option<&[u8]>,
        extra: &[(&str, Vec<u8>)],
    ) -> Result<()> {
        let mut pax = Vec::new();
        let mut h = [0u8; BLOCK];
        let mut name = meta.name.clone();
        if meta.kind == Kind::Dir && !name.ends_with(b"/") {
            name.push(b'/');
        }
        let plain = stored_name.unwrap_or(&name);
        if let Some((prefix, rest)) = header::split_name(plain) {
            header::put_bytes(&mut h, field::NAME, rest);
            header::put_bytes(&mut h, field::PREFIX, prefix);
        } else {
            header::put_bytes(&mut h, field::NAME, &plain[..100]);
            header::pax_record(&mut pax, "path", plain);
        }
        if std::str::from_utf8(&name).is_err() && !pax.is_empty() {
            let mut p = Vec::new();
            header::pax_record(&mut p, "hdrcharset", b"BINARY");
            p.extend_from_slice(&pax);
            pax = p;
        }
        header::put_octal(&mut h, field::MODE, u64::from(meta.mode & 0o7777));
        for (f, key, v) in [(field::UID, "uid", meta.uid), (field::GID, "gid", meta.gid)] {
            if !header::put_octal(&mut h, f, v) {
                header::put_octal(&mut h, f, 0);
                header::pax_record(&mut pax, key, v.to_string().as_bytes());
            }
        }
        if !header::put_octal(&mut h, field::SIZE, size) {
            header::put_octal(&mut h, field::SIZE, 0);
            header::pax_record(&mut pax, "size", size.to_string().as_bytes());
        }
        let secs = u64::try_from(meta.mtime).unwrap_or(0);
        if meta.mtime < 0 || !header::put_octal(&mut h, field::MTIME, secs) || meta.mtime_nsec > 0 {
            if meta.mtime < 0 || secs > header::octal_max(12) {
                header::put_octal(&mut h, field::MTIME, 0);
            }
            let v = if meta.mtime_nsec > 0 {
                format!("{}.{:09}", meta.mtime, meta.mtime_nsec)
            } else {
                meta.mtime.to_string()
            };
            header::pax_record(&mut pax, "mtime", v.as_bytes());
        }
        h[field::TYPE] = meta.kind.flag();
        match &meta.kind {
            Kind::Symlink(t) | Kind::HardLink(t) => {
                if t.len() <= 100 {
                    header::put_bytes(&mut h, field::LINKNAME, t);
                } else {
                    header::put_bytes(&mut h, field::LINKNAME, &t[..100]);
                    header::pax_record(&mut pax, "linkpath", t);
                }
            }
            Kind::Char(ma, mi) | Kind::Block(ma, mi) => {
                for (f, v) in [(field::DEVMAJOR, ma), (field::DEVMINOR, mi)] {
                    if !header::put_octal(&mut h, f, u64::from(*v)) {
                        return Err(Error::TooLarge {
                            name: meta.name_lossy(),
                            msg: format!("device number {v}"),
                        });
                    }
                }
            }
            _ => {}
        }
        for (k, v) in extra {
            header::pax_record(&mut pax, k, v);
        }
        if let Some(a) = &meta.acl_access {
            header::pax_record(&mut pax, "SCHILY.acl.access", a.as_bytes());
        }
        if let Some(a) = &meta.acl_default {
            header::pax_record(&mut pax, "SCHILY.acl.default", a.as_bytes());
        }
        for (k, v) in &meta.xattrs {
            header::pax_record(&mut pax, &format!("SCHILY.xattr.{k}"), v);
        }
        if !pax.is_empty() {
            let mut x = [0u8; BLOCK];
            let base = name
                .strip_suffix(b"/")
                .unwrap_or(&name)
                .rsplit(|&b| b == b'/')
                .next()
                .unwrap_or(b"x");
            let dir_len = name.len().saturating_sub(base.len() + 1).min(name.len());
            let mut xname = name[..dir_len].to_vec();
            if xname.is_empty() {
                xname.extend_from_slice(b".");
            }
            xname.extend_from_slice(b"/PaxHeaders/");
            xname.extend_from_slice(base);
            xname.truncate(100);
            header::put_bytes(&mut x, field::NAME, &xname);
            header::put_octal(&mut x, field::MODE, 0o644);
            header::put_octal(&mut x, field::UID, 0);
            header::put_octal(&mut x, field::GID, 0);
            header::put_octal(&mut x, field::SIZE, pax.len() as u64);
            header::put_octal(&mut x, field::MTIME, secs.min(header::octal_max(12)));
            x[field::TYPE] = b'x';
            header::seal(&mut x);
            self.put(&x)?;
            self.put(&pax)?;
            self.pad(pax.len() as u64)?;
        }
        header::seal(&mut h);
        self.put(&h)
    }

    /// Appends a member without data: directory, symlink, hard link, device, fifo.
    pub fn append_special(&mut self, meta: &Meta) -> Result<()> {
        if let Kind::File { .. } = meta.kind {
            return Err(Error::TooLarge {
                name: meta.name_lossy(),
                msg: "a regular file needs its data".into(),
            });
        }
        self.headers(meta, 0, None, &[])
    }

    /// Appends a regular file whose `size` bytes (from `meta.kind`) come from `data`. A
    /// source that ends early is padded with zeros; one that has more is cut at `size`.
    pub fn append_file(&mut self, meta: &Meta, data: &mut dyn Read) -> Result<Appended> {
        let Kind::File { size } = meta.kind else {
            return self.append_special(meta).map(|()| Appended::default());
        };
        self.headers(meta, size, None, &[])?;
        let padded = self.copy(data, size)?;
        self.pad(size)?;
        Ok(Appended { padded })
    }

    /// Copies exactly `len` bytes, zero-padding a short source; returns the padding.
    fn copy(&mut self, data: &mut dyn Read, len: u64) -> Result<u64> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(CHUNK, 0);
        let mut left = len;
        let mut res = Ok(0);
        while left > 0 {
            let want = left.min(CHUNK as u64) as usize;
            let n = match data.read(&mut buf[..want]) {
                Ok(0) => {
                    res = self.zeros(left).map(|()| left);
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    res = Err(Error::Stream {
                        what: "read member data",
                        source,
                    });
                    break;
                }
            };
            if let Err(e) = self.put(&buf[..n]) {
                res = Err(e);
                break;
            }
            left -= n as u64;
        }
        self.buf = buf;
        res
    }

    fn zeros(&mut self, mut n: u64) -> Result<()> {
        let z = [0u8; 8192];
        while n > 0 {
            let k = n.min(z.len() as u64) as usize;
            self.put(&z[..k])?;
            n -= k as u64;
        }
        Ok(())
    }

    /// Appends a sparse regular file as PAX sparse 1.0: only `segments` (sorted, within the
    /// size) are stored, read from `file` at their offsets.
    pub fn append_sparse(
        &mut self,
        meta: &Meta,
        file: &File,
        segments: &[Segment],
    ) -> Result<Appended> {
        let Kind::File { size } = meta.kind else {
            return self.append_special(meta).map(|()| Appended::default());
        };
        let mut segs: Vec<Segment> = segments.to_vec();
        if segs.last().is_none_or(|s| s.offset + s.len < size) {
            // GNU tar ends the map with an empty segment at the end of the file.
            segs.push(Segment {
                offset: size,
                len: 0,
            });
        }
        let mut map = format!("{}\n", segs.len());
        for s in &segs {
            map.push_str(&format!("{}\n{}\n", s.offset, s.len));
        }
        let map_len = map.len() as u64 + header::padding(map.len() as u64) as u64;
        let data_len: u64 = segs.iter().map(|s| s.len).sum();
        let mut stored = Vec::new();
        let name = &meta.name;
        let base_at = name.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
        stored.extend_from_slice(&name[..base_at]);
        stored.extend_from_slice(b"GNUSparseFile.0/");
        stored.extend_from_slice(&name[base_at..]);
        let extra = [
            ("GNU.sparse.major", b"1".to_vec()),
            ("GNU.sparse.minor", b"0".to_vec()),
            ("GNU.sparse.name", name.clone()),
            ("GNU.sparse.realsize", size.to_string().into_bytes()),
        ];
        self.headers(meta, map_len + data_len, Some(&stored), &extra)?;
        self.put(map.as_bytes())?;
        self.pad(map.len() as u64)?;
        let mut padded = 0;
        for s in &segs {
            let mut r = AtReader {
                file,
                pos: s.offset,
            };
            padded += self.copy(&mut r, s.len)?;
        }
        self.pad(map_len + data_len)?;
        Ok(Appended { padded })
    }

    /// Ends the archive (two zero blocks, padded to the 10 KiB record), flushes and returns
    /// the inner writer.
    pub fn finish(mut self) -> Result<W> {
        self.put(&[0u8; 2 * BLOCK])?;
        let rest = (RECORD - self.pos % RECORD) % RECORD;
        self.zeros(rest)?;
        self.w.flush().map_err(write_err)?;
        Ok(self.w)
    }
}

/// Reads a file from an offset with `pread`.
struct AtReader<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for AtReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

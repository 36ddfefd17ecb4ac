//! The validating streaming reader: ustar/pax (GNU tar's `--format=posix`, what vzdump
//! writes), GNU long names (`L`/`K`) and PAX sparse 1.0. Every length is checked against a
//! bound before anything is allocated, so a hostile archive cannot make the reader allocate
//! or loop without end; PAX values may contain any byte (newlines too).

use std::io::{self, Read};

use crate::entry::{Kind, Meta, Segment};
use crate::error::{Error, Result};
use crate::header::{self, field, BLOCK};

/// The largest PAX extended header or GNU long name accepted.
pub const MAX_EXTENDED: u64 = 1 << 20;
/// The most sparse segments one member may have.
pub const MAX_SEGMENTS: usize = 1 << 20;

/// One member as read: its metadata, and the data map of a sparse file.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Metadata (names resolved from PAX/GNU records).
    pub meta: Meta,
    /// Data segments of a sparse file (the rest reads as zeros); `None` for plain data.
    pub sparse: Option<Vec<Segment>>,
    /// Offset of the member's first header in the stream.
    pub offset: u64,
}

/// Reads members from a tar stream.
#[derive(Debug)]
pub struct Reader<R: Read> {
    r: R,
    pos: u64,
    /// Data bytes of the current member not read yet.
    left: u64,
    /// Padding after them.
    pad: u64,
    done: bool,
    global: Vec<(String, Vec<u8>)>,
}

fn read_err(source: io::Error) -> Error {
    Error::Stream {
        what: "read archive",
        source,
    }
}

impl<R: Read> Reader<R> {
    /// A reader at the start of a stream.
    pub fn new(r: R) -> Self {
        Reader {
            r,
            pos: 0,
            left: 0,
            pad: 0,
            done: false,
            global: Vec::new(),
        }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn corrupt(&self, at: u64, msg: impl Into<String>) -> Error {
        Error::Corrupt {
            offset: at,
            msg: msg.into(),
        }
    }

    /// Reads exactly `buf.len()` bytes; `Ok(false)` at a clean end of stream before any.
    fn fill(&mut self, buf: &mut [u8]) -> Result<bool> {
        let mut got = 0;
        while got < buf.len() {
            match self.r.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(self.corrupt(self.pos, "archive ends inside a block")),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(read_err(e)),
            }
        }
        self.pos += got as u64;
        Ok(true)
    }

    fn skip(&mut self, mut n: u64) -> Result<()> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let k = n.min(buf.len() as u64) as usize;
            if !self.fill(&mut buf[..k])? {
                return Err(self.corrupt(self.pos, "archive ends inside a member"));
            }
            n -= k as u64;
        }
        Ok(())
    }

    /// Reads a whole extended-header payload of `size` bytes (bounded) plus its padding.
    fn read_extended(&mut self, at: u64, size: u64) -> Result<Vec<u8>> {
        if size > MAX_EXTENDED {
            return Err(self.corrupt(
                at,
                format!("extended header of {size} bytes (limit {MAX_EXTENDED})"),
            ));
        }
        let mut v = vec![0u8; size as usize];
        if !self.fill(&mut v)? {
            return Err(self.corrupt(at, "archive ends inside an extended header"));
        }
        self.skip(header::padding(size) as u64)?;
        Ok(v)
    }

    /// The next member, skipping what is left of the current one; `None` at the end.
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        if self.done {
            return Ok(None);
        }
        let rest = self.left + self.pad;
        self.left = 0;
        self.pad = 0;
        self.skip(rest)?;
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut first: Option<u64> = None;
        loop {
            let at = self.pos;
            let mut h = [0u8; BLOCK];
            if !self.fill(&mut h)? {
                // No end blocks: tolerated at a member boundary (GNU tar warns too).
                self.done = true;
                return Ok(None);
            }
            if h.iter().all(|&b| b == 0) {
                self.done = true;
                if first.is_some() {
                    return Err(self.corrupt(at, "end of archive after an extended header"));
                }
                return Ok(None);
            }
            first.get_or_insert(at);
            let stored = header::get_num(&h, field::CHKSUM)
                .ok_or_else(|| self.corrupt(at, "checksum field is not a number"))?;
            let signed: i64 = h
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        i64::from(b as i8)
                    }
                })
                .sum();
            if stored != header::checksum(&h) && i64::try_from(stored).ok() != Some(signed) {
                return Err(self.corrupt(at, "header checksum mismatch (not a tar archive?)"));
            }
            let size = header::get_num(&h, field::SIZE)
                .ok_or_else(|| self.corrupt(at, "size field is not a number"))?;
            let flag = h[field::TYPE];
            match flag {
                b'x' => {
                    let data = self.read_extended(at, size)?;
                    let recs = header::parse_pax(&data).map_err(|m| self.corrupt(at, m))?;
                    pax.extend(recs);
                    continue;
                }
                b'g' => {
                    let data = self.read_extended(at, size)?;
                    let recs = header::parse_pax(&data).map_err(|m| self.corrupt(at, m))?;
                    self.global.extend(recs);
                    continue;
                }
                b'L' | b'K' => {
                    let mut data = self.read_extended(at, size)?;
                    if let Some(end) = data.iter().position(|&b| b == 0) {
                        data.truncate(end);
                    }
                    if flag == b'L' {
                        long_name = Some(data);
                    } else {
                        long_link = Some(data);
                    }
                    continue;
                }
                _ => {}
            }
            let start = first.unwrap_or(at);
            return self
                .member(start, &h, size, pax, long_name, long_link)
                .map(Some);
        }
    }

    fn member(
        &mut self,
        at: u64,
        h: &[u8; BLOCK],
        mut size: u64,
        pax: Vec<(String, Vec<u8>)>,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
    ) -> Result<Entry> {
        let ustar = &h[field::MAGIC.0..field::MAGIC.0 + 5] == b"ustar";
        let mut name = header::get_bytes(h, field::NAME).to_vec();
        if ustar && h[field::MAGIC.0 + 5] == 0 {
            let prefix = header::get_bytes(h, field::PREFIX);
            if !prefix.is_empty() {
                let mut p = prefix.to_vec();
                p.push(b'/');
                p.extend_from_slice(&name);
                name = p;
            }
        }
        if let Some(n) = long_name {
            name = n;
        }
        let mut link = header::get_bytes(h, field::LINKNAME).to_vec();
        if let Some(l) = long_link {
            link = l;
        }
        let num = |f, what: &str| {
            header::get_num(h, f).ok_or_else(|| self.corrupt(at, format!("{what} is not a number")))
        };
        let mut meta = Meta::new(Vec::new(), Kind::Dir);
        meta.mode = (num(field::MODE, "mode")? & 0o7777) as u32;
        meta.uid = num(field::UID, "uid")?;
        meta.gid = num(field::GID, "gid")?;
        meta.mtime = num(field::MTIME, "mtime")? as i64;
        let mut sparse_name = None;
        let mut real_size = None;
        let mut sparse_major = None;
        let parse_u64 = |v: &[u8], what: &str| -> Result<u64> {
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| self.corrupt(at, format!("pax {what} is not a number")))
        };
        for (k, v) in self.global.iter().chain(pax.iter()) {
            match k.as_str() {
                "path" => name = v.clone(),
                "linkpath" => link = v.clone(),
                "uid" => meta.uid = parse_u64(v, "uid")?,
                "gid" => meta.gid = parse_u64(v, "gid")?,
                "size" => size = parse_u64(v, "size")?,
                "mtime" => {
                    let s = String::from_utf8_lossy(v);
                    let (sec, frac) = s.split_once('.').unwrap_or((&s, ""));
                    meta.mtime = sec
                        .parse()
                        .map_err(|_| self.corrupt(at, "pax mtime is not a number"))?;
                    let mut f: String = frac.chars().take(9).collect();
                    while f.len() < 9 {
                        f.push('0');
                    }
                    meta.mtime_nsec = f.parse().unwrap_or(0);
                }
                "SCHILY.acl.access" => {
                    meta.acl_access = Some(String::from_utf8_lossy(v).into_owned());
                }
                "SCHILY.acl.default" => {
                    meta.acl_default = Some(String::from_utf8_lossy(v).into_owned());
                }
                "GNU.sparse.name" => sparse_name = Some(v.clone()),
                "GNU.sparse.realsize" | "GNU.sparse.size" => {
                    real_size = Some(parse_u64(v, "sparse size")?);
                }
                "GNU.sparse.major" => sparse_major = Some(parse_u64(v, "sparse version")?),
                "GNU.sparse.map" | "GNU.sparse.offset" | "GNU.sparse.numblocks" => {
                    return Err(Error::Unsupported {
                        offset: at,
                        msg: "PAX sparse format 0.x".into(),
                    });
                }
                _ => {
                    if let Some(x) = k.strip_prefix("SCHILY.xattr.") {
                        meta.xattrs.push((x.to_string(), v.clone()));
                    }
                }
            }
        }
        let flag = h[field::TYPE];
        meta.kind = match flag {
            b'0' | 0 | b'7' => Kind::File { size },
            b'1' => Kind::HardLink(link),
            b'2' => Kind::Symlink(link),
            b'3' | b'4' => {
                let ma = num(field::DEVMAJOR, "device major")?;
                let mi = num(field::DEVMINOR, "device minor")?;
                let (ma, mi) = (
                    u32::try_from(ma).map_err(|_| self.corrupt(at, "device major too large"))?,
                    u32::try_from(mi).map_err(|_| self.corrupt(at, "device minor too large"))?,
                );
                if flag == b'3' {
                    Kind::Char(ma, mi)
                } else {
                    Kind::Block(ma, mi)
                }
            }
            b'5' => Kind::Dir,
            b'6' => Kind::Fifo,
            b'S' => {
                return Err(Error::Unsupported {
                    offset: at,
                    msg: "old GNU sparse member".into(),
                })
            }
            other => {
                return Err(Error::Unsupported {
                    offset: at,
                    msg: format!("member type '{}'", other.escape_ascii()),
                })
            }
        };
        // Old tars mark directories only by a trailing slash.
        if flag == 0 && name.ends_with(b"/") {
            meta.kind = Kind::Dir;
        }
        let stored = match meta.kind {
            Kind::File { .. } => size,
            // Links and specials carry no data (whatever the size field says for hard links).
            _ => 0,
        };
        self.left = stored;
        self.pad = header::padding(stored) as u64;
        let mut sparse = None;
        if sparse_major.is_some() || sparse_name.is_some() {
            if sparse_major != Some(1) {
                return Err(Error::Unsupported {
                    offset: at,
                    msg: "PAX sparse format other than 1.0".into(),
                });
            }
            let real = real_size.ok_or_else(|| self.corrupt(at, "sparse file without a size"))?;
            let segs = self.sparse_map(at, real)?;
            name = sparse_name.unwrap_or(name);
            meta.kind = Kind::File { size: real };
            sparse = Some(segs);
        }
        meta.name = name;
        Ok(Entry {
            meta,
            sparse,
            offset: at,
        })
    }

    /// Reads the PAX 1.0 sparse map at the start of the data and checks it against `real`
    /// and the stored size.
    fn sparse_map(&mut self, at: u64, real: u64) -> Result<Vec<Segment>> {
        let mut text: Vec<u8> = Vec::new();
        let mut numbers: Vec<u64> = Vec::new();
        let mut want: Option<usize> = None;
        let mut consumed = 0u64;
        loop {
            if let Some(w) = want {
                if numbers.len() == 1 + 2 * w {
                    break;
                }
            }
            if self.left < BLOCK as u64 {
                return Err(self.corrupt(at, "sparse map runs past the member"));
            }
            let mut b = [0u8; BLOCK];
            if !self.fill(&mut b)? {
                return Err(self.corrupt(at, "archive ends inside a sparse map"));
            }
            self.left -= BLOCK as u64;
            consumed += BLOCK as u64;
            for &c in &b {
                if want.is_some_and(|w| numbers.len() == 1 + 2 * w) {
                    break;
                }
                if c == b'\n' {
                    let n: u64 = std::str::from_utf8(&text)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| self.corrupt(at, "sparse map number is invalid"))?;
                    text.clear();
                    if numbers.is_empty() {
                        if n as usize > MAX_SEGMENTS {
                            return Err(self.corrupt(at, format!("{n} sparse segments")));
                        }
                        want = Some(n as usize);
                    }
                    numbers.push(n);
                } else if c.is_ascii_digit() && text.len() < 20 {
                    text.push(c);
                } else {
                    return Err(self.corrupt(at, "sparse map is not a list of numbers"));
                }
            }
        }
        let _ = consumed;
        let mut segs = Vec::with_capacity(want.unwrap_or(0));
        let mut end = 0u64;
        let mut data = 0u64;
        for pair in numbers[1..].chunks(2) {
            let (offset, len) = (pair[0], pair[1]);
            let stop = offset
                .checked_add(len)
                .filter(|&s| s <= real && offset >= end)
                .ok_or_else(|| self.corrupt(at, "sparse segments overlap or pass the size"))?;
            end = stop;
            data += len;
            if len > 0 {
                segs.push(Segment { offset, len });
            }
        }
        if data != self.left {
            return Err(self.corrupt(
                at,
                format!("sparse data is {data} bytes but {} are stored", self.left),
            ));
        }
        Ok(segs)
    }

    /// Reads data of the current member (for a sparse file: the segments' bytes, one after
    /// the other); `Ok(0)` at its end.
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let k = (buf.len() as u64).min(self.left) as usize;
        let n = loop {
            match self.r.read(&mut buf[..k]) {
                Ok(0) => return Err(self.corrupt(self.pos, "archive ends inside member data")),
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(read_err(e)),
            }
        };
        self.pos += n as u64;
        self.left -= n as u64;
        Ok(n)
    }

    /// Reads the rest of the current member's data into a vector of at most `limit` bytes.
    pub fn read_all(&mut self, limit: u64) -> Result<Vec<u8>> {
        if self.left > limit {
            return Err(self.corrupt(self.pos, format!("member larger than {limit} bytes")));
        }
        let mut v = vec![0u8; self.left as usize];
        let mut got = 0;
        while got < v.len() {
            got += self.read_data(&mut v[got..])?;
        }
        Ok(v)
    }
}

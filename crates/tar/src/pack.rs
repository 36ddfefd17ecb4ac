//! Archiving a filesystem tree as vzdump's tar does (`--one-file-system -p --sparse
//! --numeric-owner --acls --xattrs --xattrs-include=user.* --xattrs-include=security.capability`):
//! numeric owners (through the container's id map for unprivileged containers), `user.*` and
//! `security.capability` xattrs, access and default ACLs, sparse files (`SEEK_DATA`/
//! `SEEK_HOLE`), hard links as link members, device nodes and fifos; sockets are skipped,
//! mount points below a root are stored as empty directories, excluded names are left out
//! with everything below them.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::acl;
use crate::entry::{Kind, Meta, Segment};
use crate::error::{Error, Result};
use crate::idmap::IdMap;
use crate::pattern::Excludes;
use crate::write::Writer;

/// What to leave out and how to map owners.
#[derive(Debug, Clone, Default)]
pub struct PackOptions {
    /// Excluded member names.
    pub excludes: Excludes,
    /// The id map of an unprivileged container: the archive holds container ids.
    pub idmap: Option<IdMap>,
}

/// Counters of a pack run.
#[derive(Debug, Clone, Default)]
pub struct PackStats {
    /// Members written.
    pub members: u64,
    /// Regular-file bytes (apparent sizes).
    pub file_bytes: u64,
    /// Sockets skipped.
    pub sockets: u64,
    /// Messages tar would print as warnings (files that shrank while read).
    pub warnings: Vec<String>,
}

/// Adds files and trees to an archive, keeping the hard-link table across roots.
pub struct Packer<'a, W: Write> {
    w: &'a mut Writer<W>,
    opts: &'a PackOptions,
    cancelled: &'a dyn Fn() -> bool,
    links: HashMap<(u64, u64), Vec<u8>>,
    stats: PackStats,
}

fn is_wanted_xattr(name: &[u8]) -> bool {
    name.starts_with(b"user.") || name == b"security.capability"
}

fn xattr_names(path: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let size = match rustix::fs::llistxattr_query(path) {
        Ok(n) => n,
        Err(e) if e == rustix::io::Errno::NOTSUP => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    if size == 0 {
        return Ok(Vec::new());
    }
    let mut buf = vec![0u8; size + 256];
    let n = rustix::fs::llistxattr(path, &mut buf[..])?;
    Ok(buf[..n]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

fn xattr_get(path: &Path, name: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
    let name = std::ffi::OsStr::from_bytes(name);
    let size = match rustix::fs::lgetxattr_query(path, name) {
        Ok(n) => n,
        Err(e) if e == rustix::io::Errno::NODATA || e == rustix::io::Errno::NOTSUP => {
            return Ok(None)
        }
        Err(e) => return Err(e.into()),
    };
    let mut buf = vec![0u8; size];
    let n = rustix::fs::lgetxattr(path, name, &mut buf[..])?;
    buf.truncate(n);
    Ok(Some(buf))
}

/// The data segments of `file` (`SEEK_DATA`/`SEEK_HOLE`).
fn segments(file: &File, size: u64) -> std::io::Result<Vec<Segment>> {
    use rustix::fs::SeekFrom;
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match rustix::fs::seek(file, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(e) if e == rustix::io::Errno::NXIO => break,
            Err(e) => return Err(e.into()),
        };
        if start >= size {
            break;
        }
        let end = rustix::fs::seek(file, SeekFrom::Hole(start))?.min(size);
        out.push(Segment {
            offset: start,
            len: end - start,
        });
        pos = end;
    }
    Ok(out)
}

impl<'a, W: Write> Packer<'a, W> {
    /// A packer writing into `w`; `cancelled` is polled between members.
    pub fn new(
        w: &'a mut Writer<W>,
        opts: &'a PackOptions,
        cancelled: &'a dyn Fn() -> bool,
    ) -> Self {
        Packer {
            w,
            opts,
            cancelled,
            links: HashMap::new(),
            stats: PackStats::default(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> &PackStats {
        &self.stats
    }

    /// Ends packing and returns the counters.
    pub fn finish(self) -> PackStats {
        self.stats
    }

    /// Adds the single file or directory `host` under the member name `name` (not
    /// descending into directories, not subject to excludes).
    pub fn add_one(&mut self, host: &Path, name: &[u8]) -> Result<()> {
        let md = std::fs::symlink_metadata(host).map_err(|e| Error::file("stat", host, e))?;
        self.member(host, name, &md)
    }

    /// Adds the tree at `host` as `name` (`.` or `./mnt/data`) and everything below it on the
    /// same filesystem.
    pub fn add_tree(&mut self, host: &Path, name: &[u8]) -> Result<()> {
        let md = std::fs::symlink_metadata(host).map_err(|e| Error::file("stat", host, e))?;
        self.walk(host, name, &md, md.dev())
    }

    fn walk(&mut self, host: &Path, name: &[u8], md: &Metadata, root_dev: u64) -> Result<()> {
        if (self.cancelled)() {
            return Err(Error::Stream {
                what: "archive",
                source: std::io::Error::new(std::io::ErrorKind::Interrupted, "cancelled"),
            });
        }
        self.member(host, name, md)?;
        if !md.is_dir() || md.dev() != root_dev {
            return Ok(());
        }
        let mut children: Vec<_> = std::fs::read_dir(host)
            .map_err(|e| Error::file("read directory", host, e))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::file("read directory", host, e))?;
        children.sort();
        for child in children {
            let mut cname = name.to_vec();
            if !cname.ends_with(b"/") {
                cname.push(b'/');
            }
            cname.extend_from_slice(child.as_bytes());
            if self.opts.excludes.matches(&cname) {
                continue;
            }
            let chost = host.join(&child);
            let cmd = match std::fs::symlink_metadata(&chost) {
                Ok(m) => m,
                // Gone since the listing (a live source): tar warns and goes on.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::file("stat", &chost, e)),
            };
            self.walk(&chost, &cname, &cmd, root_dev)?;
        }
        Ok(())
    }

    fn owner(&self, md: &Metadata) -> (u64, u64) {
        match &self.opts.idmap {
            Some(m) => (m.uid_inside(md.uid().into()), m.gid_inside(md.gid().into())),
            None => (md.uid().into(), md.gid().into()),
        }
    }

    fn acl_text(&self, host: &Path, xattr: &[u8]) -> Result<Option<String>> {
        let Some(v) = xattr_get(host, xattr).map_err(|e| Error::file("read ACL of", host, e))?
        else {
            return Ok(None);
        };
        let Some(entries) = acl::decode(&v) else {
            return Ok(None);
        };
        let map = self.opts.idmap.clone();
        let mu = |u: u32| map.as_ref().map_or(u, |m| m.uid_inside(u.into()) as u32);
        let mg = |g: u32| map.as_ref().map_or(g, |m| m.gid_inside(g.into()) as u32);
        Ok(Some(acl::to_text(&entries, &mu, &mg)))
    }

    fn member(&mut self, host: &Path, name: &[u8], md: &Metadata) -> Result<()> {
        let ft = md.file_type();
        if ft.is_socket() {
            self.stats.sockets += 1;
            return Ok(());
        }
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            let t = std::fs::read_link(host).map_err(|e| Error::file("read link", host, e))?;
            Kind::Symlink(t.as_os_str().as_bytes().to_vec())
        } else if ft.is_char_device() {
            Kind::Char(rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev()))
        } else if ft.is_block_device() {
            Kind::Block(rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev()))
        } else if ft.is_fifo() {
            Kind::Fifo
        } else {
            Kind::File { size: md.size() }
        };
        let mut meta = Meta::new(name.to_vec(), kind);
        meta.mode = md.mode() & 0o7777;
        (meta.uid, meta.gid) = self.owner(md);
        meta.mtime = md.mtime();
        meta.mtime_nsec = md.mtime_nsec() as u32;
        if !ft.is_dir() && md.nlink() > 1 {
            let key = (md.dev(), md.ino());
            if let Some(first) = self.links.get(&key) {
                meta.kind = Kind::HardLink(first.clone());
                self.stats.members += 1;
                return self.w.append_special(&meta);
            }
            self.links.insert(key, name.to_vec());
        }
        if !ft.is_symlink() {
            for x in xattr_names(host).map_err(|e| Error::file("list xattrs of", host, e))? {
                if !is_wanted_xattr(&x) {
                    continue;
                }
                if let Some(v) =
                    xattr_get(host, &x).map_err(|e| Error::file("read xattr of", host, e))?
                {
                    meta.xattrs
                        .push((String::from_utf8_lossy(&x).into_owned(), v));
                }
            }
            meta.acl_access = self.acl_text(host, b"system.posix_acl_access")?;
            if ft.is_dir() {
                meta.acl_default = self.acl_text(host, b"system.posix_acl_default")?;
            }
        }
        self.stats.members += 1;
        let Kind::File { size } = meta.kind else {
            return self.w.append_special(&meta);
        };
        self.stats.file_bytes += size;
        let mut file = match File::open(host) {
            Ok(f) => f,
            Err(e) => return Err(Error::file("open", host, e)),
        };
        let sparse = if md.blocks() * 512 < size {
            let segs = segments(&file, size).map_err(|e| Error::file("map holes of", host, e))?;
            let data: u64 = segs.iter().map(|s| s.len).sum();
            (data < size).then_some(segs)
        } else {
            None
        };
        let done = match sparse {
            Some(segs) => self.w.append_sparse(&meta, &file, &segs)?,
            None => self.w.append_file(&meta, &mut file)?,
        };
        if done.padded > 0 {
            self.stats.warnings.push(format!(
                "{}: File shrank by {} bytes; padding with zeros",
                meta.name_lossy(),
                done.padded
            ));
        }
        Ok(())
    }
}

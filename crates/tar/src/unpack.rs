//! Extracting an archive into a directory, safely: every member name is checked (no absolute
//! names, no `..`), every parent directory is opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` so nothing is ever created through a symlink or outside the target,
//! files are created with `O_EXCL | O_NOFOLLOW` (an existing name is skipped, as tar's
//! `--skip-old-files`), hard-link targets are checked the same way. Owners are numeric (mapped
//! through the container's id map), then modes, xattrs, ACLs and times are restored;
//! directories get theirs at the end, deepest first. A refused member stops the extraction
//! with an error before anything is written for it.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timestamps, XattrFlags};
use rustix::io::Errno;

use crate::acl;
use crate::entry::{Kind, Meta};
use crate::error::{Error, Result};
use crate::idmap::{IdMap, OVERFLOW_ID};
use crate::read::Reader;

/// How to extract.
#[derive(Debug, Clone, Default)]
pub struct UnpackOptions {
    /// The id map of an unprivileged target: archive ids are container ids.
    pub idmap: Option<IdMap>,
    /// Skip what is below `./dev` (Proxmox restores with `--exclude './dev/*'`).
    pub exclude_dev: bool,
    /// Refuse device nodes (outside `./dev`; those inside are skipped with `exclude_dev`):
    /// an unprivileged container must not get them.
    pub refuse_devices: bool,
    /// Other volumes mounted inside the tree: members below the relative path (`data` for
    /// `./data/...`) go into the host directory instead (a container's `mpN` volumes).
    pub mounts: Vec<(String, PathBuf)>,
}

/// Counters of an extraction.
#[derive(Debug, Clone, Default)]
pub struct UnpackStats {
    /// Members created.
    pub created: u64,
    /// Members skipped because the name existed (`--skip-old-files`) or was excluded.
    pub skipped: u64,
    /// Regular-file bytes written (apparent sizes).
    pub bytes: u64,
    /// Warnings (hard links whose target is missing, unmapped owners).
    pub warnings: Vec<String>,
}

/// The components of a member name below the target; refuses absolute names and `..`.
pub fn member_path(name: &[u8]) -> Result<Vec<&[u8]>> {
    if name.starts_with(b"/") {
        return Err(Error::refused(name, "absolute member name"));
    }
    let comps: Vec<&[u8]> = name
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    if comps.iter().any(|c| *c == b"..") {
        return Err(Error::refused(name, "member name contains '..'"));
    }
    if comps.iter().any(|c| c.contains(&0)) {
        return Err(Error::refused(name, "member name contains a NUL byte"));
    }
    Ok(comps)
}

fn join(comps: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for (i, c) in comps.iter().enumerate() {
        if i > 0 {
            v.push(b'/');
        }
        v.extend_from_slice(c);
    }
    v
}

fn os(b: &[u8]) -> &std::ffi::OsStr {
    std::ffi::OsStr::from_bytes(b)
}

/// Looks a name up in a passwd/group style file (`name:x:id:...`).
fn lookup(file: &str, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&name))
        .and_then(|f| f.get(2)?.parse().ok())
}

struct Unpacker<'a> {
    /// The target and the mounted volumes: path components below the target, descriptor,
    /// host path.
    roots: Vec<(Vec<Vec<u8>>, OwnedFd, PathBuf)>,
    /// The root the current member goes to.
    root: usize,
    opts: &'a UnpackOptions,
    stats: UnpackStats,
    /// Directories whose metadata is applied at the end (root index, relative path).
    dirs: Vec<(usize, Vec<u8>, Meta)>,
    /// The last parent directory opened (root index, relative path), reused for siblings.
    parent: Option<(usize, Vec<u8>, OwnedFd)>,
    buf: Vec<u8>,
}

const BENEATH: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS);

/// Extracts every member of `reader` below `target` (an existing directory).
pub fn unpack<R: Read>(
    reader: &mut Reader<R>,
    target: &Path,
    opts: &UnpackOptions,
    cancelled: &dyn Fn() -> bool,
) -> Result<UnpackStats> {
    let open = |p: &Path| {
        rustix::fs::open(
            p,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::file("open target directory", p, e.into()))
    };
    let mut roots = vec![(Vec::new(), open(target)?, target.to_path_buf())];
    for (rel, dir) in &opts.mounts {
        let comps = member_path(rel.as_bytes())?
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect();
        roots.push((comps, open(dir)?, dir.clone()));
    }
    let mut u = Unpacker {
        roots,
        root: 0,
        opts,
        stats: UnpackStats::default(),
        dirs: Vec::new(),
        parent: None,
        buf: vec![0u8; 256 * 1024],
    };
    while let Some(entry) = reader.next_entry()? {
        if cancelled() {
            return Err(Error::Stream {
                what: "extract",
                source: std::io::Error::new(std::io::ErrorKind::Interrupted, "cancelled"),
            });
        }
        u.member(reader, &entry.meta, entry.sparse.as_deref())?;
    }
    u.finish_dirs()?;
    Ok(u.stats)
}

impl Unpacker<'_> {
    fn host(&self, rel: &[u8]) -> PathBuf {
        self.roots[self.root].2.join(os(rel))
    }

    /// The root a member's components belong to (the longest mount prefix) and the
    /// components below it.
    fn pick<'c>(&self, comps: &'c [&'c [u8]]) -> (usize, &'c [&'c [u8]]) {
        let mut best = (0, comps);
        let mut best_len = 0;
        for (i, (rc, _, _)) in self.roots.iter().enumerate().skip(1) {
            if rc.len() > best_len
                && rc.len() <= comps.len()
                && rc.iter().zip(comps).all(|(a, b)| a.as_slice() == *b)
            {
                best = (i, &comps[rc.len()..]);
                best_len = rc.len();
            }
        }
        best
    }

    fn io(&self, op: &'static str, rel: &[u8], e: Errno) -> Error {
        Error::file(op, self.host(rel), e.into())
    }

    /// Opens (creating missing components) the directory `comps` below the root, never
    /// through a symlink.
    fn open_dir(&mut self, name: &[u8], comps: &[&[u8]]) -> Result<OwnedFd> {
        let rel = join(comps);
        if let Some((r, p, fd)) = &self.parent {
            if *r == self.root && *p == rel {
                return fd
                    .try_clone()
                    .map_err(|e| Error::file("dup", self.host(&rel), e));
            }
        }
        let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        let path = if rel.is_empty() {
            b".".to_vec()
        } else {
            rel.clone()
        };
        let root = &self.roots[self.root].1;
        let fd = match rustix::fs::openat2(root, os(&path), flags, Mode::empty(), BENEATH) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                // Create the missing directories one by one (as tar does, mode 0700 until
                // their own member, if any, comes).
                let mut cur = rustix::fs::openat(root, ".", flags, Mode::empty())
                    .map_err(|e| self.io("open", b".", e))?;
                for c in comps {
                    match rustix::fs::mkdirat(&cur, os(c), Mode::from_raw_mode(0o700)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(self.io("create directory", &rel, e)),
                    }
                    cur = match rustix::fs::openat2(&cur, os(c), flags, Mode::empty(), BENEATH) {
                        Ok(fd) => fd,
                        Err(Errno::LOOP | Errno::XDEV | Errno::NOTDIR) => {
                            return Err(Error::refused(
                                name,
                                "a parent directory is a symlink or not a directory",
                            ))
                        }
                        Err(e) => return Err(self.io("open directory", &rel, e)),
                    };
                }
                cur
            }
            Err(Errno::LOOP | Errno::XDEV | Errno::NOTDIR) => return Err(Error::refused(
                name,
                "a parent directory is a symlink (it would escape the target) or not a directory",
            )),
            Err(e) => return Err(self.io("open directory", &rel, e)),
        };
        let keep = fd
            .try_clone()
            .map_err(|e| Error::file("dup", self.host(&rel), e))?;
        self.parent = Some((self.root, rel, keep));
        Ok(fd)
    }

    fn host_ids(&mut self, meta: &Meta) -> (u32, u32) {
        let (mut uid, mut gid) = (meta.uid, meta.gid);
        if let Some(m) = &self.opts.idmap {
            let (u, g) = (m.uid_host(uid), m.gid_host(gid));
            if u.is_none() || g.is_none() {
                self.stats.warnings.push(format!(
                    "{}: owner {uid}:{gid} is outside the container's id map, using {OVERFLOW_ID}",
                    meta.name_lossy()
                ));
            }
            uid = u.unwrap_or_else(|| m.uid_host(OVERFLOW_ID).unwrap_or(OVERFLOW_ID));
            gid = g.unwrap_or_else(|| m.gid_host(OVERFLOW_ID).unwrap_or(OVERFLOW_ID));
        }
        (
            u32::try_from(uid).unwrap_or(OVERFLOW_ID as u32),
            u32::try_from(gid).unwrap_or(OVERFLOW_ID as u32),
        )
    }

    fn acl_value(&self, meta: &Meta, text: &str) -> Result<Vec<u8>> {
        let map = self.opts.idmap.clone();
        let mu = |u: u32| match &map {
            Some(m) => m.uid_host(u.into()).and_then(|h| u32::try_from(h).ok()),
            None => Some(u),
        };
        let mg = |g: u32| match &map {
            Some(m) => m.gid_host(g.into()).and_then(|h| u32::try_from(h).ok()),
            None => Some(g),
        };
        let entries = acl::from_text(
            text,
            &|n| lookup("/etc/passwd", n),
            &|n| lookup("/etc/group", n),
            &mu,
            &mg,
        )
        .map_err(|msg| Error::Corrupt {
            offset: 0,
            msg: format!("{}: {msg}", meta.name_lossy()),
        })?;
        Ok(acl::encode(&entries))
    }

    /// Owner, mode, xattrs, ACLs and times through an open descriptor.
    fn apply_fd(&mut self, fd: &OwnedFd, rel: &[u8], meta: &Meta) -> Result<()> {
        let (uid, gid) = self.host_ids(meta);
        rustix::fs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )
        .map_err(|e| self.io("set owner of", rel, e))?;
        rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode & 0o7777))
            .map_err(|e| self.io("set mode of", rel, e))?;
        for (k, v) in &meta.xattrs {
            // Restore what vzdump archives (user.*, security.capability); skip the rest
            // as tar's --xattrs-include filter does.
            if !(k.starts_with("user.") || k == "security.capability") {
                continue;
            }
            rustix::fs::fsetxattr(fd, k.as_str(), v, XattrFlags::empty())
                .map_err(|e| self.io("set xattr of", rel, e))?;
        }
        if let Some(t) = &meta.acl_access {
            let v = self.acl_value(meta, t)?;
            rustix::fs::fsetxattr(fd, "system.posix_acl_access", &v, XattrFlags::empty())
                .map_err(|e| self.io("set ACL of", rel, e))?;
        }
        if let Some(t) = &meta.acl_default {
            let v = self.acl_value(meta, t)?;
            rustix::fs::fsetxattr(fd, "system.posix_acl_default", &v, XattrFlags::empty())
                .map_err(|e| self.io("set default ACL of", rel, e))?;
        }
        rustix::fs::futimens(fd, &times(meta)).map_err(|e| self.io("set times of", rel, e))?;
        Ok(())
    }

    /// Owner, mode and times of a symlink or special file, by name without following.
    fn apply_at(&mut self, parent: &OwnedFd, base: &[u8], rel: &[u8], meta: &Meta) -> Result<()> {
        let (uid, gid) = self.host_ids(meta);
        rustix::fs::chownat(
            parent,
            os(base),
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.io("set owner of", rel, e))?;
        if !matches!(meta.kind, Kind::Symlink(_)) {
            rustix::fs::chmodat(
                parent,
                os(base),
                Mode::from_raw_mode(meta.mode & 0o7777),
                AtFlags::empty(),
            )
            .map_err(|e| self.io("set mode of", rel, e))?;
        }
        rustix::fs::utimensat(parent, os(base), &times(meta), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.io("set times of", rel, e))?;
        Ok(())
    }

    fn member<R: Read>(
        &mut self,
        reader: &mut Reader<R>,
        meta: &Meta,
        sparse: Option<&[crate::entry::Segment]>,
    ) -> Result<()> {
        let name = meta.name.as_slice();
        let comps = member_path(name)?;
        if self.opts.exclude_dev && comps.len() > 1 && comps[0] == b"dev" {
            self.stats.skipped += 1;
            return Ok(());
        }
        if self.opts.refuse_devices && meta.kind.is_device() {
            return Err(Error::refused(
                name,
                "device node outside ./dev in an unprivileged container",
            ));
        }
        let (root, comps) = self.pick(&comps);
        self.root = root;
        let rel = join(comps);
        let Some((base, parents)) = comps.split_last() else {
            // `./` or a mount point: the root directory itself.
            if meta.kind == Kind::Dir {
                self.dirs.push((root, Vec::new(), meta.clone()));
                return Ok(());
            }
            return Err(Error::refused(
                name,
                "the root of the archive is not a directory",
            ));
        };
        let parent = self.open_dir(name, parents)?;
        match &meta.kind {
            Kind::Dir => {
                match rustix::fs::mkdirat(&parent, os(base), Mode::from_raw_mode(0o700)) {
                    Ok(()) => self.stats.created += 1,
                    Err(Errno::EXIST) => {
                        let st = rustix::fs::statat(&parent, os(base), AtFlags::SYMLINK_NOFOLLOW)
                            .map_err(|e| self.io("stat", &rel, e))?;
                        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                            self.stats.skipped += 1;
                            return Ok(());
                        }
                    }
                    Err(e) => return Err(self.io("create directory", &rel, e)),
                }
                self.dirs.push((root, rel, meta.clone()));
            }
            Kind::File { size } => {
                let fd = match rustix::fs::openat(
                    &parent,
                    os(base),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                ) {
                    Ok(fd) => fd,
                    Err(Errno::EXIST) => {
                        self.stats.skipped += 1;
                        return Ok(());
                    }
                    Err(e) => return Err(self.io("create", &rel, e)),
                };
                let file = File::from(fd);
                self.write_data(reader, &file, &rel, *size, sparse)?;
                let fd = OwnedFd::from(file);
                self.apply_fd(&fd, &rel, meta)?;
                self.stats.created += 1;
                self.stats.bytes += size;
            }
            Kind::Symlink(target) => {
                match rustix::fs::symlinkat(os(target), &parent, os(base)) {
                    Ok(()) => {}
                    Err(Errno::EXIST) => {
                        self.stats.skipped += 1;
                        return Ok(());
                    }
                    Err(e) => return Err(self.io("create symlink", &rel, e)),
                }
                self.apply_at(&parent, base, &rel, meta)?;
                self.stats.created += 1;
            }
            Kind::HardLink(target) => {
                let tcomps = member_path(target).map_err(|_| {
                    Error::refused(name, "hard link target is absolute or contains '..'")
                })?;
                let (troot, tcomps) = self.pick(&tcomps);
                if troot != root {
                    self.stats.warnings.push(format!(
                        "{}: cannot hard link across volumes to '{}'",
                        meta.name_lossy(),
                        String::from_utf8_lossy(target)
                    ));
                    return Ok(());
                }
                let Some((tbase, tparents)) = tcomps.split_last() else {
                    return Err(Error::refused(name, "hard link to the root"));
                };
                let tparent = self.open_dir(name, tparents)?;
                match rustix::fs::linkat(&tparent, os(tbase), &parent, os(base), AtFlags::empty()) {
                    Ok(()) => self.stats.created += 1,
                    Err(Errno::EXIST) => self.stats.skipped += 1,
                    Err(Errno::NOENT) => self.stats.warnings.push(format!(
                        "{}: cannot hard link to '{}': it does not exist",
                        meta.name_lossy(),
                        String::from_utf8_lossy(target)
                    )),
                    Err(e) => return Err(self.io("create hard link", &rel, e)),
                }
            }
            Kind::Char(..) | Kind::Block(..) | Kind::Fifo => {
                let (ft, dev) = match meta.kind {
                    Kind::Char(ma, mi) => (FileType::CharacterDevice, rustix::fs::makedev(ma, mi)),
                    Kind::Block(ma, mi) => (FileType::BlockDevice, rustix::fs::makedev(ma, mi)),
                    _ => (FileType::Fifo, 0),
                };
                match rustix::fs::mknodat(&parent, os(base), ft, Mode::from_raw_mode(0o600), dev) {
                    Ok(()) => {}
                    Err(Errno::EXIST) => {
                        self.stats.skipped += 1;
                        return Ok(());
                    }
                    Err(e) => return Err(self.io("create node", &rel, e)),
                }
                self.apply_at(&parent, base, &rel, meta)?;
                self.stats.created += 1;
            }
        }
        Ok(())
    }

    fn write_data<R: Read>(
        &mut self,
        reader: &mut Reader<R>,
        file: &File,
        rel: &[u8],
        size: u64,
        sparse: Option<&[crate::entry::Segment]>,
    ) -> Result<()> {
        let host = self.host(rel);
        let werr = |e: std::io::Error| Error::file("write", host.clone(), e);
        let mut buf = std::mem::take(&mut self.buf);
        let res = (|| {
            match sparse {
                Some(segs) => {
                    for s in segs {
                        let mut off = s.offset;
                        let mut left = s.len;
                        while left > 0 {
                            let k = (buf.len() as u64).min(left) as usize;
                            let n = reader.read_data(&mut buf[..k])?;
                            file.write_all_at(&buf[..n], off).map_err(werr)?;
                            off += n as u64;
                            left -= n as u64;
                        }
                    }
                    file.set_len(size).map_err(werr)?;
                }
                None => {
                    let mut w = file;
                    loop {
                        let n = reader.read_data(&mut buf)?;
                        if n == 0 {
                            break;
                        }
                        w.write_all(&buf[..n]).map_err(werr)?;
                    }
                }
            }
            Ok(())
        })();
        self.buf = buf;
        res
    }

    fn finish_dirs(&mut self) -> Result<()> {
        self.parent = None;
        let mut dirs = std::mem::take(&mut self.dirs);
        // Deepest first, so setting a parent's time is the last change inside it.
        dirs.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(b.1.cmp(&a.1)));
        for (root, rel, meta) in dirs {
            self.root = root;
            let path = if rel.is_empty() {
                b".".to_vec()
            } else {
                rel.clone()
            };
            let fd = match rustix::fs::openat2(
                &self.roots[root].1,
                os(&path),
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::empty(),
                BENEATH,
            ) {
                Ok(fd) => fd,
                Err(e) => return Err(self.io("open directory", &rel, e)),
            };
            self.apply_fd(&fd, &rel, &meta)?;
        }
        Ok(())
    }
}

fn times(meta: &Meta) -> Timestamps {
    let t = rustix::fs::Timespec {
        tv_sec: meta.mtime,
        tv_nsec: i64::from(meta.mtime_nsec),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

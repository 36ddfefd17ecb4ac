//! `vmdump mount <archive> <dir> [--filesystems]` and `vmdump umount <dir>`: the disks of an
//! archive as read-only files `<dir>/<devname>.raw` through FUSE, and with `--filesystems` the
//! guest's filesystems mounted read-only on loop devices at `<dir>/<devname>/` (unpartitioned
//! disk) or `<dir>/<devname>-part<N>/`.
//!
//! `vmdump mount` starts a FUSE server (this binary, `mount --serve`, in its own process group,
//! outliving the command), waits until it is mounted, then sets up the loop devices and mounts
//! and records all of it in `<run dir>/mount/<dir as a name>.json` for `vmdump umount`. The
//! filesystems are parsed by the host kernel: an untrusted guest filesystem, mounted with
//! `ro,noload,nodev,nosuid,noexec`.

use std::ffi::OsStr;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, UNIX_EPOCH};

use crate::output::outln;
use anyhow::{bail, Context};
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen,
    Request,
};
use vmdump_blockdev::{Archive, ArchiveDisk, ReadAt, Size};

/// Arguments of `vmdump mount`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The archive (`.vma`, `.vma.zst`, `.vma.lzo`, `.vma.gz`).
    archive: PathBuf,
    /// An existing empty directory to mount on.
    dir: PathBuf,
    /// Also mount the guest's filesystems read-only (loop devices; parsed by the host kernel).
    #[arg(long)]
    filesystems: bool,
    /// Directory for the decompressed copy of a compressed archive without a seek table.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Internal: run the FUSE server in the foreground.
    #[arg(long, hide = true)]
    serve: bool,
}

/// Arguments of `vmdump umount`.
#[derive(clap::Args, Debug)]
pub struct UmountArgs {
    /// The directory given to `vmdump mount`.
    dir: PathBuf,
}

const TTL: Duration = Duration::from_secs(1);
const ROOT: u64 = 1;

/// One mounted filesystem's place: a disk region and the directory it is mounted on.
#[derive(Debug, Clone)]
struct Region {
    disk: usize,
    dir_name: String,
    offset: u64,
    len: u64,
}

/// The partitions of a disk (MBR or GPT); the whole disk when there is no partition table.
fn regions(disk: &ArchiveDisk, k: usize) -> anyhow::Result<Vec<Region>> {
    let mut s0 = [0u8; 512];
    disk.read_at(&mut s0, 0)?;
    let whole = || {
        vec![Region {
            disk: k,
            dir_name: disk.name().to_string(),
            offset: 0,
            len: disk.size(),
        }]
    };
    if s0[510..512] != [0x55, 0xaa] {
        return Ok(whole());
    }
    let mut parts = Vec::new();
    let entries: Vec<&[u8]> = s0[446..510].chunks(16).collect();
    if entries.iter().any(|e| e[4] == 0xee) && disk.size() >= 1024 {
        let mut h = [0u8; 512];
        disk.read_at(&mut h, 512)?;
        if &h[0..8] != b"EFI PART" {
            bail!("{}: protective MBR without a GPT header", disk.name());
        }
        let lba = u64::from_le_bytes(h[72..80].try_into().expect("8 bytes"));
        let count = u32::from_le_bytes(h[80..84].try_into().expect("4 bytes")).min(256);
        let esize = u32::from_le_bytes(h[84..88].try_into().expect("4 bytes")).clamp(128, 4096);
        let mut tab = vec![0u8; (count * esize) as usize];
        disk.read_at(&mut tab, lba * 512)?;
        for (i, e) in tab.chunks(esize as usize).enumerate() {
            if e[0..16].iter().all(|b| *b == 0) {
                continue;
            }
            let first = u64::from_le_bytes(e[32..40].try_into().expect("8 bytes"));
            let last = u64::from_le_bytes(e[40..48].try_into().expect("8 bytes"));
            parts.push((i + 1, first * 512, (last + 1 - first) * 512));
        }
    } else {
        for (i, e) in entries.iter().enumerate() {
            let kind = e[4];
            let start = u64::from(u32::from_le_bytes(e[8..12].try_into().expect("4 bytes")));
            let sectors = u64::from(u32::from_le_bytes(e[12..16].try_into().expect("4 bytes")));
            // Empty and extended (container) entries hold no filesystem.
            if kind == 0 || matches!(kind, 0x05 | 0x0f | 0x85) || sectors == 0 {
                continue;
            }
            parts.push((i + 1, start * 512, sectors * 512));
        }
    }
    if parts.is_empty() {
        return Ok(whole());
    }
    Ok(parts
        .into_iter()
        .filter(|(_, off, len)| off + len <= disk.size())
        .map(|(n, offset, len)| Region {
            disk: k,
            dir_name: format!("{}-part{n}", disk.name()),
            offset,
            len,
        })
        .collect())
}

/// The FUSE filesystem: the root, one file per disk, one empty directory per region.
struct DisksFs {
    disks: Vec<ArchiveDisk>,
    dirs: Vec<String>,
    uid: u32,
    gid: u32,
}

impl DisksFs {
    fn file_ino(k: usize) -> u64 {
        2 + k as u64
    }
    fn dir_ino(&self, k: usize) -> u64 {
        2 + (self.disks.len() + k) as u64
    }
    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, size, perm, nlink) = if ino == ROOT {
            (FileType::Directory, 0, 0o555, 2 + self.dirs.len() as u32)
        } else if let Some(d) = ino.checked_sub(2).and_then(|k| self.disks.get(k as usize)) {
            (FileType::RegularFile, d.size(), 0o444, 1)
        } else if ino >= 2 + self.disks.len() as u64
            && ino < 2 + (self.disks.len() + self.dirs.len()) as u64
        {
            (FileType::Directory, 0, 0o555, 2)
        } else {
            return None;
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }
    fn entries(&self) -> Vec<(u64, FileType, String)> {
        let mut v = vec![
            (ROOT, FileType::Directory, ".".to_string()),
            (ROOT, FileType::Directory, "..".to_string()),
        ];
        for (k, d) in self.disks.iter().enumerate() {
            v.push((
                Self::file_ino(k),
                FileType::RegularFile,
                format!("{}.raw", d.name()),
            ));
        }
        for (k, name) in self.dirs.iter().enumerate() {
            v.push((self.dir_ino(k), FileType::Directory, name.clone()));
        }
        v
    }
}

impl Filesystem for DisksFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = (parent.0 == ROOT)
            .then(|| {
                self.entries()
                    .into_iter()
                    .skip(2)
                    .find(|(_, _, n)| OsStr::new(n) == name)
            })
            .flatten()
            .and_then(|(ino, _, _)| self.attr(ino));
        match found {
            Some(a) => reply.entry(&TTL, &a, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc_accmode() != 0 {
            return reply.error(Errno::EROFS);
        }
        match self.attr(ino.0) {
            Some(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(disk) = ino
            .0
            .checked_sub(2)
            .and_then(|k| self.disks.get(k as usize))
        else {
            return reply.error(Errno::EISDIR);
        };
        let end = (offset + u64::from(size)).min(disk.size());
        if offset >= end {
            return reply.data(&[]);
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        match disk.read_at(&mut buf, offset) {
            Ok(()) => reply.data(&buf),
            Err(e) => {
                tracing::warn!("{}: {e:#}", disk.name());
                reply.error(Errno::EIO);
            }
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = if ino.0 == ROOT {
            self.entries()
        } else {
            vec![
                (ino.0, FileType::Directory, ".".to_string()),
                (ROOT, FileType::Directory, "..".to_string()),
            ]
        };
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// `O_WRONLY | O_RDWR`.
fn libc_accmode() -> i32 {
    0o3
}

/// The record `vmdump umount` reads.
#[derive(serde::Serialize, serde::Deserialize, Debug, Default)]
struct Record {
    pid: u32,
    dir: PathBuf,
    loops: Vec<String>,
    mounts: Vec<PathBuf>,
}

fn record_path(global: &crate::Global, dir: &Path) -> PathBuf {
    let name: String = dir
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    global.run_base().join("mount").join(format!("{name}.json"))
}

fn tool(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = vmdump_launch::spawn::spawn(cmd).with_context(|| format!("start {program}"))?;
    let out = child
        .wait_with_output()
        .with_context(|| format!("wait for {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn plan(archive: &Archive, filesystems: bool) -> anyhow::Result<Vec<Region>> {
    let mut all = Vec::new();
    if filesystems {
        for (k, d) in archive.disks().iter().enumerate() {
            all.extend(regions(d, k)?);
        }
    }
    Ok(all)
}

/// Run `vmdump mount`.
pub fn run(args: Args, global: &crate::Global) -> anyhow::Result<ExitCode> {
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("mount point {}", args.dir.display()))?;
    if !dir.is_dir() || std::fs::read_dir(&dir)?.next().is_some() {
        bail!("{} must be an empty directory", dir.display());
    }
    let archive = Archive::open(&args.archive, args.cache_dir.as_deref())
        .with_context(|| format!("open archive {}", args.archive.display()))?;
    let regions = plan(&archive, args.filesystems)?;
    if args.serve {
        return serve(archive, &dir, &regions);
    }
    let record = record_path(global, &dir);
    std::fs::create_dir_all(record.parent().expect("has a parent"))?;
    // The server: this binary, in its own process group so the shell's ^C does not reach it.
    let exe = std::env::current_exe().context("find the vmdump binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("mount").arg("--serve").arg(&args.archive).arg(&dir);
    if args.filesystems {
        cmd.arg("--filesystems");
    }
    if let Some(c) = &args.cache_dir {
        cmd.arg("--cache-dir").arg(c);
    }
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    // The server outlives this command: its messages go to a log beside the record, not to
    // a stderr that someone may be waiting on to close.
    let log_path = record.with_extension("log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("create {}", log_path.display()))?;
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log);
    let mut child = vmdump_launch::spawn::spawn(cmd).context("start the FUSE server")?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .context("wait for the FUSE server")?;
    if line.trim() != "mounted" {
        let st = child.wait()?;
        let msg = std::fs::read_to_string(&log_path).unwrap_or_default();
        let _ = std::fs::remove_file(&log_path);
        bail!(
            "the FUSE server on {} failed ({st}): {}",
            dir.display(),
            msg.trim()
        );
    }
    let mut rec = Record {
        pid: child.id(),
        dir: dir.clone(),
        ..Record::default()
    };
    let result = (|| -> anyhow::Result<()> {
        for r in &regions {
            let file = dir.join(format!("{}.raw", archive.disks()[r.disk].name()));
            let dev = tool(
                "losetup",
                &[
                    "--read-only",
                    "--find",
                    "--show",
                    "--offset",
                    &r.offset.to_string(),
                    "--sizelimit",
                    &r.len.to_string(),
                    &file.to_string_lossy(),
                ],
            )?;
            rec.loops.push(dev.clone());
            let target = dir.join(&r.dir_name);
            let t = target.to_string_lossy();
            // noload: never replay a journal (ext3/4); other filesystems refuse the option.
            if let Err(e) = tool("mount", &["-o", "ro,noload,nodev,nosuid,noexec", &dev, &t])
                .or_else(|_| tool("mount", &["-o", "ro,nodev,nosuid,noexec", &dev, &t]))
            {
                eprintln!("warning: {}: no mountable filesystem: {e:#}", r.dir_name);
                continue;
            }
            rec.mounts.push(target.clone());
            outln!("{} mounted on {}", r.dir_name, target.display())?;
        }
        Ok(())
    })();
    std::fs::write(&record, serde_json::to_vec_pretty(&rec)?)
        .with_context(|| format!("write {}", record.display()))?;
    if let Err(e) = result {
        let _ = undo(&rec);
        let _ = std::fs::remove_file(&record);
        let _ = std::fs::remove_file(&log_path);
        return Err(e);
    }
    for d in archive.disks() {
        outln!(
            "{} on {}",
            d.name(),
            dir.join(format!("{}.raw", d.name())).display()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn serve(archive: Archive, dir: &Path, regions: &[Region]) -> anyhow::Result<ExitCode> {
    let fs = DisksFs {
        disks: archive.disks(),
        dirs: regions.iter().map(|r| r.dir_name.clone()).collect(),
        uid: rustix::process::getuid().as_raw(),
        gid: rustix::process::getgid().as_raw(),
    };
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("vmdump".into()),
        MountOption::Subtype("vmdump".into()),
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoExec,
    ];
    config.n_threads = Some(2);
    let session = fuser::spawn_mount(fs, dir, &config)
        .with_context(|| format!("mount FUSE on {} (needs /dev/fuse)", dir.display()))?;
    outln!("mounted")?;
    use std::io::Write as _;
    std::io::stdout().flush().ok();
    // Served until unmounted (`vmdump umount`, fusermount3 -u).
    session.join().context("FUSE session")?;
    Ok(ExitCode::SUCCESS)
}

fn undo(rec: &Record) -> anyhow::Result<()> {
    let mut first_err = None;
    for m in rec.mounts.iter().rev() {
        if let Err(e) = tool("umount", &[&m.to_string_lossy()]) {
            first_err.get_or_insert(e);
        }
    }
    for l in rec.loops.iter().rev() {
        if let Err(e) = tool("losetup", &["-d", l]) {
            first_err.get_or_insert(e);
        }
    }
    if let Err(e) = tool("fusermount3", &["-u", &rec.dir.to_string_lossy()]) {
        first_err.get_or_insert(e);
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Run `vmdump umount`.
pub fn umount(args: UmountArgs, global: &crate::Global) -> anyhow::Result<ExitCode> {
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("{}", args.dir.display()))?;
    let record = record_path(global, &dir);
    let rec: Record = match std::fs::read(&record) {
        Ok(b) => {
            serde_json::from_slice(&b).with_context(|| format!("read {}", record.display()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{} is not mounted by vmdump mount", dir.display())
        }
        Err(e) => return Err(e).with_context(|| format!("read {}", record.display())),
    };
    undo(&rec)?;
    let id = vmdump_launch::ProcId::of(rec.pid);
    if let Some(id) = id {
        vmdump_launch::process::wait_exit_blocking(id, Duration::from_secs(10));
    }
    std::fs::remove_file(&record).with_context(|| format!("remove {}", record.display()))?;
    let _ = std::fs::remove_file(record.with_extension("log"));
    outln!("unmounted {}", dir.display())?;
    Ok(ExitCode::SUCCESS)
}

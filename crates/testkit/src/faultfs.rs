//! A FUSE passthrough filesystem that injects faults, for tests and benchmarks of what vmdump
//! does when its target misbehaves: a dump dir or a storage dir on [`FaultFs`] sees every
//! operation forwarded to a backing directory (so a test inspects the real files there), and
//! the test switches faults on and off at run time through [`Faults`]:
//!
//! * `fsync`/`fdatasync` (and `fsyncdir`) fail with `EIO` for files whose name matches a
//!   pattern ([`Faults::fail_fsync`]);
//! * `flush` (every `close`) fails with `EIO` for matching names ([`Faults::fail_flush`]);
//! * the disk fills up: `ENOSPC` once a given number of further bytes were written in total
//!   (or to files matching a pattern), with the write that crosses the limit cut short as on
//!   a real full disk, and new files cannot be created ([`Faults::fill_after`],
//!   [`Faults::fill_after_in`]); `statfs` reports the space left;
//! * writes are paced to a throughput cap ([`Faults::write_rate`]), a slow backup target.
//!
//! Mounted in-process with `allow_other` (the program under test runs as a child, as root) and
//! `auto_unmount` (`fusermount3` unmounts it even when the test process is killed); unmounted
//! when the [`FaultFs`] is dropped, also while a failing test unwinds. The `faultfs` binary
//! mounts one from a shell (`faultfs <backing> <mountpoint> --write-rate 30M`).
//!
//! Writes go through to the backing file (no FUSE writeback cache), so an error reaches the
//! `write`, `fsync` or `close` that caused it, as on a local filesystem. Inode numbers are
//! assigned by the filesystem and never reused; attributes and entries are not cached by the
//! kernel, so changes made in the backing directory show at once.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, SessionACL, TimeOrNow, WriteFlags,
};

/// Attributes and entries are not cached: the backing directory may change under the mount.
const TTL: Duration = Duration::ZERO;

/// The run-time switches of a [`FaultFs`], shared between the test and the filesystem
/// threads (clone it freely). Every fault is off until switched on.
#[derive(Clone, Default)]
pub struct Faults(Arc<FaultState>);

#[derive(Default)]
struct FaultState {
    fail_fsync: Mutex<Option<String>>,
    /// Matching fsyncs that still succeed before they start failing.
    fsync_pass: AtomicU64,
    /// Every `fsync`, `fdatasync` and `fsyncdir` so far.
    fsync_calls: AtomicU64,
    fail_flush: Mutex<Option<String>>,
    /// Limit on `counted`, plus one; `0` = no limit.
    space_limit: AtomicU64,
    /// Only files whose name matches fill up (`None`: all files).
    fill_pattern: Mutex<Option<String>>,
    /// Bytes written to the files that fill up (all files without a pattern).
    counted: AtomicU64,
    /// Write throughput cap in bytes/s; `0` = none.
    rate: AtomicU64,
    /// When the paced writes so far are done (the next write starts no earlier).
    pace: Mutex<Option<Instant>>,
    written: AtomicU64,
    fsync_failures: AtomicU64,
    flush_failures: AtomicU64,
    enospc_failures: AtomicU64,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults")
            .field("fail_fsync", &*lock(&self.0.fail_fsync))
            .field("fail_flush", &*lock(&self.0.fail_flush))
            .field("space_limit", &self.limit())
            .field("rate", &self.0.rate.load(Ordering::Relaxed))
            .field("written", &self.written())
            .finish()
    }
}

/// A poisoned lock only means a test thread panicked; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Faults {
    /// `fsync`, `fdatasync` and `fsyncdir` of files whose name (last path component) matches
    /// `pattern` (`*` any run of characters, `?` one; e.g. `*.dat`) fail with `EIO`; `None`
    /// switches the fault off.
    pub fn fail_fsync(&self, pattern: Option<&str>) {
        self.0.fsync_pass.store(0, Ordering::SeqCst);
        *lock(&self.0.fail_fsync) = pattern.map(str::to_owned);
    }

    /// As [`fail_fsync`](Self::fail_fsync), but the next `n` matching fsyncs still succeed:
    /// with `n` = [`fsyncs`](Self::fsyncs) of a good run less one, only the last one fails.
    pub fn fail_fsync_after(&self, pattern: &str, n: u64) {
        *lock(&self.0.fail_fsync) = Some(pattern.to_owned());
        self.0.fsync_pass.store(n, Ordering::SeqCst);
    }

    /// How many `fsync`s, `fdatasync`s and `fsyncdir`s reached the filesystem so far.
    pub fn fsyncs(&self) -> u64 {
        self.0.fsync_calls.load(Ordering::SeqCst)
    }

    /// `flush` (called on every `close`) of files whose name matches `pattern` fails with
    /// `EIO`; `None` switches the fault off.
    pub fn fail_flush(&self, pattern: Option<&str>) {
        *lock(&self.0.fail_flush) = pattern.map(str::to_owned);
    }

    /// The filesystem is full once `bytes` more bytes were written (to any file, from now):
    /// the write that crosses the limit is cut short, later ones fail with `ENOSPC`, as do
    /// allocating `fallocate`s and creating files or directories. `None` removes the limit.
    pub fn fill_after(&self, bytes: Option<u64>) {
        self.set_fill(None, bytes);
    }

    /// As [`fill_after`](Self::fill_after), but only files whose name matches `pattern` count
    /// and fill up (other files are written freely), e.g. `*.dat` with the archive's size
    /// less one: exactly the archive's last byte finds the disk full.
    pub fn fill_after_in(&self, pattern: &str, bytes: u64) {
        self.set_fill(Some(pattern), Some(bytes));
    }

    fn set_fill(&self, pattern: Option<&str>, bytes: Option<u64>) {
        *lock(&self.0.fill_pattern) = pattern.map(str::to_owned);
        let counted = self.0.counted.load(Ordering::SeqCst);
        let stored = bytes.map_or(0, |b| counted.saturating_add(b).saturating_add(1));
        self.0.space_limit.store(stored, Ordering::SeqCst);
    }

    /// The limit on `counted` (`None`: none).
    fn limit(&self) -> Option<u64> {
        self.0.space_limit.load(Ordering::SeqCst).checked_sub(1)
    }

    /// Caps the write throughput of the whole filesystem at `bytes_per_sec` (each write waits
    /// its turn); `None` removes the cap.
    pub fn write_rate(&self, bytes_per_sec: Option<u64>) {
        self.0
            .rate
            .store(bytes_per_sec.unwrap_or(0), Ordering::SeqCst);
        *lock(&self.0.pace) = None;
    }

    /// Bytes written through the mount since it was mounted.
    pub fn written(&self) -> u64 {
        self.0.written.load(Ordering::SeqCst)
    }

    /// How many `fsync`s failed because of [`fail_fsync`](Self::fail_fsync).
    pub fn fsync_failures(&self) -> u64 {
        self.0.fsync_failures.load(Ordering::SeqCst)
    }

    /// How many `flush`es failed because of [`fail_flush`](Self::fail_flush).
    pub fn flush_failures(&self) -> u64 {
        self.0.flush_failures.load(Ordering::SeqCst)
    }

    /// How many writes (or `fallocate`s) failed with `ENOSPC` or were cut short by
    /// [`fill_after`](Self::fill_after).
    pub fn enospc_failures(&self) -> u64 {
        self.0.enospc_failures.load(Ordering::SeqCst)
    }

    fn matches(slot: &Mutex<Option<String>>, path: &Path) -> bool {
        let name = path.file_name().unwrap_or_default();
        lock(slot)
            .as_deref()
            .is_some_and(|p| glob_match(p.as_bytes(), name.as_bytes()))
    }

    fn fsync_fails(&self, path: &Path) -> bool {
        self.0.fsync_calls.fetch_add(1, Ordering::SeqCst);
        let passes = |n: u64| n.checked_sub(1);
        let fail = Self::matches(&self.0.fail_fsync, path)
            && self
                .0
                .fsync_pass
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, passes)
                .is_err();
        if fail {
            self.0.fsync_failures.fetch_add(1, Ordering::SeqCst);
        }
        fail
    }

    fn flush_fails(&self, path: &Path) -> bool {
        let fail = Self::matches(&self.0.fail_flush, path);
        if fail {
            self.0.flush_failures.fetch_add(1, Ordering::SeqCst);
        }
        fail
    }

    /// True if writes to `path` count toward the fill limit.
    fn fills(&self, path: &Path) -> bool {
        lock(&self.0.fill_pattern).is_none() || Self::matches(&self.0.fill_pattern, path)
    }

    /// Takes up to `len` bytes of the space left; returns how many may be written.
    fn reserve(&self, len: u64) -> u64 {
        let limit = self.limit();
        let mut granted = len;
        let _ = self
            .0
            .counted
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                granted = limit.map_or(len, |l| len.min(l.saturating_sub(w)));
                Some(w + granted)
            });
        if granted < len {
            self.0.enospc_failures.fetch_add(1, Ordering::SeqCst);
        }
        granted
    }

    /// Gives back bytes [`reserve`](Self::reserve)d but not written.
    fn unreserve(&self, len: u64) {
        self.0.counted.fetch_sub(len, Ordering::SeqCst);
    }

    /// True when the limit is set and reached.
    fn full(&self) -> bool {
        self.limit()
            .is_some_and(|l| self.0.counted.load(Ordering::SeqCst) >= l)
    }

    /// `ENOSPC` for a new file or directory at `path` on a full disk (if `path` fills).
    fn check_room_for_new(&self, path: &Path) -> Result<(), Errno> {
        if self.full() && self.fills(path) {
            self.0.enospc_failures.fetch_add(1, Ordering::SeqCst);
            return Err(Errno::ENOSPC);
        }
        Ok(())
    }

    /// Bytes left before the limit (`None`: no limit).
    fn space_left(&self) -> Option<u64> {
        self.limit()
            .map(|l| l.saturating_sub(self.0.counted.load(Ordering::SeqCst)))
    }

    /// Waits until `len` more bytes fit under the throughput cap.
    fn pace(&self, len: u64) {
        let rate = self.0.rate.load(Ordering::SeqCst);
        if rate == 0 || len == 0 {
            return;
        }
        let until = {
            let mut next = lock(&self.0.pace);
            let now = Instant::now();
            // Up to 100 ms of unused allowance carries over, so the time of the writes
            // themselves is not lost between two paced writes.
            let floor = now.checked_sub(Duration::from_millis(100)).unwrap_or(now);
            let start = next.map_or(now, |t| t.max(floor));
            let done = start + Duration::from_secs_f64(len as f64 / rate as f64);
            *next = Some(done);
            done
        };
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
    }
}

/// Shell-style match of `name` against `pattern`: `*` any run of bytes, `?` one byte.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    // Where the last `*` was and which name byte it was tried against.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

/// A mounted [`FaultFs`]: unmounted on drop.
pub struct FaultFs {
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
    backing: PathBuf,
    faults: Faults,
}

impl std::fmt::Debug for FaultFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultFs")
            .field("mountpoint", &self.mountpoint)
            .field("backing", &self.backing)
            .field("faults", &self.faults)
            .finish()
    }
}

impl FaultFs {
    /// Mounts a passthrough to `backing` (an existing directory) on `mountpoint` (an existing,
    /// empty directory), with every fault off.
    pub fn mount(backing: &Path, mountpoint: &Path) -> Result<Self> {
        let backing = backing
            .canonicalize()
            .with_context(|| format!("faultfs backing dir {}", backing.display()))?;
        let mountpoint = mountpoint
            .canonicalize()
            .with_context(|| format!("faultfs mountpoint {}", mountpoint.display()))?;
        let faults = Faults::default();
        let fs = PassFs::new(backing.clone(), faults.clone())?;
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("faultfs".into()),
            MountOption::Subtype("faultfs".into()),
            MountOption::AutoUnmount,
            MountOption::NoDev,
            MountOption::NoSuid,
        ];
        config.acl = SessionACL::All;
        // More than one thread: a write paced by the throughput cap must not stall lookups.
        config.n_threads = Some(4);
        config.clone_fd = true;
        let session = fuser::spawn_mount(fs, &mountpoint, &config).with_context(|| {
            format!(
                "mount faultfs on {} (needs /dev/fuse and fusermount3)",
                mountpoint.display()
            )
        })?;
        Ok(Self {
            session: Some(session),
            mountpoint,
            backing,
            faults,
        })
    }

    /// The switches of this mount.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Where the filesystem is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The directory holding the real files.
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// Unmounts (lazily when a file is still open) and, unless lazily, waits up to 10 s for
    /// the filesystem threads to end.
    pub fn unmount(mut self) -> Result<()> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        use nix::mount::{umount2, MntFlags};
        match umount2(&self.mountpoint, MntFlags::empty()) {
            Ok(()) => {}
            Err(nix::errno::Errno::EBUSY) => {
                // A file is still open (a killed child's, a test's): detach now; the session
                // ends when the last one is closed, its thread is left to that.
                umount2(&self.mountpoint, MntFlags::MNT_DETACH)
                    .with_context(|| format!("unmount {}", self.mountpoint.display()))?;
                return Ok(());
            }
            Err(nix::errno::Errno::EPERM) => {
                // Not root: fusermount3 (the auto-unmount helper) unmounts once the session
                // is dropped.
                drop(session);
                return Ok(());
            }
            Err(e) => {
                return Err(e).with_context(|| format!("unmount {}", self.mountpoint.display()))
            }
        }
        // Unmounted: the session thread sees ENODEV and ends; dropping the session then only
        // closes the auto-unmount socket.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !session.guard.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if session.guard.is_finished() {
            session.join()?;
        }
        Ok(())
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            eprintln!("faultfs: {e:#}");
        }
    }
}

/// An open file or a directory listing.
enum Handle {
    File { file: Arc<File>, ino: u64 },
    Dir(Arc<Vec<(u64, FileType, OsString)>>),
}

#[derive(Default)]
struct Inodes {
    /// (device, inode) of the backing file → our inode number.
    by_real: HashMap<(u64, u64), u64>,
    /// Our inode number → its path relative to the backing dir (one of them for hard links).
    paths: HashMap<u64, PathBuf>,
    next: u64,
}

/// The [`Filesystem`] behind [`FaultFs`].
struct PassFs {
    backing: PathBuf,
    faults: Faults,
    inodes: Mutex<Inodes>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
}

fn errno(e: std::io::Error) -> Errno {
    Errno::from(e)
}

fn nix_errno(e: nix::errno::Errno) -> Errno {
    Errno::from_i32(e as i32)
}

fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH + Duration::new(s, nsecs.clamp(0, 999_999_999) as u32),
        Err(_) => UNIX_EPOCH,
    }
}

fn file_type(m: &Metadata) -> FileType {
    FileType::from_std(m.file_type()).unwrap_or(FileType::RegularFile)
}

fn attr(ino: u64, m: &Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: m.size(),
        blocks: m.blocks(),
        atime: system_time(m.atime(), m.atime_nsec()),
        mtime: system_time(m.mtime(), m.mtime_nsec()),
        ctime: system_time(m.ctime(), m.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: file_type(m),
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        blksize: m.blksize() as u32,
        flags: 0,
    }
}

fn time_or_now(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

fn reply_entry(reply: ReplyEntry, res: Result<FileAttr, Errno>) {
    match res {
        Ok(a) => reply.entry(&TTL, &a, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn reply_attr(reply: ReplyAttr, res: Result<FileAttr, Errno>) {
    match res {
        Ok(a) => reply.attr(&TTL, &a),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(reply: ReplyEmpty, res: Result<(), Errno>) {
    match res {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl PassFs {
    fn new(backing: PathBuf, faults: Faults) -> Result<Self> {
        let m = std::fs::metadata(&backing)?;
        let mut inodes = Inodes {
            next: 2,
            ..Inodes::default()
        };
        inodes.by_real.insert((m.dev(), m.ino()), 1);
        inodes.paths.insert(1, PathBuf::new());
        Ok(Self {
            backing,
            faults,
            inodes: Mutex::new(inodes),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        })
    }

    /// The path (relative to the backing dir) of inode `ino`.
    fn rel(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        lock(&self.inodes)
            .paths
            .get(&ino.0)
            .cloned()
            .ok_or(Errno::ENOENT)
    }

    fn real(&self, rel: &Path) -> PathBuf {
        self.backing.join(rel)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.rel(parent)?.join(name))
    }

    /// Our inode number for the backing file at `rel` with metadata `m` (assigned on first
    /// sight), remembering `rel` as its path.
    fn inode(&self, rel: &Path, m: &Metadata) -> u64 {
        let mut t = lock(&self.inodes);
        let ino = match t.by_real.get(&(m.dev(), m.ino())) {
            Some(&i) => i,
            None => {
                let i = t.next;
                t.next += 1;
                t.by_real.insert((m.dev(), m.ino()), i);
                i
            }
        };
        if ino != 1 {
            t.paths.insert(ino, rel.to_path_buf());
        }
        ino
    }

    /// `lstat` of `rel`, registered as an inode.
    fn entry(&self, rel: &Path) -> Result<FileAttr, Errno> {
        let m = std::fs::symlink_metadata(self.real(rel)).map_err(errno)?;
        Ok(attr(self.inode(rel, &m), &m))
    }

    fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::SeqCst);
        lock(&self.handles).insert(fh, h);
        fh
    }

    fn file(&self, fh: FileHandle) -> Result<(Arc<File>, u64), Errno> {
        match lock(&self.handles).get(&fh.0) {
            Some(Handle::File { file, ino }) => Ok((Arc::clone(file), *ino)),
            _ => Err(Errno::EBADF),
        }
    }

    /// Backing open options for FUSE open flags (`O_DIRECT` and `O_APPEND` dropped: the
    /// kernel hands us aligned-or-not buffers and explicit offsets).
    fn options(flags: i32) -> OpenOptions {
        let mut o = OpenOptions::new();
        match flags & libc::O_ACCMODE {
            libc::O_WRONLY => o.write(true),
            libc::O_RDWR => o.read(true).write(true),
            _ => o.read(true),
        };
        o.truncate(flags & libc::O_TRUNC != 0);
        let keep = !(libc::O_ACCMODE
            | libc::O_CREAT
            | libc::O_EXCL
            | libc::O_TRUNC
            | libc::O_DIRECT
            | libc::O_APPEND
            | libc::O_NOCTTY);
        o.custom_flags(flags & keep);
        o
    }

    /// Rewrites remembered paths after `from` was renamed to `to` (a directory takes its
    /// children along).
    fn renamed(&self, from: &Path, to: &Path) {
        let mut t = lock(&self.inodes);
        for p in t.paths.values_mut() {
            if let Ok(rest) = p.strip_prefix(from) {
                *p = if rest.as_os_str().is_empty() {
                    to.to_path_buf()
                } else {
                    to.join(rest)
                };
            }
        }
    }

    fn do_write(&self, file: &File, ino: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let want = data.len() as u64;
        let fills = self
            .faults
            .fills(&self.rel(INodeNo(ino)).unwrap_or_default());
        let granted = if fills {
            self.faults.reserve(want)
        } else {
            want
        };
        if granted == 0 && want > 0 {
            return Err(Errno::ENOSPC);
        }
        self.faults.pace(granted);
        let part = &data[..granted as usize];
        match file.write_all_at(part, offset) {
            Ok(()) => {
                self.faults.0.written.fetch_add(granted, Ordering::SeqCst);
                Ok(granted as u32)
            }
            Err(e) => {
                if fills {
                    self.faults.unreserve(granted);
                }
                Err(errno(e))
            }
        }
    }
}

impl Filesystem for PassFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Bigger writes, fewer round trips (the kernel may refuse; then 128 KiB it is).
        let _ = config.set_max_write(1 << 20);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        reply_entry(
            reply,
            self.child(parent, name).and_then(|rel| self.entry(&rel)),
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        // An open file may be unlinked already: ask its descriptor.
        if let Some(Ok((file, fino))) = fh.map(|fh| self.file(fh)) {
            match file.metadata() {
                Ok(m) => return reply.attr(&TTL, &attr(fino, &m)),
                Err(e) => return reply.error(errno(e)),
            }
        }
        let res = self.rel(ino).and_then(|rel| {
            let m = std::fs::symlink_metadata(self.real(&rel)).map_err(errno)?;
            Ok(attr(ino.0, &m))
        });
        reply_attr(reply, res);
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let res = (|| -> Result<FileAttr, Errno> {
            let rel = self.rel(ino)?;
            let path = self.real(&rel);
            let open = fh.and_then(|fh| self.file(fh).ok()).map(|(f, _)| f);
            if let Some(mode) = mode {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(errno)?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::lchown(&path, uid, gid).map_err(errno)?;
            }
            if let Some(size) = size {
                match &open {
                    Some(f) => f.set_len(size),
                    None => OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .and_then(|f| f.set_len(size)),
                }
                .map_err(errno)?;
            }
            if atime.is_some() || mtime.is_some() {
                let mut times = std::fs::FileTimes::new();
                if let Some(t) = atime {
                    times = times.set_accessed(time_or_now(t));
                }
                if let Some(t) = mtime {
                    times = times.set_modified(time_or_now(t));
                }
                match &open {
                    Some(f) => f.set_times(times),
                    None => File::open(&path).and_then(|f| f.set_times(times)),
                }
                .map_err(errno)?;
            }
            let m = match &open {
                Some(f) => f.metadata(),
                None => std::fs::symlink_metadata(&path),
            }
            .map_err(errno)?;
            Ok(attr(ino.0, &m))
        })();
        reply_attr(reply, res);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self
            .rel(ino)
            .and_then(|rel| std::fs::read_link(self.real(&rel)).map_err(errno))
        {
            Ok(t) => reply.data(t.as_os_str().as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let res = self.child(parent, name).and_then(|rel| {
            self.faults.check_room_for_new(&rel)?;
            std::fs::DirBuilder::new()
                .mode(mode & !umask & 0o7777)
                .create(self.real(&rel))
                .map_err(errno)?;
            self.entry(&rel)
        });
        reply_entry(reply, res);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(
            reply,
            self.child(parent, name)
                .and_then(|rel| std::fs::remove_file(self.real(&rel)).map_err(errno)),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(
            reply,
            self.child(parent, name)
                .and_then(|rel| std::fs::remove_dir(self.real(&rel)).map_err(errno)),
        );
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let res = self.child(parent, link_name).and_then(|rel| {
            std::os::unix::fs::symlink(target, self.real(&rel)).map_err(errno)?;
            self.entry(&rel)
        });
        reply_entry(reply, res);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let res = (|| -> Result<(), Errno> {
            let from = self.child(parent, name)?;
            let to = self.child(newparent, newname)?;
            let nix_flags =
                nix::fcntl::RenameFlags::from_bits(flags.bits()).ok_or(Errno::EINVAL)?;
            nix::fcntl::renameat2(
                nix::fcntl::AT_FDCWD,
                &self.real(&from),
                nix::fcntl::AT_FDCWD,
                &self.real(&to),
                nix_flags,
            )
            .map_err(nix_errno)?;
            if flags.contains(RenameFlags::RENAME_EXCHANGE) {
                let tmp = PathBuf::from("\0faultfs-exchange");
                self.renamed(&to, &tmp);
                self.renamed(&from, &to);
                self.renamed(&tmp, &from);
            } else {
                self.renamed(&from, &to);
            }
            Ok(())
        })();
        reply_empty(reply, res);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let res = (|| -> Result<FileAttr, Errno> {
            let from = self.rel(ino)?;
            let to = self.child(newparent, newname)?;
            std::fs::hard_link(self.real(&from), self.real(&to)).map_err(errno)?;
            // The new name stays valid when the old one is unlinked next (link + unlink is
            // how a no-replace rename can be done).
            self.entry(&to)
        })();
        reply_entry(reply, res);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let res = self
            .rel(ino)
            .and_then(|rel| Self::options(flags.0).open(self.real(&rel)).map_err(errno));
        match res {
            Ok(file) => {
                let fh = self.add_handle(Handle::File {
                    file: Arc::new(file),
                    ino: ino.0,
                });
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let res = self.file(fh).and_then(|(file, _)| {
            let mut buf = vec![0u8; size as usize];
            let mut got = 0;
            while got < buf.len() {
                match file.read_at(&mut buf[got..], offset + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(errno(e)),
                }
            }
            buf.truncate(got);
            Ok(buf)
        });
        match res {
            Ok(buf) => reply.data(&buf),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self
            .file(fh)
            .and_then(|(file, ino)| self.do_write(&file, ino, offset, data))
        {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        match self.rel(ino) {
            Ok(rel) if self.faults.flush_fails(&rel) => reply.error(Errno::EIO),
            _ => reply.ok(),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.handles).remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let res = (|| -> Result<(), Errno> {
            let (file, _) = self.file(fh)?;
            if self.faults.fsync_fails(&self.rel(ino)?) {
                return Err(Errno::EIO);
            }
            if datasync {
                file.sync_data()
            } else {
                file.sync_all()
            }
            .map_err(errno)
        })();
        reply_empty(reply, res);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let res = (|| -> Result<Vec<(u64, FileType, OsString)>, Errno> {
            let rel = self.rel(ino)?;
            let mut entries = vec![
                (ino.0, FileType::Directory, OsString::from(".")),
                (1, FileType::Directory, OsString::from("..")),
            ];
            for e in std::fs::read_dir(self.real(&rel)).map_err(errno)? {
                let e = e.map_err(errno)?;
                let Ok(m) = e.metadata() else { continue };
                let child = rel.join(e.file_name());
                entries.push((self.inode(&child, &m), file_type(&m), e.file_name()));
            }
            Ok(entries)
        })();
        match res {
            Ok(entries) => {
                let fh = self.add_handle(Handle::Dir(Arc::new(entries)));
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match lock(&self.handles).get(&fh.0) {
            Some(Handle::Dir(e)) => Arc::clone(e),
            _ => return reply.error(Errno::EBADF),
        };
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.handles).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let res = (|| -> Result<(), Errno> {
            let rel = self.rel(ino)?;
            if self.faults.fsync_fails(&rel) {
                return Err(Errno::EIO);
            }
            File::open(self.real(&rel))
                .and_then(|d| d.sync_all())
                .map_err(errno)
        })();
        reply_empty(reply, res);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match nix::sys::statvfs::statvfs(&self.backing) {
            Ok(s) => {
                let frsize = s.fragment_size().max(1);
                let (mut bfree, mut bavail) = (s.blocks_free(), s.blocks_available());
                if let Some(left) = self.faults.space_left() {
                    bfree = bfree.min(left / frsize);
                    bavail = bavail.min(left / frsize);
                }
                reply.statfs(
                    s.blocks(),
                    bfree,
                    bavail,
                    s.files(),
                    s.files_free(),
                    s.block_size() as u32,
                    s.name_max() as u32,
                    frsize as u32,
                );
            }
            Err(e) => reply.error(nix_errno(e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Permissions are the backing files'; the callers are root.
        match self.rel(ino) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let res = (|| -> Result<(FileAttr, File), Errno> {
            let rel = self.child(parent, name)?;
            self.faults.check_room_for_new(&rel)?;
            let mut o = Self::options(flags);
            if flags & libc::O_EXCL != 0 {
                o.create_new(true);
            } else {
                o.create(true);
            }
            o.mode(mode & !umask & 0o7777);
            let file = o.open(self.real(&rel)).map_err(errno)?;
            let m = file.metadata().map_err(errno)?;
            Ok((attr(self.inode(&rel, &m), &m), file))
        })();
        match res {
            Ok((a, file)) => {
                let fh = self.add_handle(Handle::File {
                    file: Arc::new(file),
                    ino: a.ino.0,
                });
                reply.created(&TTL, &a, Generation(0), FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let res = (|| -> Result<(), Errno> {
            let (file, ino) = self.file(fh)?;
            let flags = nix::fcntl::FallocateFlags::from_bits(mode).ok_or(Errno::EINVAL)?;
            let allocating = !flags.intersects(
                nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                    | nix::fcntl::FallocateFlags::FALLOC_FL_COLLAPSE_RANGE,
            );
            if allocating && self.faults.full() && self.faults.fills(&self.rel(INodeNo(ino))?) {
                self.faults.0.enospc_failures.fetch_add(1, Ordering::SeqCst);
                return Err(Errno::ENOSPC);
            }
            let off = i64::try_from(offset).map_err(|_| Errno::EINVAL)?;
            let len = i64::try_from(length).map_err(|_| Errno::EINVAL)?;
            nix::fcntl::fallocate(&*file, flags, off, len).map_err(nix_errno)
        })();
        reply_empty(reply, res);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        use nix::unistd::Whence;
        let res = (|| -> Result<i64, Errno> {
            let (file, _) = self.file(fh)?;
            let whence = match whence {
                libc::SEEK_SET => Whence::SeekSet,
                libc::SEEK_CUR => Whence::SeekCur,
                libc::SEEK_END => Whence::SeekEnd,
                libc::SEEK_DATA => Whence::SeekData,
                libc::SEEK_HOLE => Whence::SeekHole,
                _ => return Err(Errno::EINVAL),
            };
            nix::unistd::lseek(&*file, offset, whence).map_err(nix_errno)
        })();
        match res {
            Ok(off) => reply.offset(off),
            Err(e) => reply.error(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn glob_matches_like_a_shell() {
        let m = |p: &str, n: &str| glob_match(p.as_bytes(), n.as_bytes());
        assert!(m("*.dat", "vzdump-qemu-100-2025_01_05-02_00_01.vma.dat"));
        assert!(m("*.dat", ".dat"));
        assert!(!m("*.dat", "x.dat.log"));
        assert!(m("vzdump-*.vma*", "vzdump-qemu-1.vma.zst"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "ac"));
        assert!(m("*", ""));
        assert!(m("*a*b*", "xxaxxbxx"));
        assert!(!m("*a*b*", "xxbxxaxx"));
        assert!(m("exact", "exact"));
        assert!(!m("exact", "exact2"));
    }

    #[test]
    fn space_reservation_cuts_the_crossing_write() {
        let f = Faults::default();
        f.fill_after(Some(0));
        assert_eq!(f.reserve(1), 0, "full from the start");
        f.fill_after(None);
        assert_eq!(f.reserve(100), 100);
        f.fill_after(Some(50));
        assert_eq!(f.reserve(30), 30);
        assert_eq!(f.reserve(30), 20);
        assert_eq!(f.reserve(30), 0);
        assert!(f.full());
        assert_eq!(f.enospc_failures(), 3);
        f.unreserve(20);
        assert_eq!(f.space_left(), Some(20));
        f.fill_after(None);
        assert_eq!(f.reserve(1000), 1000);
        f.fill_after_in("*.dat", 10);
        assert!(f.fills(Path::new("d/x.dat")));
        assert!(!f.fills(Path::new("d/x.log")));
        assert_eq!(f.reserve(30), 10);
        f.fill_after(Some(5));
        assert!(
            f.fills(Path::new("x.log")),
            "a plain limit covers every file"
        );
    }

    /// A mount over a fresh backing dir (files are created through the mount).
    fn mounted() -> Result<(tempfile::TempDir, FaultFs)> {
        let tmp = tempfile::tempdir()?;
        let backing = tmp.path().join("backing");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&backing)?;
        std::fs::create_dir(&mnt)?;
        let fs = FaultFs::mount(&backing, &mnt)?;
        Ok((tmp, fs))
    }

    #[test]
    fn passthrough_reaches_the_backing_files() -> Result<()> {
        let (_tmp, fs) = mounted()?;
        let m = fs.mountpoint().to_path_buf();
        let b = fs.backing().to_path_buf();
        std::fs::create_dir(m.join("d"))?;
        let mut f = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(m.join("d/a.dat"))?;
        f.write_all(b"hello world")?;
        f.write_all_at(b"W", 6)?;
        f.set_len(20)?;
        f.sync_all()?;
        drop(f);
        assert_eq!(
            std::fs::read(b.join("d/a.dat"))?,
            b"hello World\0\0\0\0\0\0\0\0\0"
        );
        assert_eq!(fs.faults().written(), 12);
        // Exclusive create refuses an existing name.
        let e = File::options()
            .write(true)
            .create_new(true)
            .open(m.join("d/a.dat"))
            .expect_err("exists");
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        // Rename, no-replace rename, link, unlink, readdir, read.
        std::fs::write(b.join("d/other"), b"x")?;
        let e = nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &m.join("d/a.dat"),
            nix::fcntl::AT_FDCWD,
            &m.join("d/other"),
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        )
        .expect_err("target exists");
        assert_eq!(e, nix::errno::Errno::EEXIST);
        assert_eq!(std::fs::read(b.join("d/other"))?, b"x");
        std::fs::rename(m.join("d/a.dat"), m.join("d/a.vma"))?;
        std::fs::hard_link(m.join("d/a.vma"), m.join("d/b.vma"))?;
        std::fs::remove_file(m.join("d/a.vma"))?;
        let mut names: Vec<_> = std::fs::read_dir(m.join("d"))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<_>>()?;
        names.sort();
        assert_eq!(names, ["b.vma", "other"]);
        let mut s = String::new();
        File::open(m.join("d/b.vma"))?.read_to_string(&mut s)?;
        assert_eq!(&s[..11], "hello World");
        assert_eq!(std::fs::metadata(m.join("d/b.vma"))?.len(), 20);
        assert!(b.join("d/b.vma").exists() && !b.join("d/a.vma").exists());
        let st = nix::sys::statvfs::statvfs(&m)?;
        assert!(st.blocks() > 0);
        // fallocate and SEEK_DATA/SEEK_HOLE reach the backing file.
        let f = File::options().write(true).open(m.join("d/b.vma"))?;
        nix::fcntl::fallocate(&f, nix::fcntl::FallocateFlags::empty(), 0, 1 << 20)?;
        assert_eq!(std::fs::metadata(b.join("d/b.vma"))?.len(), 1 << 20);
        f.write_all_at(b"x", 512 << 10)?;
        f.set_len(0)?;
        f.set_len(2 << 20)?;
        f.write_all_at(b"y", 1 << 20)?;
        use nix::unistd::{lseek, Whence};
        assert_eq!(lseek(&f, 0, Whence::SeekData)?, 1 << 20);
        let hole = lseek(&f, 1 << 20, Whence::SeekHole)?;
        assert!(hole > 1 << 20 && hole < 2 << 20, "hole at {hole}");
        fs.faults().fill_after(Some(0));
        let e = nix::fcntl::fallocate(&f, nix::fcntl::FallocateFlags::empty(), 0, 4 << 20)
            .expect_err("full");
        assert_eq!(e, nix::errno::Errno::ENOSPC);
        fs.faults().fill_after(None);
        drop(f);
        fs.unmount()?;
        assert!(!m.join("d").exists(), "still mounted");
        Ok(())
    }

    /// True if `path` is a mount point (listed in this process's mountinfo).
    fn is_mounted(path: &Path) -> bool {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let want = path.to_string_lossy();
        info.lines()
            .any(|l| l.split(' ').nth(4).is_some_and(|m| m == want))
    }

    #[test]
    fn unmounted_after_a_panic_and_with_a_file_open() -> Result<()> {
        let (_tmp, fs) = mounted()?;
        let m = fs.mountpoint().to_path_buf();
        let b = fs.backing().to_path_buf();
        assert!(is_mounted(&m));
        let res = std::thread::spawn(move || {
            let _fs = fs;
            panic!("test failure while mounted");
        })
        .join();
        assert!(res.is_err());
        assert!(!is_mounted(&m), "still mounted after the panic");

        // A file left open: the unmount is lazy, the open file keeps working.
        let fs = FaultFs::mount(&b, &m)?;
        let mut f = File::create(m.join("open"))?;
        fs.unmount()?;
        assert!(!is_mounted(&m), "still mounted with a file open");
        f.write_all(b"late")?;
        drop(f);
        assert_eq!(std::fs::read(b.join("open"))?, b"late");
        Ok(())
    }

    #[test]
    fn fsync_and_flush_fail_for_matching_names() -> Result<()> {
        let (_tmp, fs) = mounted()?;
        let m = fs.mountpoint();
        fs.faults().fail_fsync(Some("*.dat"));
        let f = File::create(m.join("x.dat"))?;
        (&f).write_all(b"data")?;
        let e = f.sync_all().expect_err("fsync must fail");
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        assert!(f.sync_data().is_err());
        let g = File::create(m.join("x.log"))?;
        g.sync_all()?;
        assert_eq!(fs.faults().fsync_failures(), 2);
        fs.faults().fail_fsync(None);
        f.sync_all()?;
        // The first two matching fsyncs pass, then they fail; others are only counted.
        let calls = fs.faults().fsyncs();
        fs.faults().fail_fsync_after("*.dat", 2);
        f.sync_all()?;
        g.sync_all()?;
        f.sync_data()?;
        assert!(f.sync_all().is_err());
        assert_eq!(fs.faults().fsyncs(), calls + 4);
        fs.faults().fail_fsync(None);

        fs.faults().fail_flush(Some("x.log"));
        // `close` reports the flush error; std's File drop ignores it, so close via nix.
        let e = nix::unistd::close(std::os::fd::OwnedFd::from(g)).expect_err("close");
        assert_eq!(e, nix::errno::Errno::EIO);
        nix::unistd::close(std::os::fd::OwnedFd::from(f))?;
        assert_eq!(fs.faults().flush_failures(), 1);
        Ok(())
    }

    #[test]
    fn disk_fills_after_the_limit() -> Result<()> {
        let (_tmp, fs) = mounted()?;
        let m = fs.mountpoint();
        std::fs::write(m.join("before"), vec![1u8; 1000])?;
        fs.faults().fill_after(Some(10_000));
        let st = nix::sys::statvfs::statvfs(m)?;
        assert!(st.blocks_available() * st.fragment_size() <= 10_000);
        let mut f = File::create(m.join("big"))?;
        f.write_all(&[2u8; 6000])?;
        let e = f.write_all(&[3u8; 6000]).expect_err("disk full");
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        drop(f);
        // The write that crossed the limit landed in part, as on a real disk.
        assert_eq!(std::fs::metadata(fs.backing().join("big"))?.len(), 10_000);
        assert!(fs.faults().enospc_failures() >= 1);
        let e = std::fs::write(m.join("more"), b"x").expect_err("still full");
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        let e = File::create(m.join("empty")).expect_err("no room for a new file");
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert!(!fs.backing().join("empty").exists());
        fs.faults().fill_after(None);
        std::fs::write(m.join("more"), b"x")?;

        // Only `*.dat` fills: its last byte fails, other files are written freely.
        fs.faults().fill_after_in("*.dat", 4095);
        let mut f = File::create(m.join("a.dat"))?;
        let e = f.write_all(&[4u8; 4096]).expect_err("last byte");
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        std::fs::write(m.join("a.log"), vec![5u8; 100_000])?;
        assert_eq!(std::fs::metadata(fs.backing().join("a.dat"))?.len(), 4095);
        Ok(())
    }

    #[test]
    fn write_rate_caps_throughput() -> Result<()> {
        let (_tmp, fs) = mounted()?;
        let m = fs.mountpoint();
        fs.faults().write_rate(Some(4 << 20));
        let start = Instant::now();
        let mut f = File::create(m.join("slow"))?;
        for _ in 0..8 {
            f.write_all(&[7u8; 256 << 10])?;
        }
        drop(f);
        let took = start.elapsed();
        // 2 MiB at 4 MiB/s: at least 0.5 s (the first write's own share included).
        assert!(took >= Duration::from_millis(450), "{took:?}");
        fs.faults().write_rate(None);
        let start = Instant::now();
        std::fs::write(m.join("fast"), vec![7u8; 2 << 20])?;
        assert!(start.elapsed() < took, "uncapped write as slow as capped");
        Ok(())
    }
}

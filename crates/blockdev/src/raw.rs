//! Raw image files and block devices.

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::{BlockStatus, Extent, Finish, ReadAt, Size, WriteAt};

/// Whether the image file `path` can be opened with `O_DIRECT`: not every file system
/// allows it, and QEMU fails to open an image with `cache.direct=on` where it does not.
pub fn supports_direct_io(path: &Path) -> bool {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .is_ok()
}

/// Whether `path` is a block device (an error if it does not exist).
pub fn is_block_device(path: &Path) -> std::io::Result<bool> {
    Ok(std::fs::metadata(path)?.file_type().is_block_device())
}

/// QEMU's protocol driver for `path`: `host_device` for a block device, `file` otherwise.
pub fn protocol_driver(path: &Path) -> std::io::Result<&'static str> {
    Ok(if is_block_device(path)? {
        "host_device"
    } else {
        "file"
    })
}

/// Start writeback after this many bytes were written since the last kick.
const WRITEBACK_KICK: u64 = 64 << 20;

/// A raw image file or block device, read and written with positional I/O.
///
/// Written for a restore, every 64 MiB the written range is handed to the kernel for
/// writeback (`posix_fadvise(DONTNEED)` starts it without waiting and then drops the clean
/// pages), so the final fsync has little left to do and the page cache is not evicted. The
/// kicks run on a helper thread: submitting writeback can block on a full device queue, and
/// the writer should go on copying meanwhile.
#[derive(Debug)]
pub struct RawFile {
    file: Arc<File>,
    path: PathBuf,
    size: u64,
    dirty: Option<(u64, u64)>,
    dirty_bytes: u64,
    /// The writeback helper (writable files only; none if it could not start: then the final
    /// fsync does all the writeback).
    kicker: Option<Kicker>,
}

/// The writeback helper of a [`RawFile`]: written ranges go to `tx`, `handle` is the thread.
#[derive(Debug)]
struct Kicker {
    tx: std::sync::mpsc::SyncSender<(u64, u64)>,
    handle: std::thread::JoinHandle<()>,
}

impl RawFile {
    /// Open a raw file or block device for reading.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        Self::new(Arc::new(file), path, None)
    }

    /// Open an existing raw file or block device for writing (a restore target: it must
    /// read as zeros where nothing is written).
    pub fn open_write(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io("open", path, e))?;
        let file = Arc::new(file);
        // A few ranges may wait; beyond that the writer waits too (bounded dirty memory).
        let (tx, rx) = std::sync::mpsc::sync_channel::<(u64, u64)>(4);
        let kicker = {
            let file = Arc::clone(&file);
            std::thread::Builder::new()
                .name("disk-writeback".into())
                .spawn(move || {
                    for (lo, hi) in rx {
                        // Advice only: a failure costs speed, never data.
                        let _ = rustix::fs::fadvise(
                            &*file,
                            lo,
                            std::num::NonZeroU64::new(hi - lo),
                            rustix::fs::Advice::DontNeed,
                        );
                    }
                })
                .ok()
                .map(|handle| Kicker { tx, handle })
        };
        Self::new(file, path, kicker)
    }

    fn new(file: Arc<File>, path: &Path, kicker: Option<Kicker>) -> Result<Self> {
        let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
        let size = if meta.file_type().is_block_device() {
            rustix::fs::seek(&*file, rustix::fs::SeekFrom::End(0))
                .map_err(|e| Error::io("size of", path, e.into()))?
        } else {
            meta.len()
        };
        Ok(RawFile {
            file,
            path: path.to_path_buf(),
            size,
            dirty: None,
            dirty_bytes: 0,
            kicker,
        })
    }

    /// The path it was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check(&self, offset: u64, len: u64) -> Result<()> {
        crate::check_range(&self.path, self.size, offset, len)
    }

    fn kick_writeback(&mut self) {
        if let (Some((lo, hi)), Some(Kicker { tx, .. })) = (self.dirty.take(), &self.kicker) {
            let _ = tx.send((lo, hi));
        }
        self.dirty_bytes = 0;
    }
}

impl Size for RawFile {
    fn size(&self) -> u64 {
        self.size
    }
}

impl ReadAt for RawFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check(offset, buf.len() as u64)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| Error::IoAt {
                what: "read",
                path: self.path.clone(),
                offset,
                source,
            })
    }
}

impl BlockStatus for RawFile {
    /// Holes (`SEEK_HOLE`) read as zeros; everything else is data. Where the file system or
    /// device cannot tell, the whole range is data.
    fn extents(&self, range: Range<u64>) -> Result<Vec<Extent>> {
        use rustix::fs::{seek, SeekFrom};
        let end = range.end.min(self.size);
        let mut out = Vec::new();
        let mut pos = range.start;
        while pos < end {
            let data = match seek(&*self.file, SeekFrom::Data(pos)) {
                Ok(d) => d.min(end),
                // No data after `pos`: the rest is a hole.
                Err(rustix::io::Errno::NXIO) => end,
                Err(_) => {
                    out.push(Extent {
                        offset: pos,
                        length: end - pos,
                        zero: false,
                    });
                    break;
                }
            };
            if data > pos {
                out.push(Extent {
                    offset: pos,
                    length: data - pos,
                    zero: true,
                });
                pos = data;
                continue;
            }
            let hole = seek(&*self.file, SeekFrom::Hole(pos))
                .unwrap_or(end)
                .min(end);
            out.push(Extent {
                offset: pos,
                length: hole.max(pos + 1) - pos,
                zero: false,
            });
            pos = hole.max(pos + 1);
        }
        Ok(out)
    }
}

impl WriteAt for RawFile {
    fn write_at(&mut self, data: Bytes, offset: u64) -> Result<()> {
        self.check(offset, data.len() as u64)?;
        self.file
            .write_all_at(&data, offset)
            .map_err(|source| Error::IoAt {
                what: "write",
                path: self.path.clone(),
                offset,
                source,
            })?;
        let end = offset + data.len() as u64;
        self.dirty = Some(match self.dirty {
            Some((lo, hi)) => (lo.min(offset), hi.max(end)),
            None => (offset, end),
        });
        self.dirty_bytes += data.len() as u64;
        if self.dirty_bytes >= WRITEBACK_KICK {
            self.kick_writeback();
        }
        Ok(())
    }
}

impl Finish for RawFile {
    fn finish(mut self: Box<Self>) -> Result<()> {
        if let Some(Kicker { tx, handle }) = self.kicker.take() {
            drop(tx);
            let _ = handle.join();
        }
        self.file
            .sync_all()
            .map_err(|e| Error::io("sync", &self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u64 = 1024;

    fn extent(offset: u64, length: u64, zero: bool) -> Extent {
        Extent {
            offset,
            length,
            zero,
        }
    }

    /// A sparse file of 2 MiB with data at 64–128 KiB and 1 MiB–1 MiB+4 KiB.
    fn sparse(dir: &Path) -> PathBuf {
        let path = dir.join("disk.raw");
        let f = File::create(&path).unwrap();
        f.set_len(2048 * K).unwrap();
        f.write_all_at(&[0xAB; 64 * 1024], 64 * K).unwrap();
        f.write_all_at(&[0xCD; 4096], 1024 * K).unwrap();
        path
    }

    #[test]
    fn extents_follow_the_files_holes_within_the_asked_range() {
        let dir = tempfile::tempdir().unwrap();
        let disk = RawFile::open(&sparse(dir.path())).unwrap();
        assert_eq!(disk.size(), 2048 * K);
        assert_eq!(
            disk.extents(0..2048 * K).unwrap(),
            vec![
                extent(0, 64 * K, true),
                extent(64 * K, 64 * K, false),
                extent(128 * K, 896 * K, true),
                extent(1024 * K, 4 * K, false),
                extent(1028 * K, 1020 * K, true),
            ]
        );
        // A range starting and ending inside data, and one reaching past the end of the disk.
        assert_eq!(
            disk.extents(100 * K..1026 * K).unwrap(),
            vec![
                extent(100 * K, 28 * K, false),
                extent(128 * K, 896 * K, true),
                extent(1024 * K, 2 * K, false),
            ]
        );
        assert_eq!(
            disk.extents(1026 * K..4096 * K).unwrap(),
            vec![
                extent(1026 * K, 2 * K, false),
                extent(1028 * K, 1020 * K, true)
            ]
        );
        assert_eq!(disk.extents(2048 * K..4096 * K).unwrap(), vec![]);
    }

    #[test]
    fn reads_and_writes_land_at_their_offsets_and_stay_inside_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = sparse(dir.path());
        let mut disk = Box::new(RawFile::open_write(&path).unwrap());
        assert_eq!(disk.path(), path);
        disk.write_at(Bytes::from_static(&[1, 2, 3]), 64 * K - 1)
            .unwrap();
        // Past the end: refused, nothing written, the file keeps its size.
        let err = disk
            .write_at(Bytes::from_static(&[9, 9]), 2048 * K - 1)
            .unwrap_err();
        assert!(matches!(err, Error::OutOfRange { .. }), "{err}");
        let mut buf = [0u8; 2];
        assert!(matches!(
            disk.read_at(&mut buf, 2048 * K - 1),
            Err(Error::OutOfRange { .. })
        ));
        let mut buf = [0u8; 5];
        disk.read_at(&mut buf, 64 * K - 2).unwrap();
        assert_eq!(buf, [0, 1, 2, 3, 0xAB]);
        disk.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, 2048 * K);
        assert_eq!(&bytes[64 * 1024 - 1..64 * 1024 + 3], &[1, 2, 3, 0xAB]);
        assert_eq!(bytes[2048 * 1024 - 1], 0);
    }

    #[test]
    fn many_writes_past_the_writeback_kick_all_arrive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.raw");
        File::create(&path)
            .unwrap()
            .set_len(WRITEBACK_KICK * 2)
            .unwrap();
        let mut disk = Box::new(RawFile::open_write(&path).unwrap());
        let chunk = 4 << 20;
        for i in 0..(WRITEBACK_KICK * 2 / chunk) {
            let data = Bytes::from(vec![i as u8 + 1; chunk as usize]);
            disk.write_at(data, i * chunk).unwrap();
        }
        disk.finish().unwrap();
        let f = File::open(&path).unwrap();
        for i in 0..(WRITEBACK_KICK * 2 / chunk) {
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, i * chunk + chunk - 1).unwrap();
            assert_eq!(b[0], i as u8 + 1);
        }
    }

    /// A [`RawFile`] for writing `path` whose writeback helper records the ranges it is
    /// handed (instead of advising the kernel); the ranges arrive on the returned channel
    /// once the file is finished or dropped.
    fn recording_writer(path: &Path) -> (RawFile, std::sync::mpsc::Receiver<Vec<(u64, u64)>>) {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let (tx, rx) = std::sync::mpsc::sync_channel::<(u64, u64)>(4);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let _ = done_tx.send(rx.into_iter().collect());
        });
        let disk = RawFile::new(Arc::new(file), path, Some(Kicker { tx, handle })).unwrap();
        (disk, done_rx)
    }

    #[test]
    fn each_64_mib_written_hand_the_written_range_to_writeback() {
        const M: u64 = 1 << 20;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        File::create(&path).unwrap().set_len(96 * M).unwrap();
        let (mut disk, kicked) = recording_writer(&path);
        let chunk = Bytes::from(vec![0x5A; 4 * M as usize]);
        // Out of order: the range runs from the lowest to the highest byte written.
        disk.write_at(chunk.clone(), 8 * M).unwrap();
        disk.write_at(chunk.slice(..M as usize), 3 * M).unwrap();
        assert_eq!(disk.dirty, Some((3 * M, 12 * M)));
        assert_eq!(disk.dirty_bytes, 5 * M);
        // 5 + 14 * 4 = 61 MiB: not yet.
        for i in 0..14 {
            disk.write_at(chunk.clone(), 12 * M + i * 4 * M).unwrap();
        }
        assert_eq!(disk.dirty, Some((3 * M, 68 * M)));
        assert_eq!(disk.dirty_bytes, 61 * M);
        // 3 MiB more reach 64 MiB: the range goes to writeback and counting starts again.
        disk.write_at(chunk.slice(..3 * M as usize), 0).unwrap();
        assert_eq!(disk.dirty, None);
        assert_eq!(disk.dirty_bytes, 0);
        disk.write_at(chunk.slice(..M as usize), 90 * M).unwrap();
        assert_eq!(disk.dirty, Some((90 * M, 91 * M)));
        Box::new(disk).finish().unwrap();
        // The rest is left to the final sync: one kick in all.
        assert_eq!(kicked.recv().unwrap(), vec![(0, 68 * M)]);
        let bytes = std::fs::read(&path).unwrap();
        let filled = |r: Range<u64>, b: u8| {
            bytes[r.start as usize..r.end as usize]
                .iter()
                .all(|&x| x == b)
        };
        assert!(filled(0..4 * M, 0x5A) && filled(8 * M..68 * M, 0x5A));
        assert!(filled(90 * M..91 * M, 0x5A));
        assert!(filled(4 * M..8 * M, 0) && filled(68 * M..90 * M, 0) && filled(91 * M..96 * M, 0));
    }

    /// A FIFO `fifo` in `dir`: takes writes, but neither fsync nor SEEK_DATA.
    fn fifo(dir: &Path) -> PathBuf {
        let path = dir.join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        path
    }

    #[test]
    fn a_final_sync_that_fails_is_an_error() {
        // A FIFO takes writes but not fsync (EINVAL), as a file system that fails the final
        // sync would: `finish` must say so, a restore must not report the disk as written.
        let dir = tempfile::tempdir().unwrap();
        let path = fifo(dir.path());
        // Read-write: opening a FIFO does not wait for the other end.
        let disk = Box::new(RawFile::open_write(&path).unwrap());
        let err = disk.finish().unwrap_err();
        match &err {
            Error::Io { what, source, .. } => {
                assert_eq!(*what, "sync");
                assert_eq!(source.raw_os_error(), Some(libc::EINVAL));
            }
            other => panic!("not a sync error: {other}"),
        }
        assert_eq!(err.to_string(), format!("sync {}", path.display()));
    }

    #[test]
    fn where_the_file_cannot_tell_its_holes_all_is_data() {
        // SEEK_DATA fails on a FIFO (ESPIPE): standing in for a file system or device that
        // cannot tell, with a size set by hand (a FIFO has none).
        let dir = tempfile::tempdir().unwrap();
        let path = fifo(dir.path());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut disk = RawFile::new(Arc::new(file), &path, None).unwrap();
        assert_eq!(disk.size(), 0);
        disk.size = 1024 * K;
        assert_eq!(
            disk.extents(4 * K..2048 * K).unwrap(),
            vec![extent(4 * K, 1020 * K, false)]
        );
    }

    #[test]
    fn probes_tell_files_from_block_devices() {
        let dir = tempfile::tempdir().unwrap();
        let file = sparse(dir.path());
        // ext4 (the test's temp dir) takes O_DIRECT; a path that cannot be opened does not.
        assert!(supports_direct_io(&file));
        assert!(!supports_direct_io(&dir.path().join("missing")));
        assert!(!is_block_device(&file).unwrap());
        assert_eq!(protocol_driver(&file).unwrap(), "file");
        assert!(is_block_device(&dir.path().join("missing")).is_err());
        // A block device node (loop device 0; only its type is looked at).
        let node = dir.path().join("blk");
        let status = std::process::Command::new("mknod")
            .arg(&node)
            .args(["b", "7", "0"])
            .status()
            .unwrap();
        assert!(status.success());
        assert!(is_block_device(&node).unwrap());
        assert_eq!(protocol_driver(&node).unwrap(), "host_device");
    }
}

//! Disks over real files and a real qemu-storage-daemon: reads, block status, pipelined
//! writes, `O_DIRECT`, and the daemon is always gone afterwards (finish, error, panic), its
//! session record and socket directory too.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use vmdump_blockdev::{
    open_source, open_target, qemu_img, BlockStatus, ErrorKind, ImageOptions, RawFile, Size, Source,
};
use vmdump_launch::Session;
use vmdump_testkit::{image_sha256, pid_alive, run, sha256_bytes, MIB};

/// `qemu-img info` without force-share fails while any QEMU process holds the image.
fn unlocked(path: &Path) -> bool {
    Command::new("qemu-img")
        .arg("info")
        .arg(path)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A 16 MiB qcow2: data at 1 MiB (2 MiB of 0x11), a zero cluster range at 8 MiB, a 4 KiB write
/// at 12 MiB, the rest unallocated.
fn test_qcow2(dir: &Path) -> Result<PathBuf> {
    let img = dir.join("src.qcow2");
    qemu_img::create(&img, "qcow2", 16 * MIB, None)?;
    run(Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0x11 1M 2M",
            "-c",
            "write -z 8M 1M",
            "-c",
            "write -P 0x22 12M 4k",
        ])
        .arg(&img))?;
    Ok(img)
}

fn read_all(disk: &dyn Source) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; disk.size() as usize];
    disk.read_at(&mut buf, 0)?;
    Ok(buf)
}

/// Bytes the extents of `disk` call non-zero.
fn data_bytes(disk: &dyn Source) -> Result<u64> {
    let mut pos = 0;
    let mut data = 0;
    while pos < disk.size() {
        let ext = disk.extents(pos..disk.size())?;
        assert!(!ext.is_empty());
        for e in &ext {
            assert_eq!(e.offset, pos, "contiguous extents");
            if !e.zero {
                data += e.length;
            }
            pos = e.end();
        }
    }
    Ok(data)
}

fn session_files(s: &Session) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(s.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn qcow2_source_reads_and_maps_like_qemu() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let session = Session::open(&dir.path().join("run"))?;
    let img = test_qcow2(dir.path())?;
    let image = ImageOptions::new(&img)
        .read_only()
        .session(&session)
        .open()?;
    assert_eq!(image.format(), "qcow2");
    assert_eq!(image.size(), 16 * MIB);
    let pid = image.daemon().unwrap().pid();
    assert!(pid_alive(pid));
    let files = session_files(&session);
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files.contains(&format!("proc-{pid}")), "{files:?}");
    assert!(files.iter().any(|f| f.starts_with("tmp-qsd-")), "{files:?}");
    assert_eq!(
        sha256_bytes(&read_all(&image)?),
        image_sha256(&img, "qcow2", dir.path())?
    );
    // 2 MiB of data and one 64 KiB cluster for the 4 KiB write; the zero range is zero.
    assert_eq!(data_bytes(&image)?, 2 * MIB + 65536);
    let e = image.extents(8 * MIB..9 * MIB)?;
    assert!(e[0].zero && e[0].offset == 8 * MIB, "{e:?}");
    image.close()?;
    assert!(!pid_alive(pid), "daemon stopped after close");
    assert!(unlocked(&img));
    assert!(
        session_files(&session).is_empty(),
        "record and sockets removed"
    );
    Ok(())
}

#[test]
fn raw_source_maps_holes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let raw = dir.path().join("sparse.raw");
    std::fs::File::create(&raw)?.set_len(8 * MIB)?;
    vmdump_testkit::write_random(&raw, 2 * MIB, MIB, 3)?;
    let disk = open_source(&raw, "raw", None)?;
    assert_eq!(disk.size(), 8 * MIB);
    assert_eq!(data_bytes(&*disk)?, MIB);
    let mut buf = vec![0u8; 4096];
    let err = disk.read_at(&mut buf, 8 * MIB - 100).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutOfBounds);
    assert_eq!(
        sha256_bytes(&read_all(&*disk)?),
        vmdump_testkit::sha256_file(&raw)?
    );
    let r = RawFile::open(&raw)?;
    assert_eq!(r.extents(0..MIB)?.len(), 1);
    Ok(())
}

#[test]
fn targets_write_pipelined_and_finish_durably() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let session = Session::open(&dir.path().join("run"))?;
    let payload: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8).collect();
    let expected = {
        let mut v = vec![0u8; (16 * MIB) as usize];
        for k in 0..8u64 {
            let o = (k * 2 * MIB) as usize;
            v[o..o + MIB as usize].copy_from_slice(&payload);
        }
        v
    };
    for format in ["raw", "qcow2"] {
        let img = dir.path().join(format!("new.{format}"));
        qemu_img::create(&img, format, 16 * MIB, None)?;
        let mut t = open_target(&img, format, false, Some(&session))?;
        // More writes than are kept in flight, out of order, all slices of one buffer.
        let shared = Bytes::from(payload.clone());
        for k in (0..8u64).rev() {
            t.write_at(shared.slice(..), k * 2 * MIB)?;
        }
        let err = t.write_at(shared.slice(..2), 16 * MIB - 1).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::OutOfBounds);
        t.finish()?;
        assert!(unlocked(&img));
        run(Command::new("qemu-img").arg("check").arg(&img)).ok();
        assert_eq!(
            image_sha256(&img, format, dir.path())?,
            sha256_bytes(&expected),
            "{format}"
        );
    }
    assert!(session_files(&session).is_empty());
    Ok(())
}

#[test]
fn failures_and_panics_leave_no_daemon() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let session = Session::open(&dir.path().join("run"))?;
    let raw = dir.path().join("plain.raw");
    std::fs::write(&raw, vec![7u8; MIB as usize])?;
    // The daemon exits at once (not a qcow2): reported at once, with its reason.
    let t0 = Instant::now();
    let err = ImageOptions::new(&raw)
        .format("qcow2")
        .read_only()
        .session(&session)
        .open()
        .unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(err.kind(), ErrorKind::Tool);
    let msg = format!("{err}");
    assert!(
        msg.contains("qemu-storage-daemon") && msg.contains("qcow2"),
        "{msg}"
    );
    assert!(unlocked(&raw));

    let missing = dir.path().join("missing.qcow2");
    let err = ImageOptions::new(&missing)
        .session(&session)
        .open()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");

    let raw2 = raw.clone();
    let s2 = Arc::clone(&session);
    let (tx, rx) = std::sync::mpsc::channel();
    let r = std::thread::spawn(move || {
        let image = ImageOptions::new(&raw2)
            .format("raw")
            .session(&s2)
            .open()
            .unwrap();
        tx.send(image.daemon().unwrap().pid()).unwrap();
        assert_eq!(image.read(0, 4).unwrap().as_ref(), &[7, 7, 7, 7]);
        panic!("boom while the image is open");
    })
    .join();
    assert!(r.is_err());
    let pid = rx.recv()?;
    assert!(!pid_alive(pid), "daemon stopped during unwinding");
    assert!(unlocked(&raw));
    assert!(
        session_files(&session).is_empty(),
        "{:?}",
        session_files(&session)
    );
    Ok(())
}

/// Whether process `pid` has `path` open with `O_DIRECT` (the `flags` line of
/// `/proc/<pid>/fdinfo`, octal); None if it does not have it open at all.
fn open_direct(pid: u32, path: &Path) -> Option<bool> {
    let path = std::fs::canonicalize(path).ok()?;
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()? {
        let fd = fd.ok()?;
        if std::fs::read_link(fd.path()).ok().as_deref() != Some(path.as_path()) {
            continue;
        }
        let info =
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_str()?))
                .ok()?;
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())?;
        return Some(flags & 0o40000 != 0);
    }
    None
}

#[test]
fn direct_io_bypasses_the_page_cache_and_default_does_not() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let session = Session::open(&dir.path().join("run"))?;
    let img = dir.path().join("new.qcow2");
    qemu_img::create(&img, "qcow2", 16 * MIB, Some("metadata"))?;

    let mut image = ImageOptions::new(&img)
        .format("qcow2")
        .direct_io(true)
        .session(&session)
        .open()?;
    let pid = image.daemon().unwrap().pid();
    assert_eq!(open_direct(pid, &img), Some(true), "direct: O_DIRECT");
    vmdump_blockdev::WriteAt::write_at(&mut image, Bytes::from(vec![0x5a; 65536]), MIB)?;
    image.close()?;

    let image = ImageOptions::new(&img)
        .format("qcow2")
        .session(&session)
        .open()?;
    let pid = image.daemon().unwrap().pid();
    assert_eq!(open_direct(pid, &img), Some(false), "writable: cached");
    image.close()?;
    let image = ImageOptions::new(&img)
        .read_only()
        .session(&session)
        .open()?;
    let pid = image.daemon().unwrap().pid();
    assert_eq!(open_direct(pid, &img), Some(false), "read-only: cached");
    assert!(image.read(MIB, 65536)?.iter().all(|b| *b == 0x5a));
    image.close()?;
    Ok(())
}

//! `image::Image` over a real qemu-storage-daemon: read, extents, write, and the daemon is
//! always gone afterwards (close, error, panic).

mod common;

use std::path::Path;

use common::{convert_to_raw, make_test_qcow2, run, sha256_file};
use sha2::{Digest, Sha256};
use vmdump_nbd::image::{self, Image};
use vmdump_nbd::ErrorKind;

/// `qemu-img info` without force-share fails while any QEMU process holds the image.
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn unlocked(path: &Path) -> bool {
    std::process::Command::new("qemu-img")
        .args(["info", path.to_str().unwrap()])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn open_detects_format_reads_and_maps() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_test_qcow2(dir.path(), 64);
    let reference = dir.path().join("ref.raw");
    convert_to_raw(&img, &reference);

    let image = Image::open(&img, None, true).unwrap();
    assert_eq!(image.format(), "qcow2");
    assert_eq!(image.size(), 64 << 20);
    let pid = image.daemon().unwrap().pid().unwrap();
    assert!(alive(pid));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 8 << 20];
    for i in 0..8 {
        image.read_at(&mut buf, i * (8 << 20)).unwrap();
        h.update(&buf);
    }
    assert_eq!(hex::encode(h.finalize()), sha256_file(&reference));
    let ext = image.extents(0..image.size()).unwrap();
    let data: u64 = ext
        .iter()
        .filter(|e| e.flags & 1 == 0)
        .map(|e| e.length)
        .sum();
    // 1M + 3M + 64k + 64k (4k write allocates a cluster) + 2M + 512k + 1M tail.
    assert_eq!(data, (1 + 3 + 2 + 1) * (1 << 20) + 2 * 65536 + (512 << 10));
    image.close().unwrap();
    assert!(!alive(pid), "daemon stopped after close");
    assert!(unlocked(&img));
}

#[test]
fn create_write_close_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("new.qcow2");
    image::create(&img, "qcow2", 16 << 20).unwrap();
    assert_eq!(image::info(&img).unwrap().virtual_size, 16 << 20);
    let image = Image::open(&img, Some("qcow2"), false).unwrap();
    assert!(!unlocked(&img), "a writable daemon holds the write lock");
    let pid = image.daemon().unwrap().pid().unwrap();
    image.write_at(&[0x42; 1 << 20], 3 << 20).unwrap();
    image.write_zeroes(3 << 20, 4096).unwrap();
    image.flush().unwrap();
    drop(image); // Drop also closes cleanly.
    assert!(!alive(pid));
    assert!(unlocked(&img));
    run("qemu-img", &["check", img.to_str().unwrap()]);
    let image = Image::open(&img, None, true).unwrap();
    let data = image.read(3 << 20, 1 << 20).unwrap();
    assert!(data[..4096].iter().all(|b| *b == 0));
    assert!(data[4096..].iter().all(|b| *b == 0x42));
    assert_eq!(
        image.write_at(&[1], 0).unwrap_err().kind(),
        ErrorKind::Usage
    );
    image.close().unwrap();
}

#[test]
fn errors_and_panics_leave_no_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("plain.raw");
    std::fs::write(&raw, vec![7u8; 1 << 20]).unwrap();
    let err = Image::open(&raw, Some("qcow2"), true).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    let msg = format!("{err}");
    assert!(
        msg.contains("qemu-storage-daemon") && msg.contains("qcow2"),
        "{msg}"
    );
    assert!(unlocked(&raw));

    let missing = dir.path().join("missing.qcow2");
    assert!(Image::open(&missing, None, true).is_err());

    let raw2 = raw.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let r = std::thread::spawn(move || {
        let image = Image::open(&raw2, Some("raw"), false).unwrap();
        tx.send(image.daemon().unwrap().pid().unwrap()).unwrap();
        assert_eq!(image.read(0, 4).unwrap().as_ref(), &[7, 7, 7, 7]);
        panic!("boom while the image is open");
    })
    .join();
    assert!(r.is_err());
    let pid = rx.recv().unwrap();
    assert!(!alive(pid), "daemon stopped during unwinding");
    assert!(unlocked(&raw));
}

/// Whether process `pid` has `path` open with `O_DIRECT` (the `flags` line of
/// `/proc/<pid>/fdinfo`, octal); None if it does not have it open at all.
fn open_direct(pid: u32, path: &Path) -> Option<bool> {
    let path = std::fs::canonicalize(path).unwrap();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let fd = fd.unwrap();
        if std::fs::read_link(fd.path()).ok().as_deref() != Some(path.as_path()) {
            continue;
        }
        let info =
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_str()?))
                .unwrap();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
            .unwrap();
        return Some(flags & libc::O_DIRECT as u32 != 0);
    }
    None
}

#[test]
fn open_direct_bypasses_the_page_cache_and_open_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("new.qcow2");
    image::create(&img, "qcow2", 16 << 20).unwrap();

    // open_direct on a disk file system: O_DIRECT, and the data arrives.
    let image = Image::open_direct(&img, "qcow2").unwrap();
    let pid = image.daemon().unwrap().pid().unwrap();
    assert_eq!(open_direct(pid, &img), Some(true), "open_direct: O_DIRECT");
    image.write_at(&[0x5a; 65536], 1 << 20).unwrap();
    image.close().unwrap();
    run("qemu-img", &["check", img.to_str().unwrap()]);

    // Plain writable and read-only opens keep the page cache.
    let image = Image::open(&img, Some("qcow2"), false).unwrap();
    let pid = image.daemon().unwrap().pid().unwrap();
    assert_eq!(open_direct(pid, &img), Some(false), "writable: cached");
    image.close().unwrap();
    let image = Image::open(&img, None, true).unwrap();
    let pid = image.daemon().unwrap().pid().unwrap();
    assert_eq!(open_direct(pid, &img), Some(false), "read-only: cached");
    assert!(image
        .read(1 << 20, 65536)
        .unwrap()
        .iter()
        .all(|b| *b == 0x5a));
    image.close().unwrap();
}

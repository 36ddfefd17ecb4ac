//! `vmdump vma create -d format=<fmt>:...` for non-raw images: the image is read through a
//! private `qemu-storage-daemon` and NBD (real QEMU 7.2 tools), holes found by block status.

use std::path::Path;
use std::process::{Command, Output};

use vmdump_testkit::{run_output, sha256_file};

const BIN: &str = env!("CARGO_BIN_EXE_vmdump");

fn run(cmd: &str, args: &[&str]) -> Output {
    run_output(Command::new(cmd).args(args)).unwrap()
}

fn sha_file(p: &Path) -> String {
    sha256_file(p).unwrap()
}

/// A sparse qcow2 with data at the start, in the middle (unaligned to 64 KiB), zeroes written
/// explicitly, and an unallocated tail; size not a multiple of 64 KiB.
fn make_qcow2(dir: &Path, name: &str, seed: u8) -> std::path::PathBuf {
    let img = dir.join(name);
    let p = img.to_str().unwrap();
    run("qemu-img", &["create", "-q", "-f", "qcow2", p, "540672"]);
    let writes = format!(
        "write -P {seed} 0 64k\nwrite -P {} 200k 12k\nwrite -z 320k 64k\nwrite -P {} 520k 8k",
        seed.wrapping_add(1),
        seed.wrapping_add(2)
    );
    for w in writes.lines() {
        run("qemu-io", &["-f", "qcow2", "-c", w, p]);
    }
    img
}

#[test]
fn create_from_qcow2_and_raw_round_trips_and_leaves_no_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let q1 = make_qcow2(dir.path(), "a.qcow2", 0x11);
    let q2 = make_qcow2(dir.path(), "b.qcow2", 0x55);
    let raw = dir.path().join("c.raw");
    std::fs::write(&raw, vec![0x7fu8; 3 * 65536 + 4096]).unwrap();
    let archive = dir.path().join("x.vma");

    let d1 = format!("format=qcow2:drive-scsi0={}", q1.display());
    let d2 = format!("format=qcow2:drive-virtio1={}", q2.display());
    let d3 = format!("format=raw:drive-sata0={}", raw.display());
    let out = run(
        BIN,
        &[
            "vma",
            "create",
            archive.to_str().unwrap(),
            "-d",
            &d1,
            "-d",
            &d2,
            "-d",
            &d3,
        ],
    );
    assert!(out.stderr.is_empty() || !String::from_utf8_lossy(&out.stderr).contains("error"));

    let list = run(BIN, &["vma", "list", archive.to_str().unwrap()]);
    let list = String::from_utf8(list.stdout).unwrap();
    assert!(
        list.contains("DEV: dev_id=1 size: 540672 devname: drive-scsi0"),
        "{list}"
    );
    assert!(
        list.contains("DEV: dev_id=2 size: 540672 devname: drive-virtio1"),
        "{list}"
    );
    assert!(
        list.contains("DEV: dev_id=3 size: 200704 devname: drive-sata0"),
        "{list}"
    );

    let out_dir = dir.path().join("out");
    run(
        BIN,
        &[
            "vma",
            "extract",
            archive.to_str().unwrap(),
            out_dir.to_str().unwrap(),
        ],
    );
    for (src, dev) in [(&q1, "drive-scsi0"), (&q2, "drive-virtio1")] {
        let expect = dir.path().join(format!("{dev}.expect.raw"));
        run(
            "qemu-img",
            &[
                "convert",
                "-f",
                "qcow2",
                "-O",
                "raw",
                src.to_str().unwrap(),
                expect.to_str().unwrap(),
            ],
        );
        let got = out_dir.join(format!("disk-{dev}.raw"));
        assert_eq!(
            sha_file(&got),
            sha_file(&expect),
            "{dev} differs from its qcow2 source"
        );
    }
    assert_eq!(
        sha_file(&out_dir.join("disk-drive-sata0.raw")),
        sha_file(&raw)
    );

    // The qcow2 images were read through qemu-storage-daemon, which must be gone and must
    // have released its lock: qemu-img may now open the images read-write.
    for q in [&q1, &q2] {
        run("qemu-img", &["check", "-q", q.to_str().unwrap()]);
        run(
            "qemu-io",
            &["-f", "qcow2", "-c", "write 0 4k", q.to_str().unwrap()],
        );
    }
}

#[test]
fn create_with_unknown_format_or_missing_image_fails_and_leaves_no_archive() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("x.vma");
    let missing = format!(
        "format=qcow2:drive-scsi0={}",
        dir.path().join("nope.qcow2").display()
    );
    let out = Command::new(BIN)
        .args(["vma", "create", archive.to_str().unwrap(), "-d", &missing])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bdrv_open"), "{err}");
    assert!(
        !archive.exists(),
        "a failed create left {}",
        archive.display()
    );

    // A raw file opened as qcow2: the daemon refuses it, with QEMU's reason.
    let raw = dir.path().join("r.raw");
    std::fs::write(&raw, vec![1u8; 65536]).unwrap();
    let wrong = format!("format=qcow2:drive-scsi0={}", raw.display());
    let out = Command::new(BIN)
        .args(["vma", "create", archive.to_str().unwrap(), "-d", &wrong])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!archive.exists());
}

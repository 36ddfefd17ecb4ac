//! `vmdump mount --filesystems` / `vmdump umount`: the test guest runs its writer, powers off
//! cleanly, its disk is archived as a seekable `.vma.zst`, and a file the writer wrote is read
//! back from the guest filesystem mounted (loop device over the FUSE file) out of the archive.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vmdump_testkit::{run, sha256_file, testguest_dir, Disk, Qemu};

const BIN: &str = env!("CARGO_BIN_EXE_vmdump");

/// What the writer puts into `data/slot-<n % 64>` at tick `n` (testguest/writer).
fn expected(n: u64) -> Vec<u8> {
    let line = format!("vmdump-testguest {n}\n");
    let size = 1000 + 4096 * (n % 16) as usize;
    line.bytes().cycle().take(size).collect()
}

async fn run_guest_writer(dir: &Path, disk: &Path) -> u64 {
    let q = Qemu::testguest(
        &dir.join("vm"),
        &[Disk {
            key: "virtio0",
            path: disk,
            format: "raw",
        }],
        "vmdump.interval=0.05",
    )
    .await
    .unwrap();
    q.wait_ready().await.unwrap();
    for _ in 0..600 {
        if q.last_tick() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(q.last_tick() >= 5, "writer did not run: {}", q.serial_log());
    // ACPI power button: the guest stops the writer, unmounts cleanly and powers off.
    q.qmp.execute("system_powerdown", None).await.unwrap();
    let mut q = q;
    for _ in 0..600 {
        if q.child.try_wait().unwrap().is_some() {
            return q.last_tick();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("guest did not power off: {}", q.serial_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_filesystems_reads_what_the_guest_writer_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    std::fs::copy(testguest_dir().join("data.raw"), &disk).unwrap();
    let last = run_guest_writer(dir.path(), &disk).await;

    let archive = dir.path().join("guest.vma.zst");
    let d = format!("format=raw:drive-virtio0={}", disk.display());
    run(Command::new(BIN).args([
        "vma",
        "create",
        archive.to_str().unwrap(),
        "-d",
        &d,
        "--compress",
        "zstd",
    ]))
    .unwrap();

    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let run_dir = dir.path().join("run");
    let out = run(Command::new(BIN)
        .env("VMDUMP_RUN_DIR", &run_dir)
        .args(["mount", "--filesystems"])
        .arg(&archive)
        .arg(&mnt))
    .unwrap();
    assert!(out.contains("drive-virtio0 mounted on"), "{out}");
    let check = std::panic::catch_unwind(|| {
        // The disk file is the source disk, byte for byte.
        assert_eq!(
            sha256_file(&mnt.join("drive-virtio0.raw")).unwrap(),
            sha256_file(&disk).unwrap()
        );
        // The guest filesystem: /tick and the slot the writer wrote at that tick.
        let fs = mnt.join("drive-virtio0");
        let tick: u64 = std::fs::read_to_string(fs.join("tick"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(tick >= 5 && tick <= last + 1, "tick {tick}, console {last}");
        let slot = std::fs::read(fs.join(format!("data/slot-{:02}", tick % 64))).unwrap();
        assert!(slot == expected(tick), "slot of tick {tick} differs");
        // Read-only all the way down.
        assert!(std::fs::write(fs.join("new"), b"x").is_err());
        assert!(std::fs::OpenOptions::new()
            .write(true)
            .open(mnt.join("drive-virtio0.raw"))
            .is_err());
    });
    let out = run(Command::new(BIN)
        .env("VMDUMP_RUN_DIR", &run_dir)
        .arg("umount")
        .arg(&mnt))
    .unwrap();
    check.unwrap();
    assert!(out.contains("unmounted"), "{out}");
    assert_eq!(
        std::fs::read_dir(&mnt).unwrap().count(),
        0,
        "mount left behind"
    );
    let loops = run(Command::new("losetup").arg("-a")).unwrap();
    assert!(!loops.contains(&*mnt.to_string_lossy()), "{loops}");
    assert_eq!(
        std::fs::read_dir(run_dir.join("mount")).unwrap().count(),
        0,
        "mount record left behind"
    );
}

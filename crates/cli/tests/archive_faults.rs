//! What vmdump does when the disk under an archive or a restored volume fails at the worst
//! moment — the final fsync fails, or the disk fills up just before the last bytes — with the
//! dump dir or the storage on the test kit's fault-injecting FUSE filesystem ([`FaultFs`],
//! real files in a backing dir). Every case: a non-zero exit, an error that names the cause,
//! no file with an archive's final name, nothing else left behind; and with the fault
//! switched off the same command succeeds on the same mount, so the fault was the cause.

mod backup_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::Result;
use backup_common::*;

/// A [`FaultFs`] over `<base>/<name>-backing` mounted on `<base>/<name>`.
fn fault_dir(base: &Path, name: &str) -> Result<FaultFs> {
    let backing = base.join(format!("{name}-backing"));
    let mnt = base.join(name);
    std::fs::create_dir_all(&backing)?;
    std::fs::create_dir_all(&mnt)?;
    FaultFs::mount(&backing, &mnt)
}

fn is_archive(name: &str) -> bool {
    name.contains(".vma") || name.ends_with(".dat")
}

/// Asserts a failed run: a non-zero exit code (not a signal) and `needle` in its output.
fn assert_failed(out: &Output, what: &str, needle: &str) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        matches!(out.status.code(), Some(c) if c != 0),
        "{what} should have failed: {}",
        output_text(out)
    );
    assert!(
        text.contains(needle),
        "{what}: no {needle:?} in {}",
        output_text(out)
    );
    text
}

/// After a failed backup into `dir`: the run's `.log` (with the `ERROR:` line when the disk
/// still took it) is all there is.
fn assert_only_log(dir: &Path) {
    let files = file_names(dir);
    assert!(!files.iter().any(|f| is_archive(f)), "{files:?}");
    assert!(
        files.iter().all(|f| f.ends_with(".log")) && files.len() <= 1,
        "{files:?}"
    );
}

/// VM 100, stopped: a 24 MiB raw disk with 6 MiB of random data and a 4 MiB qcow2 disk.
fn setup_stopped(env: &Env) -> Result<()> {
    let a = env.image(100, "vm-100-disk-0.raw");
    std::fs::File::create(&a)?.set_len(24 * MIB)?;
    write_random(&a, 2 * MIB, 6 * MIB, 11)?;
    let b = env.image(100, "vm-100-disk-1.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&b)
        .arg((4 * MIB).to_string()))?;
    run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x5a 1M 1M"])
        .arg(&b))?;
    env.write_config(
        100,
        "memory: 256\nname: faulty\nvirtio0: local:100/vm-100-disk-0.raw,size=24M\nvirtio1: local:100/vm-100-disk-1.qcow2,size=4M\n",
    )
}

/// A config root with VM 100 of [`setup_stopped`] and a [`FaultFs`] for its dump dir.
fn stopped_with_fault_dump() -> Result<(tempfile::TempDir, Env, FaultFs)> {
    let tmp = tempfile::tempdir()?;
    let env = Env::new(tmp.path())?;
    setup_stopped(&env)?;
    let fs = fault_dir(tmp.path(), "dump")?;
    Ok((tmp, env, fs))
}

/// Adds dir storage `faulty` on `fs` with `content` to the config root.
fn add_fault_storage(env: &Env, fs: &FaultFs, content: &str) -> Result<()> {
    let cfg = env.root.join("storage.cfg");
    let text = std::fs::read_to_string(&cfg)?;
    std::fs::write(
        &cfg,
        format!(
            "{text}\ndir: faulty\n\tpath {}\n\tcontent {content}\n",
            fs.mountpoint().display()
        ),
    )?;
    Ok(())
}

fn dumpdir_args<'a>(compress: &'a str, dir: &'a Path) -> [&'a str; 5] {
    [
        "100",
        "--compress",
        compress,
        "--dumpdir",
        dir.to_str().expect("utf-8 path"),
    ]
}

/// Removes everything in `dir` (between rounds; names carry a one-second time stamp).
fn clear(dir: &Path) -> Result<()> {
    for f in file_names(dir) {
        std::fs::remove_file(dir.join(f))?;
    }
    std::thread::sleep(Duration::from_millis(1100));
    Ok(())
}

#[test]
fn stopped_backup_whose_final_fsync_fails_leaves_no_archive() -> Result<()> {
    let (_tmp, env, fs) = stopped_with_fault_dump()?;
    let faults = fs.faults();
    for compress in ["0", "zstd"] {
        faults.fail_fsync(Some("*.dat"));
        let before = faults.fsync_failures();
        let out = env.vmdump_backup(&dumpdir_args(compress, fs.mountpoint()))?;
        let text = assert_failed(&out, "backup with a failing fsync", "fsync");
        assert!(text.contains("ERROR: Backup of VM 100 failed"), "{text}");
        // The error names the file whose write-out failed.
        let named = format!("writing out the archive '{}/", fs.mountpoint().display());
        assert!(text.contains(&named) && text.contains(".dat':"), "{text}");
        assert!(faults.fsync_failures() > before, "the fault was never hit");
        assert_only_log(fs.backing());
        let log = file_names(fs.backing());
        let log = std::fs::read_to_string(fs.backing().join(&log[0]))?;
        assert!(log.contains("ERROR: Backup of VM 100 failed"), "{log}");
        assert!(!text.contains("archive file size"), "{text}");
        clear(fs.backing())?;

        // The same backup on the same mount without the fault succeeds.
        faults.fail_fsync(None);
        let out = env.vmdump_backup(&dumpdir_args(compress, fs.mountpoint()))?;
        expect_success(&out, "vmdump backup");
        let files = file_names(fs.backing());
        assert_eq!(files.iter().filter(|f| f.contains(".vma")).count(), 1);
        assert!(!files.iter().any(|f| f.ends_with(".dat")), "{files:?}");
        clear(fs.backing())?;
    }
    Ok(())
}

#[test]
fn stopped_backup_into_a_disk_that_fills_at_the_end_leaves_no_archive() -> Result<()> {
    let (_tmp, env, fs) = stopped_with_fault_dump()?;
    let faults = fs.faults();
    for compress in ["0", "zstd"] {
        // Measure: the archive's size (the same data gives an archive of the same size).
        let out = env.vmdump_backup(&dumpdir_args(compress, fs.mountpoint()))?;
        expect_success(&out, "vmdump backup");
        let files = file_names(fs.backing());
        let archive = files
            .iter()
            .find(|f| f.contains(".vma"))
            .expect("an archive");
        let size = std::fs::metadata(fs.backing().join(archive))?.len();
        clear(fs.backing())?;

        // Room for all of the archive but its last byte (the log is written freely): the
        // disk is full at the archive's very last write. A compressed archive's size varies
        // by a few bytes (its header holds a random UUID): it gets 4 KiB less.
        let room = if compress == "0" {
            size - 1
        } else {
            size - 4096
        };
        faults.fill_after_in("*.dat", room);
        let before = faults.enospc_failures();
        let out = env.vmdump_backup(&dumpdir_args(compress, fs.mountpoint()))?;
        let text = assert_failed(&out, "backup into a full disk", "No space left on device");
        assert!(text.contains("ERROR: Backup of VM 100 failed"), "{text}");
        assert!(faults.enospc_failures() > before, "the disk never filled");
        assert_only_log(fs.backing());
        faults.fill_after(None);
        clear(fs.backing())?;
    }
    Ok(())
}

/// Notes or the protection marker that do not fit on the disk after the archive was renamed
/// fail the backup, and then no archive stays either (nor the notes or the marker).
#[test]
fn notes_or_protection_that_do_not_fit_leave_no_archive() -> Result<()> {
    let (_tmp, env, fs) = stopped_with_fault_dump()?;
    add_fault_storage(&env, &fs, "backup")?;
    let dump = fs.backing().join("dump");
    let args = [
        "100",
        "--storage",
        "faulty",
        "--notes-template",
        "{{guestname}}",
        "--protected",
        "1",
    ];
    for full in ["*.notes", "*.protected"] {
        fs.faults().fill_after_in(full, 0);
        let out = env.vmdump_backup(&args)?;
        let text = assert_failed(
            &out,
            "backup whose extras do not fit",
            "No space left on device",
        );
        assert!(text.contains("ERROR: Backup of VM 100 failed"), "{text}");
        assert_only_log(&dump);
        clear(&dump)?;
    }
    fs.faults().fill_after(None);
    let out = env.vmdump_backup(&args)?;
    expect_success(&out, "vmdump backup");
    let files = file_names(&dump);
    assert_eq!(files.len(), 4, "{files:?}");
    assert!(files.iter().any(|f| f.ends_with(".vma.notes")), "{files:?}");
    assert!(
        files.iter().any(|f| f.ends_with(".vma.protected")),
        "{files:?}"
    );
    Ok(())
}

/// `vmdump vma create` into a file on a disk that fills up before the archive's end: a
/// non-zero exit, the error names the full disk, and the partial file is removed.
#[test]
fn vma_create_into_a_full_disk_removes_the_partial_archive() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (disk, fs) = disk_and_fault_dir(tmp.path())?;
    let create = |name: &str| -> Result<Output> {
        Ok(Command::new(env!("CARGO_BIN_EXE_vmdump"))
            .args(["vma", "create"])
            .arg(fs.mountpoint().join(name))
            .arg("-d")
            .arg(format!("format=raw:drive-scsi0={}", disk.display()))
            .output()?)
    };
    expect_success(&create("ok.vma")?, "vmdump vma create");
    let size = std::fs::metadata(fs.backing().join("ok.vma"))?.len();
    std::fs::remove_file(fs.backing().join("ok.vma"))?;

    fs.faults().fill_after(Some(size - 1));
    let out = create("full.vma")?;
    assert_failed(
        &out,
        "vma create into a full disk",
        "No space left on device",
    );
    assert!(fs.faults().enospc_failures() > 0);
    assert_eq!(file_names(fs.backing()), Vec::<String>::new());
    Ok(())
}

/// A small raw disk with data and a [`FaultFs`] at `<tmp>/out`.
fn disk_and_fault_dir(tmp: &Path) -> Result<(PathBuf, FaultFs)> {
    let disk = tmp.join("disk.raw");
    std::fs::File::create(&disk)?.set_len(4 * MIB)?;
    write_random(&disk, MIB, MIB, 8)?;
    Ok((disk, fault_dir(tmp, "out")?))
}

/// `vmdump vma create` into a file whose fsync fails: it fails, names the fsync and removes
/// the file.
#[test]

fn vma_create_whose_fsync_fails_removes_the_archive() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (disk, fs) = disk_and_fault_dir(tmp.path())?;
    fs.faults().fail_fsync(Some("*.vma"));
    fs.faults().fail_flush(Some("*.vma"));
    let out = Command::new(env!("CARGO_BIN_EXE_vmdump"))
        .args(["vma", "create"])
        .arg(fs.mountpoint().join("a.vma"))
        .arg("-d")
        .arg(format!("format=raw:drive-scsi0={}", disk.display()))
        .output()?;
    assert_failed(&out, "vma create with a failing fsync", "fsync");
    assert!(fs.faults().fsync_failures() > 0);
    assert_eq!(file_names(fs.backing()), Vec::<String>::new());
    // Without the fault the same command succeeds on the same mount.
    fs.faults().fail_fsync(None);
    fs.faults().fail_flush(None);
    let out = Command::new(env!("CARGO_BIN_EXE_vmdump"))
        .args(["vma", "create"])
        .arg(fs.mountpoint().join("a.vma"))
        .arg("-d")
        .arg(format!("format=raw:drive-scsi0={}", disk.display()))
        .output()?;
    expect_success(&out, "vmdump vma create");
    assert_eq!(file_names(fs.backing()), ["a.vma"]);
    Ok(())
}

/// `vmdump vma extract` into a directory on a disk whose fsync fails: it says so and leaves
/// nothing behind (no `tmp-disk-*.raw`, no config, not the directory it created).
#[test]

fn vma_extract_whose_fsync_fails_leaves_nothing() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (disk, fs) = disk_and_fault_dir(tmp.path())?;
    let archive = tmp.path().join("a.vma");
    run(Command::new(env!("CARGO_BIN_EXE_vmdump"))
        .args(["vma", "create"])
        .arg(&archive)
        .arg("-d")
        .arg(format!("format=raw:drive-scsi0={}", disk.display())))?;
    fs.faults().fail_fsync(Some("*.raw"));
    let out = Command::new(env!("CARGO_BIN_EXE_vmdump"))
        .args(["vma", "extract"])
        .arg(&archive)
        .arg(fs.mountpoint().join("x"))
        .output()?;
    assert_failed(&out, "vma extract with a failing fsync", "fsync");
    assert!(fs.faults().fsync_failures() > 0);
    assert_eq!(file_names(fs.backing()), Vec::<String>::new());
    // Without the fault the same extract succeeds on the same mount.
    fs.faults().fail_fsync(None);
    run(Command::new(env!("CARGO_BIN_EXE_vmdump"))
        .args(["vma", "extract"])
        .arg(&archive)
        .arg(fs.mountpoint().join("x")))?;
    assert_eq!(
        file_names(&fs.backing().join("x")),
        ["disk-drive-scsi0.raw"]
    );
    Ok(())
}

/// Waits (up to 20 s) until the guest writer's tick passes `tick`.
async fn wait_tick_after(vm: &Qemu, tick: u64) -> bool {
    for _ in 0..200 {
        if vm.last_tick() > tick {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A running guest's backup into a dump dir that fills up while copy-before-write is busy:
/// the backup fails and leaves no archive, while every guest-path write — the writer in the
/// guest and qemu-io writes to not-yet-copied clusters — succeeds during and after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_backup_into_a_full_disk_fails_while_guest_writes_go_on() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let env = Env::new(tmp.path())?;
    env.setup_guest(48)?;
    let vm = env.boot_guest().await?;
    assert!(
        wait_tick_after(&vm, 2).await,
        "the guest writer does not run"
    );
    let fs = fault_dir(tmp.path(), "dump")?;
    // About 88 MiB of disk data at 8 MiB/s; the disk is full after 12 MiB.
    fs.faults().fill_after(Some(12 * MIB));
    let tick0 = vm.last_tick();
    let child = env
        .vmdump_command(&[
            "100",
            "--compress",
            "0",
            "--bwlimit",
            "8192",
            "--dumpdir",
            fs.mountpoint().to_str().expect("utf-8 path"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    vm.wait_jobs(2).await?;
    // Guest-path writes into the end of virtio1 (not copied yet): each one's old data goes
    // to the archive side first; they must succeed before, while and after the disk fills.
    for i in 0..16u64 {
        vm.io_write("virtio1", 0x40 + i as u8, 47 * MIB - i * MIB, 64 << 10)
            .await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tick = vm.last_tick();
    assert!(tick > tick0, "the guest writer stalled during the backup");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    let text = assert_failed(
        &out,
        "live backup into a full disk",
        "No space left on device",
    );
    assert!(text.contains("ERROR: Backup of VM 100 failed"), "{text}");
    assert!(fs.faults().enospc_failures() > 0, "the disk never filled");
    assert_only_log(fs.backing());
    assert_eq!(vm.assert_clean().await?, "running");
    vm.io_write("virtio1", 0x7f, 30 * MIB, 64 << 10).await?;
    assert!(
        wait_tick_after(&vm, tick).await,
        "guest writes stalled after the failed backup"
    );
    // With room again, the next backup on the same mount succeeds.
    fs.faults().fill_after(None);
    let out = env.vmdump_backup(&dumpdir_args("zstd", fs.mountpoint()))?;
    expect_success(&out, "vmdump backup");
    assert_eq!(
        file_names(fs.backing())
            .iter()
            .filter(|f| f.ends_with(".vma.zst"))
            .count(),
        1
    );
    vm.quit().await?;
    // Every guest-path write is on the disk.
    let image = std::fs::File::open(env.image(100, "vm-100-disk-1.raw"))?;
    let mut buf = vec![0u8; 64 << 10];
    use std::os::unix::fs::FileExt;
    for (pattern, offset) in (0..16u64)
        .map(|i| (0x40 + i as u8, 47 * MIB - i * MIB))
        .chain([(0x7f, 30 * MIB)])
    {
        image.read_exact_at(&mut buf, offset)?;
        assert!(
            buf.iter().all(|&b| b == pattern),
            "guest write at {offset} lost"
        );
    }
    Ok(())
}

/// `vmdump restore <archive> 200 --storage faulty` with storage `faulty` on a [`FaultFs`].
fn restore(env: &Env, archive: &Path) -> Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_vmdump"))
        .arg("restore")
        .arg(archive)
        .args(["200", "--storage", "faulty", "--root"])
        .arg(&env.root)
        .env("VMDUMP_RUN_DIR", &env.run)
        .env_remove("VMDUMP_ROOT")
        .output()?)
}

/// Restores onto a storage that fills up near the end, and one whose volume's fsync fails,
/// for a raw volume (written by vmdump) and a qcow2 volume (written through
/// qemu-storage-daemon): each time a clear error, and neither a new volume nor a config is
/// left. Without the faults the same restore succeeds on the same mount.
#[test]
fn restore_onto_a_failing_storage_removes_volumes_and_config() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let env = Env::new(tmp.path())?;
    setup_stopped(&env)?;
    let fs = fault_dir(tmp.path(), "faulty")?;
    let faults = fs.faults();
    add_fault_storage(&env, &fs, "images")?;
    let conf = env.root.join("qemu-server/200.conf");
    let images = fs.backing().join("images/200");
    for (vmid, disk, volume) in [
        (101, "vm-100-disk-0.raw,size=24M", "vm-200-disk-0.raw"),
        (102, "vm-100-disk-1.qcow2,size=4M", "vm-200-disk-0.qcow2"),
    ] {
        // A guest with just that disk, backed up to the (healthy) local dump dir.
        env.write_config(vmid, &format!("memory: 256\nvirtio0: local:100/{disk}\n"))?;
        let out = env.vmdump_backup(&[&vmid.to_string(), "--compress", "zstd"])?;
        expect_success(&out, "vmdump backup");
        let prefix = format!("vzdump-qemu-{vmid}-");
        let archive: PathBuf = env.dump().join(
            env.dump_files()
                .into_iter()
                .find(|f| f.starts_with(&prefix) && f.ends_with(".vma.zst"))
                .expect("an archive"),
        );

        // Measure what the restore writes and how often it fsyncs.
        let (w0, f0) = (faults.written(), faults.fsyncs());
        expect_success(&restore(&env, &archive)?, "vmdump restore");
        let need = faults.written() - w0;
        let fsyncs = faults.fsyncs() - f0;
        assert!(fsyncs > 0, "the restore never fsynced its volume");
        assert_eq!(file_names(&images), [volume], "restored volume");
        std::fs::remove_file(&conf)?;
        std::fs::remove_dir_all(&images)?;

        // 1. The disk fills 64 KiB before the end.
        faults.fill_after(Some(need - (64 << 10)));
        let before = faults.enospc_failures();
        let out = restore(&env, &archive)?;
        assert_failed(&out, "restore onto a full disk", "No space left on device");
        assert!(faults.enospc_failures() > before, "the disk never filled");
        assert!(!conf.exists(), "config of a failed restore");
        assert_eq!(file_names(&images), Vec::<String>::new());
        faults.fill_after(None);

        // 2. Every fsync of the volume fails (the qcow2 one's first is `qemu-img create`'s),
        //    then only the last one (raw: vmdump's final fsync; qcow2: the final flush
        //    through qemu-storage-daemon).
        for pass in [0, fsyncs - 1] {
            faults.fail_fsync_after(volume, pass);
            let before = faults.fsync_failures();
            let out = restore(&env, &archive)?;
            assert_failed(&out, "restore with a failing fsync", "Input/output error");
            assert!(faults.fsync_failures() > before, "the fault was never hit");
            assert!(!conf.exists(), "config of a failed restore");
            assert_eq!(file_names(&images), Vec::<String>::new());
        }
        faults.fail_fsync(None);
    }
    Ok(())
}

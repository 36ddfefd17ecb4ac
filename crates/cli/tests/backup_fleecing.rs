//! `vmdump backup --fleecing` (pull mode through QEMU 7.2's copy-before-write filter,
//! snapshot-access and an NBD export) on the TCG test guest and on paused/stopped VMs:
//! archives equal the disks at the backup instant under guest writes that straddle saved and
//! unsaved clusters (qcow2 and raw, odd sizes, three disks); the fleecing images end near
//! empty and are deleted; a fleecing storage that fills up fails the backup and no guest
//! write; a SIGKILLed run leaves nothing attached after the next run; on a btrfs storage the
//! image is `disk.raw` in its own subvolume, gone after the backup.

mod backup_common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Result};
use backup_common::*;
use vmdump_testkit::mount::TestMount;

/// Waits (up to 120 s) until QEMU has a snapshot export `vmdump-exp-*` (the fleecing setup
/// is complete and vmdump reads; the `vmdump-map-*` exports of the disks' maps come first).
/// Returns `false` instead when vmdump has already exited (a backup that failed during or
/// right after the setup); the caller checks its output.
async fn wait_export(vm: &Qemu, child: &mut std::process::Child) -> Result<bool> {
    for _ in 0..1200 {
        if exports(vm)
            .await?
            .iter()
            .any(|e| e.starts_with("vmdump-exp-"))
        {
            return Ok(true);
        }
        if child.try_wait()?.is_some() {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the fleecing export did not appear in 120 s and vmdump still runs")
}

async fn exports(vm: &Qemu) -> Result<Vec<String>> {
    let v = vm.qmp.execute("query-block-exports", None).await?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["id"].as_str().map(str::to_string))
        .collect())
}

/// Nothing of a backup is left in QEMU (jobs, nodes, exports); the run state.
async fn assert_clean(vm: &Qemu) -> Result<String> {
    let state = vm.assert_clean().await?;
    let ex = exports(vm).await?;
    assert!(ex.is_empty(), "exports left: {ex:?}");
    let blocks = vm.qmp.query_block().await?;
    for b in blocks {
        if let Some(i) = b.inserted {
            assert!(
                !i.node_name.starts_with("vmdump-"),
                "{:?} still on {}",
                b.qdev,
                i.node_name
            );
        }
    }
    Ok(state)
}

fn fleece_files(dir: &Path) -> Vec<String> {
    file_names(dir)
        .into_iter()
        .filter(|f| f.contains("fleece"))
        .collect()
}

/// Guest writes that failed show up only in QEMU's log (qemu-io prints there).
fn assert_no_failed_guest_write(vm: &Qemu) {
    let log = std::fs::read_to_string(vm.dir.join("qemu.log")).unwrap_or_default();
    assert!(
        !log.contains("write failed"),
        "a guest write failed:\n{log}"
    );
}

fn read_at(path: &Path, offset: u64, len: u64) -> Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0; len as usize];
    std::fs::File::open(path)?.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleecing_backup_equals_the_disks_at_the_instant_and_leaves_nothing() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let env = Env::new(tmp.path())?;
    // virtio0: the guest's ext4 (raw); virtio1: qcow2 of an odd size, random except a hole;
    // virtio2: raw of an odd size, random first half.
    let a = env.image(100, "vm-100-disk-0.raw");
    std::fs::copy(testguest_dir().join("data.raw"), &a)?;
    let size_b = 24 * MIB + 1536;
    let raw_b = tmp.path().join("b.raw");
    std::fs::File::create(&raw_b)?.set_len(size_b)?;
    write_random(&raw_b, 0, 10 * MIB, 11)?;
    write_random(&raw_b, 14 * MIB, size_b - 14 * MIB, 12)?;
    let want_b = sha256_file(&raw_b)?;
    let b = env.image(100, "vm-100-disk-1.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw_b)
        .arg(&b))?;
    let size_c = 20 * MIB + 512;
    let c = env.image(100, "vm-100-disk-2.raw");
    std::fs::File::create(&c)?.set_len(size_c)?;
    write_random(&c, 0, 10 * MIB, 13)?;
    let want_c = sha256_file(&c)?;
    env.write_config(
        100,
        "agent: 1\nmemory: 256\nname: vmdump-testguest\nvirtio0: local:100/vm-100-disk-0.raw,size=64M\nvirtio1: local:100/vm-100-disk-1.qcow2,size=25167360\nvirtio2: local:100/vm-100-disk-2.raw,size=20972032\n",
    )?;
    let conf_path = env.root.join("qemu-server/100.conf");
    let conf_before = std::fs::read_to_string(&conf_path)?;
    let vm = Qemu::testguest(
        &env.vm_dir(100)?,
        &[
            Disk {
                key: "virtio0",
                path: &a,
                format: "raw",
            },
            Disk {
                key: "virtio1",
                path: &b,
                format: "qcow2",
            },
            Disk {
                key: "virtio2",
                path: &c,
                format: "raw",
            },
        ],
        "vmdump.interval=0.05",
    )
    .await?;
    vm.wait_ready().await?;
    let tick_before = writer_ticking(&vm).await?;

    // The disks' data at 8 MiB/s (the holes of their maps are not counted): virtio0 is read
    // first, then virtio1, then virtio2, while guest-path writes hit virtio1 and virtio2
    // before, across and after the read frontier.
    let mut child = env
        .vmdump_command(&["100", "--fleecing", "1", "--bwlimit", "8192"])
        .args(["--compress", "zstd"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if !wait_export(&vm, &mut child).await? {
        let out = child.wait_with_output()?;
        expect_success(&out, "vmdump backup --fleecing 1");
        bail!("vmdump ended before its fleecing export appeared");
    }
    let during = std::fs::read_to_string(&conf_path)?;
    assert!(
        during.contains("\n[special:fleecing]\nfleecing-images: local:100/vm-100-fleece-0.qcow2,local:100/vm-100-fleece-1.qcow2,local:100/vm-100-fleece-2.qcow2\n"),
        "fleecing images not recorded:\n{during}"
    );
    let fleece_b = env.image(100, "vm-100-fleece-1.qcow2");
    let mut peak_b = 0u64;
    let mut last_c = (0u64, 0u64, 0u8);
    let mut i = 0u64;
    let mut child = Some(child);
    let mut out = None;
    while out.is_none() {
        i += 1;
        // Straddling writes: across 4 MiB read windows (offset 4 MiB·k − 3 KiB) and across
        // 64 KiB clusters at unaligned offsets, a few KiB to 200 KiB long.
        let (size, key) = if i % 2 == 0 {
            (size_b, "virtio1")
        } else {
            (size_c, "virtio2")
        };
        let len = 4096 + (i * 37 % 50) * 4096 + (i % 3) * 512;
        let off = if i % 3 == 0 {
            ((i / 3 % 5) + 1) * 4 * MIB - 3072
        } else {
            (i * 7_919 * 65_536 + (i % 7) * 512 + 1536) % (size - len)
        };
        let off = off.min(size - len) / 512 * 512;
        let pattern = (i % 250) as u8 + 1;
        if i % 5 == 0 {
            // Zeroes (holes in the live disk) over saved and unsaved clusters too.
            let cmd = format!("qemu-io -d {key}/virtio-backend \"write -z -u {off} {len}\"");
            vm.qmp.human_monitor_command(&cmd).await?;
            if key == "virtio2" {
                last_c = (off, len, 0);
            }
        } else {
            vm.io_write(key, pattern, off, len).await?;
            if key == "virtio2" {
                last_c = (off, len, pattern);
            }
        }
        if let Ok(m) = std::fs::metadata(&fleece_b) {
            peak_b = peak_b.max(m.blocks() * 512);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(ch) = child.as_mut() {
            if ch.try_wait()?.is_some() {
                let ch = child.take().expect("child");
                out = Some(ch.wait_with_output()?);
            }
        }
    }
    let out = out.expect("vmdump finished");
    let stdout = expect_success(&out, "vmdump backup --fleecing");
    assert!(i >= 40, "only {i} guest writes during the backup");
    for line in [
        "INFO: drive-virtio0: attaching fleecing image local:100/vm-100-fleece-0.qcow2 to QEMU",
        "INFO: drive-virtio1: attaching fleecing image local:100/vm-100-fleece-1.qcow2 to QEMU",
        "INFO: drive-virtio2: attaching fleecing image local:100/vm-100-fleece-2.qcow2 to QEMU",
        "INFO: issuing guest-agent 'fs-freeze' command",
        "INFO: issuing guest-agent 'fs-thaw' command",
        "INFO: resuming VM again",
        "INFO: transferred ",
        // The disks' maps, taken while the guest was held, skip their holes; the guest's
        // later writes into them must not reach the archive (want_b, want_c).
        "INFO: drive-virtio1: 20.00 MiB of 24.00 MiB allocated at the backup instant, holes skipped",
        "INFO: drive-virtio2: 10.00 MiB of 20.00 MiB allocated at the backup instant, holes skipped",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in\n{stdout}");
    }
    assert_eq!(
        stdout.matches("allocated at the backup instant").count(),
        3,
        "a map of every disk:\n{stdout}"
    );
    // Copy-before-write went to the fleecing image, and the discards emptied it again.
    let held: Vec<u64> = stdout
        .lines()
        .filter_map(|l| l.split(" held ").nth(1))
        .filter_map(|r| r.strip_suffix(" KiB at the end"))
        .filter_map(|n| n.parse().ok())
        .collect();
    assert_eq!(held.len(), 3, "{stdout}");
    assert!(
        held.iter().all(|&k| k < 1024),
        "fleecing images not near empty: {held:?}"
    );
    assert!(
        peak_b > (held[1] + 512) * 1024,
        "no copy-before-write into the fleecing image of virtio1 (peak {peak_b} bytes)"
    );
    assert!(fleece_files(&env.store.join("images/100")).is_empty());
    assert_eq!(std::fs::read_to_string(&conf_path)?, conf_before);
    assert_eq!(assert_clean(&vm).await?, "running");
    assert_no_failed_guest_write(&vm);
    // The guest's writes landed.
    let (off, len, pattern) = last_c;
    assert!(read_at(&c, off, len)?.iter().all(|&x| x == pattern));

    check_guest_archive(
        &env.dump().join(env.archive_name(".vma.zst")),
        tmp.path(),
        &[
            ("drive-virtio1".into(), size_b, want_b),
            ("drive-virtio2".into(), size_c, want_c),
        ],
        tick_before,
    )?;
    vm.quit().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_fleecing_storage_fails_the_backup_and_a_killed_run_is_cleaned() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let env = Env::new(tmp.path())?;
    env.setup_guest(32)?;
    // A 1 MiB fleecing storage: the two empty qcow2 images take half of it.
    let small = tmp.path().join("fleece");
    let _small = TestMount::tmpfs(&small, 1)?;
    let cfg = env.root.join("storage.cfg");
    let mut storage = std::fs::read_to_string(&cfg)?;
    storage.push_str(&format!(
        "\ndir: small\n\tpath {}\n\tcontent images\n",
        small.display()
    ));
    std::fs::write(&cfg, storage)?;
    full_then_killed(&env, &small).await
}

async fn full_then_killed(env: &Env, small: &Path) -> Result<()> {
    let conf_path = env.root.join("qemu-server/100.conf");
    let conf_before = std::fs::read_to_string(&conf_path)?;
    let vm = env.boot_guest().await?;
    let b = env.image(100, "vm-100-disk-1.raw");

    // 1. The fleecing storage fills up: 4 MiB of guest writes to virtio1 (read second, after
    //    8 s of virtio0) need their old data saved; the image cannot take it.
    let mut child = env
        .vmdump_command(&["100", "--fleecing", "enabled=1,storage=small"])
        .args(["--bwlimit", "8192"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // The guest's own writer (a tick every 50 ms, journal and new blocks on virtio0) can fill
    // the small storage first, even before the export shows up here: the same failure, by
    // other guest writes; the writes below then find no backup running, which changes
    // nothing of what is checked.
    let seen = wait_export(&vm, &mut child).await?;
    println!("fleecing export seen before vmdump ended: {seen}");
    for k in 0..64u64 {
        vm.io_write("virtio1", 0x5a, k * 65536, 65536).await?;
    }
    let tick = vm.last_tick();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    let stdout = expect_exit(&out, 1, "vmdump backup with a full fleecing storage");
    assert!(
        stdout.contains("ERROR: Backup of VM 100 failed - device '")
            && stdout.contains("reading the fleecing snapshot failed"),
        "{stdout}"
    );
    env.assert_no_archive();
    assert!(fleece_files(&small.join("images/100")).is_empty());
    assert_eq!(std::fs::read_to_string(&conf_path)?, conf_before);
    assert_eq!(assert_clean(&vm).await?, "running");
    // Every guest write went through, and the guest keeps writing.
    assert_no_failed_guest_write(&vm);
    assert!(read_at(&b, 0, 4 * MIB)?.iter().all(|&x| x == 0x5a));
    for _ in 0..100 {
        if vm.last_tick() > tick + 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(vm.last_tick() > tick + 5, "the guest writer stalled");
    let after_failure = vm.last_tick();

    // 2. vmdump killed with SIGKILL while it reads: the filters, exports and images stay;
    //    the next backup (without fleecing) removes all of it and succeeds.
    let mut child = env
        .vmdump_command(&["100", "--fleecing", "1", "--bwlimit", "8192"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    assert!(
        wait_export(&vm, &mut child).await?,
        "vmdump --fleecing 1 ended before its export appeared"
    );
    child.kill()?;
    child.wait()?;
    let left = std::fs::read_to_string(&conf_path)?;
    assert!(left.contains("[special:fleecing]"), "{left}");
    assert!(!fleece_files(&env.store.join("images/100")).is_empty());
    assert!(!exports(&vm).await?.is_empty());
    let out = env.vmdump_backup(&["100"])?;
    let stdout = expect_success(&out, "vmdump backup after a killed one");
    for line in [
        "INFO: removing (old) fleecing image 'local:100/vm-100-fleece-0.qcow2'",
        "INFO: removing (old) fleecing image 'local:100/vm-100-fleece-1.qcow2'",
        "WARN: removed stale export 'vmdump-exp-drive-virtio0'",
        "WARN: removed stale filter on '/machine/peripheral/virtio1/virtio-backend'",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in\n{stdout}");
    }
    assert!(fleece_files(&env.store.join("images/100")).is_empty());
    assert_eq!(std::fs::read_to_string(&conf_path)?, conf_before);
    assert_eq!(assert_clean(&vm).await?, "running");
    assert_no_failed_guest_write(&vm);
    vm.quit().await?;
    // The guest's filesystem stayed clean through all of it, with the writes made after the
    // failed backup (the last tick or two before `quit` may not be on the disk yet).
    check_disk_recover(&env.image(100, "vm-100-disk-0.raw"), after_failure)?;
    Ok(())
}

/// Suspend mode on a paused VM and a stopped VM (the backup helper QEMU): fleecing works in
/// both, and the archive equals the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleecing_in_suspend_mode_and_of_a_stopped_vm() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let env = Env::new(tmp.path())?;
    let a = env.image(100, "vm-100-disk-0.raw");
    // 20 MiB of data in a 200 MiB disk: at the 8 MiB/s limit below the data takes 2.5 s,
    // the whole disk 25 s.
    let size = 200 * MIB + 3584;
    std::fs::File::create(&a)?.set_len(size)?;
    write_random(&a, MIB, 20 * MIB, 7)?;
    let want = sha256_file(&a)?;
    env.write_config(
        100,
        "memory: 256\nscsi0: local:100/vm-100-disk-0.raw,size=209718784\n",
    )?;
    let vm = env.paused_vm(100, "scsi0", "vm-100-disk-0.raw").await?;
    // The fleecing image on a btrfs storage (a loop file): raw, `disk.raw` in its own
    // subvolume as restored disks and Proxmox's `vdisk_alloc`, and gone after the backup.
    let bt = TestMount::btrfs(
        &tmp.path().join("btrfs.img"),
        &tmp.path().join("btrfs"),
        256,
    )?;
    let cfg = env.root.join("storage.cfg");
    let mut storage = std::fs::read_to_string(&cfg)?;
    storage.push_str(&format!(
        "\nbtrfs: bt\n\tpath {}\n\tcontent images\n",
        bt.path().display()
    ));
    std::fs::write(&cfg, storage)?;
    let started = std::time::Instant::now();
    let mut child = env
        .vmdump_command(&["100", "--mode", "suspend"])
        .args(["--fleecing", "enabled=1,storage=bt", "--bwlimit", "8192"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let seen = wait_export(&vm, &mut child).await?;
    let sv = bt.path().join("images/100/vm-100-fleece-0");
    // While vmdump reads: a subvolume (`btrfs subvolume show` fails on a plain directory).
    let show = Command::new("btrfs")
        .args(["subvolume", "show"])
        .arg(&sv)
        .output()?;
    let fl_size = std::fs::metadata(sv.join("disk.raw")).map(|m| m.len());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    let took = started.elapsed();
    let stdout = expect_success(&out, "vmdump backup --mode suspend --fleecing on btrfs");
    // The map's holes are neither read nor counted by the rate limit (as QEMU's sync=top
    // push skips unallocated clusters); the data is.
    assert!(
        took >= Duration::from_millis(2400) && took < Duration::from_secs(12),
        "the --bwlimit 8192 backup of 20 MiB data in a 200 MiB disk took {took:?}"
    );
    assert!(
        stdout.contains(
            "INFO: drive-scsi0: 20.00 MiB of 200.00 MiB allocated at the backup instant, holes skipped"
        ),
        "{stdout}"
    );
    assert!(seen, "vmdump ended before its fleecing export appeared");
    assert!(
        show.status.success(),
        "{} is not a subvolume: {}",
        sv.display(),
        String::from_utf8_lossy(&show.stderr)
    );
    assert_eq!(
        fl_size.ok(),
        Some(size),
        "fleecing image sized like the disk"
    );
    assert!(
        stdout.contains(
            "INFO: drive-scsi0: attaching fleecing image bt:100/vm-100-fleece-0.raw to QEMU"
        ),
        "{stdout}"
    );
    assert!(!sv.exists(), "fleecing subvolume left");
    assert_eq!(bt.subvolumes()?, Vec::<String>::new());
    assert_eq!(assert_clean(&vm).await?, "prelaunch");
    vm.quit().await?;
    let out = env.vmdump_backup(&["100", "--fleecing", "1", "--compress", "lzo"])?;
    let stdout = expect_success(&out, "vmdump backup --fleecing 1 of a stopped VM");
    assert!(
        stdout.contains("INFO: starting kvm to execute backup task"),
        "{stdout}"
    );
    assert!(fleece_files(&env.store.join("images/100")).is_empty());
    for suffix in [".vma", ".vma.lzo"] {
        let name = env
            .dump_files()
            .into_iter()
            .find(|f| f.ends_with(suffix))
            .expect("archive");
        let plain = plain_vma(&env.dump().join(name), tmp.path())?;
        assert_eq!(
            dissect_devices(&plain)?,
            vec![("drive-scsi0".to_string(), size, want.clone())]
        );
    }
    Ok(())
}

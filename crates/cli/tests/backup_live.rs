//! `vmdump backup` of running VMs (the TCG test guest with its agent and writer; real QEMU 7.2):
//! a consistent live backup while the guest writes and qemu-io writes hit a second disk, and
//! the failure paths (target storage full, vmdump killed with SIGKILL, QEMU dying).

mod backup_common;

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Result;
use backup_common::*;
use vmdump_testkit::mount::TestMount;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_backup_of_a_writing_guest_is_consistent() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let env = Env::new(tmp.path())?;
    let want_b = env.setup_guest(32)?;
    let vm = env.boot_guest().await?;
    let tick_before = writer_ticking(&vm).await?;

    // 96 MiB at 16 MiB/s: about 6 s of copy-before-write while the guest writes.
    let child = env
        .vmdump_command(&["100", "--bwlimit", "16384", "--compress", "zstd"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let conf_path = env.root.join("qemu-server/100.conf");
    let conf_before = std::fs::read_to_string(&conf_path)?;
    vm.wait_jobs(2).await?;
    // While the backup runs the guest config carries vzdump's `lock: backup`.
    let conf_during = std::fs::read_to_string(&conf_path)?;
    assert!(
        conf_during.lines().any(|l| l == "lock: backup"),
        "no lock during the backup:\n{conf_during}"
    );
    // Guest-path writes to the second disk right after the job start, to copied and uncopied
    // regions: none may reach the archive.
    for i in 0..40u64 {
        let off = (i * 7919 % 512) * 65536 + (i % 3) * 512;
        vm.io_write("virtio1", (i + 1) as u8, off, 4096 + i * 512)
            .await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    let stdout = expect_success(&out, "vmdump backup");
    for line in [
        "INFO: status = running",
        "INFO: VM Name: vmdump-testguest",
        "INFO: bandwidth limit: 16384 KiB/s",
        "INFO: issuing guest-agent 'fs-freeze' command",
        "INFO: starting backup via QMP command",
        "INFO: issuing guest-agent 'fs-thaw' command",
        "INFO: resuming VM again",
        "INFO: transferred 96.00 MiB in ",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in\n{stdout}");
    }
    // Several progress lines of the throttled run.
    assert!(stdout.matches("% (").count() >= 2, "{stdout}");
    // The lock is gone again and nothing else in the config changed.
    assert_eq!(std::fs::read_to_string(&conf_path)?, conf_before);

    // QEMU is clean, the guest runs and keeps writing.
    assert_eq!(vm.assert_clean().await?, "running");
    let tick_after = vm.last_tick();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        vm.last_tick() > tick_after,
        "the guest writer stopped after the backup"
    );

    // The guest's filesystem at the freeze: clean (no journal replay) and the writer's
    // pattern complete up to its tick.
    check_guest_archive(
        &env.dump().join(env.archive_name(".vma.zst")),
        tmp.path(),
        &[("drive-virtio1".into(), 32 * MIB, want_b)],
        tick_before,
    )?;
    vm.quit().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_leave_no_archive_and_a_running_guest() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let env = Env::new(tmp.path())?;
    env.setup_guest(48)?;
    let vm = env.boot_guest().await?;

    // 1. Target storage full: a 16 MiB tmpfs for a ~30 MiB archive.
    let small = tmp.path().join("small");
    let small_fs = TestMount::tmpfs(&small, 16)?;
    let res = env.vmdump_backup(&["100", "--dumpdir", small.to_str().expect("utf-8")]);
    let listing: Vec<String> = std::fs::read_dir(&small)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    drop(small_fs);
    let out = res?;
    let stdout = expect_exit(&out, 1, "vmdump backup");
    assert!(
        stdout.contains("ERROR: Backup of VM 100 failed - writing the archive failed: ")
            && stdout.contains("No space left on device"),
        "{stdout}"
    );
    assert!(
        !listing
            .iter()
            .any(|f| f.contains(".vma") || f.ends_with(".dat")),
        "{listing:?}"
    );
    assert_eq!(vm.assert_clean().await?, "running");
    let t = vm.last_tick();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        vm.last_tick() > t,
        "guest writes stalled after the failed backup"
    );

    // 2. vmdump killed with SIGKILL in the middle: no final archive; the next run removes
    //    what the killed one left in QEMU and succeeds.
    let mut child = env
        .vmdump_command(&["100", "--bwlimit", "8192"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    vm.wait_jobs(2).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    child.kill()?;
    child.wait()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !env.dump_files().iter().any(|f| f.ends_with(".vma")),
        "{:?}",
        env.dump_files()
    );
    let status = vm.qmp.execute("query-status", None).await?;
    assert_eq!(status["status"], "running");
    let out = env.vmdump_backup(&["100"])?;
    let stdout = expect_success(&out, "vmdump backup");
    assert!(stdout.contains("WARN: removed stale "), "{stdout}");
    assert_eq!(vm.assert_clean().await?, "running");
    assert_eq!(
        env.dump_files()
            .iter()
            .filter(|f| f.ends_with(".vma"))
            .count(),
        1
    );
    vm.quit().await?;
    Ok(())
}

/// VM 100 with one 64 MiB raw disk (32 MiB of random data from `seed`), paused, and a
/// throttled `vmdump backup` of it that has been copying for half a second.
async fn backup_in_progress(env: &Env, seed: u64) -> Result<(Qemu, std::process::Child)> {
    let a = env.image(100, "vm-100-disk-0.raw");
    std::fs::File::create(&a)?.set_len(64 * MIB)?;
    write_random(&a, 0, 32 * MIB, seed)?;
    env.write_config(
        100,
        "memory: 256\nscsi0: local:100/vm-100-disk-0.raw,size=64M\n",
    )?;
    let vm = env.paused_vm(100, "scsi0", "vm-100-disk-0.raw").await?;
    let child = env
        .vmdump_command(&["100", "--bwlimit", "8192"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    vm.wait_jobs(1).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok((vm, child))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_dying_mid_backup_is_a_clear_failure() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let env = Env::new(tmp.path())?;
    let (mut vm, child) = backup_in_progress(&env, 5).await?;
    vm.child.kill()?;
    vm.child.wait()?;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    let stdout = expect_exit(&out, 1, "vmdump backup");
    assert!(
        stdout.contains("ERROR: Backup of VM 100 failed - "),
        "{stdout}"
    );
    assert!(stdout.contains("QEMU exited during the backup"), "{stdout}");
    env.assert_no_archive();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_aborts_cleanly() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let env = Env::new(tmp.path())?;
    let (vm, child) = backup_in_progress(&env, 6).await?;
    run(Command::new("kill").args(["-INT", &child.id().to_string()]))?;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    let stdout = expect_exit(&out, 1, "vmdump backup");
    assert!(
        stdout.contains("ERROR: Backup of VM 100 failed - aborted by signal"),
        "{stdout}"
    );
    assert!(stdout.contains("INFO: aborting backup job"), "{stdout}");
    // r11: nothing that reads like corruption, and no colour codes in a pipe.
    let stderr = String::from_utf8_lossy(&out.stderr);
    for text in [&stdout, &stderr.to_string()] {
        assert!(!text.contains("missing"), "{text}");
        assert!(!text.contains('\x1b'), "ANSI escape in {text:?}");
    }
    assert_eq!(vm.assert_clean().await?, "prelaunch");
    env.assert_no_archive();
    vm.quit().await?;
    Ok(())
}

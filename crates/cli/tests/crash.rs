//! SIGKILL of the `vmdump` binary in the middle of a stopped-VM backup and of restores to raw
//! and qcow2 (real QEMU, real qemu-storage-daemon). After each kill: no process of that run
//! remains (checked in /proc), no final-named archive exists, and the next run succeeds and
//! cleans up what was left, with a warning.

mod backup_common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use backup_common::*;

/// Live processes (not zombies) whose command line mentions `dir`: everything a run in the
/// test's temporary directory started (QEMU's run dir, qemu-storage-daemon's sockets and
/// images all live there).
fn processes_under(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmdline.windows(needle.len()).any(|w| w == needle) && pid_alive(pid) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            out.push((pid, text));
        }
    }
    out
}

/// Waits (up to 10 s) until no process of the test's directory is left; fails listing them.
fn assert_no_process_left(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_under(dir);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes of the killed run remain: {left:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `cond` every 20 ms for up to 60 s.
fn wait_for(what: &str, child: &mut Child, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        if let Some(st) = child.try_wait()? {
            bail!("vmdump exited ({st}) before {what}");
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn sigkill(child: &mut Child) {
    child.kill().unwrap();
    let st = child.wait().unwrap();
    assert!(st.code().is_none(), "killed by a signal: {st}");
}

/// A helper QEMU or qemu-storage-daemon runs for this test.
fn helper_running(dir: &Path, program: &str) -> bool {
    processes_under(dir)
        .iter()
        .any(|(_, c)| c.contains(program))
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// The temporary `.dat` of the running backup, if it exists yet.
fn dat_file(env: &Env) -> Option<PathBuf> {
    env.dump_files()
        .into_iter()
        .find(|f| f.ends_with(".dat"))
        .map(|f| env.dump().join(f))
}

/// VM 100: one 64 MiB raw disk holding 24 MiB of random data.
fn setup_vm(env: &Env) -> Result<String> {
    let a = env.image(100, "vm-100-disk-0.raw");
    std::fs::File::create(&a)?.set_len(64 * MIB)?;
    write_random(&a, 4 * MIB, 24 * MIB, 11)?;
    env.write_config(
        100,
        "cores: 1\nmemory: 256\nname: crash-vm\nscsi0: local:100/vm-100-disk-0.raw,size=64M\n",
    )?;
    sha256_file(&a)
}

fn assert_no_final_archive(env: &Env) {
    let files = env.dump_files();
    assert!(
        !files
            .iter()
            .any(|f| f.contains(".vma") && !f.ends_with(".dat")),
        "{files:?}"
    );
}

#[test]
fn killed_stopped_vm_backup_leaves_no_helper_and_the_next_backup_cleans_up() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let env = Env::new(tmp.path())?;
    let hash = setup_vm(&env)?;
    // Kill points: the helper QEMU just started; mid-transfer; late in the transfer.
    let points: [(&str, u64); 3] = [
        ("helper started", 0),
        ("2 MiB written", 2),
        ("12 MiB written", 12),
    ];
    for (what, mib) in points {
        let mut child = env
            .vmdump_command(&["100", "--compress", "0", "--bwlimit", "4096"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        wait_for(what, &mut child, || {
            helper_running(tmp.path(), "qemu-system")
                && (mib == 0 || dat_file(&env).is_some_and(|d| file_len(&d) > mib * MIB))
        })?;
        sigkill(&mut child);
        assert_no_process_left(tmp.path());
        assert_no_final_archive(&env);
        let cfg = std::fs::read_to_string(env.root.join("qemu-server/100.conf"))?;
        assert!(cfg.contains("lock: backup"), "{what}: {cfg}");

        // `vm status` sees a stopped VM (no stray QEMU holds it) and cleans the session.
        let out = Command::new(env!("CARGO_BIN_EXE_vmdump"))
            .args(["vm", "status", "100", "--root"])
            .arg(&env.root)
            .env("VMDUMP_RUN_DIR", &env.run)
            .output()?;
        let stdout = expect_success(&out, "vmdump vm status");
        assert!(stdout.contains("stopped"), "{what}: {stdout}");
        assert!(!env.run.join("100/qemu.pid").exists(), "{what}");
        // ... and removes the lock of the dead backup (its backup mark has no owner).
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("removed the stale 'lock: backup' of an interrupted backup"),
            "{what}: {stderr}"
        );
        let cfg = std::fs::read_to_string(env.root.join("qemu-server/100.conf"))?;
        assert!(!cfg.contains("lock:"), "{what}: {cfg}");

        // The next backup succeeds and reports what it cleaned.
        let out = env.vmdump_backup(&["100", "--compress", "0"])?;
        let stdout = expect_success(&out, "vmdump backup after a kill");
        if mib > 0 {
            assert!(
                stdout.contains("removed stale temporary file"),
                "{what}: {stdout}"
            );
        }
        let archive = env.archive_name(".vma");
        let plain = env.dump().join(&archive);
        assert_eq!(
            dissect_devices(&plain)?,
            vec![("drive-scsi0".into(), 64 * MIB, hash.clone())],
            "{what}"
        );
        assert!(!env.dump_files().iter().any(|f| f.ends_with(".dat")));
        let sessions: Vec<_> = std::fs::read_dir(env.run.join("session"))
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(sessions.is_empty(), "{what}: sessions left: {sessions:?}");
        for f in env.dump_files() {
            std::fs::remove_file(env.dump().join(f))?;
        }
        std::thread::sleep(Duration::from_millis(1100));
    }
    Ok(())
}

/// `vmdump restore <archive> <vmid> --storage <sid>` in `env`.
fn restore_command(env: &Env, archive: &Path, vmid: u32, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmdump"));
    c.arg("restore")
        .arg(archive)
        .arg(vmid.to_string())
        .args(extra)
        .arg("--root")
        .arg(&env.root)
        .env("VMDUMP_RUN_DIR", &env.run)
        .env_remove("VMDUMP_ROOT");
    c
}

fn volumes(env: &Env, vmid: u32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(env.store.join(format!("images/{vmid}")))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn killed_restores_leave_no_daemon_and_the_next_restore_removes_partial_volumes() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let env = Env::new(tmp.path())?;
    let hash = setup_vm(&env)?;
    // VM 101: the same disk as qcow2, so its restore writes through qemu-storage-daemon.
    std::fs::create_dir_all(env.store.join("images/101"))?;
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(env.image(100, "vm-100-disk-0.raw"))
        .arg(env.image(101, "vm-101-disk-0.qcow2")))?;
    env.write_config(
        101,
        "cores: 1\nmemory: 256\nscsi0: local:101/vm-101-disk-0.qcow2,size=64M\n",
    )?;
    let out = env.vmdump_backup(&["100", "--compress", "0"])?;
    expect_success(&out, "vmdump backup 100");
    let out = env.vmdump_backup(&["101", "--compress", "0"])?;
    expect_success(&out, "vmdump backup 101");
    let archive_of = |vmid: u32| -> PathBuf {
        let name = env
            .dump_files()
            .into_iter()
            .find(|f| f.starts_with(&format!("vzdump-qemu-{vmid}-")) && f.ends_with(".vma"))
            .expect("archive");
        env.dump().join(name)
    };

    // (source VM, format, kill point)
    let cases = [
        (100, "raw", "volume created"),
        (100, "raw", "writing"),
        (101, "qcow2", "qemu-storage-daemon started"),
        (101, "qcow2", "writing"),
    ];
    for (source, format, what) in cases {
        let archive = archive_of(source);
        let name = format!("vm-200-disk-0.{format}");
        let vol = env.image(200, &name);
        let mut child = restore_command(&env, &archive, 200, &["--bwlimit", "2048"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let started = Instant::now();
        wait_for(what, &mut child, || match what {
            "volume created" => vol.exists(),
            "qemu-storage-daemon started" => helper_running(tmp.path(), "qemu-storage-daemon"),
            // Some seconds into the rate-limited restore.
            _ => vol.exists() && started.elapsed() > Duration::from_millis(2500),
        })?;
        sigkill(&mut child);
        assert_no_process_left(tmp.path());
        assert!(vol.exists(), "{format} {what}: the partial volume is there");
        assert!(!env.root.join("qemu-server/200.conf").exists());

        let out = restore_command(&env, &archive, 200, &[]).output()?;
        expect_success(&out, "vmdump restore after a kill");
        let err = stderr(&out);
        assert!(
            err.contains("removed partial volume") && err.contains(&name),
            "{format} {what}: {err}"
        );
        // The partial volume was removed before the new one took its name.
        assert_eq!(volumes(&env, 200), vec![name.clone()], "{format} {what}");
        assert_eq!(
            image_sha256(&vol, format, tmp.path())?,
            hash,
            "{format} {what}"
        );
        assert!(std::fs::read_dir(env.run.join("session"))?.next().is_none());
        // Start over for the next case.
        std::fs::remove_file(env.root.join("qemu-server/200.conf"))?;
        std::fs::remove_file(&vol)?;
    }
    Ok(())
}

/// A running VM's backup starts no helper, so after SIGKILL only the VM itself may run; it
/// keeps running, and the next backup removes the killed run's jobs and nodes from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_running_vm_backup_leaves_the_vm_running_and_the_next_backup_cleans_up() -> Result<()>
{
    let tmp = tempfile::tempdir()?;
    let env = Env::new(tmp.path())?;
    let hash = setup_vm(&env)?;
    let vm = env.paused_vm(100, "scsi0", "vm-100-disk-0.raw").await?;
    let vm_pid = vm.child.id();
    // Kill points: the job just started; 1 s into the throttled copy.
    for delay in [Duration::ZERO, Duration::from_secs(1)] {
        let mut child = env
            .vmdump_command(&["100", "--compress", "0", "--bwlimit", "4096"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        vm.wait_jobs(1).await?;
        tokio::time::sleep(delay).await;
        sigkill(&mut child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left: Vec<_> = processes_under(tmp.path())
                .into_iter()
                .filter(|(pid, _)| *pid != vm_pid)
                .collect();
            if left.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "{delay:?}: {left:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_no_final_archive(&env);
        let status = vm.qmp.execute("query-status", None).await?;
        assert_eq!(status["status"], "prelaunch", "{delay:?}");

        let out = env.vmdump_backup(&["100", "--compress", "0"])?;
        let stdout = expect_success(&out, "vmdump backup after a kill");
        assert!(
            stdout.contains("WARN: removed stale "),
            "{delay:?}: {stdout}"
        );
        assert_eq!(vm.assert_clean().await?, "prelaunch");
        let archive = env.dump().join(env.archive_name(".vma"));
        assert_eq!(
            dissect_devices(&archive)?,
            vec![("drive-scsi0".into(), 64 * MIB, hash.clone())],
            "{delay:?}"
        );
        for f in env.dump_files() {
            std::fs::remove_file(env.dump().join(f))?;
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    vm.quit().await?;
    Ok(())
}

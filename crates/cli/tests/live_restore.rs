//! `vmdump restore --live`: the test guest is backed up (`vmdump backup` of the stopped VM),
//! then restored live twice from that archive with the copy slowed down (`--bwlimit`):
//!
//! 1. VM 202: once the guest runs and its writer wrote, QEMU is killed: the restore fails
//!    with a clear message, the VM is stopped, and nothing is removed: the volume, the
//!    overlay with the guest's writes, the config with `lock: create`.
//! 2. VM 201, `--background`: the command returns once the VM runs; the guest boots from
//!    the archive and its writer ticks while the copy runs (the background process is still
//!    copying); the test then lifts the rate limit, the copy completes, the archive file is deleted, the guest reads its seed files back (caches
//!    dropped) and keeps writing; after a clean shutdown the volume passes
//!    `testguest/check.sh` (`e2fsck -fn`, seed checksums, the writer's files).
//! 3. VM 203: the same guest with a qcow2 disk, backed up again and restored live onto a
//!    qcow2 volume at full speed; after a clean shutdown the volume passes the check too.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod guest_env;

use guest_env::GuestEnv;
use vmdump_testkit::{check_disk, expect_success, kill_pidfile, pid_alive};

const BOOT: Duration = Duration::from_secs(240);

/// The output of a foreground live-restore (202), the log of a background one (201).
fn log(env: &GuestEnv, vmid: u32) -> PathBuf {
    if vmid == 201 {
        env.run().join("live-restore/201.log")
    } else {
        env.path().join(format!("live-{vmid}.log"))
    }
}

fn console_and_log(env: &GuestEnv, vmid: u32) -> String {
    format!(
        "console:\n{}\nlive-restore output:\n{}",
        env.serial(vmid),
        std::fs::read_to_string(log(env, vmid)).unwrap_or_default()
    )
}

/// Waits until the console shows `needle`; the live-restore must still be running meanwhile
/// (`copying`: it copies until the test lets it finish).
fn wait_serial(env: &GuestEnv, vmid: u32, needle: &str, copying: &mut dyn FnMut() -> bool) {
    env.wait_serial_while(vmid, needle, BOOT, &mut || {
        if copying() {
            Ok(())
        } else {
            Err(format!(
                "live-restore ended:\n{}",
                console_and_log(env, vmid)
            ))
        }
    });
}

/// `vmdump restore --live <archive> <vmid> --bwlimit 64`, output to a file.
fn live_restore(env: &GuestEnv, archive: &Path, vmid: u32) -> Child {
    let log = std::fs::File::create(log(env, vmid)).unwrap();
    env.cmd(&[
        "restore",
        "--live",
        archive.to_str().unwrap(),
        &vmid.to_string(),
        "--bwlimit",
        "64",
    ])
    .stdin(Stdio::null())
    .stdout(log.try_clone().unwrap())
    .stderr(log)
    .spawn()
    .unwrap()
}

/// Waits until `running` turns false.
fn wait_end(env: &GuestEnv, vmid: u32, running: &mut dyn FnMut() -> bool) {
    let start = Instant::now();
    while running() {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "live-restore of {vmid} did not end:\n{}",
            console_and_log(env, vmid)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn qmp<T>(env: &GuestEnv, vmid: u32, f: impl AsyncFnOnce(vmdump_qmp::Client) -> T) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sock = env.run().join(format!("{vmid}/ctl.sock"));
    rt.block_on(async move {
        let c = vmdump_qmp::Client::connect(&sock).await.unwrap();
        f(c).await
    })
}

#[test]
fn live_restore_runs_the_guest_during_the_copy_and_a_failure_keeps_its_writes() {
    let env = GuestEnv::new();
    let images = env.store().join("images/100");
    let conf = std::fs::read_to_string(env.root().join("qemu-server/100.conf")).unwrap();
    env.ok(&["backup", "100", "--storage", "local", "--compress", "zstd"]);
    let archive = env.archive(".vma.zst");

    // 1. A failure once the guest runs: QEMU dies during the copy.
    let mut child = live_restore(&env, &archive, 202);
    let mut copying = || child.try_wait().unwrap().is_none();
    wait_serial(&env, 202, "vmdump-writer: tick 2", &mut copying);
    let pid: u32 = std::fs::read_to_string(env.run().join("202/qemu.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    kill_pidfile(&env.run().join("202/qemu.pid"));
    wait_end(&env, 202, &mut copying);
    let st = child.wait().unwrap();
    let out = std::fs::read_to_string(log(&env, 202)).unwrap();
    eprintln!("live-restore of 202 (QEMU killed):\n{out}");
    assert_eq!(st.code(), Some(1), "{out}");
    assert!(
        out.contains("live-restore of VM 202 failed; the VM was stopped and nothing was removed"),
        "{out}"
    );
    assert!(!pid_alive(pid));
    let volume = env.store().join("images/202/vm-202-disk-0.raw");
    let overlay = env
        .store()
        .join("images/202/vm-202-disk-0.raw.live-restore.qcow2");
    assert!(out.contains(&*overlay.to_string_lossy()), "{out}");
    assert!(volume.exists() && overlay.exists(), "{out}");
    // The overlay holds the guest's writes (data clusters of its own).
    let map = expect_success(
        &Command::new("qemu-img")
            .args(["map", "--output=json", "-U", "-f", "qcow2"])
            .arg(&overlay)
            .output()
            .unwrap(),
        "qemu-img map",
    );
    assert!(map.contains("\"data\": true"), "{map}");
    let conf202 = std::fs::read_to_string(env.root().join("qemu-server/202.conf")).unwrap();
    assert!(conf202.contains("lock: create"), "{conf202}");
    // A locked VM is not started by accident on its incomplete disk.
    let o = env.cmd(&["vm", "start", "202"]).output().unwrap();
    assert!(!o.status.success());

    // 2. In the background: the command returns once the VM runs; the guest boots and
    // writes while the copy runs; then the copy completes.
    let out = env.ok(&[
        "restore",
        "--live",
        archive.to_str().unwrap(),
        "201",
        "--bwlimit",
        "64",
        "--background",
    ]);
    assert!(out.contains("VM 201 started (pid "), "{out}");
    let copier: u32 = out
        .split("continues in the background (pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no background pid: {out}"));
    let mut copying = || pid_alive(copier);
    wait_serial(&env, 201, "vmdump-testguest: ready writer=1", &mut copying);
    wait_serial(&env, 201, "vmdump-writer: tick 3", &mut copying);
    let conf201 = std::fs::read_to_string(env.root().join("qemu-server/201.conf")).unwrap();
    assert!(conf201.contains("lock: create"), "{conf201}");
    assert!(copying(), "the copy is still running");
    qmp(&env, 201, async |c| {
        c.block_job_set_speed("vmdump-lr-virtio0", 0).await.unwrap();
    });
    wait_end(&env, 201, &mut copying);
    let out = std::fs::read_to_string(log(&env, 201)).unwrap();
    eprintln!("live-restore of 201:\n{out}");
    assert!(out.contains("VM 201 started (pid "), "{out}");
    assert!(out.contains("live-restore: "), "progress lines: {out}");
    assert!(out.contains("live-restore of VM 201 complete"), "{out}");
    assert!(out.contains("restored VM 201 (1 disk(s)) live"), "{out}");
    let conf201 = std::fs::read_to_string(env.root().join("qemu-server/201.conf")).unwrap();
    assert!(!conf201.contains("lock:"), "{conf201}");
    assert!(
        conf201.contains("virtio0: local:201/vm-201-disk-0.raw,size=64M"),
        "{conf201}"
    );
    let volume = env.store().join("images/201/vm-201-disk-0.raw");
    assert!(!env
        .store()
        .join("images/201/vm-201-disk-0.raw.live-restore.qcow2")
        .exists());

    // The archive is detached: no overlay or NBD node is left, and the guest reads all of
    // its seed files (page cache dropped) with the archive file gone.
    std::fs::remove_file(&archive).unwrap();
    let nodes = qmp(&env, 201, async |c| {
        c.query_named_block_nodes().await.unwrap()
    });
    assert!(
        nodes.iter().all(|n| !n.node_name.starts_with("vmdump-lr-")),
        "{nodes:?}"
    );
    let check = {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let qga = env.run().join("201/qga.sock");
        rt.block_on(async move {
            let a = vmdump_qmp::qga::Client::connect_retry(
                &qga,
                Default::default(),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
            a.run_shell(
                "sync; echo 3 > /proc/sys/vm/drop_caches; cd /mnt/seed && sha256sum -c SHA256SUMS",
                Duration::from_secs(120),
            )
            .await
            .unwrap()
        })
    };
    assert_eq!(
        check.exit_code,
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let serial = env.serial(201);
    let last: u64 = serial
        .lines()
        .filter_map(|l| l.trim().strip_prefix("vmdump-writer: tick "))
        .filter_map(|n| n.trim().parse().ok())
        .max()
        .unwrap();
    wait_serial(
        &env,
        201,
        &format!("vmdump-writer: tick {}", last + 3),
        &mut || true,
    );
    env.ok(&["vm", "shutdown", "201", "--timeout", "60"]);
    check_disk(&volume, last + 3).unwrap();

    // 3. A qcow2 target: VM 100's disk converted to qcow2 and backed up again (its map line
    // names qcow2), restored live at full speed in the foreground (the command returns once
    // the copy is complete); after a clean shutdown the volume (converted to raw) passes the
    // check.
    let raw100 = images.join("vm-100-disk-0.raw");
    let q100 = images.join("vm-100-disk-0.qcow2");
    expect_success(
        &Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw100)
            .arg(&q100)
            .output()
            .unwrap(),
        "qemu-img convert",
    );
    std::fs::remove_file(&raw100).unwrap();
    std::fs::write(
        env.root().join("qemu-server/100.conf"),
        conf.replace("vm-100-disk-0.raw", "vm-100-disk-0.qcow2"),
    )
    .unwrap();
    env.ok(&["backup", "100", "--storage", "local", "--compress", "zstd"]);
    let archive = std::fs::read_dir(env.store().join("dump"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".vma.zst"))
        .expect("the qcow2 VM's archive");
    let out = env.ok(&["restore", "--live", archive.to_str().unwrap(), "203"]);
    assert!(
        out.contains("new volume ID is 'local:203/vm-203-disk-0.qcow2'"),
        "{out}"
    );
    assert!(out.contains("live-restore of VM 203 complete"), "{out}");
    wait_serial(&env, 203, "vmdump-writer: tick 2", &mut || true);
    env.ok(&["vm", "shutdown", "203", "--timeout", "60"]);
    let raw203 = env.path().join("203.raw");
    expect_success(
        &Command::new("qemu-img")
            .args(["convert", "-f", "qcow2", "-O", "raw"])
            .arg(env.store().join("images/203/vm-203-disk-0.qcow2"))
            .arg(&raw203)
            .output()
            .unwrap(),
        "qemu-img convert",
    );
    check_disk(&raw203, 2).unwrap();
}

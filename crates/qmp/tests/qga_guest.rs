//! QGA client against the tiny test guest booted under TCG (see testguest/README.md):
//! ping, info, guest-exec, a freeze/thaw round trip that blocks a guest write, the
//! paused-VM timeout + resync behaviour, and clean shutdowns (agent and ACPI).

mod common;

use std::time::{Duration, Instant};

use vmdump_qmp::event::name;
use vmdump_qmp::qga::{self, FreezeStatus, ShutdownMode, Timeouts};
use vmdump_qmp::{Client, ErrorKind};

const T: Duration = Duration::from_secs(30);

/// Connects to the agent once it answers (the guest boots for several seconds).
async fn agent(qemu: &common::Qemu, timeouts: Timeouts) -> qga::Client {
    qemu.wait_ready();
    qga::Client::connect_retry(&qemu.qga, timeouts, T)
        .await
        .expect("agent answers after boot")
}

fn short() -> Timeouts {
    Timeouts {
        command: Duration::from_secs(2),
        sync: Duration::from_secs(2),
        freeze: Duration::from_secs(30),
        shutdown: Duration::from_secs(2),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freeze_blocks_guest_writes_until_thaw_and_paused_vm_resyncs() {
    let qemu = common::booted_guest("vmdump.interval=0.1");
    let qmp = Client::connect(&qemu.qmp).await.expect("qmp");
    let ga = agent(&qemu, short()).await;

    ga.ping().await.expect("ping");
    let info = ga.info().await.expect("guest-info");
    assert!(info.version.starts_with("7.2"), "{info:?}");
    assert!(info
        .supported_commands
        .iter()
        .any(|c| c.name == "guest-fsfreeze-freeze" && c.enabled));
    assert_eq!(
        ga.fsfreeze_status().await.expect("status"),
        FreezeStatus::Thawed
    );

    // The writer is ticking: the agent may answer before its first tick under load, so
    // wait for tick 1 on the console (printed after /mnt/tick is renamed in place).
    common::wait_until(Duration::from_secs(30), "the writer's first tick", || {
        qemu.last_tick() >= 1
    });
    let out = ga.run_shell("cat /mnt/tick", T).await.expect("guest-exec");
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    let tick: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("tick number");
    assert!(tick >= 1, "writer has not ticked");

    // A guest write started just before the freeze must wait for the thaw.
    let probe = ga
        .exec(
            "/bin/sh",
            &[
                "-c",
                "sleep 2; echo probe > /mnt/probe; echo vmdump-probe: written > /dev/console",
            ],
        )
        .await
        .expect("probe");
    let frozen_at = Instant::now();
    assert_eq!(
        ga.fsfreeze_freeze().await.expect("freeze"),
        1,
        "one ext4 filesystem"
    );
    println!("freeze took {:?}", frozen_at.elapsed());
    assert!(
        frozen_at.elapsed() < Duration::from_millis(1800),
        "freeze took {:?}: the probe may have written before it",
        frozen_at.elapsed()
    );
    assert_eq!(
        ga.fsfreeze_status().await.expect("status"),
        FreezeStatus::Frozen
    );
    // Most commands are disabled while frozen: the agent says so with a class.
    let err = ga
        .exec("/bin/true", &[])
        .await
        .expect_err("exec while frozen");
    assert_eq!(err.remote_class(), Some("CommandNotFound"), "{err}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stalled = qemu.last_tick();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        qemu.last_tick(),
        stalled,
        "writer kept writing while frozen"
    );
    assert!(
        !qemu.serial_log().contains("vmdump-probe: written"),
        "write went through while frozen"
    );

    let thawed_at = Instant::now();
    assert_eq!(ga.fsfreeze_thaw().await.expect("thaw"), 1);
    common::wait_until(Duration::from_secs(15), "probe write after thaw", || {
        qemu.serial_log().contains("vmdump-probe: written")
    });
    common::wait_until(Duration::from_secs(15), "writer after thaw", || {
        qemu.last_tick() > stalled
    });
    println!("writes resumed {:?} after thaw", thawed_at.elapsed());
    // The probe prints before it exits: poll its status until it has exited.
    let deadline = Instant::now() + Duration::from_secs(10);
    let st = loop {
        let st = ga.exec_status(probe).await.expect("probe status");
        if st.exited || Instant::now() > deadline {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(st.exited && st.exit_code == Some(0), "{st:?}");
    let out = ga.run_shell("cat /mnt/probe", T).await.expect("cat probe");
    assert_eq!(out.stdout, b"probe\n");
    assert_eq!(
        ga.fsfreeze_thaw().await.expect("second thaw"),
        0,
        "nothing left frozen"
    );

    // Paused VM: the agent never answers; requests time out and the client resyncs later.
    let mut events = qmp.events();
    qmp.stop().await.expect("stop");
    events.wait_named(name::STOP, T).await.expect("STOP");
    let start = Instant::now();
    let err = ga.ping().await.expect_err("paused guest answered");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "timeout took {:?}",
        start.elapsed()
    );
    // The next request must first resync, which also times out while paused.
    let err = ga.fsfreeze_status().await.expect_err("still paused");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.to_string().contains("guest-sync-delimited"), "{err}");

    qmp.cont().await.expect("cont");
    events.wait_named(name::RESUME, T).await.expect("RESUME");
    // The stale ping reply ({"return": {}}) arrives first; the typed status must not see it.
    let status = tokio::time::timeout(T, async {
        loop {
            match ga.fsfreeze_status().await {
                Ok(s) => return s,
                Err(e) if e.kind() == ErrorKind::Timeout => continue,
                Err(e) => panic!("after cont: {e}"),
            }
        }
    })
    .await
    .expect("agent answers after cont");
    assert_eq!(status, FreezeStatus::Thawed);
    ga.ping().await.expect("ping after resync");
    let out = ga
        .run_shell("echo $((6 * 7))", T)
        .await
        .expect("exec after resync");
    assert_eq!(out.stdout, b"42\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_shutdown_powers_off_cleanly() {
    let mut qemu = common::booted_guest("vmdump.interval=0.05");
    let qmp = Client::connect(&qemu.qmp).await.expect("qmp");
    let ga = agent(&qemu, short()).await;
    common::wait_until(T, "a few ticks", || qemu.last_tick() >= 5);

    let mut events = qmp.events();
    ga.shutdown(ShutdownMode::Powerdown)
        .await
        .expect("guest-shutdown");
    let ev = events
        .wait_named(name::SHUTDOWN, T)
        .await
        .expect("SHUTDOWN");
    assert_eq!(ev.data["guest"], serde_json::json!(true), "{ev:?}");
    assert_eq!(ev.data_str("reason"), Some("guest-shutdown"));
    assert!(qemu.wait_exit(T), "qemu did not exit");
    // The shim unmounted /mnt: the disk is clean and holds the writer's pattern.
    check_disk(&qemu, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acpi_powerdown_powers_off_cleanly() {
    let mut qemu = common::booted_guest("vmdump.interval=0.05");
    let qmp = Client::connect(&qemu.qmp).await.expect("qmp");
    qemu.wait_ready();
    common::wait_until(T, "a few ticks", || qemu.last_tick() >= 5);

    let mut events = qmp.events();
    qmp.system_powerdown().await.expect("system_powerdown");
    events
        .wait_named(name::POWERDOWN, T)
        .await
        .expect("POWERDOWN");
    let ev = events
        .wait_named(name::SHUTDOWN, T)
        .await
        .expect("SHUTDOWN");
    assert_eq!(ev.data_str("reason"), Some("guest-shutdown"), "{ev:?}");
    assert!(qemu.wait_exit(T), "qemu did not exit");
    check_disk(&qemu, 5);
}

fn check_disk(qemu: &common::Qemu, min_tick: u64) {
    let out = std::process::Command::new("bash")
        .arg(common::check_script())
        .arg(&qemu.disk)
        .arg(min_tick.to_string())
        .output()
        .expect("run testguest/check.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check.sh failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("ok tick="), "{stdout}");
    println!("{stdout}");
}

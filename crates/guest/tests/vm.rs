//! Real-QEMU tests of the VM runtime: start from configs, QMP status and events,
//! suspend/resume, clean shutdown of the test guest, forced stop of a guest that ignores ACPI,
//! stale run directories, the block node scheme, and config errors.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmdump_config::ConfigRoot;
use vmdump_guest::{Error, Runtime, ShutdownOutcome, StartOptions, State};
use vmdump_qmp::{event::name, RunState};
use vmdump_testkit::{check_disk, kill_pidfile, pid_alive, run, testguest_dir};

/// A config root, storage and run base in a temp dir. Kills any QEMU it started on drop.
struct Env {
    dir: tempfile::TempDir,
    rt: Runtime,
    vmids: Vec<u32>,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir_all(dir.path().join("etc/qemu-server")).unwrap();
        std::fs::write(
            dir.path().join("etc/storage.cfg"),
            format!(
                "dir: local\n\tpath {}\n\tcontent images,backup\n",
                store.display()
            ),
        )
        .unwrap();
        let rt = Runtime::new(ConfigRoot::new(dir.path().join("etc")))
            .with_run_base(dir.path().join("run"));
        Env {
            dir,
            rt,
            vmids: Vec::new(),
        }
    }

    /// Start `vmid` paused (the guest never runs, so KVM is fine where it is available).
    async fn start_paused(&self, vmid: u32) -> vmdump_guest::Started {
        self.rt
            .start(
                vmid,
                &StartOptions {
                    paused: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap()
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn config(&mut self, vmid: u32, text: &str) {
        std::fs::write(self.rt.root().qemu_config_path(vmid), text).unwrap();
        self.vmids.push(vmid);
    }

    /// A raw image `vm-<vmid>-disk-<n>.<fmt>` of `size` bytes on `local`.
    fn image(&self, vmid: u32, n: u32, fmt: &str, size: u64) -> PathBuf {
        let dir = self.store().join(format!("images/{vmid}"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("vm-{vmid}-disk-{n}.{fmt}"));
        run(std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", fmt])
            .arg(&path)
            .arg(size.to_string()))
        .unwrap();
        path
    }

    /// The test guest as VMID `vmid` with a fresh copy of its data disk.
    fn testguest(&mut self, vmid: u32) -> PathBuf {
        let tg = testguest_dir();
        for f in ["vmlinuz", "initrd.gz", "data.raw", "vm.conf"] {
            assert!(
                tg.join(f).is_file(),
                "test guest missing: run testguest/build.sh"
            );
        }
        let dir = self.store().join(format!("images/{vmid}"));
        std::fs::create_dir_all(&dir).unwrap();
        let disk = dir.join(format!("vm-{vmid}-disk-0.raw"));
        std::fs::copy(tg.join("data.raw"), &disk).unwrap();
        let conf = std::fs::read_to_string(tg.join("vm.conf"))
            .unwrap()
            .replace(
                "local:100/vm-100-disk-0",
                &format!("local:{vmid}/vm-{vmid}-disk-0"),
            );
        self.config(vmid, &conf);
        disk
    }

    fn assert_clean(&self, vmid: u32, pid: Option<u32>) {
        let run = self.rt.run_dir(vmid);
        assert!(
            !run.has_leftovers(),
            "run files left in {}",
            run.path().display()
        );
        for f in ["qmp.sock", "ctl.sock", "qga.sock", "qemu.pid"] {
            assert!(!run.path().join(f).exists(), "{f} left");
        }
        if let Some(pid) = pid {
            assert!(!pid_alive(pid), "QEMU {pid} still runs");
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for vmid in &self.vmids {
            kill_pidfile(&self.rt.run_dir(*vmid).pidfile());
        }
    }
}

async fn wait_serial(path: &Path, needle: &str, timeout: Duration) {
    let start = Instant::now();
    loop {
        if std::fs::read_to_string(path).is_ok_and(|s| s.contains(needle)) {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "no '{needle}' in {} after {timeout:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn running(state: &State) -> &RunState {
    match state {
        State::Running { status, .. } => status,
        other => panic!("not running: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_start_status_events_suspend_resume_stop() {
    let mut env = Env::new();
    env.config(200, "name: bare\nmemory: 64\nmachine: q35\n");
    let started = env.start_paused(200).await;
    let pid = started.pid;
    assert!(started.plan.args.iter().any(|a| a == "-S"));
    let st = env.rt.status(200).await.unwrap();
    assert_eq!(st.pid(), Some(pid));
    assert_eq!(running(&st), &RunState::Prelaunch);

    // A second start is refused while QEMU runs.
    let e = env
        .rt
        .start(200, &StartOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::AlreadyRunning { vmid: 200, pid: p } if p == pid),
        "{e}"
    );

    // Events reach a long-lived client on qmp.sock while the control socket is used.
    let qmp = env.rt.connect(200).await.unwrap();
    let mut events = qmp.events();
    env.rt.resume(200).await.unwrap();
    events
        .wait_named(name::RESUME, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        running(&env.rt.status(200).await.unwrap()),
        &RunState::Running
    );
    env.rt.suspend(200).await.unwrap();
    events
        .wait_named(name::STOP, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        running(&env.rt.status(200).await.unwrap()),
        &RunState::Paused
    );
    assert_eq!(qmp.query_status().await.unwrap().status, RunState::Paused);
    env.rt.resume(200).await.unwrap();
    events
        .wait_named(name::RESUME, Duration::from_secs(10))
        .await
        .unwrap();

    assert!(env.rt.stop(200, Duration::from_secs(10)).await.unwrap());
    assert_eq!(env.rt.status(200).await.unwrap(), State::Stopped);
    env.assert_clean(200, Some(pid));
    // Stopping a stopped VM is a no-op; suspend needs a running VM.
    assert!(!env.rt.stop(200, Duration::from_secs(1)).await.unwrap());
    assert!(matches!(
        env.rt.suspend(200).await,
        Err(Error::NotRunning { vmid: 200 })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_ignoring_acpi_is_stopped_after_the_timeout() {
    let mut env = Env::new();
    // No OS: SeaBIOS finds nothing to boot and never handles the power button; no agent.
    env.config(201, "name: deaf\nmemory: 64\n");
    let pid = env
        .rt
        .start(201, &StartOptions::default())
        .await
        .unwrap()
        .pid;
    assert_eq!(
        running(&env.rt.status(201).await.unwrap()),
        &RunState::Running
    );
    let t = Instant::now();
    let outcome = env.rt.shutdown(201, Duration::from_secs(2)).await.unwrap();
    let took = t.elapsed();
    assert_eq!(outcome, ShutdownOutcome::Forced);
    assert!(took >= Duration::from_secs(2), "gave up after {took:?}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert_eq!(env.rt.status(201).await.unwrap(), State::Stopped);
    env.assert_clean(201, Some(pid));
    assert_eq!(
        env.rt.shutdown(201, Duration::from_secs(1)).await.unwrap(),
        ShutdownOutcome::AlreadyStopped
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_guest_boots_and_shuts_down_cleanly() {
    let mut env = Env::new();
    let disk = env.testguest(202);
    let started = env.rt.start(202, &StartOptions::default()).await.unwrap();
    assert!(started.plan.agent);
    let serial = env.rt.run_dir(202).serial_log();
    wait_serial(&serial, "vmdump-testguest: ready", Duration::from_secs(120)).await;
    wait_serial(&serial, "vmdump-writer: tick 3", Duration::from_secs(60)).await;
    let agent = vmdump_qmp::qga::Client::connect(env.rt.run_dir(202).qga_socket())
        .await
        .unwrap();
    agent.ping().await.unwrap();
    drop(agent);
    let qmp = env.rt.connect(202).await.unwrap();
    let mut events = qmp.events();
    let outcome = env.rt.shutdown(202, Duration::from_secs(60)).await.unwrap();
    assert_eq!(outcome, ShutdownOutcome::Acpi);
    let ev = events
        .wait_named(name::SHUTDOWN, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(ev.data_str("reason"), Some("guest-shutdown"));
    env.assert_clean(202, Some(started.pid));
    // The guest unmounted its disk: the image is clean without journal recovery.
    check_disk(&disk, 3).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_shutdown_when_acpi_is_ignored() {
    let mut env = Env::new();
    env.testguest(203);
    let pid = env
        .rt
        .start(203, &StartOptions::default())
        .await
        .unwrap()
        .pid;
    let serial = env.rt.run_dir(203).serial_log();
    wait_serial(&serial, "vmdump-testguest: ready", Duration::from_secs(120)).await;
    // Make the guest deaf to the power button; only the agent can shut it down now.
    let agent = vmdump_qmp::qga::Client::connect(env.rt.run_dir(203).qga_socket())
        .await
        .unwrap();
    let r = agent
        .run_shell(
            "killall acpid; sleep 0.2; ! pidof acpid",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(r.exit_code, Some(0), "{r:?}");
    drop(agent);
    let t = Instant::now();
    // Each clean step gets 8 s: the ACPI wait runs out, the agent path must finish in time.
    let outcome = env.rt.shutdown(203, Duration::from_secs(8)).await.unwrap();
    assert_eq!(outcome, ShutdownOutcome::Agent);
    assert!(t.elapsed() >= Duration::from_secs(8));
    env.assert_clean(203, Some(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_run_dir_after_a_crash_is_cleaned() {
    let mut env = Env::new();
    env.config(204, "memory: 64\n");
    let pid = env.start_paused(204).await.pid;
    // QEMU dies behind our back.
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    for _ in 0..100 {
        if !pid_alive(pid) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let run = env.rt.run_dir(204);
    assert!(run.has_leftovers());
    assert_eq!(env.rt.status(204).await.unwrap(), State::Stopped);
    assert!(!run.has_leftovers());
    // And a start over a stale pid file works.
    std::fs::write(run.pidfile(), format!("{pid}\n")).unwrap();
    let pid2 = env.start_paused(204).await.pid;
    assert_ne!(pid, pid2);
    assert!(env.rt.stop(204, Duration::from_secs(10)).await.unwrap());
    env.assert_clean(204, Some(pid2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_nodes_and_devices_follow_the_naming_scheme() {
    let mut env = Env::new();
    for (n, fmt) in [
        (0, "qcow2"),
        (1, "raw"),
        (2, "raw"),
        (3, "raw"),
        (4, "raw"),
        (5, "raw"),
    ] {
        env.image(205, n, fmt, 1 << 20);
    }
    env.config(
        205,
        "machine: q35\nmemory: 64\nscsihw: virtio-scsi-pci\nboot: order=scsi0\n\
         scsi0: local:205/vm-205-disk-0.qcow2,size=1M\n\
         virtio1: local:205/vm-205-disk-1.raw,iothread=1,size=1M\n\
         sata0: local:205/vm-205-disk-2.raw,size=1M\n\
         ide0: local:205/vm-205-disk-3.raw,size=1M,cache=writethrough\n\
         efidisk0: local:205/vm-205-disk-4.raw,size=1M\n\
         tpmstate0: local:205/vm-205-disk-5.raw,size=1M\n\
         ide2: none,media=cdrom\n\
         net0: virtio=02:00:00:00:02:05,bridge=vmbr0\n",
    );
    let started = env.start_paused(205).await;
    let disks = &started.plan.disks;
    let keys: Vec<String> = disks.iter().map(|d| d.key.to_string()).collect();
    assert_eq!(
        keys,
        ["scsi0", "virtio1", "sata0", "ide0", "efidisk0", "tpmstate0"]
    );
    for d in disks {
        assert_eq!(d.node_name, format!("drive-{}", d.key));
        assert_eq!(d.file_node_name, format!("file-{}", d.key));
    }
    let virtio = &disks[1];
    assert_eq!(virtio.qdev_id.as_deref(), Some("virtio1"));
    assert_eq!(
        virtio.qom_path.as_deref(),
        Some("/machine/peripheral/virtio1/virtio-backend")
    );
    assert_eq!(
        disks[0].qom_path.as_deref(),
        Some("/machine/peripheral/scsi0")
    );
    assert_eq!(disks[0].format, "qcow2");
    assert_eq!(disks[0].block_qdev().as_deref(), Some("scsi0"));
    assert_eq!(
        virtio.block_qdev().as_deref(),
        Some("/machine/peripheral/virtio1/virtio-backend")
    );
    assert!(disks[4].qdev_id.is_none() && disks[5].qdev_id.is_none());

    let qmp = env.rt.connect(205).await.unwrap();
    let blocks = qmp.query_block().await.unwrap();
    for d in disks.iter().filter(|d| d.qdev_id.is_some()) {
        let b = blocks
            .iter()
            .find(|b| b.qdev == d.block_qdev())
            .unwrap_or_else(|| panic!("no block device for {}: {blocks:?}", d.key));
        let ins = b.inserted.as_ref().unwrap();
        assert_eq!(ins.node_name, d.node_name);
        assert_eq!(ins.image.as_ref().unwrap().virtual_size, 1 << 20);
    }
    let nodes = qmp.query_named_block_nodes().await.unwrap();
    for want in [
        "drive-efidisk0",
        "file-efidisk0",
        "drive-tpmstate0",
        "file-scsi0",
    ] {
        assert!(nodes.iter().any(|n| n.node_name == want), "no node {want}");
    }
    // The writethrough IDE disk runs with the guest-visible write cache off.
    let wce = qmp
        .execute(
            "qom-get",
            Some(
                serde_json::json!({"path": "/machine/peripheral/ide0", "property": "write-cache"}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(wce, serde_json::json!("off"));
    let mac = qmp
        .execute(
            "qom-get",
            Some(serde_json::json!({"path": "/machine/peripheral/net0", "property": "mac"})),
        )
        .await
        .unwrap();
    assert_eq!(mac, serde_json::json!("02:00:00:00:02:05"));
    drop(qmp);
    assert!(env.rt.stop(205, Duration::from_secs(10)).await.unwrap());
    env.assert_clean(205, Some(started.pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configs_and_missing_images_fail_clearly() {
    let mut env = Env::new();
    env.config(206, "name: bad\nmemory: lots\n");
    let e = env
        .rt
        .start(206, &StartOptions::default())
        .await
        .unwrap_err();
    let chain = format!("{:#}", anyhow::Error::from(e));
    assert!(
        chain.contains("qemu-server/206.conf:2: invalid value for 'memory'"),
        "{chain}"
    );

    env.config(
        207,
        "memory: 64\nvirtio0: local:207/vm-207-disk-0.raw,size=1G\n",
    );
    let e = env
        .rt
        .start(207, &StartOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::MissingImage { key, .. } if key == "virtio0"),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("images/207/vm-207-disk-0.raw does not exist"),
        "{e}"
    );

    env.config(208, "memory: 64\nvirtio0: nostore:208/vm-208-disk-0.raw\n");
    let e = env
        .rt
        .start(208, &StartOptions::default())
        .await
        .unwrap_err();
    assert!(format!("{:#}", anyhow::Error::from(e)).contains("storage 'nostore' does not exist"));

    env.config(209, "memory: 64\nlock: backup\n");
    let e = env
        .rt
        .start(209, &StartOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Locked { .. }), "{e}");

    // QEMU itself rejecting the command line: its message comes back, nothing is left.
    env.config(210, "memory: 64\nargs: -no-such-option\n");
    let e = env
        .rt
        .start(210, &StartOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Launch { stderr, .. } if stderr.contains("no-such-option")),
        "{e}"
    );
    env.assert_clean(210, None);

    assert!(matches!(
        env.rt.start(299, &StartOptions::default()).await,
        Err(Error::Config { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shows_configs_with_state() {
    let mut env = Env::new();
    env.config(211, "name: one\nmemory: 64\n");
    env.config(212, "name: two\nmemory: 96\n");
    env.config(213, "memory: broken\n");
    let pid = env.start_paused(212).await.pid;
    let list = env.rt.list().await.unwrap();
    let rows: Vec<(u32, &str, Option<u64>, &str)> = list
        .iter()
        .map(|v| (v.vmid, v.name.as_str(), v.memory_mib, v.state.as_str()))
        .collect();
    assert_eq!(rows[0], (211, "one", Some(64), "stopped"));
    assert_eq!(rows[1], (212, "two", Some(96), "running"));
    assert_eq!(rows[2].0, 213);
    assert!(rows[2].1.contains("213.conf:1"), "{}", rows[2].1);
    assert!(env.rt.stop(212, Duration::from_secs(10)).await.unwrap());
    env.assert_clean(212, Some(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_launch_one_qemu() {
    let mut env = Env::new();
    env.config(214, "memory: 64\n");
    let opts = StartOptions {
        paused: true,
        ..Default::default()
    };
    let (a, b) = tokio::join!(env.rt.start(214, &opts), env.rt.start(214, &opts));
    let (ok, err) = match (a, b) {
        (Ok(s), Err(e)) | (Err(e), Ok(s)) => (s, e),
        other => panic!("expected one start to win: {other:?}"),
    };
    assert!(
        matches!(err, Error::AlreadyRunning { pid, .. } if pid == ok.pid),
        "{err}"
    );
    // The winner is untouched by the loser's failure.
    assert_eq!(env.rt.status(214).await.unwrap().pid(), Some(ok.pid));
    assert!(env.rt.stop(214, Duration::from_secs(10)).await.unwrap());
    env.assert_clean(214, Some(ok.pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_qemu_is_reported_unresponsive_and_killed() {
    let mut env = Env::new();
    env.config(215, "memory: 64\n");
    let pid = env.start_paused(215).await.pid;
    // QEMU stops answering anything (its monitor included).
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    assert_eq!(
        env.rt.status(215).await.unwrap(),
        State::Unresponsive { pid }
    );
    let t = Instant::now();
    assert!(env.rt.stop(215, Duration::from_secs(1)).await.unwrap());
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(env.rt.status(215).await.unwrap(), State::Stopped);
    env.assert_clean(215, Some(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i440fx_ide_units_lsi_controllers_and_cdrom() {
    let mut env = Env::new();
    for n in 0..6 {
        env.image(216, n, "raw", 1 << 20);
    }
    let iso = env.store().join("template/iso");
    std::fs::create_dir_all(&iso).unwrap();
    std::fs::write(iso.join("tools.iso"), vec![0u8; 2048 * 16]).unwrap();
    env.config(
        216,
        "memory: 64\nsockets: 2\ncores: 2\nvcpus: 3\n\
         ide0: local:216/vm-216-disk-0.raw,werror=stop,rerror=stop\n\
         ide1: local:216/vm-216-disk-1.raw\n\
         ide2: local:iso/tools.iso,media=cdrom\n\
         ide3: local:216/vm-216-disk-2.raw,cache=unsafe\n\
         scsi0: local:216/vm-216-disk-3.raw,werror=enospc,rerror=ignore\n\
         scsi7: local:216/vm-216-disk-4.raw,ro=1\n\
         sata5: local:216/vm-216-disk-5.raw,discard=on\n",
    );
    let started = env.start_paused(216).await;
    let args = started.plan.args.join(" ");
    assert!(
        args.contains("-smp 3,sockets=2,cores=2,maxcpus=4"),
        "{args}"
    );
    assert!(
        args.contains("ide-hd,drive=drive-ide1,id=ide1,bus=ide.0,unit=1"),
        "{args}"
    );
    assert!(
        args.contains("ide-cd,drive=drive-ide2,id=ide2,bus=ide.1,unit=0"),
        "{args}"
    );
    assert!(args.contains("lsi53c895a,id=scsihw1"), "{args}");
    // The error actions reach the devices (and QEMU, which started, accepted them).
    assert!(
        args.contains("ide-hd,drive=drive-ide0,id=ide0,bus=ide.0,unit=0,rerror=stop,werror=stop"),
        "{args}"
    );
    assert!(
        args.contains("scsi-hd,drive=drive-scsi0,id=scsi0,bus=scsihw0.0,scsi-id=0,rerror=ignore,werror=enospc"),
        "{args}"
    );
    assert!(
        args.contains("scsi-hd,drive=drive-scsi7,id=scsi7,bus=scsihw1.0,scsi-id=0"),
        "{args}"
    );
    let cd = started
        .plan
        .disks
        .iter()
        .find(|d| d.key.to_string() == "ide2")
        .unwrap();
    assert!(cd.cdrom && cd.read_only);
    let qmp = env.rt.connect(216).await.unwrap();
    let blocks = qmp.query_block().await.unwrap();
    for d in &started.plan.disks {
        let b = blocks
            .iter()
            .find(|b| b.qdev == d.block_qdev())
            .unwrap_or_else(|| panic!("{}", d.key));
        let ins = b.inserted.as_ref().unwrap();
        assert_eq!(ins.node_name, d.node_name);
        assert_eq!(ins.ro, d.read_only, "{}", d.key);
    }
    let cpus = qmp.execute("query-cpus-fast", None).await.unwrap();
    assert_eq!(cpus.as_array().unwrap().len(), 3);
    drop(qmp);
    assert!(env.rt.stop(216, Duration::from_secs(10)).await.unwrap());
    env.assert_clean(216, Some(started.pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ovmf_uses_efidisk0_as_the_variable_store() {
    let mut env = Env::new();
    let dir = env.store().join("images/217");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
        dir.join("vm-217-disk-0.raw"),
    )
    .unwrap();
    env.config(
        217,
        "bios: ovmf\nmachine: q35\nmemory: 128\n\
         efidisk0: local:217/vm-217-disk-0.raw,efitype=4m,pre-enrolled-keys=0,size=528K\n",
    );
    let started = env.start_paused(217).await;
    let args = started.plan.args.join(" ");
    assert!(
        args.contains(",pflash0=pflash-code,pflash1=drive-efidisk0"),
        "{args}"
    );
    let qmp = env.rt.connect(217).await.unwrap();
    let nodes = qmp.query_named_block_nodes().await.unwrap();
    let efi = nodes
        .iter()
        .find(|n| n.node_name == "drive-efidisk0")
        .expect("efidisk node");
    assert_eq!(efi.image.as_ref().unwrap().virtual_size, 540672);
    // The backup can read it while the VM runs: the node is writable and in use by pflash1.
    assert!(!efi.ro);
    drop(qmp);
    assert!(env.rt.stop(217, Duration::from_secs(10)).await.unwrap());
    env.assert_clean(217, Some(started.pid));
}

//! The restored test guest boots: run the test guest so its writer leaves files, shut it
//! down, back it up into a VMA (config copy and `#qmdump#map` lines from vmdump-config),
//! restore it as another VM with `vmdump restore --unique`, check the restored data disk
//! from the host (`testguest/check.sh`: e2fsck -fn, seed checksums, writer files), boot it
//! (TCG), talk to its guest agent, let the writer continue, shut down and check again.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use vmdump_testkit::{check_disk, expect_success, kill_pidfile, sha256_file, testguest_dir};
use vmdump_vma::{Writer, CLUSTER_SIZE};

const BIN: &str = env!("CARGO_BIN_EXE_vmdump");

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn root(&self) -> PathBuf {
        self.dir.path().join("etc")
    }
    fn run(&self) -> PathBuf {
        self.dir.path().join("run")
    }
    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }
    fn vmdump(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("VMDUMP_ROOT", self.root())
            .env("VMDUMP_RUN_DIR", self.run())
            .env("VMDUMP_ACCEL", "tcg")
            .output()
            .unwrap()
    }
    fn ok(&self, args: &[&str]) -> String {
        expect_success(&self.vmdump(args), &format!("vmdump {args:?}"))
    }
    fn serial(&self, vmid: u32) -> String {
        std::fs::read_to_string(self.run().join(format!("{vmid}/serial.log"))).unwrap_or_default()
    }
    /// Wait until the serial log contains `needle`.
    fn wait_serial(&self, vmid: u32, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.serial(vmid).contains(needle) {
            assert!(
                start.elapsed() < timeout,
                "VM {vmid}: no '{needle}' on the console within {timeout:?}:\n{}",
                self.serial(vmid)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for vmid in [100, 200] {
            kill_pidfile(&self.run().join(format!("{vmid}/qemu.pid")));
        }
    }
}

/// One guest-agent exchange on the agent socket: `guest-sync` with a token, then
/// `guest-ping`; true when both answer.
fn agent_answers(sock: &Path) -> bool {
    let Ok(s) = UnixStream::connect(sock) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut w = match s.try_clone() {
        Ok(w) => w,
        Err(_) => return false,
    };
    let mut r = BufReader::new(s);
    let token = 48_151_623u64;
    if w.write_all(
        format!("{{\"execute\":\"guest-sync\",\"arguments\":{{\"id\":{token}}}}}\n").as_bytes(),
    )
    .is_err()
    {
        return false;
    }
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return false,
            Ok(_) if line.contains(&token.to_string()) => break,
            Ok(_) => {}
        }
    }
    if w.write_all(b"{\"execute\":\"guest-ping\"}\n").is_err() {
        return false;
    }
    line.clear();
    matches!(r.read_line(&mut line), Ok(n) if n > 0) && line.contains("\"return\"")
}

#[test]
fn restored_test_guest_boots_and_its_data_checks_pass() {
    let guest = testguest_dir();
    assert!(
        guest.join("vm.conf").exists() && guest.join("data.raw").exists(),
        "test guest missing: run testguest/build.sh"
    );
    let env = Env {
        dir: tempfile::tempdir().unwrap(),
    };
    std::fs::create_dir_all(env.root().join("qemu-server")).unwrap();
    std::fs::write(
        env.root().join("storage.cfg"),
        format!(
            "dir: local\n\tpath {}\n\tcontent images,backup\n",
            env.store().display()
        ),
    )
    .unwrap();
    let conf_text = std::fs::read_to_string(guest.join("vm.conf"))
        .unwrap()
        .replace("@VMID@", "100");
    std::fs::write(env.root().join("qemu-server/100.conf"), &conf_text).unwrap();
    let images = env.store().join("images/100");
    std::fs::create_dir_all(&images).unwrap();
    let disk = images.join("vm-100-disk-0.raw");
    std::fs::copy(guest.join("data.raw"), &disk).unwrap();

    // 1. Let the writer of the original VM leave some files, then shut down cleanly.
    env.ok(&["vm", "start", "100"]);
    env.wait_serial(100, "vmdump-writer: tick 8", Duration::from_secs(120));
    env.ok(&["vm", "shutdown", "100", "--timeout", "60"]);
    let tick = check_disk(&disk, 8).unwrap();

    // 2. The backup: vzdump's config copy plus the disk's clusters.
    let vm = vmdump_config::QemuConfig::parse(&conf_text, "100.conf").unwrap();
    let (archived, disks, _) = vmdump_config::qmdump::backup_config(&vm).unwrap();
    assert_eq!(disks.len(), 1);
    let archive = env
        .dir
        .path()
        .join("vzdump-qemu-100-2025_01_01-00_00_00.vma");
    let mut w = Writer::new(std::fs::File::create(&archive).unwrap());
    w.add_config("qemu-server.conf", archived.as_bytes())
        .unwrap();
    let size = std::fs::metadata(&disk).unwrap().len();
    let dev = w.register_device(&disks[0].devname, size).unwrap();
    let data = std::fs::read(&disk).unwrap();
    for (c, chunk) in data.chunks(CLUSTER_SIZE).enumerate() {
        w.write_cluster(dev, c as u64, chunk).unwrap();
    }
    w.finish().unwrap();
    let zst = archive.with_extension("vma.zst");
    let st = Command::new("zstd")
        .args(["-q", "--rm"])
        .arg(&archive)
        .arg("-o")
        .arg(&zst)
        .status()
        .unwrap();
    assert!(st.success());

    // 3. Restore as VM 200 with new MACs.
    let out = env.ok(&["restore", zst.to_str().unwrap(), "200", "--unique"]);
    assert!(
        out.contains("new volume ID is 'local:200/vm-200-disk-0.raw'"),
        "{out}"
    );
    let restored = env.store().join("images/200/vm-200-disk-0.raw");
    assert_eq!(sha256_file(&restored).unwrap(), sha256_file(&disk).unwrap());
    assert_eq!(check_disk(&restored, tick).unwrap(), tick);
    let conf200 = std::fs::read_to_string(env.root().join("qemu-server/200.conf")).unwrap();
    assert!(
        conf200.contains("virtio0: local:200/vm-200-disk-0.raw,size=64M"),
        "{conf200}"
    );

    // 4. Boot the restored VM; its agent answers and its writer continues.
    env.ok(&["vm", "start", "200"]);
    env.wait_serial(
        200,
        "vmdump-testguest: ready writer=1",
        Duration::from_secs(120),
    );
    let qga = env.run().join("200/qga.sock");
    let start = Instant::now();
    while !agent_answers(&qga) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "guest agent of the restored VM does not answer"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let next = format!("vmdump-writer: tick {}", tick + 3);
    env.wait_serial(200, &next, Duration::from_secs(60));
    env.ok(&["vm", "shutdown", "200", "--timeout", "60"]);
    check_disk(&restored, tick + 3).unwrap();
}

//! The restored test guest boots: run the test guest so its writer leaves files, shut it
//! down, back it up into a VMA (config copy and `#qmdump#map` lines from vmdump-config),
//! restore it as another VM with `vmdump restore --unique`, check the restored data disk
//! from the host (`testguest/check.sh`: e2fsck -fn, seed checksums, writer files), boot it
//! (TCG), talk to its guest agent, let the writer continue, shut down and check again.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod guest_env;

use guest_env::GuestEnv;
use vmdump_testkit::{check_disk, sha256_file};
use vmdump_vma::{Writer, CLUSTER_SIZE};

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
    let env = GuestEnv::new();
    let conf_text = std::fs::read_to_string(env.root().join("qemu-server/100.conf")).unwrap();
    let disk = env.store().join("images/100/vm-100-disk-0.raw");

    // 1. Let the writer of the original VM leave some files, then shut down cleanly.
    env.ok(&["vm", "start", "100"]);
    env.wait_serial(100, "vmdump-writer: tick 8", Duration::from_secs(120));
    env.ok(&["vm", "shutdown", "100", "--timeout", "60"]);
    let tick = check_disk(&disk, 8).unwrap();

    // 2. The backup: vzdump's config copy plus the disk's clusters.
    let vm = vmdump_config::QemuConfig::parse(&conf_text, "100.conf").unwrap();
    let (archived, disks, _) = vmdump_config::qmdump::backup_config(&vm).unwrap();
    assert_eq!(disks.len(), 1);
    let archive = env.path().join("vzdump-qemu-100-2025_01_01-00_00_00.vma");
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

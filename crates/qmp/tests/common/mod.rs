//! Test support: launching real QEMU processes and the tiny test guest.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `<repo>/.cache/testguest`, or a panic telling how to build it.
pub fn testguest_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/testguest");
    for f in ["vmlinuz", "initrd.gz", "data.raw"] {
        assert!(
            dir.join(f).is_file(),
            "test guest missing ({}): run testguest/build.sh first",
            dir.join(f).display()
        );
    }
    dir
}

pub fn check_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testguest/check.sh")
}

/// A QEMU process killed on drop, with its sockets in a temp dir.
pub struct Qemu {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub qmp: PathBuf,
    pub qga: PathBuf,
    pub serial: PathBuf,
    pub disk: PathBuf,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn base_args(dir: &Path) -> Vec<String> {
    let p = |n: &str| dir.join(n).display().to_string();
    [
        "-machine",
        "q35,accel=tcg",
        "-m",
        "256",
        "-nodefaults",
        "-display",
        "none",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", p("qmp.sock")),
        "-chardev".into(),
        format!("socket,path={},server=on,wait=off,id=qga0", p("qga.sock")),
        "-device".into(),
        "virtio-serial-pci,id=vser0".into(),
        "-device".into(),
        "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0".into(),
        "-chardev".into(),
        format!("file,id=con0,path={}", p("serial.log")),
        "-serial".into(),
        "chardev:con0".into(),
    ])
    .collect()
}

fn spawn(dir: tempfile::TempDir, disk: PathBuf, extra: Vec<String>) -> Qemu {
    let mut args = base_args(dir.path());
    args.extend([
        "-blockdev".into(),
        format!("driver=file,filename={},node-name=file0", disk.display()),
        "-blockdev".into(),
        format!("driver={},file=file0,node-name=disk0", image_format(&disk)),
        "-device".into(),
        "virtio-blk-pci,drive=disk0,id=vda".into(),
    ]);
    args.extend(extra);
    let child = Command::new("qemu-system-x86_64")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn qemu-system-x86_64 (apt-get install qemu-system-x86)");
    let qemu = Qemu {
        child,
        qmp: dir.path().join("qmp.sock"),
        qga: dir.path().join("qga.sock"),
        serial: dir.path().join("serial.log"),
        disk,
        dir,
    };
    wait_until(Duration::from_secs(20), "qmp socket", || {
        qemu.qmp.exists() && qemu.qga.exists()
    });
    qemu
}

fn image_format(disk: &Path) -> &'static str {
    if disk.extension().is_some_and(|e| e == "qcow2") {
        "qcow2"
    } else {
        "raw"
    }
}

/// A paused (`-S`) VM without a kernel, with a 64 MiB raw disk `disk0` full of a pattern.
pub fn paused_vm() -> Qemu {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk.raw");
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "raw"])
        .arg(&disk)
        .arg("64M")
        .status()
        .expect("qemu-img");
    assert!(status.success());
    let status = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x5a 0 32M"])
        .arg(&disk)
        .stdout(Stdio::null())
        .status()
        .expect("qemu-io");
    assert!(status.success());
    spawn(dir, disk, vec!["-S".into()])
}

/// The test guest booting under TCG with a copy of the data disk template.
pub fn booted_guest(append: &str) -> Qemu {
    let g = testguest_dir();
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("data.raw");
    std::fs::copy(g.join("data.raw"), &disk).expect("copy data disk");
    let extra = vec![
        "-kernel".into(),
        g.join("vmlinuz").display().to_string(),
        "-initrd".into(),
        g.join("initrd.gz").display().to_string(),
        "-append".into(),
        format!("console=ttyS0 panic=-1 quiet {append}"),
    ];
    spawn(dir, disk, extra)
}

impl Qemu {
    pub fn serial_log(&self) -> String {
        std::fs::read(&self.serial)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits for `vmdump-testguest: ready` on the serial console.
    pub fn wait_ready(&self) {
        wait_until(
            Duration::from_secs(90),
            "guest ready on the serial console",
            || self.serial_log().contains("vmdump-testguest: ready"),
        );
    }

    /// The highest `vmdump-writer: tick N` on the console.
    pub fn last_tick(&self) -> u64 {
        self.serial_log()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("vmdump-writer: tick "))
            .filter_map(|n| n.trim().parse().ok())
            .max()
            .unwrap_or(0)
    }

    /// Waits for the process to exit; true if it did within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

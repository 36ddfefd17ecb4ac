//! Test helpers: QEMU processes, disk images, the dissect.archive oracle.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use vmdump_qmp::Client;

/// A QEMU process owned by a test; killed on drop.
pub struct Qemu {
    pub child: Child,
    pub qmp_path: PathBuf,
    pub qga_path: PathBuf,
    pub qmp: Client,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One disk for QEMU: config key (`virtio0`), image path, format.
pub struct Disk<'a> {
    pub key: &'a str,
    pub path: &'a Path,
    pub format: &'a str,
}

fn disk_args(disks: &[Disk<'_>]) -> Vec<String> {
    let mut args = Vec::new();
    for d in disks {
        args.push("-blockdev".into());
        args.push(format!(
            "driver=file,filename={},node-name=file-{},cache.direct=off",
            d.path.display(),
            d.key
        ));
        args.push("-blockdev".into());
        args.push(format!(
            "driver={},file=file-{},node-name=drive-{}",
            d.format, d.key, d.key
        ));
        args.push("-device".into());
        args.push(format!("virtio-blk-pci,drive=drive-{},id={}", d.key, d.key));
    }
    args
}

impl Qemu {
    /// QEMU paused in prelaunch (KVM; the guest never runs).
    pub async fn paused(dir: &Path, disks: &[Disk<'_>]) -> Result<Self> {
        Self::spawn(
            dir,
            disks,
            &["-S", "-machine", "q35,accel=kvm:tcg"],
            "qemu.log",
        )
        .await
    }

    /// The tiny test guest under TCG with its data disk as `virtio0` plus extra disks.
    pub async fn testguest(dir: &Path, disks: &[Disk<'_>], append: &str) -> Result<Self> {
        let tg = testguest_dir();
        let kernel = tg.join("vmlinuz");
        let initrd = tg.join("initrd.gz");
        let serial = dir.join("serial.log");
        let qga = dir.join("qga.sock");
        let args: Vec<String> = vec![
            "-machine".into(),
            "q35,accel=tcg".into(),
            "-kernel".into(),
            kernel.display().to_string(),
            "-initrd".into(),
            initrd.display().to_string(),
            "-append".into(),
            format!("console=ttyS0 panic=-1 quiet {append}"),
            "-chardev".into(),
            format!("file,id=con0,path={}", serial.display()),
            "-serial".into(),
            "chardev:con0".into(),
            "-chardev".into(),
            format!("socket,path={},server=on,wait=off,id=qga0", qga.display()),
            "-device".into(),
            "virtio-serial-pci,id=vser0".into(),
            "-device".into(),
            "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0".into(),
        ];
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::spawn(dir, disks, &refs, "qemu.log").await
    }

    async fn spawn(dir: &Path, disks: &[Disk<'_>], extra: &[&str], log: &str) -> Result<Self> {
        let qmp_path = dir.join("qmp.sock");
        let qga_path = dir.join("qga.sock");
        let log = std::fs::File::create(dir.join(log))?;
        let child = Command::new("qemu-system-x86_64")
            .args(["-nodefaults", "-display", "none", "-m", "256"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
            .args(extra)
            .args(disk_args(disks))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn qemu-system-x86_64")?;
        let qmp =
            Client::connect_retry(&qmp_path, Duration::from_secs(30), Duration::from_secs(20))
                .await
                .context("connect qmp")?;
        Ok(Self {
            child,
            qmp_path,
            qga_path,
            qmp,
        })
    }

    /// Guest-style write through the device's BlockBackend (goes through the cbw filter).
    pub async fn io_write(&self, key: &str, pattern: u8, offset: u64, len: u64) -> Result<()> {
        let cmd =
            format!("qemu-io -d {key}/virtio-backend \"write -P {pattern:#04x} {offset} {len}\"");
        let out = self.qmp.human_monitor_command(&cmd).await?;
        if !out.trim().is_empty() {
            bail!("qemu-io: {out}");
        }
        Ok(())
    }

    /// Sends `quit` and waits for the process.
    pub async fn quit(mut self) -> Result<()> {
        let _ = self.qmp.quit().await;
        for _ in 0..100 {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("qemu did not exit")
    }
}

pub fn testguest_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = root.join(".cache/testguest");
    if !dir.join("initrd.gz").exists() {
        let st = Command::new("bash")
            .arg(root.join("testguest/build.sh"))
            .status()
            .expect("run testguest/build.sh");
        assert!(st.success(), "testguest/build.sh failed");
    }
    dir
}

pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// sha256 of a file's bytes.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// sha256 of the guest-visible bytes of an image (qcow2 converted to raw first).
pub fn image_sha256(path: &Path, format: &str, scratch: &Path) -> Result<String> {
    if format == "raw" {
        return sha256_file(path);
    }
    let raw = scratch.join("convert.raw");
    let _ = std::fs::remove_file(&raw);
    run(Command::new("qemu-img")
        .args(["convert", "-U", "-f", format, "-O", "raw"])
        .arg(path)
        .arg(&raw))?;
    let h = sha256_file(&raw);
    let _ = std::fs::remove_file(&raw);
    h
}

/// Device name, size and sha256 of every device of an archive, read by dissect.archive
/// (an independent implementation). Compressed archives are decompressed first.
pub fn dissect_devices(archive: &Path) -> Result<Vec<(String, u64, String)>> {
    let script = r#"
import hashlib, sys
from dissect.archive.vma import VMA
with open(sys.argv[1], 'rb') as fh:
    vma = VMA(fh)
    for dev in vma.devices():
        s = dev.open()
        h = hashlib.sha256()
        left = dev.size
        while left > 0:
            b = s.read(min(8 << 20, left))
            if not b:
                raise SystemExit(f"short read on {dev.name}")
            h.update(b)
            left -= len(b)
        print(dev.name, dev.size, h.hexdigest())
    for name, data in vma.configs().items():
        print("CFG", name, len(data))
"#;
    let out = run(Command::new("python3").arg("-c").arg(script).arg(archive))?;
    Ok(out
        .lines()
        .filter(|l| !l.starts_with("CFG "))
        .map(|l| {
            let p: Vec<&str> = l.split_whitespace().collect();
            (
                p[0].to_string(),
                p[1].parse().unwrap_or(0),
                p[2].to_string(),
            )
        })
        .collect())
}

/// The config files dissect.archive finds in an archive.
pub fn dissect_config(archive: &Path, name: &str) -> Result<String> {
    let script = r#"
import sys
from dissect.archive.vma import VMA
with open(sys.argv[1], 'rb') as fh:
    sys.stdout.write(VMA(fh).config(sys.argv[2]).decode())
"#;
    run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(archive)
        .arg(name))
}

/// Small deterministic PRNG (xorshift).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

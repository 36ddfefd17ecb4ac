//! Helpers of the `vmdump backup` end-to-end tests: config roots, QEMU processes laid out as
//! the VM runtime does (`<run>/<vmid>/qmp.sock`, `qga.sock`, node `drive-<key>`, device id
//! `<key>`), the dissect.archive oracle.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use vmdump_qmp::Client;

pub const MIB: u64 = 1 << 20;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A config root with a `local` dir storage under `base/store` and a run dir `base/run`.
pub struct Env {
    pub base: PathBuf,
    pub root: PathBuf,
    pub store: PathBuf,
    pub run: PathBuf,
}

impl Env {
    pub fn new(base: &Path) -> Result<Self> {
        let root = base.join("etc");
        let store = base.join("store");
        let run = base.join("run");
        std::fs::create_dir_all(root.join("qemu-server"))?;
        std::fs::create_dir_all(store.join("images/100"))?;
        std::fs::create_dir_all(&run)?;
        std::fs::write(
            root.join("storage.cfg"),
            format!(
                "dir: local\n\tpath {}\n\tcontent images,backup,iso\n",
                store.display()
            ),
        )?;
        Ok(Self {
            base: base.to_path_buf(),
            root,
            store,
            run,
        })
    }

    pub fn image(&self, vmid: u32, name: &str) -> PathBuf {
        self.store.join(format!("images/{vmid}/{name}"))
    }

    pub fn write_config(&self, vmid: u32, text: &str) -> Result<()> {
        std::fs::write(self.root.join(format!("qemu-server/{vmid}.conf")), text)?;
        Ok(())
    }

    pub fn dump(&self) -> PathBuf {
        self.store.join("dump")
    }

    /// `vmdump backup <args> --root <root>` with the run dir set.
    pub fn vmdump_backup(&self, args: &[&str]) -> Result<Output> {
        Ok(self.vmdump_command(args).output()?)
    }

    pub fn vmdump_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vmdump"));
        c.arg("backup")
            .args(args)
            .arg("--root")
            .arg(&self.root)
            .env("VMDUMP_RUN_DIR", &self.run)
            .env_remove("VMDUMP_ROOT");
        c
    }

    /// Files in the dump directory.
    pub fn dump_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dump())
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", text(&out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// The guest-visible bytes' sha256 (qcow2 converted first).
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

/// Decompresses an archive by its extension into `scratch/plain.vma`.
pub fn plain_vma(archive: &Path, scratch: &Path) -> Result<PathBuf> {
    let name = archive.to_string_lossy().into_owned();
    let out = scratch.join("plain.vma");
    let _ = std::fs::remove_file(&out);
    if name.ends_with(".vma") {
        std::fs::copy(archive, &out)?;
    } else if name.ends_with(".zst") {
        run(Command::new("zstd")
            .args(["-q", "-d", "-o"])
            .arg(&out)
            .arg(archive))?;
    } else if name.ends_with(".lzo") {
        run(Command::new("lzop")
            .args(["-q", "-d", "-o"])
            .arg(&out)
            .arg(archive))?;
    } else if name.ends_with(".gz") {
        let o = Command::new("gzip").arg("-dc").arg(archive).output()?;
        if !o.status.success() {
            bail!("gzip -d failed");
        }
        std::fs::write(&out, o.stdout)?;
    } else {
        bail!("unknown archive type {name}");
    }
    Ok(out)
}

/// Devices (name, size, sha256) of a plain VMA read by dissect.archive.
pub fn dissect_devices(vma: &Path) -> Result<Vec<(String, u64, String)>> {
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
"#;
    let out = run(Command::new("python3").arg("-c").arg(script).arg(vma))?;
    Ok(out
        .lines()
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

/// Writes device `dev_name` of a plain VMA to `out` (exact size) with dissect.archive.
pub fn dissect_extract(vma: &Path, dev_name: &str, out: &Path) -> Result<()> {
    let script = r#"
import sys
from dissect.archive.vma import VMA
with open(sys.argv[1], 'rb') as fh, open(sys.argv[3], 'wb') as o:
    vma = VMA(fh)
    dev = [d for d in vma.devices() if d.name == sys.argv[2]][0]
    s = dev.open()
    left = dev.size
    while left > 0:
        b = s.read(min(8 << 20, left))
        o.write(b)
        left -= len(b)
"#;
    run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(vma)
        .arg(dev_name)
        .arg(out))?;
    Ok(())
}

/// The config stored in a plain VMA.
pub fn dissect_config(vma: &Path) -> Result<String> {
    let script = r#"
import sys
from dissect.archive.vma import VMA
with open(sys.argv[1], 'rb') as fh:
    sys.stdout.write(VMA(fh).config('qemu-server.conf').decode())
"#;
    run(Command::new("python3").arg("-c").arg(script).arg(vma))
}

/// A QEMU laid out like a running VM of the runtime.
pub struct Vm {
    pub child: Child,
    pub qmp: Client,
    pub dir: PathBuf,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Disk<'a> {
    pub key: &'a str,
    pub path: &'a Path,
    pub format: &'a str,
}

pub fn testguest_dir() -> PathBuf {
    let dir = repo().join(".cache/testguest");
    if !dir.join("initrd.gz").exists() {
        let st = Command::new("bash")
            .arg(repo().join("testguest/build.sh"))
            .status()
            .expect("run testguest/build.sh");
        assert!(st.success(), "testguest/build.sh failed");
    }
    dir
}

impl Vm {
    /// Starts QEMU for `vmid` with its sockets in `<run>/<vmid>/`. `guest`: boot the test guest
    /// (TCG) with an agent; otherwise paused in prelaunch.
    pub async fn start(
        env: &Env,
        vmid: u32,
        disks: &[Disk<'_>],
        guest: bool,
        append: &str,
    ) -> Result<Self> {
        let dir = env.run.join(vmid.to_string());
        std::fs::create_dir_all(&dir)?;
        let qmp_path = dir.join("qmp.sock");
        // The backup holds qmp.sock (QEMU serves one client per monitor); the test talks to
        // QEMU through a second monitor, as the VM runtime's ctl.sock.
        let ctl_path = dir.join("ctl.sock");
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-nodefaults", "-display", "none", "-m", "256"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", ctl_path.display()));
        if guest {
            let tg = testguest_dir();
            cmd.args(["-machine", "q35,accel=tcg"])
                .arg("-kernel")
                .arg(tg.join("vmlinuz"))
                .arg("-initrd")
                .arg(tg.join("initrd.gz"))
                .arg("-append")
                .arg(format!("console=ttyS0 panic=-1 quiet {append}"))
                .arg("-chardev")
                .arg(format!(
                    "file,id=con0,path={}",
                    dir.join("serial.log").display()
                ))
                .args(["-serial", "chardev:con0"])
                .arg("-chardev")
                .arg(format!(
                    "socket,path={},server=on,wait=off,id=qga0",
                    dir.join("qga.sock").display()
                ))
                .args(["-device", "virtio-serial-pci,id=vser0"])
                .args([
                    "-device",
                    "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
                ]);
        } else {
            cmd.args(["-S", "-machine", "q35,accel=kvm:tcg"]);
        }
        for d in disks {
            cmd.arg("-blockdev").arg(format!(
                "driver={},node-name=drive-{},file.driver=file,file.filename={}",
                d.format,
                d.key,
                d.path.display()
            ));
            cmd.arg("-device")
                .arg(format!("virtio-blk-pci,drive=drive-{},id={}", d.key, d.key));
        }
        let log = std::fs::File::create(dir.join("qemu.log"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let qmp =
            Client::connect_retry(&ctl_path, Duration::from_secs(30), Duration::from_secs(20))
                .await?;
        Ok(Self { child, qmp, dir })
    }

    /// Waits for the test guest's `ready` line on the serial console.
    pub async fn wait_ready(&self) -> Result<()> {
        for _ in 0..600 {
            let s = std::fs::read_to_string(self.dir.join("serial.log")).unwrap_or_default();
            if s.contains("vmdump-testguest: ready") {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("test guest did not become ready")
    }

    /// Highest writer tick on the serial console.
    pub fn last_tick(&self) -> u64 {
        let s = std::fs::read_to_string(self.dir.join("serial.log")).unwrap_or_default();
        s.lines()
            .filter_map(|l| l.trim().strip_prefix("vmdump-writer: tick "))
            .filter_map(|n| n.trim().parse().ok())
            .max()
            .unwrap_or(0)
    }

    /// Asserts nothing named `vmdump-*` is left in QEMU and returns the run state.
    pub async fn assert_clean(&self) -> Result<String> {
        let jobs = self.qmp.query_jobs().await?;
        if !jobs.is_empty() {
            bail!("jobs left in QEMU: {jobs:?}");
        }
        let nodes = self.qmp.query_named_block_nodes().await?;
        let ours: Vec<_> = nodes
            .iter()
            .filter(|n| n.node_name.starts_with("vmdump-"))
            .map(|n| n.node_name.clone())
            .collect();
        if !ours.is_empty() {
            bail!("nodes left in QEMU: {ours:?}");
        }
        let st = self.qmp.execute("query-status", None).await?;
        Ok(st["status"].as_str().unwrap_or("").to_string())
    }

    /// Waits until `n` jobs named `vmdump-*` exist.
    pub async fn wait_jobs(&self, n: usize) -> Result<()> {
        for _ in 0..1500 {
            let jobs = self.qmp.query_jobs().await?;
            if jobs.iter().filter(|j| j.id.starts_with("vmdump-")).count() >= n {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("backup jobs did not start")
    }

    /// Guest-path write through the device (goes through the copy-before-write filter).
    pub async fn io_write(&self, key: &str, pattern: u8, offset: u64, len: u64) -> Result<()> {
        let cmd =
            format!("qemu-io -d {key}/virtio-backend \"write -P {pattern:#04x} {offset} {len}\"");
        self.qmp.human_monitor_command(&cmd).await?;
        Ok(())
    }

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

/// Fills `len` bytes of a new raw image with deterministic incompressible data at `offset`.
pub fn write_random(path: &Path, offset: u64, len: u64, seed: u64) -> Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut s = seed | 1;
    let mut buf = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        for c in buf.chunks_exact_mut(8) {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            c.copy_from_slice(&s.to_le_bytes());
        }
        let n = left.min(MIB) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

//! QEMU processes owned by a test, laid out as the VM runtime lays out a running VM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use vmdump_qmp::Client;

use crate::testguest_dir;

/// One disk for QEMU: config key (`virtio0`), image path, format (`raw`, `qcow2`).
pub struct Disk<'a> {
    /// Config key; also the device id, the block nodes are `file-<key>` and `drive-<key>`.
    pub key: &'a str,
    /// Image file.
    pub path: &'a Path,
    /// Image format (QEMU block driver name).
    pub format: &'a str,
}

/// `-blockdev`/`-device` arguments for `disks` with the runtime's node names: a protocol node
/// `file-<key>`, a format node `drive-<key>` on top, a virtio-blk device with id `<key>`.
pub fn disk_args(disks: &[Disk<'_>]) -> Vec<String> {
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

/// What QEMU runs.
#[derive(Debug, Clone, Copy)]
pub enum Boot<'a> {
    /// Paused in prelaunch (`-S`, KVM where available): the guest never runs.
    Paused,
    /// The test guest under TCG with a serial log and a guest agent; `append` is added to its
    /// kernel command line (e.g. `vmdump.interval=0.05`).
    TestGuest {
        /// Extra kernel command line.
        append: &'a str,
    },
}

/// A QEMU process owned by a test; killed on drop. Its files live in `dir`: `qmp.sock` (left
/// free for the program under test: QEMU serves one client per monitor), `ctl.sock` (the
/// test's monitor, [`Qemu::qmp`]), `qga.sock`, `serial.log` and `qemu.log`.
pub struct Qemu {
    /// The QEMU process.
    pub child: Child,
    /// The directory of its sockets and logs.
    pub dir: PathBuf,
    /// The monitor left for the program under test.
    pub qmp_path: PathBuf,
    /// The guest agent socket (test guest only).
    pub qga_path: PathBuf,
    /// The test's QMP client, on `ctl.sock`.
    pub qmp: Client,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Qemu {
    /// QEMU paused in prelaunch with `disks`; see [`Qemu::start`].
    pub async fn paused(dir: &Path, disks: &[Disk<'_>]) -> Result<Self> {
        Self::start(dir, disks, Boot::Paused).await
    }

    /// The test guest (TCG) with `disks` (its data disk first, as `virtio0`); see
    /// [`Qemu::start`].
    pub async fn testguest(dir: &Path, disks: &[Disk<'_>], append: &str) -> Result<Self> {
        Self::start(dir, disks, Boot::TestGuest { append }).await
    }

    /// Starts QEMU with its files in `dir` (created if missing) and connects the test's
    /// monitor.
    pub async fn start(dir: &Path, disks: &[Disk<'_>], boot: Boot<'_>) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let qmp_path = dir.join("qmp.sock");
        let ctl_path = dir.join("ctl.sock");
        let qga_path = dir.join("qga.sock");
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-nodefaults", "-display", "none", "-m", "256"]);
        for sock in [&qmp_path, &ctl_path] {
            cmd.arg("-qmp")
                .arg(format!("unix:{},server=on,wait=off", sock.display()));
        }
        match boot {
            Boot::Paused => {
                cmd.args(["-S", "-machine", "q35,accel=kvm:tcg"]);
            }
            Boot::TestGuest { append } => {
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
                        qga_path.display()
                    ))
                    .args(["-device", "virtio-serial-pci,id=vser0"])
                    .args([
                        "-device",
                        "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
                    ]);
            }
        }
        cmd.args(disk_args(disks));
        let log = std::fs::File::create(dir.join("qemu.log"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn qemu-system-x86_64")?;
        let qmp =
            Client::connect_retry(&ctl_path, Duration::from_secs(30), Duration::from_secs(20))
                .await
                .context("connect qmp")?;
        Ok(Self {
            child,
            dir: dir.to_path_buf(),
            qmp_path,
            qga_path,
            qmp,
        })
    }

    /// The serial console so far (empty before the guest writes).
    pub fn serial_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("serial.log")).unwrap_or_default()
    }

    /// Waits (up to 60 s) for the test guest's `ready` line on the serial console.
    pub async fn wait_ready(&self) -> Result<()> {
        for _ in 0..600 {
            if self.serial_log().contains("vmdump-testguest: ready") {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("test guest did not become ready")
    }

    /// The test guest writer's highest tick on the serial console (0 before the first).
    pub fn last_tick(&self) -> u64 {
        self.serial_log()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("vmdump-writer: tick "))
            .filter_map(|n| n.trim().parse().ok())
            .max()
            .unwrap_or(0)
    }

    /// Fails when a job or a block node named `vmdump-*` is left in QEMU; returns the run
    /// state (`running`, `paused`, ...).
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

    /// Waits (up to 30 s) until at least `n` jobs named `vmdump-*` exist.
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

    /// Guest-path write to device `key`; see [`io_write`].
    pub async fn io_write(&self, key: &str, pattern: u8, offset: u64, len: u64) -> Result<()> {
        io_write(&self.qmp, key, pattern, offset, len).await
    }

    /// Sends `quit` and waits (up to 10 s) for the process to exit.
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

/// Writes `len` bytes of `pattern` at `offset` through device `key`'s BlockBackend (HMP
/// `qemu-io -d`), the path guest writes take: through a backup's copy-before-write filter.
pub async fn io_write(qmp: &Client, key: &str, pattern: u8, offset: u64, len: u64) -> Result<()> {
    let cmd = format!("qemu-io -d {key}/virtio-backend \"write -P {pattern:#04x} {offset} {len}\"");
    let out = qmp.human_monitor_command(&cmd).await?;
    if !out.trim().is_empty() {
        bail!("qemu-io: {out}");
    }
    Ok(())
}

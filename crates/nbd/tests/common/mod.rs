//! Shared test helpers: an in-memory export that logs every command, QEMU tool runners,
//! and a tiny QMP client (the qmp crate is a sibling leaf; tests stay independent of it).
#![allow(dead_code)]

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use vmdump_nbd::export::{Capabilities, Export, Extent, WriteFlags, ZeroFlags};
use vmdump_nbd::proto::reply::{STATE_HOLE, STATE_ZERO};

/// One command the export saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Write {
        offset: u64,
        len: u64,
    },
    Zero {
        offset: u64,
        len: u64,
        no_hole: bool,
        fast: bool,
    },
    Trim {
        offset: u64,
        len: u64,
    },
    Flush,
    Read {
        offset: u64,
        len: u64,
    },
}

/// An in-memory disk. Holes are tracked in 64 KiB granules for block status.
pub struct MemExport {
    pub data: Mutex<Vec<u8>>,
    pub allocated: Mutex<Vec<bool>>,
    pub log: Mutex<Vec<Op>>,
    pub caps: Capabilities,
    /// At most this many extents in one block status reply (a server may describe less of
    /// the range than asked); `None`: the whole range.
    pub status_extents: Option<usize>,
}

pub const GRANULE: u64 = 65536;

impl MemExport {
    pub fn new(size: u64) -> Self {
        Self {
            data: Mutex::new(vec![0; size as usize]),
            allocated: Mutex::new(vec![false; size.div_ceil(GRANULE) as usize]),
            log: Mutex::new(Vec::new()),
            caps: Capabilities {
                read: true,
                block_status: true,
                fua: true,
                ..Capabilities::default()
            },
            status_extents: None,
        }
    }

    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(&*self.data.lock().unwrap()))
    }

    pub fn ops(&self) -> Vec<Op> {
        self.log.lock().unwrap().clone()
    }

    fn mark(&self, offset: u64, len: u64, alloc: bool) {
        let mut a = self.allocated.lock().unwrap();
        let first = offset / GRANULE;
        let last = (offset + len).div_ceil(GRANULE);
        for g in first..last {
            // Partial granules stay allocated when a hole is punched into them.
            let whole = g * GRANULE >= offset && (g + 1) * GRANULE <= offset + len;
            if alloc || whole {
                a[g as usize] = alloc;
            }
        }
    }
}

impl Export for MemExport {
    fn size(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn capabilities(&self) -> Capabilities {
        self.caps
    }
    async fn write(&self, offset: u64, data: Bytes, _flags: WriteFlags) -> io::Result<()> {
        self.log.lock().unwrap().push(Op::Write {
            offset,
            len: data.len() as u64,
        });
        let o = offset as usize;
        self.data.lock().unwrap()[o..o + data.len()].copy_from_slice(&data);
        self.mark(offset, data.len() as u64, true);
        Ok(())
    }
    async fn write_zeroes(&self, offset: u64, len: u32, flags: ZeroFlags) -> io::Result<()> {
        self.log.lock().unwrap().push(Op::Zero {
            offset,
            len: len.into(),
            no_hole: flags.no_hole,
            fast: flags.fast_zero,
        });
        let o = offset as usize;
        self.data.lock().unwrap()[o..o + len as usize].fill(0);
        self.mark(offset, len.into(), flags.no_hole);
        Ok(())
    }
    async fn trim(&self, offset: u64, len: u32) -> io::Result<()> {
        self.log.lock().unwrap().push(Op::Trim {
            offset,
            len: len.into(),
        });
        let o = offset as usize;
        self.data.lock().unwrap()[o..o + len as usize].fill(0);
        self.mark(offset, len.into(), false);
        Ok(())
    }
    async fn flush(&self) -> io::Result<()> {
        self.log.lock().unwrap().push(Op::Flush);
        Ok(())
    }
    async fn read(&self, offset: u64, len: u32) -> io::Result<Bytes> {
        self.log.lock().unwrap().push(Op::Read {
            offset,
            len: len.into(),
        });
        let o = offset as usize;
        Ok(Bytes::copy_from_slice(
            &self.data.lock().unwrap()[o..o + len as usize],
        ))
    }
    async fn block_status(&self, offset: u64, len: u32) -> io::Result<Vec<Extent>> {
        let a = self.allocated.lock().unwrap();
        let end = offset + u64::from(len);
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let g = pos / GRANULE;
            let next = ((g + 1) * GRANULE).min(end);
            let flags = if a[g as usize] {
                0
            } else {
                STATE_HOLE | STATE_ZERO
            };
            let n = (next - pos) as u32;
            match out.last_mut() {
                Some(e) if e.flags == flags => e.length += n,
                _ => out.push(Extent { length: n, flags }),
            }
            pos = next;
        }
        if let Some(n) = self.status_extents {
            out.truncate(n);
        }
        Ok(out)
    }
}

/// Runs a program, panicking with its stderr when it fails; returns stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a program and returns (success, stdout + stderr).
pub async fn run_status(program: &str, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Async version of [`run`] (keeps the tokio workers free for the server under test).
pub async fn run_async(program: &str, args: &[&str]) -> String {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

pub fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// A 64 MiB-ish qcow2 with data, qcow2 zero clusters, a 4 KiB write and unallocated gaps.
/// `qemu-img convert -O raw src dst`: the guest-visible bytes of an image, as a reference.
pub fn convert_to_raw(src: &Path, dst: &Path) {
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            src.to_str().unwrap(),
            dst.to_str().unwrap(),
        ],
    );
}

pub fn make_test_qcow2(dir: &Path, size_mib: u64) -> PathBuf {
    let path = dir.join("src.qcow2");
    let p = path.to_str().unwrap();
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", p, &format!("{size_mib}M")],
    );
    // (command, end of the range in MiB)
    let cmds = [
        ("write -P 0x11 0 1M", 1),
        ("write -P 0x22 5M 3M", 8),
        ("write -P 0x33 12M 64k", 13),
        ("write -P 0x44 13M 4k", 14),
        ("write -z 14M 1M", 15),
        ("write -P 0x55 20M 2M", 22),
        ("write -P 0x66 40M 512k", 41),
    ];
    let mut args = vec!["-f", "qcow2"];
    for (c, end) in &cmds {
        if *end > size_mib - 1 {
            continue;
        }
        args.push("-c");
        args.push(c);
    }
    args.push(p);
    run("qemu-io", &args);
    let last = format!("write -P 0x77 {}M 1M", size_mib - 1);
    run("qemu-io", &["-f", "qcow2", "-c", &last, p]);
    path
}

/// Minimal QMP over a unix socket: commands and events as JSON lines.
pub struct Qmp {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
    pub events: Vec<serde_json::Value>,
}

impl Qmp {
    pub async fn connect(path: &Path) -> Self {
        let mut tries = 0;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("qmp connect {}: {e}", path.display()),
            }
        };
        let (r, w) = stream.into_split();
        let mut qmp = Self {
            reader: BufReader::new(r),
            writer: w,
            events: Vec::new(),
        };
        let greeting = qmp.line().await;
        assert!(
            greeting.get("QMP").is_some(),
            "not a QMP greeting: {greeting}"
        );
        qmp.execute("qmp_capabilities", serde_json::json!({})).await;
        qmp
    }

    async fn line(&mut self) -> serde_json::Value {
        let mut s = String::new();
        let n = tokio::time::timeout(Duration::from_secs(60), self.reader.read_line(&mut s))
            .await
            .expect("qmp timeout")
            .expect("qmp read");
        assert!(n > 0, "qmp closed");
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("bad qmp line {s:?}: {e}"))
    }

    /// Runs a command; panics on an error reply.
    pub async fn execute(&mut self, cmd: &str, args: serde_json::Value) -> serde_json::Value {
        let r = self.try_execute(cmd, args).await;
        r.unwrap_or_else(|e| panic!("{cmd} failed: {e}"))
    }

    pub async fn try_execute(
        &mut self,
        cmd: &str,
        args: serde_json::Value,
    ) -> Result<serde_json::Value, serde_json::Value> {
        let msg = serde_json::json!({"execute": cmd, "arguments": args});
        self.writer
            .write_all(format!("{msg}\n").as_bytes())
            .await
            .unwrap();
        loop {
            let v = self.line().await;
            if v.get("event").is_some() {
                self.events.push(v);
            } else if let Some(r) = v.get("return") {
                return Ok(r.clone());
            } else if let Some(e) = v.get("error") {
                return Err(e.clone());
            }
        }
    }

    /// Waits for an event by name (already-received ones count).
    pub async fn wait_event(&mut self, name: &str) -> serde_json::Value {
        if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
            return self.events.remove(i);
        }
        loop {
            let v = self.line().await;
            if v["event"] == name {
                return v;
            }
            if v.get("event").is_some() {
                self.events.push(v);
            }
        }
    }
}

//! Test support for the vmdump test suites; a `[dev-dependencies]` entry only, never shipped.
//!
//! # Design
//!
//! The end-to-end suites (cli, engine, guest, compress) all run real tools: QEMU 7.2, `qemu-img`,
//! the compressors and dissect.archive, an independent Python reader of VMA archives used as the
//! oracle. What they share lives here, once:
//!
//! * [`process`]: run a command and get its stdout, or an error naming the command, its status
//!   and both output streams.
//! * [`digest`]: sha256 of a file and of an image's guest-visible bytes (non-raw images are
//!   converted by `qemu-img` first).
//! * [`oracle`]: devices, configs and device bytes of an archive as dissect.archive reads them,
//!   and decompression of `.vma.zst|.lzo|.gz` archives by the real tools.
//! * [`qemu`]: a QEMU process laid out as the VM runtime (`vmdump-guest`) lays it out: block
//!   nodes `file-<key>` and `drive-<key>`, device id `<key>`, sockets `qmp.sock`, `qga.sock`
//!   and a second monitor `ctl.sock` for the test, so `qmp.sock` stays free for the program
//!   under test. Paused (the guest never runs, KVM where available) or booting the test guest
//!   (TCG).
//! * [`pve_vma`]: Proxmox's own `vma` binary, the reference the VMA suites compare with.
//! * [`pattern`]: deterministic pseudo-random data (xorshift64) for disks and buffers.
//! * [`faultfs`]: a FUSE passthrough to a backing directory whose faults a test switches at
//!   run time: failing `fsync`/`flush` for matching names, a disk that fills up, a write
//!   throughput cap (also as the `faultfs` binary, for benchmark scripts).
//! * [`mount`]: a btrfs on a loop file or a small tmpfs, mounted until dropped.
//!
//! Helpers return `anyhow::Result` so tests can use `?`; a missing tool is an error, never a
//! skipped test. What only one suite needs stays in that suite.
#![forbid(unsafe_code)]

pub mod digest;
pub mod faultfs;
pub mod mount;
pub mod oracle;
pub mod pattern;
pub mod process;
pub mod qemu;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

pub use digest::{image_sha256, sha256_bytes, sha256_file};
pub use faultfs::{FaultFs, Faults};
pub use oracle::{dissect_config, dissect_devices, dissect_extract, plain_vma, unpack};
pub use pattern::{pseudo_random, write_random, Rng};
pub use process::{
    expect_exit, expect_success, kill_pidfile, output_text, pid_alive, run, run_output,
};
pub use qemu::{io_write, Boot, Disk, Qemu};

/// One MiB, the unit of most test disk sizes.
pub const MIB: u64 = 1 << 20;

/// The workspace root (the directory holding `testguest/` and `.cache/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Proxmox's own `vma` tool, the reference for archive compatibility: `PVE_VMA` if set, else
/// `../shared/tools/pve-vma/vma` beside the repository (read-only in CI; its README names
/// the runtime libraries `scripts/setup.sh` installs).
///
/// # Panics
/// When the binary is missing: the compatibility tests never skip.
pub fn pve_vma() -> PathBuf {
    let path = std::env::var_os("PVE_VMA")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/tools/pve-vma/vma"));
    assert!(
        path.is_file(),
        "Proxmox's vma tool is missing at {} (see shared/tools/pve-vma/README.md; \
         PVE_VMA=<path> overrides the location)",
        path.display()
    );
    path
}

/// The built test guest (`vmlinuz`, `initrd.gz`, `data.raw`, `vm.conf`) in
/// `.cache/testguest`, built by `testguest/build.sh` first when it is missing.
///
/// # Panics
/// When the build script cannot run or fails: no test can go on without the guest.
pub fn testguest_dir() -> PathBuf {
    let root = repo_root();
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

/// Checks a test guest data disk from the host with `testguest/check.sh` (e2fsck -fn, the seed
/// files' checksums, the writer's files) and returns the writer tick it holds; an error when
/// the check fails, prints no `ok tick=<n>` or the tick is below `min_tick`.
pub fn check_disk(disk: &Path, min_tick: u64) -> Result<u64> {
    check_disk_with(disk, min_tick, false)
}

/// [`check_disk`] of a crash-consistent image (taken without a freeze, e.g. in suspend mode):
/// `check.sh --recover` replays the ext4 journal on a copy first.
pub fn check_disk_recover(disk: &Path, min_tick: u64) -> Result<u64> {
    check_disk_with(disk, min_tick, true)
}

fn check_disk_with(disk: &Path, min_tick: u64, recover: bool) -> Result<u64> {
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("testguest/check.sh"));
    if recover {
        cmd.arg("--recover");
    }
    let out = run(cmd.arg(disk).arg(min_tick.to_string()))?;
    let tick = out
        .strip_prefix("ok tick=")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|t| t.parse::<u64>().ok())
        .with_context(|| format!("check.sh {}: no tick in {out:?}", disk.display()))?;
    if tick < min_tick {
        bail!("check.sh {}: tick {tick} < {min_tick}", disk.display());
    }
    Ok(tick)
}

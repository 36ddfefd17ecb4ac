//! Push backups of paused QEMUs (real QEMU 7.2, KVM or TCG, guest never runs): consistency
//! under guest-path writes during a throttled job, on raw and qcow2, multi-disk point in time,
//! sizes that are not cluster multiples, the dissect.archive oracle, and compression.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use vmdump_config::Codec;
use vmdump_engine::{live_backup, Level, LiveOptions, LiveOutcome, Progress, TaskLog};
use vmdump_testkit::{dissect_devices, image_sha256, run, unpack, Disk, Qemu, Rng, MIB};

/// Collects log lines for assertions.
#[derive(Default)]
struct Lines(std::sync::Mutex<Vec<String>>);

impl Progress for Lines {
    fn log(&self, level: Level, line: &str, _progress: bool) {
        self.0
            .lock()
            .expect("lock")
            .push(format!("{}: {line}", level.prefix()));
    }
}

/// A raw disk with data, zero areas and a hole, and a qcow2 disk whose size is not a multiple
/// of 64 KiB, both with deterministic content from `seed`.
fn make_disks(dir: &Path, seed: u64) -> Result<()> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let raw = dir.join("a.raw");
    let f = std::fs::File::create(&raw)?;
    f.set_len(40 * MIB)?;
    drop(f);
    let q = dir.join("b.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&q)
        .arg((24 * MIB + 12288).to_string()))?;
    for (img, fmt, size) in [(&raw, "raw", 40 * MIB), (&q, "qcow2", 24 * MIB)] {
        let mut cmd = Command::new("qemu-io");
        cmd.args(["-f", fmt]);
        for _ in 0..12 {
            let off = rng.below(size / 65536) * 65536 + rng.below(16) * 512;
            let len = (1 + rng.below(512)) * 512 * 4;
            let len = len.min(size - off);
            let pat = 1 + rng.below(250);
            cmd.arg("-c").arg(format!("write -P {pat} {off} {len}"));
        }
        cmd.arg(img);
        run(&mut cmd)?;
    }
    Ok(())
}

/// One disk of a round: config key, image, format, virtual size.
struct RoundDisk<'a> {
    key: &'static str,
    path: &'a Path,
    format: &'static str,
    size: u64,
}

/// A guest-path write: disk key, byte pattern, offset, length.
type GuestWrite = (&'static str, u8, u64, u64);

/// Backs up the `disks` of a paused QEMU at `speed` while guest-path writes from
/// `round_writes(n)` go on (once every job runs, every 30 ms, at most 60 rounds, until the backup
/// ends). Checks what every consistency round must hold: at least five write rounds ran during
/// the backup, nothing of ours is left in QEMU, the writes reached every disk, and the archive
/// holds each disk as it was when the jobs started. Returns the outcome and the log.
async fn backup_under_writes(
    dir: &Path,
    disks: &[RoundDisk<'_>],
    speed: u64,
    compress: Codec,
    mut round_writes: impl FnMut(u64) -> Vec<GuestWrite>,
) -> Result<(LiveOutcome, String)> {
    let mut want = Vec::new();
    for d in disks {
        want.push(image_sha256(d.path, d.format, dir)?);
    }
    let spec: Vec<Disk<'_>> = disks
        .iter()
        .map(|d| Disk {
            key: d.key,
            path: d.path,
            format: d.format,
        })
        .collect();
    let qemu = Qemu::paused(dir, &spec).await?;
    let mut opts = LiveOptions::new(100);
    opts.speed = speed;
    opts.compress = compress;
    opts.socket_dir = dir.to_path_buf();
    let dat = dir.join("out.dat");
    let lines = Lines::default();
    let keys: Vec<String> = disks.iter().map(|d| d.key.to_string()).collect();
    let configs = vec![("qemu-server.conf".to_string(), b"memory: 256\n".to_vec())];

    let writer_done = Arc::new(AtomicBool::new(false));
    let writes = {
        let qemu = &qemu;
        let done = Arc::clone(&writer_done);
        async move {
            // The first round lands right after the jobs start (one point in time means none
            // of these may show up in the archive), the rest while they run.
            qemu.wait_jobs(disks.len()).await?;
            let mut n = 0;
            while !done.load(Ordering::Relaxed) && n < 60 {
                for (key, pat, off, len) in round_writes(n) {
                    qemu.io_write(key, pat, off, len).await?;
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            anyhow::Ok(n)
        }
    };
    let log = TaskLog::new(&lines);
    let backup = async {
        let r = live_backup(&qemu.qmp, &keys, &configs, &dat, &opts, &log).await;
        writer_done.store(true, Ordering::Relaxed);
        r
    };
    let (outcome, n_writes) = tokio::join!(backup, writes);
    let outcome = outcome?;
    let n_writes = n_writes?;
    assert!(
        n_writes >= 5,
        "only {n_writes} write rounds during the backup"
    );
    qemu.assert_clean().await?;
    qemu.quit().await?;

    // The guest writes landed on the disks...
    for (d, want) in disks.iter().zip(&want) {
        assert_ne!(
            &image_sha256(d.path, d.format, dir)?,
            want,
            "writes did not reach {}",
            d.key
        );
    }
    // ...but the archive holds the disks as they were when the jobs started.
    let plain = dir.join("plain.vma");
    unpack(
        &dat,
        compress.vma_extension().trim_start_matches(".vma"),
        &plain,
    )?;
    let expected: Vec<(String, u64, String)> = disks
        .iter()
        .zip(want)
        .map(|(d, w)| (format!("drive-{}", d.key), d.size, w))
        .collect();
    assert_eq!(dissect_devices(&plain)?, expected);
    let text = lines.0.lock().expect("lock").join("\n");
    Ok((outcome, text))
}

async fn consistency_round(seed: u64, compress: Codec) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    make_disks(dir, seed)?;
    let (raw, q) = (dir.join("a.raw"), dir.join("b.qcow2"));
    let disks = [
        RoundDisk {
            key: "virtio0",
            path: &raw,
            format: "raw",
            size: 40 * MIB,
        },
        RoundDisk {
            key: "virtio1",
            path: &q,
            format: "qcow2",
            size: 24 * MIB + 12288,
        },
    ];
    let mut rng = Rng(seed | 1);
    // 64 MiB at 16 MiB/s: about 4 s, so the writes hit copied and uncopied regions of both.
    let (outcome, text) = backup_under_writes(dir, &disks, 16 * MIB, compress, |_| {
        [("virtio0", 40 * MIB), ("virtio1", 24 * MIB)]
            .into_iter()
            .map(|(key, size)| {
                let off = rng.below(size / 512) * 512;
                let len = ((1 + rng.below(128)) * 512).min(size - off);
                (key, 1 + rng.below(250) as u8, off, len)
            })
            .collect()
    })
    .await?;
    assert_eq!(outcome.transfer.transferred, 64 * MIB + 12288);
    assert!(outcome.transfer.zero > 0);
    assert!(text.contains("starting backup via QMP command"), "{text}");
    assert!(text.contains("started backup task '"), "{text}");
    assert!(text.contains("100% (64.0 MiB of 64.0 MiB)"), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_vm_consistent_under_writes_raw_and_qcow2() -> Result<()> {
    for seed in [1, 2, 3] {
        consistency_round(seed, Codec::None).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_vm_consistent_compressed() -> Result<()> {
    consistency_round(11, Codec::Zstd).await?;
    consistency_round(12, Codec::Lzo).await?;
    consistency_round(13, Codec::Gzip).await
}

/// A qcow2 without a backing file is copied with `sync=top`: only its allocated clusters travel
/// and the archive records the rest as zero; a qcow2 with a backing file is copied whole (its
/// unallocated clusters read the backing file's data). Guest writes during the jobs, to
/// never-allocated, allocated and backing-provided clusters, must not reach the archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thin_qcow2_travels_allocated_clusters_only_and_a_backing_file_is_read() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let qemu_img = |args: &[&str]| run(Command::new("qemu-img").args(args));
    let qemu_io = |img: &Path, writes: &[(u8, u64, u64)]| {
        let mut cmd = Command::new("qemu-io");
        cmd.args(["-f", "qcow2"]);
        for (pat, off, len) in writes {
            cmd.arg("-c").arg(format!("write -P {pat} {off} {len}"));
        }
        run(cmd.arg(img))
    };
    // The clone: 64 MiB, its base holds data at 0 and 20 MiB, the clone itself at 40 MiB.
    let base = dir.join("base.qcow2");
    let clone = dir.join("clone.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", path_str(&base), "64M"])?;
    qemu_io(&base, &[(0x11, 0, MIB), (0x22, 20 * MIB, 2 * MIB)])?;
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        path_str(&base),
        path_str(&clone),
    ])?;
    qemu_io(&clone, &[(0x33, 40 * MIB, MIB)])?;
    // The thin disk: 512 MiB + 12 KiB, 16 pieces of 3 MiB and the short last cluster.
    let size = 512 * MIB + 12288;
    let thin = dir.join("thin.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        path_str(&thin),
        &size.to_string(),
    ])?;
    let mut pieces: Vec<(u8, u64, u64)> = (0..16u8)
        .map(|i| (0x40 + i, (u64::from(i) * 30 + 1) * MIB, 3 * MIB))
        .collect();
    pieces.push((0x66, 512 * MIB, 12288));
    qemu_io(&thin, &pieces)?;
    let disks = [
        RoundDisk {
            key: "virtio0",
            path: &clone,
            format: "qcow2",
            size: 64 * MIB,
        },
        RoundDisk {
            key: "virtio1",
            path: &thin,
            format: "qcow2",
            size,
        },
    ];
    let mut rng = Rng(7);
    // 64 MiB (the clone, whole) and 48 MiB (the thin disk's data) at 24 MiB/s: 2-3 s.
    let (outcome, _) = backup_under_writes(dir, &disks, 24 * MIB, Codec::None, |n| {
        let piece = rng.below(16);
        // The thin disk: never allocated, allocated (maybe not copied yet), the short last
        // cluster.
        let hole = (piece * 30 + 10 + rng.below(15)) * MIB + rng.below(64) * 4096;
        let data = (piece * 30 + 1) * MIB + rng.below(3 * 256) * 4096;
        let mut w = vec![("virtio1", 0xa0, hole, 4096), ("virtio1", 0xa1, data, 4096)];
        if n == 0 {
            w.push(("virtio1", 0xa2, 512 * MIB, 4096));
        }
        // The clone: base data, clone data, nothing anywhere.
        w.push(("virtio0", 0xb0, rng.below(256) * 4096, 4096));
        w.push(("virtio0", 0xb1, (5120 + rng.below(256)) * 4096, 4096));
        w.push(("virtio0", 0xb2, 40 * MIB + rng.below(256) * 4096, 4096));
        w
    })
    .await?;
    assert_eq!(
        outcome.disks.iter().map(|d| d.top_only).collect::<Vec<_>>(),
        vec![false, true],
        "only the disk without a backing file is copied with sync=top"
    );
    // The thin disk's 48 MiB and last cluster travelled; everything else was recorded as
    // zero without QEMU sending it.
    assert_eq!(outcome.unallocated, size - 48 * MIB - 12288);
    assert_eq!(outcome.transfer.transferred, 64 * MIB + size);
    Ok(())
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

//! The request rules of the fleecing pull path against real QEMU (paused, the guest never
//! runs): the graph of `docs/design/fleecing.md` built by hand, guest-path writes copy old
//! clusters into the fleecing image, then reads through `vmdump_blockdev::SnapshotExport`
//! under `SnapshotRules::for_qemu` of the QEMU that runs (64 KiB pieces on 7.2, whole
//! requests from 8.0 on): block status and reads of ranges that start in a copied cluster and
//! run past it give the point-in-time data (the case of QEMU 7.2's `hbitmap_status()` bug);
//! discards of whole clusters (unaligned edges skipped, which would abort 7.2) empty the
//! fleecing image. CI runs it on 7.2; with a newer QEMU first in `PATH` it checks the 8.0 rules.

use std::process::Command;

use anyhow::Result;
use serde_json::json;
use vmdump_blockdev::{SnapshotExport, SnapshotRules, SparsePiece};
use vmdump_qmp::NbdExport;
use vmdump_testkit::{run, write_random, Disk, Qemu, MIB};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_of_the_running_qemu_read_the_snapshot_across_copied_clusters() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let disk = tmp.path().join("a.raw");
    let size = 8 * MIB;
    std::fs::File::create(&disk)?.set_len(size)?;
    write_random(&disk, 0, size, 41)?;
    let want = std::fs::read(&disk)?;
    let fleece = tmp.path().join("fleece.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&fleece)
        .arg(size.to_string()))?;
    let vm = Qemu::paused(
        &tmp.path().join("run"),
        &[Disk {
            key: "virtio0",
            path: &disk,
            format: "raw",
        }],
    )
    .await?;
    let version = vm.qmp.greeting().version;
    let rules = SnapshotRules::for_qemu(version.major, version.minor);
    let q = &vm.qmp;
    q.blockdev_add(
        json!({"driver": "qcow2", "node-name": "fl0", "discard": "unmap",
        "file": {"driver": "file", "filename": fleece, "discard": "unmap"}}),
    )
    .await?;
    q.blockdev_add(json!({"driver": "copy-before-write", "node-name": "cbw0",
        "file": "drive-virtio0", "target": "fl0", "on-cbw-error": "break-snapshot",
        "cbw-timeout": 45}))
        .await?;
    q.qom_set(
        "/machine/peripheral/virtio0/virtio-backend",
        "drive",
        json!("cbw0"),
    )
    .await?;
    q.blockdev_add(json!({"driver": "snapshot-access", "node-name": "snap0",
        "file": "cbw0", "discard": "unmap"}))
        .await?;
    let sock = tmp.path().join("snap.sock");
    q.nbd_server_start_unix(&sock).await?;
    let mut export = NbdExport::new("exp0", "snap0", "snap");
    export.writable = true;
    q.block_export_add(&export).await?;

    // Guest writes after the instant: zeroes over the cluster at 1 MiB, 4 KiB of data inside
    // the cluster at 3 MiB + 64 KiB, zeroes over 128 KiB at 5 MiB + 32 KiB (three clusters
    // copied); the zeroed ranges become holes of the live disk.
    let zero = |off: u64, len: u64| {
        let cmd = format!("qemu-io -d virtio0/virtio-backend \"write -z -u {off} {len}\"");
        async move { q.human_monitor_command(&cmd).await }
    };
    zero(MIB, 65536).await?;
    vm.io_write("virtio0", 0xa2, 3 * MIB + 65536 + 4096, 4096)
        .await?;
    zero(5 * MIB + 32768, 131072).await?;
    // The writes reached the live disk (so the snapshot differs from it there).
    let live = std::fs::read(&disk)?;
    assert!(live[MIB as usize..(MIB + 65536) as usize]
        .iter()
        .all(|&b| b == 0));
    assert!(
        live[MIB as usize..(MIB + 65536) as usize] != want[MIB as usize..(MIB + 65536) as usize]
    );

    let good = SnapshotExport::connect(&sock, "snap", rules).await?;
    // What the engine reads of a range: block status, then the data ranges.
    async fn pull(s: &SnapshotExport, start: u64, len: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for e in s.extents(start..start + len).await? {
            let (from, to) = (e.offset.max(start), e.end().min(start + len));
            if e.zero {
                out.resize(out.len() + (to - from) as usize, 0);
            } else {
                out.extend_from_slice(&s.read(from, to - from).await?);
            }
        }
        Ok(out)
    }
    // Ranges that start in a copied cluster and run past the copied run.
    for start in [MIB, 3 * MIB + 65536, 5 * MIB] {
        let len = 2 * MIB;
        let range = start as usize..(start + len) as usize;
        assert!(
            pull(&good, start, len).await?[..] == want[range],
            "{version} rules: wrong data at {start}"
        );
    }
    // The whole disk reads as the instant, and block status agrees with the data.
    let all = good.read(0, size).await?;
    assert!(all[..] == want[..], "snapshot differs from the instant");
    assert!(pull(&good, 0, size).await?[..] == want[..]);
    // The engine's read: sparse pieces (data, and holes without their bytes), in order.
    let mut sparse = Vec::new();
    for p in good.read_sparse(0, size).await? {
        match p {
            SparsePiece::Data { offset, data } => {
                assert_eq!(offset, sparse.len() as u64);
                sparse.extend_from_slice(&data);
            }
            SparsePiece::Zero { offset, len } => {
                assert_eq!(offset, sparse.len() as u64);
                sparse.resize(sparse.len() + len as usize, 0);
            }
        }
    }
    assert!(
        sparse[..] == want[..],
        "sparse read differs from the instant"
    );
    // Discarding what was read empties the fleecing image (unaligned edges are skipped).
    let before = std::fs::metadata(&fleece)?.len();
    good.discard(4096, size - 4096).await?;
    good.discard(0, 65536).await?;
    use std::os::unix::fs::MetadataExt;
    let held = std::fs::metadata(&fleece)?.blocks() * 512;
    assert!(
        held < 512 * 1024,
        "fleecing image holds {held} bytes after the discard ({before})"
    );
    good.close().await?;
    vm.quit().await?;
    Ok(())
}

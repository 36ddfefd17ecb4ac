//! Our server against real QEMU 7.2 clients: qemu-img convert, qemu-io, qemu-img map, and a
//! push `blockdev-backup` from a paused qemu-system-x86_64 while the disk is being written.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::{
    convert_to_raw, make_test_qcow2, run_async, run_status, sha256_file, MemExport, Op, Qmp,
};
use vmdump_nbd::server::CloseReason;
use vmdump_nbd::{Server, ServerOptions};

fn nbd_uri(sock: &std::path::Path, export: &str) -> String {
    format!("nbd+unix:///{export}?socket={}", sock.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_convert_into_server_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let src = make_test_qcow2(dir.path(), 64);
    let reference = dir.path().join("ref.raw");
    convert_to_raw(&src, &reference);

    let export = Arc::new(MemExport::new(64 << 20));
    // Start from garbage so zero ranges must really be written.
    export.data.lock().unwrap().fill(0xee);
    let mut server = Server::new(ServerOptions::default());
    server.add_export("backup", Arc::clone(&export));
    let sock = dir.path().join("nbd.sock");
    let mut handle = server.serve_unix(&sock).await.unwrap();

    run_async(
        "qemu-img",
        &[
            "convert",
            "-n",
            "-f",
            "qcow2",
            "-O",
            "raw",
            src.to_str().unwrap(),
            &nbd_uri(&sock, "backup"),
        ],
    )
    .await;

    let done = tokio::time::timeout(Duration::from_secs(10), handle.wait_disconnect("backup"))
        .await
        .expect("disconnect event")
        .expect("server running");
    assert_eq!(done.reason, CloseReason::Disc, "{done:?}");
    assert!(done.is_clean_commit(), "{done:?}");
    assert_eq!(export.sha256(), sha256_file(&reference));
    let ops = export.ops();
    assert!(ops.iter().any(|o| matches!(o, Op::Zero { .. })), "{ops:?}");
    assert_eq!(ops.last(), Some(&Op::Flush));
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_write_zeroes_trim_flush_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let export = Arc::new(MemExport::new(16 << 20));
    let mut server = Server::new(ServerOptions::default());
    server.add_export("disk", Arc::clone(&export));
    let sock = dir.path().join("nbd.sock");
    let mut handle = server.serve_unix(&sock).await.unwrap();
    let uri = nbd_uri(&sock, "disk");

    let out = run_async(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0xab 0 2M",
            "-c",
            "write -z 1M 64k",
            "-c",
            "discard 1536k 64k",
            "-c",
            "write -P 0xcd 3M 4k",
            "-c",
            "flush",
            "-c",
            "read -P 0xab 0 1M",
            "-c",
            "read -P 0 1M 64k",
            "-c",
            "read -P 0 1536k 64k",
            "-c",
            "read -P 0xab 1600k 448k",
            "-c",
            "read -P 0xcd 3M 4k",
            "-c",
            "read -P 0 3076k 1M",
            &uri,
        ],
    )
    .await;
    assert!(!out.contains("fail"), "qemu-io reported a failure:\n{out}");
    assert_eq!(out.matches("read ").count(), 6, "{out}");
    let done = handle.wait_disconnect("disk").await.unwrap();
    assert!(done.is_clean_commit(), "{done:?}");
    let ops = export.ops();
    assert!(ops.contains(&Op::Trim {
        offset: 1536 << 10,
        len: 64 << 10
    }));
    assert!(ops.iter().any(
        |o| matches!(o, Op::Zero { offset, len, .. } if *offset == 1 << 20 && *len == 64 << 10)
    ));
    assert!(ops.contains(&Op::Flush));

    // A wrong pattern must be detected through our read path (guards the assertion above).
    let (ok, out) = run_status("qemu-io", &["-f", "raw", "-c", "read -P 0x99 0 4k", &uri]).await;
    assert!(!ok && out.contains("Pattern verification failed"), "{out}");
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_map_sees_base_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let export = Arc::new(MemExport::new(8 << 20));
    let mut server = Server::new(ServerOptions::default());
    server.add_export("disk", Arc::clone(&export));
    let sock = dir.path().join("nbd.sock");
    let mut handle = server.serve_unix(&sock).await.unwrap();
    let uri = nbd_uri(&sock, "disk");
    run_async("qemu-io", &["-f", "raw", "-c", "write -P 1 1M 128k", &uri]).await;
    let out = run_async("qemu-img", &["map", "--output=json", "-f", "raw", &uri]).await;
    let map: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let data: Vec<(u64, u64)> = map
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect();
    assert_eq!(data, vec![(1 << 20, 128 << 10)], "{out}");
    let _ = handle.wait_disconnect("disk").await;
    handle.shutdown().await;
}

/// The lab note's push sequence (§A): a throttled `blockdev-backup` from a paused VM into our
/// server while qemu-io writes to not-yet-copied regions; the target must equal the disk at
/// job start, and the close must arrive as FLUSH + DISC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_blockdev_backup_records_point_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let size_mib = 32;
    let disk = make_test_qcow2(dir.path(), size_mib);
    let at_start = dir.path().join("at-start.raw");
    convert_to_raw(&disk, &at_start);

    let export = Arc::new(MemExport::new(size_mib << 20));
    let mut server = Server::new(ServerOptions::default());
    server.add_export("backup", Arc::clone(&export));
    let sock = dir.path().join("nbd.sock");
    let mut handle = server.serve_unix(&sock).await.unwrap();

    let qmp_sock = dir.path().join("qmp.sock");
    let log = std::fs::File::create(dir.path().join("qemu.log")).unwrap();
    let accel = if std::path::Path::new("/dev/kvm").exists() {
        "q35,accel=kvm:tcg"
    } else {
        "q35,accel=tcg"
    };
    let mut qemu = tokio::process::Command::new("qemu-system-x86_64")
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-machine",
            accel,
            "-m",
            "128",
            "-S",
            "-qmp",
            &format!("unix:{},server=on,wait=off", qmp_sock.display()),
            "-blockdev",
            &format!("driver=file,filename={},node-name=file0", disk.display()),
            "-blockdev",
            "driver=qcow2,file=file0,node-name=disk0",
            "-device",
            "virtio-blk-pci,drive=disk0,id=vda",
        ])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("qemu-system-x86_64");
    let mut qmp = Qmp::connect(&qmp_sock).await;
    qmp.execute(
        "blockdev-add",
        serde_json::json!({"driver":"nbd","node-name":"tgt0",
            "server":{"type":"unix","path":sock.to_str().unwrap()},"export":"backup"}),
    )
    .await;
    assert!(matches!(
        handle.next_event().await,
        Some(vmdump_nbd::server::Event::Connected { .. })
    ));
    // 8 MiB/s: the job copies in offset order, about 4 s for 32 MiB.
    qmp.execute(
        "blockdev-backup",
        serde_json::json!({"job-id":"bk0","device":"disk0","target":"tgt0","sync":"full",
            "speed": 8 << 20,"filter-node-name":"cbw0","auto-dismiss":false}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Guest-style writes into regions the job has not reached yet: old data must be pushed.
    for cmd in [
        "write -P 0xa1 20M 64k", // over 0x55 data
        "write -P 0xa2 24M 64k", // into an unallocated region
        "write -P 0xa4 31M 1M",  // over the 0x77 tail
        "write -z 5M 1M",        // zeroes over 0x22 data
    ] {
        qmp.execute(
            "human-monitor-command",
            serde_json::json!({"command-line": format!("qemu-io -d vda/virtio-backend \"{cmd}\"")}),
        )
        .await;
    }
    let completed = qmp.wait_event("BLOCK_JOB_COMPLETED").await;
    assert!(completed["data"].get("error").is_none(), "{completed}");
    assert_eq!(completed["data"]["offset"], completed["data"]["len"]);
    qmp.execute("job-dismiss", serde_json::json!({"id":"bk0"}))
        .await;
    // Before blockdev-del nothing is flushed; afterwards FLUSH + DISC arrive.
    assert!(!export.ops().contains(&Op::Flush));
    qmp.execute("blockdev-del", serde_json::json!({"node-name":"tgt0"}))
        .await;
    let done = tokio::time::timeout(Duration::from_secs(10), handle.wait_disconnect("backup"))
        .await
        .expect("disconnect")
        .unwrap();
    assert!(done.is_clean_commit(), "{done:?}");
    assert_eq!(export.ops().last(), Some(&Op::Flush));

    assert_eq!(
        export.sha256(),
        sha256_file(&at_start),
        "target differs from the disk at job start"
    );

    qmp.execute("quit", serde_json::json!({})).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), qemu.wait()).await;
    // The writes really landed on the disk, so the equality above is not vacuous.
    let now = dir.path().join("now.raw");
    convert_to_raw(&disk, &now);
    assert_ne!(sha256_file(&now), sha256_file(&at_start));
    let now_bytes = std::fs::read(&now).unwrap();
    assert!(now_bytes[20 << 20..(20 << 20) + 65536]
        .iter()
        .all(|b| *b == 0xa1));
    assert!(now_bytes[5 << 20..6 << 20].iter().all(|b| *b == 0));

    // What QEMU 7.2 sent, for the docs: zero clusters as WRITE_ZEROES with NO_HOLE, writes in
    // whole 64 KiB clusters.
    let ops = export.ops();
    assert!(ops.iter().any(|o| matches!(
        o,
        Op::Zero {
            no_hole: true,
            fast: false,
            ..
        }
    )));
    for op in &ops {
        if let Op::Write { offset, len } | Op::Zero { offset, len, .. } = op {
            assert_eq!(offset % 65536, 0, "{op:?}");
            assert!(len % 65536 == 0 || offset + len == size_mib << 20, "{op:?}");
        }
    }
    let log = std::fs::read_to_string(dir.path().join("qemu.log")).unwrap();
    eprintln!("qemu log:\n{log}");
    handle.shutdown().await;
}

//! QMP client against a real, paused QEMU 7.2 (`-S`, TCG): status, events, block graph,
//! jobs, bitmaps, NBD exports and error reporting.

mod common;

use std::time::{Duration, Instant};

use serde_json::json;
use vmdump_qmp::event::name;
use vmdump_qmp::{
    Action, BitmapAdd, BitmapMerge, BitmapRef, BlockdevBackup, Client, CompletionMode, Error,
    ErrorKind, NbdExport, RunState, SyncMode,
};

const MIB: u64 = 1024 * 1024;
const T: Duration = Duration::from_secs(20);

async fn null_target(qmp: &Client, node: &str) {
    qmp.blockdev_add(json!({"driver": "null-co", "node-name": node, "size": 64 * MIB}))
        .await
        .expect("blockdev-add null-co");
}

#[tokio::test]
async fn status_and_stop_cont_events() {
    let qemu = common::paused_vm();
    let qmp = Client::connect(&qemu.qmp).await.expect("connect");
    assert_eq!(
        qmp.greeting().version.major,
        7,
        "greeting {:?}",
        qmp.greeting()
    );

    let st = qmp.query_status().await.expect("query-status");
    assert_eq!(st.status, RunState::Prelaunch);
    assert!(!st.running);

    let mut events = qmp.events();
    qmp.cont().await.expect("cont");
    events.wait_named(name::RESUME, T).await.expect("RESUME");
    assert_eq!(
        qmp.query_status().await.expect("status").status,
        RunState::Running
    );

    qmp.stop().await.expect("stop");
    events.wait_named(name::STOP, T).await.expect("STOP");
    let st = qmp.query_status().await.expect("status");
    assert_eq!(st.status, RunState::Paused);
    assert!(!st.running);

    let hmp = qmp.human_monitor_command("info status").await.expect("hmp");
    assert!(hmp.contains("paused"), "hmp said {hmp:?}");

    // quit: SHUTDOWN from the host, then the connection is gone.
    qmp.quit().await.expect("quit");
    let ev = events
        .wait_named(name::SHUTDOWN, T)
        .await
        .expect("SHUTDOWN");
    assert_eq!(ev.data_str("reason"), Some("host-qmp-quit"));
    let err = qmp.query_status().await.expect_err("closed");
    assert_eq!(err.kind(), ErrorKind::Closed, "{err:?}");
    assert!(qmp.is_closed());
}

#[tokio::test]
async fn blockdev_add_del_and_errors_surface_with_class() {
    let qemu = common::paused_vm();
    let qmp = Client::connect(&qemu.qmp).await.expect("connect");

    null_target(&qmp, "tgt0").await;
    let nodes = qmp.query_named_block_nodes().await.expect("nodes");
    let tgt = nodes
        .iter()
        .find(|n| n.node_name == "tgt0")
        .expect("tgt0 listed");
    assert_eq!(tgt.drv, "null-co");
    assert!(nodes.iter().any(|n| n.node_name == "disk0"));

    // Adding the same node twice is a QEMU error with class and description.
    let err = qmp
        .blockdev_add(json!({"driver": "null-co", "node-name": "tgt0", "size": MIB}))
        .await
        .expect_err("duplicate node");
    match &err {
        Error::Remote {
            command,
            class,
            desc,
        } => {
            assert_eq!(command, "blockdev-add");
            assert_eq!(class, "GenericError");
            assert!(desc.contains("tgt0"), "desc {desc:?}");
        }
        other => panic!("expected a remote error, got {other:?}"),
    }
    assert_eq!(err.kind(), ErrorKind::Remote);

    qmp.blockdev_del("tgt0").await.expect("blockdev-del");
    let nodes = qmp.query_named_block_nodes().await.expect("nodes");
    assert!(
        nodes.iter().all(|n| n.node_name != "tgt0"),
        "tgt0 still there"
    );
    let err = qmp.blockdev_del("tgt0").await.expect_err("gone");
    assert_eq!(err.remote_class(), Some("GenericError"), "{err:?}");

    let err = qmp
        .execute("no-such-command", None)
        .await
        .expect_err("unknown");
    assert_eq!(err.remote_class(), Some("CommandNotFound"), "{err:?}");

    // The empty merge that segfaults 7.2 is never sent; QEMU stays alive.
    qmp.block_dirty_bitmap_add(&BitmapAdd::new("disk0", "bm0"))
        .await
        .expect("add");
    let merge = BitmapMerge::new("disk0", "bm0", &[]);
    let err = qmp
        .block_dirty_bitmap_merge(&merge)
        .await
        .expect_err("refused");
    assert!(matches!(err, Error::Refused { .. }), "{err:?}");
    let err = qmp
        .transaction(&[Action::BitmapMerge(merge)], None)
        .await
        .expect_err("refused in a transaction too");
    assert!(matches!(err, Error::Refused { .. }), "{err:?}");
    assert_eq!(
        qmp.query_status().await.expect("alive").status,
        RunState::Prelaunch
    );

    // query-block sees the device and its root node.
    let blocks = qmp.query_block().await.expect("query-block");
    let vda = blocks
        .iter()
        .find(|b| b.qdev.as_deref() == Some("/machine/peripheral/vda/virtio-backend"))
        .expect("vda backend");
    let inserted = vda.inserted.as_ref().expect("medium");
    assert_eq!(inserted.node_name, "disk0");
    // No backing file: the engine's backup copies only allocated clusters then.
    assert_eq!(inserted.backing_file_depth, Some(0));
    assert_eq!(
        inserted.image.as_ref().expect("image").virtual_size,
        64 * MIB
    );

    // qom-set: put a copy-before-write filter above disk0 live and take it away again.
    let fleece = qemu.dir.path().join("fleece.qcow2");
    let ok = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&fleece)
        .arg("64M")
        .status()
        .expect("qemu-img");
    assert!(ok.success());
    qmp.blockdev_add(json!({"driver": "qcow2", "node-name": "fl0",
        "file": {"driver": "file", "filename": fleece}}))
        .await
        .expect("fleece node");
    qmp.blockdev_add(json!({"driver": "copy-before-write", "node-name": "cbw0",
        "file": "disk0", "target": "fl0"}))
        .await
        .expect("cbw node");
    let qdev = "/machine/peripheral/vda/virtio-backend";
    qmp.qom_set(qdev, "drive", json!("cbw0"))
        .await
        .expect("qom-set cbw0");
    let root = |blocks: Vec<vmdump_qmp::BlockInfo>| {
        blocks
            .into_iter()
            .find(|b| b.qdev.as_deref() == Some(qdev))
            .and_then(|b| b.inserted)
            .map(|i| i.node_name)
    };
    assert_eq!(
        root(qmp.query_block().await.expect("q")).as_deref(),
        Some("cbw0")
    );
    // A filter above the image counts as a node that provides data.
    let depth = qmp
        .query_block()
        .await
        .expect("q")
        .into_iter()
        .find_map(|b| {
            (b.qdev.as_deref() == Some(qdev)).then(|| b.inserted.and_then(|i| i.backing_file_depth))
        });
    assert_eq!(depth, Some(Some(1)));
    let err = qmp.blockdev_del("cbw0").await.expect_err("in use");
    assert!(err.to_string().contains("in use"), "{err}");
    qmp.qom_set(qdev, "drive", json!("disk0"))
        .await
        .expect("qom-set disk0");
    assert_eq!(
        root(qmp.query_block().await.expect("q")).as_deref(),
        Some("disk0")
    );
    qmp.blockdev_del("cbw0").await.expect("del cbw0");
    qmp.blockdev_del("fl0").await.expect("del fl0");
}

#[tokio::test]
async fn events_arrive_while_a_throttled_backup_runs() {
    let qemu = common::paused_vm();
    let qmp = Client::connect(&qemu.qmp).await.expect("connect");
    null_target(&qmp, "tgt0").await;

    let mut events = qmp.events();
    let mut job = BlockdevBackup::new("bk0", "disk0", "tgt0", SyncMode::Full);
    job.speed = Some(8 * MIB);
    job.auto_dismiss = Some(false);
    job.filter_node_name = Some("cbw0".into());
    qmp.blockdev_backup(&job).await.expect("blockdev-backup");

    // While the job runs (64 MiB at 8 MiB/s), commands keep working and events stream in.
    let ev = events
        .wait_for(T, |e| e.job_status() == Some(("bk0", "running")))
        .await
        .expect("running");
    assert_eq!(ev.name, name::JOB_STATUS_CHANGE);
    let jobs = qmp.query_block_jobs().await.expect("query-block-jobs");
    let j = jobs.iter().find(|j| j.device == "bk0").expect("bk0 listed");
    assert_eq!(j.job_type, "backup");
    assert_eq!(j.len, 64 * MIB);
    assert!(j.offset < j.len, "already done: {j:?}");
    let all = qmp.query_jobs().await.expect("query-jobs");
    assert!(all
        .iter()
        .any(|j| j.id == "bk0" && j.total_progress == 64 * MIB));
    // Many concurrent commands from clones of the client, interleaved with events.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let c = qmp.clone();
        tasks.push(tokio::spawn(async move {
            c.query_status().await.map(|s| s.status)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("join").expect("status"), RunState::Prelaunch);
    }

    let start = Instant::now();
    qmp.block_job_set_speed("bk0", 0).await.expect("set-speed");
    let done = events
        .wait_named(name::BLOCK_JOB_COMPLETED, T)
        .await
        .expect("completed");
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "unthrottling had no effect"
    );
    assert_eq!(done.job_id(), Some("bk0"));
    assert_eq!(done.data["len"], json!(64 * MIB));
    assert_eq!(done.data["offset"], json!(64 * MIB));
    assert!(done.data.get("error").is_none(), "{done:?}");
    events
        .wait_for(T, |e| e.job_status() == Some(("bk0", "concluded")))
        .await
        .expect("concluded");
    qmp.job_dismiss("bk0").await.expect("dismiss");
    assert!(qmp.query_block_jobs().await.expect("jobs").is_empty());
    qmp.blockdev_del("tgt0").await.expect("del target");

    // Cancel: BLOCK_JOB_CANCELLED with the partial offset.
    null_target(&qmp, "tgt1").await;
    let mut job = BlockdevBackup::new("bk1", "disk0", "tgt1", SyncMode::Full);
    job.speed = Some(MIB);
    qmp.blockdev_backup(&job).await.expect("backup 2");
    events
        .wait_for(T, |e| e.job_status() == Some(("bk1", "running")))
        .await
        .expect("running");
    qmp.block_job_cancel("bk1", false).await.expect("cancel");
    let ev = events
        .wait_named(name::BLOCK_JOB_CANCELLED, T)
        .await
        .expect("cancelled");
    assert_eq!(ev.job_id(), Some("bk1"));
    assert!(ev.data["offset"].as_u64().expect("offset") < 64 * MIB);
    qmp.blockdev_del("tgt1").await.expect("del tgt1");
}

#[tokio::test]
async fn grouped_transaction_bitmaps_and_nbd_export() {
    let qemu = common::paused_vm();
    let qmp = Client::connect(&qemu.qmp).await.expect("connect");
    null_target(&qmp, "ta").await;
    null_target(&qmp, "tb").await;

    let mut events = qmp.events();
    let mut bitmap = BitmapAdd::new("disk0", "bm0");
    bitmap.granularity = Some(65536);
    let job = |id: &str, target: &str| {
        let mut j = BlockdevBackup::new(id, "disk0", target, SyncMode::Full);
        j.auto_finalize = Some(false);
        j.auto_dismiss = Some(false);
        Action::BlockdevBackup(j)
    };
    // 7.2 refuses bitmap actions in a grouped transaction, with class and description.
    let err = qmp
        .transaction(
            &[Action::BitmapAdd(bitmap.clone()), job("bka", "ta")],
            Some(CompletionMode::Grouped),
        )
        .await
        .expect_err("bitmap action with grouped");
    assert_eq!(err.remote_class(), Some("GenericError"), "{err}");
    assert!(err.to_string().contains("completion-mode"), "{err}");
    qmp.transaction(&[Action::BitmapAdd(bitmap)], None)
        .await
        .expect("bitmap");
    qmp.transaction(
        &[job("bka", "ta"), job("bkb", "tb")],
        Some(CompletionMode::Grouped),
    )
    .await
    .expect("transaction");
    // Both wait in pending for each other; one finalize completes both.
    let mut pending = Vec::new();
    while pending.len() < 2 {
        let ev = events
            .wait_named(name::BLOCK_JOB_PENDING, T)
            .await
            .expect("pending");
        pending.push(ev.job_id().expect("id").to_string());
    }
    pending.sort();
    assert_eq!(pending, ["bka", "bkb"]);
    qmp.job_finalize("bka").await.expect("finalize");
    let mut completed = Vec::new();
    while completed.len() < 2 {
        let ev = events
            .wait_named(name::BLOCK_JOB_COMPLETED, T)
            .await
            .expect("completed");
        completed.push(ev.job_id().expect("id").to_string());
    }
    completed.sort();
    assert_eq!(completed, ["bka", "bkb"]);
    for id in ["bka", "bkb"] {
        qmp.job_dismiss(id).await.expect("dismiss");
    }

    // Bitmaps: the transaction's bitmap exists, merge/clear/remove work.
    qmp.human_monitor_command(r#"qemu-io -d vda/virtio-backend "write -P 0xa1 1M 64k""#)
        .await
        .expect("guest-style write");
    let bitmaps = |nodes: Vec<vmdump_qmp::BlockDeviceInfo>| {
        nodes
            .into_iter()
            .find(|n| n.node_name == "disk0")
            .map(|n| n.dirty_bitmaps)
            .unwrap_or_default()
    };
    let bms = bitmaps(qmp.query_named_block_nodes().await.expect("nodes"));
    let bm0 = bms
        .iter()
        .find(|b| b.name.as_deref() == Some("bm0"))
        .expect("bm0");
    assert_eq!(bm0.count, 65536, "{bm0:?}");
    assert_eq!(bm0.granularity, 65536);
    let mut tmp = BitmapAdd::new("disk0", "bk-tmp");
    tmp.disabled = Some(true);
    qmp.transaction(
        &[
            Action::BitmapAdd(tmp),
            Action::BitmapMerge(BitmapMerge::new("disk0", "bk-tmp", &["bm0"])),
            Action::BitmapClear(BitmapRef::new("disk0", "bm0")),
        ],
        None,
    )
    .await
    .expect("bitmap transaction");
    let bms = bitmaps(qmp.query_named_block_nodes().await.expect("nodes"));
    let count = |n: &str| {
        bms.iter()
            .find(|b| b.name.as_deref() == Some(n))
            .map(|b| b.count)
    };
    assert_eq!(count("bm0"), Some(0));
    assert_eq!(count("bk-tmp"), Some(65536));
    qmp.block_dirty_bitmap_merge(&BitmapMerge::new("disk0", "bm0", &["bk-tmp"]))
        .await
        .expect("merge back");
    qmp.block_dirty_bitmap_clear("disk0", "bk-tmp")
        .await
        .expect("clear");
    qmp.block_dirty_bitmap_remove("disk0", "bk-tmp")
        .await
        .expect("remove");
    let bms = bitmaps(qmp.query_named_block_nodes().await.expect("nodes"));
    assert_eq!(bms.len(), 1);
    assert_eq!(bms[0].count, 65536);

    // NBD server and export with the bitmap; deleting it emits BLOCK_EXPORT_DELETED.
    let sock = qemu.dir.path().join("nbd.sock");
    qmp.nbd_server_start_unix(&sock)
        .await
        .expect("nbd-server-start");
    assert!(sock.exists());
    // Only a disabled bitmap may go with a read-only export.
    let mut frozen = BitmapAdd::new("disk0", "exp-bm");
    frozen.disabled = Some(true);
    qmp.block_dirty_bitmap_add(&frozen)
        .await
        .expect("disabled bitmap");
    let mut export = NbdExport::new("exp0", "disk0", "snap");
    export.bitmaps = vec![vmdump_qmp::BitmapSource::Name("bm0".into())];
    let err = qmp
        .block_export_add(&export)
        .await
        .expect_err("enabled bitmap");
    assert!(err.to_string().contains("incompatible"), "{err}");
    export.bitmaps = vec![vmdump_qmp::BitmapSource::Node {
        node: "disk0".into(),
        name: "exp-bm".into(),
    }];
    qmp.block_export_add(&export)
        .await
        .expect("block-export-add");
    let err = qmp
        .block_export_add(&export)
        .await
        .expect_err("duplicate id");
    assert_eq!(err.remote_class(), Some("GenericError"));
    qmp.block_export_del("exp0", false)
        .await
        .expect("block-export-del");
    let ev = events
        .wait_named(name::BLOCK_EXPORT_DELETED, T)
        .await
        .expect("export deleted");
    assert_eq!(ev.data_str("id"), Some("exp0"));
    qmp.nbd_server_stop().await.expect("nbd-server-stop");
    qmp.block_dirty_bitmap_remove("disk0", "exp-bm")
        .await
        .expect("remove");
}

//! The NBD target and the writer thread against a second real NBD client: `qemu-img convert`
//! writes a disk whose size is not a multiple of 64 KiB into the target; the archive read back
//! by dissect.archive must equal the source.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::sync::mpsc;
use vmdump_engine::options::Compression;
use vmdump_engine::output::Output;
use vmdump_engine::pipeline::{Shared, WriterThread, CHANNEL_CLUSTERS};
use vmdump_engine::target::{Export, Target};
use vmdump_testkit::{dissect_devices, run, sha256_file};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_convert_into_the_target() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("src.raw");
    let size: u64 = 5 * 1024 * 1024 + 1536;
    std::fs::File::create(&src)?.set_len(size)?;
    run(std::process::Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            "write -P 0x61 0 1M",
            "-c",
            "write -P 0x62 3145216 1536",
        ])
        .args(["-c", &format!("write -P 0x63 {} 1536", size - 1536)])
        .arg(&src))?;

    let dat = tmp.path().join("out.vma");
    let out = Output::create(&dat, Compression::None, 1, 1)?;
    let mut writer = vmdump_vma::Writer::new(out);
    writer.add_config("qemu-server.conf", b"memory: 128\n")?;
    let id = writer.register_device("drive-x", size)?;
    let shared = Arc::new(Shared::default());
    let (tx, rx) = mpsc::channel(CHANNEL_CLUSTERS);
    let thread = WriterThread::spawn(
        writer,
        rx,
        Arc::clone(&shared),
        vec!["drive-x".into()],
        vec![id],
    )?;
    let socket = tmp.path().join("t.sock");
    let export = Arc::new(Export::new("drive-x", id.get(), size));
    let target = Target::start(&socket, vec![Arc::clone(&export)], tx, Arc::clone(&shared)).await?;

    let uri = format!("nbd+unix:///drive-x?socket={}", socket.display());
    let s = src.clone();
    tokio::task::spawn_blocking(move || {
        run(std::process::Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&s)
            .arg(&uri))
    })
    .await??;
    assert!(target.wait_closed(Duration::from_secs(10)).await, "no DISC");
    assert_eq!(export.first_missing(), None);
    target.shutdown().await;
    let out = thread.join().expect("writer finished");
    out.finish()?;
    assert!(!shared.failed(), "{:?}", shared.error());
    assert_eq!(shared.transferred(), size);

    let devs = dissect_devices(&dat)?;
    assert_eq!(
        devs,
        vec![("drive-x".to_string(), size, sha256_file(&src)?)]
    );
    Ok(())
}

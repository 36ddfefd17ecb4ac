//! A backup whose jobs fail during finalize: the engine must wait for the jobs' conclusion
//! after `job-finalize`, not take its `return` for success.
//!
//! QEMU's `job-finalize` returns `{}` even when the group's finalize fails (a job's
//! `prepare` failing aborts the whole transaction); the failure shows only in the jobs'
//! concluded state. A backup job's own finalize cannot fail in QEMU 7.2, so the test
//! injects exactly that outcome through the real QEMU: a QMP proxy in front of the VM's
//! monitor turns the engine's `job-finalize` into `job-cancel` of the same pending job.
//! QEMU then aborts the group (every job concludes with `Operation canceled`) and the
//! engine gets the `{}` it expects from `job-finalize`. An engine that stopped waiting at
//! `job-finalize` would commit the archive; the right one reports the failure and leaves
//! no archive.

mod backup_common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Result;
use backup_common::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Serves `listener`: each client gets its own connection to `upstream`; every command line
/// from the client is forwarded as is, except `job-finalize`, which goes to QEMU as
/// `job-cancel` with the same arguments and id (counted in `rewritten`).
async fn finalize_to_cancel_proxy(
    listener: UnixListener,
    upstream: PathBuf,
    rewritten: Arc<AtomicUsize>,
) -> Result<()> {
    loop {
        let (client, _) = listener.accept().await?;
        let server = UnixStream::connect(&upstream).await?;
        let rewritten = Arc::clone(&rewritten);
        tokio::spawn(async move {
            let (client_rd, mut client_wr) = client.into_split();
            let (mut server_rd, mut server_wr) = server.into_split();
            let down = tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_rd, &mut client_wr).await;
                let _ = client_wr.shutdown().await;
            });
            let mut lines = BufReader::new(client_rd).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut out = line;
                if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&out) {
                    if v["execute"] == "job-finalize" {
                        v["execute"] = "job-cancel".into();
                        rewritten.fetch_add(1, Ordering::SeqCst);
                        out = v.to_string();
                    }
                }
                out.push('\n');
                if server_wr.write_all(out.as_bytes()).await.is_err() {
                    break;
                }
            }
            let _ = server_wr.shutdown().await;
            let _ = down.await;
        });
    }
}

/// Moves QEMU's monitor socket `sock` aside and serves the proxy at its path.
fn proxy_monitor(sock: &Path, rewritten: Arc<AtomicUsize>) -> Result<()> {
    let real = sock.with_file_name("qmp-real.sock");
    std::fs::rename(sock, &real)?;
    let listener = UnixListener::bind(sock)?;
    tokio::spawn(finalize_to_cancel_proxy(listener, real, rewritten));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_that_fail_in_finalize_fail_the_backup_and_leave_no_archive() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let env = Env::new(tmp.path())?;
    for (disk, key) in [
        ("vm-100-disk-0.raw", "scsi0"),
        ("vm-100-disk-1.raw", "scsi1"),
    ] {
        let path = env.image(100, disk);
        std::fs::File::create(&path)?.set_len(8 * MIB)?;
        write_random(&path, MIB, 2 * MIB, u64::from(key.as_bytes()[4]))?;
    }
    env.write_config(
        100,
        "memory: 256\nscsi0: local:100/vm-100-disk-0.raw,size=8M\nscsi1: local:100/vm-100-disk-1.raw,size=8M\n",
    )?;
    let (a, b) = (
        env.image(100, "vm-100-disk-0.raw"),
        env.image(100, "vm-100-disk-1.raw"),
    );
    let vm = Qemu::paused(
        &env.vm_dir(100)?,
        &[
            Disk {
                key: "scsi0",
                path: &a,
                format: "raw",
            },
            Disk {
                key: "scsi1",
                path: &b,
                format: "raw",
            },
        ],
    )
    .await?;
    let rewritten = Arc::new(AtomicUsize::new(0));
    proxy_monitor(&vm.qmp_path, Arc::clone(&rewritten))?;

    let child = env
        .vmdump_command(&["100", "--compress", "zstd"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    assert_eq!(
        rewritten.load(Ordering::SeqCst),
        1,
        "the engine never sent job-finalize: {}",
        output_text(&out)
    );
    let stdout = expect_exit(&out, 1, "vmdump backup with jobs failing in finalize");
    assert!(
        stdout.contains("ERROR: Backup of VM 100 failed - "),
        "{stdout}"
    );
    assert!(stdout.contains("Operation canceled"), "{stdout}");
    env.assert_no_archive();
    // Nothing of ours is left in QEMU: no job, no filter, no target node.
    assert_eq!(vm.assert_clean().await?, "prelaunch");
    vm.quit().await?;
    Ok(())
}

//! Our client against QEMU 7.2's NBD servers (qemu-nbd and qemu-storage-daemon) and against
//! our own server.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::{convert_to_raw, make_test_qcow2, run, sha256_file, MemExport};
use sha2::{Digest, Sha256};
use vmdump_nbd::client::ReadPiece;
use vmdump_nbd::proto::reply::{STATE_HOLE, STATE_ZERO};
use vmdump_nbd::{Client, ClientOptions, ErrorKind, Server, ServerOptions};

struct Daemon(tokio::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

async fn wait_socket(path: &Path) {
    for _ in 0..200 {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{} never came up", path.display());
}

async fn qemu_nbd(image: &Path, sock: &Path, extra: &[&str]) -> Daemon {
    let mut args = vec![
        "-f",
        "qcow2",
        "-k",
        sock.to_str().unwrap(),
        "-x",
        "disk",
        "-t",
    ];
    args.extend_from_slice(extra);
    args.push(image.to_str().unwrap());
    let child = tokio::process::Command::new("qemu-nbd")
        .args(&args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("qemu-nbd");
    wait_socket(sock).await;
    Daemon(child)
}

/// (start, length, data, zero) from `qemu-img map` of the image itself.
fn qemu_map(image: &Path) -> Vec<(u64, u64, bool, bool)> {
    let out = run(
        "qemu-img",
        &["map", "--output=json", "-U", image.to_str().unwrap()],
    );
    let v: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    v.iter()
        .map(|e| {
            (
                e["start"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["data"].as_bool().unwrap(),
                e["zero"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// Byte-granular "is data" / "is zero" maps compressed to 4 KiB units for comparison.
fn units(extents: &[(u64, u64, bool, bool)], size: u64) -> Vec<(bool, bool)> {
    let mut v = vec![(false, false); (size / 4096) as usize];
    for (start, len, data, zero) in extents {
        for u in start / 4096..(start + len) / 4096 {
            v[u as usize] = (*data, *zero);
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reads_qemu_nbd_sparse_qcow2() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_test_qcow2(dir.path(), 64);
    let reference = dir.path().join("ref.raw");
    convert_to_raw(&img, &reference);
    let sock = dir.path().join("nbd.sock");
    let _d = qemu_nbd(&img, &sock, &["-r"]).await;
    for align in [false, true] {
        let opts = ClientOptions {
            align_64k: align,
            ..ClientOptions::default()
        };
        let client = Client::connect_unix(&sock, "disk", &opts).await.unwrap();
        assert_eq!(client.size(), 64 << 20);
        assert!(client.info().structured);
        assert!(client.has_context("base:allocation"));

        let mut hasher = Sha256::new();
        let mut stream = client.read_range(0..client.size(), 4 << 20, 8);
        let mut expect = 0;
        while let Some(r) = stream.next().await {
            let (off, data) = r.unwrap();
            assert_eq!(off, expect);
            expect += data.len() as u64;
            hasher.update(&data);
        }
        assert_eq!(expect, 64 << 20);
        assert_eq!(hex::encode(hasher.finalize()), sha256_file(&reference));

        // Block status agrees with qemu-img map on data vs hole and zero flags.
        let ext = client
            .block_status(0, client.size(), "base:allocation")
            .await
            .unwrap();
        let ours: Vec<(u64, u64, bool, bool)> = ext
            .iter()
            .map(|e| {
                (
                    e.offset,
                    e.length,
                    e.flags & STATE_HOLE == 0,
                    e.flags & STATE_ZERO != 0,
                )
            })
            .collect();
        assert_eq!(ext.iter().map(|e| e.length).sum::<u64>(), 64 << 20);
        assert_eq!(units(&ours, 64 << 20), units(&qemu_map(&img), 64 << 20));
        // The qcow2 zero cluster range at 14M reads as zero.
        let z = ext
            .iter()
            .find(|e| e.offset <= 14 << 20 && e.offset + e.length > 14 << 20)
            .unwrap();
        assert_ne!(z.flags & STATE_ZERO, 0, "{z:?}");
        if align {
            assert!(ext.len() > 1);
        }

        // Unallocated space arrives as hole chunks, data as data.
        let pieces = client.read_pieces(30 << 20, 1 << 20).await.unwrap();
        assert!(
            pieces.iter().all(|p| matches!(p, ReadPiece::Hole { .. })),
            "{pieces:?}"
        );
        let pieces = client.read_pieces(5 << 20, 1 << 20).await.unwrap();
        assert!(
            matches!(&pieces[..], [ReadPiece::Data { data, .. }] if data.iter().all(|b| *b == 0x22))
                || align
        );

        // Writes to a read-only export are refused by the server.
        let err = client
            .write(0, bytes::Bytes::from_static(&[1; 512]))
            .await
            .unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::Usage | ErrorKind::Remote(_)),
            "{err}"
        );
        client.disconnect().await.unwrap();
        assert_eq!(
            client.read(0, 512).await.unwrap_err().kind(),
            ErrorKind::Closed
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_writes_zeroes_and_trims_on_qemu_nbd() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("w.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", img.to_str().unwrap(), "16M"],
    );
    let sock = dir.path().join("nbd.sock");
    let d = qemu_nbd(&img, &sock, &["--discard=unmap"]).await;
    let client = Client::connect_unix(&sock, "disk", &ClientOptions::default())
        .await
        .unwrap();
    client
        .write(0, bytes::Bytes::from(vec![0x5a; 4 << 20]))
        .await
        .unwrap();
    client
        .write_zeroes(1 << 20, 64 << 10, true, false)
        .await
        .unwrap();
    client.trim(2 << 20, 1 << 20).await.unwrap();
    client.flush().await.unwrap();
    let data = client.read(0, 4 << 20).await.unwrap();
    assert!(data[..1 << 20].iter().all(|b| *b == 0x5a));
    assert!(data[1 << 20..(1 << 20) + 65536].iter().all(|b| *b == 0));
    assert!(data[2 << 20..3 << 20].iter().all(|b| *b == 0));
    assert!(data[3 << 20..].iter().all(|b| *b == 0x5a));
    let ext = client
        .block_status(2 << 20, 1 << 20, "base:allocation")
        .await
        .unwrap();
    assert!(
        ext.iter().all(|e| e.flags & STATE_HOLE != 0),
        "trimmed range is a hole: {ext:?}"
    );
    client.disconnect().await.unwrap();
    drop(d);
    tokio::time::sleep(Duration::from_millis(200)).await;
    run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-r",
            "-U",
            "-c",
            "read -P 0x5a 0 1M",
            "-c",
            "read -P 0 1M 64k",
            "-c",
            "read -P 0x5a 3M 1M",
            img.to_str().unwrap(),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_against_storage_daemon_with_dirty_bitmap() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("b.qcow2");
    let p = img.to_str().unwrap();
    run("qemu-img", &["create", "-q", "-f", "qcow2", p, "32M"]);
    run("qemu-io", &["-f", "qcow2", "-c", "write -P 1 0 8M", p]);
    run("qemu-img", &["bitmap", "--add", p, "bm0"]);
    run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 2 5M 1M",
            "-c",
            "write -P 3 20M 64k",
            p,
        ],
    );
    let sock = dir.path().join("qsd.sock");
    let child = tokio::process::Command::new("qemu-storage-daemon")
        .args([
            "--blockdev",
            &format!(r#"{{"driver":"qcow2","node-name":"fmt0","read-only":true,"file":{{"driver":"file","filename":"{p}","read-only":true}}}}"#),
            "--nbd-server",
            &format!("addr.type=unix,addr.path={}", sock.display()),
            "--export",
            r#"{"type":"nbd","id":"e0","node-name":"fmt0","name":"disk","bitmaps":["bm0"]}"#,
        ])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let _d = Daemon(child);
    wait_socket(&sock).await;
    let opts = ClientOptions {
        meta_contexts: vec!["base:allocation".into(), "qemu:dirty-bitmap:bm0".into()],
        align_64k: true,
        ..ClientOptions::default()
    };
    let client = Client::connect_unix(&sock, "disk", &opts).await.unwrap();
    assert!(
        client.has_context("qemu:dirty-bitmap:bm0"),
        "{:?}",
        client.info()
    );
    let dirty: Vec<(u64, u64)> = client
        .block_status(0, 32 << 20, "qemu:dirty-bitmap:bm0")
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.flags & 1 != 0)
        .map(|e| (e.offset, e.length))
        .collect();
    assert_eq!(dirty, vec![(5 << 20, 1 << 20), (20 << 20, 64 << 10)]);
    let data = client.read(5 << 20, 1 << 20).await.unwrap();
    assert!(data.iter().all(|b| *b == 2));
    client.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_against_our_server_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let export = Arc::new(MemExport::new(8 << 20));
    let mut server = Server::new(ServerOptions::default());
    server.add_export("mem", Arc::clone(&export));
    let sock = dir.path().join("s.sock");
    let mut handle = server.serve_unix(&sock).await.unwrap();

    // Without structured replies: simple READ replies carry the data.
    let simple = ClientOptions {
        structured: false,
        ..ClientOptions::default()
    };
    let c = Client::connect_unix(&sock, "mem", &simple).await.unwrap();
    assert!(!c.info().structured);
    // Many concurrent writes, completed in any order.
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.write(i * 65536, bytes::Bytes::from(vec![i as u8; 65536]))
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let all = c.read(0, 4 << 20).await.unwrap();
    for i in 0..64usize {
        assert!(all[i * 65536..(i + 1) * 65536]
            .iter()
            .all(|b| *b == i as u8));
    }
    // Errors are reported with the errno.
    let err = c
        .block_status(0, 4096, "base:allocation")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Usage);
    c.flush().await.unwrap();
    c.disconnect().await.unwrap();
    let d = handle.wait_disconnect("mem").await.unwrap();
    assert!(d.is_clean_commit(), "{d:?}");

    // Structured: block status, holes, zeroes, errors past the end rejected locally.
    let c = Client::connect_unix(&sock, "mem", &ClientOptions::default())
        .await
        .unwrap();
    c.write_zeroes(1 << 20, 1 << 20, false, false)
        .await
        .unwrap();
    let ext = c.block_status(0, 8 << 20, "base:allocation").await.unwrap();
    assert_eq!(ext[0].offset, 0);
    assert_eq!(ext[0].length, 1 << 20);
    assert_eq!(ext[0].flags, 0);
    assert_eq!(ext[1].flags, STATE_HOLE | STATE_ZERO);
    let err = c
        .write_zeroes(1 << 20, 4096, false, true)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Remote(95), "{err}");
    assert_eq!(
        c.read(8 << 20, 1).await.unwrap_err().kind(),
        ErrorKind::Usage
    );
    assert_eq!(
        Client::connect_unix(&sock, "nope", &ClientOptions::default())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Refused
    );
    drop(c);
    handle.shutdown().await;
}

/// A server may describe less of the range than asked, one extent per reply here: the
/// client asks again from where the reply ended and returns extents that cover the whole
/// range in order, as if the server had answered at once. The fleecing map relies on it: a
/// range left out would be taken for a hole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_status_short_replies_are_continued_to_the_whole_range() {
    let dir = tempfile::tempdir().unwrap();
    let mut short = MemExport::new(8 << 20);
    short.status_extents = Some(1);
    let export = Arc::new(short);
    let mut server = Server::new(ServerOptions::default());
    server.add_export("mem", Arc::clone(&export));
    let sock = dir.path().join("s.sock");
    let _handle = server.serve_unix(&sock).await.unwrap();
    let c = Client::connect_unix(&sock, "mem", &ClientOptions::default())
        .await
        .unwrap();
    for (at, len) in [
        (1u64 << 20, 64u64 << 10),
        (3 << 20, 2 << 20),
        (7 << 20, 1 << 20),
    ] {
        c.write(at, bytes::Bytes::from(vec![7u8; len as usize]))
            .await
            .unwrap();
    }
    let ext = c
        .block_status(512 << 10, (8 << 20) - (512 << 10), "base:allocation")
        .await
        .unwrap();
    let got: Vec<(u64, u64, bool)> = ext
        .iter()
        .map(|e| (e.offset, e.length, e.flags & STATE_HOLE == 0))
        .collect();
    assert_eq!(
        got,
        vec![
            (512 << 10, 512 << 10, false),
            (1 << 20, 64 << 10, true),
            ((1 << 20) + (64 << 10), (2 << 20) - (64 << 10), false),
            (3 << 20, 2 << 20, true),
            (5 << 20, 2 << 20, false),
            (7 << 20, 1 << 20, true),
        ]
    );
    c.disconnect().await.unwrap();
}

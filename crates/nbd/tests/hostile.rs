//! Hostile peers: malformed or malicious bytes on either side end in a protocol error (or an
//! NBD errno), never a panic, a hang or an unbounded allocation.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use common::MemExport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use vmdump_nbd::proto::handshake::Greeting;
use vmdump_nbd::proto::option::{self, ReplyKind};
use vmdump_nbd::proto::reply::{Chunk, FLAG_DONE};
use vmdump_nbd::proto::request::{self, Request};
use vmdump_nbd::proto::{IHAVEOPT, OPTION_REPLY_MAGIC};
use vmdump_nbd::server::{CloseReason, Event};
use vmdump_nbd::{Client, ClientOptions, ErrorKind, Server, ServerOptions};

/// Runs a scripted server for one connection; `script` gets the raw stream.
async fn fake_server<F, Fut>(script: F) -> (tempfile::TempDir, std::path::PathBuf)
where
    F: FnOnce(UnixStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake.sock");
    let l = UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        script(s).await;
    });
    (dir, path)
}

/// Sends the server greeting and reads the client's flags.
async fn greet(s: &mut UnixStream) {
    let mut b = BytesMut::new();
    Greeting { flags: 3 }.encode(&mut b);
    s.write_all(&b).await.unwrap();
    let mut f = [0u8; 4];
    s.read_exact(&mut f).await.unwrap();
}

/// Reads one option request from the client and returns its code.
async fn read_option(s: &mut UnixStream) -> u32 {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).await.unwrap();
    assert_eq!(u64::from_be_bytes(h[..8].try_into().unwrap()), IHAVEOPT);
    let code = u32::from_be_bytes(h[8..12].try_into().unwrap());
    let len = u32::from_be_bytes(h[12..16].try_into().unwrap());
    let mut data = vec![0; len as usize];
    s.read_exact(&mut data).await.unwrap();
    code
}

/// Answers the default client's handshake (structured, meta context, GO) for a 1 MiB export.
async fn accept_handshake(s: &mut UnixStream) {
    greet(s).await;
    for _ in 0..3 {
        let code = read_option(s).await;
        let mut out = BytesMut::new();
        if code == option::OPT_GO {
            ReplyKind::Info(option::Info::Export {
                size: 1 << 20,
                flags: 1,
            })
            .to_raw(code)
            .encode(&mut out);
        }
        ReplyKind::Ack.to_raw(code).encode(&mut out);
        s.write_all(&out).await.unwrap();
        if code == option::OPT_GO {
            return;
        }
    }
}

async fn read_request(s: &mut UnixStream) -> (u16, u64) {
    let mut h = [0u8; 28];
    s.read_exact(&mut h).await.unwrap();
    let cmd = u16::from_be_bytes(h[6..8].try_into().unwrap());
    let cookie = u64::from_be_bytes(h[8..16].try_into().unwrap());
    (cmd, cookie)
}

async fn connect(path: &std::path::Path) -> vmdump_nbd::Result<Client> {
    let opts = ClientOptions {
        connect_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    };
    Client::connect_unix(path, "x", &opts).await
}

/// Runs `script` as the server, then keeps the connection open a moment: the client's
/// handshake must end in a protocol error.
async fn assert_handshake_refused<F, Fut>(script: F)
where
    F: FnOnce(UnixStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = UnixStream> + Send,
{
    let (_d, path) = fake_server(|s| async move {
        let _s = script(s).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    })
    .await;
    assert_eq!(
        connect(&path).await.unwrap_err().kind(),
        ErrorKind::Protocol
    );
}

#[tokio::test]
async fn client_rejects_garbage_greeting() {
    assert_handshake_refused(|mut s| async move {
        let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n").await;
        s
    })
    .await;
}

#[tokio::test]
async fn client_rejects_oversized_option_reply() {
    assert_handshake_refused(|mut s| async move {
        greet(&mut s).await;
        let code = read_option(&mut s).await;
        let mut b = BytesMut::new();
        b.put_u64(OPTION_REPLY_MAGIC);
        b.put_u32(code);
        b.put_u32(option::REP_ACK);
        b.put_u32(u32::MAX);
        let _ = s.write_all(&b).await;
        s
    })
    .await;
}

#[tokio::test]
async fn client_rejects_go_without_export_info_and_reply_to_wrong_option() {
    assert_handshake_refused(|mut s| async move {
        greet(&mut s).await;
        let _ = read_option(&mut s).await;
        let mut out = BytesMut::new();
        ReplyKind::Ack.to_raw(option::OPT_GO).encode(&mut out);
        let _ = s.write_all(&out).await;
        s
    })
    .await;
}

#[tokio::test]
async fn client_survives_bad_replies() {
    let (_d, path) = fake_server(|mut s| async move {
        accept_handshake(&mut s).await;
        // 1: a data chunk outside the requested range -> that read fails.
        let (_, cookie) = read_request(&mut s).await;
        let mut out = BytesMut::new();
        let chunk = Chunk::OffsetData {
            offset: 1 << 19,
            data: bytes::Bytes::from_static(&[1; 16]),
        };
        chunk.encode(&mut out, cookie, FLAG_DONE);
        out.put_slice(&[1; 16]);
        s.write_all(&out).await.unwrap();
        // 2: a reply for a cookie nobody asked for -> connection is dead.
        let _ = read_request(&mut s).await;
        let mut out = BytesMut::new();
        Chunk::None.encode(&mut out, 0xdead_beef, FLAG_DONE);
        let _ = s.write_all(&out).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    })
    .await;
    let c = connect(&path).await.unwrap();
    let e = c.read(0, 512).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    let e = c.read(0, 512).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    let e = c.read(0, 512).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
}

/// The spec lets a server send a structured read's chunks in any order: data and hole chunks
/// arriving back to front and interleaved must still land at their own offsets.
#[tokio::test]
async fn client_places_out_of_order_chunks_at_their_offsets() {
    // 64 KiB read at 128 KiB, answered in 4 KiB pieces: data pieces carry a byte derived from
    // their offset, every third piece is a hole; sent in a scrambled order.
    const BASE: u64 = 128 << 10;
    const PIECE: u64 = 4 << 10;
    let order: Vec<u64> = vec![15, 3, 0, 9, 14, 1, 7, 12, 2, 11, 5, 8, 13, 4, 10, 6];
    let is_hole = |i: u64| i % 3 == 1;
    let byte = |i: u64| 0x40 + i as u8;
    let order2 = order.clone();
    let (_d, path) = fake_server(move |mut s| async move {
        accept_handshake(&mut s).await;
        let (cmd, cookie) = read_request(&mut s).await;
        assert_eq!(cmd, request::CMD_READ);
        let mut out = BytesMut::new();
        for (n, &i) in order2.iter().enumerate() {
            let flags = if n + 1 == order2.len() { FLAG_DONE } else { 0 };
            let offset = BASE + i * PIECE;
            if is_hole(i) {
                Chunk::OffsetHole {
                    offset,
                    length: PIECE as u32,
                }
                .encode(&mut out, cookie, flags);
            } else {
                let data = bytes::Bytes::from(vec![byte(i); PIECE as usize]);
                Chunk::OffsetData {
                    offset,
                    data: data.clone(),
                }
                .encode(&mut out, cookie, flags);
                out.put_slice(&data);
            }
        }
        s.write_all(&out).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    })
    .await;
    let c = connect(&path).await.unwrap();
    let got = c.read(BASE, 16 * PIECE).await.unwrap();
    assert_eq!(got.len() as u64, 16 * PIECE);
    for i in 0..16u64 {
        let piece = &got[(i * PIECE) as usize..((i + 1) * PIECE) as usize];
        let want = if is_hole(i) { 0 } else { byte(i) };
        assert!(
            piece.iter().all(|&b| b == want),
            "piece {i} (sent as chunk #{}) holds {:#x}, want {want:#x}",
            order.iter().position(|&o| o == i).unwrap(),
            piece[0]
        );
    }
}

#[tokio::test]
async fn client_sees_closed_when_server_dies_mid_request() {
    let (_d, path) = fake_server(|mut s| async move {
        accept_handshake(&mut s).await;
        let _ = read_request(&mut s).await;
        drop(s);
    })
    .await;
    let c = connect(&path).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), c.read(0, 512))
        .await
        .expect("no hang")
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
}

async fn start_server() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    vmdump_nbd::ServerHandle,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let mut server = Server::new(ServerOptions {
        handshake_timeout: Duration::from_secs(2),
        ..ServerOptions::default()
    });
    server.add_export("x", Arc::new(MemExport::new(1 << 20)));
    let handle = server.serve_unix(&path).await.unwrap();
    (dir, path, handle)
}

async fn raw_client(path: &std::path::Path) -> UnixStream {
    let mut s = UnixStream::connect(path).await.unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).await.unwrap();
    s.write_all(&3u32.to_be_bytes()).await.unwrap();
    s
}

async fn next_disconnect(h: &mut vmdump_nbd::ServerHandle) -> vmdump_nbd::server::Disconnect {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), h.next_event())
            .await
            .expect("event")
            .expect("server alive")
        {
            Event::Disconnected(d) => return d,
            Event::Connected { .. } => {}
        }
    }
}

#[tokio::test]
async fn server_rejects_hostile_handshakes_and_keeps_serving() {
    let (_d, path, mut h) = start_server().await;

    // Unknown client flags.
    let mut s = UnixStream::connect(&path).await.unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).await.unwrap();
    s.write_all(&0xffff_ffffu32.to_be_bytes()).await.unwrap();
    assert!(matches!(
        next_disconnect(&mut h).await.reason,
        CloseReason::Error(_)
    ));

    // A 4 GiB option.
    let mut s = raw_client(&path).await;
    let mut b = BytesMut::new();
    b.put_u64(IHAVEOPT);
    b.put_u32(option::OPT_GO);
    b.put_u32(u32::MAX);
    s.write_all(&b).await.unwrap();
    let d = next_disconnect(&mut h).await;
    assert!(
        matches!(&d.reason, CloseReason::Error(m) if m.contains("length")),
        "{d:?}"
    );

    // A malformed GO payload gets NBD_REP_ERR_INVALID, and haggling continues.
    let mut s = raw_client(&path).await;
    let mut b = BytesMut::new();
    b.put_u64(IHAVEOPT);
    b.put_u32(option::OPT_GO);
    b.put_u32(6);
    b.put_slice(&[0, 0, 0, 99, 0, 0]);
    s.write_all(&b).await.unwrap();
    let mut r = [0u8; 20];
    s.read_exact(&mut r).await.unwrap();
    assert_eq!(
        u32::from_be_bytes(r[12..16].try_into().unwrap()),
        option::REP_ERR_INVALID
    );

    // Silence: the handshake times out.
    let _s2 = raw_client(&path).await;
    drop(s);
    let d1 = next_disconnect(&mut h).await;
    let d2 = next_disconnect(&mut h).await;
    assert!([d1, d2]
        .iter()
        .any(|d| d.reason == CloseReason::Error("handshake timed out".into())));

    // A well-behaved client still works.
    let c = Client::connect_unix(&path, "x", &ClientOptions::default())
        .await
        .unwrap();
    c.write(0, bytes::Bytes::from_static(b"fine"))
        .await
        .unwrap();
    assert_eq!(c.read(0, 4).await.unwrap().as_ref(), b"fine");
    c.disconnect().await.unwrap();
    h.shutdown().await;
}

#[tokio::test]
async fn server_answers_bad_requests_with_errno_and_drops_huge_writes() {
    let (_d, path, mut h) = start_server().await;
    let c = Client::connect_unix(
        &path,
        "x",
        &ClientOptions {
            structured: false,
            ..ClientOptions::default()
        },
    )
    .await
    .unwrap();
    drop(c);
    let _ = next_disconnect(&mut h).await;

    // Hand-made transmission: GO by raw bytes, then bad requests.
    let mut s = raw_client(&path).await;
    let mut out = BytesMut::new();
    option::ClientOption::Go(option::GoRequest {
        name: "x".into(),
        info: vec![],
    })
    .to_raw()
    .encode(&mut out);
    s.write_all(&out).await.unwrap();
    // INFO_EXPORT reply (20 + 12) + ACK (20).
    let mut r = vec![0u8; 52];
    s.read_exact(&mut r).await.unwrap();

    let send = |cmd: u16, flags: u16, offset: u64, length: u32| {
        let mut b = BytesMut::new();
        Request {
            flags,
            command: cmd,
            cookie: 7,
            offset,
            length,
            payload: bytes::Bytes::new(),
        }
        .encode_header(&mut b);
        b
    };
    let errno_of = |r: &[u8; 16]| u32::from_be_bytes(r[4..8].try_into().unwrap());
    // Read past the end: EINVAL.
    s.write_all(&send(request::CMD_READ, 0, 1 << 20, 512))
        .await
        .unwrap();
    let mut r = [0u8; 16];
    s.read_exact(&mut r).await.unwrap();
    assert_eq!(errno_of(&r), 22);
    // Unknown command: EINVAL.
    s.write_all(&send(77, 0, 0, 0)).await.unwrap();
    s.read_exact(&mut r).await.unwrap();
    assert_eq!(errno_of(&r), 22);
    // Unknown flag: EINVAL.
    s.write_all(&send(request::CMD_TRIM, 0x4000, 0, 512))
        .await
        .unwrap();
    s.read_exact(&mut r).await.unwrap();
    assert_eq!(errno_of(&r), 22);
    // Offset overflow on write zeroes: ENOSPC.
    s.write_all(&send(request::CMD_WRITE_ZEROES, 0, u64::MAX - 10, 512))
        .await
        .unwrap();
    s.read_exact(&mut r).await.unwrap();
    assert_eq!(errno_of(&r), 28);
    // A 1 GiB WRITE: the server hangs up instead of buffering it.
    s.write_all(&send(request::CMD_WRITE, 0, 0, 1 << 30))
        .await
        .unwrap();
    let d = next_disconnect(&mut h).await;
    assert!(
        matches!(&d.reason, CloseReason::Error(m) if m.contains("payload")),
        "{d:?}"
    );
    assert_eq!(d.stats.errors, 4);
    h.shutdown().await;
}

//! Hermetic tests against scripted fake peers on a unix socket: reply matching, events during
//! commands, timeouts and late replies, close handling (QMP); resync through stale replies,
//! partial lines and sentinels, timeouts, shutdown without reply (QGA).

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixListener;
use vmdump_qmp::qga::{self, FreezeStatus, ShutdownMode, Timeouts};
use vmdump_qmp::{Client, ErrorKind};

struct Peer {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
}

impl Peer {
    async fn accept(l: &UnixListener) -> Self {
        let (s, _) = l.accept().await.expect("accept");
        let (r, w) = s.into_split();
        Self {
            r: BufReader::new(r),
            w,
        }
    }

    /// One request line; a leading 0xFF is returned as `true`.
    async fn recv(&mut self) -> Option<(bool, Value)> {
        let mut buf = Vec::new();
        if self.r.read_until(b'\n', &mut buf).await.expect("read") == 0 {
            return None;
        }
        let delim = buf.first() == Some(&0xFF);
        let line = if delim { &buf[1..] } else { &buf[..] };
        Some((delim, serde_json::from_slice(line).expect("request json")))
    }

    async fn send(&mut self, raw: &[u8]) {
        self.w.write_all(raw).await.expect("write");
    }

    async fn send_json(&mut self, v: Value) {
        let mut b = serde_json::to_vec(&v).expect("json");
        b.extend_from_slice(b"\r\n");
        self.send(&b).await;
    }
}

fn listener() -> (tempfile::TempDir, std::path::PathBuf, UnixListener) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("peer.sock");
    let l = UnixListener::bind(&path).expect("bind");
    (dir, path, l)
}

#[tokio::test]
async fn qmp_matches_out_of_order_replies_and_streams_events() {
    let (_dir, path, l) = listener();
    let peer = tokio::spawn(async move {
        let mut p = Peer::accept(&l).await;
        p.send_json(json!({"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 22}, "package": ""}, "capabilities": ["oob"]}}))
            .await;
        let (_, caps) = p.recv().await.expect("caps");
        assert_eq!(caps["execute"], "qmp_capabilities");
        p.send_json(json!({"return": {}, "id": caps["id"]})).await;

        // Two concurrent commands, answered in reverse order with an event in between.
        let (_, a) = p.recv().await.expect("a");
        let (_, b) = p.recv().await.expect("b");
        let (a, b) = if a["execute"] == "cmd-a" {
            (a, b)
        } else {
            (b, a)
        };
        p.send_json(json!({"return": {"who": "b"}, "id": b["id"]}))
            .await;
        p.send_json(json!({"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}))
            .await;
        p.send(b"this is not json\r\n").await;
        p.send_json(
            json!({"error": {"class": "DeviceNotFound", "desc": "no such thing"}, "id": a["id"]}),
        )
        .await;

        // A command answered too late, then the next one.
        let (_, hang) = p.recv().await.expect("hang");
        assert_eq!(hang["execute"], "hang");
        let (_, next) = p.recv().await.expect("next");
        p.send_json(json!({"return": {"late": true}, "id": hang["id"]}))
            .await;
        p.send_json(json!({"return": {"ok": 1}, "id": next["id"]}))
            .await;

        // A command QEMU never answers because it exits.
        let (_, last) = p.recv().await.expect("last");
        assert_eq!(last["execute"], "query-status");
        p.send_json(
            json!({"event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}}),
        )
        .await;
    });

    let qmp = Client::connect_with_timeout(&path, Duration::from_secs(5))
        .await
        .expect("connect");
    assert_eq!(qmp.greeting().version.to_string(), "7.2.22");
    let mut events = qmp.events();
    let (a, b) = tokio::join!(qmp.execute("cmd-a", None), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        qmp.execute("cmd-b", Some(json!({"x": 1}))).await
    });
    assert_eq!(b.expect("b"), json!({"who": "b"}));
    let err = a.expect_err("a fails");
    assert_eq!(err.remote_class(), Some("DeviceNotFound"));
    assert_eq!(
        err.to_string(),
        "cmd-a failed: DeviceNotFound: no such thing"
    );
    let ev = events.next().await.expect("event");
    assert_eq!((ev.name.as_str(), ev.timestamp), ("STOP", (1, 2)));

    let err = qmp
        .execute_with_timeout("hang", None, Duration::from_millis(100))
        .await
        .expect_err("timeout");
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(
        qmp.execute("next", None).await.expect("next"),
        json!({"ok": 1})
    );

    let err = qmp.query_status().await.expect_err("closed");
    assert_eq!(err.kind(), ErrorKind::Closed, "{err:?}");
    let ev = events.next().await.expect("shutdown event before close");
    assert_eq!(ev.name, "SHUTDOWN");
    assert_eq!(
        events.next().await.expect_err("stream ends").kind(),
        ErrorKind::Closed
    );
    assert!(qmp.is_closed());
    peer.await.expect("peer");
}

#[tokio::test]
async fn qmp_rejects_a_peer_that_is_not_qmp() {
    let (_dir, path, l) = listener();
    tokio::spawn(async move {
        let mut p = Peer::accept(&l).await;
        p.send_json(json!({"hello": "world"})).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let err = Client::connect(&path).await.expect_err("not qmp");
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err:?}");
    let err = Client::connect(_dir.path().join("missing.sock"))
        .await
        .expect_err("no socket");
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.to_string().contains("missing.sock"), "{err}");
}

/// Reads the sync request and checks the 0xFF in front of it.
async fn expect_sync(p: &mut Peer) -> Value {
    let (delim, req) = p.recv().await.expect("sync");
    assert!(delim, "sync not preceded by 0xFF");
    assert_eq!(req["execute"], "guest-sync-delimited");
    req["arguments"]["id"].clone()
}

#[tokio::test]
async fn qga_resyncs_through_stale_replies_and_timeouts() {
    let (_dir, path, l) = listener();
    let peer = tokio::spawn(async move {
        let mut p = Peer::accept(&l).await;
        // Connect: parse error for the 0xFF, a stale reply, half a line, then the sentinel.
        let id = expect_sync(&mut p).await;
        p.send(
            b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray\"}}\n",
        )
        .await;
        p.send(b"{\"return\": {}}\n{\"retu").await;
        p.send(b"\xff").await;
        p.send_json(json!({"return": id})).await;

        // ping: a stale reply with another id first.
        let (_, ping) = p.recv().await.expect("ping");
        assert_eq!(ping["execute"], "guest-ping");
        p.send_json(json!({"return": {"stale": true}, "id": 1}))
            .await;
        p.send_json(json!({"return": {}, "id": ping["id"]})).await;

        // status: no answer (paused VM) -> the client times out.
        let (_, status) = p.recv().await.expect("status");
        // Next request: resync first. The old reply and an old sync reply come first.
        let id = expect_sync(&mut p).await;
        p.send_json(json!({"return": "frozen", "id": status["id"]}))
            .await;
        p.send(b"\xff{\"return\": 424242}\n").await;
        p.send(b"\xff").await;
        p.send_json(json!({"return": id})).await;
        let (_, status) = p.recv().await.expect("status again");
        p.send_json(json!({"return": "thawed", "id": status["id"]}))
            .await;

        // Remote errors keep their class.
        let (_, freeze) = p.recv().await.expect("freeze");
        assert_eq!(freeze["execute"], "guest-fsfreeze-freeze");
        p.send_json(
            json!({"error": {"class": "CommandNotFound", "desc": "disabled"}, "id": freeze["id"]}),
        )
        .await;

        // guest-shutdown: success has no reply, the connection just goes away.
        let (_, down) = p.recv().await.expect("shutdown");
        assert_eq!(down["arguments"]["mode"], "powerdown");
    });

    let timeouts = Timeouts {
        command: Duration::from_millis(300),
        sync: Duration::from_millis(300),
        freeze: Duration::from_millis(300),
        shutdown: Duration::from_secs(5),
    };
    let ga = qga::Client::connect_with(&path, timeouts)
        .await
        .expect("connect + sync");
    ga.ping().await.expect("ping");
    let err = ga.fsfreeze_status().await.expect_err("no answer");
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(
        ga.fsfreeze_status().await.expect("after resync"),
        FreezeStatus::Thawed
    );
    let err = ga.fsfreeze_freeze().await.expect_err("remote error");
    assert_eq!(err.remote_class(), Some("CommandNotFound"));
    let start = std::time::Instant::now();
    ga.shutdown(ShutdownMode::Powerdown)
        .await
        .expect("shutdown counts as done");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "waited for the full deadline"
    );
    peer.await.expect("peer");
}

#[tokio::test]
async fn qga_connect_times_out_when_nobody_answers() {
    let (_dir, path, l) = listener();
    let peer = tokio::spawn(async move {
        let mut p = Peer::accept(&l).await;
        let _ = expect_sync(&mut p).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    });
    let timeouts = Timeouts {
        sync: Duration::from_millis(200),
        ..Timeouts::default()
    };
    let err = qga::Client::connect_with(&path, timeouts)
        .await
        .expect_err("silent agent");
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(err.to_string().contains("guest-sync-delimited"), "{err}");
    peer.await.expect("peer");
}

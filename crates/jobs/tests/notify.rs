//! Notifications received by real local servers: an SMTP server (Python aiosmtpd, installed by
//! scripts/setup.sh) with login, plain and with required STARTTLS (a certificate made by
//! `openssl` for the test), and an HTTP webhook receiver in the test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use vmdump_config::notifications::{parse_targets, NotificationTarget};
use vmdump_jobs::notify::{deliver, Policy};

mod support;

use support::{free_port, received, summary, SmtpServer};

#[test]
fn smtp_with_login_delivers_the_summary() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("mail.json");
    let server = SmtpServer::start(&out, None);
    let cfg = format!(
        "smtp: mail\n\tserver 127.0.0.1\n\tport {}\n\tmode insecure\n\tusername backup\n\tpassword secret\n\tfrom-address vmdump@node1.example\n\tmailto admin@example.com,ops@example.com\n",
        server.port
    );
    let targets = parse_targets(&cfg, "notifications.cfg").expect("valid");
    let d = deliver(&targets, &summary(false), Policy::Always);
    assert!(d[0].result.is_ok(), "{:?}", d[0].result);
    let mail = received(&out);
    assert_eq!(mail["authenticated"], true);
    assert_eq!(mail["from"], "vmdump@node1.example");
    assert_eq!(
        mail["to"],
        serde_json::json!(["admin@example.com", "ops@example.com"])
    );
    let data = mail["data"].as_str().expect("text");
    assert!(
        data.contains("Subject: vzdump backup status (node1): backup failed: job errors"),
        "{data}"
    );
    assert!(data.contains("VMID"), "{data}");
    assert!(data.contains("web1"), "{data}");
    assert!(
        data.contains("101: ERROR: Backup of VM 101 failed"),
        "{data}"
    );
    assert!(data.contains("Total running time: 00:03:13"), "{data}");

    // No server behind the port: the delivery fails, is reported, nothing panics.
    drop(server);
    std::fs::remove_file(&out).expect("reset");
    let d = deliver(&targets, &summary(false), Policy::Always);
    assert!(d[0].result.is_err());
    assert!(!out.exists());
}

#[test]
fn smtp_with_starttls() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    let ok = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(ok.success());
    // rustls-native-certs reads the trust store from SSL_CERT_FILE: trust only our cert.
    std::env::set_var("SSL_CERT_FILE", &cert);
    let out = tmp.path().join("mail.json");
    let server = SmtpServer::start(&out, Some((&cert, &key)));
    let cfg = format!(
        "smtp: mail\n\tserver localhost\n\tport {}\n\tmode starttls\n\tusername backup\n\tpassword secret\n\tmailto admin@example.com\n",
        server.port
    );
    let targets = parse_targets(&cfg, "notifications.cfg").expect("valid");
    let d = deliver(&targets, &summary(true), Policy::Always);
    assert!(d[0].result.is_ok(), "{:?}", d[0].result);
    let mail = received(&out);
    assert_eq!(mail["tls"], true);
    assert_eq!(mail["authenticated"], true);
    assert!(mail["data"]
        .as_str()
        .expect("text")
        .contains("backup successful"));
}

/// Accepts one HTTP request and returns its body.
fn webhook_receiver() -> (u16, std::thread::JoinHandle<(String, String)>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let h = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        let mut head = String::new();
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).expect("header");
            if line.to_ascii_lowercase().starts_with("content-length:") {
                len = line[15..].trim().parse().expect("length");
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).expect("body");
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .expect("reply");
        (head, String::from_utf8(body).expect("utf8"))
    });
    (port, h)
}

#[test]
fn webhook_receives_json() {
    let (port, h) = webhook_receiver();
    let targets = vec![NotificationTarget::Webhook {
        name: "hook".into(),
        url: format!("http://127.0.0.1:{port}/vmdump"),
    }];
    let d = deliver(&targets, &summary(false), Policy::Failure);
    assert!(d[0].result.is_ok(), "{:?}", d[0].result);
    let (head, body) = h.join().expect("receiver");
    assert!(head.starts_with("POST /vmdump "), "{head}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["job-id"], "nightly");
    assert_eq!(v["severity"], "error");
    assert_eq!(v["guests"][1]["vmid"], 101);
    assert_eq!(v["guests"][1]["status"], "err");
    assert_eq!(v["guests"][0]["size"], 5u64 << 30);
    assert!(v["title"]
        .as_str()
        .expect("title")
        .contains("backup failed"));
}

#[test]
fn policy_and_failed_delivery() {
    // failure policy and a successful job: nothing is sent.
    let closed = free_port();
    let targets = vec![NotificationTarget::Webhook {
        name: "hook".into(),
        url: format!("http://127.0.0.1:{closed}/"),
    }];
    assert!(deliver(&targets, &summary(true), Policy::Failure).is_empty());
    // always: delivery to a closed port fails, is reported, and does not panic.
    let d = deliver(&targets, &summary(true), Policy::Always);
    assert_eq!(d.len(), 1);
    assert!(d[0].result.is_err());
}

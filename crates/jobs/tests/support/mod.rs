//! What the notification suites share: a job summary, a real SMTP server (Python aiosmtpd,
//! installed by scripts/setup.sh) and the message it received.

#![allow(dead_code)] // each suite uses its own part

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use vmdump_jobs::notify::{GuestLine, Summary};

pub fn summary(ok: bool) -> Summary {
    Summary {
        hostname: "node1".into(),
        job_id: Some("nightly".into()),
        severity: if ok { "info" } else { "error" },
        guests: vec![
            GuestLine {
                vmid: 100,
                name: "web1".into(),
                status: "ok",
                error: None,
                time: 192,
                size: 5 << 30,
                filename: Some("/b/dump/vzdump-qemu-100-2025_01_05-02_00_01.vma.zst".into()),
                log: vec!["INFO: Starting Backup of VM 100 (qemu)".into()],
            },
            GuestLine {
                vmid: 101,
                name: "db1".into(),
                status: if ok { "ok" } else { "err" },
                error: (!ok).then(|| "VM is locked (migrate)".into()),
                time: 1,
                size: 0,
                filename: None,
                log: vec!["ERROR: Backup of VM 101 failed - VM is locked (migrate)".into()],
            },
        ],
        total_time: 193,
        total_size: 5 << 30,
        job_error: None,
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

pub struct SmtpServer {
    child: Child,
    pub port: u16,
}

impl SmtpServer {
    pub fn start(out: &Path, tls: Option<(&Path, &Path)>) -> Self {
        let port = free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_server.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script).arg(port.to_string()).arg(out);
        if let Some((cert, key)) = tls {
            cmd.arg(cert).arg(key);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start python3 aiosmtpd (scripts/setup.sh installs it)");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        assert_eq!(line.trim(), "ready", "the SMTP server did not start");
        SmtpServer { child, port }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

pub fn received(out: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out).expect("the server received a message");
    serde_json::from_str(&text).expect("json")
}

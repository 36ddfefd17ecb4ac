//! Helpers of the `vmdump serve` suites: a config root with a `local` storage, the server
//! started as `vmdump serve --listen 127.0.0.1:0` over HTTPS (its self-signed certificate is
//! the client's only trust root, so TLS is verified for real), tokens made with
//! `vmdump token add`, and a small JSON client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
pub use vmdump_testkit::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_vmdump");

/// A config root (`etc`), a `local` dir storage (`store`), run, task, state and server dirs.
pub struct Env {
    pub base: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        let base = tempfile::tempdir().unwrap();
        let env = Env { base };
        std::fs::create_dir_all(env.root().join("qemu-server")).unwrap();
        std::fs::create_dir_all(env.store().join("images/100")).unwrap();
        std::fs::create_dir_all(env.run()).unwrap();
        std::fs::write(
            env.root().join("storage.cfg"),
            format!(
                "dir: local\n\tpath {}\n\tcontent images,backup,rootdir\n",
                env.store().display()
            ),
        )
        .unwrap();
        env
    }
    pub fn path(&self, p: &str) -> PathBuf {
        self.base.path().join(p)
    }
    pub fn root(&self) -> PathBuf {
        self.path("etc")
    }
    pub fn store(&self) -> PathBuf {
        self.path("store")
    }
    pub fn dump(&self) -> PathBuf {
        self.store().join("dump")
    }
    pub fn run(&self) -> PathBuf {
        self.path("run")
    }
    pub fn tasks(&self) -> PathBuf {
        self.path("tasks")
    }
    pub fn server_dir(&self) -> PathBuf {
        self.path("server")
    }

    /// `vmdump <args>` in this environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("VMDUMP_ROOT", self.root())
            .env("VMDUMP_RUN_DIR", self.run())
            .env("VMDUMP_TASK_DIR", self.tasks())
            .env("VMDUMP_STATE_DIR", self.path("state"))
            .env("VMDUMP_SERVER_DIR", self.server_dir())
            .env("VMDUMP_ACCEL", "tcg");
        c
    }

    pub fn output(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        expect_success(&self.output(args), &format!("vmdump {args:?}"))
    }

    /// `vmdump token add <name>`: the secret, the last line of its output.
    pub fn token(&self, name: &str, read_only: bool) -> String {
        let mut args = vec!["token", "add", name];
        if read_only {
            args.push("--read-only");
        }
        let out = self.ok(&args);
        out.lines().last().unwrap().trim().to_string()
    }

    /// The test guest as VM 100 (writer every 50 ms), started by `vmdump vm start`; waits for
    /// its writer's third tick.
    pub fn boot_testguest(&self) {
        let tg = testguest_dir();
        std::fs::copy(
            tg.join("data.raw"),
            self.store().join("images/100/vm-100-disk-0.raw"),
        )
        .unwrap();
        let conf = std::fs::read_to_string(tg.join("vm.conf"))
            .unwrap()
            .replace("quiet\"", "quiet vmdump.interval=0.05\"");
        std::fs::write(self.root().join("qemu-server/100.conf"), conf).unwrap();
        self.ok(&["vm", "start", "100"]);
        let serial = self.run().join("100/serial.log");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let text = std::fs::read_to_string(&serial).unwrap_or_default();
            if text.contains("vmdump-writer: tick 3") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the test guest did not come up:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for vmid in [100, 200, 201] {
            kill_pidfile(&self.run().join(format!("{vmid}/qemu.pid")));
        }
    }
}

/// A running `vmdump serve`.
pub struct Server {
    child: Child,
    pub base: String,
    pub agent: ureq::Agent,
}

impl Server {
    /// Starts `vmdump serve --listen 127.0.0.1:0` and waits for its `serving` line.
    pub fn start(env: &Env) -> Self {
        let mut child = env
            .cmd(&["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut base = None;
        let mut line = String::new();
        while base.is_none() {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                let _ = child.kill();
                panic!("vmdump serve ended before serving");
            }
            if let Some(url) = line.trim().strip_prefix("serving ") {
                base = Some(url.trim_end_matches('/').to_string());
            }
        }
        // Keep draining stdout so the server never blocks on it.
        std::thread::spawn(move || for _ in out.lines() {});
        let pem = std::fs::read(env.server_dir().join("cert.pem")).unwrap();
        let cert = ureq::tls::Certificate::from_pem(&pem).unwrap();
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::new_with_certs(&[cert]))
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        Server {
            child,
            base: base.unwrap(),
            agent,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// One request: method, `/api/v1/...` path, bearer token, JSON body; status and JSON.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        self.raw(
            method,
            path,
            token
                .map(|t| ("Authorization", format!("Bearer {t}")))
                .into_iter()
                .collect(),
            body.map(|b| b.to_string().into_bytes()),
        )
    }

    /// A request with any headers and raw body bytes.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        headers: Vec<(&str, String)>,
        body: Option<Vec<u8>>,
    ) -> (u16, Value) {
        let (status, text, _) = self.raw_full(method, path, headers, body);
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Status, body text and the `Set-Cookie` header.
    pub fn raw_full(
        &self,
        method: &str,
        path: &str,
        headers: Vec<(&str, String)>,
        body: Option<Vec<u8>>,
    ) -> (u16, String, Option<String>) {
        let url = if path.starts_with('/') && !path.starts_with("/api/") && path != "/" {
            self.url(&format!("/api/v1{path}"))
        } else {
            self.url(path)
        };
        let mut req = http_request(method, &url);
        for (k, v) in &headers {
            req = req.header(*k, v.as_str());
        }
        let has_type = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
        if body.is_some() && !has_type {
            req = req.header("Content-Type", "application/json");
        }
        let mut resp = match body {
            Some(b) => self.agent.run(req.body(b).unwrap()),
            None => self.agent.run(req.body(()).unwrap()),
        }
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status().as_u16();
        let cookie = resp
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .unwrap_or_default();
        (status, text, cookie)
    }

    /// Follows a task's event stream to its end: the log lines, how many progress events
    /// came, and the final task.
    pub fn follow(&self, upid: &str, token: &str) -> (Vec<String>, usize, Value) {
        let url = self.url(&format!("/api/v1/tasks/{}/events", enc(upid)));
        let resp = self
            .agent
            .get(&url)
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let reader = BufReader::new(resp.into_body().into_reader());
        let (mut lines, mut progress, mut event) = (Vec::new(), 0, String::new());
        for line in reader.lines() {
            let line = line.unwrap();
            if let Some(e) = line.strip_prefix("event: ") {
                event = e.to_string();
            } else if let Some(d) = line.strip_prefix("data: ") {
                match event.as_str() {
                    "log" => lines.push(d.to_string()),
                    "progress" => progress += 1,
                    "end" => return (lines, progress, serde_json::from_str(d).unwrap()),
                    _ => {}
                }
            }
        }
        panic!("the event stream of {upid} ended without an end event; log: {lines:#?}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_request(method: &str, url: &str) -> ureq::http::request::Builder {
    ureq::http::Request::builder().method(method).uri(url)
}

/// Percent-encodes a path segment.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The only file in `dir` whose name ends with `suffix`.
pub fn one_file(dir: &Path, suffix: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    assert_eq!(found.len(), 1, "{suffix} in {}: {found:?}", dir.display());
    found[0].clone()
}

//! `vmdump serve` end to end with one booted test guest: through the API (start a backup,
//! follow its task log to the end, find the archive in the list, restore it and check the
//! restored disk), then in a real headless Chromium driven over WebDriver (chromedriver):
//! log in, back the guest up with "Back up now" and watch the progress reach 100%, see the
//! backup in the list and its size chart, restore it, create a job and see its next runs,
//! preview and apply a retention rule set, read the task history. With
//! `VMDUMP_SCREENSHOT_DIR` set, the main pages are saved there as PNG (docs/screenshots).

mod serve_common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use serve_common::{check_disk, enc, one_file, Env, Server};

#[test]
fn api_then_browser_backup_restore_jobs_retention_tasks() {
    let env = Env::new();
    env.boot_testguest();
    let admin = env.token("admin", false);
    let srv = Server::start(&env);

    // --- API ---------------------------------------------------------------------------
    let (s, guests) = srv.call("GET", "/guests", Some(&admin), None);
    assert_eq!(s, 200, "{guests}");
    let g = guests
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["vmid"] == 100)
        .unwrap_or_else(|| panic!("{guests}"));
    assert_eq!(
        (g["type"].as_str(), g["status"].as_str()),
        (Some("qemu"), Some("running"))
    );
    assert!(g["last_backup"].is_null());

    let (s, started) = srv.call(
        "POST",
        "/guests/100/backup",
        Some(&admin),
        Some(&json!({"storage": "local", "compress": "zstd"})),
    );
    assert_eq!(s, 200, "{started}");
    let upid = started["task"].as_str().unwrap().to_string();
    assert!(
        upid.starts_with("UPID:") && upid.contains(":vzdump:100:admin@token:"),
        "{upid}"
    );
    let (s, t) = srv.call("GET", &format!("/tasks/{}", enc(&upid)), Some(&admin), None);
    assert_eq!(s, 200);
    assert!(
        matches!(t["status"].as_str(), Some("running" | "ok")),
        "{t}"
    );

    let (log, progress, end) = srv.follow(&upid, &admin);
    assert_eq!(end["status"], "ok", "{log:#?}");
    assert!(
        log.iter().any(|l| l.contains("Finished Backup of VM 100")),
        "{log:#?}"
    );
    assert!(log.iter().any(|l| l.contains("fs-freeze")), "{log:#?}");
    assert_eq!(log.last().map(String::as_str), Some("TASK OK"));
    assert!(progress >= 1, "no progress event");
    let (_, t) = srv.call("GET", &format!("/tasks/{}", enc(&upid)), Some(&admin), None);
    assert_eq!(t["status"], "ok");
    assert!(t["endtime"].as_i64().unwrap() >= t["starttime"].as_i64().unwrap());
    let p = &t["progress"];
    assert!(
        p["total"].as_u64().unwrap() > 0 && p["transferred"] == p["total"],
        "{t}"
    );

    let archive = one_file(&env.dump(), ".vma.zst");
    let file = archive.file_name().unwrap().to_str().unwrap().to_string();
    let (s, list) = srv.call("GET", "/storages/local/backups", Some(&admin), None);
    assert_eq!(s, 200);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["volid"], format!("local:backup/{file}"));
    assert_eq!(list[0]["vmid"], 100);
    assert_eq!(
        list[0]["size"].as_u64(),
        Some(std::fs::metadata(&archive).unwrap().len())
    );
    let (_, guests) = srv.call("GET", "/guests", Some(&admin), None);
    assert_eq!(
        guests[0]["last_backup"]["volid"],
        format!("local:backup/{file}")
    );

    // A task started from the command line is in the same history.
    env.ok(&["prune", "local", "--keep-last", "5"]);

    let (s, started) = srv.call(
        "POST",
        &format!("/storages/local/backups/{}/restore", enc(&file)),
        Some(&admin),
        Some(&json!({"vmid": 200, "storage": "local"})),
    );
    assert_eq!(s, 200, "{started}");
    let rupid = started["task"].as_str().unwrap().to_string();
    let (log, _, end) = srv.follow(&rupid, &admin);
    assert_eq!(end["status"], "ok", "{log:#?}");
    assert!(env.root().join("qemu-server/200.conf").exists());
    let restored = one_file(&env.store().join("images/200"), ".raw");
    check_disk(&restored, 0).unwrap();
    // Restoring over it again without force is refused by the task, and leaves it alone.
    let (_, again) = srv.call(
        "POST",
        &format!("/storages/local/backups/{}/restore", enc(&file)),
        Some(&admin),
        Some(&json!({"vmid": 200})),
    );
    let (_, _, end) = srv.follow(again["task"].as_str().unwrap(), &admin);
    assert_eq!(end["status"], "error", "{end}");
    assert!(env.root().join("qemu-server/200.conf").exists());

    let (_, tasks) = srv.call("GET", "/tasks", Some(&admin), None);
    let tasks = tasks.as_array().unwrap();
    let find = |kind: &str, user: &str| {
        tasks
            .iter()
            .find(|t| t["type"] == kind && t["user"] == user)
            .unwrap_or_else(|| panic!("no {kind} task of {user}: {tasks:#?}"))
    };
    assert_eq!(find("vzdump", "admin@token")["status"], "ok");
    assert!(tasks
        .iter()
        .any(|t| t["upid"] == json!(rupid.clone()) && t["status"] == "ok"));
    assert_eq!(find("prune", "root@cli")["status"], "ok");
    assert!(tasks
        .iter()
        .any(|t| t["type"] == "qmrestore" && t["status"] == "error"));

    // --- the browser -------------------------------------------------------------------
    let shots = std::env::var_os("VMDUMP_SCREENSHOT_DIR").map(PathBuf::from);
    let browser = Browser::start(env.path("chrome"));
    browser.go(&format!("{}/", srv.base));
    browser.wait_visible("#login-token");
    browser.type_into("#login-token", &admin);
    browser.click("#login-button");
    browser.wait_for(
        "guests table",
        "return document.querySelectorAll('#guests-table tbody tr[data-vmid=\"100\"]').length",
        |v| v == 1,
    );
    browser.wait_for(
        "storages",
        "return document.querySelectorAll('#backup-storage option').length",
        |v| v >= 1,
    );
    browser.shot(&shots, "guests");

    // Back up now: progress to 100%, the log, OK.
    browser.click(".backup-now[data-vmid=\"100\"]");
    browser.wait_visible("#backup-dialog");
    browser.click("#backup-start");
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let st = browser.eval("return [document.querySelector('#task-panel').dataset.status || '', document.querySelector('#task-progress').value]");
        seen.push(st[1].as_f64().unwrap_or(-1.0));
        if st[0] == "ok" || st[0] == "error" {
            assert_eq!(st[0], "ok", "{}", browser.text("#task-log"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backup did not end: {}",
            browser.text("#task-log")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        browser.eval("return document.querySelector('#task-progress').value"),
        json!(100)
    );
    assert_eq!(browser.text("#task-percent"), "100%");
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "progress went back: {seen:?}"
    );
    assert!(browser
        .text("#task-log")
        .contains("Finished Backup of VM 100"));
    browser.shot(&shots, "backup-task");
    browser.click("#task-close");

    // The new backup is in the list (two now), with the chart.
    browser.click("#nav-backups");
    browser.wait_for(
        "backups",
        "return document.querySelectorAll('#backups-table tbody tr').length",
        |v| v == 2,
    );
    browser.wait_for(
        "chart",
        "return document.querySelectorAll('#size-chart svg circle').length",
        |v| v == 2,
    );
    browser.shot(&shots, "backups");
    assert_eq!(
        std::fs::read_dir(env.dump())
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".vma.zst"))
            .count(),
        2
    );

    // Restore the newest one as VM 201.
    browser.click("#backups-table tbody tr:first-child .restore");
    browser.wait_visible("#restore-dialog");
    browser.eval("document.querySelector('#restore-vmid').value = ''; return 0");
    browser.type_into("#restore-vmid", "201");
    browser.eval("document.querySelector('#task-panel').dataset.status = ''; return 0");
    browser.click("#restore-go");
    browser.wait_for("restore task", "return document.querySelector('#task-panel').dataset.status === 'ok' ? 1 : (document.querySelector('#task-panel').dataset.status === 'error' ? -1 : 0)", |v| v != 0);
    assert_eq!(
        browser.eval("return document.querySelector('#task-panel').dataset.status"),
        json!("ok"),
        "{}",
        browser.text("#task-log")
    );
    assert!(browser.text("#task-title").contains("201"));
    assert!(env.root().join("qemu-server/201.conf").exists());
    check_disk(&one_file(&env.store().join("images/201"), ".raw"), 0).unwrap();

    // A job with its next runs.
    browser.click("#task-close");
    browser.click("#nav-jobs");
    browser.type_into("#job-id", "nightly");
    browser.eval("document.querySelector('#job-schedule').value = ''; return 0");
    browser.type_into("#job-schedule", "mon..fri 21:30");
    browser.type_into("#job-vmid", "100");
    browser.type_into("#job-prune", "keep-last=3");
    browser.wait_for(
        "next runs",
        "return document.querySelector('#job-next').textContent.split(';').length",
        |v| v == 5,
    );
    browser.click("#job-save");
    browser.wait_for(
        "job row",
        "return document.querySelectorAll('#jobs-table tr[data-job=\"nightly\"]').length",
        |v| v == 1,
    );
    browser.shot(&shots, "jobs");
    let jobs_cfg = std::fs::read_to_string(env.root().join("jobs.cfg")).unwrap();
    assert!(
        jobs_cfg.contains("vzdump: nightly") && jobs_cfg.contains("keep-last=3"),
        "{jobs_cfg}"
    );

    // Retention preview, then apply: keep-last=1 removes the older of the two backups.
    browser.click("#nav-prune");
    browser.type_into("#prune-keep-last", "1");
    browser.click("#prune-preview");
    browser.wait_for(
        "plan",
        "return document.querySelectorAll('#prune-table tbody tr').length",
        |v| v == 2,
    );
    assert_eq!(
        browser.eval("return document.querySelectorAll('#prune-table tr.remove').length"),
        json!(1)
    );
    browser.shot(&shots, "retention");
    assert_eq!(
        std::fs::read_dir(env.dump())
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".vma.zst"))
            .count(),
        2,
        "a preview removes nothing"
    );
    browser.eval("window.confirm = () => true; document.querySelector('#task-panel').dataset.status = ''; return 0");
    browser.click("#prune-apply");
    browser.wait_for(
        "prune task",
        "return document.querySelector('#task-panel').dataset.status === 'ok' ? 1 : 0",
        |v| v == 1,
    );
    assert_eq!(
        std::fs::read_dir(env.dump())
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".vma.zst"))
            .count(),
        1
    );

    // Task history: API, browser and CLI tasks.
    browser.click("#task-close");
    browser.click("#nav-tasks");
    browser.wait_for(
        "tasks",
        "return document.querySelectorAll('#tasks-table tbody tr').length",
        |v| v >= 6,
    );
    browser.shot(&shots, "tasks");

    // A backup from the command line is a task too, with its log, seen through the API.
    env.ok(&["backup", "100", "--storage", "local"]);
    let (_, tasks) = srv.call("GET", "/tasks", Some(&admin), None);
    let cli = tasks
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "vzdump" && t["user"] == "root@cli")
        .unwrap_or_else(|| panic!("no CLI backup task: {tasks:#}"))
        .clone();
    assert_eq!(
        (cli["status"].as_str(), cli["id"].as_str()),
        (Some("ok"), Some("100"))
    );
    let (s, log) = srv.call(
        "GET",
        &format!("/tasks/{}/log", enc(cli["upid"].as_str().unwrap())),
        Some(&admin),
        None,
    );
    assert_eq!(s, 200);
    let lines: Vec<&str> = log["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Finished Backup of VM 100")),
        "{lines:#?}"
    );
    assert_eq!(lines.last(), Some(&"TASK OK"));
}

/// Headless Chromium through chromedriver's WebDriver HTTP API.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: ureq::Agent,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    fn start(profile: PathBuf) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver, installed by scripts/setup.sh)");
        let http: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while http.get(&format!("{base}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1000", format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let mut b = Browser {
            driver,
            base,
            session: String::new(),
            http,
        };
        let v = b.post("/session", &caps);
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        b
    }

    fn post(&self, path: &str, body: &Value) -> Value {
        let mut r = self
            .http
            .post(&format!("{}{path}", self.base))
            .send_json(body)
            .unwrap();
        let v: Value = r
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_json()
            .unwrap();
        assert!(r.status().is_success(), "WebDriver {path}: {v}");
        v["value"].clone()
    }

    fn get(&self, path: &str) -> Value {
        let mut r = self
            .http
            .get(&format!("{}{path}", self.base))
            .call()
            .unwrap();
        let v: Value = r
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_json()
            .unwrap();
        assert!(r.status().is_success(), "WebDriver {path}: {v}");
        v["value"].clone()
    }

    fn s(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    fn go(&self, url: &str) {
        self.post(&self.s("/url"), &json!({ "url": url }));
    }

    fn find(&self, css: &str) -> String {
        let v = self.post(
            &self.s("/element"),
            &json!({"using": "css selector", "value": css}),
        );
        v[ELEMENT].as_str().unwrap().to_string()
    }

    fn click(&self, css: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // The element may not be there or clickable yet (a page still loading).
            let id = self.post(
                &self.s("/elements"),
                &json!({"using": "css selector", "value": css}),
            );
            if let Some(e) = id
                .as_array()
                .and_then(|a| a.first())
                .and_then(|e| e[ELEMENT].as_str())
            {
                let r = self
                    .http
                    .post(&format!(
                        "{}{}",
                        self.base,
                        self.s(&format!("/element/{e}/click"))
                    ))
                    .send_json(json!({}))
                    .unwrap();
                if r.status().is_success() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "cannot click {css}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.post(
            &self.s(&format!("/element/{id}/value")),
            &json!({ "text": text }),
        );
    }

    fn text(&self, css: &str) -> String {
        let id = self.find(css);
        self.get(&self.s(&format!("/element/{id}/text")))
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    fn eval(&self, script: &str) -> Value {
        self.post(
            &self.s("/execute/sync"),
            &json!({"script": script, "args": []}),
        )
    }

    fn wait_visible(&self, css: &str) {
        let script = format!(
            "const e = document.querySelector('{}'); return e && e.getClientRects().length > 0 ? 1 : 0",
            css.replace('\'', "\\'")
        );
        self.wait_for(css, &script, |v| v == 1);
    }

    /// Polls `script` (returning a number) until `ok` holds, for up to 5 minutes.
    fn wait_for(&self, what: &str, script: &str, ok: impl Fn(i64) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let v = self.eval(script).as_i64().unwrap_or(i64::MIN);
            if ok(v) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "waiting for {what}: last value {v}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn shot(&self, dir: &Option<PathBuf>, name: &str) {
        let Some(dir) = dir else { return };
        let png = self.get(&self.s("/screenshot"));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(Path::new(dir).join(format!("{name}.png")), bytes).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self
                .http
                .delete(&format!("{}/session/{}", self.base, self.session))
                .call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

//! `vmdump vm` end to end: each command is a separate process, so QEMU must outlive the CLI
//! and be found again through its run directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vmdump_testkit::{expect_success, kill_pidfile, pid_alive};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/qemu-server")).unwrap();
        std::fs::write(
            dir.path().join("etc/storage.cfg"),
            format!(
                "dir: local\n\tpath {}\n\tcontent images\n",
                dir.path().join("store").display()
            ),
        )
        .unwrap();
        Env { dir }
    }

    fn etc(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    fn run_base(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn config(&self, vmid: u32, text: &str) {
        std::fs::write(self.etc().join(format!("qemu-server/{vmid}.conf")), text).unwrap();
    }

    /// Run `vmdump vm <args>` with the root from the environment and the run base by option.
    fn vm(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_vmdump"))
            .arg("vm")
            .args(args)
            .arg("--run-dir")
            .arg(self.run_base())
            .env("VMDUMP_ROOT", self.etc())
            .env("VMDUMP_LOG", "info")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        expect_success(&self.vm(args), &format!("vmdump vm {args:?}"))
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let Ok(rd) = std::fs::read_dir(self.run_base()) else {
            return;
        };
        for e in rd.flatten() {
            kill_pidfile(&e.path().join("qemu.pid"));
        }
    }
}

#[test]
fn start_status_suspend_resume_list_stop_across_processes() {
    let env = Env::new();
    env.config(300, "name: cli-vm\nmemory: 64\nmachine: q35\n");
    env.config(301, "name: idle\nmemory: 80\n");
    let out = env.ok(&["start", "300", "--paused"]);
    assert!(out.starts_with("VM 300 started (pid "), "{out}");
    assert!(out.trim_end().ends_with(", paused)"), "{out}");
    let status = env.ok(&["status", "300"]);
    assert!(
        status.starts_with("status: running\nqmpstatus: prelaunch\npid: "),
        "{status}"
    );
    let pid: u32 = status.lines().nth(2).unwrap()["pid: ".len()..]
        .parse()
        .unwrap();
    assert!(pid_alive(pid));

    env.ok(&["resume", "300"]);
    assert!(env.ok(&["status", "300"]).contains("qmpstatus: running\n"));
    env.ok(&["suspend", "300"]);
    assert!(env.ok(&["status", "300"]).contains("qmpstatus: paused\n"));

    let list = env.ok(&["list"]);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 3, "{list}");
    assert!(lines[0].contains("VMID") && lines[0].contains("STATUS"));
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row, ["300", "cli-vm", "paused", "64", &pid.to_string()]);
    let row: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(row, ["301", "idle", "stopped", "80"]);

    // A second start fails and says why.
    let out = env.vm(&["start", "300"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("VM 300 is already running"));

    assert_eq!(env.ok(&["stop", "300"]), "VM 300 stopped\n");
    assert_eq!(env.ok(&["status", "300"]), "status: stopped\n");
    assert!(!pid_alive(pid));
    let run = env.run_base().join("300");
    for f in ["qmp.sock", "ctl.sock", "qga.sock", "qemu.pid"] {
        assert!(!run.join(f).exists(), "{f} left behind");
    }
}

#[test]
fn shutdown_of_a_guest_without_acpi_handling_times_out_and_stops() {
    let env = Env::new();
    env.config(302, "memory: 64\n");
    env.ok(&["start", "302"]);
    let t = std::time::Instant::now();
    let out = env.ok(&["shutdown", "302", "--timeout", "1"]);
    assert_eq!(out, "VM 302 stopped hard after the shutdown timeout\n");
    assert!(t.elapsed() >= std::time::Duration::from_secs(1));
    assert_eq!(env.ok(&["status", "302"]), "status: stopped\n");
    assert!(!Path::new(&env.run_base().join("302/qemu.pid")).exists());
}

#[test]
fn malformed_config_and_unknown_vm_fail_with_file_and_line() {
    let env = Env::new();
    env.config(
        303,
        "name: x\nscsi0: local:303/vm-303-disk-0.raw,size=1G,,\n",
    );
    let out = env.vm(&["start", "303"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let conf = env.etc().join("qemu-server/303.conf");
    assert!(
        err.contains(&format!("{}:2: invalid value for 'scsi0'", conf.display())),
        "{err}"
    );
    let out = env.vm(&["status", "399"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("qemu-server/399.conf"));
    // --root beats the environment.
    let other = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vmdump"))
        .args(["vm", "list", "--root"])
        .arg(other.path())
        .env("VMDUMP_ROOT", env.etc())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
}

#[test]
fn json_status_list_and_showcmd() {
    let env = Env::new();
    env.config(
        304,
        "name: j\nmemory: 72\nargs: -smbios \"type=1,manufacturer=a b\"\n",
    );
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["status", "304", "--output-format", "json"])).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"vmid": 304, "status": "stopped", "qmpstatus": null, "pid": null})
    );
    env.ok(&["start", "304", "--paused"]);
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["list", "--output-format", "json"])).unwrap();
    assert_eq!(v[0]["vmid"], 304);
    assert_eq!(v[0]["status"], "running");
    assert_eq!(v[0]["qmpstatus"], "prelaunch");
    assert_eq!(v[0]["maxmem"], 72 * 1024 * 1024);
    assert!(v[0]["pid"].as_u64().is_some());
    env.ok(&["stop", "304"]);
    let cmd = env.ok(&["showcmd", "304", "--paused", "--accel", "tcg"]);
    assert!(
        cmd.starts_with("qemu-system-x86_64 -machine pc,accel=tcg "),
        "{cmd}"
    );
    assert!(cmd.contains(" -S "), "{cmd}");
    assert!(
        cmd.trim_end()
            .ends_with("-smbios 'type=1,manufacturer=a b'"),
        "{cmd}"
    );
}

#[test]
fn a_reader_that_closes_stdout_early_is_not_a_failure() {
    // `vmdump vm list | head -0`: the reader is gone before the first line is written, so
    // every write gets EPIPE. vmdump stops quietly with success (no panic, no message).
    let env = Env::new();
    env.config(100, "memory: 128\n");
    env.config(101, "memory: 128\n");
    for args in [&["list"][..], &["status", "100"], &["showcmd", "100"]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_vmdump"))
            .arg("vm")
            .args(args)
            .arg("--run-dir")
            .arg(env.run_base())
            .env("VMDUMP_ROOT", env.etc())
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "vm {args:?}: {:?} {stderr}",
            out.status
        );
        assert!(stderr.is_empty(), "vm {args:?}: {stderr}");
    }
}

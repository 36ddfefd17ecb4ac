//! README.md's worked example, run as written (issue 11): the `sh` block of the section
//! "A worked example" is read from README.md itself, so this test breaks when the README
//! drifts. `/etc/vmdump` and `/var/lib/vmdump` are mapped to a temporary directory (and
//! `$VMDUMP_ROOT` / `$VMDUMP_RUN_DIR` point there); the block runs under `bash -e` with this
//! build's `vmdump` first on `PATH`. Real QEMU; the VM idles in its firmware.

use std::path::{Path, PathBuf};
use std::process::Command;

use vmdump_testkit::{expect_success, kill_pidfile, repo_root};

/// The `sh` code blocks of the section headed `heading`.
fn sh_blocks(markdown: &str, heading: &str) -> Vec<String> {
    let section = markdown
        .split("\n## ")
        .find(|s| s.starts_with(heading))
        .unwrap_or_else(|| panic!("README.md has no section '{heading}'"));
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in section.lines() {
        match (current.as_mut(), line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(b), "```") => {
                blocks.push(std::mem::take(b));
                current = None;
            }
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// Kills what the example started if the test fails half-way.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for vmid in ["100", "200"] {
            kill_pidfile(&self.0.join(vmid).join("qemu.pid"));
        }
    }
}

#[test]
fn worked_example_runs_as_written() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let blocks = sh_blocks(&readme, "A worked example");
    assert_eq!(blocks.len(), 1, "expected one sh block: {blocks:?}");
    let tmp = tempfile::tempdir().expect("tempdir");
    let etc = tmp.path().join("etc");
    let lib = tmp.path().join("lib");
    let run = tmp.path().join("run");
    let _cleanup = Cleanup(run.clone());
    let script = blocks[0]
        .replace("/etc/vmdump", &etc.display().to_string())
        .replace("/var/lib/vmdump", &lib.display().to_string());
    assert!(
        !script.contains("/etc/vmdump") && !script.contains("/var/lib/vmdump"),
        "{script}"
    );
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_vmdump"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["-e", "-o", "pipefail", "-c", &script])
        .env("PATH", path)
        .env("VMDUMP_ROOT", &etc)
        .env("VMDUMP_RUN_DIR", &run)
        .env_remove("VMDUMP_LOCAL_PATH")
        .output()
        .expect("bash");
    let stdout = expect_success(&out, "README worked example");
    for line in [
        "VM 100 started",
        "INFO: Backup job finished successfully",
        "drive-scsi0",
        "restored VM 200 (1 disk(s))",
        "VM 100 stopped",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in\n{stdout}");
    }
    let conf = std::fs::read_to_string(etc.join("qemu-server/200.conf")).expect("200.conf");
    assert!(
        conf.contains("scsi0: local:200/vm-200-disk-0.qcow2"),
        "{conf}"
    );
    assert!(lib.join("images/200/vm-200-disk-0.qcow2").exists());
}

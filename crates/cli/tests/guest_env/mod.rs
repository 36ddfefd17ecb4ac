//! A vmdump root with the test guest as VM 100 (its config and data disk on the `local` dir
//! storage), driven through the `vmdump` binary: VMs started by `vmdump vm start`, their
//! consoles in the run directory. The shared setup of the suites that boot what they restore.
//! Every QEMU the run directory knows is killed when the environment is dropped.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use vmdump_testkit::{expect_success, kill_pidfile, testguest_dir};

pub const BIN: &str = env!("CARGO_BIN_EXE_vmdump");

pub struct GuestEnv {
    dir: tempfile::TempDir,
}

impl GuestEnv {
    /// The root with storage `local` (images and backups) and the test guest as VM 100.
    pub fn new() -> Self {
        let guest = testguest_dir();
        assert!(
            guest.join("vm.conf").exists() && guest.join("data.raw").exists(),
            "test guest missing: run testguest/build.sh"
        );
        let env = GuestEnv {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(env.root().join("qemu-server")).unwrap();
        std::fs::write(
            env.root().join("storage.cfg"),
            format!(
                "dir: local\n\tpath {}\n\tcontent images,backup\n",
                env.store().display()
            ),
        )
        .unwrap();
        let conf = std::fs::read_to_string(guest.join("vm.conf"))
            .unwrap()
            .replace("@VMID@", "100");
        std::fs::write(env.root().join("qemu-server/100.conf"), conf).unwrap();
        let images = env.store().join("images/100");
        std::fs::create_dir_all(&images).unwrap();
        std::fs::copy(guest.join("data.raw"), images.join("vm-100-disk-0.raw")).unwrap();
        env
    }

    /// The scratch directory everything lives in.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("etc")
    }
    pub fn run(&self) -> PathBuf {
        self.dir.path().join("run")
    }
    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// `vmdump <args>` against this root and run directory, TCG.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("VMDUMP_ROOT", self.root())
            .env("VMDUMP_RUN_DIR", self.run())
            .env("VMDUMP_ACCEL", "tcg");
        c
    }

    /// Runs `vmdump <args>`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out: Output = self.cmd(args).output().unwrap();
        expect_success(&out, &format!("vmdump {args:?}"))
    }

    /// The console of VM `vmid` so far.
    pub fn serial(&self, vmid: u32) -> String {
        std::fs::read_to_string(self.run().join(format!("{vmid}/serial.log"))).unwrap_or_default()
    }

    /// Waits until VM `vmid`'s console shows `needle`, for at most `timeout`; `check` runs on
    /// every round and stops the wait with its message (e.g. the process that should keep
    /// the VM going has ended).
    pub fn wait_serial_while(
        &self,
        vmid: u32,
        needle: &str,
        timeout: Duration,
        check: &mut dyn FnMut() -> Result<(), String>,
    ) {
        let start = Instant::now();
        while !self.serial(vmid).contains(needle) {
            if let Err(why) = check() {
                panic!("VM {vmid}: {why} before '{needle}'");
            }
            assert!(
                start.elapsed() < timeout,
                "VM {vmid}: no '{needle}' on the console within {timeout:?}:\n{}",
                self.serial(vmid)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until VM `vmid`'s console shows `needle`, for at most `timeout`.
    pub fn wait_serial(&self, vmid: u32, needle: &str, timeout: Duration) {
        self.wait_serial_while(vmid, needle, timeout, &mut || Ok(()));
    }

    /// The archive of the newest backup on `local` whose name ends in `suffix`.
    pub fn archive(&self, suffix: &str) -> PathBuf {
        let mut found: Vec<PathBuf> = std::fs::read_dir(self.store().join("dump"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(suffix))
            .collect();
        found.sort();
        found.pop().expect("a backup archive")
    }
}

impl Drop for GuestEnv {
    fn drop(&mut self) {
        let Ok(rd) = std::fs::read_dir(self.run()) else {
            return;
        };
        for e in rd.flatten() {
            kill_pidfile(&e.path().join("qemu.pid"));
        }
    }
}

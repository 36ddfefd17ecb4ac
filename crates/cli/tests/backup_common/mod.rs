//! Helpers of the `vmdump backup` end-to-end tests: a config root with a run dir, so QEMU
//! started by the test in `<run>/<vmid>/` is found as a running VM. QEMU, hashes and the
//! dissect.archive oracle come from `vmdump-testkit`, re-exported here.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::Result;
pub use vmdump_testkit::*;

/// A config root with a `local` dir storage under `base/store` and a run dir `base/run`.
pub struct Env {
    pub base: PathBuf,
    pub root: PathBuf,
    pub store: PathBuf,
    pub run: PathBuf,
}

impl Env {
    pub fn new(base: &Path) -> Result<Self> {
        let root = base.join("etc");
        let store = base.join("store");
        let run = base.join("run");
        std::fs::create_dir_all(root.join("qemu-server"))?;
        std::fs::create_dir_all(store.join("images/100"))?;
        std::fs::create_dir_all(&run)?;
        std::fs::write(
            root.join("storage.cfg"),
            format!(
                "dir: local\n\tpath {}\n\tcontent images,backup,iso\n",
                store.display()
            ),
        )?;
        Ok(Self {
            base: base.to_path_buf(),
            root,
            store,
            run,
        })
    }

    pub fn image(&self, vmid: u32, name: &str) -> PathBuf {
        self.store.join(format!("images/{vmid}/{name}"))
    }

    pub fn write_config(&self, vmid: u32, text: &str) -> Result<()> {
        std::fs::write(self.root.join(format!("qemu-server/{vmid}.conf")), text)?;
        Ok(())
    }

    /// The run dir of a VM (created): QEMU of [`Qemu::start`] there is the running `vmid`.
    pub fn vm_dir(&self, vmid: u32) -> Result<PathBuf> {
        let dir = self.run.join(vmid.to_string());
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// QEMU paused in the run dir of `vmid` (so vmdump sees a running VM) with one raw disk
    /// `images/<vmid>/<name>` as `key`.
    pub async fn paused_vm(&self, vmid: u32, key: &str, name: &str) -> Result<Qemu> {
        let path = self.image(vmid, name);
        Qemu::paused(
            &self.vm_dir(vmid)?,
            &[Disk {
                key,
                path: &path,
                format: "raw",
            }],
        )
        .await
    }

    pub fn dump(&self) -> PathBuf {
        self.store.join("dump")
    }

    /// `vmdump backup <args> --root <root>` with the run dir set.
    pub fn vmdump_backup(&self, args: &[&str]) -> Result<Output> {
        Ok(self.vmdump_command(args).output()?)
    }

    pub fn vmdump_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vmdump"));
        c.arg("backup")
            .args(args)
            .arg("--root")
            .arg(&self.root)
            .env("VMDUMP_RUN_DIR", &self.run)
            .env_remove("VMDUMP_ROOT");
        c
    }

    /// Files in the dump directory.
    pub fn dump_files(&self) -> Vec<String> {
        file_names(&self.dump())
    }

    /// Sets up VM 100 for the test guest: its data disk (virtio0) and a second raw disk of
    /// `extra_mib` MiB, the first half random (virtio1). Returns the hash of virtio1.
    pub fn setup_guest(&self, extra_mib: u64) -> Result<String> {
        let a = self.image(100, "vm-100-disk-0.raw");
        std::fs::copy(testguest_dir().join("data.raw"), &a)?;
        let b = self.image(100, "vm-100-disk-1.raw");
        std::fs::File::create(&b)?.set_len(extra_mib * MIB)?;
        write_random(&b, 0, extra_mib * MIB / 2, 99)?;
        self.write_config(
            100,
            &format!(
                "agent: 1\nmemory: 256\nname: vmdump-testguest\nvirtio0: local:100/vm-100-disk-0.raw,size=64M\nvirtio1: local:100/vm-100-disk-1.raw,size={extra_mib}M\n"
            ),
        )?;
        sha256_file(&b)
    }

    /// Boots VM 100 of [`Env::setup_guest`] (the test guest, writer every 50 ms) and waits
    /// until it is ready.
    pub async fn boot_guest(&self) -> Result<Qemu> {
        let a = self.image(100, "vm-100-disk-0.raw");
        let b = self.image(100, "vm-100-disk-1.raw");
        let vm = Qemu::testguest(
            &self.vm_dir(100)?,
            &[
                Disk {
                    key: "virtio0",
                    path: &a,
                    format: "raw",
                },
                Disk {
                    key: "virtio1",
                    path: &b,
                    format: "raw",
                },
            ],
            "vmdump.interval=0.05",
        )
        .await?;
        vm.wait_ready().await?;
        Ok(vm)
    }

    /// The name of the one dump file ending with `suffix` (`.vma.zst`, ...).
    pub fn archive_name(&self, suffix: &str) -> String {
        let files = self.dump_files();
        files
            .iter()
            .find(|f| f.ends_with(suffix))
            .unwrap_or_else(|| panic!("no {suffix} in {files:?}"))
            .clone()
    }

    /// Asserts that no archive, finished or temporary, is in the dump directory.
    pub fn assert_no_archive(&self) {
        let files = self.dump_files();
        assert!(
            !files
                .iter()
                .any(|f| f.contains(".vma") || f.ends_with(".dat")),
            "{files:?}"
        );
    }
}

/// Sorted names of the entries in `dir` (empty if it cannot be read).
pub fn file_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Waits (up to 10 s) until the test guest's writer has ticked at least 3 times; its last
/// tick.
pub async fn writer_ticking(vm: &Qemu) -> Result<u64> {
    for _ in 0..100 {
        if vm.last_tick() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let tick = vm.last_tick();
    anyhow::ensure!(tick >= 3, "the guest writer does not run");
    Ok(tick)
}

/// The archive `archive` read by the independent oracle (dissect.archive): its devices after
/// the first are `more` (name, size, SHA-256), and its first device, the test guest's ext4,
/// is clean (no journal replay) with the writer's files complete up to `tick`.
pub fn check_guest_archive(
    archive: &Path,
    scratch: &Path,
    more: &[(String, u64, String)],
    tick: u64,
) -> Result<()> {
    let plain = plain_vma(archive, scratch)?;
    let devs = dissect_devices(&plain)?;
    assert_eq!(devs.len(), 1 + more.len(), "{devs:?}");
    assert_eq!(&devs[1..], more);
    let disk = scratch.join("guest-disk.raw");
    dissect_extract(&plain, &devs[0].0, &disk)?;
    check_disk(&disk, tick)?;
    std::fs::remove_file(&disk)?;
    Ok(())
}

//! Containers end to end on real LXC: `vmdump ct`, backups in stop, suspend and snapshot
//! mode of a busybox container whose init keeps writing a counter (`/data/a` then `/data/b`),
//! on a dir storage (raw ext4 image, plain directory) and a btrfs storage on a loop file;
//! restore of privileged and unprivileged containers that then start; a GNU tar archive made
//! with vzdump's flags restores with us; hostile archives are refused leaving nothing behind.
//! Needs root, lxc, btrfs-progs, rsync, GNU tar, zstd, attr, acl (scripts/setup.sh).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use vmdump_testkit::mount::TestMount;

fn sh(script: &str) -> String {
    let o = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .output()
        .expect("run sh");
    assert!(
        o.status.success(),
        "{script}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The container's init script: a counter written to two files in order, resumed from the
/// last value after a restart.
const RCS: &str = r#"#!/bin/sh
mkdir -p /data
i=$(cat /data/a 2>/dev/null); i=${i:-0}
( while :; do i=$((i+1)); echo $i > /data/a; echo $i > /data/b; usleep 5000; done ) </dev/null >/dev/null 2>&1 &
"#;

/// A busybox root filesystem with the counter and files for the exclude checks, as a
/// directory (built once per test process).
fn template_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Built once per machine (busybox and the script do not change between runs).
        let done = std::env::temp_dir().join("vmdump-ct-template-1");
        if done.join("ready").exists() {
            return done.join("rootfs");
        }
        let base = std::env::temp_dir().join(format!("vmdump-ct-template-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).expect("mkdir");
        let rootfs = base.join("rootfs");
        sh(&format!(
            "printf 'lxc.net.0.type = empty\\n' > {b}/c.conf
             lxc-create -P {b}/lxc -n tpl -t busybox -f {b}/c.conf --dir={r} >/dev/null 2>&1
             rm -rf {b}/lxc
             cd {r}
             mkdir -p data/skip var/tmp var/run tmp lost+found
             echo j > tmp/junk; echo v > var/tmp/vt; echo p > var/run/foo.pid; echo k > var/run/keep.txt
             echo s > data/skip/x; echo c > data/x.cache; echo keep > data/keep
             echo x > data/xattr; setfattr -n user.note -v hello data/xattr; setfacl -m u:1234:rw data/xattr
             truncate -s 64M data/sparse; echo mid | dd of=data/sparse bs=1 seek=1000000 conv=notrunc status=none",
            b = base.display(),
            r = rootfs.display()
        ));
        std::fs::write(rootfs.join("etc/init.d/rcS"), RCS).expect("write rcS");
        sh(&format!("chmod 755 {}/etc/init.d/rcS", rootfs.display()));
        std::fs::write(base.join("ready"), "").expect("mark");
        if std::fs::rename(&base, &done).is_err() {
            // Another run finished first: use its copy.
            let _ = std::fs::remove_dir_all(&base);
        }
        done.join("rootfs")
    })
}

/// The template as a tarball (GNU tar, numeric owners) for `vmdump ct create`.
fn template_tar() -> &'static Path {
    static TAR: OnceLock<PathBuf> = OnceLock::new();
    TAR.get_or_init(|| {
        let dir = template_dir();
        let tar = dir.parent().expect("parent").join("rootfs.tar.zst");
        if !tar.exists() {
            let tmp = tar.with_extension(format!("{}.tmp", std::process::id()));
            let flags = vmdump_tar::VZDUMP_TAR_FLAGS.join(" ");
            sh(&format!(
                "tar cpf - {flags} -C {} . | zstd -q -f -o {} && mv {} {}",
                dir.display(),
                tmp.display(),
                tmp.display(),
                tar.display()
            ));
        }
        tar
    })
}

/// A config root with a dir storage `local` and a btrfs storage `bt` on a loop file.
struct Lab {
    /// The btrfs storage's file system: unmounted after `Lab::drop` stopped the containers
    /// and before the directory goes (fields drop in order).
    _btrfs_fs: Option<TestMount>,
    dir: tempfile::TempDir,
    btrfs: PathBuf,
    vmids: std::cell::RefCell<Vec<u32>>,
}

impl Lab {
    /// A lab; with `btrfs`, the btrfs storage is mounted (a loop device: the hosts have few,
    /// so only the tests that need it take one).
    fn new(with_btrfs: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path();
        sh(&format!("chmod 755 {}", p.display()));
        let btrfs = p.join("btrfs");
        std::fs::create_dir_all(&btrfs).expect("mkdir");
        let btrfs_fs = with_btrfs
            .then(|| TestMount::btrfs(&p.join("btrfs.img"), &btrfs, 300).expect("btrfs loop file"));
        std::fs::create_dir_all(p.join("etc/lxc")).expect("mkdir");
        std::fs::write(
            p.join("etc/storage.cfg"),
            format!(
                "dir: local\n\tpath {}\n\tcontent images,rootdir,backup\n\nbtrfs: bt\n\tpath {}\n\tcontent images,rootdir\n",
                p.join("store").display(),
                btrfs.display()
            ),
        )
        .expect("storage.cfg");
        Lab {
            _btrfs_fs: btrfs_fs,
            dir,
            btrfs,
            vmids: Default::default(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn run_base(&self) -> PathBuf {
        self.path().join("run")
    }

    fn dump(&self) -> PathBuf {
        self.path().join("store/dump")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vmdump"));
        c.args(args)
            .env("VMDUMP_ROOT", self.path().join("etc"))
            .env("VMDUMP_RUN_DIR", self.run_base());
        c
    }

    fn vmdump(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run vmdump")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.vmdump(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(o.status.success(), "vmdump {args:?} failed:\n{text}");
        text
    }

    /// A container from the template tarball with the busybox halt signal, started.
    fn container(&self, vmid: u32, rootfs: &str, unprivileged: bool) {
        self.vmids.borrow_mut().push(vmid);
        let id = vmid.to_string();
        let tar = template_tar().display().to_string();
        self.ok(&[
            "ct",
            "create",
            &id,
            &tar,
            "--rootfs",
            rootfs,
            "--hostname",
            "bb",
            "--unprivileged",
            if unprivileged { "1" } else { "0" },
        ]);
        let conf = self.path().join(format!("etc/lxc/{vmid}.conf"));
        let mut text = std::fs::read_to_string(&conf).expect("config");
        text.push_str("lxc.signal.halt: SIGUSR1\n");
        std::fs::write(&conf, text).expect("write config");
    }

    fn start(&self, vmid: u32) {
        self.ok(&["ct", "start", &vmid.to_string()]);
        // Until the counter moves.
        let c0 = self.wait_counter(vmid, 0);
        self.wait_counter(vmid, c0);
    }

    fn pid(&self, vmid: u32) -> Option<u32> {
        let out = self.ok(&["ct", "status", &vmid.to_string(), "--output-format", "json"]);
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
        v["pid"].as_u64().map(|p| p as u32)
    }

    fn status(&self, vmid: u32) -> String {
        let out = self.ok(&["ct", "status", &vmid.to_string(), "--output-format", "json"]);
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
        v["status"].as_str().expect("status").to_string()
    }

    /// The live counter (`/data/a` seen through the container's root).
    fn counter(&self, vmid: u32) -> u64 {
        let pid = self.pid(vmid).expect("running");
        // A read can meet the file just truncated by the writer: read again.
        for _ in 0..200 {
            let v = std::fs::read_to_string(format!("/proc/{pid}/root/data/a"))
                .ok()
                .and_then(|s| s.trim().parse().ok());
            if let Some(v) = v {
                return v;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        0
    }

    /// Waits until the counter is above `above`; returns it.
    fn wait_counter(&self, vmid: u32, above: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.pid(vmid).is_some() {
                let c = self.counter(vmid);
                if c > above {
                    return c;
                }
            }
            assert!(
                Instant::now() < deadline,
                "CT {vmid}: counter stuck at {above}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The one archive of `vmid` in the dump directory with the given extension.
    fn archive(&self, vmid: u32) -> PathBuf {
        let mut found: Vec<PathBuf> = std::fs::read_dir(self.dump())
            .expect("dump dir")
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let n = p
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                n.starts_with(&format!("vzdump-lxc-{vmid}-")) && n.contains(".tar")
            })
            .collect();
        found.sort();
        found.pop().expect("an archive")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let lxcpath = self.run_base().join("lxc");
        for vmid in self.vmids.borrow().iter() {
            let _ = Command::new("lxc-stop")
                .arg("-P")
                .arg(&lxcpath)
                .args(["-n", &vmid.to_string(), "-k"])
                .output();
        }
    }
}

/// Members of an archive: GNU tar's listing and the counter files' values.
fn gnu_list(archive: &Path) -> Vec<String> {
    sh(&format!("zstd -dc {} | tar tf -", archive.display()))
        .lines()
        .map(str::to_string)
        .collect()
}

fn archived_counter(archive: &Path) -> (String, String) {
    let get = |f: &str| {
        sh(&format!(
            "zstd -dc {} | tar xOf - ./data/{f}",
            archive.display()
        ))
        .trim()
        .to_string()
    };
    (get("a"), get("b"))
}

/// Point-in-time consistency of a live copy: b is written after a, so a frozen instant
/// sees a == b or a == b + 1, or one file empty right after its truncation (the lab's
/// criterion; an unfrozen copy is off by thousands).
fn consistent(a: &str, b: &str) -> Option<u64> {
    match (a.parse::<u64>().ok(), b.parse::<u64>().ok()) {
        (Some(a), Some(b)) => (a == b || a == b + 1).then_some(a),
        (Some(a), None) if b.is_empty() => Some(a),
        (None, Some(b)) if a.is_empty() => Some(b + 1),
        _ => None,
    }
}

fn log_value(log: &str, prefix: &str) -> f64 {
    log.lines()
        .find_map(|l| l.split(prefix).nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no '{prefix}' in:\n{log}"))
}

#[test]
fn stop_mode_on_an_image_then_restore_and_start() {
    let lab = Lab::new(false);
    lab.container(7101, "local:0.25", false);
    lab.start(7101);
    let before = lab.counter(7101);
    let log = lab.ok(&[
        "backup",
        "7101",
        "--mode",
        "stop",
        "--compress",
        "zstd",
        "--storage",
        "local",
        "--exclude-path",
        "/data/skip",
        "--exclude-path",
        "*.cache",
    ]);
    for line in [
        "INFO: Starting Backup of VM 7101 (lxc)",
        "INFO: CT Name: bb",
        "INFO: including mount point rootfs ('/') in backup",
        "INFO: backup mode: stop",
        "INFO: stopping virtual guest",
        "INFO: Total bytes written: ",
        "INFO: restarting vm",
        "INFO: guest is online again after ",
        "INFO: Backup job finished successfully",
    ] {
        assert!(log.contains(line), "missing '{line}' in:\n{log}");
    }
    assert_eq!(lab.status(7101), "running", "started again");
    let archive = lab.archive(7101);
    assert!(archive.to_string_lossy().ends_with(".tar.zst"));
    // Stopped: the files are as the stopped container left them (the stop's kill may land
    // between the two writes, so `a` may be one ahead), and newer than before the backup.
    let (a, b) = archived_counter(&archive);
    let at = consistent(&a, &b).unwrap_or_else(|| panic!("a={a} b={b}"));
    assert!(at >= before, "{at} < {before}");
    // Layout: the config first, retrievable as Proxmox reads it; excludes applied.
    let list = gnu_list(&archive);
    assert_eq!(list[0], "./etc/vzdump/pct.conf");
    assert_eq!(list[1], "./etc/vzdump/pct.fw");
    let conf = sh(&format!(
        "zstd -dc {} | tar xOf - --occurrence ./etc/vzdump/pct.conf",
        archive.display()
    ));
    assert!(
        conf.contains("rootfs: local:7101/vm-7101-disk-0.raw") && !conf.contains("lock:"),
        "{conf}"
    );
    for gone in [
        "./tmp/junk",
        "./var/tmp/vt",
        "./var/run/foo.pid",
        "./data/skip/",
        "./data/skip/x",
        "./data/x.cache",
    ] {
        assert!(!list.iter().any(|m| m == gone), "{gone} was not excluded");
    }
    for kept in [
        "./tmp/",
        "./var/tmp/",
        "./var/run/keep.txt",
        "./data/keep",
        "./lost+found/",
    ] {
        assert!(list.iter().any(|m| m == kept), "{kept} missing");
    }
    assert!(
        !std::fs::read_to_string(lab.path().join("etc/lxc/7101.conf"))
            .expect("conf")
            .contains("lock:")
    );

    // Restore as a new privileged container on a directory, start it: the counter goes on
    // from the archived value; xattrs, ACLs and sparseness came back.
    let out = lab.ok(&[
        "restore",
        &archive.display().to_string(),
        "7102",
        "--rootfs",
        "local:0",
        "--start",
    ]);
    assert!(out.contains("restored CT 7102"), "{out}");
    lab.vmids.borrow_mut().push(7102);
    // Its first value is past the archived one, not a restart from zero (an `a` caught empty
    // by the stop's kill would resume from zero).
    let from = a.parse().unwrap_or(0);
    let resumed = lab.wait_counter(7102, 0);
    assert!(resumed > from, "{resumed} <= {from}");
    let root = lab
        .path()
        .join("store/images/7102/subvol-7102-disk-0.subvol");
    let meta = sh(&format!(
        "cd {}; getfattr -n user.note --only-values data/xattr; echo; getfacl -p -n data/xattr | grep 1234; du -k data/sparse | cut -f1",
        root.display()
    ));
    assert!(
        meta.contains("hello") && meta.contains("user:1234:rw-"),
        "{meta}"
    );
    let du: u64 = meta
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .expect("du");
    assert!(du < 1024, "sparse file restored with {du} KiB allocated");
}

#[test]
fn suspend_mode_and_snapshot_fallback_on_a_directory() {
    let lab = Lab::new(false);
    lab.container(7111, "local:0", false);
    lab.start(7111);
    // A freeze left by a killed run is undone (and reported) by the next one.
    let freezer = "/sys/fs/cgroup/freezer/lxc.payload.7111/freezer.state";
    std::fs::write(freezer, "FROZEN").expect("freeze");
    std::fs::write(lab.run_base().join("lxc/7111/frozen-by"), "999999999 1\n").expect("marker");
    let before = lab.counter(7111);
    let log = lab.ok(&[
        "backup",
        "7111",
        "--mode",
        "suspend",
        "--compress",
        "zstd",
        "--storage",
        "local",
    ]);
    let after = lab.counter(7111);
    for line in [
        "was left frozen by an interrupted vmdump run (pid 999999999): thawed it",
        "INFO: backup mode: suspend",
        "INFO: starting first sync /proc/",
        "INFO: first sync finished - transferred ",
        "INFO: suspending guest",
        "INFO: starting final sync /proc/",
        "INFO: final sync finished - transferred ",
        "INFO: resuming guest",
        "INFO: guest is online again after ",
    ] {
        assert!(log.contains(line), "missing '{line}' in:\n{log}");
    }
    let window = log_value(&log, "frozen window: ");
    assert!(window < 5.0, "frozen for {window} s");
    let (a, b) = archived_counter(&lab.archive(7111));
    let v = consistent(&a, &b).unwrap_or_else(|| panic!("inconsistent copy a={a} b={b}"));
    assert!(before < v && v <= after, "{before} < {v} <= {after}");
    assert_eq!(
        std::fs::read_to_string(freezer).expect("state").trim(),
        "THAWED"
    );
    let leftovers: Vec<_> = std::fs::read_dir(lab.dump())
        .expect("dump")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "the rsync copy is removed");

    // Snapshot mode on a storage without snapshots falls back to suspend.
    std::thread::sleep(Duration::from_secs(1));
    let log = lab.ok(&[
        "backup",
        "7111",
        "--mode",
        "snapshot",
        "--compress",
        "zstd",
        "--storage",
        "local",
    ]);
    for line in [
        "ERROR: mode failure - some volumes do not support snapshots",
        "INFO: trying 'suspend' mode instead",
        "INFO: backup mode: suspend",
        "INFO: first sync finished",
    ] {
        assert!(log.contains(line), "missing '{line}' in:\n{log}");
    }
    assert_eq!(lab.status(7111), "running");
}

#[test]
fn snapshot_mode_on_btrfs() {
    let lab = Lab::new(true);
    lab.container(7121, "bt:0", false);
    lab.start(7121);
    let subvol = lab.btrfs.join("images/7121/subvol-7121-disk-0.subvol");
    assert!(subvol.is_dir());
    // A snapshot a killed run left is replaced.
    sh(&format!(
        "btrfs -q subvolume snapshot -r {s} {s}@vzdump",
        s = subvol.display()
    ));
    let before = lab.counter(7121);
    let log = lab.ok(&[
        "backup",
        "7121",
        "--mode",
        "snapshot",
        "--compress",
        "zstd",
        "--storage",
        "local",
    ]);
    let after = lab.counter(7121);
    for line in [
        "INFO: backup mode: snapshot",
        "INFO: removing stale 'vzdump' snapshot of bt:7121/subvol-7121-disk-0.subvol",
        "INFO: create storage snapshot 'vzdump'",
        "INFO: resume vm",
        "INFO: cleanup temporary 'vzdump' snapshot",
    ] {
        assert!(log.contains(line), "missing '{line}' in:\n{log}");
    }
    let window = log_value(&log, "frozen window: ");
    assert!(window < 2.0, "frozen for {window} s");
    let (a, b) = archived_counter(&lab.archive(7121));
    let v = consistent(&a, &b).unwrap_or_else(|| panic!("inconsistent snapshot a={a} b={b}"));
    assert!(before < v && v <= after, "{before} < {v} <= {after}");
    assert!(!lab
        .btrfs
        .join("images/7121/subvol-7121-disk-0.subvol@vzdump")
        .exists());
    assert_eq!(lab.status(7121), "running");
}

#[test]
fn unprivileged_container_archives_its_own_ids_and_restores() {
    let lab = Lab::new(true);
    lab.container(7131, "local:0", true);
    let root = lab
        .path()
        .join("store/images/7131/subvol-7131-disk-0.subvol");
    sh(&format!("cd {}; stat -c %u:%g bin | grep -qx 100000:100000; echo u > data/user; chown 101000:101001 data/user", root.display()));
    // Stopped: backed up as it is and left stopped.
    let log = lab.ok(&[
        "backup",
        "7131",
        "--mode",
        "stop",
        "--compress",
        "zstd",
        "--storage",
        "local",
    ]);
    assert!(log.contains("INFO: status = stopped"), "{log}");
    assert!(!log.contains("stopping virtual guest"));
    assert_eq!(lab.status(7131), "stopped");
    let archive = lab.archive(7131);
    let list = sh(&format!(
        "zstd -dc {} | tar tvf - --numeric-owner",
        archive.display()
    ));
    assert!(
        list.lines()
            .any(|l| l.contains(" 1000/1001 ") && l.ends_with("./data/user")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.contains(" 0/0 ") && l.ends_with("./bin/")),
        "{list}"
    );
    assert!(
        !list.contains("lost+found"),
        "lost+found is excluded for unprivileged containers"
    );
    // Restore as unprivileged (as backed up) and start.
    lab.ok(&[
        "restore",
        &archive.display().to_string(),
        "7132",
        "--storage",
        "bt",
        "--start",
    ]);
    lab.vmids.borrow_mut().push(7132);
    lab.wait_counter(7132, 0);
    let conf = std::fs::read_to_string(lab.path().join("etc/lxc/7132.conf")).expect("conf");
    assert!(
        conf.contains("unprivileged: 1")
            && conf.contains("rootfs: bt:7132/subvol-7132-disk-0.subvol"),
        "{conf}"
    );
    let owner = sh(&format!(
        "stat -c %u:%g {}/images/7132/subvol-7132-disk-0.subvol/data/user",
        lab.btrfs.display()
    ));
    assert_eq!(owner.trim(), "101000:101001");

    // An unprivileged container starts with a raw-image mount point too, and lets go of the
    // image when it stops.
    let img = lab.path().join("store/images/7131/vm-7131-disk-1.raw");
    sh(&format!(
        "truncate -s 32M {i} && mkfs.ext4 -q -F -E root_owner=100000:100000 {i}",
        i = img.display()
    ));
    let conf = lab.path().join("etc/lxc/7131.conf");
    let text = std::fs::read_to_string(&conf).expect("config");
    std::fs::write(
        &conf,
        format!("{text}mp0: local:7131/vm-7131-disk-1.raw,mp=/mnt/img,size=32M\n"),
    )
    .expect("write config");
    lab.start(7131);
    let pid = lab.pid(7131).expect("running");
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    assert!(
        mounts
            .lines()
            .any(|l| l.split(' ').nth(4) == Some("/mnt/img")),
        "{mounts}"
    );
    lab.ok(&["ct", "stop", "7131"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while sh(&format!("losetup -j {}", img.display())).contains("/dev/loop") {
        assert!(Instant::now() < deadline, "the image stays attached");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn gnu_tar_archive_with_vzdump_flags_restores_and_hostile_ones_are_refused() {
    let lab = Lab::new(false);
    // What Proxmox's vzdump runs: the config first, then the root with its excludes.
    let stage = lab.path().join("stage");
    std::fs::create_dir_all(stage.join("etc/vzdump")).expect("mkdir");
    std::fs::write(
        stage.join("etc/vzdump/pct.conf"),
        "arch: amd64\nhostname: gnu\nlxc.signal.halt: SIGUSR1\nostype: unmanaged\nrootfs: pve-zfs:subvol-200-disk-0,size=8G\n",
    )
    .expect("pct.conf");
    std::fs::write(stage.join("etc/vzdump/pct.fw"), "").expect("pct.fw");
    let archive = lab
        .path()
        .join("vzdump-lxc-200-2026_01_01-00_00_00.tar.zst");
    let flags = vmdump_tar::VZDUMP_TAR_FLAGS.join(" ");
    sh(&format!(
        "tar cpf - --totals {flags} --directory={s} ./etc/vzdump/pct.conf ./etc/vzdump/pct.fw \
         --directory={r} --no-anchored --anchored --exclude=./tmp/?* --exclude=./var/tmp/?* --exclude=./var/run/?*.pid ./ \
         2>/dev/null | zstd -q -T0 -o {a}",
        s = stage.display(),
        r = template_dir().display(),
        a = archive.display()
    ));
    let out = lab.ok(&[
        "restore",
        &archive.display().to_string(),
        "7141",
        "--storage",
        "local",
        "--start",
    ]);
    assert!(
        out.contains("new volume ID is 'local:7141/vm-7141-disk-0.raw'"),
        "{out}"
    );
    lab.vmids.borrow_mut().push(7141);
    lab.wait_counter(7141, 0);
    let conf = std::fs::read_to_string(lab.path().join("etc/lxc/7141.conf")).expect("conf");
    assert!(
        conf.contains("hostname: gnu")
            && conf.contains("rootfs: local:7141/vm-7141-disk-0.raw,size=8G"),
        "{conf}"
    );

    // Hostile archives (made with GNU tar: -P keeps absolute names and '..'): refused, no
    // config, no volume, nothing written outside.
    let outside = lab.path().join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    let evil = lab.path().join("evil");
    std::fs::create_dir_all(evil.join("etc/vzdump")).expect("mkdir");
    std::fs::write(
        evil.join("etc/vzdump/pct.conf"),
        "hostname: evil\nrootfs: local:1/vm-1-disk-0.raw,size=64M\n",
    )
    .expect("write");
    std::fs::write(evil.join("etc/vzdump/pct.fw"), "").expect("write");
    std::fs::write(evil.join("payload"), "x").expect("write");
    std::os::unix::fs::symlink(&outside, evil.join("link")).expect("symlink");
    let e = evil.display();
    let cases = [
        ("dotdot", "./etc/vzdump/pct.conf ./etc/vzdump/pct.fw -P ./../evil/payload".to_string()),
        ("absolute", format!("./etc/vzdump/pct.conf ./etc/vzdump/pct.fw -P {e}/payload")),
        ("symlink", "./etc/vzdump/pct.conf ./etc/vzdump/pct.fw ./link --transform=s,^./payload,./link/z, ./payload".to_string()),
    ];
    for (i, (what, members)) in cases.iter().enumerate() {
        let vmid = 7150 + i as u32;
        let a = lab.path().join(format!("{what}.tar"));
        sh(&format!(
            "cd {e}; tar cpf {a} --numeric-owner {members} 2>/dev/null || true",
            a = a.display()
        ));
        assert!(
            std::fs::metadata(&a).map(|m| m.len() > 0).unwrap_or(false),
            "{what}: no archive"
        );
        let o = lab.vmdump(&[
            "restore",
            &a.display().to_string(),
            &vmid.to_string(),
            "--storage",
            "local",
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{what} restored");
        assert!(err.contains("refusing archive member"), "{what}: {err}");
        assert!(
            !lab.path().join(format!("etc/lxc/{vmid}.conf")).exists(),
            "{what}: config written"
        );
        let dir = lab.path().join(format!("store/images/{vmid}"));
        let left = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        assert_eq!(left, 0, "{what}: a volume was left in {}", dir.display());
        assert_eq!(
            std::fs::read_dir(&outside).expect("ls").count(),
            0,
            "{what} wrote outside"
        );
    }
}

#[test]
fn a_stop_mode_backup_killed_midway_is_repaired_by_the_next_run() {
    use std::io::{BufRead, BufReader};
    let lab = Lab::new(false);
    lab.container(7161, "local:0", false);
    lab.start(7161);
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmdump"))
        .args(["backup", "7161", "--mode", "stop", "--storage", "local"])
        .env("VMDUMP_ROOT", lab.path().join("etc"))
        .env("VMDUMP_RUN_DIR", lab.run_base())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    for line in stdout.lines() {
        if line.expect("line").contains("stopping virtual guest") {
            break;
        }
    }
    // Killed while its clean shutdown (`lxc-stop`, which carries on) is under way.
    let marker = lab.run_base().join("lxc/7161/stopped-by");
    let parent = child.id().to_string();
    let stopping = || {
        std::fs::read_dir("/proc")
            .expect("proc")
            .flatten()
            .any(|e| {
                std::fs::read_to_string(e.path().join("stat")).is_ok_and(|st| {
                    st.contains("(lxc-stop)")
                        && st.rsplit_once(") ").and_then(|(_, r)| r.split(' ').nth(1))
                            == Some(parent.as_str())
                })
            })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stopping() {
        assert!(Instant::now() < deadline, "no lxc-stop under vmdump");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(marker.exists(), "the marker is written before the stop");
    child.kill().expect("kill");
    child.wait().expect("wait");
    let deadline = Instant::now() + Duration::from_secs(60);
    while lab.status(7161) != "stopped" {
        assert!(Instant::now() < deadline, "the shutdown did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    let conf = lab.path().join("etc/lxc/7161.conf");
    assert!(std::fs::read_to_string(&conf)
        .expect("conf")
        .contains("lock: backup"));
    // The next backup starts it again, says so, removes the stale lock and backs it up live.
    let log = lab.ok(&["backup", "7161", "--mode", "suspend", "--storage", "local"]);
    for line in [
        "was left stopped by an interrupted vmdump run",
        "started it again",
        "removing stale 'lock: backup' left by an interrupted backup",
        "INFO: backup mode: suspend",
        "INFO: Backup job finished successfully",
    ] {
        assert!(log.contains(line), "missing '{line}' in:\n{log}");
    }
    assert_eq!(lab.status(7161), "running");
    assert!(!std::fs::read_to_string(&conf)
        .expect("conf")
        .contains("lock:"));
    assert!(!marker.exists());
}

/// The hook script of the container tests: one line per call into `hooks.log` beside it; a
/// phase fails while a `fail-<phase>` file is beside it.
const HOOK: &str = r#"#!/bin/sh
echo "$* VMTYPE=${VMTYPE-} HOSTNAME=${HOSTNAME-} TARGET=${TARGET-} LOGFILE=${LOGFILE-}" >> "$(dirname "$0")/hooks.log"
[ ! -e "$(dirname "$0")/fail-$1" ]
"#;

/// The rate in bytes/s of GNU tar's totals line (`Total bytes written: N (2.1MiB, 1.0MiB/s)`).
fn totals_rate(log: &str) -> f64 {
    let rate = log
        .lines()
        .find_map(|l| l.split("Total bytes written: ").nth(1))
        .and_then(|r| r.split(", ").nth(1))
        .and_then(|r| r.strip_suffix("/s)"))
        .unwrap_or_else(|| panic!("no totals line in:\n{log}"));
    let split = rate.find(|c: char| c.is_ascii_alphabetic()).expect("unit");
    let (v, unit) = rate.split_at(split);
    let mult = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        u => panic!("unit {u}"),
    };
    v.parse::<f64>().expect("number") * mult
}

/// A raw-image mount point (`mp0` on `local:<vmid>/vm-<vmid>-disk-1.raw`) is mounted into
/// the started container and lets go of the image when it stops; hook scripts run in
/// vzdump's order for stop mode with the container's environment; `--bwlimit` paces the tar
/// stream and `--ionice 8` puts every thread of the backup in the idle class; `--stdout`
/// writes the archive (mount point included) to standard output and nothing to the dump
/// directory; the archive restores onto `--mp255`, a restore killed mid-way leaves
/// volumes the next run removes, and `--bwlimit` paces a container restore.
#[test]
fn image_mount_point_hooks_bwlimit_ionice_stdout_mp255_and_a_killed_restore() {
    let lab = Lab::new(false);
    lab.container(7171, "local:0", false);
    let img = lab.path().join("store/images/7171/vm-7171-disk-1.raw");
    sh(&format!(
        "truncate -s 64M {i} && mkfs.ext4 -q -F {i}",
        i = img.display()
    ));
    let conf = lab.path().join("etc/lxc/7171.conf");
    let mut text = std::fs::read_to_string(&conf).expect("config");
    text.push_str("mp0: local:7171/vm-7171-disk-1.raw,mp=/mnt/img,backup=1,size=64M\n");
    std::fs::write(&conf, text).expect("write config");
    lab.start(7171);
    let pid = lab.pid(7171).expect("running");
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    assert!(
        mounts
            .lines()
            .any(|l| l.split(' ').nth(4) == Some("/mnt/img")),
        "{mounts}"
    );
    std::fs::write(
        format!("/proc/{pid}/root/mnt/img/hello"),
        "from the container",
    )
    .expect("write into the mount point");
    // Incompressible bytes, so the rate limit has something to pace.
    sh(&format!(
        "head -c 1048576 /dev/urandom > /proc/{pid}/root/mnt/img/blob"
    ));
    // The host keeps no mount of its own.
    let host = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !host.contains(&lab.run_base().join("lxc/7171").display().to_string()),
        "{host}"
    );

    // Stop mode with a hook, a rate limit and the idle I/O class.
    let hook = lab.path().join("hook.sh");
    std::fs::write(&hook, HOOK).expect("hook");
    sh(&format!("chmod 755 {}", hook.display()));
    let mut child = lab
        .cmd(&[
            "backup",
            "7171",
            "--mode",
            "stop",
            "--compress",
            "0",
            "--storage",
            "local",
            "--script",
            &hook.display().to_string(),
            "--bwlimit",
            "1024",
            "--ionice",
            "8",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_dir(lab.dump())
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".dat"))
        })
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "the archive was not started");
        assert!(child.try_wait().expect("wait").is_none(), "ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut idle = 0;
    for t in std::fs::read_dir(format!("/proc/{}/task", child.id()))
        .expect("tasks")
        .flatten()
    {
        let tid = t.file_name().to_string_lossy().into_owned();
        let prio = sh(&format!("ionice -p {tid} 2>/dev/null || echo gone"));
        if prio.trim() != "gone" {
            assert_eq!(prio.trim(), "idle", "thread {tid}");
            idle += 1;
        }
    }
    assert!(idle >= 2, "{idle} threads");
    let out = child.wait_with_output().expect("wait");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{log}");
    for line in [
        "INFO: bandwidth limit: 1024 KiB/s",
        "INFO: ionice priority: 8",
        "INFO: including mount point mp0 ('/mnt/img') in backup",
    ] {
        assert!(log.contains(line), "missing '{line}' in:\n{log}");
    }
    let rate = totals_rate(&log);
    assert!(rate < 1.25 * 1024.0 * 1024.0, "{rate} B/s over the limit");
    let archive = lab.archive(7171);
    let target = archive.display().to_string();
    let logfile = archive.with_extension("log").display().to_string();
    let calls: Vec<String> = std::fs::read_to_string(lab.path().join("hooks.log"))
        .expect("hooks")
        .lines()
        .map(str::to_string)
        .collect();
    let guest = |phase: &str| {
        format!("{phase} stop 7171 VMTYPE=lxc HOSTNAME=bb TARGET={target} LOGFILE={logfile}")
    };
    assert_eq!(
        calls,
        [
            "job-init VMTYPE= HOSTNAME= TARGET= LOGFILE=".to_string(),
            "job-start VMTYPE= HOSTNAME= TARGET= LOGFILE=".to_string(),
            guest("backup-start"),
            guest("pre-stop"),
            guest("backup-end"),
            guest("pre-restart"),
            guest("post-restart"),
            guest("log-end"),
            "job-end VMTYPE= HOSTNAME= TARGET= LOGFILE=".to_string(),
        ]
    );
    // The image was read after the container let go of it; it is mounted again.
    let hello = sh(&format!("tar xOf {} ./mnt/img/hello", archive.display()));
    assert_eq!(hello, "from the container");
    assert_eq!(lab.status(7171), "running");
    let pid = lab.pid(7171).expect("running");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/root/mnt/img/hello")).expect("read"),
        "from the container"
    );

    // --stdout in suspend mode: the mount point's files are copied too. A suspend-mode copy
    // a killed run left is removed first.
    let stale = lab.dump().join("vzdump-lxc-7171-2020_01_01-00_00_00.tmp");
    std::fs::create_dir_all(stale.join("etc")).expect("mkdir");
    std::fs::write(stale.join("etc/passwd"), "x").expect("write");
    let files = std::fs::read_dir(lab.dump()).expect("dump").count() - 1;
    let piped = lab.path().join("stdout.tar.zst");
    std::fs::remove_file(lab.path().join("hooks.log")).expect("rm");
    let out = lab
        .cmd(&[
            "backup",
            "7171",
            "--mode",
            "suspend",
            "--compress",
            "zstd",
            "--stdout",
            "--script",
            &hook.display().to_string(),
        ])
        .stdout(std::fs::File::create(&piped).expect("create"))
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("INFO: sending archive to stdout"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "INFO: removed stale temporary directory '{}' (left by an interrupted backup)",
            stale.display()
        )),
        "{stderr}"
    );
    assert!(!stale.exists());
    // Suspend mode's hooks: pre-restart and post-restart around the thaw, before backup-end;
    // the archive is `-`.
    let phases: Vec<String> = std::fs::read_to_string(lab.path().join("hooks.log"))
        .expect("hooks")
        .lines()
        .map(|l| l.split(" VMTYPE=").next().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        phases,
        [
            "job-init",
            "job-start",
            "backup-start suspend 7171",
            "pre-stop suspend 7171",
            "pre-restart suspend 7171",
            "post-restart suspend 7171",
            "backup-end suspend 7171",
            "log-end suspend 7171",
            "job-end",
        ]
    );
    assert!(std::fs::read_to_string(lab.path().join("hooks.log"))
        .expect("hooks")
        .contains("backup-end suspend 7171 VMTYPE=lxc HOSTNAME=bb TARGET=- LOGFILE="));
    let list = gnu_list(&piped);
    assert_eq!(list[0], "./etc/vzdump/pct.conf");
    assert!(list.iter().any(|m| m == "./mnt/img/hello"), "{list:?}");
    assert_eq!(
        std::fs::read_dir(lab.dump()).expect("dump").count(),
        files + 1,
        "only the guest's log is new"
    );
    assert_eq!(lab.status(7171), "running");

    // A failing pre-stop hook fails the guest before the freeze: backup-abort, the container
    // runs and is not frozen, no archive.
    std::fs::remove_file(lab.path().join("hooks.log")).expect("rm");
    std::fs::write(lab.path().join("fail-pre-stop"), "").expect("write");
    let archives = std::fs::read_dir(lab.dump()).expect("dump").count();
    let o = lab.vmdump(&[
        "backup",
        "7171",
        "--mode",
        "suspend",
        "--storage",
        "local",
        "--script",
        &hook.display().to_string(),
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("ERROR: Backup of VM 7171 failed - command '")
            && text.contains("pre-stop suspend 7171' failed: exit code 1"),
        "{text}"
    );
    let phases: Vec<String> = std::fs::read_to_string(lab.path().join("hooks.log"))
        .expect("hooks")
        .lines()
        .map(|l| l.split(" VMTYPE=").next().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        phases,
        [
            "job-init",
            "job-start",
            "backup-start suspend 7171",
            "pre-stop suspend 7171",
            "backup-abort suspend 7171",
            "log-end suspend 7171",
            "job-end",
        ]
    );
    std::fs::remove_file(lab.path().join("fail-pre-stop")).expect("rm");
    assert_eq!(lab.status(7171), "running");
    assert_eq!(
        std::fs::read_dir(lab.dump()).expect("dump").count(),
        archives + 1,
        "only the failed backup's log is new"
    );
    lab.wait_counter(7171, lab.counter(7171));

    // Restore onto --mp255 (an image again), start: the file is in the new mount point.
    let o = lab.vmdump(&[
        "restore",
        &target,
        "7172",
        "--rootfs",
        "local:0",
        "--mp256",
        "local:0,mp=/x",
    ]);
    assert_eq!(o.status.code(), Some(2), "--mp256 is not an option");
    lab.ok(&[
        "restore",
        &target,
        "7172",
        "--rootfs",
        "local:0",
        "--mp255",
        "local:0.0625,mp=/mnt/img",
        "--start",
    ]);
    lab.vmids.borrow_mut().push(7172);
    let conf = std::fs::read_to_string(lab.path().join("etc/lxc/7172.conf")).expect("conf");
    assert!(
        conf.contains("mp255: local:7172/vm-7172-disk-1.raw,mp=/mnt/img,size=64M")
            && !conf.contains("mp0:"),
        "{conf}"
    );
    lab.wait_counter(7172, 0);
    let pid = lab.pid(7172).expect("running");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/root/mnt/img/hello")).expect("read"),
        "from the container"
    );

    // A restore killed mid-way (its input stalls after the first 300 KiB): the directory
    // volume it made is removed by the next run, which restores under the same name.
    use std::io::Write;
    let bytes = std::fs::read(&archive).expect("archive");
    assert!(bytes.len() > 600 * 1024, "{} bytes", bytes.len());
    let mut child = lab
        .cmd(&["restore", "-", "7173", "--rootfs", "local:0"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(&bytes[..300 * 1024]).expect("feed");
    let vol = lab
        .path()
        .join("store/images/7173/subvol-7173-disk-0.subvol");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(&vol).map_or(0, |d| d.count()) == 0 {
        assert!(
            Instant::now() < deadline,
            "the restore did not start extracting"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("kill");
    child.wait().expect("wait");
    drop(stdin);
    assert!(vol.exists());
    // ... at the read rate `--bwlimit` allows (1 MiB/s, after a burst of 100 KiB).
    let t0 = Instant::now();
    let out = lab.ok(&[
        "restore",
        &target,
        "7173",
        "--rootfs",
        "local:0",
        "--bwlimit",
        "1024",
    ]);
    let floor = (bytes.len() as f64 - 200.0 * 1024.0) / (1024.0 * 1024.0);
    let took = t0.elapsed().as_secs_f64();
    assert!(
        took > 0.9 * floor,
        "{} bytes restored in {took:.2} s",
        bytes.len()
    );
    assert!(
        out.contains(&format!("removed partial volume {}", vol.display())),
        "{out}"
    );
    assert!(
        out.contains("new volume ID is 'local:7173/subvol-7173-disk-0.subvol'"),
        "{out}"
    );
    assert!(vol.join("mnt/img/hello").exists());
}

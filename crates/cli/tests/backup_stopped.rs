//! `vmdump backup` of VMs that are not running (QEMU started paused for the backup, real QEMU
//! 7.2): names, the stored config with `#qmdump#map` lines, the log, compression, sparse
//! disks, vzdump.conf defaults, several guests with one failing.

mod backup_common;

use std::process::Command;
use std::time::Instant;

use anyhow::Result;
use backup_common::*;

fn setup_vm(env: &Env) -> Result<(String, String)> {
    let a = env.image(100, "vm-100-disk-0.raw");
    std::fs::File::create(&a)?.set_len(32 * MIB)?;
    write_random(&a, 3 * MIB, 5 * MIB + 4096, 7)?;
    let b = env.image(100, "vm-100-disk-1.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&b)
        .arg((16 * MIB + 4096).to_string()))?;
    run(Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 1M 3M",
            "-c",
            "write -P 0x11 16M 4096",
        ])
        .arg(&b))?;
    env.write_config(
        100,
        "boot: order=virtio0\ncores: 1\nmemory: 256\nname: stopped-vm\nlock: \nvirtio0: local:100/vm-100-disk-0.raw,size=32M\nvirtio1: local:100/vm-100-disk-1.qcow2,size=16388K\nunused0: local:100/vm-100-disk-9.raw\n"
            .replace("lock: \n", "")
            .as_str(),
    )?;
    Ok((sha256_file(&a)?, image_sha256(&b, "qcow2", &env.base)?))
}

#[test]
fn stopped_vm_backup_names_config_log_and_data() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let env = Env::new(tmp.path())?;
    let (ha, hb) = setup_vm(&env)?;
    for compress in ["zstd", "0", "lzo", "gzip"] {
        let out = env.vmdump_backup(&[
            "100",
            "--compress",
            compress,
            "--notes-template",
            "{{guestname}} ({{vmid}})",
            "--protected",
        ])?;
        let stdout = expect_success(&out, "vmdump backup");
        for line in [
            "INFO: starting new backup job: vmdump backup 100",
            "INFO: Starting Backup of VM 100 (qemu)",
            "INFO: status = stopped",
            "INFO: VM Name: stopped-vm",
            "INFO: include disk 'virtio0' 'local:100/vm-100-disk-0.raw' 32M",
            "INFO: backup mode: stop",
            "INFO: starting kvm to execute backup task",
            "INFO: starting backup via QMP command",
            "INFO: stopping kvm after backup task",
            "INFO: backup is sparse: ",
            "INFO: transferred 48.00 MiB in ",
            "INFO: archive file size: ",
            "INFO: adding notes to backup",
            "INFO: marking backup as protected",
            "INFO: Finished Backup of VM 100 (00:00:",
            "INFO: Backup job finished successfully",
        ] {
            assert!(stdout.contains(line), "missing {line:?} in\n{stdout}");
        }
        assert!(stdout.contains("100% (48.0 MiB of 48.0 MiB)"), "{stdout}");

        let files = env.dump_files();
        let ext = match compress {
            "zstd" => ".vma.zst",
            "lzo" => ".vma.lzo",
            "gzip" => ".vma.gz",
            _ => ".vma",
        };
        let archive = env.archive_name(ext);
        // vzdump-qemu-100-YYYY_MM_DD-HH_MM_SS.vma[.ext]
        let stem = archive.strip_suffix(ext).expect("suffix");
        assert!(stem.starts_with("vzdump-qemu-100-"), "{archive}");
        let ts = &stem["vzdump-qemu-100-".len()..];
        assert_eq!(ts.len(), 19, "{ts}");
        assert!(files.contains(&format!("{stem}.log")), "{files:?}");
        assert!(files.contains(&format!("{archive}.notes")), "{files:?}");
        assert!(files.contains(&format!("{archive}.protected")), "{files:?}");
        assert!(!files.iter().any(|f| f.ends_with(".dat")), "{files:?}");
        let notes = std::fs::read_to_string(env.dump().join(format!("{archive}.notes")))?;
        assert_eq!(notes, "stopped-vm (100)");
        let log = std::fs::read_to_string(env.dump().join(format!("{stem}.log")))?;
        assert!(
            log.contains(" INFO: Starting Backup of VM 100 (qemu)"),
            "{log}"
        );
        assert!(log.contains(" INFO: transferred 48.00 MiB"), "{log}");

        let plain = plain_vma(&env.dump().join(&archive), tmp.path())?;
        assert_eq!(
            dissect_devices(&plain)?,
            vec![
                ("drive-virtio0".into(), 32 * MIB, ha.clone()),
                ("drive-virtio1".into(), 16 * MIB + 4096, hb.clone()),
            ]
        );
        // Our own reader: `vmdump vma verify` (also checks every cluster is present) and
        // `vmdump vma extract` on the (compressed) archive.
        let path = env.dump().join(&archive);
        run(Command::new(env!("CARGO_BIN_EXE_vmdump"))
            .args(["vma", "verify"])
            .arg(&path))?;
        let ex = tmp.path().join(format!("extract-{compress}"));
        run(Command::new(env!("CARGO_BIN_EXE_vmdump"))
            .args(["vma", "extract"])
            .arg(&path)
            .arg(&ex))?;
        assert_eq!(sha256_file(&ex.join("disk-drive-virtio0.raw"))?, ha);
        assert_eq!(sha256_file(&ex.join("disk-drive-virtio1.raw"))?, hb);
        assert!(
            std::fs::read_to_string(ex.join("qemu-server.conf"))?.contains("#qmdump#map:virtio0:")
        );
        let cfg = dissect_config(&plain, "qemu-server.conf")?;
        assert!(cfg.contains("name: stopped-vm\n"), "{cfg}");
        assert!(!cfg.contains("unused0"), "{cfg}");
        assert!(cfg.ends_with(
            "#qmdump#map:virtio0:drive-virtio0:local:raw:\n#qmdump#map:virtio1:drive-virtio1:local:qcow2:\n"
        ), "{cfg}");
        // Next round gets a new time stamp in its name.
        for f in env.dump_files() {
            std::fs::remove_file(env.dump().join(f))?;
        }
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    Ok(())
}

#[test]
fn vzdump_conf_defaults_and_failed_guest_does_not_stop_others() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let env = Env::new(tmp.path())?;
    setup_vm(&env)?;
    let dumpdir = tmp.path().join("elsewhere");
    std::fs::write(
        env.root.join("vzdump.conf"),
        format!("compress: zstd\ndumpdir: {}\n", dumpdir.display()),
    )?;
    // 101 has a disk that does not exist: it fails, 100 still runs.
    env.write_config(
        101,
        "memory: 128\nvirtio0: local:101/vm-101-disk-0.raw,size=1M\n",
    )?;
    let out = env.vmdump_backup(&["101", "100"])?;
    let stdout = expect_exit(&out, 1, "vmdump backup");
    assert!(
        stdout.contains("ERROR: Backup of VM 101 failed - "),
        "{stdout}"
    );
    assert!(
        stdout.contains("INFO: Finished Backup of VM 100"),
        "{stdout}"
    );
    assert!(stdout.contains("TASK ERROR: job errors"), "{stdout}");
    let files: Vec<String> = std::fs::read_dir(&dumpdir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        files
            .iter()
            .any(|f| f.starts_with("vzdump-qemu-100-") && f.ends_with(".vma.zst")),
        "{files:?}"
    );
    assert!(
        !files
            .iter()
            .any(|f| f.starts_with("vzdump-qemu-101-") && f.contains(".vma")),
        "{files:?}"
    );
    // A failed backup removes its config lock too.
    assert!(
        !std::fs::read_to_string(env.root.join("qemu-server/101.conf"))?.contains("lock:"),
        "the failed guest stays locked"
    );
    // The failed guest's log is kept for diagnosis.
    assert!(
        files
            .iter()
            .any(|f| f.starts_with("vzdump-qemu-101-") && f.ends_with(".log")),
        "{files:?}"
    );
    Ok(())
}

#[test]
fn sparse_64g_disk_backs_up_in_time_proportional_to_data() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let env = Env::new(tmp.path())?;
    let q = env.image(100, "vm-100-disk-0.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&q)
        .arg("64G"))?;
    // 100 MiB of data spread over the disk.
    let mut io = Command::new("qemu-io");
    io.args(["-f", "qcow2"]);
    for i in 0..25u64 {
        io.arg("-c")
            .arg(format!("write -P {} {} 4M", i + 1, i * 2621 * MIB));
    }
    run(io.arg(&q))?;
    env.write_config(
        100,
        "memory: 256\nscsi0: local:100/vm-100-disk-0.qcow2,size=64G\n",
    )?;
    let t = Instant::now();
    let out = env.vmdump_backup(&["100", "--compress", "zstd"])?;
    let secs = t.elapsed().as_secs_f64();
    let stdout = expect_success(&out, "vmdump backup");
    eprintln!("64 GiB sparse disk with 100 MiB data: {secs:.1} s");
    assert!(secs < 60.0, "took {secs:.1} s");
    assert!(
        stdout.contains("INFO: backup is sparse: 63.90 GiB (99%) total zero data"),
        "{stdout}"
    );
    let archive = env.archive_name(".vma.zst");
    let size = std::fs::metadata(env.dump().join(archive))?.len();
    assert!(size < 120 * MIB, "archive {size} bytes");
    Ok(())
}

/// r11: no backup replaces another. Names have one-second resolution, so a backup of the
/// same guest in the same second (here: planted archives and logs for this second and the
/// next ones, as an earlier backup would leave them) takes the next free second; every
/// earlier file stays byte for byte. A guest named twice is backed up once.
#[test]
fn same_second_backups_keep_both_archives_and_logs() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let env = Env::new(tmp.path())?;
    setup_vm(&env)?;
    std::fs::create_dir_all(env.dump())?;
    let now = chrono::Local::now();
    let mut planted = Vec::new();
    for s in 0..8 {
        let at = now + chrono::Duration::seconds(s);
        let base = format!("vzdump-qemu-100-{}", at.format("%Y_%m_%d-%H_%M_%S"));
        for ext in [".vma.zst", ".log"] {
            let name = format!("{base}{ext}");
            let text = format!("an earlier backup: {name}");
            std::fs::write(env.dump().join(&name), &text)?;
            planted.push((name, text));
        }
    }
    let out = env.vmdump_backup(&["100", "100", "--compress", "zstd"])?;
    let stdout = expect_success(&out, "vmdump backup 100 100");
    assert_eq!(
        stdout.matches("Starting Backup of VM 100 ").count(),
        1,
        "{stdout}"
    );
    for (name, text) in &planted {
        assert_eq!(
            &std::fs::read_to_string(env.dump().join(name))?,
            text,
            "{name} was replaced"
        );
    }
    let new: Vec<String> = env
        .dump_files()
        .into_iter()
        .filter(|f| !planted.iter().any(|(p, _)| p == f))
        .collect();
    assert_eq!(new.len(), 2, "{new:?}");
    let archive = new
        .iter()
        .find(|f| f.ends_with(".vma.zst"))
        .expect("archive");
    let log = new.iter().find(|f| f.ends_with(".log")).expect("log");
    assert_eq!(
        archive.trim_end_matches(".vma.zst"),
        log.trim_end_matches(".log")
    );
    assert!(
        archive.as_str() > planted.last().expect("planted").0.as_str(),
        "{archive} is not after the planted names"
    );
    assert!(
        stdout.contains(&format!(
            "creating vzdump archive '{}'",
            env.dump().join(archive).display()
        )),
        "{stdout}"
    );
    Ok(())
}

#[test]
fn bad_options_are_clear_errors() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let env = Env::new(tmp.path())?;
    setup_vm(&env)?;
    let out = env.vmdump_backup(&["100", "--compress", "bzip2"])?;
    expect_exit(&out, 2, "vmdump backup --compress bzip2");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("'--compress <COMPRESS>': 'bzip2' is not one of"),
        "{}",
        output_text(&out)
    );
    let out = env.vmdump_backup(&["100", "--all"])?;
    assert!(!out.status.success());
    let out = env.vmdump_backup(&["100", "--performance", "max-workers=0"])?;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("max-workers"),
        "{}",
        output_text(&out)
    );
    // Another tool's lock refuses the guest and stays as it was.
    let conf_path = env.root.join("qemu-server/100.conf");
    let locked = format!("{}lock: migrate\n", std::fs::read_to_string(&conf_path)?);
    std::fs::write(&conf_path, &locked)?;
    let out = env.vmdump_backup(&["100"])?;
    let stdout = expect_exit(&out, 1, "vmdump backup");
    assert!(stdout.contains("VM is locked (migrate)"), "{stdout}");
    assert_eq!(std::fs::read_to_string(&conf_path)?, locked);
    assert!(!env.dump_files().iter().any(|f| f.contains(".vma")));
    Ok(())
}

/// vzdump's node-global lock: a second job fails at once with `--lockwait 0`, waits with a
/// longer lockwait and runs when the lock is released; holding the lock, a job removes the
/// `.dat` files an interrupted backup of the same guest left behind (and only those).
#[test]
fn global_lock_waits_and_stale_temporaries_are_removed() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let env = Env::new(tmp.path())?;
    setup_vm(&env)?;
    let lock = env.run.join("backup.lock");
    std::fs::create_dir_all(env.dump())?;
    let stale = env
        .dump()
        .join("vzdump-qemu-100-2020_01_01-00_00_00.vma.dat");
    let other = env
        .dump()
        .join("vzdump-qemu-101-2020_01_01-00_00_00.vma.dat");
    std::fs::write(&stale, b"half an archive")?;
    std::fs::write(&other, b"not ours")?;

    // Another job holds the lock (util-linux flock, as a separate process).
    // It keeps the lock until its stdin closes (killing flock alone would leave the lock
    // with the shell it started).
    let mut holder = Command::new("flock")
        .arg(&lock)
        .args(["-c", "read -r _"])
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while Command::new("flock")
        .args(["-n"])
        .arg(&lock)
        .arg("true")
        .status()?
        .success()
    {
        assert!(Instant::now() < deadline, "the holder never took the lock");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    let out = env.vmdump_backup(&["100", "--lockwait", "0"])?;
    let stdout = expect_exit(&out, 1, "vmdump backup");
    assert!(
        stdout.contains(&format!(
            "ERROR: can't acquire lock '{}' (wait = 0)",
            lock.display()
        )),
        "{stdout}"
    );
    assert!(
        stale.exists(),
        "a job without the lock touched the dump dir"
    );

    // A `lock: backup` left by a killed run is stale while we hold the global lock.
    let conf_path = env.root.join("qemu-server/100.conf");
    let conf = std::fs::read_to_string(&conf_path)?;
    std::fs::write(&conf_path, format!("{conf}lock: backup\n"))?;

    // lockwait 1 (minute): waits, then runs once the holder is gone.
    let waiting = env
        .vmdump_command(&["100", "--lockwait", "1", "--compress", "zstd"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        !env.dump_files().iter().any(|f| f.ends_with(".vma.zst")),
        "the second job did not wait for the lock"
    );
    drop(holder.stdin.take());
    holder.wait()?;
    let out = waiting.wait_with_output()?;
    let stdout = expect_success(&out, "vmdump backup");
    for line in [
        "INFO: trying to get global lock - waiting...",
        "INFO: got global lock",
        &format!(
            "INFO: removed stale temporary file '{}' (left by an interrupted backup)",
            stale.display()
        ),
        "WARN: removing stale 'lock: backup' left by an interrupted backup",
        "INFO: Finished Backup of VM 100",
    ] {
        assert!(stdout.contains(line), "missing '{line}' in:\n{stdout}");
    }
    assert_eq!(
        std::fs::read_to_string(&conf_path)?,
        conf,
        "the lock was not removed"
    );
    assert!(!stale.exists(), "the stale temporary is still there");
    assert!(other.exists(), "another guest's temporary was removed");
    Ok(())
}

/// A storage path containing `,` (QEMU's option separator) backs up like any other: the helper
/// QEMU gets its disks from the VM runtime's command line, which never splits a path.
#[test]
fn stopped_vm_on_a_storage_path_with_commas() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let env = Env::new(tmp.path())?;
    let store = tmp.path().join("st,ore,,x");
    std::fs::create_dir_all(store.join("images/100"))?;
    let mut cfg = std::fs::read_to_string(env.root.join("storage.cfg"))?;
    cfg.push_str(&format!(
        "\ndir: comma\n\tpath {}\n\tcontent images\n",
        store.display()
    ));
    std::fs::write(env.root.join("storage.cfg"), cfg)?;
    let raw = store.join("images/100/vm-100-disk-0.raw");
    std::fs::File::create(&raw)?.set_len(8 * MIB)?;
    write_random(&raw, MIB, 2 * MIB, 3)?;
    let qcow = store.join("images/100/vm-100-disk-1.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&qcow)
        .arg((4 * MIB).to_string()))?;
    run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x3c 1M 1M"])
        .arg(&qcow))?;
    env.write_config(
        100,
        "cores: 1\nmemory: 256\nscsi0: comma:100/vm-100-disk-0.raw,size=8M\nscsi1: comma:100/vm-100-disk-1.qcow2,size=4M\n",
    )?;
    let out = env.vmdump_backup(&["100", "--compress", "0"])?;
    let stdout = expect_success(&out, "vmdump backup");
    assert!(stdout.contains("INFO: status = stopped"), "{stdout}");
    let archive = env.dump().join(env.archive_name(".vma"));
    assert_eq!(
        dissect_devices(&archive)?,
        vec![
            ("drive-scsi0".into(), 8 * MIB, sha256_file(&raw)?),
            (
                "drive-scsi1".into(),
                4 * MIB,
                image_sha256(&qcow, "qcow2", tmp.path())?
            ),
        ]
    );
    Ok(())
}

/// A backup helper QEMU that exits at once (here: a "qcow2" disk that is not one) is reported
/// at once, with QEMU's own words, not after the launch timeout; nothing is left running.
#[test]
fn helper_qemu_that_exits_at_once_is_reported_at_once() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let env = Env::new(tmp.path())?;
    let bad = env.image(100, "vm-100-disk-0.qcow2");
    std::fs::write(&bad, vec![0x5au8; 1 << 20])?;
    env.write_config(
        100,
        "memory: 128\nvirtio0: local:100/vm-100-disk-0.qcow2,size=1M\n",
    )?;
    let t0 = Instant::now();
    let out = env.vmdump_backup(&["100"])?;
    let took = t0.elapsed();
    let stdout = expect_exit(&out, 1, "vmdump backup");
    assert!(
        stdout.contains("ERROR: Backup of VM 100 failed - "),
        "{stdout}"
    );
    assert!(
        stdout.contains("Image is not in qcow2 format"),
        "QEMU's own message is missing:\n{stdout}"
    );
    assert!(
        took < std::time::Duration::from_secs(10),
        "the failure took {took:?} to report"
    );
    env.assert_no_archive();
    Ok(())
}

/// vzdump's `--stdout`: the archive (here zstd) on standard output and nothing else there,
/// the task log on stderr, no archive or `.dat` in the dump directory (only the guest's
/// `.log`), `TARGET=-` for the hooks; the configs are assembled in the `--tmpdir` task
/// directory (`qemu-server.conf`, and `qemu-server.fw` from the guest's firewall config),
/// which is gone afterwards. One guest only; a reader that goes away fails the backup
/// cleanly; a missing tmpdir is refused before anything is written.
#[test]
fn stdout_archive_and_tmpdir() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let env = Env::new(tmp.path())?;
    let (ha, hb) = setup_vm(&env)?;
    std::fs::create_dir_all(env.root.join("firewall"))?;
    std::fs::write(env.root.join("firewall/100.fw"), "[OPTIONS]\nenable: 1\n")?;
    let tmpdir = tmp.path().join("scratch");
    std::fs::create_dir_all(&tmpdir)?;
    let hook = tmp.path().join("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$* TARGET=${{TARGET-}}\" >> {d}/hooks.log\n\
             if [ \"$1\" = backup-end ]; then ls {t}/vzdumptmp*_100 > {d}/tmpdir.list; fi\n",
            d = tmp.path().display(),
            t = tmpdir.display()
        ),
    )?;
    run(Command::new("chmod").arg("755").arg(&hook))?;

    let out_path = tmp.path().join("out.vma.zst");
    let out = env
        .vmdump_command(&[
            "100",
            "--stdout",
            "--compress",
            "zstd",
            "--tmpdir",
            tmpdir.to_str().expect("utf-8"),
            "--script",
            hook.to_str().expect("utf-8"),
        ])
        .stdout(std::fs::File::create(&out_path)?)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for line in [
        "INFO: Starting Backup of VM 100 (qemu)",
        "INFO: sending archive to stdout",
        "INFO: transferred 48.00 MiB in ",
        "INFO: Backup job finished successfully",
    ] {
        assert!(stderr.contains(line), "missing {line:?} in\n{stderr}");
    }
    assert!(!stderr.contains("creating vzdump archive"), "{stderr}");
    let plain = plain_vma(&out_path, tmp.path())?;
    assert_eq!(
        dissect_devices(&plain)?,
        vec![
            ("drive-virtio0".into(), 32 * MIB, ha),
            ("drive-virtio1".into(), 16 * MIB + 4096, hb),
        ]
    );
    assert_eq!(
        dissect_config(&plain, "qemu-server.fw")?,
        "[OPTIONS]\nenable: 1\n"
    );
    assert!(dissect_config(&plain, "qemu-server.conf")?.contains("name: stopped-vm\n"));
    let files = env.dump_files();
    assert!(
        files.len() == 1 && files[0].ends_with(".log"),
        "only the guest's log: {files:?}"
    );
    let hooks = std::fs::read_to_string(tmp.path().join("hooks.log"))?;
    assert!(hooks.contains("backup-end stop 100 TARGET=-\n"), "{hooks}");
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("tmpdir.list"))?,
        "qemu-server.conf\nqemu-server.fw\n"
    );
    assert!(file_names(&tmpdir).is_empty(), "{:?}", file_names(&tmpdir));

    // A reader that goes away: the backup fails, nothing is left.
    let mut child = env
        .vmdump_command(&["100", "--stdout"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    drop(child.stdout.take());
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("ERROR: Backup of VM 100 failed - ") && stderr.contains("Broken pipe"),
        "{stderr}"
    );
    env.assert_no_archive();

    // One guest only; not with a storage; an existing tmpdir.
    for (args, code, want) in [
        (
            &["100", "101", "--stdout"][..],
            1,
            "you can only backup a single VM with option --stdout",
        ),
        (
            &["100", "--stdout", "--storage", "local"][..],
            2,
            "--storage",
        ),
        (
            &["100", "--tmpdir", "/nonexistent-vmdump-tmp"][..],
            1,
            "tmpdir '/nonexistent-vmdump-tmp' does not exist",
        ),
    ] {
        let before = env.dump_files();
        let out = env
            .vmdump_command(args)
            .stdout(std::process::Stdio::null())
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert_eq!(env.dump_files(), before, "{args:?} wrote something");
    }
    Ok(())
}

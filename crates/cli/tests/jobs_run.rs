//! A scheduled job run end to end on a real (stopped) VM with real QEMU 7.2: `vmdump jobs add`
//! writes jobs.cfg, `vmdump jobs run` backs the guest up and, with `remove 1`, prunes the
//! oldest backup (archive, log, notes) while a protected one stays; then the `remove 0` hard
//! limit refuses the next backup before it starts.

mod backup_common;

use std::process::Command;

use anyhow::Result;
use backup_common::*;

fn vmdump(env: &Env, args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_vmdump"))
        .args(args)
        .env("VMDUMP_ROOT", &env.root)
        .env("VMDUMP_RUN_DIR", &env.run)
        .env("VMDUMP_STATE_DIR", env.base.join("state"))
        .env("VMDUMP_TASK_DIR", env.base.join("tasks"))
        .output()?)
}

#[test]
fn job_run_backs_up_and_prunes_the_oldest_backup() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let env = Env::new(tmp.path())?;
    let disk = env.image(100, "vm-100-disk-0.raw");
    std::fs::File::create(&disk)?.set_len(8 * MIB)?;
    write_random(&disk, MIB, 2 * MIB, 3)?;
    env.write_config(
        100,
        "memory: 128\nname: jobvm\nvirtio0: local:100/vm-100-disk-0.raw,size=8M\n",
    )?;
    let dump = env.dump();
    std::fs::create_dir_all(&dump)?;
    for (stamp, protected) in [
        ("2019_06_01-02_00_00", true),
        ("2020_01_01-02_00_00", false),
        ("2021_01_01-02_00_00", false),
    ] {
        let base = format!("vzdump-qemu-100-{stamp}");
        std::fs::write(dump.join(format!("{base}.vma.zst")), b"old")?;
        std::fs::write(dump.join(format!("{base}.log")), b"log")?;
        std::fs::write(dump.join(format!("{base}.vma.zst.notes")), b"notes")?;
        if protected {
            std::fs::write(dump.join(format!("{base}.vma.zst.protected")), b"")?;
        }
    }

    let out = vmdump(
        &env,
        &[
            "jobs",
            "add",
            "nightly",
            "--schedule",
            "daily",
            "--vmid",
            "100",
            "--storage",
            "local",
            "--compress",
            "zstd",
            "--prune-backups",
            "keep-last=2",
        ],
    )?;
    expect_success(&out, "vmdump jobs add");
    let cfg = std::fs::read_to_string(env.root.join("jobs.cfg"))?;
    assert!(
        cfg.starts_with("vzdump: nightly\n\tschedule daily\n"),
        "{cfg}"
    );

    let out = vmdump(&env, &["jobs", "run", "nightly"])?;
    let stdout = expect_success(&out, "vmdump jobs run");
    for line in [
        "INFO: starting new backup job: vmdump jobs run nightly",
        "INFO: Starting Backup of VM 100 (qemu)",
        "INFO: prune older backups with retention: keep-last=2",
        "INFO: removing backup 'local:backup/vzdump-qemu-100-2020_01_01-02_00_00.vma.zst'",
        "INFO: pruned 1 backup(s) not covered by keep-retention policy",
        "INFO: Backup job finished successfully",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in\n{stdout}");
    }
    // The run is a task of the registry: its log is what the command printed, ending OK.
    let tasks = vmdump_task::TaskDir::new(env.base.join("tasks")).list(10)?;
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    let task = &tasks[0];
    assert_eq!(
        (
            task.upid.kind.as_str(),
            task.upid.id.as_str(),
            task.upid.user.as_str()
        ),
        ("vzdump", "nightly", "root@cli")
    );
    assert_eq!(task.status, vmdump_task::TaskStatus::Ok);
    let log = std::fs::read_to_string(
        vmdump_task::TaskDir::new(env.base.join("tasks")).log_path(&task.upid),
    )?;
    assert!(
        log.contains("INFO: pruned 1 backup(s) not covered by keep-retention policy\n")
            && log.ends_with("INFO: Backup job finished successfully\nTASK OK\n"),
        "{log}"
    );
    let files = env.dump_files();
    for gone in [
        "vzdump-qemu-100-2020_01_01-02_00_00.vma.zst",
        "vzdump-qemu-100-2020_01_01-02_00_00.log",
        "vzdump-qemu-100-2020_01_01-02_00_00.vma.zst.notes",
    ] {
        assert!(
            !files.contains(&gone.to_string()),
            "{gone} left in {files:?}"
        );
    }
    for kept in [
        "vzdump-qemu-100-2019_06_01-02_00_00.vma.zst",
        "vzdump-qemu-100-2019_06_01-02_00_00.vma.zst.protected",
        "vzdump-qemu-100-2021_01_01-02_00_00.vma.zst",
    ] {
        assert!(
            files.contains(&kept.to_string()),
            "{kept} missing in {files:?}"
        );
    }
    let new: Vec<&String> = files
        .iter()
        .filter(|f| f.ends_with(".vma.zst") && !f.contains("_01_01-") && !f.contains("2019"))
        .collect();
    assert_eq!(new.len(), 1, "{files:?}");

    // The listing shows the three backups, the protected one marked.
    let out = vmdump(&env, &["list", "local", "--output-format", "json"])?;
    let list: serde_json::Value = serde_json::from_str(&expect_success(&out, "vmdump list"))?;
    let list = list.as_array().expect("array");
    assert_eq!(list.len(), 3, "{list:?}");
    assert_eq!(list[0]["protected"], true);
    assert_eq!(list[0]["notes"], "notes");
    assert_eq!(list[2]["vmid"], 100);

    // remove 0: keep-last=2 is now a hard limit, and two unprotected backups exist.
    let out = env.vmdump_backup(&["100", "--remove", "0", "--prune-backups", "keep-last=2"])?;
    let stdout = expect_exit(&out, 1, "vmdump backup --remove 0");
    assert!(
        stdout.contains("There is a max backup limit of 2 enforced by the target storage"),
        "{stdout}"
    );
    assert_eq!(
        env.dump_files().len(),
        files.len(),
        "nothing written or removed"
    );
    Ok(())
}

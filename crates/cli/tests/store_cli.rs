//! The retention, listing and job commands as a user calls them (no guest needed): `list`,
//! `prune --dry-run`/apply, `notes`, `protect`, `remove`, `jobs add|show|set|list|next|remove`,
//! `jobs systemd-units`, and their errors.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::Result;
use vmdump_testkit::{expect_exit, expect_success};

fn vmdump(root: &Path, args: &[&str]) -> Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_vmdump"))
        .args(args)
        .env("VMDUMP_ROOT", root)
        .env("VMDUMP_STATE_DIR", root.join("state"))
        .output()?)
}

fn setup(tmp: &Path) -> Result<std::path::PathBuf> {
    let root = tmp.join("etc");
    let dump = tmp.join("store/dump");
    std::fs::create_dir_all(&root)?;
    std::fs::create_dir_all(&dump)?;
    std::fs::write(
        root.join("storage.cfg"),
        format!(
            "dir: bk\n\tpath {}\n\tcontent backup\n\tmax-protected-backups 1\n\ndir: img\n\tpath {}\n\tcontent images\n",
            tmp.join("store").display(),
            tmp.join("img").display()
        ),
    )?;
    for day in 1..=5 {
        let base = format!("vzdump-qemu-100-2025_01_0{day}-02_00_00");
        std::fs::write(dump.join(format!("{base}.vma.zst")), vec![0u8; day * 10])?;
        std::fs::write(dump.join(format!("{base}.log")), b"log")?;
    }
    std::fs::write(dump.join("vzdump-qemu-101-2025_01_01-02_00_00.vma"), b"x")?;
    Ok(root)
}

const OLDEST: &str = "bk:backup/vzdump-qemu-100-2025_01_01-02_00_00.vma.zst";

#[test]
fn list_notes_protect_remove_and_prune() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = setup(tmp.path())?;
    let out = expect_success(&vmdump(&root, &["list", "bk", "--vmid", "100"])?, "list");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    assert!(lines[0].starts_with("volid"), "{out}");
    assert!(
        lines[0]
            .split_whitespace()
            .eq("volid vmid type time size compression notes protected".split(' ')),
        "{out}"
    );
    assert!(lines[1].starts_with(OLDEST), "{out}");
    assert!(lines[1].contains("2025-01-01 02:00:00"), "{out}");

    expect_success(&vmdump(&root, &["notes", OLDEST, "keep me"])?, "notes");
    let out = expect_success(&vmdump(&root, &["notes", OLDEST])?, "notes");
    assert_eq!(out.trim(), "keep me");
    expect_success(&vmdump(&root, &["protect", OLDEST, "1"])?, "protect");
    // max-protected-backups 1 on this storage.
    let out = vmdump(
        &root,
        &[
            "protect",
            "bk:backup/vzdump-qemu-100-2025_01_02-02_00_00.vma.zst",
            "1",
        ],
    )?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max-protected-backups"));
    let out = vmdump(&root, &["remove", OLDEST])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is protected"));

    // The plan: protected one, two kept by keep-last, two removed; dry run removes nothing.
    let prune = ["prune", "bk", "--vmid", "100", "--keep-last", "2"];
    let out = expect_success(
        &vmdump(&root, &[&prune[..], &["--dry-run"]].concat())?,
        "prune --dry-run",
    );
    assert_eq!(
        out.matches(" remove ").count() + out.matches(" remove\n").count(),
        2,
        "{out}"
    );
    assert_eq!(out.matches("keep-last").count(), 2, "{out}");
    assert!(out.contains(" protected "), "{out}");
    let files = std::fs::read_dir(tmp.path().join("store/dump"))?.count();
    let out = expect_success(
        &vmdump(&root, &[&prune[..], &["--output-format", "json"]].concat())?,
        "prune",
    );
    let plan: serde_json::Value = serde_json::from_str(&out)?;
    let marks: Vec<&str> = plan
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["mark"].as_str().expect("mark"))
        .collect();
    assert_eq!(marks, ["protected", "remove", "remove", "keep", "keep"]);
    // 2 archives and their logs are gone; the other guest's backup is untouched.
    assert_eq!(
        std::fs::read_dir(tmp.path().join("store/dump"))?.count(),
        files - 4
    );
    assert!(tmp
        .path()
        .join("store/dump/vzdump-qemu-101-2025_01_01-02_00_00.vma")
        .exists());

    // Errors: no keep option, a storage without backups, a bad volid.
    assert!(!vmdump(&root, &["prune", "bk"])?.status.success());
    assert!(!vmdump(&root, &["list", "img"])?.status.success());
    assert!(!vmdump(&root, &["remove", "bk:backup/../../etc/passwd"])?
        .status
        .success());
    Ok(())
}

#[test]
fn jobs_commands() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = setup(tmp.path())?;
    expect_success(
        &vmdump(
            &root,
            &[
                "jobs",
                "add",
                "weekly",
                "--schedule",
                "sat 02:00",
                "--all",
                "1",
                "--storage",
                "bk",
                "--comment",
                "full, weekly",
                "--option",
                "zstd=2",
            ],
        )?,
        "jobs add",
    );
    let cfg = std::fs::read_to_string(root.join("jobs.cfg"))?;
    assert_eq!(
        cfg,
        "vzdump: weekly\n\tschedule sat 02:00\n\tall 1\n\tcomment full, weekly\n\tstorage bk\n\tzstd 2\n"
    );
    // Invalid: bad schedule, unknown option, duplicate id; nothing is written.
    for bad in [
        vec!["jobs", "add", "x", "--schedule", "someday", "--all", "1"],
        vec![
            "jobs",
            "add",
            "x",
            "--schedule",
            "daily",
            "--all",
            "1",
            "--option",
            "frob=1",
        ],
        vec!["jobs", "add", "weekly", "--schedule", "daily", "--all", "1"],
    ] {
        assert!(!vmdump(&root, &bad)?.status.success(), "{bad:?}");
    }
    assert_eq!(std::fs::read_to_string(root.join("jobs.cfg"))?, cfg);

    expect_success(
        &vmdump(
            &root,
            &[
                "jobs",
                "set",
                "weekly",
                "--repeat-missed",
                "1",
                "--delete",
                "comment",
            ],
        )?,
        "jobs set",
    );
    let out = expect_success(&vmdump(&root, &["jobs", "show", "weekly"])?, "jobs show");
    assert!(out.contains("\trepeat-missed 1\n"), "{out}");
    assert!(!out.contains("comment"), "{out}");
    let out = expect_success(&vmdump(&root, &["jobs", "list"])?, "jobs list");
    assert!(out.contains("weekly") && out.contains("sat 02:00"), "{out}");
    let out = expect_success(
        &vmdump(&root, &["jobs", "next", "--output-format", "json"])?,
        "jobs next",
    );
    let next: serde_json::Value = serde_json::from_str(&out)?;
    assert!(next[0]["next_run"].as_i64().is_some(), "{out}");
    let out = expect_success(
        &vmdump(
            &root,
            &["jobs", "systemd-units", "--exe", "/usr/bin/vmdump"],
        )?,
        "jobs systemd-units",
    );
    assert!(
        out.contains("OnCalendar=Sat *-*-* 02:00:00\nPersistent=true\n"),
        "{out}"
    );
    assert!(
        out.contains("ExecStart=/usr/bin/vmdump jobs run weekly\n"),
        "{out}"
    );
    assert!(out.contains("# vmdump-scheduler.service\n"), "{out}");
    expect_success(
        &vmdump(&root, &["jobs", "remove", "weekly"])?,
        "jobs remove",
    );
    let out = vmdump(&root, &["jobs", "run", "weekly"])?;
    expect_exit(&out, 1, "jobs run of a removed job");
    Ok(())
}

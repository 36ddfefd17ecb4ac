//! Bad input, one table (issue 11): missing guests, bad storage, bad options, unwritable
//! directories and things that are not archives. Every case checks the exit code (1 failure,
//! 2 usage error), the message, and that nothing under the config root, the storage or the
//! dump directory was written. Plus the global options `--root` / `--run-dir` in both
//! positions, for every subcommand that reads them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vmdump_testkit::{output_text, sha256_file};

const BIN: &str = env!("CARGO_BIN_EXE_vmdump");

/// A config root with one guest (100, disk not needed: every case fails before reading it),
/// a `local` dir storage, a storage without backup content, and a run dir.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = Env { dir };
        std::fs::create_dir_all(e.etc().join("qemu-server")).expect("mkdir");
        std::fs::create_dir_all(e.store().join("images/100")).expect("mkdir");
        std::fs::write(
            e.etc().join("storage.cfg"),
            format!(
                "dir: local\n\tpath {}\n\tcontent images,backup\n\ndir: isos\n\tpath {}\n\tcontent iso\n",
                e.store().display(),
                e.path("isos").display()
            ),
        )
        .expect("storage.cfg");
        std::fs::write(
            e.etc().join("qemu-server/100.conf"),
            "memory: 256\nscsi0: local:100/vm-100-disk-0.raw,size=1M\n",
        )
        .expect("100.conf");
        std::fs::write(e.path("not-an-archive.vma"), "hello, I am text\n").expect("write");
        std::fs::write(e.path("a-file"), "x").expect("write");
        std::fs::create_dir_all(e.path("a-dir")).expect("mkdir");
        e
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn etc(&self) -> PathBuf {
        self.path("etc")
    }

    fn store(&self) -> PathBuf {
        self.path("store")
    }

    fn run_dir(&self) -> PathBuf {
        self.path("run")
    }

    /// `vmdump <args>` with this root and run dir given as global options before the
    /// subcommand, and nothing from the environment.
    fn vmdump(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--root")
            .arg(self.etc())
            .arg("--run-dir")
            .arg(self.run_dir())
            .args(args)
            .env_remove("VMDUMP_ROOT")
            .env_remove("VMDUMP_RUN_DIR")
            .env("VMDUMP_LOCAL_PATH", self.path("implicit-local"))
            .output()
            .expect("run vmdump")
    }

    /// Every file outside the run dir (locks live there) with its hash.
    fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        fn walk(dir: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, String>) {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p == skip {
                    continue;
                }
                if p.is_dir() {
                    out.insert(p.clone(), "dir".into());
                    walk(&p, skip, out);
                } else {
                    out.insert(p.clone(), sha256_file(&p).unwrap_or_default());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(self.dir.path(), &self.run_dir(), &mut out);
        out
    }
}

#[test]
fn bad_inputs_fail_clearly_and_write_nothing() {
    let env = Env::new();
    let p = |n: &str| env.path(n).display().to_string();
    let sub = format!("{}/sub", p("a-file"));
    let cases: Vec<(Vec<String>, i32, Vec<&str>)> = vec![
        // Missing guest: says it does not exist, leaves no .log in the dump dir.
        (
            vec!["backup".into(), "105".into()],
            1,
            vec!["VM 105 does not exist", "105.conf"],
        ),
        (
            vec!["vm".into(), "start".into(), "105".into()],
            1,
            vec!["105.conf"],
        ),
        // Bad storage.
        (
            vec![
                "backup".into(),
                "100".into(),
                "--storage".into(),
                "nope".into(),
            ],
            1,
            vec!["storage 'nope' does not exist"],
        ),
        (
            vec![
                "backup".into(),
                "100".into(),
                "--storage".into(),
                "isos".into(),
            ],
            1,
            vec!["storage 'isos' does not allow content 'backup'"],
        ),
        // Bad options: usage errors, exit 2.
        (
            vec![
                "backup".into(),
                "100".into(),
                "--compress".into(),
                "bzip2".into(),
            ],
            2,
            vec!["'bzip2' is not one of"],
        ),
        (
            vec![
                "backup".into(),
                "100".into(),
                "--mode".into(),
                "live".into(),
            ],
            2,
            vec!["'live' is not one of snapshot, suspend, stop"],
        ),
        (
            vec![
                "backup".into(),
                "100".into(),
                "--bwlimit".into(),
                "-5".into(),
            ],
            2,
            vec!["the value must be ≥ 0"],
        ),
        (
            vec![
                "restore".into(),
                p("not-an-archive.vma"),
                "200".into(),
                "--bwlimit".into(),
                "-5".into(),
            ],
            2,
            vec!["the value must be ≥ 0"],
        ),
        (
            vec![
                "backup".into(),
                "100".into(),
                "--performance".into(),
                "max-workers=0".into(),
            ],
            2,
            vec!["max-workers 0 is not in 1..256"],
        ),
        (
            vec!["backup".into(), "0".into()],
            2,
            vec!["'0' is not a guest id (100..999999999)"],
        ),
        (
            vec!["restore".into(), p("not-an-archive.vma"), "99".into()],
            2,
            vec!["'99' is not a guest id (100..999999999)"],
        ),
        (
            vec!["vm".into(), "status".into(), "1000000000".into()],
            2,
            vec!["is not a guest id"],
        ),
        (
            vec![
                "backup".into(),
                "100".into(),
                "--protected".into(),
                "maybe".into(),
            ],
            2,
            vec!["'maybe' is not a boolean"],
        ),
        // Unwritable dump directory (a path through a regular file: root can write anywhere
        // else). No warning about removing a file that never existed.
        (
            vec![
                "backup".into(),
                "100".into(),
                "--dumpdir".into(),
                sub.clone(),
            ],
            1,
            vec!["create dump directory", "Not a directory"],
        ),
        // Not archives.
        (
            vec!["restore".into(), p("a-dir"), "200".into()],
            1,
            vec!["is a directory, not an archive"],
        ),
        (
            vec!["restore".into(), p("not-an-archive.vma"), "200".into()],
            1,
            vec!["restore of VM 200 failed", "archive"],
        ),
        (
            vec!["restore".into(), p("missing.vma"), "200".into()],
            1,
            vec!["open archive", "No such file or directory"],
        ),
    ];
    for (args, code, needles) in cases {
        let before = env.snapshot();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = env.vmdump(&refs);
        let text = output_text(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {text}");
        for n in needles {
            assert!(text.contains(n), "{args:?}: {n:?} missing in\n{text}");
        }
        for bad in [
            "could not remove",
            "new volumes removed",
            "decompressor",
            "\x1b[",
        ] {
            assert!(!text.contains(bad), "{args:?}: {bad:?} in\n{text}");
        }
        assert_eq!(env.snapshot(), before, "{args:?} wrote something:\n{text}");
    }
    assert!(!env.store().join("dump").exists(), "a dump dir was created");
}

#[test]
fn config_file_problems_name_their_line() {
    let env = Env::new();
    // An unknown vzdump.conf key is a warning with its line, not a failure (it fails later,
    // on the missing guest, and writes nothing).
    std::fs::write(
        env.etc().join("vzdump.conf"),
        "compress: zstd\nfrobnicate: 1\n",
    )
    .expect("write");
    let out = env.vmdump(&["backup", "105"]);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("vzdump.conf:2: unknown key 'frobnicate' ignored"),
        "{text}"
    );
    assert!(text.contains("VM 105 does not exist"), "{text}");

    // storage.cfg: an unknown property is reported with its line; an unindented property is
    // an error at its own line.
    let cfg = env.etc().join("storage.cfg");
    std::fs::write(
        &cfg,
        format!(
            "dir: local\n\tpath {}\n\tcontents images\n",
            env.store().display()
        ),
    )
    .expect("write");
    let archive = env.path("not-an-archive.vma");
    let out = env.vmdump(&["restore", archive.to_str().expect("utf-8"), "200"]);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "{}:3: unknown property 'contents' of storage 'local' ignored",
            cfg.display()
        )),
        "{text}"
    );
    std::fs::write(
        &cfg,
        format!("dir: local\npath {}\n", env.store().display()),
    )
    .expect("write");
    let out = env.vmdump(&["backup", "100"]);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(&format!("{}:2: ", cfg.display())), "{text}");
    assert!(text.contains("property lines must be indented"), "{text}");
}

/// Whether `text` holds an ANSI colour sequence (`ESC [ <digits and ;> m`).
fn has_colour(text: &str) -> bool {
    text.split("\x1b[").skip(1).any(|rest| {
        rest.trim_start_matches(|c: char| c.is_ascii_digit() || c == ';')
            .starts_with('m')
    })
}

/// On a terminal, warnings are coloured, unless `NO_COLOR` is set (a pty from `script`).
#[test]
fn no_colour_with_no_color_even_on_a_terminal() {
    let env = Env::new();
    std::fs::write(
        env.etc().join("storage.cfg"),
        format!(
            "dir: local\n\tpath {}\n\tcontents images\n",
            env.store().display()
        ),
    )
    .expect("write");
    let line = format!(
        "{BIN} --root {} --run-dir {} restore {} 200",
        env.etc().display(),
        env.run_dir().display(),
        env.path("not-an-archive.vma").display()
    );
    let on_pty = |no_color: bool| {
        let mut c = Command::new("script");
        c.args(["-qec", &line, "/dev/null"]);
        if no_color {
            c.env("NO_COLOR", "1");
        } else {
            c.env_remove("NO_COLOR");
        }
        let out = c.output().expect("script");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let coloured = on_pty(false);
    assert!(
        coloured.contains("unknown property 'contents'"),
        "{coloured:?}"
    );
    assert!(
        has_colour(&coloured),
        "no colour on a terminal: {coloured:?}"
    );
    let plain = on_pty(true);
    assert!(plain.contains("unknown property 'contents'"), "{plain:?}");
    assert!(!has_colour(&plain), "colour despite NO_COLOR: {plain:?}");
}

/// `--root` and `--run-dir` work before and after the subcommand, for every subcommand.
#[test]
fn global_options_in_both_positions() {
    let env = Env::new();
    let root = env.etc();
    let run = env.run_dir();
    let other = env.path("other-run");
    for (label, before, after) in [("before", true, false), ("after", false, true)] {
        let cmd = |sub: &[&str], run_dir: &Path| {
            let mut c = Command::new(BIN);
            if before {
                c.arg("--root").arg(&root).arg("--run-dir").arg(run_dir);
            }
            c.args(sub);
            if after {
                c.arg("--root").arg(&root).arg("--run-dir").arg(run_dir);
            }
            c.env_remove("VMDUMP_ROOT")
                .env_remove("VMDUMP_RUN_DIR")
                .output()
                .expect("run")
        };
        // vm: the guest of this root is found, and stopped.
        let out = cmd(&["vm", "status", "100"], &run);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "status: stopped\n",
            "{label}: {}",
            output_text(&out)
        );
        // backup: the root's guest config is read, the run dir holds the job lock.
        let _ = std::fs::remove_dir_all(&other);
        let out = cmd(&["backup", "105"], &other);
        let text = output_text(&out);
        assert!(
            text.contains(&root.join("qemu-server/105.conf").display().to_string()),
            "{label}: {text}"
        );
        assert!(other.join("backup.lock").exists(), "{label}: {text}");
        // restore: the root's storage.cfg and the run dir's VM lock are used.
        let _ = std::fs::remove_dir_all(&other);
        let a = env.path("not-an-archive.vma");
        let out = cmd(&["restore", a.to_str().expect("utf-8"), "200"], &other);
        assert_eq!(out.status.code(), Some(1), "{label}: {}", output_text(&out));
        assert!(
            other.exists(),
            "{label}: the restore did not use --run-dir: {}",
            output_text(&out)
        );
    }
}

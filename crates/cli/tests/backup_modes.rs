//! The three backup modes on a running test guest that keeps writing (real QEMU 7.2 under
//! TCG, started by `vmdump vm start` so stop mode can shut it down and start it again), hook
//! scripts, the guest's state on every way out, and a vmdump killed with SIGKILL at each
//! phase (frozen, paused, shut down, jobs running).

mod backup_common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use backup_common::*;

/// The hook script: records `<args> VMTYPE=.. HOSTNAME=.. TARGET=.. LOGFILE=.. STOREID=..
/// DUMPDIR=..` per call into `hooks.log`, the writer's last tick at `pre-stop` into
/// `pre-stop-tick`, and fails a phase whose `fail-<phase>` file exists.
const HOOK: &str = r#"#!/bin/sh
d=$(dirname "$0")
echo "$* VMTYPE=${VMTYPE-} HOSTNAME=${HOSTNAME-} TARGET=${TARGET-} LOGFILE=${LOGFILE-} STOREID=${STOREID-} DUMPDIR=${DUMPDIR-}" >> "$d/hooks.log"
if [ "$1" = pre-stop ]; then
  grep -o 'writer: tick [0-9]*' "$SERIAL" | tail -n 1 | cut -d' ' -f3 > "$d/pre-stop-tick"
fi
echo "hook output for $1"
[ ! -e "$d/fail-$1" ]
"#;

struct Guest {
    env: Env,
    hook: PathBuf,
}

impl Guest {
    /// VM 100 = the test guest (writer every 50 ms) with the hook script, started by
    /// `vmdump vm start` and ready.
    async fn boot(base: &Path) -> Result<Self> {
        let env = Env::new(base)?;
        let tg = testguest_dir();
        std::fs::copy(tg.join("data.raw"), env.image(100, "vm-100-disk-0.raw"))?;
        let conf = std::fs::read_to_string(tg.join("vm.conf"))?
            .replace("quiet\"", "quiet vmdump.interval=0.05\"");
        env.write_config(100, &conf)?;
        let hook = base.join("hook.sh");
        std::fs::write(&hook, HOOK)?;
        run(Command::new("chmod").arg("755").arg(&hook))?;
        let g = Guest { env, hook };
        expect_success(&g.vmdump(&["vm", "start", "100"]).output()?, "vm start");
        g.wait_ticks(3).await?;
        Ok(g)
    }

    fn vmdump(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vmdump"));
        c.args(args)
            .arg("--root")
            .arg(&self.env.root)
            .env("VMDUMP_RUN_DIR", &self.env.run)
            .env("VMDUMP_ACCEL", "tcg")
            .env("SERIAL", self.serial_path())
            .env_remove("VMDUMP_ROOT")
            .env_remove("VMDUMP_TEST_STALL");
        c
    }

    fn backup(&self, args: &[&str]) -> Result<Output> {
        let mut a = vec!["backup", "100"];
        a.extend_from_slice(args);
        Ok(self.vmdump(&a).output()?)
    }

    fn serial_path(&self) -> PathBuf {
        self.env.run.join("100/serial.log")
    }

    fn serial(&self) -> String {
        std::fs::read_to_string(self.serial_path()).unwrap_or_default()
    }

    fn ticks(&self) -> Vec<u64> {
        self.serial()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("vmdump-writer: tick "))
            .filter_map(|n| n.trim().parse().ok())
            .collect()
    }

    fn last_tick(&self) -> u64 {
        self.ticks().into_iter().max().unwrap_or(0)
    }

    /// Waits (up to 90 s) until the writer has printed a tick of at least `n`.
    async fn wait_ticks(&self, n: u64) -> Result<u64> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let t = self.last_tick();
            if t >= n {
                return Ok(t);
            }
            if Instant::now() > deadline {
                bail!(
                    "the guest writer did not reach tick {n}:\n{}",
                    self.serial()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The writer keeps going: a new tick within 30 s.
    async fn assert_writing(&self, what: &str) -> Result<()> {
        let t = self.last_tick();
        self.wait_ticks(t + 2)
            .await
            .with_context(|| format!("{what}: the guest does not write"))?;
        Ok(())
    }

    /// `vmdump vm status` (which also undoes what a killed backup left): `(stdout, stderr)`.
    fn status(&self) -> Result<(String, String)> {
        let out = self.vmdump(&["vm", "status", "100"]).output()?;
        let stdout = expect_success(&out, "vm status");
        Ok((stdout, String::from_utf8_lossy(&out.stderr).into_owned()))
    }

    /// QEMU has no `vmdump-*` job or node left and reports `status`; the config no lock.
    async fn assert_clean(&self, status: &str) -> Result<()> {
        let qmp = vmdump_qmp::Client::connect_retry(
            self.env.run.join("100/ctl.sock"),
            Duration::from_secs(10),
            Duration::from_secs(10),
        )
        .await?;
        let jobs = qmp.query_jobs().await?;
        assert!(jobs.is_empty(), "jobs left: {jobs:?}");
        let nodes: Vec<String> = qmp
            .query_named_block_nodes()
            .await?
            .into_iter()
            .map(|n| n.node_name)
            .filter(|n| n.starts_with("vmdump-"))
            .collect();
        assert!(nodes.is_empty(), "nodes left: {nodes:?}");
        let st = qmp.execute("query-status", None).await?;
        assert_eq!(st["status"], status);
        let conf = std::fs::read_to_string(self.env.root.join("qemu-server/100.conf"))?;
        assert!(!conf.contains("lock:"), "{conf}");
        assert!(
            !self.env.run.join("100.backup").exists(),
            "backup mark left"
        );
        Ok(())
    }

    fn hooks(&self) -> Vec<String> {
        std::fs::read_to_string(self.env.base.join("hooks.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn reset_hooks(&self) {
        let _ = std::fs::remove_file(self.env.base.join("hooks.log"));
    }

    /// The phases (and mode/vmid) of the recorded hook calls.
    fn phases(&self) -> Vec<String> {
        self.hooks()
            .iter()
            .map(|l| l.split(" VMTYPE=").next().unwrap_or("").to_string())
            .collect()
    }

    /// The newest archive's virtio0, extracted.
    fn extract_newest(&self, dir: &Path) -> Result<PathBuf> {
        let newest = self
            .env
            .dump_files()
            .into_iter()
            .filter(|f| f.ends_with(".vma"))
            .max()
            .context("no archive")?;
        let disk = dir.join(format!("{newest}.virtio0.raw"));
        dissect_extract(&self.env.dump().join(&newest), "drive-virtio0", &disk)?;
        Ok(disk)
    }

    fn stop(&self) {
        let _ = self.vmdump(&["vm", "stop", "100", "--skiplock"]).output();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        kill_pidfile(&self.env.run.join("100/qemu.pid"));
    }
}

fn assert_lines(stdout: &str, lines: &[&str]) {
    for l in lines {
        assert!(stdout.contains(l), "missing {l:?} in\n{stdout}");
    }
}

/// The downtime in ms of the `guest downtime: N ms (<kind>)` line.
fn downtime(stdout: &str, kind: &str) -> u64 {
    stdout
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix("INFO: guest downtime: ")?;
            let (ms, k) = rest.split_once(" ms (")?;
            (k.trim_end_matches(')') == kind).then(|| ms.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no downtime line for {kind} in\n{stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_on_a_writing_guest_with_hooks() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let g = Guest::boot(tmp.path()).await?;
    let script = g.hook.to_str().expect("utf-8").to_string();
    let dump = g.env.dump();

    // Snapshot: frozen around the job start; the hooks in vzdump's order with their
    // environment; the archive is the frozen filesystem (clean, no journal replay).
    let before = g.last_tick();
    let out = g.backup(&["--mode", "snapshot", "--script", &script])?;
    let stdout = expect_success(&out, "snapshot backup");
    assert_lines(
        &stdout,
        &[
            "INFO: backup mode: snapshot",
            "INFO: issuing guest-agent 'fs-freeze' command",
            "INFO: issuing guest-agent 'fs-thaw' command",
            "INFO: resuming VM again",
            "INFO: hook output for backup-start",
            "INFO: hook output for backup-end",
        ],
    );
    let frozen = downtime(&stdout, "filesystems frozen");
    assert!(frozen < 10_000, "frozen for {frozen} ms");
    assert_eq!(
        g.phases(),
        [
            "job-init",
            "job-start",
            "backup-start snapshot 100",
            "pre-stop snapshot 100",
            "pre-restart snapshot 100",
            "post-restart snapshot 100",
            "backup-end snapshot 100",
            "log-end snapshot 100",
            "job-end",
        ]
    );
    let archive = dump.join(g.env.archive_name(".vma"));
    let logfile = archive.with_extension("").with_extension("log");
    let hooks = g.hooks();
    assert_eq!(
        hooks[6],
        format!(
            "backup-end snapshot 100 VMTYPE=qemu HOSTNAME=vmdump-testguest TARGET={} LOGFILE={} STOREID=local DUMPDIR={}",
            archive.display(),
            logfile.display(),
            dump.display()
        )
    );
    assert_eq!(
        hooks[1],
        format!(
            "job-start VMTYPE= HOSTNAME= TARGET= LOGFILE= STOREID=local DUMPDIR={}",
            dump.display()
        )
    );
    let disk = g.extract_newest(tmp.path())?;
    let tick = check_disk(&disk, before)?;
    assert!(tick <= g.last_tick() + 1);
    g.assert_clean("running").await?;
    g.assert_writing("after snapshot").await?;

    // --stdout in snapshot mode: the same frozen state, streamed (zstd) to standard output;
    // no archive in the dump directory.
    let archives = g.env.dump_files().len();
    let piped = tmp.path().join("stdout.vma.zst");
    let before = g.last_tick();
    let out = g
        .vmdump(&["backup", "100", "--stdout", "--compress", "zstd"])
        .stdout(std::fs::File::create(&piped)?)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_lines(
        &stderr,
        &[
            "INFO: sending archive to stdout",
            "INFO: issuing guest-agent 'fs-freeze' command",
            "INFO: issuing guest-agent 'fs-thaw' command",
        ],
    );
    let plain = plain_vma(&piped, tmp.path())?;
    let disk = tmp.path().join("stdout.virtio0.raw");
    dissect_extract(&plain, "drive-virtio0", &disk)?;
    let tick = check_disk(&disk, before)?;
    assert!(tick <= g.last_tick() + 1);
    assert_eq!(g.env.dump_files().len(), archives + 1, "only the new .log");
    g.assert_clean("running").await?;

    // Suspend: paused only until the job runs; the archive is the paused guest's disk
    // (crash-consistent: the journal is replayed), at the tick the writer had reached.
    g.reset_hooks();
    let out = g.backup(&["--mode", "suspend", "--script", &script])?;
    let stdout = expect_success(&out, "suspend backup");
    assert_lines(
        &stdout,
        &[
            "INFO: backup mode: suspend",
            "INFO: suspending guest",
            "INFO: resuming VM again after ",
            "INFO: guest is online again after ",
        ],
    );
    assert!(!stdout.contains("fs-freeze"), "{stdout}");
    let paused = downtime(&stdout, "paused");
    assert_eq!(
        g.phases(),
        [
            "job-init",
            "job-start",
            "backup-start suspend 100",
            "pre-stop suspend 100",
            "backup-end suspend 100",
            "pre-restart suspend 100",
            "post-restart suspend 100",
            "log-end suspend 100",
            "job-end",
        ]
    );
    let at_pause: u64 = std::fs::read_to_string(tmp.path().join("pre-stop-tick"))?
        .trim()
        .parse()?;
    let disk = g.extract_newest(tmp.path())?;
    // The hook read the tick just before `stop`. Without a freeze the disk is
    // crash-consistent: the last rename may not be committed yet (the writer's next fsync
    // commits it), and a tick may be in flight.
    let tick = check_disk_recover(&disk, at_pause.saturating_sub(1))?;
    assert!(tick <= at_pause + 2, "tick {tick}, {at_pause} at the pause");
    g.assert_clean("running").await?;
    g.assert_writing("after suspend").await?;
    assert!(paused < 30_000, "paused for {paused} ms");

    // A failing pre-stop hook fails the guest before it is paused: backup-abort, no archive.
    g.reset_hooks();
    std::fs::write(tmp.path().join("fail-pre-stop"), "")?;
    let archives = g.env.dump_files().len();
    let out = g.backup(&["--mode", "suspend", "--script", &script])?;
    let stdout = expect_exit(&out, 1, "failing pre-stop");
    assert!(
        stdout.contains(&format!(
            "ERROR: Backup of VM 100 failed - command '{script} pre-stop suspend 100' failed: exit code 1"
        )),
        "{stdout}"
    );
    assert_eq!(
        g.phases(),
        [
            "job-init",
            "job-start",
            "backup-start suspend 100",
            "pre-stop suspend 100",
            "backup-abort suspend 100",
            "log-end suspend 100",
            "job-end",
        ]
    );
    std::fs::remove_file(tmp.path().join("fail-pre-stop"))?;
    // Only the new log: no archive.
    assert_eq!(g.env.dump_files().len(), archives + 1);
    g.assert_clean("running").await?;

    // A failing job-start hook aborts the job: job-abort, no guest is touched.
    g.reset_hooks();
    std::fs::write(tmp.path().join("fail-job-start"), "")?;
    let out = g.backup(&["--script", &script])?;
    let stdout = expect_exit(&out, 1, "failing job-start");
    assert!(stdout.contains("Backup job failed - command '"), "{stdout}");
    assert_eq!(g.phases(), ["job-init", "job-start", "job-abort"]);
    std::fs::remove_file(tmp.path().join("fail-job-start"))?;

    // An injected failure while frozen (a node in the way of the job's filter): the
    // transaction fails, the guest is thawed and keeps writing, no archive.
    {
        let qmp = vmdump_qmp::Client::connect(g.env.run.join("100/ctl.sock")).await?;
        qmp.blockdev_add(serde_json::json!({
            "driver": "null-co", "node-name": "vmdump-cbw-drive-virtio0", "size": 65536
        }))
        .await?;
    }
    let out = g.backup(&[])?;
    let stdout = expect_exit(&out, 1, "injected freeze failure");
    assert_lines(
        &stdout,
        &[
            "INFO: issuing guest-agent 'fs-freeze' command",
            "INFO: issuing guest-agent 'fs-thaw' command",
            "ERROR: Backup of VM 100 failed - qmp transaction (blockdev-backup)",
        ],
    );
    g.assert_writing("after the injected failure").await?;
    {
        let qmp = vmdump_qmp::Client::connect(g.env.run.join("100/ctl.sock")).await?;
        qmp.blockdev_del("vmdump-cbw-drive-virtio0").await?;
    }
    g.assert_clean("running").await?;

    // freeze-fs-on-backup=0: no freeze.
    let conf_path = g.env.root.join("qemu-server/100.conf");
    let conf = std::fs::read_to_string(&conf_path)?;
    std::fs::write(
        &conf_path,
        conf.replace("agent: 1", "agent: 1,freeze-fs-on-backup=0"),
    )?;
    let out = g.backup(&[])?;
    let stdout = expect_success(&out, "freeze-fs-on-backup=0");
    assert!(
        stdout.contains("INFO: skipping guest-agent 'fs-freeze' (freeze-fs-on-backup=0)")
            && !stdout.contains("issuing guest-agent 'fs-freeze'"),
        "{stdout}"
    );
    std::fs::write(&conf_path, conf)?;

    // A guest its user paused stays paused: backed up in that state, never resumed.
    expect_success(&g.vmdump(&["vm", "suspend", "100"]).output()?, "vm suspend");
    let out = g.backup(&["--mode", "suspend"])?;
    let stdout = expect_success(&out, "backup of a paused guest");
    assert_lines(
        &stdout,
        &["INFO: guest is paused, backing it up in that state"],
    );
    assert!(!stdout.contains("resuming VM again"), "{stdout}");
    g.assert_clean("paused").await?;
    expect_success(&g.vmdump(&["vm", "resume", "100"]).output()?, "vm resume");
    g.assert_writing("after resuming the paused guest").await?;

    // Stop: a clean shutdown, QEMU started again paused, the job started, `cont`. The archive
    // is the powered-off disk (clean, no journal replay), and the restarted guest's writer
    // continues right after the tick the archive holds: it booted from the same disk.
    g.reset_hooks();
    let out = g.backup(&["--mode", "stop", "--script", &script, "--stopwait", "2"])?;
    let stdout = expect_success(&out, "stop backup");
    assert_lines(
        &stdout,
        &[
            "INFO: backup mode: stop",
            "INFO: stopping virtual guest",
            "INFO: starting kvm to execute backup task",
            "INFO: resuming VM again after ",
            "INFO: guest is online again after ",
        ],
    );
    let stopped = downtime(&stdout, "shut down until running again");
    assert!(stopped > 0, "{stopped}");
    assert_eq!(
        g.phases(),
        [
            "job-init",
            "job-start",
            "backup-start stop 100",
            "pre-stop stop 100",
            "backup-end stop 100",
            "pre-restart stop 100",
            "post-restart stop 100",
            "log-end stop 100",
            "job-end",
        ]
    );
    let disk = g.extract_newest(tmp.path())?;
    let tick = check_disk(&disk, 1)?;
    let first_after = g.wait_ticks(1).await?;
    let first_after = g.ticks().into_iter().min().unwrap_or(first_after);
    assert_eq!(
        first_after,
        tick + 1,
        "the restarted guest did not continue from the archived state"
    );
    g.assert_clean("running").await?;
    g.assert_writing("after stop").await?;
    g.stop();
    Ok(())
}

/// Spawns `vmdump backup 100 <args>` stalling at `phase`, and waits until it is there.
fn spawn_stalled(g: &Guest, phase: &str, args: &[&str]) -> Result<Child> {
    let mut a = vec!["backup", "100"];
    a.extend_from_slice(args);
    let mut child = g
        .vmdump(&a)
        .env("VMDUMP_TEST_STALL", phase)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().expect("piped");
    let mut lines = BufReader::new(stderr).lines();
    let want = format!("vmdump: test stall at {phase}");
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains(&want) => break,
            Some(Ok(_)) => {}
            _ => bail!("vmdump ended before the {phase} stall: {:?}", child.wait()?),
        }
    }
    // Keep draining stderr so vmdump never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    Ok(child)
}

fn sigkill(mut child: Child) -> Result<()> {
    child.kill()?;
    child.wait()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_each_phase_is_undone_and_a_running_backup_locks_the_guest() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let g = Guest::boot(tmp.path()).await?;
    let final_archives = |g: &Guest| {
        g.env
            .dump_files()
            .into_iter()
            .filter(|f| f.ends_with(".vma"))
            .count()
    };

    // Killed while the filesystems are frozen: `vm status` thaws them.
    let child = spawn_stalled(&g, "frozen", &[])?;
    let frozen_at = g.last_tick();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        g.last_tick() <= frozen_at + 1,
        "the guest writes while frozen"
    );
    sigkill(child)?;
    let (_, stderr) = g.status()?;
    assert!(
        stderr.contains("thawed the guest filesystems an interrupted backup (pid"),
        "{stderr}"
    );
    g.assert_writing("after a kill while frozen").await?;
    assert_eq!(final_archives(&g), 0);

    // Killed in the fleecing setup's pause inside the freeze: `vm status` resumes the guest
    // first (its agent thaws only when it runs), then thaws it; the next backup removes the
    // fleecing image the dead run recorded.
    let child = spawn_stalled(&g, "fleece-paused", &["--fleecing", "1"])?;
    sigkill(child)?;
    let (_, stderr) = g.status()?;
    assert_lines(
        &stderr,
        &[
            "VM 100: resumed, an interrupted backup (pid",
            "VM 100: thawed the guest filesystems an interrupted backup (pid",
        ],
    );
    g.assert_writing("after a kill while frozen and paused")
        .await?;
    assert_eq!(final_archives(&g), 0);

    // Killed while paused (suspend mode): the next backup resumes the guest first, removes
    // the stale lock and the leftovers in QEMU, and succeeds.
    let child = spawn_stalled(&g, "paused", &["--mode", "suspend"])?;
    sigkill(child)?;
    let conf = std::fs::read_to_string(g.env.root.join("qemu-server/100.conf"))?;
    assert!(conf.contains("lock: backup"), "{conf}");
    // A user cannot start, stop or resume the guest under a backup's lock... but this one's
    // owner is dead: the lock is stale, so vm stop would not refuse. The guest is paused.
    let out = g.backup(&["--mode", "suspend"])?;
    let stdout = expect_success(&out, "backup after a kill while paused");
    assert_lines(
        &stdout,
        &[
            "WARN: VM 100: resumed, an interrupted backup (pid",
            "WARN: removing stale 'lock: backup' left by an interrupted backup",
        ],
    );
    g.assert_clean("running").await?;
    g.assert_writing("after a kill while paused").await?;
    assert_eq!(final_archives(&g), 1);

    // Killed after the shutdown in stop mode: `vm status` starts the guest again.
    let child = spawn_stalled(&g, "shutdown", &["--mode", "stop"])?;
    sigkill(child)?;
    let (stdout, stderr) = g.status()?;
    assert!(
        stderr.contains("VM 100: started again, an interrupted backup (pid"),
        "{stderr}"
    );
    assert!(stdout.contains("status: running"), "{stdout}");
    g.wait_ticks(1).await?;
    g.assert_writing("after a kill while shut down").await?;

    // While a backup runs (jobs copying, throttled), the guest is locked: vm stop, suspend
    // and a second start are refused. Then killed with the jobs running: the guest keeps
    // running, and the next backup cleans up.
    let mut child = g
        .vmdump(&["backup", "100", "--bwlimit", "4096", "--ionice", "8"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !g.env.dump_files().iter().any(|f| f.ends_with(".dat")) {
        assert!(Instant::now() < deadline, "the backup did not start");
        assert!(child.try_wait()?.is_none(), "the backup ended early");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // --ionice 8: vmdump's threads (the archive writer's among them) are in the idle class.
    let tasks = std::fs::read_dir(format!("/proc/{}/task", child.id()))?;
    let mut idle = 0;
    for t in tasks.flatten() {
        let tid = t.file_name().to_string_lossy().into_owned();
        let prio = run(Command::new("ionice").args(["-p", &tid]))?;
        assert_eq!(prio.trim(), "idle", "thread {tid}");
        idle += 1;
    }
    assert!(idle > 2, "{idle} threads");
    for (args, want) in [
        (&["vm", "stop", "100"][..], "VM 100 is locked (backup)"),
        (&["vm", "suspend", "100"][..], "VM 100 is locked (backup)"),
        (&["vm", "start", "100"][..], "VM 100 is locked (backup)"),
    ] {
        let out = g.vmdump(args).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(want),
            "{args:?}: {stderr}"
        );
    }
    // A second backup of the guest meanwhile fails clearly at once with `--lockwait 0`, and
    // a restore over it is refused even with --force.
    let out = g.backup(&["--lockwait", "0"])?;
    let stdout = expect_exit(&out, 1, "second backup");
    assert!(
        stdout.contains("ERROR: can't acquire lock '") && stdout.contains("(wait = 0)"),
        "{stdout}"
    );
    let newest = g
        .env
        .dump_files()
        .into_iter()
        .filter(|f| f.ends_with(".vma"))
        .max()
        .context("an archive")?;
    let newest = g.env.dump().join(newest);
    let out = g
        .vmdump(&["restore", newest.to_str().expect("utf-8"), "100", "--force"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && (stderr.contains("VM is locked (backup)")
                || stderr.contains("is locked by another vmdump operation")),
        "{stderr}"
    );
    sigkill(child)?;
    assert_eq!(g.status()?.0.lines().nth(1), Some("qmpstatus: running"));
    let out = g.backup(&[])?;
    let stdout = expect_success(&out, "backup after a kill with the jobs running");
    assert!(stdout.contains("WARN: removed stale "), "{stdout}");
    g.assert_clean("running").await?;
    assert_eq!(final_archives(&g), 2);
    assert!(!g.env.dump_files().iter().any(|f| f.ends_with(".dat")));
    g.stop();
    Ok(())
}

/// Backup fleecing in suspend and stop mode on the running, writing guest: the archive is the
/// disk at the mode's instant (crash-consistent after the pause, clean after the shutdown),
/// the guest runs and writes again afterwards, and no fleecing image, export or node stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleecing_in_suspend_and_stop_mode() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let g = Guest::boot(tmp.path()).await?;
    g.wait_ticks(3).await?;

    let at_start = g.last_tick();
    let out = g.backup(&["--mode", "suspend", "--fleecing", "1"])?;
    let stdout = expect_success(&out, "suspend backup with fleecing");
    assert_lines(
        &stdout,
        &[
            "INFO: suspending guest",
            "INFO: drive-virtio0: attaching fleecing image local:100/vm-100-fleece-0.qcow2 to QEMU",
            "INFO: resuming VM again after ",
        ],
    );
    g.assert_clean("running").await?;
    g.assert_writing("after the suspend backup with fleecing")
        .await?;
    let disk = g.extract_newest(tmp.path())?;
    check_disk_recover(&disk, at_start.saturating_sub(1))?;

    let out = g.backup(&["--mode", "stop", "--fleecing", "1", "--stopwait", "2"])?;
    let stdout = expect_success(&out, "stop backup with fleecing");
    assert_lines(
        &stdout,
        &[
            "INFO: stopping virtual guest",
            "INFO: drive-virtio0: attaching fleecing image local:100/vm-100-fleece-0.qcow2 to QEMU",
            "INFO: resuming VM again after ",
        ],
    );
    let disk = g.extract_newest(tmp.path())?;
    let tick = check_disk(&disk, at_start)?;
    let first_after = g.wait_ticks(1).await?;
    let first_after = g.ticks().into_iter().min().unwrap_or(first_after);
    assert_eq!(
        first_after,
        tick + 1,
        "the restarted guest did not continue from the archive"
    );
    g.assert_clean("running").await?;
    let images = file_names(&g.env.store.join("images/100"));
    assert!(!images.iter().any(|f| f.contains("fleece")), "{images:?}");
    g.stop();
    Ok(())
}

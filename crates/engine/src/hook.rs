//! vzdump's hook script (`--script`, `script:` in `vzdump.conf`): called as
//! `<script> <phase>` for the job phases and `<script> <phase> <mode> <vmid>` for the guest
//! phases, with `STOREID`, `DUMPDIR` and, per guest, `VMTYPE`, `HOSTNAME`, `TARGET` and
//! `LOGFILE` in its environment. Its output goes into the task log line by line; a non-zero
//! exit is an error (the caller decides whether it fails the guest, the job, or is only
//! logged). Shared by every guest type: the VM and container flows call the same phases.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use vmdump_task::Level;

use crate::error::{Error, Result};
use crate::log::TaskLog;

/// One hook phase (the first argument of the script).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Very early, before the storage is used.
    JobInit,
    /// After the global lock, before the first guest.
    JobStart,
    /// All guests processed.
    JobEnd,
    /// The job loop itself failed.
    JobAbort,
    /// Per guest, after its preparation.
    BackupStart,
    /// Before the guest is stopped or suspended (also in snapshot mode).
    PreStop,
    /// Before the guest is resumed or restarted (also in snapshot mode).
    PreRestart,
    /// After the resume or restart.
    PostRestart,
    /// The archive is written, notes/protection set, pruning done.
    BackupEnd,
    /// The guest's backup failed.
    BackupAbort,
    /// The guest's log is complete beside the archive.
    LogEnd,
}

impl Phase {
    /// The name passed to the script.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::JobInit => "job-init",
            Phase::JobStart => "job-start",
            Phase::JobEnd => "job-end",
            Phase::JobAbort => "job-abort",
            Phase::BackupStart => "backup-start",
            Phase::PreStop => "pre-stop",
            Phase::PreRestart => "pre-restart",
            Phase::PostRestart => "post-restart",
            Phase::BackupEnd => "backup-end",
            Phase::BackupAbort => "backup-abort",
            Phase::LogEnd => "log-end",
        }
    }
}

/// What a guest phase passes besides the job's variables.
#[derive(Debug, Clone)]
pub struct GuestCall<'a> {
    /// `snapshot`, `suspend` or `stop`.
    pub mode: &'a str,
    /// The guest id.
    pub vmid: u32,
    /// `qemu` or `lxc`.
    pub vmtype: &'a str,
    /// The guest's name (`VM <vmid>` without one).
    pub hostname: &'a str,
    /// The archive (its final name).
    pub target: Option<&'a Path>,
    /// The guest's log beside the archive.
    pub logfile: Option<&'a Path>,
}

/// The configured hook script and the job's variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    script: PathBuf,
    storeid: Option<String>,
    dumpdir: Option<PathBuf>,
}

impl Hook {
    /// A hook `script` (must exist and be executable, as vzdump requires).
    pub fn new(script: &Path) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(script).map_err(|e| Error::file("hook script", script, e))?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            return Err(Error::option(
                "script",
                format!(
                    "the hook script '{}' does not exist or is not executable",
                    script.display()
                ),
            ));
        }
        Ok(Self {
            script: script.to_path_buf(),
            storeid: None,
            dumpdir: None,
        })
    }

    /// The job's target: `STOREID` (none for a plain dump directory) and `DUMPDIR` (once
    /// known).
    pub fn with_target(mut self, storeid: Option<String>, dumpdir: Option<PathBuf>) -> Self {
        self.storeid = storeid;
        self.dumpdir = dumpdir;
        self
    }

    /// The script.
    pub fn script(&self) -> &Path {
        &self.script
    }

    /// Runs a job phase (`<script> <phase>`).
    pub async fn job(&self, phase: Phase, log: &(dyn Fn(Level, &str) + Sync)) -> Result<()> {
        self.run(phase, None, log).await
    }

    /// Runs a guest phase (`<script> <phase> <mode> <vmid>`).
    pub async fn guest(
        &self,
        phase: Phase,
        call: &GuestCall<'_>,
        log: &(dyn Fn(Level, &str) + Sync),
    ) -> Result<()> {
        self.run(phase, Some(call), log).await
    }

    /// Runs a guest phase from blocking code (a container backup's steps).
    pub fn guest_blocking(
        &self,
        phase: Phase,
        call: &GuestCall<'_>,
        log: &(dyn Fn(Level, &str) + Sync),
    ) -> Result<()> {
        let (cmd, command) = self.command(phase, Some(call));
        let child = spawn(cmd, &command)?;
        let out = child.wait_with_output().map_err(|e| Error::Hook {
            command: command.clone(),
            detail: e.to_string(),
        })?;
        report(out, command, log)
    }

    async fn run(
        &self,
        phase: Phase,
        call: Option<&GuestCall<'_>>,
        log: &(dyn Fn(Level, &str) + Sync),
    ) -> Result<()> {
        let (cmd, command) = self.command(phase, call);
        let child = spawn(cmd, &command)?;
        let shown = command.clone();
        let out = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .map_err(|e| Error::Hook {
                command: shown.clone(),
                detail: e.to_string(),
            })?
            .map_err(|e| Error::Hook {
                command: shown,
                detail: e.to_string(),
            })?;
        report(out, command, log)
    }

    /// The script's command for `phase` and how it is shown in messages.
    fn command(&self, phase: Phase, call: Option<&GuestCall<'_>>) -> (Command, String) {
        let mut cmd = Command::new(&self.script);
        cmd.arg(phase.as_str())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut shown = vec![self.script.display().to_string(), phase.as_str().into()];
        for var in [
            "STOREID", "DUMPDIR", "VMTYPE", "HOSTNAME", "TARGET", "LOGFILE",
        ] {
            cmd.env_remove(var);
        }
        if let Some(s) = &self.storeid {
            cmd.env("STOREID", s);
        }
        if let Some(d) = &self.dumpdir {
            cmd.env("DUMPDIR", d);
        }
        if let Some(c) = call {
            cmd.arg(c.mode).arg(c.vmid.to_string());
            shown.push(c.mode.into());
            shown.push(c.vmid.to_string());
            cmd.env("VMTYPE", c.vmtype).env("HOSTNAME", c.hostname);
            if let Some(t) = c.target {
                cmd.env("TARGET", t);
            }
            if let Some(l) = c.logfile {
                cmd.env("LOGFILE", l);
            }
        }
        (cmd, shown.join(" "))
    }
}

fn spawn(cmd: Command, command: &str) -> Result<std::process::Child> {
    vmdump_launch::spawn::spawn_bound(cmd).map_err(|source| Error::Hook {
        command: command.to_string(),
        detail: format!("cannot run it: {source}"),
    })
}

/// The script's output into the log line by line; a non-zero exit is an error.
fn report(
    out: std::process::Output,
    command: String,
    log: &(dyn Fn(Level, &str) + Sync),
) -> Result<()> {
    for stream in [&out.stdout, &out.stderr] {
        for line in String::from_utf8_lossy(stream).lines() {
            log(Level::Info, line);
        }
    }
    if !out.status.success() {
        return Err(Error::Hook {
            command,
            detail: match out.status.code() {
                Some(c) => format!("exit code {c}"),
                None => format!("{}", out.status),
            },
        });
    }
    Ok(())
}

/// The end of a guest's backup, for every guest type: vzdump's closing lines, on failure the
/// `backup-abort` hook (its output in the guest's log), the log closed, then `log-end`
/// (its output in the task log only). A hook failing here is only a warning.
pub(crate) async fn guest_end(
    hook: Option<&Hook>,
    call: &GuestCall<'_>,
    log: &TaskLog<'_>,
    outcome: std::result::Result<std::time::Duration, &Error>,
) {
    let progress = log.progress();
    let to_task = |level: Level, line: &str| progress.log(level, line, false);
    match outcome {
        Ok(duration) => log.finished(call.vmid, duration),
        Err(e) => {
            log.failed(call.vmid, e);
            if let Some(h) = hook {
                let to_log = |level: Level, line: &str| log.line(level, line, false);
                if let Err(e) = h.guest(Phase::BackupAbort, call, &to_log).await {
                    log.warn(&vmdump_task::one_line(&e));
                }
            }
        }
    }
    log.close();
    if let Some(h) = hook {
        if let Err(e) = h.guest(Phase::LogEnd, call, &to_task).await {
            to_task(Level::Warn, &vmdump_task::one_line(&e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn script(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("hook.sh");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        p
    }

    #[tokio::test]
    async fn arguments_environment_output_and_exit_status() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = script(
            dir.path(),
            "echo \"$* STOREID=${STOREID-unset} DUMPDIR=${DUMPDIR-unset} VMTYPE=${VMTYPE-unset} HOSTNAME=${HOSTNAME-unset} TARGET=${TARGET-unset}\"\n[ \"$1\" != backup-end ]",
        );
        let hook = Hook::new(&p)
            .expect("hook")
            .with_target(Some("local".into()), Some("/d".into()));
        let lines = Mutex::new(Vec::new());
        let log = |_: Level, l: &str| lines.lock().expect("lock").push(l.to_string());
        hook.job(Phase::JobStart, &log).await.expect("job-start");
        let call = GuestCall {
            mode: "stop",
            vmid: 100,
            vmtype: "qemu",
            hostname: "web1",
            target: Some(Path::new("/d/a.vma")),
            logfile: None,
        };
        hook.guest(Phase::PreStop, &call, &log)
            .await
            .expect("pre-stop");
        let e = hook
            .guest(Phase::BackupEnd, &call, &log)
            .await
            .expect_err("fails");
        // The blocking entry (container backups) runs the same command.
        let blocking = hook
            .guest_blocking(Phase::BackupEnd, &call, &log)
            .expect_err("fails");
        assert_eq!(blocking.to_string(), e.to_string());
        assert_eq!(
            e.to_string(),
            format!(
                "command '{} backup-end stop 100' failed: exit code 1",
                p.display()
            )
        );
        let lines = lines.into_inner().expect("lock");
        assert_eq!(
            lines[0],
            "job-start STOREID=local DUMPDIR=/d VMTYPE=unset HOSTNAME=unset TARGET=unset"
        );
        assert_eq!(
            lines[1],
            "pre-stop stop 100 STOREID=local DUMPDIR=/d VMTYPE=qemu HOSTNAME=web1 TARGET=/d/a.vma"
        );
    }

    #[test]
    fn a_missing_or_non_executable_script_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(Hook::new(&dir.path().join("nope")).is_err());
        let p = dir.path().join("plain");
        std::fs::write(&p, "#!/bin/sh\n").expect("write");
        let e = Hook::new(&p).expect_err("not executable");
        assert!(e.to_string().contains("not executable"), "{e}");
    }
}

//! Running external tools.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

/// Status, stdout and stderr of a finished process, for assertion messages.
pub fn output_text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `cmd` to completion and returns its stdout; an error (naming the command, its status
/// and both streams) when it cannot start or exits unsuccessfully.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = run_output(cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// [`run`], returning the whole [`Output`] (stderr included) of the successful process.
pub fn run_output(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", output_text(&out));
    }
    Ok(out)
}

/// True while process `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
    })
}

/// Asserts that a finished process succeeded and returns its stdout.
///
/// # Panics
/// As [`expect_exit`] with code 0.
pub fn expect_success(o: &Output, what: &str) -> String {
    expect_exit(o, 0, what)
}

/// Asserts that a finished process exited with `code` and returns its stdout.
///
/// # Panics
/// On another exit (or a signal), with `what` (the command as the test names it) and
/// [`output_text`], or when its stdout is not UTF-8.
pub fn expect_exit(o: &Output, code: i32, what: &str) -> String {
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}: unexpected exit: {}",
        output_text(o)
    );
    String::from_utf8(o.stdout.clone())
        .unwrap_or_else(|e| panic!("{what}: stdout is not UTF-8: {e}"))
}

/// Kills (SIGKILL) the process whose pid a pid file holds, if the file exists; for `Drop` of
/// test environments, so no QEMU outlives a failed test.
pub fn kill_pidfile(pidfile: &Path) {
    if let Ok(pid) = std::fs::read_to_string(pidfile) {
        let _ = Command::new("kill").args(["-9", pid.trim()]).status();
    }
}

//! Running the host tools a container needs (`lxc-*`, `mount`, `btrfs`, `mkfs.ext4`): each runs
//! to completion inside the call, like `qemu-img` in `vmdump-blockdev`; long-running helpers
//! (rsync) go through a `vmdump_launch::Session` instead.

use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// The command line of `cmd`, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd`, returns its standard output; a non-zero exit is an [`Error::Tool`] with the
/// tail of its error output.
pub fn run(cmd: &mut Command) -> Result<String> {
    cmd.stdin(Stdio::null());
    let out = cmd.output().map_err(|source| Error::Spawn {
        program: cmd.get_program().to_string_lossy().into_owned(),
        source,
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = tail[tail.len().saturating_sub(4)..].join("; ");
        return Err(Error::Tool {
            command: describe(cmd),
            status: out.status.to_string(),
            stderr: tail,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `run` of a program and arguments.
pub fn run_args<I, S>(program: &str, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    run(Command::new(program).args(args))
}

//! Liveness checks, identities and signals of processes that may not be our children.

use std::path::Path;
use std::time::Duration;

/// A process identity that survives pid reuse: the pid and its start time (clock ticks after
/// boot, `/proc/<pid>/stat` field 22).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcId {
    /// The pid.
    pub pid: u32,
    /// Its start time.
    pub start: u64,
}

impl ProcId {
    /// The identity of the live (not zombie) process `pid`.
    pub fn of(pid: u32) -> Option<Self> {
        let (state, start) = stat(pid)?;
        (state != "Z" && state != "X").then_some(ProcId { pid, start })
    }

    /// This process.
    pub fn current() -> Self {
        Self::of(std::process::id()).expect("this process is alive")
    }

    /// Whether this very process still runs (same pid, same start time, not a zombie).
    pub fn is_alive(&self) -> bool {
        Self::of(self.pid).is_some_and(|now| now.start == self.start)
    }
}

/// State and start time from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields follow the parenthesized command name, which may contain spaces.
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); the start time is field 22.
    let state = fields.first()?.to_string();
    let start = fields.get(22 - 3)?.parse().ok()?;
    Some((state, start))
}

/// Whether `pid` runs (not a zombie).
pub fn is_alive(pid: u32) -> bool {
    ProcId::of(pid).is_some()
}

/// Whether `pid` is alive and was started with `arg` on its command line (how the VM runtime
/// recognizes its daemonized QEMU by its pid file).
pub fn has_arg(pid: u32, arg: &Path) -> bool {
    if !is_alive(pid) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let want = arg.as_os_str().as_encoded_bytes();
    cmdline.split(|b| *b == 0).any(|a| a == want)
}

/// Send a signal; a vanished process is not an error.
pub fn signal(pid: u32, sig: rustix::process::Signal) {
    let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    if let Err(e) = rustix::process::kill_process(p, sig) {
        tracing::debug!(pid, "kill: {e}");
    }
}

/// Poll until `pid` is gone; true if it exited within `timeout`.
pub async fn wait_exit(pid: u32, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if !is_alive(pid) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`wait_exit`] for synchronous callers (never call it from async code).
pub fn wait_exit_blocking(id: ProcId, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if !id.is_alive() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_of_self_and_of_a_dead_child() {
        let me = ProcId::current();
        assert!(me.is_alive());
        assert!(!ProcId {
            start: me.start + 1,
            ..me
        }
        .is_alive());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!is_alive(pid));
    }
}

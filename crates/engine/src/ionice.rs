//! vzdump's `ionice`: the I/O priority of vmdump's own I/O (the archive writer, the
//! compressor threads). 8 is the idle class (`-c3`); 0..=7 the best-effort level (`-c2 -nN`).
//! It only has an effect with the BFQ/CFQ schedulers. QEMU's reads are QEMU's own.
//!
//! The priority is per thread: it is set on every thread of this process (util-linux
//! `ionice -p <tids>`, started through `vmdump-launch`), and threads started afterwards (the
//! writer thread and its compressor workers) inherit it.

use std::process::{Command, Stdio};

/// The `ionice` class and level arguments for a vzdump `ionice` value.
fn args(level: u8) -> Vec<String> {
    if level >= 8 {
        vec!["-c".into(), "3".into()]
    } else {
        vec!["-c".into(), "2".into(), "-n".into(), level.to_string()]
    }
}

/// Sets the I/O priority of every thread of this process; an error is returned as text for
/// a warning (a backup does not fail over its priority).
pub(crate) fn apply(level: u8) -> Result<(), String> {
    // Starting ionice may start a thread (the process spawner's, on first use): a second
    // round covers what the first one created.
    let mut done = std::collections::BTreeSet::new();
    for _ in 0..3 {
        let tids: Vec<String> = std::fs::read_dir("/proc/self/task")
            .map_err(|e| format!("cannot list this process's threads: {e}"))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|t| !done.contains(t))
            .collect();
        if tids.is_empty() {
            break;
        }
        set(level, &tids)?;
        done.extend(tids);
    }
    Ok(())
}

fn set(level: u8, tids: &[String]) -> Result<(), String> {
    let mut cmd = Command::new("ionice");
    cmd.args(args(level))
        .arg("-p")
        .args(tids)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child =
        vmdump_launch::spawn::spawn_bound(cmd).map_err(|e| format!("cannot run ionice: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("ionice: {e}"))?;
    // A thread that ended meanwhile makes ionice complain; the others are set.
    if !out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("No such process") {
        return Err(format!(
            "ionice failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vzdump_values_map_to_classes() {
        assert_eq!(args(7), ["-c", "2", "-n", "7"]);
        assert_eq!(args(0), ["-c", "2", "-n", "0"]);
        assert_eq!(args(8), ["-c", "3"]);
    }
}

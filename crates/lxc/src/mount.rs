//! A volume's files as a host directory: a directory volume as it is, an image through a loop
//! mount that is undone on drop. Mount points live in the container's run directory as
//! `mnt-<pid>-<start>-<n>` (never inside a run's session directory, which the reaper deletes
//! recursively), so the next run finds and removes what a killed run left ([`reap_stale`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use vmdump_launch::ProcId;

use crate::error::{Error, Result};
use crate::tool;
use crate::volume::Layout;

/// A directory with a volume's files; an image is mounted until drop.
#[derive(Debug)]
pub struct Access {
    dir: PathBuf,
    mounted: bool,
}

impl Access {
    /// Makes the files of the volume at `path` with `layout` reachable: directories as they
    /// are; images loop-mounted (read-only with `readonly`, without journal replay) under
    /// `base`.
    pub fn open(path: &Path, layout: Layout, base: &Path, readonly: bool) -> Result<Self> {
        if !layout.is_image() {
            return Ok(Access {
                dir: path.to_path_buf(),
                mounted: false,
            });
        }
        // A container that just stopped may still be tearing down its mount of the image:
        // mount it only once the kernel has let go of it (never twice at the same time).
        wait_detached(path)?;
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let me = ProcId::current();
        let dir = base.join(format!(
            "mnt-{}-{}-{}",
            me.pid,
            me.start,
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create mount point", &dir, e))?;
        let opts = if readonly { "loop,ro,noload" } else { "loop" };
        if let Err(e) = tool::run_args(
            "mount",
            [
                "-o".as_ref(),
                opts.as_ref(),
                path.as_os_str(),
                dir.as_os_str(),
            ],
        ) {
            let _ = std::fs::remove_dir(&dir);
            return Err(e);
        }
        Ok(Access { dir, mounted: true })
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Access {
    fn drop(&mut self) {
        if self.mounted {
            unmount(&self.dir);
        }
    }
}

/// How long an image may stay attached to a loop device before a read-only open gives up.
const DETACH_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// The loop device `image` is attached to, if any (`/sys/block/loop*/loop/backing_file`).
fn attached_loop(image: &Path) -> Option<String> {
    let want = std::fs::canonicalize(image).ok()?;
    std::fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("loop"))
        .find(|e| {
            std::fs::read_to_string(e.path().join("loop/backing_file"))
                .is_ok_and(|b| Path::new(b.trim_end_matches('\n')) == want)
        })
        .map(|e| format!("/dev/{}", e.file_name().to_string_lossy()))
}

/// Waits until `image` is attached to no loop device.
fn wait_detached(image: &Path) -> Result<()> {
    let deadline = std::time::Instant::now() + DETACH_WAIT;
    loop {
        let Some(dev) = attached_loop(image) else {
            return Ok(());
        };
        if std::time::Instant::now() >= deadline {
            return Err(Error::InUse {
                path: image.to_path_buf(),
                by: dev,
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn unmount(dir: &Path) {
    // `-d` frees the loop device; lazy as a fallback so a busy mount cannot stay behind.
    if tool::run_args("umount", ["-d".as_ref(), dir.as_os_str()]).is_err() {
        if let Err(e) = tool::run_args("umount", ["-l".as_ref(), "-d".as_ref(), dir.as_os_str()]) {
            tracing::warn!("cannot unmount {}: {e}", dir.display());
            return;
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Whether `dir` is a mount point (listed in `/proc/self/mountinfo`).
fn is_mounted(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = dir.display().to_string();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| m.replace("\\040", " ") == want)
}

/// Unmounts and removes the `mnt-*` mount points under `base` whose owner process is gone;
/// returns a message for each.
pub fn reap_stale(base: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(base) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("mnt-") else {
            continue;
        };
        let mut f = rest.split('-');
        let (Some(pid), Some(start)) = (
            f.next().and_then(|s| s.parse().ok()),
            f.next().and_then(|s| s.parse().ok()),
        ) else {
            continue;
        };
        if (ProcId { pid, start }).is_alive() {
            continue;
        }
        let dir = e.path();
        if is_mounted(&dir) {
            unmount(&dir);
            out.push(format!(
                "removed temporary mount {} left by an interrupted vmdump run (pid {pid})",
                dir.display()
            ));
        } else {
            let _ = std::fs::remove_dir(&dir);
        }
    }
    out
}

//! vzdump's task temporary directory, one per guest backup: `<tmpdir>/vzdumptmp<pid>_<vmid>`
//! with `--tmpdir` (or `tmpdir:` in `vzdump.conf`), else `<dumpdir>/<base>.tmp`. A VM backup
//! assembles the configs that go into the archive there (`qemu-server.conf`, and
//! `qemu-server.fw` when the guest has a firewall config); a container backup in suspend
//! mode copies the container into it. Created empty (whatever an earlier run left under the
//! same name is removed first) and removed again on every way out.

use std::path::{Path, PathBuf};

use crate::backup::BackupJob;
use crate::error::{Error, Result};
use crate::name::ArchiveName;

/// The task's temporary directory; removed on drop.
#[derive(Debug)]
pub(crate) struct TaskDir(PathBuf);

impl TaskDir {
    /// Creates the temporary directory of `vmid`'s backup named `names`.
    pub(crate) fn create(job: &BackupJob, names: &ArchiveName, vmid: u32) -> Result<Self> {
        let path = match &job.settings.tmpdir {
            Some(d) => d.join(format!("vzdumptmp{}_{vmid}", std::process::id())),
            None => names.dir().join(format!("{}.tmp", names.base())),
        };
        match std::fs::remove_dir_all(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::file("remove old temporary directory", &path, e))
            }
            _ => {}
        }
        std::fs::create_dir(&path)
            .map_err(|e| Error::file("create temporary directory", &path, e))?;
        Ok(TaskDir(path))
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// vzdump's `assemble` for a VM: `qemu-server.conf` (the backup copy of the config) and,
    /// if `<root>/firewall/<vmid>.fw` exists, `qemu-server.fw` written here; returns the
    /// archive's config blobs, read back from these files.
    pub(crate) fn assemble_vm(
        &self,
        job: &BackupJob,
        vmid: u32,
        config: &str,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let conf = self.0.join("qemu-server.conf");
        std::fs::write(&conf, config).map_err(|e| Error::file("write", &conf, e))?;
        let mut names = vec!["qemu-server.conf"];
        let fw = job.root.dir().join("firewall").join(format!("{vmid}.fw"));
        match std::fs::read(&fw) {
            Ok(text) => {
                let dst = self.0.join("qemu-server.fw");
                std::fs::write(&dst, text).map_err(|e| Error::file("write", &dst, e))?;
                names.push("qemu-server.fw");
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::file("read firewall config", &fw, e)),
        }
        names
            .into_iter()
            .map(|n| {
                let p = self.0.join(n);
                std::fs::read(&p)
                    .map(|data| (n.to_string(), data))
                    .map_err(|e| Error::file("read", &p, e))
            })
            .collect()
    }
}

/// Removes the task directories an earlier, killed backup of `vmid` left (a suspend-mode
/// copy can be a whole container): `<dump_dir>/<base>.tmp` whose `.log` is not locked by a
/// backup running now, and `<tmpdir>/vzdumptmp<pid>_<vmid>` whose process is gone. Call only
/// while holding the job lock. Returns the removed paths.
pub(crate) fn remove_stale(dump_dir: &Path, tmpdir: Option<&Path>, vmid: u32) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let entries = |dir: &Path| {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
            .collect::<Vec<_>>()
    };
    for (name, path) in entries(dump_dir) {
        if !ArchiveName::is_task_dir_of(&name, vmid) {
            continue;
        }
        let log = dump_dir.join(format!("{}.log", name.trim_end_matches(".tmp")));
        // An error (e.g. a read-only directory) counts as in use: never remove what may be
        // live.
        let live = log.exists() && !matches!(vmdump_guest::try_lock_file(&log), Ok(Some(_)));
        if !live && std::fs::remove_dir_all(&path).is_ok() {
            removed.push(path);
        }
    }
    let suffix = format!("_{vmid}");
    for (name, path) in tmpdir.map(entries).unwrap_or_default() {
        let Some(pid) = name
            .strip_prefix("vzdumptmp")
            .and_then(|r| r.strip_suffix(suffix.as_str()))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() && std::fs::remove_dir_all(&path).is_ok() {
            removed.push(path);
        }
    }
    removed.sort();
    removed
}

impl Drop for TaskDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove {}: {e}", self.0.display());
            }
        }
    }
}

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

impl Drop for TaskDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove {}: {e}", self.0.display());
            }
        }
    }
}

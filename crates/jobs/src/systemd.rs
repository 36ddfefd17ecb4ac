//! systemd units for users who prefer timers to `vmdump scheduler`: per job a oneshot
//! service running `vmdump jobs run <id>` and a timer with the job's schedule
//! (`OnCalendar=`, `Persistent=` from `repeat-missed`), plus a service for the long-running
//! scheduler. Use one or the other, not both. Disabled jobs get no units.

use std::path::Path;

use vmdump_config::{BackupJobConfig, ConfigRoot};

use crate::error::Result;
use crate::scheduler::event_of;

/// One unit file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// File name (`vmdump-job-<id>.timer`).
    pub file_name: String,
    /// Contents.
    pub text: String,
}

/// The service for `vmdump scheduler`.
pub fn scheduler_unit(root: &ConfigRoot, exe: &Path) -> Unit {
    let root_dir = absolute(root.dir());
    Unit {
        file_name: "vmdump-scheduler.service".into(),
        text: format!(
            "[Unit]\nDescription=vmdump backup job scheduler\nAfter=network-online.target\n\n\
             [Service]\nEnvironment=VMDUMP_ROOT={}\nExecStart={} scheduler\nRestart=on-failure\n\n\
             [Install]\nWantedBy=multi-user.target\n",
            root_dir.display(),
            absolute(exe).display()
        ),
    }
}

/// Units run from `/`: relative paths would not resolve.
fn absolute(p: &Path) -> std::path::PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The service and timer of each enabled job.
pub fn job_units(root: &ConfigRoot, exe: &Path, jobs: &[BackupJobConfig]) -> Result<Vec<Unit>> {
    let mut out = Vec::new();
    let (root_dir, exe) = (absolute(root.dir()), absolute(exe));
    for job in jobs.iter().filter(|j| j.enabled) {
        let event = event_of(job)?;
        let service = format!("vmdump-job-{}.service", job.id);
        out.push(Unit {
            file_name: service.clone(),
            text: format!(
                "[Unit]\nDescription=vmdump backup job {id}\nAfter=network-online.target\n\n\
                 [Service]\nType=oneshot\nEnvironment=VMDUMP_ROOT={root}\n\
                 ExecStart={exe} jobs run {id}\n",
                id = job.id,
                root = root_dir.display(),
                exe = exe.display()
            ),
        });
        out.push(Unit {
            file_name: format!("vmdump-job-{}.timer", job.id),
            text: format!(
                "[Unit]\nDescription=Schedule of vmdump backup job {id} ({schedule})\n\n\
                 [Timer]\nOnCalendar={cal}\nPersistent={persistent}\nUnit={service}\n\n\
                 [Install]\nWantedBy=timers.target\n",
                id = job.id,
                schedule = job.schedule,
                cal = event.to_systemd(),
                persistent = job.repeat_missed,
            ),
        });
    }
    Ok(out)
}

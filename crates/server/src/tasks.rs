//! Tasks the server starts: each runs on its own thread (backups with their own async
//! runtime, as the scheduler runs a job), logs into a [`vmdump_task::TaskFile`] of the
//! registry, and can be cancelled through its token while it runs.

use std::path::PathBuf;
use std::sync::Arc;

use vmdump_config::{BackupJobConfig, KeepOptions, VmId};
use vmdump_store::{Filter, GuestType, Storage};
use vmdump_task::{Cancel, Level, Progress, TaskFile};

use crate::api::ApiError;
use crate::App;

/// Starts `work` as a task (`kind`, `id`, `user`); returns its UPID.
fn spawn<F>(app: &Arc<App>, kind: &str, id: &str, user: &str, work: F) -> Result<String, ApiError>
where
    F: FnOnce(&TaskFile, Cancel) -> Result<(), String> + Send + 'static,
{
    let task = app
        .settings
        .tasks
        .start(kind, id, user)
        .map_err(|e| ApiError::from_error(&e))?;
    let upid = task.upid().to_string();
    let cancel = Cancel::new();
    if let Ok(mut running) = app.running.lock() {
        running.insert(upid.clone(), cancel.clone());
    }
    let (app2, upid2) = (Arc::clone(app), upid.clone());
    std::thread::Builder::new()
        .name(format!("task-{kind}"))
        .spawn(move || {
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&task, cancel)))
                    .unwrap_or_else(|_| Err("the task panicked".into()));
            if let Err(msg) = &result {
                tracing::warn!(task = %upid2, error = %msg, "task failed");
            }
            task.finish(result);
            if let Ok(mut running) = app2.running.lock() {
                running.remove(&upid2);
            }
        })
        .map_err(|e| ApiError::from_error(&e))?;
    Ok(upid)
}

/// Cancels a task of this server; false if it is not one of ours (or already ended).
pub fn cancel(app: &App, upid: &str) -> bool {
    app.running
        .lock()
        .ok()
        .and_then(|r| r.get(upid).cloned())
        .map(|c| c.cancel())
        .is_some()
}

/// A backup run (a job, or an unsaved one for "back up now") as task `vzdump`.
pub fn backup(
    app: &Arc<App>,
    id: &str,
    user: &str,
    job: BackupJobConfig,
    command: String,
) -> Result<String, ApiError> {
    let root = app.settings.root.clone();
    let run_dir = app.settings.run_dir.clone();
    spawn(app, "vzdump", id, user, move |task, cancel| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the async runtime: {e}"))?;
        let how = vmdump_jobs::run::RunContext {
            command,
            cancel: Some(cancel),
        };
        let summary = rt.block_on(vmdump_jobs::run::run_job_with(
            &root, &run_dir, &job, task, &how,
        ));
        if summary.ok() {
            Ok(())
        } else {
            Err(summary.job_error.unwrap_or_else(|| "job errors".into()))
        }
    })
}

/// What to restore, and how.
#[derive(Debug)]
pub struct RestoreSpec {
    /// The archive file.
    pub archive: PathBuf,
    /// VM or container archive.
    pub kind: GuestType,
    /// Target VMID.
    pub vmid: VmId,
    /// Target storage for every volume.
    pub storage: Option<String>,
    /// Overwrite an existing guest.
    pub force: bool,
    /// New MAC addresses (and smbios uuid).
    pub unique: bool,
    /// Containers: start afterwards.
    pub start: bool,
    /// Containers: as (un)privileged.
    pub unprivileged: Option<bool>,
    /// Read limit, KiB/s.
    pub bwlimit: Option<u64>,
}

/// A restore as task `qmrestore` (VMs) or `vzrestore` (containers).
pub fn restore(app: &Arc<App>, user: &str, spec: RestoreSpec) -> Result<String, ApiError> {
    let root = app.settings.root.clone();
    let run_dir = app.settings.run_dir.clone();
    let kind = match spec.kind {
        GuestType::Lxc => "vzrestore",
        _ => "qmrestore",
    };
    let id = spec.vmid.to_string();
    spawn(app, kind, &id, user, move |task, cancel| {
        let file = std::fs::File::open(&spec.archive)
            .map_err(|e| format!("cannot open {}: {e}", spec.archive.display()))?;
        let name = spec.archive.display().to_string();
        if spec.kind == GuestType::Lxc {
            task.log(
                Level::Info,
                &format!("restore container archive: {name}"),
                false,
            );
            let mut o = vmdump_restore::CtOptions::new(root, spec.vmid);
            o.run_dir = run_dir;
            o.storage = spec.storage;
            o.force = spec.force;
            o.unique = spec.unique;
            o.start = spec.start;
            o.unprivileged = spec.unprivileged;
            o.cancel = cancel;
            let s = vmdump_restore::restore_ct(Box::new(file), &o, task)
                .map_err(|e| vmdump_task::one_line(&e))?;
            task.log(
                Level::Info,
                &format!(
                    "restored CT {} ({} volume(s)), config {}",
                    spec.vmid,
                    s.volumes.len(),
                    s.config_path.display()
                ),
                false,
            );
        } else {
            task.log(Level::Info, &format!("restore vma archive: {name}"), false);
            let mut o = vmdump_restore::Options::new(root, spec.vmid);
            o.run_dir = run_dir;
            o.storage = spec.storage;
            o.force = spec.force;
            o.unique = spec.unique;
            o.bwlimit = spec.bwlimit;
            o.cancel = cancel;
            let s = vmdump_restore::restore(Box::new(file), &o, task)
                .map_err(|e| vmdump_task::one_line(&e))?;
            task.log(
                Level::Info,
                &format!(
                    "restored VM {} ({} disk(s)), config {}",
                    spec.vmid,
                    s.disks.len(),
                    s.config_path.display()
                ),
                false,
            );
        }
        Ok(())
    })
}

/// A prune of a storage as task `prune`: planned again when it runs, then applied.
pub fn prune(
    app: &Arc<App>,
    user: &str,
    storage: Storage,
    keep: KeepOptions,
    filter: Filter,
) -> Result<String, ApiError> {
    let id = storage.id().to_string();
    spawn(app, "prune", &id, user, move |task, _cancel| {
        let backups = storage
            .list(&filter)
            .map_err(|e| vmdump_task::one_line(&e))?;
        let plan = vmdump_store::prune::plan(&backups, &keep);
        vmdump_jobs::run::apply_prune(&storage, &plan, task)
            .map(|_| ())
            .map_err(|e| vmdump_task::one_line(&e))
    })
}

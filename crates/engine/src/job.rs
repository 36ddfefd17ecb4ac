//! The QMP side of a push backup: NBD target nodes, one grouped transaction of
//! `blockdev-backup` jobs, finalize/dismiss, cancel, and cleaning up what a killed earlier run
//! left behind.
//!
//! Names (stable, so a later run can find and clean them): job `vmdump-<drive>`, filter
//! `vmdump-cbw-<drive>`, target node `vmdump-tgt-<drive>`, where `<drive>` is the QEMU drive id
//! (`drive-scsi0`).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use vmdump_qmp::{Action, BackupPerf, BlockdevBackup, Client, CompletionMode, SyncMode};

use crate::error::{Error, Result};

/// Prefix of everything this engine creates in QEMU.
pub const PREFIX: &str = "vmdump-";

/// How long cancelled jobs may take to conclude.
const CANCEL_WAIT: Duration = Duration::from_secs(30);

/// One disk as QEMU sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceDisk {
    /// Config key (`scsi0`).
    pub key: String,
    /// QEMU drive id and NBD export name (`drive-scsi0`).
    pub drive: String,
    /// The block node the guest device uses (the backup source).
    pub node: String,
    /// Size QEMU reports, in bytes.
    pub size: u64,
    /// The node has nothing below it that provides data (no backing file, no filter), so a
    /// cluster it has not allocated reads as zeros: the job copies only allocated clusters
    /// (`sync=top`) and the archive records the rest as zero (see [`crate::target`]).
    pub top_only: bool,
}

impl SourceDisk {
    /// The job id.
    pub fn job(&self) -> String {
        format!("{PREFIX}{}", self.drive)
    }

    /// The NBD client node.
    pub fn target_node(&self) -> String {
        format!("{PREFIX}tgt-{}", self.drive)
    }

    /// The copy-before-write filter node.
    pub fn filter_node(&self) -> String {
        format!("{PREFIX}cbw-{}", self.drive)
    }
}

/// Finds the block node and size of each disk key. A device's root node is found through
/// `query-block` (matching the node name `drive-<key>`, the legacy drive id, or the qdev id
/// `<key>`); nodes without a device (a VM started only for the backup) through
/// `query-named-block-nodes`.
pub async fn resolve_disks(qmp: &Client, keys: &[String]) -> Result<Vec<SourceDisk>> {
    let blocks = qmp
        .query_block()
        .await
        .map_err(|e| Error::qmp("query-block", e))?;
    let mut nodes = None;
    let mut out = Vec::new();
    for key in keys {
        let drive = format!("drive-{key}");
        let qdev_a = format!("/machine/peripheral/{key}");
        let qdev_b = format!("/machine/peripheral/{key}/virtio-backend");
        let found = blocks.iter().find_map(|b| {
            let ins = b.inserted.as_ref()?;
            let hit = ins.node_name == drive
                || b.device == drive
                || b.qdev.as_deref() == Some(qdev_a.as_str())
                || b.qdev.as_deref() == Some(qdev_b.as_str());
            hit.then(|| {
                (
                    ins.node_name.clone(),
                    ins.image.as_ref().map_or(0, |i| i.virtual_size),
                    ins.backing_file_depth == Some(0),
                )
            })
        });
        let found = match found {
            Some(f) => Some(f),
            None => {
                if nodes.is_none() {
                    nodes = Some(
                        qmp.query_named_block_nodes()
                            .await
                            .map_err(|e| Error::qmp("query-named-block-nodes", e))?,
                    );
                }
                nodes.as_ref().and_then(|ns| {
                    ns.iter().find(|n| n.node_name == drive).map(|n| {
                        (
                            n.node_name.clone(),
                            n.image.as_ref().map_or(0, |i| i.virtual_size),
                            n.backing_file_depth == Some(0),
                        )
                    })
                })
            }
        };
        let (node, size, top_only) = found.unwrap_or_default();
        if node.is_empty() || size == 0 {
            return Err(Error::NoBlockNode {
                device: drive,
                node,
                size,
            });
        }
        out.push(SourceDisk {
            key: key.clone(),
            drive,
            node,
            size,
            top_only,
        });
    }
    Ok(out)
}

/// Removes jobs and nodes named `vmdump-*` that a killed earlier run left in QEMU. Returns a
/// description of what was removed (for the task log).
pub async fn clean_stale(qmp: &Client) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let jobs = qmp
        .query_jobs()
        .await
        .map_err(|e| Error::qmp("query-jobs", e))?;
    let stale: Vec<String> = jobs
        .iter()
        .filter(|j| j.id.starts_with(PREFIX))
        .map(|j| j.id.clone())
        .collect();
    if !stale.is_empty() {
        cancel_jobs(qmp, &stale).await?;
        done.extend(stale.iter().map(|j| format!("job '{j}'")));
    }
    done.extend(crate::vm::fleece::clean_stale(qmp).await?);
    let nodes = qmp
        .query_named_block_nodes()
        .await
        .map_err(|e| Error::qmp("query-named-block-nodes", e))?;
    for n in nodes
        .iter()
        .filter(|n| n.node_name.starts_with(&format!("{PREFIX}tgt-")))
    {
        del_node(qmp, &n.node_name).await?;
        done.push(format!("node '{}'", n.node_name));
    }
    Ok(done)
}

/// `blockdev-add` an NBD client node per disk, pointing at our target socket.
pub async fn add_targets(qmp: &Client, disks: &[SourceDisk], socket: &Path) -> Result<()> {
    for (i, d) in disks.iter().enumerate() {
        let opts = json!({
            "driver": "nbd",
            "node-name": d.target_node(),
            "server": {"type": "unix", "path": socket},
            "export": d.drive,
        });
        if let Err(e) = qmp.blockdev_add(opts).await {
            remove_targets(qmp, &disks[..i]).await;
            return Err(Error::qmp(format!("blockdev-add {}", d.target_node()), e));
        }
    }
    Ok(())
}

/// Deletes the target nodes (QEMU sends `FLUSH` + `DISC` on close). Errors are logged, not
/// returned: this runs on cleanup paths too.
pub async fn remove_targets(qmp: &Client, disks: &[SourceDisk]) {
    for d in disks {
        if let Err(e) = del_node(qmp, &d.target_node()).await {
            tracing::warn!(node = %d.target_node(), error = %e, "could not delete target node");
        }
    }
}

pub(crate) async fn del_node(qmp: &Client, node: &str) -> Result<()> {
    // A node still referenced by a concluding job may be "in use" for a moment.
    let mut last = None;
    for _ in 0..20 {
        match qmp.blockdev_del(node).await {
            Ok(()) => return Ok(()),
            Err(e)
                if e.remote_class() == Some("GenericError") && e.to_string().contains("in use") =>
            {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(Error::qmp(format!("blockdev-del {node}"), e)),
        }
    }
    Err(Error::qmp(
        format!("blockdev-del {node}"),
        last.expect("the loop ran at least once"),
    ))
}

/// Starts all jobs in one grouped transaction (one point in time for every disk).
pub async fn start_jobs(
    qmp: &Client,
    disks: &[SourceDisk],
    speed: u64,
    max_workers: Option<u32>,
) -> Result<()> {
    let actions: Vec<Action> = disks
        .iter()
        .map(|d| {
            let sync = if d.top_only {
                SyncMode::Top
            } else {
                SyncMode::Full
            };
            let mut b = BlockdevBackup::new(d.job(), &d.node, d.target_node(), sync);
            b.auto_finalize = Some(false);
            b.auto_dismiss = Some(false);
            b.filter_node_name = Some(d.filter_node());
            if speed > 0 {
                b.speed = Some(speed);
            }
            if let Some(n) = max_workers {
                b.x_perf = Some(BackupPerf {
                    max_workers: Some(n),
                    ..Default::default()
                });
            }
            Action::BlockdevBackup(b)
        })
        .collect();
    qmp.transaction(&actions, Some(CompletionMode::Grouped))
        .await
        .map_err(|e| Error::qmp("transaction (blockdev-backup)", e))
}

/// State of our jobs in one poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    /// Still copying.
    Running,
    /// All jobs wait for `job-finalize`.
    Pending,
    /// All concluded successfully.
    Concluded,
    /// A job failed or vanished (message).
    Failed(String),
}

/// Looks at our jobs once.
pub async fn poll(qmp: &Client, disks: &[SourceDisk]) -> Result<Poll> {
    let jobs = qmp
        .query_jobs()
        .await
        .map_err(|e| Error::qmp("query-jobs", e))?;
    let mut statuses = Vec::new();
    for d in disks {
        let id = d.job();
        let Some(j) = jobs.iter().find(|j| j.id == id) else {
            return Ok(Poll::Failed(format!("job '{id}' disappeared")));
        };
        statuses.push((id, j.status.clone(), j.error.clone()));
    }
    if statuses.iter().all(|(_, s, _)| s == "concluded") {
        if let Some((id, _, Some(err))) = statuses.iter().find(|(_, _, e)| e.is_some()) {
            return Ok(Poll::Failed(format!("job '{id}': {err}")));
        }
        return Ok(Poll::Concluded);
    }
    if statuses.iter().all(|(_, s, _)| s == "pending") {
        return Ok(Poll::Pending);
    }
    Ok(Poll::Running)
}

/// How many bytes each job copied (its progress; whole clusters), in the order of `disks`.
/// Asked once all jobs are pending: nothing is copied after that.
pub async fn copied(qmp: &Client, disks: &[SourceDisk]) -> Result<Vec<u64>> {
    let jobs = qmp
        .query_jobs()
        .await
        .map_err(|e| Error::qmp("query-jobs", e))?;
    disks
        .iter()
        .map(|d| {
            let id = d.job();
            jobs.iter()
                .find(|j| j.id == id)
                .map(|j| j.current_progress)
                .ok_or_else(|| Error::Job {
                    job: id.clone(),
                    message: format!("job '{id}' disappeared"),
                })
        })
        .collect()
}

/// `job-finalize` (once for the group).
pub async fn finalize(qmp: &Client, disks: &[SourceDisk]) -> Result<()> {
    let Some(first) = disks.first() else {
        return Ok(());
    };
    qmp.job_finalize(&first.job())
        .await
        .map_err(|e| Error::qmp(format!("job-finalize {}", first.job()), e))
}

/// `job-dismiss` of every concluded job of ours.
pub async fn dismiss(qmp: &Client, disks: &[SourceDisk]) -> Result<()> {
    for d in disks {
        qmp.job_dismiss(&d.job())
            .await
            .map_err(|e| Error::qmp(format!("job-dismiss {}", d.job()), e))?;
    }
    Ok(())
}

/// Cancels jobs (any state), waits for them to conclude and dismisses them.
pub async fn cancel_jobs(qmp: &Client, ids: &[String]) -> Result<()> {
    for id in ids {
        match qmp.job_cancel(id).await {
            Ok(()) => {}
            // Already concluded or gone: fine.
            Err(e) => tracing::debug!(job = %id, error = %e, "job-cancel"),
        }
    }
    let start = Instant::now();
    loop {
        let jobs = qmp
            .query_jobs()
            .await
            .map_err(|e| Error::qmp("query-jobs", e))?;
        let ours: Vec<_> = jobs.iter().filter(|j| ids.contains(&j.id)).collect();
        if ours
            .iter()
            .all(|j| j.status == "concluded" || j.status == "null")
        {
            for j in ours {
                if let Err(e) = qmp.job_dismiss(&j.id).await {
                    tracing::debug!(job = %j.id, error = %e, "job-dismiss");
                }
            }
            return Ok(());
        }
        if start.elapsed() > CANCEL_WAIT {
            return Err(Error::Job {
                job: ids.join(","),
                message: format!("did not conclude within {CANCEL_WAIT:?} after cancel"),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Cancels our jobs and removes the target nodes (the failure path).
pub async fn abort(qmp: &Client, disks: &[SourceDisk]) -> Result<()> {
    let ids: Vec<String> = disks.iter().map(SourceDisk::job).collect();
    let res = cancel_jobs(qmp, &ids).await;
    remove_targets(qmp, disks).await;
    res
}

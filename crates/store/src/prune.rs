//! Pruning a storage: which policy applies, the limits checked before a backup, and applying
//! a [`crate::retention`] plan.

use serde::Serialize;
use vmdump_config::KeepOptions;

use crate::catalog::{Backup, Filter, Storage};
use crate::error::{Error, Result};
use crate::layout::GuestType;
use crate::retention::{self, Candidate, Decision, Mark};

/// One line of a prune plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanEntry {
    /// The backup.
    #[serde(flatten)]
    pub backup: Backup,
    /// What happens to it, and the rule that kept it.
    #[serde(flatten)]
    pub decision: Decision,
}

/// Plans every backup group (guest type and VMID) in `backups` with `keep`; sorted by volid.
pub fn plan(backups: &[Backup], keep: &KeepOptions) -> Vec<PlanEntry> {
    let mut groups: std::collections::BTreeMap<(GuestType, u32), Vec<&Backup>> =
        std::collections::BTreeMap::new();
    for b in backups {
        groups.entry((b.kind, b.vmid)).or_default().push(b);
    }
    let mut out = Vec::with_capacity(backups.len());
    for group in groups.values() {
        let candidates: Vec<Candidate> = group
            .iter()
            .map(|b| Candidate {
                time: b.local_time,
                protected: b.protected,
            })
            .collect();
        for (b, decision) in group.iter().zip(retention::plan(&candidates, keep)) {
            out.push(PlanEntry {
                backup: (*b).clone(),
                decision,
            });
        }
    }
    out.sort_by(|a, b| a.backup.volid.cmp(&b.backup.volid));
    out
}

/// Deletes every backup marked [`Mark::Remove`] (archive, `.log`, `.notes`); returns the
/// removed ones. A backup protected since the plan was made is skipped. Failures are logged
/// per file and reported together as [`Error::Prune`] after trying all of them. Applying the
/// same plan again removes nothing and succeeds.
pub fn apply(storage: &Storage, plan: &[PlanEntry]) -> Result<Vec<Backup>> {
    let mut removed = Vec::new();
    let mut failed = Vec::new();
    for e in plan.iter().filter(|e| e.decision.mark == Mark::Remove) {
        let path = storage.path(&e.backup);
        if !path.exists() {
            continue;
        }
        match storage.remove(&e.backup) {
            Ok(()) => removed.push(e.backup.clone()),
            Err(Error::Protected(volid)) => {
                tracing::warn!(%volid, "protected since the plan was made, not removed");
            }
            Err(err) => {
                tracing::error!(volid = %e.backup.volid, error = %err, "cannot remove backup");
                failed.push((path, err.to_string()));
            }
        }
    }
    if failed.is_empty() {
        Ok(removed)
    } else {
        Err(Error::Prune { failed })
    }
}

/// Lists, plans and applies for one guest (the prune after a backup, `remove 1`).
pub fn prune_guest(
    storage: &Storage,
    kind: GuestType,
    vmid: u32,
    keep: &KeepOptions,
) -> Result<Vec<Backup>> {
    let backups = storage.list(&Filter {
        vmid: Some(vmid),
        kind: Some(kind),
    })?;
    apply(storage, &plan(&backups, keep))
}

/// The retention that applies, by vzdump's precedence: the job or command line, then the
/// target storage's `prune-backups`, then `vzdump.conf`, then `keep-all=1`.
pub fn effective_keep(
    job: Option<&KeepOptions>,
    storage: Option<&KeepOptions>,
    conf: Option<&KeepOptions>,
) -> KeepOptions {
    job.or(storage)
        .or(conf)
        .copied()
        .unwrap_or_else(KeepOptions::keep_all)
}

/// Whether to prune after each backup: `remove` (default 1), forced off by `keep-all`.
pub fn effective_remove(remove: Option<bool>, keep: &KeepOptions) -> bool {
    remove.unwrap_or(true) && !keep.is_keep_all()
}

/// The checks vzdump makes before a guest's backup starts: with `protected`, the guest's
/// protected backups against `max-protected-backups`; otherwise, with `remove 0` and a
/// policy other than keep-all, the sum of the keep values is a hard cap on the guest's
/// unprotected backups.
pub fn check_before_backup(
    storage: &Storage,
    kind: GuestType,
    vmid: u32,
    keep: &KeepOptions,
    remove: bool,
    protected: bool,
) -> Result<()> {
    if protected {
        return storage.check_protected_limit(kind, vmid);
    }
    if remove || keep.is_keep_all() {
        return Ok(());
    }
    let max: u64 = keep.rules().iter().map(|(_, n)| n).sum();
    let count = storage
        .list(&Filter {
            vmid: Some(vmid),
            kind: Some(kind),
        })?
        .iter()
        .filter(|b| !b.protected)
        .count() as u64;
    if count >= max {
        return Err(Error::Limit(format!(
            "There is a max backup limit of {max} enforced by the target storage or the \
             vzdump parameters. Either increase the limit or delete old backups."
        )));
    }
    Ok(())
}

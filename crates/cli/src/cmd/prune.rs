//! `vmdump prune <storage>`: prune backups by keep rules (Proxmox's `pvesm prune-backups`).
//! `--dry-run` prints the plan only; the plan shows each backup's mark and the rule that kept
//! it.

use std::process::ExitCode;

use anyhow::{bail, Context as _};
use vmdump_config::KeepOptions;
use vmdump_store::{prune, Filter, GuestType, Storage};

use crate::output::{self, outln, Format};

/// Arguments of `vmdump prune`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The storage (from storage.cfg).
    storage: String,
    /// Only backups of this guest.
    #[arg(long)]
    vmid: Option<u32>,
    /// Only backups of this guest type.
    #[arg(long = "type", value_parser = ["qemu", "lxc"])]
    kind: Option<String>,
    /// Keep the last N backups.
    #[arg(long)]
    keep_last: Option<u64>,
    /// Keep the newest backup of each of the last N hours.
    #[arg(long)]
    keep_hourly: Option<u64>,
    /// Keep the newest backup of each of the last N days.
    #[arg(long)]
    keep_daily: Option<u64>,
    /// Keep the newest backup of each of the last N ISO weeks.
    #[arg(long)]
    keep_weekly: Option<u64>,
    /// Keep the newest backup of each of the last N months.
    #[arg(long)]
    keep_monthly: Option<u64>,
    /// Keep the newest backup of each of the last N years.
    #[arg(long)]
    keep_yearly: Option<u64>,
    /// Keep everything (1), e.g. to show the storage with the plan's marks.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=1))]
    keep_all: Option<u8>,
    /// Only show what would be removed.
    #[arg(long)]
    dry_run: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    output_format: Format,
}

/// Run `vmdump prune`.
pub fn run(args: Args, global: &crate::Global) -> anyhow::Result<ExitCode> {
    let keep = KeepOptions {
        keep_all: args.keep_all.map(|v| v == 1),
        keep_last: args.keep_last,
        keep_hourly: args.keep_hourly,
        keep_daily: args.keep_daily,
        keep_weekly: args.keep_weekly,
        keep_monthly: args.keep_monthly,
        keep_yearly: args.keep_yearly,
    };
    if keep.keep_all == Some(true) && keep.rules().iter().any(|(_, n)| *n > 0) {
        bail!("--keep-all 1 cannot be combined with other keep options");
    }
    if keep.keep_all.is_none() && keep.is_keep_all() {
        bail!("no keep options given (use --keep-last etc., or --keep-all 1)");
    }
    let root = global.config_root();
    let storage = Storage::open(&root, &args.storage)
        .with_context(|| format!("storage '{}'", args.storage))?;
    let backups = storage.list(&Filter {
        vmid: args.vmid,
        kind: args.kind.as_deref().and_then(GuestType::parse),
    })?;
    let plan = prune::plan(&backups, &keep);
    if args.output_format == Format::Json {
        output::json(&plan)?;
    } else {
        let rows: Vec<Vec<String>> = plan
            .iter()
            .map(|e| {
                vec![
                    e.backup.volid.clone(),
                    e.backup.vmid.to_string(),
                    e.backup.kind.to_string(),
                    output::local_time(e.backup.time),
                    e.decision.mark.as_str().to_string(),
                    e.decision.rule.map_or("-", |r| r.as_str()).to_string(),
                ]
            })
            .collect();
        output::table(&["volid", "vmid", "type", "time", "mark", "rule"], &rows)?;
    }
    if args.dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    // Applying is a task of the registry (its log: what was removed).
    let task = match vmdump_task::TaskDir::from_env().start("prune", storage.id(), "root@cli") {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!(error = %e, "cannot record this run as a task");
            None
        }
    };
    let progress: &dyn vmdump_task::Progress = match &task {
        Some(t) => t,
        None => &vmdump_task::Silent,
    };
    let removed = vmdump_jobs::run::apply_prune(&storage, &plan, progress);
    if let Some(t) = &task {
        t.finish(
            removed
                .as_ref()
                .map(|_| ())
                .map_err(|e| vmdump_task::one_line(e)),
        );
    }
    let removed = removed?;
    if args.output_format == Format::Text {
        outln!(
            "pruned {} backup(s) not covered by keep-retention policy",
            removed.len()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

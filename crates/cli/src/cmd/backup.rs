//! `vmdump backup`: live backup of VMs into VMA archives (the vzdump of vmdump).
//!
//! Maps the vzdump options onto a `vmdump_config::VzdumpOptions` (the layer over `vzdump.conf`), runs one guest after the
//! other (a failed guest does not stop the others), prints the task log as vzdump does
//! (`INFO: ...` on stdout), with an indicatif bar instead of the percentage lines on a
//! terminal. Exit status 0 when every guest succeeded, 1 when any failed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use vmdump_config::{Codec, Fleecing, Mode, Performance, VmId, VzdumpOptions};
use vmdump_engine::BackupJob;
use vmdump_task::Level;

use crate::output::outln;
use crate::ui::{cancel_on_signals, Style, Ui};

/// Arguments of `vmdump backup` (boxed: the subcommand enum stays small).
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    opts: Box<Opts>,
}

/// The options of `vmdump backup` (names, meanings and spellings as vzdump's; the value
/// types and their parsing are `vmdump-config`'s, shared with `vzdump.conf`).
#[derive(clap::Args, Debug)]
struct Opts {
    /// Guests to back up (100..999999999; a guest named twice is backed up once).
    #[arg(value_name = "VMID")]
    vmids: Vec<VmId>,
    /// Back up all guests of this host.
    #[arg(long)]
    all: bool,
    /// Skip these guests (comma-separated); implies --all.
    #[arg(long, value_delimiter = ',', value_name = "VMID")]
    exclude: Vec<VmId>,
    /// Consistency mode: snapshot (default), suspend, stop.
    #[arg(long)]
    mode: Option<Mode>,
    /// Target storage (from storage.cfg).
    #[arg(long, conflicts_with = "dumpdir")]
    storage: Option<String>,
    /// Target directory.
    #[arg(long)]
    dumpdir: Option<PathBuf>,
    /// Compression: 0 (none), 1 (lzo), gzip, lzo, zstd.
    #[arg(long)]
    compress: Option<Codec>,
    /// zstd threads (0 = half the CPUs).
    #[arg(long)]
    zstd: Option<u32>,
    /// Bandwidth limit in KiB/s (0 = none).
    #[arg(long, value_name = "KiB/s", allow_hyphen_values = true, value_parser = non_negative)]
    bwlimit: Option<u64>,
    /// Performance options, e.g. max-workers=16.
    #[arg(long)]
    performance: Option<Performance>,
    /// Backup fleecing of VMs, e.g. enabled=1,storage=local: old data of guest writes goes
    /// to a fleecing image on that storage (default: each disk's own) instead of waiting
    /// for the backup target.
    #[arg(long, value_name = "[enabled=]0|1[,storage=<id>]")]
    fleecing: Option<Fleecing>,
    /// Longest wait for the node-global backup lock, in minutes (default 180; 0 = fail
    /// at once if another backup job runs).
    #[arg(long)]
    lockwait: Option<u64>,
    /// Notes for the backup, with {{guestname}}, {{vmid}}, {{node}}, {{cluster}}.
    #[arg(long)]
    notes_template: Option<String>,
    /// Mark the backup protected (1/0).
    #[arg(long, num_args = 0..=1, default_missing_value = "1", value_parser = super::boolean)]
    protected: Option<bool>,
    /// Retention for this run, e.g. keep-last=3,keep-weekly=4 (over the storage's
    /// prune-backups and vzdump.conf).
    #[arg(long, value_parser = keep_options)]
    prune_backups: Option<vmdump_config::KeepOptions>,
    /// Prune the guest's older backups after its backup (1, the default) or not (0; then the
    /// keep values are a hard limit).
    #[arg(long, value_parser = super::boolean)]
    remove: Option<bool>,
    /// Hook script, called for every job and guest phase (must be executable).
    #[arg(long)]
    script: Option<PathBuf>,
    /// Longest wait for a clean guest shutdown in stop mode, in minutes (default 10; the
    /// guest is never stopped hard).
    #[arg(long, value_name = "MINUTES")]
    stopwait: Option<u64>,
    /// Temporary directory for the run's scratch files.
    #[arg(long)]
    tmpdir: Option<PathBuf>,
    /// I/O priority of vmdump's own I/O and compressor threads: 0..7 best-effort level, 8
    /// idle (default 7).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=8))]
    ionice: Option<u8>,
    /// Containers: exclude these paths (shell globs; a leading / anchors at the container
    /// root); may be given more than once.
    #[arg(long, value_name = "PATTERN")]
    exclude_path: Vec<String>,
    /// Containers: exclude /tmp/?*, /var/tmp/?* and /var/run/?*.pid (1, the default, or 0).
    #[arg(long, value_parser = super::boolean)]
    stdexcludes: Option<bool>,
    /// Write the archive of the one guest to standard output (no archive file; the task log
    /// goes to stderr and the guest's .log to the dump directory).
    #[arg(long, conflicts_with_all = ["storage", "all", "exclude"])]
    stdout: bool,
}

/// A count that may be 0 (`--bwlimit`): negative values get their own message.
pub(crate) fn non_negative(s: &str) -> Result<u64, String> {
    match s.parse::<i128>() {
        Ok(n) if n < 0 => Err("the value must be ≥ 0".into()),
        Ok(n) => u64::try_from(n).map_err(|_| "the value is too large".into()),
        Err(_) => Err(format!("'{s}' is not a whole number")),
    }
}

fn keep_options(s: &str) -> Result<vmdump_config::KeepOptions, String> {
    vmdump_config::KeepOptions::parse(s).map_err(|e| e.to_string())
}

/// Run `vmdump backup`.
pub fn run(args: Args, global: &crate::Global) -> anyhow::Result<ExitCode> {
    let args = *args.opts;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(run_async(args, global))
}

/// The command line as the top layer of options.
fn options(args: &Opts) -> VzdumpOptions {
    let mut o = VzdumpOptions::default();
    o.mode = args.mode;
    o.compress = args.compress;
    o.zstd = args.zstd;
    o.storage = args.storage.clone();
    o.dumpdir = args.dumpdir.clone();
    o.bwlimit = args.bwlimit;
    o.lockwait = args.lockwait;
    o.performance = args.performance;
    o.fleecing = args.fleecing.clone();
    o.notes_template = args.notes_template.clone();
    o.protected = args.protected;
    o.script = args.script.clone();
    o.stopwait = args.stopwait;
    o.tmpdir = args.tmpdir.clone();
    o.ionice = args.ionice;
    o.exclude_path = args.exclude_path.clone();
    o.stdexcludes = args.stdexcludes;
    o
}

/// The guests to back up, each once, in command-line order.
fn guests(args: &Opts, root: &vmdump_config::ConfigRoot) -> anyhow::Result<Vec<VmId>> {
    let all = args.all || !args.exclude.is_empty();
    if all && !args.vmids.is_empty() {
        bail!("VMIDs cannot be combined with --all or --exclude");
    }
    let vmids: Vec<VmId> = if all {
        let mut ids = root
            .qemu_vmids()
            .with_context(|| format!("list guests in {}", root.dir().display()))?;
        ids.extend(
            root.lxc_vmids()
                .with_context(|| format!("list containers in {}", root.dir().display()))?,
        );
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .filter_map(|id| VmId::new(id).ok())
            .filter(|id| !args.exclude.contains(id))
            .collect()
    } else {
        let mut seen = Vec::new();
        for id in &args.vmids {
            if !seen.contains(id) {
                seen.push(*id);
            }
        }
        seen
    };
    if vmids.is_empty() {
        bail!("no guests to back up (give VMIDs or --all)");
    }
    Ok(vmids)
}

/// vzdump's `--stdout`: the archive gets the process's standard output, and everything
/// else printed there goes to stderr instead (fd 1 becomes a copy of fd 2, so helpers and
/// hooks cannot write into the archive either). Refused on a terminal.
fn take_stdout() -> anyhow::Result<std::sync::Arc<std::fs::File>> {
    use std::io::IsTerminal;
    use std::os::fd::AsFd;
    if std::io::stdout().is_terminal() {
        bail!("refusing to write the archive to a terminal (redirect --stdout to a file or pipe)");
    }
    let archive = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .context("duplicate stdout")?;
    rustix::stdio::dup2_stdout(std::io::stderr()).context("redirect stdout to stderr")?;
    Ok(std::sync::Arc::new(std::fs::File::from(archive)))
}

async fn run_async(args: Opts, global: &crate::Global) -> anyhow::Result<ExitCode> {
    let root = global.config_root();
    let vmids = guests(&args, &root)?;
    if args.stdout && vmids.len() != 1 {
        bail!("you can only backup a single VM with option --stdout");
    }
    let stdout = if args.stdout {
        Some(take_stdout()?)
    } else {
        None
    };
    let (mut job, warnings) = BackupJob::new(root, &options(&args), global.run_base())?;
    job.stdout = stdout;

    let ui = Ui::new(Style::Vzdump);
    let task_id = match vmids.as_slice() {
        [one] => one.to_string(),
        _ => String::new(),
    };
    ui.record_task("vzdump", &task_id);
    let cmdline: Vec<String> = std::env::args().skip(1).collect();
    ui.print(
        Level::Info,
        &format!("starting new backup job: vmdump {}", cmdline.join(" ")),
    );
    for w in warnings {
        ui.print(Level::Warn, &w);
    }
    let hook_log = |level: Level, line: &str| ui.print(level, line);
    if let Err(e) = job.job_hook(vmdump_engine::Phase::JobInit, &hook_log).await {
        let msg = vmdump_task::one_line(&e);
        ui.print(Level::Error, &format!("Backup job failed - {msg}"));
        let _ = outln!("TASK ERROR: {msg}");
        ui.finish_task(Err(msg));
        return Ok(ExitCode::from(1));
    }
    // Retention of the target (command line over storage over vzdump.conf).
    let retention = match vmdump_jobs::run::Retention::resolve(
        &job.root,
        &job.settings.destination,
        args.prune_backups.as_ref(),
        args.remove,
    ) {
        Ok(r) => r,
        Err(e) => {
            let msg = vmdump_task::one_line(&e);
            ui.print(Level::Error, &msg);
            let _ = outln!("TASK ERROR: {msg}");
            ui.finish_task(Err(msg));
            return Ok(ExitCode::from(1));
        }
    };
    cancel_on_signals(job.cancel.clone());

    // One backup job at a time on this host (vzdump's global lock).
    let waited = std::cell::Cell::new(false);
    let lock = match job
        .lock(|| {
            waited.set(true);
            ui.print(Level::Info, "trying to get global lock - waiting...");
        })
        .await
    {
        Ok(l) => l,
        Err(e) => {
            ui.print(Level::Error, &e.to_string());
            let _ = outln!("TASK ERROR: {e}");
            ui.finish_task(Err(e.to_string()));
            return Ok(ExitCode::from(1));
        }
    };
    if waited.get() {
        ui.print(Level::Info, "got global lock");
    }

    let mut failed = Vec::new();
    let (job_ref, lock_ref, retention_ref, ui_ref) = (&job, &lock, &retention, &ui);
    let failed_ref = &mut failed;
    let res = vmdump_jobs::run::with_job_hooks(&job, &ui, move || async move {
        for vmid in vmids {
            if job_ref.cancel.is_cancelled() {
                failed_ref.push(vmid);
                continue;
            }
            ui_ref.start(format!("VM {vmid}"));
            let res =
                vmdump_jobs::run::backup_one(job_ref, lock_ref, retention_ref, vmid.get(), ui_ref)
                    .await;
            ui_ref.done();
            if res.is_err() {
                failed_ref.push(vmid);
            }
        }
    })
    .await;
    if let Err(msg) = res {
        ui.print(Level::Error, &format!("Backup job failed - {msg}"));
        let _ = outln!("TASK ERROR: {msg}");
        ui.finish_task(Err(msg));
        return Ok(ExitCode::from(1));
    }
    if failed.is_empty() {
        ui.print(Level::Info, "Backup job finished successfully");
        ui.finish_task(Ok(()));
        Ok(ExitCode::SUCCESS)
    } else {
        ui.print(Level::Info, "Backup job finished with errors");
        let _ = outln!("TASK ERROR: job errors");
        ui.finish_task(Err("job errors".into()));
        Ok(ExitCode::from(1))
    }
}

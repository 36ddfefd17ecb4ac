//! `vmdump backup`: live backup of VMs into VMA archives (the vzdump of vmdump).
//!
//! Maps the vzdump options onto [`vmdump_engine::options::Settings`], runs one guest after the
//! other (a failed guest does not stop the others), prints the task log as vzdump does
//! (`INFO: ...` on stdout), with an indicatif bar instead of the percentage lines on a
//! terminal. Exit status 0 when every guest succeeded, 1 when any failed.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use vmdump_engine::options::{Compression, Mode, Performance, Settings};
use vmdump_engine::progress::{render_bytes, Level, Progress, Transfer};
use vmdump_engine::BackupJob;

/// Arguments of `vmdump backup` (boxed: the subcommand enum stays small).
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    opts: Box<Opts>,
}

/// The options of `vmdump backup` (names and meanings as vzdump's options).
#[derive(clap::Args, Debug)]
struct Opts {
    /// Guests to back up.
    #[arg(value_name = "VMID")]
    vmids: Vec<u32>,
    /// Back up all guests of this host.
    #[arg(long)]
    all: bool,
    /// Skip these guests (comma-separated); implies --all.
    #[arg(long, value_delimiter = ',', value_name = "VMID")]
    exclude: Vec<u32>,
    /// Consistency mode: snapshot (default), suspend, stop.
    #[arg(long)]
    mode: Option<String>,
    /// Target storage (from storage.cfg).
    #[arg(long, conflicts_with = "dumpdir")]
    storage: Option<String>,
    /// Target directory.
    #[arg(long)]
    dumpdir: Option<PathBuf>,
    /// Compression: 0, 1 (lzo), gzip, lzo, zstd.
    #[arg(long)]
    compress: Option<String>,
    /// zstd threads (0 = half the CPUs).
    #[arg(long)]
    zstd: Option<u32>,
    /// Bandwidth limit in KiB/s (0 = none).
    #[arg(long)]
    bwlimit: Option<u64>,
    /// Performance options, e.g. max-workers=16.
    #[arg(long)]
    performance: Option<String>,
    /// Longest wait for the node-global backup lock, in minutes (default 180; 0 = fail
    /// at once if another backup job runs).
    #[arg(long)]
    lockwait: Option<u64>,
    /// Notes for the backup, with {{guestname}}, {{vmid}}, {{node}}, {{cluster}}.
    #[arg(long)]
    notes_template: Option<String>,
    /// Mark the backup protected (1/0).
    #[arg(long, num_args = 0..=1, default_missing_value = "1")]
    protected: Option<String>,
    /// Retention for this run, e.g. keep-last=3,keep-weekly=4 (over the storage's
    /// prune-backups and vzdump.conf).
    #[arg(long)]
    prune_backups: Option<String>,
    /// Prune the guest's older backups after its backup (1, the default) or not (0; then the
    /// keep values are a hard limit).
    #[arg(long, value_parser = ["0", "1"])]
    remove: Option<String>,
    /// Configuration root (default $VMDUMP_ROOT or /etc/vmdump).
    #[arg(long)]
    root: Option<PathBuf>,
}

/// Run `vmdump backup`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let args = *args.opts;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(run_async(args))
}

fn settings(args: &Opts) -> anyhow::Result<Settings> {
    Ok(Settings {
        mode: args.mode.as_deref().map(Mode::parse).transpose()?,
        compress: args
            .compress
            .as_deref()
            .map(Compression::parse)
            .transpose()?,
        zstd: args.zstd,
        storage: args.storage.clone(),
        dumpdir: args.dumpdir.clone(),
        bwlimit: args.bwlimit,
        lockwait: args.lockwait,
        performance: args
            .performance
            .as_deref()
            .map(Performance::parse)
            .transpose()?
            .unwrap_or_default(),
        notes_template: args.notes_template.clone(),
        protected: match args.protected.as_deref() {
            None => None,
            Some("1" | "yes" | "true" | "on") => Some(true),
            Some("0" | "no" | "false" | "off") => Some(false),
            Some(other) => bail!("--protected: '{other}' is not a boolean"),
        },
    })
}

async fn run_async(args: Opts) -> anyhow::Result<ExitCode> {
    let root = vmdump_config::ConfigRoot::from_env(args.root.as_deref());
    let all = args.all || !args.exclude.is_empty();
    if all && !args.vmids.is_empty() {
        bail!("VMIDs cannot be combined with --all or --exclude");
    }
    let vmids: Vec<u32> = if all {
        root.qemu_vmids()
            .with_context(|| format!("list guests in {}", root.dir().display()))?
            .into_iter()
            .filter(|id| !args.exclude.contains(id))
            .collect()
    } else {
        args.vmids.clone()
    };
    if vmids.is_empty() {
        bail!("no guests to back up (give VMIDs or --all)");
    }
    let cli = settings(&args)?;
    let keep = args
        .prune_backups
        .as_deref()
        .map(vmdump_config::KeepOptions::parse)
        .transpose()
        .context("--prune-backups")?;
    let (job, warnings) = BackupJob::new(root, &cli)?;

    let ui = Ui::new();
    let cmdline: Vec<String> = std::env::args().skip(2).collect();
    ui.print(
        Level::Info,
        &format!(
            "starting new backup job: vmdump backup {}",
            cmdline.join(" ")
        ),
    );
    for w in warnings {
        ui.print(Level::Warn, &w);
    }
    // Retention of the target (command line over storage over vzdump.conf).
    let retention = match vmdump_jobs::run::Retention::resolve(
        &job.root,
        &job.settings.target,
        keep.as_ref(),
        args.remove.as_deref().map(|r| r == "1"),
    ) {
        Ok(r) => r,
        Err(e) => {
            let msg = vmdump_engine::pipeline::error_chain(&e);
            ui.print(Level::Error, &msg);
            println!("TASK ERROR: {msg}");
            return Ok(ExitCode::from(1));
        }
    };

    let interrupt = std::sync::Arc::clone(&job.interrupt);
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        interrupt.store(true, Ordering::Relaxed);
    });

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
            println!("TASK ERROR: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    if waited.get() {
        ui.print(Level::Info, "got global lock");
    }

    let mut failed = Vec::new();
    for vmid in vmids {
        if job.interrupt.load(Ordering::Relaxed) {
            failed.push(vmid);
            continue;
        }
        ui.start(vmid);
        let res = vmdump_jobs::run::backup_one(&job, &lock, &retention, vmid, &ui).await;
        ui.done();
        if res.is_err() {
            failed.push(vmid);
        }
    }
    if failed.is_empty() {
        ui.print(Level::Info, "Backup job finished successfully");
        Ok(ExitCode::SUCCESS)
    } else {
        ui.print(Level::Info, "Backup job finished with errors");
        println!("TASK ERROR: job errors");
        Ok(ExitCode::from(1))
    }
}

/// Task-log printer: plain `INFO:` lines, plus a bar on a terminal.
struct Ui {
    tty: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Ui {
    fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            bar: Mutex::new(None),
        }
    }

    fn start(&self, vmid: u32) {
        if !self.tty {
            return;
        }
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:40}] {percent:>3}% {msg} ({elapsed_precise}, eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("VM {vmid}"));
        if let Ok(mut b) = self.bar.lock() {
            *b = Some(bar);
        }
    }

    fn done(&self) {
        if let Ok(mut b) = self.bar.lock() {
            if let Some(bar) = b.take() {
                bar.finish_and_clear();
            }
        }
    }

    fn print(&self, level: Level, line: &str) {
        let text = format!("{}: {line}", level.prefix());
        match self.bar.lock().ok().and_then(|b| b.clone()) {
            Some(bar) => bar.suspend(|| println!("{text}")),
            None => println!("{text}"),
        }
    }
}

impl Progress for Ui {
    fn log(&self, level: Level, line: &str, progress: bool) {
        if progress && self.tty {
            // The bar shows it; the log file still gets the line.
            return;
        }
        self.print(level, line);
    }

    fn update(&self, t: &Transfer) {
        if let Some(bar) = self.bar.lock().ok().and_then(|b| b.clone()) {
            bar.set_length(t.total);
            bar.set_position(t.transferred);
            bar.set_message(format!(
                "{} of {}",
                render_bytes(t.transferred as f64, 1),
                render_bytes(t.total as f64, 1)
            ));
        }
    }
}

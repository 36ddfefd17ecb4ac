//! `vmdump restore`: restore of VMA archives (the qmrestore of vmdump).
//!
//! Log lines go to stdout in qmrestore's words (`new volume ID is ...`, `map ... to ...`,
//! `progress N% ...`); errors go to stderr and exit 255. SIGINT/SIGTERM abort the restore,
//! which then removes what it created.

use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{bail, Context};

/// Arguments of `vmdump restore`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The archive (`.vma`, `.vma.zst`, `.vma.lzo`, `.vma.gz`), or `-` for stdin.
    archive: String,
    /// The VM id to restore to.
    vmid: u32,
    /// Restore every disk to this storage (default: the storage each disk came from, or
    /// `local`).
    #[arg(long)]
    storage: Option<String>,
    /// Overwrite an existing VM (it must be stopped); its old disks are removed after the
    /// restore succeeded.
    #[arg(long)]
    force: bool,
    /// Assign new random MAC addresses and a new smbios1 uuid.
    #[arg(long)]
    unique: bool,
    /// Limit the read rate of the archive, in KiB/s (0: unlimited).
    #[arg(long, value_name = "KiB/s")]
    bwlimit: Option<u64>,
    /// Configuration root (default: $VMDUMP_ROOT or /etc/vmdump).
    #[arg(long)]
    root: Option<PathBuf>,
}

/// Run `vmdump restore`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !(100..=999_999_999).contains(&args.vmid) {
        bail!("invalid VM id {} (100..999999999)", args.vmid);
    }
    let root = vmdump_config::ConfigRoot::from_env(args.root.as_deref());
    let mut opts = vmdump_restore::Options::new(root, args.vmid);
    opts.storage = args.storage;
    opts.force = args.force;
    opts.unique = args.unique;
    opts.bwlimit = args.bwlimit.filter(|&b| b > 0);
    watch_signals(Arc::clone(&opts.interrupt));

    let source: Box<dyn Read + Send> = if args.archive == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            File::open(&args.archive).with_context(|| format!("open archive {}", args.archive))?,
        )
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let name = if args.archive == "-" {
        "<stdin>"
    } else {
        &args.archive
    };
    writeln!(out, "restore vma archive: {name}")?;
    let result = vmdump_restore::restore(source, &opts, &mut |line| {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    });
    match result {
        Ok(summary) => {
            println!(
                "restored VM {} ({} disk(s)), config {}",
                args.vmid,
                summary.disks.len(),
                summary.config_path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if opts.interrupt.load(Ordering::Relaxed) {
                Err(anyhow::Error::new(e).context("restore aborted, new volumes removed"))
            } else {
                Err(anyhow::Error::new(e).context(format!(
                    "restore of VM {} failed, new volumes removed",
                    args.vmid
                )))
            }
        }
    }
}

/// Set `flag` on SIGINT or SIGTERM (a small runtime on its own thread).
fn watch_signals(flag: Arc<std::sync::atomic::AtomicBool>) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("restore-signals".into())
        .spawn(move || {
            rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut int), Ok(mut term)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) else {
                    let _ = ready_tx.send(());
                    return;
                };
                let _ = ready_tx.send(());
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                flag.store(true, Ordering::Relaxed);
            });
        });
    if spawned.is_ok() {
        // Handlers are installed before any work starts.
        let _ = ready_rx.recv();
    }
}

//! `vmdump scheduler`: the long-running job scheduler (pvescheduler). Runs due jobs of
//! jobs.cfg one at a time, keeps its state in the state directory, stops on SIGTERM/Ctrl-C
//! (after the running job).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use vmdump_jobs::run::BackupRunner;
use vmdump_jobs::scheduler::Scheduler;
use vmdump_jobs::state::StateStore;

/// Arguments of `vmdump scheduler`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// State directory (last runs, the scheduler lock).
    #[arg(long, env = "VMDUMP_STATE_DIR", default_value = vmdump_jobs::state::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

/// Run `vmdump scheduler`.
pub fn run(args: Args, global: &crate::Global) -> anyhow::Result<ExitCode> {
    let root = global.config_root();
    let mut scheduler = Scheduler::new(
        root.clone(),
        StateStore::new(&args.state_dir),
        BackupRunner {
            root,
            run_dir: global.run_base(),
        },
    );
    scheduler.lock()?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    std::thread::spawn(move || {
        rt.block_on(async {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        flag.store(true, Ordering::Relaxed);
    });
    tracing::info!("scheduler started");
    scheduler.run_forever(&stop)?;
    Ok(ExitCode::SUCCESS)
}

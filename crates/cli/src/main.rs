//! `vmdump`: live backup and restore of QEMU/KVM virtual machines.
//!
//! One module per subcommand under `cmd/`; each exposes `Args` (clap derive)
//! and `run(args, &Global) -> anyhow::Result<ExitCode>`. Library crates never see clap.
//!
//! Exit codes (the same for every command): 0 success, 1 failure (the message on stderr;
//! for `backup`, some guest failed), 2 usage error (clap's). `vmdump vma` keeps Proxmox's
//! `vma` codes (255 on any error), since it is a drop-in replacement.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

mod cmd;
mod output;
mod ui;

/// Live backup and restore of QEMU/KVM virtual machines.
#[derive(Parser, Debug)]
#[command(
    name = "vmdump",
    version,
    about,
    after_help = "Exit status: 0 success, 1 failure, 2 usage error (vmdump vma: 255 on any error, as Proxmox's vma)."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    cmd: cmd::Cmd,
}

/// Options every subcommand honours, before or after the subcommand's name.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Global {
    /// Configuration root: storage.cfg, vzdump.conf, qemu-server/<vmid>.conf (default
    /// $VMDUMP_ROOT, else /etc/vmdump).
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Base of the per-VM run directories and locks (default $VMDUMP_RUN_DIR, else
    /// /run/vmdump).
    #[arg(long, global = true, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
}

impl Global {
    /// The configuration root.
    pub fn config_root(&self) -> vmdump_config::ConfigRoot {
        vmdump_config::ConfigRoot::from_env(self.root.as_deref())
    }

    /// The run directory base.
    pub fn run_base(&self) -> PathBuf {
        self.run_dir
            .clone()
            .unwrap_or_else(vmdump_guest::run_base_from_env)
    }
}

/// Exit code of a failed command.
const FAILURE: u8 = 1;
/// Exit code of a failed `vmdump vma` command (Proxmox's `vma` tool exits 255).
const VMA_FAILURE: u8 = 255;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let failure = match cli.cmd {
        cmd::Cmd::Vma(_) => VMA_FAILURE,
        _ => FAILURE,
    };
    match cmd::run(cli.cmd, &cli.global) {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("vmdump: {err:#}");
            ExitCode::from(failure)
        }
    }
}

/// Human logs on stderr; `VMDUMP_LOG` (env-filter syntax) selects the level.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VMDUMP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ui::color())
        .init();
}

/// A reader closing our stdout early (`vmdump vma config x | head`) is not an error.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

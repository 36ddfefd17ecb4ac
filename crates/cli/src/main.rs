//! `vmdump`: live backup and restore of QEMU/KVM virtual machines.
//!
//! One module per subcommand under `cmd/`; each exposes `Args` (clap derive)
//! and `run(args) -> anyhow::Result<ExitCode>`. Library crates never see clap.

use std::process::ExitCode;

use clap::Parser;

mod cmd;
mod output;

/// Live backup and restore of QEMU/KVM virtual machines.
#[derive(Parser, Debug)]
#[command(name = "vmdump", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: cmd::Cmd,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cmd::run(cli.cmd) {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("vmdump: {err:#}");
            ExitCode::from(255)
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

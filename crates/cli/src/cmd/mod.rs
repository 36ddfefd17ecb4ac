//! Subcommands. Each module owns its `Args` and `run`.

use std::process::ExitCode;

pub mod vma;

/// The top-level subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// Drop-in replacement for Proxmox's `vma` tool (list, config, verify, extract, create).
    Vma(vma::Args),
}

/// Dispatch a parsed subcommand.
pub fn run(cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Vma(args) => vma::run(args),
    }
}

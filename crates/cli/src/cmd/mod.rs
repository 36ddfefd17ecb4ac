//! Subcommands. Each module owns its `Args` and `run`.

use std::process::ExitCode;

pub mod backup;
pub mod restore;
pub mod vm;
pub mod vma;

/// The top-level subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// Back up VMs live into VMA archives (vzdump).
    Backup(backup::Args),
    /// Restore a VMA archive to a VM (qmrestore).
    Restore(restore::Args),
    /// Start, stop, suspend and inspect VMs.
    Vm(vm::Args),
    /// Drop-in replacement for Proxmox's `vma` tool (list, config, verify, extract, create).
    Vma(vma::Args),
}

/// Dispatch a parsed subcommand.
pub fn run(cmd: Cmd, global: &crate::Global) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Backup(args) => backup::run(args, global),
        Cmd::Restore(args) => restore::run(args, global),
        Cmd::Vm(args) => vm::run(args, global),
        Cmd::Vma(args) => vma::run(args),
    }
}

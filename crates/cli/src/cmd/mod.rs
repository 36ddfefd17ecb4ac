//! Subcommands. Each module owns its `Args` and `run`.

use std::process::ExitCode;

pub mod archive;
pub mod backup;
pub mod ct;
pub mod jobs;
pub mod list;
pub mod live_restore;
pub mod map;
pub mod mount;
pub mod prune;
pub mod restore;
pub mod scheduler;
pub mod serve;
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
    /// Create, start, stop and inspect LXC containers.
    Ct(ct::Args),
    /// Drop-in replacement for Proxmox's `vma` tool (list, config, verify, extract, create).
    Vma(vma::Args),
    /// Serve the disks of an archive read-only over NBD (one export per disk).
    Map(map::Args),
    /// Mount the disks of an archive read-only (FUSE), with --filesystems also the guest's
    /// filesystems.
    Mount(mount::Args),
    /// Undo `vmdump mount`.
    Umount(mount::UmountArgs),
    /// List the backups on a storage.
    List(list::Args),
    /// Prune backups by keep rules (--dry-run shows the plan).
    Prune(prune::Args),
    /// Show or set a backup's notes.
    Notes(archive::NotesArgs),
    /// Protect (1) or unprotect (0) a backup.
    Protect(archive::ProtectArgs),
    /// Remove a backup (refused for protected ones).
    Remove(archive::RemoveArgs),
    /// Scheduled backup jobs (jobs.cfg).
    Jobs(jobs::Args),
    /// Run scheduled jobs as a long-running service.
    Scheduler(scheduler::Args),
    /// Serve the REST API and web UI over HTTPS.
    Serve(serve::Args),
    /// API tokens of `vmdump serve` (add, list, remove).
    Token(serve::TokenArgs),
}

/// A vzdump-style boolean option value (`1`/`0`, as `vmdump_config::parse_bool` reads them).
pub(crate) fn boolean(s: &str) -> Result<bool, String> {
    vmdump_config::parse_bool(s).ok_or_else(|| format!("'{s}' is not a boolean (1/0)"))
}

/// Dispatch a parsed subcommand.
pub fn run(cmd: Cmd, global: &crate::Global) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Backup(args) => backup::run(args, global),
        Cmd::Restore(args) => restore::run(args, global),
        Cmd::Vm(args) => vm::run(args, global),
        Cmd::Ct(args) => ct::run(args, global),
        Cmd::Vma(args) => vma::run(args),
        Cmd::Map(args) => map::run(args, global),
        Cmd::Mount(args) => mount::run(args, global),
        Cmd::Umount(args) => mount::umount(args, global),
        Cmd::List(args) => list::run(args, global),
        Cmd::Prune(args) => prune::run(args, global),
        Cmd::Notes(args) => archive::notes(args, global),
        Cmd::Protect(args) => archive::protect(args, global),
        Cmd::Remove(args) => archive::remove(args, global),
        Cmd::Jobs(args) => jobs::run(args, global),
        Cmd::Scheduler(args) => scheduler::run(args, global),
        Cmd::Serve(args) => serve::run(args, global),
        Cmd::Token(args) => serve::token(args, global),
    }
}

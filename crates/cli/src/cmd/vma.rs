//! `vmdump vma`: a drop-in for Proxmox's `vma` CLI.

use std::process::ExitCode;

/// Arguments of `vmdump vma`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Run `vmdump vma`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("vmdump vma is not implemented yet")
}

//! `vmdump vm`: start, stop and inspect VMs from their Proxmox-style configs.

use std::process::ExitCode;

/// Arguments of `vmdump vm`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Run `vmdump vm`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("vmdump vm is not implemented yet")
}

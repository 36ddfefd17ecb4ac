//! `vmdump backup`: live backup of VMs into VMA archives (the vzdump of vmdump).

use std::process::ExitCode;

/// Arguments of `vmdump backup`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Run `vmdump backup`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("vmdump backup is not implemented yet")
}

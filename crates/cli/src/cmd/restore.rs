//! `vmdump restore`: restore of VMA archives (the qmrestore of vmdump).

use std::process::ExitCode;

/// Arguments of `vmdump restore`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Run `vmdump restore`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("vmdump restore is not implemented yet")
}

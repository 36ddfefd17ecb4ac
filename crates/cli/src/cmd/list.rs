//! `vmdump list <storage>`: the backups on a storage (volid, vmid, type, time, size,
//! compression, notes, protected).

use std::process::ExitCode;

use anyhow::Context as _;
use vmdump_store::{Filter, Storage};

use crate::output::{self, Format};

/// Arguments of `vmdump list`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The storage (from storage.cfg).
    storage: String,
    /// Only backups of this guest.
    #[arg(long)]
    vmid: Option<u32>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    output_format: Format,
}

/// Run `vmdump list`.
pub fn run(args: Args, global: &crate::Global) -> anyhow::Result<ExitCode> {
    let root = global.config_root();
    let storage = Storage::open(&root, &args.storage)
        .with_context(|| format!("storage '{}'", args.storage))?;
    let backups = storage.list(&Filter {
        vmid: args.vmid,
        kind: None,
    })?;
    if args.output_format == Format::Json {
        output::json(&backups)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = backups
        .iter()
        .map(|b| {
            vec![
                b.volid.clone(),
                b.vmid.to_string(),
                b.kind.to_string(),
                output::local_time(b.time),
                b.size.to_string(),
                b.compression.unwrap_or("-").to_string(),
                b.notes.clone().unwrap_or_default(),
                u8::from(b.protected).to_string(),
            ]
        })
        .collect();
    output::table(
        &[
            "volid",
            "vmid",
            "type",
            "time",
            "size",
            "compression",
            "notes",
            "protected",
        ],
        &rows,
    )?;
    Ok(ExitCode::SUCCESS)
}

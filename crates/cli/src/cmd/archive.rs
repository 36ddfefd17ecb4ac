//! `vmdump notes`, `vmdump protect`, `vmdump remove`: edit one backup, named by its volume
//! id `<storage>:backup/<file>`.

use std::process::ExitCode;

use crate::output::outln;
use anyhow::Context as _;
use vmdump_config::ConfigRoot;
use vmdump_store::{Backup, Storage};

/// Arguments of `vmdump notes`.
#[derive(clap::Args, Debug)]
pub struct NotesArgs {
    /// The backup: `<storage>:backup/<file>`.
    volid: String,
    /// New notes (one line; empty removes them). Without it, prints the notes.
    text: Option<String>,
}

/// Arguments of `vmdump protect`.
#[derive(clap::Args, Debug)]
pub struct ProtectArgs {
    /// The backup: `<storage>:backup/<file>`.
    volid: String,
    /// 1 to protect, 0 to unprotect.
    #[arg(value_parser = ["0", "1"])]
    protected: String,
}

/// Arguments of `vmdump remove`.
#[derive(clap::Args, Debug)]
pub struct RemoveArgs {
    /// The backup: `<storage>:backup/<file>`.
    volid: String,
}

fn open(root: &ConfigRoot, volid: &str) -> anyhow::Result<(Storage, Backup)> {
    let (sid, _) = volid
        .split_once(':')
        .with_context(|| format!("'{volid}' is not a volume id (<storage>:backup/<file>)"))?;
    let storage = Storage::open(root, sid).with_context(|| format!("storage '{sid}'"))?;
    let backup = storage.backup(volid)?;
    Ok((storage, backup))
}

/// Run `vmdump notes`.
pub fn notes(args: NotesArgs, global: &crate::Global) -> anyhow::Result<ExitCode> {
    let (storage, backup) = open(&global.config_root(), &args.volid)?;
    match args.text {
        Some(text) => storage.set_notes(&backup, &text)?,
        None => outln!("{}", backup.notes.unwrap_or_default())?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Run `vmdump protect`.
pub fn protect(args: ProtectArgs, global: &crate::Global) -> anyhow::Result<ExitCode> {
    let (storage, backup) = open(&global.config_root(), &args.volid)?;
    storage.set_protected(&backup, args.protected == "1")?;
    Ok(ExitCode::SUCCESS)
}

/// Run `vmdump remove`.
pub fn remove(args: RemoveArgs, global: &crate::Global) -> anyhow::Result<ExitCode> {
    let (storage, backup) = open(&global.config_root(), &args.volid)?;
    storage.remove(&backup)?;
    outln!("removed backup '{}'", backup.volid)?;
    Ok(ExitCode::SUCCESS)
}

//! `vmdump restore --live <archive> <vmid>`: the VM starts at once on the archive's disks
//! (served over NBD by this process) and its disks are copied onto the target storage in
//! the background; the command shows progress and returns when the copy is complete.
//!
//! With `--background` this binary starts itself again without that flag, in its own process
//! group, its output going to `<run dir>/live-restore/<vmid>.log`, and returns once that
//! process printed `VM <vmid> started` (or failed before).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use vmdump_task::Level;

use crate::output::outln;
use crate::ui::{cancel_on_signals, Style, Ui};

/// What `vmdump restore --live` needs besides the restore options.
#[derive(Debug)]
pub struct LiveArgs {
    /// The archive file.
    pub archive: PathBuf,
    /// Return once the VM runs; the copy continues in a process of its own.
    pub background: bool,
    /// Cache directory for compressed archives without a seek table.
    pub cache_dir: Option<PathBuf>,
}

/// The log of a background live-restore of `vmid`.
pub fn log_path(run_base: &Path, vmid: u32) -> PathBuf {
    run_base.join("live-restore").join(format!("{vmid}.log"))
}

/// Run `vmdump restore --live`.
pub fn run(
    live: LiveArgs,
    opts: vmdump_restore::Options,
    global: &crate::Global,
) -> anyhow::Result<ExitCode> {
    let vmid = opts.vmid;
    if live.archive.is_dir() {
        bail!(
            "'{}' is a directory, not an archive",
            live.archive.display()
        );
    }
    if live.background {
        return background(&global.run_base(), vmid.get());
    }
    cancel_on_signals(opts.cancel.clone());
    let ui = Ui::new(Style::Qmrestore);
    ui.print(
        Level::Info,
        &format!("live-restore vma archive: {}", live.archive.display()),
    );
    ui.start(format!("VM {vmid}"));
    let result = vmdump_restore::restore_live(&live.archive, live.cache_dir.as_deref(), &opts, &ui);
    ui.done();
    match result {
        Ok(s) => {
            outln!(
                "restored VM {vmid} ({} disk(s)) live: running since {:.1} s, copy complete after {:.1} s, config {}",
                s.disks.len(),
                s.started_after,
                s.seconds,
                s.config_path.display()
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("restore of VM {vmid} failed"))),
    }
}

/// Start this command again without `--background` and wait until its VM runs.
fn background(run_base: &Path, vmid: u32) -> anyhow::Result<ExitCode> {
    let log_path = log_path(run_base, vmid);
    std::fs::create_dir_all(log_path.parent().expect("has a parent"))
        .with_context(|| format!("create {}", log_path.display()))?;
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("create {}", log_path.display()))?;
    let exe = std::env::current_exe().context("find the vmdump binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(std::env::args_os().skip(1).filter(|a| a != "--background"));
    // Its own process group: the shell's ^C is not for it. It outlives this command, so its
    // output goes to the log, not to a pipe nobody reads.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let mut child = vmdump_launch::spawn::spawn(cmd).context("start the live-restore")?;
    let started = format!("VM {vmid} started");
    let mut shown = 0;
    loop {
        let mut text = String::new();
        std::fs::File::open(&log_path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .with_context(|| format!("read {}", log_path.display()))?;
        // Whole lines only: the rest may still be written.
        let upto = text.rfind('\n').map_or(0, |i| i + 1);
        if upto > shown {
            let _ = std::io::stdout().write_all(&text.as_bytes()[shown..upto]);
            shown = upto;
        }
        if text[..upto].lines().any(|l| l.starts_with(&started)) {
            outln!(
                "live-restore of VM {vmid} continues in the background (pid {}), log: {}",
                child.id(),
                log_path.display()
            )?;
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(st) = child.try_wait()? {
            let _ = std::io::stdout().write_all(&text.as_bytes()[shown..]);
            bail!("live-restore of VM {vmid} failed before the VM started ({st})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

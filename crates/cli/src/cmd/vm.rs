//! `vmdump vm`: start, stop and inspect VMs from their Proxmox-style configs.
//!
//! QEMU is daemonized, so `vmdump vm start 100` returns once the VM runs and a later
//! `vmdump vm status 100` (any process) finds it through its run directory.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use vmdump_config::VmId;
use vmdump_guest::{Accel, Runtime, ShutdownOutcome, StartOptions, State};

use crate::output::{outln, Format};

/// Arguments of `vmdump vm`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Start a VM (QEMU keeps running after this command returns).
    Start {
        /// The VM.
        vmid: VmId,
        /// Start with the CPUs stopped (`prelaunch`); `vmdump vm resume` runs it.
        #[arg(long)]
        paused: bool,
        /// Accelerator: kvm or tcg (default: $VMDUMP_ACCEL, else KVM on bare metal, TCG when
        /// /dev/kvm is unusable or the host is itself a VM).
        #[arg(long, value_parser = parse_accel)]
        accel: Option<Accel>,
        /// Start even if the config is locked.
        #[arg(long)]
        skiplock: bool,
    },
    /// Shut a VM down cleanly: ACPI power button, then the guest agent, then a hard stop.
    Shutdown {
        /// The VM.
        vmid: VmId,
        /// Seconds to wait for each clean step before escalating.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Shut down even if the config is locked (e.g. by a backup).
        #[arg(long)]
        skiplock: bool,
    },
    /// Stop a VM hard (QMP quit, then SIGTERM, then SIGKILL).
    Stop {
        /// The VM.
        vmid: VmId,
        /// Seconds to wait for QEMU to quit before signals.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
        /// Stop even if the config is locked (e.g. by a backup).
        #[arg(long)]
        skiplock: bool,
    },
    /// Pause a running VM.
    Suspend {
        /// The VM.
        vmid: VmId,
    },
    /// Resume a paused (or prelaunch) VM.
    Resume {
        /// The VM.
        vmid: VmId,
    },
    /// Print a VM's state (`status: running|stopped`, QEMU's run state, pid).
    Status {
        /// The VM.
        vmid: VmId,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        output_format: Format,
    },
    /// List all VM configs with their state.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        output_format: Format,
    },
    /// Print the QEMU command line `start` would run (shell-quoted).
    Showcmd {
        /// The VM.
        vmid: VmId,
        /// As for a paused start.
        #[arg(long)]
        paused: bool,
        /// Accelerator: kvm or tcg.
        #[arg(long, value_parser = parse_accel)]
        accel: Option<Accel>,
    },
}

fn state_json(vmid: u32, state: &State) -> serde_json::Value {
    serde_json::json!({
        "vmid": vmid,
        "status": state.as_str(),
        "qmpstatus": state.qmp_status(),
        "pid": state.pid(),
    })
}

/// Quote an argument for a POSIX shell when needed.
fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

fn parse_accel(s: &str) -> Result<Accel, String> {
    Accel::parse(s).ok_or_else(|| format!("'{s}' is not kvm or tcg"))
}

/// Run `vmdump vm`.
pub fn run(args: Args, global: &crate::Global) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(run_async(args, global))
}

async fn run_async(args: Args, global: &crate::Global) -> anyhow::Result<ExitCode> {
    let vms = Runtime::new(global.config_root()).with_run_base(global.run_base());
    match args.action {
        Action::Start {
            vmid,
            paused,
            accel,
            skiplock,
        } => {
            let opts = StartOptions {
                paused,
                accel,
                skiplock,
                ..Default::default()
            };
            let started = vms.start(vmid.get(), &opts).await?;
            outln!(
                "VM {vmid} started (pid {}, {}{})",
                started.pid,
                started.plan.accel,
                if paused { ", paused" } else { "" }
            )?;
        }
        Action::Shutdown {
            vmid,
            timeout,
            skiplock,
        } => {
            let outcome = vms
                .shutdown_with(
                    vmid.get(),
                    &vmdump_guest::ShutdownOptions {
                        timeout: Duration::from_secs(timeout),
                        force: true,
                        skiplock,
                    },
                )
                .await?;
            let what = match outcome {
                ShutdownOutcome::AlreadyStopped => "was not running",
                ShutdownOutcome::Acpi => "shut down (ACPI)",
                ShutdownOutcome::Agent => "shut down (guest agent)",
                ShutdownOutcome::Forced => "stopped hard after the shutdown timeout",
            };
            outln!("VM {vmid} {what}")?;
        }
        Action::Stop {
            vmid,
            timeout,
            skiplock,
        } => {
            let was = vms
                .stop_with(vmid.get(), Duration::from_secs(timeout), skiplock)
                .await?;
            outln!(
                "VM {vmid} {}",
                if was { "stopped" } else { "was not running" }
            )?;
        }
        Action::Suspend { vmid } => vms.suspend(vmid.get()).await?,
        Action::Resume { vmid } => vms.resume(vmid.get()).await?,
        Action::Status {
            vmid,
            output_format,
        } => {
            // A missing config is an error even if nothing runs.
            vms.root().qemu_config(vmid.get())?;
            let state = vms.status(vmid.get()).await?;
            if output_format == Format::Json {
                outln!("{}", state_json(vmid.get(), &state))?;
                return Ok(ExitCode::SUCCESS);
            }
            outln!("status: {}", state.as_str())?;
            if let Some(q) = state.qmp_status() {
                outln!("qmpstatus: {q}")?;
            }
            if let Some(pid) = state.pid() {
                outln!("pid: {pid}")?;
            }
        }
        Action::Showcmd {
            vmid,
            paused,
            accel,
        } => {
            let plan = vms.plan(
                vmid.get(),
                &StartOptions {
                    paused,
                    accel,
                    skiplock: true,
                    ..Default::default()
                },
            )?;
            let mut line = shell_quote(&vms.qemu().display().to_string());
            for a in &plan.args {
                line.push(' ');
                line.push_str(&shell_quote(a));
            }
            outln!("{line}")?;
        }
        Action::List {
            output_format: Format::Json,
        } => {
            let rows: Vec<serde_json::Value> = vms
                .list()
                .await?
                .iter()
                .map(|vm| {
                    let mut v = state_json(vm.vmid, &vm.state);
                    v["name"] = vm.name.clone().into();
                    v["maxmem"] = vm.memory_mib.map(|m| m * 1024 * 1024).into();
                    v
                })
                .collect();
            outln!("{}", serde_json::Value::Array(rows))?;
        }
        Action::List {
            output_format: Format::Text,
        } => {
            outln!(
                "{:>10} {:<20} {:<10} {:>10} {:>10}",
                "VMID",
                "NAME",
                "STATUS",
                "MEM(MB)",
                "PID"
            )?;
            for vm in vms.list().await? {
                let status = match &vm.state {
                    State::Running { .. } => vm.state.qmp_status().unwrap_or("running"),
                    other => other.as_str(),
                };
                outln!(
                    "{:>10} {:<20} {:<10} {:>10} {:>10}",
                    vm.vmid,
                    vm.name,
                    status,
                    vm.memory_mib.map(|m| m.to_string()).unwrap_or_default(),
                    vm.state.pid().map(|p| p.to_string()).unwrap_or_default()
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! `vmdump ct`: create, start, stop and inspect LXC containers from their Proxmox-style
//! configs (`lxc/<vmid>.conf`). Containers keep running after the command returns; any later
//! `vmdump ct status` finds them through LXC.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use vmdump_config::VmId;
use vmdump_lxc::{CreateSpec, CtState, Runtime, Template};

use crate::output::{outln, Format};

/// Arguments of `vmdump ct`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Create a container from an LXC template (`busybox`) or a root filesystem tarball.
    Create {
        /// The new container's VMID.
        vmid: VmId,
        /// `busybox` (an LXC template) or a path to a tar archive of a root filesystem.
        ostemplate: String,
        /// Root volume as `<storage>:<size in GiB>` (`local:0`: a directory on a dir storage).
        #[arg(long, default_value = "local:1")]
        rootfs: String,
        /// Host name.
        #[arg(long)]
        hostname: Option<String>,
        /// Unprivileged container (ids mapped to 100000+): 1 or 0.
        #[arg(long, default_value = "0", value_parser = super::boolean, action = clap::ArgAction::Set)]
        unprivileged: bool,
    },
    /// Start a container.
    Start {
        /// The container.
        vmid: VmId,
        /// Start even if the config is locked.
        #[arg(long)]
        skiplock: bool,
    },
    /// Shut a container down cleanly (its halt signal), waiting up to --timeout seconds.
    Shutdown {
        /// The container.
        vmid: VmId,
        /// Seconds to wait.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Stop a container at once.
    Stop {
        /// The container.
        vmid: VmId,
    },
    /// Print a container's state (`status: running|stopped|frozen`, pid).
    Status {
        /// The container.
        vmid: VmId,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        output_format: Format,
    },
    /// List all containers with their state.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        output_format: Format,
    },
}

/// `<storage>:<GiB>` of `--rootfs`.
fn parse_rootfs(s: &str) -> anyhow::Result<(String, u64)> {
    let (storage, size) = s
        .split_once(':')
        .with_context(|| format!("--rootfs '{s}': expected <storage>:<size in GiB>"))?;
    let gib: f64 = size
        .parse()
        .ok()
        .filter(|g: &f64| g.is_finite() && *g >= 0.0)
        .with_context(|| format!("--rootfs '{s}': '{size}' is not a size in GiB"))?;
    Ok((storage.to_string(), (gib * f64::from(1u32 << 30)) as u64))
}

/// The per-guest lifecycle lock (shared with VMs: VMIDs are unique across both).
fn lock(global: &crate::Global, vmid: VmId) -> anyhow::Result<vmdump_guest::VmLock> {
    match vmdump_guest::VmLock::try_acquire(&global.run_base(), vmid.get())? {
        Some(l) => Ok(l),
        None => bail!("CT {vmid} is busy: another vmdump process is working on it"),
    }
}

/// Run `vmdump ct`.
pub fn run(args: Args, global: &crate::Global) -> anyhow::Result<ExitCode> {
    let rt = Runtime::new(global.config_root(), global.run_base());
    match args.action {
        Action::Create {
            vmid,
            ostemplate,
            rootfs,
            hostname,
            unprivileged,
        } => {
            let _l = lock(global, vmid)?;
            let (storage, size) = parse_rootfs(&rootfs)?;
            let spec = CreateSpec {
                template: Template::parse(&ostemplate),
                storage,
                size,
                hostname,
                unprivileged,
            };
            let cfg = rt.create(vmid.get(), &spec)?;
            outln!(
                "CT {vmid} created (rootfs {})",
                cfg.get("rootfs").unwrap_or("?")
            )?;
        }
        Action::Start { vmid, skiplock } => {
            let _l = lock(global, vmid)?;
            for m in rt.recover(vmid.get()) {
                eprintln!("WARN: {m}");
            }
            let cfg = rt.config(vmid.get())?;
            if let (Some(l), false) = (cfg.lock(), skiplock) {
                bail!("CT {vmid} is locked ({l})");
            }
            rt.start(vmid.get())?;
            let pid = rt.state(vmid.get())?.pid().unwrap_or(0);
            outln!("CT {vmid} started (pid {pid})")?;
        }
        Action::Shutdown { vmid, timeout } => {
            let _l = lock(global, vmid)?;
            rt.config(vmid.get())?;
            if rt.state(vmid.get())? == CtState::Stopped {
                outln!("CT {vmid} was not running")?;
            } else {
                rt.shutdown(vmid.get(), Duration::from_secs(timeout))?;
                outln!("CT {vmid} shut down")?;
            }
        }
        Action::Stop { vmid } => {
            let _l = lock(global, vmid)?;
            rt.config(vmid.get())?;
            let was = rt.state(vmid.get())? != CtState::Stopped;
            rt.stop(vmid.get())?;
            outln!(
                "CT {vmid} {}",
                if was { "stopped" } else { "was not running" }
            )?;
        }
        Action::Status {
            vmid,
            output_format,
        } => {
            rt.config(vmid.get())?;
            let state = rt.state(vmid.get())?;
            if output_format == Format::Json {
                outln!(
                    "{}",
                    serde_json::json!({"vmid": vmid.get(), "status": state.as_str(), "pid": state.pid()})
                )?;
            } else {
                outln!("status: {}", state.as_str())?;
                if let Some(pid) = state.pid() {
                    outln!("pid: {pid}")?;
                }
            }
        }
        Action::List { output_format } => {
            let list = rt.list()?;
            if output_format == Format::Json {
                let v: Vec<_> = list
                    .iter()
                    .map(|c| serde_json::json!({"vmid": c.vmid, "name": c.hostname, "status": c.state.as_str(), "pid": c.state.pid()}))
                    .collect();
                outln!("{}", serde_json::Value::Array(v))?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|c| {
                        vec![
                            c.vmid.to_string(),
                            c.state.as_str().to_string(),
                            c.hostname.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                crate::output::table(&["VMID", "Status", "Name"], &rows)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

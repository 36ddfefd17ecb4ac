//! The container runtime: LXC configs generated from Proxmox container configs into a private
//! LXC path (`<run base>/lxc/<vmid>/config`, container name = VMID), and start, shutdown,
//! stop, freeze, thaw and status through LXC's tools.
//!
//! Freezing goes through `lxc-freeze` (LXC then reports FROZEN itself) and is confirmed in the
//! freezer cgroup (v1 `freezer.state`, or v2 `cgroup.events`), which is what really stops
//! the tasks. Guards undo a freeze or a backup's stop on every way out, and write a marker
//! first (`frozen-by`, `stopped-by`: owner pid and start time), so a run killed in between is
//! repaired by the next one ([`Runtime::recover`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmdump_config::{ConfigRoot, LxcConfig};
use vmdump_launch::ProcId;

use crate::error::{Error, Result};
use crate::mount::{self, Access};
use crate::tool;
use crate::volume::{self, CtVolume, Layout, OtherMount};

/// How long a freeze or thaw may take to show in the cgroup.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(30);
/// Marker of a freeze in progress.
const FROZEN_MARKER: &str = "frozen-by";
/// Marker of a container stopped by a backup that must be started again.
const STOPPED_MARKER: &str = "stopped-by";

/// A container's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtState {
    /// Not running.
    Stopped,
    /// Running; the pid of its init.
    Running(u32),
    /// Running with all tasks frozen.
    Frozen(u32),
}

impl CtState {
    /// `stopped`, `running` or `frozen`.
    pub fn as_str(&self) -> &'static str {
        match self {
            CtState::Stopped => "stopped",
            CtState::Running(_) => "running",
            CtState::Frozen(_) => "frozen",
        }
    }

    /// The init pid of a running container.
    pub fn pid(&self) -> Option<u32> {
        match self {
            CtState::Running(p) | CtState::Frozen(p) => Some(*p),
            CtState::Stopped => None,
        }
    }
}

/// One container of `list`.
#[derive(Debug, Clone)]
pub struct CtSummary {
    /// The VMID.
    pub vmid: u32,
    /// `hostname`, if set.
    pub hostname: Option<String>,
    /// Its state.
    pub state: CtState,
}

/// The container runtime over a config root and a run base.
#[derive(Debug, Clone)]
pub struct Runtime {
    root: ConfigRoot,
    run_base: PathBuf,
}

fn parse_marker(text: &str) -> Option<ProcId> {
    let mut f = text.split_whitespace();
    Some(ProcId {
        pid: f.next()?.parse().ok()?,
        start: f.next()?.parse().ok()?,
    })
}

impl Runtime {
    /// A runtime reading configs from `root`, keeping LXC's files under `<run_base>/lxc`.
    pub fn new(root: ConfigRoot, run_base: impl Into<PathBuf>) -> Self {
        Runtime {
            root,
            run_base: run_base.into(),
        }
    }

    /// The config root.
    pub fn root(&self) -> &ConfigRoot {
        &self.root
    }

    /// The run base.
    pub fn run_base(&self) -> &Path {
        &self.run_base
    }

    /// LXC's private container path.
    pub fn lxcpath(&self) -> PathBuf {
        self.run_base.join("lxc")
    }

    /// The container's directory in the LXC path (generated config, log, markers, mounts).
    pub fn ct_dir(&self, vmid: u32) -> PathBuf {
        self.lxcpath().join(vmid.to_string())
    }

    fn lxc(&self, tool_name: &str, vmid: u32) -> Command {
        let mut c = Command::new(tool_name);
        c.arg("-P")
            .arg(self.lxcpath())
            .arg("-n")
            .arg(vmid.to_string());
        c
    }

    /// The container's config.
    pub fn config(&self, vmid: u32) -> Result<LxcConfig> {
        let path = self.root.lxc_config_path(vmid);
        if !path.exists() {
            return Err(Error::NoSuchContainer { vmid, path });
        }
        self.root
            .lxc_config(vmid)
            .map_err(|e| Error::config(vmid, e))
    }

    /// Whether a container config exists for `vmid`.
    pub fn exists(&self, vmid: u32) -> bool {
        self.root.lxc_config_path(vmid).exists()
    }

    /// The storage volumes of the config's mount points (rootfs first), and the bind and
    /// device mounts as `(key, mount path, what)`.
    #[allow(clippy::type_complexity)]
    pub fn volumes(
        &self,
        vmid: u32,
        cfg: &LxcConfig,
    ) -> Result<(Vec<CtVolume>, Vec<(String, String, OtherMount)>)> {
        let storage = self.root.storage().map_err(|e| Error::config(vmid, e))?;
        let rootfs = cfg
            .rootfs()
            .map_err(|e| Error::config(vmid, e))?
            .ok_or_else(|| Error::Unsupported {
                vmid,
                what: "the config has no rootfs".into(),
            })?;
        let mut mps = vec![rootfs];
        mps.extend(cfg.mount_points().map_err(|e| Error::config(vmid, e))?);
        let mut vols = Vec::new();
        let mut other = Vec::new();
        for mp in &mps {
            match volume::resolve(&storage, mp).map_err(|e| Error::config(vmid, e))? {
                Ok(v) => vols.push(v),
                Err(o) => other.push((mp.key.clone(), mp.path().to_string(), o)),
            }
        }
        if vols.first().is_none_or(|v| v.key != "rootfs") {
            return Err(Error::Unsupported {
                vmid,
                what: "rootfs is not a storage volume".into(),
            });
        }
        Ok((vols, other))
    }

    /// The LXC config text for the container. Image mount points are bound in from where
    /// `staged` has them mounted on the host (key, directory).
    pub fn lxc_config_text(
        &self,
        vmid: u32,
        cfg: &LxcConfig,
        staged: &[(String, PathBuf)],
    ) -> Result<String> {
        let (vols, other) = self.volumes(vmid, cfg)?;
        let mut s = String::new();
        let host = cfg
            .hostname()
            .map_or_else(|| format!("CT{vmid}"), str::to_string);
        s.push_str(&format!("lxc.uts.name = {host}\n"));
        let root = &vols[0];
        match root.layout {
            Layout::Image | Layout::ImageInSubvolume => {
                s.push_str(&format!("lxc.rootfs.path = loop:{}\n", root.path.display()));
            }
            Layout::Dir | Layout::Subvolume => {
                s.push_str(&format!("lxc.rootfs.path = dir:{}\n", root.path.display()));
            }
        }
        // No bridge on the hosts vmdump runs on by default: the network is the container's
        // own (`net0` is kept in the config and archives, not wired up).
        s.push_str("lxc.net.0.type = empty\n");
        s.push_str("lxc.autodev = 1\n");
        s.push_str("lxc.mount.auto = proc:mixed sys:mixed cgroup:mixed\n");
        if cfg.unprivileged() {
            s.push_str("lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n");
        }
        for v in &vols[1..] {
            let source = if v.layout.is_image() {
                staged
                    .iter()
                    .find(|(k, _)| *k == v.key)
                    .map(|(_, d)| d.clone())
                    .ok_or_else(|| Error::Unsupported {
                        vmid,
                        what: format!("{}: the image is not mounted", v.key),
                    })?
            } else {
                v.path.clone()
            };
            s.push_str(&format!(
                "lxc.mount.entry = {} {} none rbind,create=dir 0 0\n",
                source.display(),
                v.mp.trim_start_matches('/')
            ));
        }
        for (key, mp, o) in &other {
            let (OtherMount::Bind(p) | OtherMount::Device(p)) = o;
            let _ = key;
            s.push_str(&format!(
                "lxc.mount.entry = {} {} none rbind,create=dir 0 0\n",
                p.display(),
                mp.trim_start_matches('/')
            ));
        }
        for (k, v) in cfg.entries() {
            if k.starts_with("lxc.") {
                s.push_str(&format!("{k} = {v}\n"));
            }
        }
        Ok(s)
    }

    /// The container's state, from LXC, with a freeze confirmed in the cgroup (a container
    /// frozen through the cgroup alone also reads as frozen).
    pub fn state(&self, vmid: u32) -> Result<CtState> {
        if !self.ct_dir(vmid).join("config").exists() {
            return Ok(CtState::Stopped);
        }
        let out = tool::run(self.lxc("lxc-info", vmid).args(["-s", "-p"]))?;
        let mut state = "";
        let mut pid = None;
        for l in out.lines() {
            if let Some(v) = l.strip_prefix("State:") {
                state = v.trim();
            } else if let Some(v) = l.strip_prefix("PID:") {
                pid = v.trim().parse().ok();
            }
        }
        Ok(match (state, pid) {
            ("RUNNING" | "FROZEN" | "FREEZING" | "THAWED", Some(p)) => {
                if state == "FROZEN" || self.cgroup_frozen(vmid) == Some(true) {
                    CtState::Frozen(p)
                } else {
                    CtState::Running(p)
                }
            }
            _ => CtState::Stopped,
        })
    }

    /// Whether the container's freezer cgroup is frozen or freezing (`None` if there is
    /// none): either way its tasks do not run and it needs a thaw.
    pub fn cgroup_frozen(&self, vmid: u32) -> Option<bool> {
        self.freezer_state(vmid)
            .map(|(frozen, freezing)| frozen || freezing)
    }

    /// The freezer's state: (completely frozen, freezing in progress).
    fn freezer_state(&self, vmid: u32) -> Option<(bool, bool)> {
        let v1 = PathBuf::from(format!(
            "/sys/fs/cgroup/freezer/lxc.payload.{vmid}/freezer.state"
        ));
        if let Ok(s) = std::fs::read_to_string(&v1) {
            return Some((s.trim() == "FROZEN", s.trim() == "FREEZING"));
        }
        for base in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
            let ev = PathBuf::from(format!("{base}/lxc.payload.{vmid}/cgroup.events"));
            if let Ok(s) = std::fs::read_to_string(&ev) {
                let frozen = s.lines().any(|l| l.trim() == "frozen 1");
                let asked = std::fs::read_to_string(ev.with_file_name("cgroup.freeze"))
                    .is_ok_and(|f| f.trim() == "1");
                return Some((frozen, asked && !frozen));
            }
        }
        None
    }

    /// Starts the container (it keeps running after vmdump exits).
    pub fn start(&self, vmid: u32) -> Result<()> {
        let cfg = self.config(vmid)?;
        if self.state(vmid)? != CtState::Stopped {
            return Err(Error::State {
                vmid,
                state: "already running".into(),
            });
        }
        let dir = self.ct_dir(vmid);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
        // Image mount points (the rootfs image is LXC's own `loop:`): mounted here, bound
        // into the container by `lxc-start`, and unmounted here once it runs. The
        // container's mount namespace keeps its copy (and the loop device) until it stops.
        let (vols, _) = self.volumes(vmid, &cfg)?;
        let mut mounts = Vec::new();
        for v in vols.iter().skip(1).filter(|v| v.layout.is_image()) {
            mounts.push((v.key.clone(), Access::open(&v.path, v.layout, &dir, false)?));
        }
        let staged: Vec<(String, PathBuf)> = mounts
            .iter()
            .map(|(k, a)| (k.clone(), a.dir().to_path_buf()))
            .collect();
        let text = self.lxc_config_text(vmid, &cfg, &staged)?;
        // LXC's unprivileged children must be able to reach the container directory.
        use std::os::unix::fs::PermissionsExt;
        for d in [&self.run_base, &self.lxcpath(), &dir] {
            let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755));
        }
        vmdump_config::write_atomic(&dir.join("config"), text.as_bytes())
            .map_err(|e| Error::config(vmid, e))?;
        let log = dir.join("lxc.log");
        let mut cmd = self.lxc("lxc-start", vmid);
        cmd.arg("-l").arg("WARN").arg("-o").arg(&log);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let describe = tool::describe(&cmd);
        // lxc-start daemonizes its monitor: started without the death signal, awaited.
        let mut child = vmdump_launch::spawn::spawn(cmd).map_err(|source| Error::Spawn {
            program: "lxc-start".into(),
            source,
        })?;
        let status = child
            .wait()
            .map_err(|e| Error::io("wait for", "lxc-start", e))?;
        if !status.success() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            // The first errors say why; the last ones only that the start failed.
            let errors: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("ERROR"))
                .map(|l| l.split_once(" - ").map_or(l, |(_, m)| m))
                .collect();
            return Err(Error::Tool {
                command: describe,
                status: status.to_string(),
                stderr: errors[..errors.len().min(3)].join("; "),
            });
        }
        // The container runs with its own copies of the image mounts.
        drop(mounts);
        Ok(())
    }

    /// Shuts the container down cleanly (its halt signal), waiting up to `timeout`; never
    /// kills it. A frozen container is thawed first (it could not handle the signal).
    pub fn shutdown(&self, vmid: u32, timeout: Duration) -> Result<()> {
        if let CtState::Frozen(_) = self.state(vmid)? {
            self.thaw(vmid)?;
        }
        let secs = timeout.as_secs().max(1);
        let res = tool::run(
            self.lxc("lxc-stop", vmid)
                .arg("--nokill")
                .arg("-t")
                .arg(secs.to_string()),
        );
        if self.state(vmid)? != CtState::Stopped {
            return Err(match res {
                Err(e @ Error::Spawn { .. }) => e,
                _ => Error::ShutdownTimeout { vmid, secs },
            });
        }
        Ok(())
    }

    /// Stops the container at once (SIGKILL to its init).
    pub fn stop(&self, vmid: u32) -> Result<()> {
        if let CtState::Frozen(_) = self.state(vmid)? {
            self.thaw(vmid)?;
        }
        if self.state(vmid)? == CtState::Stopped {
            return Ok(());
        }
        tool::run(self.lxc("lxc-stop", vmid).arg("-k")).map(|_| ())
    }

    fn wait_cgroup(&self, vmid: u32, frozen: bool) -> Result<()> {
        let deadline = Instant::now() + FREEZE_TIMEOUT;
        loop {
            match self.freezer_state(vmid) {
                Some((done, freezing)) if done == frozen && !freezing => return Ok(()),
                None => return Ok(()),
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(Error::State {
                    vmid,
                    state: format!(
                        "not {} after {} seconds",
                        if frozen { "frozen" } else { "thawed" },
                        FREEZE_TIMEOUT.as_secs()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The container's freezer control: v1 `freezer.state` (what LXC uses on hybrid hosts) or
    /// v2 `cgroup.freeze`.
    fn freezer(&self, vmid: u32) -> Option<(PathBuf, bool)> {
        let v1 = PathBuf::from(format!(
            "/sys/fs/cgroup/freezer/lxc.payload.{vmid}/freezer.state"
        ));
        if v1.exists() {
            return Some((v1, true));
        }
        ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .iter()
            .map(|b| PathBuf::from(format!("{b}/lxc.payload.{vmid}/cgroup.freeze")))
            .find(|p| p.exists())
            .map(|p| (p, false))
    }

    /// Freezes all tasks of the container, as Proxmox does: `FROZEN` into the v1 freezer (or
    /// `1` into v2's `cgroup.freeze`), then polls until the cgroup reports it (`lxc-freeze`
    /// where there is neither). LXC itself keeps reporting RUNNING; [`Runtime::state`] reads
    /// the cgroup.
    pub fn freeze(&self, vmid: u32) -> Result<()> {
        match self.freezer(vmid) {
            Some((path, v1)) => {
                std::fs::write(&path, if v1 { "FROZEN" } else { "1" })
                    .map_err(|e| Error::io("freeze", &path, e))?;
            }
            None => {
                tool::run(&mut self.lxc("lxc-freeze", vmid))?;
            }
        }
        self.wait_cgroup(vmid, true)
    }

    /// Thaws the container (the freezer written back, or `lxc-unfreeze`), confirmed in the
    /// cgroup.
    pub fn thaw(&self, vmid: u32) -> Result<()> {
        match self.freezer(vmid) {
            Some((path, v1)) => {
                std::fs::write(&path, if v1 { "THAWED" } else { "0" })
                    .map_err(|e| Error::io("thaw", &path, e))?;
            }
            None => {
                tool::run(&mut self.lxc("lxc-unfreeze", vmid))?;
            }
        }
        self.wait_cgroup(vmid, false)
    }

    fn write_marker(&self, vmid: u32, name: &str) -> Result<PathBuf> {
        let dir = self.ct_dir(vmid);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
        let me = ProcId::current();
        let path = dir.join(name);
        std::fs::write(&path, format!("{} {}\n", me.pid, me.start))
            .map_err(|e| Error::io("write", &path, e))?;
        Ok(path)
    }

    /// Freezes the container until the guard is thawed or dropped. A marker records the
    /// freeze first, so a killed run's freeze is undone by the next run.
    pub fn freeze_guarded(&self, vmid: u32) -> Result<FrozenGuard<'_>> {
        let marker = self.write_marker(vmid, FROZEN_MARKER)?;
        let since = Instant::now();
        if let Err(e) = self.freeze(vmid) {
            let _ = self.thaw(vmid);
            let _ = std::fs::remove_file(&marker);
            return Err(e);
        }
        Ok(FrozenGuard {
            rt: self,
            vmid,
            since,
            marker,
            done: false,
        })
    }

    /// Shuts the container down cleanly within `timeout` for a backup; the guard starts it
    /// again when restarted or dropped (a marker lets the next run do it if this one is
    /// killed).
    pub fn stop_guarded(&self, vmid: u32, timeout: Duration) -> Result<StoppedGuard<'_>> {
        let marker = self.write_marker(vmid, STOPPED_MARKER)?;
        let guard = StoppedGuard {
            rt: self,
            vmid,
            marker,
            done: false,
        };
        self.shutdown(vmid, timeout)?;
        Ok(guard)
    }

    /// Repairs what a killed vmdump run left for this container: thaws a container it froze,
    /// starts a container it stopped for a backup, removes its temporary mounts. Returns one
    /// message per repair.
    pub fn recover(&self, vmid: u32) -> Vec<String> {
        let mut out = Vec::new();
        let dir = self.ct_dir(vmid);
        for (name, what) in [(FROZEN_MARKER, "frozen"), (STOPPED_MARKER, "stopped")] {
            let path = dir.join(name);
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let owner = parse_marker(&text);
            if owner.is_some_and(|o| o.is_alive()) {
                continue;
            }
            let pid = owner.map_or(0, |o| o.pid);
            let res = match (what, self.state(vmid)) {
                ("frozen", Ok(CtState::Frozen(_))) => self.thaw(vmid).map(|()| "thawed it"),
                ("stopped", Ok(CtState::Stopped)) => self.start(vmid).map(|()| "started it again"),
                (_, Ok(_)) => Ok("nothing to do"),
                (_, Err(e)) => Err(e),
            };
            match res {
                Ok(done) => {
                    if done != "nothing to do" {
                        out.push(format!(
                            "CT {vmid} was left {what} by an interrupted vmdump run (pid {pid}): {done}"
                        ));
                    }
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => out.push(format!(
                    "CT {vmid} was left {what} by an interrupted vmdump run (pid {pid}) and cannot be repaired: {e}"
                )),
            }
        }
        out.extend(mount::reap_stale(&dir));
        out
    }

    /// All containers with their state, by VMID.
    pub fn list(&self) -> Result<Vec<CtSummary>> {
        let ids = self.root.lxc_vmids().map_err(|e| Error::config(0, e))?;
        let mut out = Vec::new();
        for vmid in ids {
            let hostname = self
                .config(vmid)
                .ok()
                .and_then(|c| c.hostname().map(str::to_string));
            out.push(CtSummary {
                vmid,
                hostname,
                state: self.state(vmid)?,
            });
        }
        Ok(out)
    }
}

/// A frozen container; thawed by [`FrozenGuard::thaw`] or on drop.
#[derive(Debug)]
pub struct FrozenGuard<'a> {
    rt: &'a Runtime,
    vmid: u32,
    since: Instant,
    marker: PathBuf,
    done: bool,
}

impl FrozenGuard<'_> {
    /// Thaws; returns how long the container was frozen.
    pub fn thaw(mut self) -> Result<Duration> {
        self.done = true;
        let res = self.rt.thaw(self.vmid);
        let took = self.since.elapsed();
        if res.is_ok() {
            let _ = std::fs::remove_file(&self.marker);
        }
        res.map(|()| took)
    }
}

impl Drop for FrozenGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            match self.rt.thaw(self.vmid) {
                Ok(()) => {
                    let _ = std::fs::remove_file(&self.marker);
                }
                Err(e) => tracing::error!("CT {}: cannot thaw: {e}", self.vmid),
            }
        }
    }
}

/// A container stopped for a backup; started again by [`StoppedGuard::restart`] or on drop.
#[derive(Debug)]
pub struct StoppedGuard<'a> {
    rt: &'a Runtime,
    vmid: u32,
    marker: PathBuf,
    done: bool,
}

impl StoppedGuard<'_> {
    /// Starts the container again.
    pub fn restart(mut self) -> Result<()> {
        self.done = true;
        let res = self.rt.start(self.vmid);
        let res = match res {
            Err(Error::State { .. }) => Ok(()),
            r => r,
        };
        if res.is_ok() {
            let _ = std::fs::remove_file(&self.marker);
        }
        res
    }
}

impl Drop for StoppedGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            match self.rt.start(self.vmid) {
                Ok(()) | Err(Error::State { .. }) => {
                    let _ = std::fs::remove_file(&self.marker);
                }
                Err(e) => tracing::error!("CT {}: cannot start again: {e}", self.vmid),
            }
        }
    }
}

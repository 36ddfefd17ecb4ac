//! The QEMU command line for a qemu-server config.
//!
//! # Block node and device naming (the backup engine relies on this)
//!
//! For every disk `<key>` (`scsi0`, `virtio1`, `sata0`, `ide0`, `efidisk0`, `tpmstate0`):
//!
//! | thing | name | example |
//! | --- | --- | --- |
//! | protocol node (`file`/`host_device`) | `file-<key>` | `file-scsi0` |
//! | format node (`raw`/`qcow2`/`vmdk`), the node the guest device uses and the backup reads | `drive-<key>` | `drive-scsi0` |
//! | qdev id of the guest device | `<key>` | `scsi0` |
//! | QOM path of the device | `/machine/peripheral/<key>`; for virtio-blk the block backend sits at `/machine/peripheral/<key>/virtio-backend` | |
//! | `qdev` in `query-block` ([`DiskNode::block_qdev`]) | `<key>`; virtio-blk: `/machine/peripheral/<key>/virtio-backend` | `scsi0` |
//!
//! Live-restore ([`DiskOverlay`]): the disk's volume keeps the names above but gets no
//! device; the device uses the qcow2 overlay `vmdump-lr-ovl-<key>` (file node
//! `vmdump-lr-ovlf-<key>`) whose backing is the read-only NBD node `vmdump-lr-src-<key>`,
//! until a mirror pivots it onto `drive-<key>`.
//!
//! `efidisk0` and `tpmstate0` get nodes but no guest device unless `bios: ovmf` (then
//! `efidisk0` is the OVMF variable store, `pflash1`). There is no swtpm: the TPM state is only
//! kept addressable for backups. CD-ROMs get `ide-cd`/`scsi-cd` devices and read-only nodes;
//! empty drives (`none`) get no device.
//!
//! Controllers: SCSI per `scsihw` (`lsi` default, `virtio-scsi-pci`, `virtio-scsi-single`,
//! `megasas`, `pvscsi`) with ids `scsihw<N>` (or `virtioscsi<N>` per disk for
//! `virtio-scsi-single`); SATA on an `ahci` device `ahci0` (ports `ahci0.<N>`); IDE on the
//! machine's built-in controller (`ide.<N/2>` unit `<N%2>` on `pc`, `ide.<N>` on `q35`).
//!
//! Cache: `cache=none|directsync` (and no `cache=` when the image accepts `O_DIRECT`, as
//! Proxmox defaults to `none`) → `cache.direct=on`; `unsafe` → `cache.no-flush=on`;
//! `writethrough|directsync` → device `write-cache=off`.
//!
//! Networks: `netN` become `-netdev user` (slirp) backends with the configured model and MAC;
//! vmdump runs standalone without Proxmox's bridges and tap scripts.

use std::path::PathBuf;

use serde_json::json;
use tracing::{debug, warn};
use vmdump_config::{Bus, Drive, DriveKey, QemuConfig, StorageConfig, VolumeRef};

use crate::accel::Accel;
use crate::error::{Error, Result};
use crate::rundir::RunDir;

/// One disk as QEMU sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskNode {
    /// The config key.
    pub key: DriveKey,
    /// Format node name: `drive-<key>`.
    pub node_name: String,
    /// Protocol node name: `file-<key>`.
    pub file_node_name: String,
    /// qdev id of the guest device (`<key>`), `None` for node-only disks.
    pub qdev_id: Option<String>,
    /// QOM path holding the block backend (`/machine/peripheral/<key>[/virtio-backend]`).
    pub qom_path: Option<String>,
    /// The image file or block device.
    pub path: PathBuf,
    /// Image format.
    pub format: String,
    /// Whether the node is read-only (CD-ROMs, `ro=1`).
    pub read_only: bool,
    /// Whether it is a CD-ROM.
    pub cdrom: bool,
}

impl DiskNode {
    /// The `qdev` value `query-block` reports for this disk: the qdev id (`scsi0`) for devices
    /// QEMU names by id, the backend's QOM path for virtio-blk
    /// (`/machine/peripheral/virtio1/virtio-backend`); `None` for node-only disks.
    pub fn block_qdev(&self) -> Option<String> {
        let id = self.qdev_id.as_ref()?;
        Some(match self.key.bus {
            Bus::Virtio => qom_path(self.key),
            _ => id.clone(),
        })
    }
}

/// Everything needed to start a VM.
#[derive(Debug, Clone)]
pub struct LaunchPlan {
    /// The VMID.
    pub vmid: u32,
    /// Arguments after the program name (including `-daemonize` and `-pidfile`).
    pub args: Vec<String>,
    /// The disks, in config order.
    pub disks: Vec<DiskNode>,
    /// The accelerator chosen.
    pub accel: Accel,
    /// Whether a guest agent channel is configured.
    pub agent: bool,
}

/// A disk started on a temporary overlay instead of its volume (live-restore): the guest
/// device uses a qcow2 overlay (guest writes) over a read-only NBD export (the data not
/// copied yet); the volume is opened under its usual node names without a device, the
/// target of the mirror that later moves the device onto it. Node names: [`overlay_nodes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskOverlay {
    /// The config key (`scsi0`).
    pub key: String,
    /// The overlay: an empty qcow2 image of the disk's size, without a backing file of its
    /// own.
    pub overlay: PathBuf,
    /// The NBD server's unix socket.
    pub socket: PathBuf,
    /// The export name on that server.
    pub export: String,
}

/// The node names of a live-restore overlay of disk `key`: `(nbd source, overlay, overlay
/// file)` = `vmdump-lr-src-<key>`, `vmdump-lr-ovl-<key>`, `vmdump-lr-ovlf-<key>`.
pub fn overlay_nodes(key: &str) -> (String, String, String) {
    (
        format!("vmdump-lr-src-{key}"),
        format!("vmdump-lr-ovl-{key}"),
        format!("vmdump-lr-ovlf-{key}"),
    )
}

/// Build inputs that do not come from the config.
#[derive(Debug, Clone)]
pub(crate) struct BuildInput<'a> {
    pub vmid: u32,
    pub run: &'a RunDir,
    pub accel: Accel,
    pub paused: bool,
    pub daemonize: bool,
    /// A backup helper: only the drives with these keys, as block nodes without guest
    /// devices, under `-machine none` (no firmware, memory or CPU setup).
    pub only: Option<&'a [String]>,
    /// Disks started on a live-restore overlay.
    pub overlays: &'a [DiskOverlay],
}

/// The node names of a disk key (without building anything).
pub fn node_names(key: DriveKey) -> (String, String) {
    (format!("drive-{key}"), format!("file-{key}"))
}

/// QOM path of a disk's block backend.
pub fn qom_path(key: DriveKey) -> String {
    match key.bus {
        Bus::Virtio => format!("/machine/peripheral/{key}/virtio-backend"),
        _ => format!("/machine/peripheral/{key}"),
    }
}

struct Builder<'a> {
    vmid: u32,
    /// Whether guest devices are added (false for a backup helper).
    devices: bool,
    args: Vec<String>,
    machine_is_q35: bool,
    boot: Vec<String>,
    scsihw: &'a str,
    scsi_controllers: std::collections::BTreeSet<String>,
    ahci: bool,
    overlays: &'a [DiskOverlay],
}

impl Builder<'_> {
    fn push(&mut self, a: impl Into<String>, b: impl Into<String>) {
        self.args.push(a.into());
        self.args.push(b.into());
    }

    fn unsupported(&self, what: String) -> Error {
        Error::Unsupported {
            vmid: self.vmid,
            what,
        }
    }

    fn bootindex(&self, key: &str) -> String {
        match self.boot.iter().position(|k| k == key) {
            Some(i) => format!(",bootindex={}", 100 + i),
            None => String::new(),
        }
    }
}

/// Map a Proxmox machine type to one QEMU 7.2 knows: drop `+pveN`, and fall back to the
/// unversioned alias for versions newer than 7.2.
fn machine_type(cfg: &QemuConfig) -> String {
    let Some(m) = cfg.machine() else {
        return "pc".into();
    };
    let m = m.split('+').next().unwrap_or(&m).to_string();
    let versioned = |prefix: &str, alias: &str| -> Option<String> {
        let v = m.strip_prefix(prefix)?;
        let mut it = v.split('.');
        let major: u32 = it.next()?.parse().ok()?;
        let minor: u32 = it.next().unwrap_or("0").parse().ok()?;
        Some(if (major, minor) > (7, 2) {
            alias.to_string()
        } else {
            m.clone()
        })
    };
    versioned("pc-q35-", "q35")
        .or_else(|| versioned("pc-i440fx-", "pc"))
        .unwrap_or(m)
}

pub(crate) fn build(
    cfg: &QemuConfig,
    storage: &StorageConfig,
    input: &BuildInput<'_>,
) -> Result<LaunchPlan> {
    let vmid = input.vmid;
    let cerr = |source| Error::Config { vmid, source };
    let machine = machine_type(cfg);
    if let Some(only) = input.only {
        return build_helper(cfg, storage, input, only);
    }
    let mut b = Builder {
        vmid,
        devices: true,
        args: Vec::new(),
        machine_is_q35: machine.contains("q35"),
        boot: cfg.boot_order(),
        scsihw: cfg.get("scsihw").unwrap_or("lsi"),
        scsi_controllers: Default::default(),
        ahci: false,
        overlays: input.overlays,
    };
    let run = input.run;
    let name = cfg
        .name()
        .map(str::to_string)
        .unwrap_or(format!("vm{vmid}"));
    b.push("-name", format!("{name},debug-threads=on"));
    let mut machine_opt = format!("{machine},accel={}", input.accel);
    if cfg.get("acpi").and_then(vmdump_config::parse_bool) == Some(false) {
        machine_opt.push_str(",acpi=off");
    }
    let ovmf = cfg.bios() == "ovmf";
    if ovmf {
        machine_opt.push_str(",pflash0=pflash-code");
    }
    if let Some(uuid) = cfg
        .get("smbios1")
        .and_then(|s| vmdump_config::PropertyString::parse(s, None).ok())
        .and_then(|p| p.get("uuid").map(str::to_string))
    {
        b.push("-uuid", uuid);
    }
    b.push("-m", cfg.memory_mib().map_err(cerr)?.to_string());
    let sockets = cfg.sockets().map_err(cerr)?;
    let cores = cfg.cores().map_err(cerr)?;
    let max = sockets * cores;
    let vcpus = cfg.vcpus().map_err(cerr)?.unwrap_or(max).min(max);
    b.push(
        "-smp",
        format!("{vcpus},sockets={sockets},cores={cores},maxcpus={max}"),
    );
    if let Some(cpu) = cfg.get("cpu") {
        let p = vmdump_config::PropertyString::parse(cpu, Some("cputype")).map_err(cerr)?;
        if let Some(t) = p.get("cputype") {
            let t = if t == "host" && input.accel == Accel::Tcg {
                "max"
            } else {
                t
            };
            b.push("-cpu", t);
        }
    }
    monitors(&mut b, run);
    b.push(
        "-chardev",
        format!("file,id=serial0,path={}", comma(&run.serial_log())),
    );
    b.push("-serial", "chardev:serial0");
    b.push("-pidfile", run.pidfile().display().to_string());
    if input.daemonize {
        b.args.push("-daemonize".into());
    }
    if input.paused {
        b.args.push("-S".into());
    }
    let agent = cfg.agent().map_err(cerr)?;
    if agent.enabled {
        b.push(
            "-chardev",
            format!(
                "socket,id=qga0,path={},server=on,wait=off",
                comma(&run.qga_socket())
            ),
        );
        if agent.kind == "isa" {
            b.push("-device", "isa-serial,chardev=qga0");
        } else {
            b.push("-device", "virtio-serial-pci,id=qga-serial0");
            b.push(
                "-device",
                "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            );
        }
    }

    let mut disks = Vec::new();
    for drive in cfg.drives().map_err(cerr)? {
        if let Some(d) = add_drive(&mut b, storage, &drive)? {
            disks.push(d);
        }
    }
    if ovmf {
        let efi = disks.iter().any(|d| d.key.bus == Bus::EfiDisk);
        let code = ovmf_code(cfg).ok_or_else(|| {
            b.unsupported("bios ovmf needs OVMF firmware (/usr/share/OVMF, package ovmf)".into())
        })?;
        b.push(
            "-blockdev",
            json!({"driver": "raw", "node-name": "pflash-code", "read-only": true,
                   "file": {"driver": "file", "filename": code, "read-only": true}})
            .to_string(),
        );
        if efi {
            machine_opt.push_str(",pflash1=drive-efidisk0");
        }
    }
    b.args.splice(0..0, ["-machine".to_string(), machine_opt]);

    for net in cfg.nets().map_err(cerr)? {
        let i = net.index;
        let model = net.model().unwrap_or("virtio");
        let dev = match model {
            "virtio" => "virtio-net-pci",
            other => other,
        };
        b.push("-netdev", format!("user,id=net{i}"));
        let mut d = format!("{dev},netdev=net{i},id=net{i}");
        if let Some(mac) = net.macaddr() {
            d.push_str(&format!(",mac={mac}"));
        }
        d.push_str(&b.bootindex(&format!("net{i}")));
        b.push("-device", d);
        if net.link_down() {
            warn!("VM {vmid}: net{i}: link_down is not supported, the link is up");
        }
    }

    b.args.extend(cfg.args().map_err(cerr)?);
    debug!(vmid, args = ?b.args, "qemu command line");
    Ok(LaunchPlan {
        vmid,
        args: b.args,
        disks,
        accel: input.accel,
        agent: agent.enabled,
    })
}

/// `-nodefaults`, no display, the two QMP monitors of the run directory.
fn monitors(b: &mut Builder<'_>, run: &RunDir) {
    b.args
        .extend(["-nodefaults".into(), "-no-user-config".into()]);
    b.push("-display", "none");
    for (id, sock) in [("qmp", run.qmp_socket()), ("qmp-ctl", run.control_socket())] {
        b.push(
            "-chardev",
            format!("socket,id={id},path={},server=on,wait=off", comma(&sock)),
        );
        b.push("-mon", format!("chardev={id},mode=control"));
    }
}

/// The command line of a backup helper: the drives `only` under the VM's node names, paused,
/// `-machine none`, the VM's monitors and pid file, no guest devices.
fn build_helper(
    cfg: &QemuConfig,
    storage: &StorageConfig,
    input: &BuildInput<'_>,
    only: &[String],
) -> Result<LaunchPlan> {
    let vmid = input.vmid;
    let cerr = |source| Error::Config { vmid, source };
    let mut b = Builder {
        vmid,
        devices: false,
        args: vec!["-machine".into(), "none".into(), "-S".into()],
        machine_is_q35: false,
        boot: Vec::new(),
        scsihw: "lsi",
        scsi_controllers: Default::default(),
        ahci: false,
        overlays: &[],
    };
    monitors(&mut b, input.run);
    b.push("-pidfile", input.run.pidfile().display().to_string());
    let mut disks = Vec::new();
    for drive in cfg.drives().map_err(cerr)? {
        if !only.iter().any(|k| *k == drive.key.to_string()) {
            continue;
        }
        if let Some(d) = add_drive(&mut b, storage, &drive)? {
            disks.push(d);
        }
    }
    debug!(vmid, args = ?b.args, "backup helper command line");
    Ok(LaunchPlan {
        vmid,
        args: b.args,
        disks,
        accel: input.accel,
        agent: false,
    })
}

fn ovmf_code(cfg: &QemuConfig) -> Option<PathBuf> {
    let four_m = cfg
        .get("efidisk0")
        .is_some_and(|v| v.contains("efitype=4m"));
    let candidates: &[&str] = if four_m {
        &[
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_CODE.fd",
        ]
    } else {
        &[
            "/usr/share/OVMF/OVMF_CODE.fd",
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
        ]
    };
    candidates.iter().map(PathBuf::from).find(|p| p.is_file())
}

use vmdump_launch::qemu_opt_path as comma;

fn add_drive(
    b: &mut Builder<'_>,
    storage: &StorageConfig,
    drive: &Drive,
) -> Result<Option<DiskNode>> {
    let vmid = b.vmid;
    let key = drive.key;
    let cerr = |source| Error::Config { vmid, source };
    let volume = drive.volume().map_err(cerr)?;
    let cdrom = drive.is_cdrom();
    let resolved = match &volume {
        VolumeRef::None => return Ok(None),
        VolumeRef::HostCdrom => {
            warn!("VM {vmid}: {key}: host CD-ROM passthrough is not supported, drive left out");
            return Ok(None);
        }
        v => storage
            .resolve_ref(v)
            .map_err(cerr)?
            .expect("volumes and paths resolve to a file"),
    };
    let path = resolved.path;
    let proto = vmdump_blockdev::raw::protocol_driver(&path).map_err(|_| Error::MissingImage {
        vmid,
        key: key.to_string(),
        path: path.clone(),
    })?;
    let format = drive.format().unwrap_or(&resolved.format).to_string();
    let read_only = cdrom || drive.read_only();
    let (node_name, file_node_name) = node_names(key);
    let cache = drive.cache();
    let direct = match cache {
        Some("none") | Some("directsync") => true,
        Some(_) => false,
        None => vmdump_blockdev::raw::supports_direct_io(&path),
    };
    let no_flush = cache == Some("unsafe");
    let write_cache_off = matches!(cache, Some("writethrough") | Some("directsync"));
    let mut file = json!({
        "driver": proto, "node-name": file_node_name, "filename": path,
        "cache": {"direct": direct, "no-flush": no_flush},
        "read-only": read_only,
    });
    let mut fmt = json!({
        "driver": format, "node-name": node_name, "file": file_node_name,
        "cache": {"direct": direct, "no-flush": no_flush},
        "read-only": read_only,
    });
    if drive.discard() {
        file["discard"] = json!("unmap");
        fmt["discard"] = json!("unmap");
    }
    b.push("-blockdev", file.to_string());
    b.push("-blockdev", fmt.to_string());
    // The node the guest device uses: the volume, or a live-restore overlay over NBD.
    let mut attach = node_name.clone();
    if let Some(o) = b.overlays.iter().find(|o| o.key == key.to_string()) {
        let (src, ovl, ovlf) = overlay_nodes(&o.key);
        b.push(
            "-blockdev",
            json!({"driver": "nbd", "node-name": src, "read-only": true, "export": o.export,
                   "server": {"type": "unix", "path": o.socket}})
            .to_string(),
        );
        b.push(
            "-blockdev",
            json!({"driver": "file", "node-name": ovlf, "filename": o.overlay}).to_string(),
        );
        b.push(
            "-blockdev",
            json!({"driver": "qcow2", "node-name": ovl, "file": ovlf, "backing": src}).to_string(),
        );
        attach = ovl;
    }
    if !b.devices {
        return Ok(Some(DiskNode {
            key,
            node_name,
            file_node_name,
            qdev_id: None,
            qom_path: None,
            path,
            format,
            read_only,
            cdrom,
        }));
    }

    let mut opts = String::new();
    if write_cache_off {
        opts.push_str(",write-cache=off");
    }
    // What the device does when a read or write of its disk fails (Proxmox passes them on as
    // given; QEMU's defaults: rerror=report, werror=enospc). A CD-ROM keeps the defaults.
    for (prop, allowed) in [
        ("rerror", &["ignore", "report", "stop"][..]),
        ("werror", &["enospc", "ignore", "report", "stop"][..]),
    ] {
        if let Some(v) = drive.get(prop).filter(|_| !cdrom) {
            if !allowed.contains(&v) {
                return Err(b.unsupported(format!(
                    "{key}: {prop} '{v}' is not one of {}",
                    allowed.join(", ")
                )));
            }
            opts.push_str(&format!(",{prop}={v}"));
        }
    }
    if let Some(serial) = drive.get("serial") {
        opts.push_str(&format!(",serial={serial}"));
    }
    opts.push_str(&b.bootindex(&key.to_string()));
    let id = key.to_string();
    let device = match key.bus {
        Bus::Virtio => {
            let mut d = format!("virtio-blk-pci,drive={attach},id={id}");
            if drive.iothread() {
                b.push("-object", format!("iothread,id=iothread-{id}"));
                d.push_str(&format!(",iothread=iothread-{id}"));
            }
            Some(d + &opts)
        }
        Bus::Scsi => {
            let bus = scsi_bus(b, key.index, drive.iothread())?;
            let kind = if cdrom { "scsi-cd" } else { "scsi-hd" };
            Some(format!("{kind},drive={attach},id={id},{bus}{opts}"))
        }
        Bus::Sata => {
            if !b.ahci {
                b.push("-device", "ahci,id=ahci0");
                b.ahci = true;
            }
            let kind = if cdrom { "ide-cd" } else { "ide-hd" };
            Some(format!(
                "{kind},drive={attach},id={id},bus=ahci0.{}{opts}",
                key.index
            ))
        }
        Bus::Ide => {
            let kind = if cdrom { "ide-cd" } else { "ide-hd" };
            let bus = if b.machine_is_q35 {
                format!("bus=ide.{}", key.index)
            } else {
                format!("bus=ide.{},unit={}", key.index / 2, key.index % 2)
            };
            Some(format!("{kind},drive={attach},id={id},{bus}{opts}"))
        }
        // OVMF vars are attached as pflash1 through -machine; the TPM state has no device.
        Bus::EfiDisk | Bus::TpmState => None,
    };
    let qdev_id = device.as_ref().map(|_| id.clone());
    if let Some(d) = device {
        b.push("-device", d);
    }
    Ok(Some(DiskNode {
        key,
        qom_path: qdev_id.as_ref().map(|_| qom_path(key)),
        node_name,
        file_node_name,
        qdev_id,
        path,
        format,
        read_only,
        cdrom,
    }))
}

/// The `bus=...` options of a SCSI disk, adding its controller on first use.
fn scsi_bus(b: &mut Builder<'_>, index: u32, iothread: bool) -> Result<String> {
    let (model, per_ctrl, virtio) = match b.scsihw {
        "lsi" => ("lsi53c895a", 7, false),
        "lsi53c810" => ("lsi53c810", 7, false),
        "megasas" => ("megasas", 7, false),
        "pvscsi" => ("pvscsi", 7, false),
        "virtio-scsi-pci" => ("virtio-scsi-pci", 256, true),
        "virtio-scsi-single" => ("virtio-scsi-pci", 1, true),
        other => return Err(b.unsupported(format!("scsihw '{other}' is not supported"))),
    };
    let single = b.scsihw == "virtio-scsi-single";
    let ctrl = index / per_ctrl;
    let unit = index % per_ctrl;
    let id = if single {
        format!("virtioscsi{index}")
    } else {
        format!("scsihw{ctrl}")
    };
    if b.scsi_controllers.insert(id.clone()) {
        let mut dev = format!("{model},id={id}");
        if single && iothread {
            b.push("-object", format!("iothread,id=iothread-{id}"));
            dev.push_str(&format!(",iothread=iothread-{id}"));
        }
        b.push("-device", dev);
    }
    Ok(if virtio {
        format!(
            "bus={id}.0,channel=0,scsi-id=0,lun={}",
            if single { 0 } else { unit }
        )
    } else {
        format!("bus={id}.0,scsi-id={unit}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_types() {
        let m =
            |v: &str| machine_type(&QemuConfig::parse(&format!("machine: {v}\n"), "x").unwrap());
        assert_eq!(m("q35"), "q35");
        assert_eq!(m("pc-q35-8.1+pve0"), "q35");
        assert_eq!(m("pc-i440fx-7.1"), "pc-i440fx-7.1");
        assert_eq!(m("pc-i440fx-9.0"), "pc");
        assert_eq!(m("type=q35,viommu=intel"), "q35");
        assert_eq!(
            machine_type(&QemuConfig::parse("name: a\n", "x").unwrap()),
            "pc"
        );
    }

    /// A VM with one empty raw `virtio0` on a `dir` storage in a temporary directory.
    struct OneDisk {
        vmid: u32,
        storage: StorageConfig,
        run: RunDir,
        _dir: tempfile::TempDir,
    }

    impl OneDisk {
        fn new(vmid: u32) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let storage = StorageConfig::parse(
                &format!(
                    "dir: local\n\tpath {}\n\tcontent images\n",
                    dir.path().display()
                ),
                "storage.cfg",
            )
            .unwrap();
            let images = dir.path().join(format!("images/{vmid}"));
            std::fs::create_dir_all(&images).unwrap();
            std::fs::write(images.join(format!("vm-{vmid}-disk-0.raw")), b"").unwrap();
            let run = RunDir::new(&dir.path().join("run"), vmid);
            OneDisk {
                vmid,
                storage,
                run,
                _dir: dir,
            }
        }

        /// The command line (joined) of the VM with `opts` appended to its drive.
        fn args(&self, opts: &str, overlays: &[DiskOverlay]) -> Result<String> {
            let vmid = self.vmid;
            let cfg = QemuConfig::parse(
                &format!("memory: 256\nvirtio0: local:{vmid}/vm-{vmid}-disk-0.raw,size=1M{opts}\n"),
                &format!("{vmid}.conf"),
            )
            .unwrap();
            let input = BuildInput {
                vmid,
                run: &self.run,
                accel: Accel::Tcg,
                paused: true,
                daemonize: false,
                only: None,
                overlays,
            };
            build(&cfg, &self.storage, &input).map(|p| p.args.join(" "))
        }
    }

    #[test]
    fn read_and_write_error_actions_reach_the_device_and_bad_ones_are_refused() {
        let vm = OneDisk::new(202);
        let args = |opts: &str| vm.args(opts, &[]);
        let ok = args(",werror=stop,rerror=stop").unwrap();
        assert!(
            ok.contains("virtio-blk-pci,drive=drive-virtio0,id=virtio0,rerror=stop,werror=stop"),
            "{ok}"
        );
        let default = args("").unwrap();
        assert!(!default.contains("error="), "{default}");
        let err = args(",werror=panic").unwrap_err().to_string();
        assert!(
            err.contains("virtio0: werror 'panic' is not one of enospc, ignore, report, stop"),
            "{err}"
        );
        assert!(args(",rerror=enospc").is_err());
    }

    #[test]
    fn a_live_restore_overlay_takes_the_device_and_the_volume_keeps_its_nodes() {
        let vm = OneDisk::new(201);
        let overlays = [DiskOverlay {
            key: "virtio0".into(),
            overlay: "/s/o.qcow2".into(),
            socket: "/r/live.nbd".into(),
            export: "drive-virtio0".into(),
        }];
        let args = vm.args("", &overlays).unwrap();
        assert!(
            args.contains("virtio-blk-pci,drive=vmdump-lr-ovl-virtio0,id=virtio0"),
            "{args}"
        );
        assert!(args.contains(r#""node-name":"drive-virtio0""#), "{args}");
        assert!(
            args.contains(r#""backing":"vmdump-lr-src-virtio0""#),
            "{args}"
        );
        assert!(args.contains(r#""export":"drive-virtio0""#), "{args}");
        assert!(args.contains("/r/live.nbd") && args.contains("/s/o.qcow2"));
        let plain = vm.args("", &[]).unwrap();
        assert!(plain.contains("virtio-blk-pci,drive=drive-virtio0,id=virtio0"));
        assert!(!plain.contains("vmdump-lr-"), "{plain}");
    }
}

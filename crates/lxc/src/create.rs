//! `vmdump ct create`: a new container from an LXC template (`busybox`) or a root filesystem
//! tarball, on a new volume, with a Proxmox-style config.

use std::path::PathBuf;

use vmdump_config::{LxcConfig, MountPoint};
use vmdump_tar::{IdMap, UnpackOptions};

use crate::error::{Error, Result};
use crate::mount::Access;
use crate::runtime::Runtime;
use crate::tool;
use crate::volume::{self, CtVolume};

/// Where the root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Template {
    /// An LXC template script by name (`busybox`), run offline.
    Lxc(String),
    /// A tar archive of a root filesystem (any compression vmdump reads).
    Tarball(PathBuf),
}

impl Template {
    /// `busybox` or a path to a tarball (anything with a `/` or a `.tar` in it).
    pub fn parse(s: &str) -> Self {
        if s.contains('/') || s.contains(".tar") {
            Template::Tarball(PathBuf::from(s))
        } else {
            Template::Lxc(s.to_string())
        }
    }
}

/// What `create` makes.
#[derive(Debug, Clone)]
pub struct CreateSpec {
    /// The root filesystem's source.
    pub template: Template,
    /// Storage of the root volume.
    pub storage: String,
    /// Root volume size in bytes; 0 makes a directory on a `dir` storage.
    pub size: u64,
    /// `hostname`.
    pub hostname: Option<String>,
    /// `unprivileged: 1` (ids mapped to 100000+).
    pub unprivileged: bool,
}

impl Runtime {
    /// Creates container `vmid`: allocates and fills its root volume, then writes its config.
    /// On failure the volume is removed again and no config exists.
    pub fn create(&self, vmid: u32, spec: &CreateSpec) -> Result<LxcConfig> {
        let cfg_path = self.root().lxc_config_path(vmid);
        if cfg_path.exists() || self.root().qemu_config_path(vmid).exists() {
            return Err(Error::State {
                vmid,
                state: "already existing (a guest with this VMID has a config)".into(),
            });
        }
        let storage = self.root().storage().map_err(|e| Error::config(vmid, e))?;
        let image = volume::wants_image(&storage, &spec.storage, spec.size)
            .map_err(|e| Error::config(vmid, e))?;
        let volid = volume::allocate_name(&storage, &spec.storage, vmid, image, &[])
            .map_err(|e| Error::config(vmid, e))?;
        let size_text = if spec.size == 0 {
            "0T".to_string()
        } else {
            vmdump_config::format_size(spec.size)
        };
        let rootfs = format!("{volid},size={size_text}");
        let mp = MountPoint::parse("rootfs", &rootfs).map_err(|e| Error::config(vmid, e))?;
        let vol = volume::resolve(&storage, &mp)
            .map_err(|e| Error::config(vmid, e))?
            .expect("a storage volume");
        let owner = if spec.unprivileged {
            (100_000, 100_000)
        } else {
            (0, 0)
        };
        volume::create(&vol, owner)?;
        let res = self.fill(vmid, &vol, spec).and_then(|extra| {
            let mut text = String::from("arch: amd64\n");
            text.push_str(&format!(
                "hostname: {}\n",
                spec.hostname.clone().unwrap_or_else(|| format!("CT{vmid}"))
            ));
            text.push_str("ostype: unmanaged\n");
            text.push_str(&format!("rootfs: {rootfs}\n"));
            if spec.unprivileged {
                text.push_str("unprivileged: 1\n");
            }
            for (k, v) in extra {
                text.push_str(&format!("{k}: {v}\n"));
            }
            let cfg = LxcConfig::parse(&text, &cfg_path.display().to_string())
                .map_err(|e| Error::config(vmid, e))?;
            if let Some(d) = cfg_path.parent() {
                std::fs::create_dir_all(d).map_err(|e| Error::io("create directory", d, e))?;
            }
            cfg.save(&cfg_path).map_err(|e| Error::config(vmid, e))?;
            Ok(cfg)
        });
        if res.is_err() {
            let _ = volume::destroy(&vol);
        }
        res
    }

    /// Fills the new root volume; returns raw `lxc.*` keys the config needs (the template's
    /// halt signal).
    fn fill(&self, vmid: u32, vol: &CtVolume, spec: &CreateSpec) -> Result<Vec<(String, String)>> {
        let base = self.ct_dir(vmid);
        std::fs::create_dir_all(&base).map_err(|e| Error::io("create directory", &base, e))?;
        let access = Access::open(&vol.path, vol.layout, &base, false)?;
        match &spec.template {
            Template::Lxc(name) => {
                let tmp = base.join(format!("create-{}", std::process::id()));
                std::fs::create_dir_all(&tmp)
                    .map_err(|e| Error::io("create directory", &tmp, e))?;
                let conf = tmp.join("create.conf");
                let mut text = String::from("lxc.net.0.type = empty\n");
                if spec.unprivileged {
                    text.push_str("lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n");
                }
                std::fs::write(&conf, text).map_err(|e| Error::io("write", &conf, e))?;
                let res = tool::run_args(
                    "lxc-create",
                    [
                        "-P".as_ref(),
                        tmp.as_os_str(),
                        "-n".as_ref(),
                        format!("tpl{vmid}").as_ref(),
                        "-t".as_ref(),
                        name.as_ref(),
                        "-f".as_ref(),
                        conf.as_os_str(),
                        format!("--dir={}", access.dir().display()).as_ref(),
                    ],
                );
                let generated = std::fs::read_to_string(tmp.join(format!("tpl{vmid}/config")))
                    .unwrap_or_default();
                let _ = std::fs::remove_dir_all(&tmp);
                res?;
                Ok(generated
                    .lines()
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .filter(|(k, _)| k.starts_with("lxc.signal."))
                    .collect())
            }
            Template::Tarball(path) => {
                let f = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
                let dec = vmdump_compress::Decoder::detect(std::io::BufReader::new(f))
                    .map_err(|e| Error::io("read", path, std::io::Error::other(e)))?;
                let mut reader = vmdump_tar::Reader::new(dec);
                let opts = UnpackOptions {
                    idmap: spec.unprivileged.then(IdMap::unprivileged),
                    exclude_dev: true,
                    refuse_devices: spec.unprivileged,
                    mounts: Vec::new(),
                };
                vmdump_tar::unpack(&mut reader, access.dir(), &opts, &|| false)
                    .map_err(|source| Error::Template { vmid, source })?;
                Ok(Vec::new())
            }
        }
    }
}

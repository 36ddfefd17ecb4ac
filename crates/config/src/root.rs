//! The configuration root directory and file helpers.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::lxc::LxcConfig;
use crate::qemu::QemuConfig;
use crate::storage::{StorageConfig, DEFAULT_LOCAL_PATH};
use crate::vzdump::VzdumpConf;

/// Default configuration root.
pub const DEFAULT_ROOT: &str = "/etc/vmdump";
/// Environment variable overriding the root.
pub const ROOT_ENV: &str = "VMDUMP_ROOT";
/// Environment variable overriding the path of the implicit `local` storage.
pub const LOCAL_PATH_ENV: &str = "VMDUMP_LOCAL_PATH";

/// The configuration root: `storage.cfg`, `vzdump.conf`, `qemu-server/<vmid>.conf`,
/// `lxc/<vmid>.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigRoot {
    dir: PathBuf,
    local_path: PathBuf,
}

impl ConfigRoot {
    /// A root at `dir`; the implicit `local` storage (used when storage.cfg is missing) is at
    /// [`DEFAULT_LOCAL_PATH`].
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ConfigRoot {
            dir: dir.into(),
            local_path: PathBuf::from(DEFAULT_LOCAL_PATH),
        }
    }

    /// The root chosen by an explicit option, else `$VMDUMP_ROOT`, else [`DEFAULT_ROOT`];
    /// `$VMDUMP_LOCAL_PATH` overrides the implicit local storage path.
    pub fn from_env(explicit: Option<&Path>) -> Self {
        let dir = explicit
            .map(Path::to_path_buf)
            .or_else(|| {
                std::env::var_os(ROOT_ENV)
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT));
        let mut root = ConfigRoot::new(dir);
        if let Some(p) = std::env::var_os(LOCAL_PATH_ENV).filter(|v| !v.is_empty()) {
            root.local_path = PathBuf::from(p);
        }
        root
    }

    /// Override the implicit local storage path.
    pub fn with_local_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.local_path = path.into();
        self
    }

    /// The root directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<root>/storage.cfg`.
    pub fn storage_cfg_path(&self) -> PathBuf {
        self.dir.join("storage.cfg")
    }

    /// `<root>/vzdump.conf`.
    pub fn vzdump_conf_path(&self) -> PathBuf {
        self.dir.join("vzdump.conf")
    }

    /// `<root>/qemu-server/<vmid>.conf`.
    pub fn qemu_config_path(&self, vmid: u32) -> PathBuf {
        self.dir.join("qemu-server").join(format!("{vmid}.conf"))
    }

    /// `<root>/lxc/<vmid>.conf`.
    pub fn lxc_config_path(&self, vmid: u32) -> PathBuf {
        self.dir.join("lxc").join(format!("{vmid}.conf"))
    }

    /// storage.cfg, or the default single `local` dir storage when the file does not exist.
    pub fn storage(&self) -> Result<StorageConfig> {
        let path = self.storage_cfg_path();
        if !path.exists() {
            return Ok(StorageConfig::default_with_local(&self.local_path));
        }
        StorageConfig::load(&path)
    }

    /// vzdump.conf (all defaults when missing).
    pub fn vzdump(&self) -> Result<VzdumpConf> {
        VzdumpConf::load(&self.vzdump_conf_path())
    }

    /// A VM config; a missing file is [`Error::NoSuchGuest`].
    pub fn qemu_config(&self, vmid: u32) -> Result<QemuConfig> {
        let path = self.qemu_config_path(vmid);
        QemuConfig::load(&path).map_err(|e| match e {
            Error::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Error::NoSuchGuest { vmid, path }
            }
            other => other,
        })
    }

    /// A container config.
    pub fn lxc_config(&self, vmid: u32) -> Result<LxcConfig> {
        LxcConfig::load(&self.lxc_config_path(vmid))
    }

    /// VMIDs with a config under `qemu-server/`, sorted.
    pub fn qemu_vmids(&self) -> Result<Vec<u32>> {
        list_vmids(&self.dir.join("qemu-server"))
    }

    /// VMIDs with a config under `lxc/`, sorted.
    pub fn lxc_vmids(&self) -> Result<Vec<u32>> {
        list_vmids(&self.dir.join("lxc"))
    }
}

fn list_vmids(dir: &Path) -> Result<Vec<u32>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut ids = Vec::new();
    for e in rd {
        let e = e.map_err(|source| Error::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let name = e.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".conf")) else {
            continue;
        };
        if let Ok(id) = stem.parse::<crate::VmId>() {
            ids.push(id.get());
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

//! Disk targets: where a device's clusters are written.
//!
//! Every target is freshly created and reads as zeros, so only non-zero data is written
//! ("write zeros = 0" in qmrestore's words); out-of-order data is written where it belongs.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};
use crate::volume::run_tool;

/// A seekable, freshly created (zero-reading) disk image.
pub trait DiskTarget: Send {
    /// Write `data` at byte `offset` of the device.
    fn write_at(&mut self, data: &[u8], offset: u64) -> std::io::Result<()>;
    /// Make everything durable and close the target.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// A raw image file written with positional writes; unwritten ranges stay holes.
#[derive(Debug)]
pub struct RawTarget {
    file: File,
    path: PathBuf,
}

impl RawTarget {
    /// Open an existing (freshly created, sized) raw file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|source| Error::Volume {
                what: "open volume",
                path: path.to_path_buf(),
                source,
            })?;
        Ok(RawTarget {
            file,
            path: path.to_path_buf(),
        })
    }
}

impl DiskTarget for RawTarget {
    fn write_at(&mut self, data: &[u8], offset: u64) -> std::io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn finish(self: Box<Self>) -> Result<()> {
        self.file.sync_all().map_err(|source| Error::Volume {
            what: "sync volume",
            path: self.path.clone(),
            source,
        })
    }
}

/// A non-raw image (qcow2, vmdk, ...) written by staging the data in a sparse raw file next
/// to it and converting at the end with `qemu-img convert -n --target-is-zero` (zero ranges
/// are holes in the stage and are skipped). Used when no NBD image access is available.
#[derive(Debug)]
pub struct StagedImageTarget {
    stage: RawTarget,
    image: PathBuf,
    format: String,
}

impl StagedImageTarget {
    /// Stage for the existing image `image` of `format` and device `size`.
    pub fn create(image: &Path, format: &str, size: u64) -> Result<Self> {
        let name = image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        let stage_path = image.with_file_name(format!(".{name}.restore-stage.raw"));
        let verr = |source| Error::Volume {
            what: "create staging file",
            path: stage_path.clone(),
            source,
        };
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&stage_path)
            .map_err(verr)?;
        f.set_len(size).map_err(verr)?;
        Ok(StagedImageTarget {
            stage: RawTarget {
                file: f,
                path: stage_path,
            },
            image: image.to_path_buf(),
            format: format.to_string(),
        })
    }
}

impl Drop for StagedImageTarget {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.stage.path);
    }
}

impl DiskTarget for StagedImageTarget {
    fn write_at(&mut self, data: &[u8], offset: u64) -> std::io::Result<()> {
        self.stage.write_at(data, offset)
    }

    fn finish(self: Box<Self>) -> Result<()> {
        let mut cmd = Command::new("qemu-img");
        cmd.args(["convert", "-n", "--target-is-zero", "-f", "raw", "-O"])
            .arg(&self.format)
            .arg(&self.stage.path)
            .arg(&self.image);
        run_tool(&mut cmd, "qemu-img convert")?;
        let f = File::open(&self.image).map_err(|source| Error::Volume {
            what: "open volume",
            path: self.image.clone(),
            source,
        })?;
        f.sync_all().map_err(|source| Error::Volume {
            what: "sync volume",
            path: self.image.clone(),
            source,
        })
    }
}

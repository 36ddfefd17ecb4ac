//! Image information and creation with `qemu-img`.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

fn tool_error(path: &Path, detail: impl Into<String>) -> Error {
    Error::Tool {
        tool: "qemu-img",
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// Run `qemu-img` to completion (it is short-lived and never outlives its call).
fn run(path: &Path, cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| tool_error(path, format!("cannot run: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(tool_error(
            path,
            format!("{}: {}", out.status, stderr.trim()),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What `qemu-img info` says about an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Format name (`qcow2`, `raw`, `vmdk`, ...).
    pub format: String,
    /// Virtual disk size in bytes.
    pub virtual_size: u64,
    /// Bytes allocated on the host, if known.
    pub actual_size: Option<u64>,
}

/// Runs `qemu-img info --output=json -U` (force-share, so it works next to a running QEMU).
pub fn info(path: &Path) -> Result<ImageInfo> {
    let out = run(
        path,
        Command::new("qemu-img")
            .args(["info", "--output=json", "-U", "--"])
            .arg(path),
    )?;
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| tool_error(path, format!("bad info json: {e}")))?;
    let format = v["format"]
        .as_str()
        .ok_or_else(|| tool_error(path, "info has no format"))?
        .to_owned();
    let virtual_size = v["virtual-size"]
        .as_u64()
        .ok_or_else(|| tool_error(path, "info has no virtual-size"))?;
    Ok(ImageInfo {
        format,
        virtual_size,
        actual_size: v["actual-size"].as_u64(),
    })
}

/// Detects the image format with `qemu-img info`.
pub fn detect_format(path: &Path) -> Result<String> {
    Ok(info(path)?.format)
}

/// Creates an image: `qemu-img create -f <format> [-o preallocation=<p>] <path> <size>`.
pub fn create(path: &Path, format: &str, size: u64, preallocation: Option<&str>) -> Result<()> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["create", "-q", "-f", format]);
    if let Some(p) = preallocation {
        cmd.arg("-o").arg(format!("preallocation={p}"));
    }
    cmd.arg("--").arg(path).arg(size.to_string());
    run(path, &mut cmd)?;
    Ok(())
}

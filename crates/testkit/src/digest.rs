//! Hashes: the tests' notion of "the same bytes".

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::run;

/// Hex sha256 of a byte slice.
pub fn sha256_bytes(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Hex sha256 of a file's bytes, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("read {}", path.display()))?;
    Ok(hex::encode(h.finalize()))
}

/// Hex sha256 of an image's guest-visible bytes. A non-raw image is converted to raw with
/// `qemu-img convert -U` (so a running QEMU may hold it) into `scratch/convert.raw` first,
/// which is removed again.
pub fn image_sha256(path: &Path, format: &str, scratch: &Path) -> Result<String> {
    if format == "raw" {
        return sha256_file(path);
    }
    let raw = scratch.join("convert.raw");
    let _ = std::fs::remove_file(&raw);
    run(Command::new("qemu-img")
        .args(["convert", "-U", "-f", format, "-O", "raw"])
        .arg(path)
        .arg(&raw))?;
    let h = sha256_file(&raw);
    let _ = std::fs::remove_file(&raw);
    h
}

//! dissect.archive (Fox-IT's Python VMA reader, an implementation independent of ours) as the
//! oracle for archives, and decompression by the real `zstd`, `lzop` and `gzip` tools.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::run;

/// Decompresses `archive` into `out` with the real tool for its compression, given as the
/// extension after `.vma`: `.zst`, `.lzo` or `.gz`; empty (no compression) copies it.
pub fn unpack(archive: &Path, extension: &str, out: &Path) -> Result<()> {
    let _ = std::fs::remove_file(out);
    match extension {
        "" => {
            std::fs::copy(archive, out)?;
        }
        ".zst" | ".lzo" => {
            let tool = if extension == ".zst" { "zstd" } else { "lzop" };
            run(Command::new(tool)
                .args(["-q", "-d", "-o"])
                .arg(out)
                .arg(archive))?;
        }
        ".gz" => {
            let o = Command::new("gzip")
                .arg("-dc")
                .arg(archive)
                .output()
                .context("run gzip")?;
            if !o.status.success() {
                bail!("gzip -d {} failed", archive.display());
            }
            std::fs::write(out, o.stdout)?;
        }
        other => bail!("unknown archive extension {other:?}"),
    }
    Ok(())
}

/// Decompresses an archive, by its file extension, into `scratch/plain.vma`.
pub fn plain_vma(archive: &Path, scratch: &Path) -> Result<PathBuf> {
    let name = archive.to_string_lossy();
    let Some(ext) = ["", ".zst", ".lzo", ".gz"]
        .into_iter()
        .find(|e| name.ends_with(&format!(".vma{e}")))
    else {
        bail!("unknown archive type {name}");
    };
    let out = scratch.join("plain.vma");
    unpack(archive, ext, &out)?;
    Ok(out)
}

/// Name, size and sha256 of every device of a plain VMA, in archive order, as dissect.archive
/// reads them; its config blobs are read too, so a broken config table fails here.
pub fn dissect_devices(vma: &Path) -> Result<Vec<(String, u64, String)>> {
    let script = r#"
import hashlib, sys
from dissect.archive.vma import VMA
with open(sys.argv[1], 'rb') as fh:
    vma = VMA(fh)
    for dev in vma.devices():
        s = dev.open()
        h = hashlib.sha256()
        left = dev.size
        while left > 0:
            b = s.read(min(8 << 20, left))
            if not b:
                raise SystemExit(f"short read on {dev.name}")
            h.update(b)
            left -= len(b)
        print(dev.name, dev.size, h.hexdigest())
    for name, data in vma.configs().items():
        print("CFG", name, len(data))
"#;
    let out = run(Command::new("python3").arg("-c").arg(script).arg(vma))?;
    out.lines()
        .filter(|l| !l.starts_with("CFG "))
        .map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [name, size, sha] => Ok((
                name.to_string(),
                size.parse()
                    .with_context(|| format!("device size in {l:?}"))?,
                sha.to_string(),
            )),
            _ => bail!("unexpected dissect.archive line {l:?}"),
        })
        .collect()
}

/// Writes device `dev_name` of a plain VMA to `out` (its exact size) with dissect.archive.
pub fn dissect_extract(vma: &Path, dev_name: &str, out: &Path) -> Result<()> {
    let script = r#"
import sys
from dissect.archive.vma import VMA
with open(sys.argv[1], 'rb') as fh, open(sys.argv[3], 'wb') as o:
    vma = VMA(fh)
    dev = [d for d in vma.devices() if d.name == sys.argv[2]][0]
    s = dev.open()
    left = dev.size
    while left > 0:
        b = s.read(min(8 << 20, left))
        o.write(b)
        left -= len(b)
"#;
    run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(vma)
        .arg(dev_name)
        .arg(out))?;
    Ok(())
}

/// Config blob `name` (e.g. `qemu-server.conf`) of a plain VMA as dissect.archive reads it.
pub fn dissect_config(vma: &Path, name: &str) -> Result<String> {
    let script = r#"
import sys
from dissect.archive.vma import VMA
with open(sys.argv[1], 'rb') as fh:
    sys.stdout.write(VMA(fh).config(sys.argv[2]).decode())
"#;
    run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(vma)
        .arg(name))
}

//! The figures `vma verify -v`, `vma extract -v` and a restore print while reading an
//! archive, with Proxmox's arithmetic (`vma-reader.c`), quirks included, so the lines are
//! byte-identical to Proxmox's: progress percentages of the devices' *whole* clusters
//! (they pass 100% when a size is not a multiple of 64 KiB), "sparse bytes" counting every
//! unset 4 KiB block (of zero and of partly zero clusters alike) clipped to the device's
//! whole 512-byte sectors, and a "space reduction" that divides the zero blocks of partly
//! zero clusters by the bytes *not* counted as sparse (so it can exceed 100%).

use std::io::{self, Write};

use crate::format::{BLOCKS_PER_CLUSTER, BLOCK_SIZE, CLUSTER_SIZE};
use crate::header::{Device, Header};
use crate::reader::Cluster;

/// Bytes of a sector: Proxmox's reader works in 512-byte sectors.
const SECTOR: u64 = 512;

/// Running figures of one read of an archive (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadTally {
    cluster_count: u64,
    clusters_read: u64,
    last_percent: u64,
    zero_bytes: u64,
    partial_zero_bytes: u64,
}

impl ReadTally {
    /// A tally whose progress is measured against the devices for which `counted` is
    /// true. Proxmox counts every device for `verify`, and for `extract` every device but
    /// the vmstate stream (skipped devices included).
    pub fn new(header: &Header, counted: impl Fn(&Device) -> bool) -> Self {
        ReadTally {
            // Whole clusters only, as Proxmox counts them.
            cluster_count: header
                .devices
                .iter()
                .filter(|d| counted(d))
                .map(|d| d.size / CLUSTER_SIZE as u64)
                .sum(),
            ..Self::default()
        }
    }

    /// Count one cluster of `dev`. Returns the new whole percentage when it changed (the
    /// moment Proxmox prints a progress line). No percentage when no device has a whole
    /// cluster (Proxmox divides by zero there).
    pub fn record(&mut self, c: &Cluster<'_>, dev: &Device) -> Option<u64> {
        self.clusters_read += 1;
        if c.mask != 0xFFFF {
            let max_sector = if dev.is_vmstate() {
                u64::MAX
            } else {
                dev.size / SECTOR
            };
            for j in 0..BLOCKS_PER_CLUSTER {
                if c.mask & (1 << j) != 0 {
                    continue;
                }
                let sector = (c.device_offset() + (j * BLOCK_SIZE) as u64) / SECTOR;
                let end = (sector + BLOCK_SIZE as u64 / SECTOR).min(max_sector);
                if end > sector {
                    let zero = (end - sector) * SECTOR;
                    self.zero_bytes += zero;
                    if c.mask != 0 {
                        self.partial_zero_bytes += zero;
                    }
                }
            }
        }
        if self.cluster_count == 0 {
            return None;
        }
        let percent = self.clusters_read * 100 / self.cluster_count;
        (percent != self.last_percent).then(|| {
            self.last_percent = percent;
            percent
        })
    }

    /// Bytes of the clusters read so far (`clusters * 64 KiB`).
    pub fn bytes_read(&self) -> u64 {
        self.clusters_read * CLUSTER_SIZE as u64
    }

    /// Bytes counted as sparse (unset blocks inside the devices' whole sectors).
    pub fn sparse_bytes(&self) -> u64 {
        self.zero_bytes
    }

    /// The progress line Proxmox prints for `percent`.
    pub fn progress_line(&self, percent: u64, seconds: u64) -> String {
        format!(
            "progress {percent}% (read {} bytes, duration {seconds} sec)",
            self.bytes_read()
        )
    }

    /// The summary lines Proxmox prints at the end (without newlines).
    pub fn summary(&self) -> Vec<String> {
        if self.clusters_read == 0 {
            return vec!["vma archive contains no image data".to_string()];
        }
        let total = self.bytes_read();
        let mut lines = vec![format!(
            "total bytes read {total}, sparse bytes {} ({}%)",
            self.zero_bytes,
            format_g3(100.0 * self.zero_bytes as f64 / total as f64)
        )];
        let data = total - self.zero_bytes;
        if data != 0 {
            lines.push(format!(
                "space reduction due to 4K zero blocks {}%",
                format_g3(100.0 * self.partial_zero_bytes as f64 / data as f64)
            ));
        }
        lines
    }

    /// Write [`summary`](Self::summary) to `out`, one line each.
    pub fn write_summary(&self, out: &mut dyn Write) -> io::Result<()> {
        for line in self.summary() {
            writeln!(out, "{line}")?;
        }
        out.flush()
    }
}

/// The listing `vma list` prints (and `verify -v`, `extract -r` before their work): the
/// configs, the devices, then `CTIME: ` and `ctime` (the C `ctime()` text of the header's
/// creation time, which depends on the time zone and is made by the caller). qmrestore
/// parses these lines.
pub fn write_listing(header: &Header, ctime: &str, out: &mut dyn Write) -> io::Result<()> {
    for c in &header.configs {
        writeln!(out, "CFG: size: {} name: {}", c.data.len(), c.name)?;
    }
    for d in &header.devices {
        if d.is_vmstate() {
            writeln!(out, "VMSTATE: dev_id={} memory: {}", d.id, d.size)?;
        } else {
            writeln!(
                out,
                "DEV: dev_id={} size: {} devname: {}",
                d.id, d.size, d.name
            )?;
        }
    }
    writeln!(out, "CTIME: {ctime}")?;
    out.flush()
}

/// C's `printf("%.3g", x)`: three significant digits, trailing zeros dropped, exponent
/// form below 1e-4 and from 1e3 on.
pub fn format_g3(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    // Round to three significant digits first: the exponent is that of the rounded value
    // (99.96 -> 100, not 99.96 -> "1e+02" or "100.0").
    let sci = format!("{x:.2e}");
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let strip = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    if !(-4..3).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", strip(mant), exp.abs())
    } else {
        strip(&format!("{x:.*}", (2 - exp) as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn g3_matches_printf() {
        // Values checked against glibc's printf("%.3g").
        for (x, want) in [
            (98.4567, "98.5"),
            (100.0, "100"),
            (5.0812, "5.08"),
            (0.20711, "0.207"),
            (0.000012345, "1.23e-05"),
            (3.0, "3"),
            (96.44, "96.4"),
            (0.0, "0"),
            (99.96, "100"),
            (99.99, "100"),
            (0.5, "0.5"),
            (12.3456, "12.3"),
            (1234.5, "1.23e+03"),
            (999.6, "1e+03"),
            (122.0, "122"),
            (55.0, "55"),
            (0.0001, "0.0001"),
            (-2.5, "-2.5"),
        ] {
            assert_eq!(format_g3(x), want, "{x}");
        }
    }
}

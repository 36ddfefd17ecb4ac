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
    use crate::{Reader, Writer};

    /// An archive of a 100000-byte disk (cluster 0 half data, cluster 1 one data block
    /// then zeros to the end), a 3-cluster disk (a zero cluster, a full one, one with its
    /// last block zero) and a 70000-byte vmstate (a full cluster, then one data block),
    /// written in that order.
    fn archive() -> Vec<u8> {
        let mut w = Writer::with_identity(Vec::new(), [1; 16], Some(0));
        w.add_config("qemu-server.conf", b"memory: 512\n").unwrap();
        let a = w.register_device("drive-a", 100_000).unwrap();
        let b = w
            .register_device("drive-b", 3 * CLUSTER_SIZE as u64)
            .unwrap();
        let v = w.register_device("vmstate", 70_000).unwrap();
        let mut c = vec![1u8; CLUSTER_SIZE];
        c[CLUSTER_SIZE / 2..].fill(0);
        w.write_cluster(a, 0, &c).unwrap();
        let mut c = vec![0u8; 100_000 - CLUSTER_SIZE];
        c[..BLOCK_SIZE].fill(2);
        w.write_cluster(a, 1, &c).unwrap();
        w.write_zero_cluster(b, 0).unwrap();
        w.write_cluster(b, 1, &[3u8; CLUSTER_SIZE]).unwrap();
        let mut c = vec![4u8; CLUSTER_SIZE];
        c[15 * BLOCK_SIZE..].fill(0);
        w.write_cluster(b, 2, &c).unwrap();
        w.write_cluster(v, 0, &[5u8; CLUSTER_SIZE]).unwrap();
        let mut c = vec![0u8; CLUSTER_SIZE];
        c[..BLOCK_SIZE].fill(6);
        w.write_cluster(v, 1, &c).unwrap();
        w.finish().unwrap().0
    }

    /// Record every cluster; the percentages returned, and the tally.
    fn tally(counted: impl Fn(&Device) -> bool) -> (Vec<Option<u64>>, ReadTally) {
        let bytes = archive();
        let r = Reader::new(&bytes[..]).unwrap();
        let mut t = ReadTally::new(r.header(), counted);
        let mut percents = Vec::new();
        r.for_each_cluster(|h, c| {
            let dev = h.device(c.dev_id).unwrap();
            percents.push(t.record(&c, dev));
            Ok::<_, crate::Error>(())
        })
        .unwrap();
        (percents, t)
    }

    #[test]
    fn figures_are_proxmoxs() {
        // Whole clusters: 1 + 3 + 1 (vmstate counted) = 5, so 20% per cluster read.
        let (percents, t) = tally(|_| true);
        let want: Vec<Option<u64>> = [20, 40, 60, 80, 100, 120, 140].map(Some).to_vec();
        assert_eq!(percents, want);
        assert_eq!(t.bytes_read(), 7 * 65536);
        // drive-a: 8 blocks of cluster 0; of cluster 1, 7 blocks and the 3 whole sectors
        // of block 8 left before the end (sector 195); drive-b: cluster 0 whole and one
        // block; vmstate: the 15 unset blocks of cluster 1, its size not clipping them.
        let partial = 8 * 4096 + 7 * 4096 + 3 * 512 + 4096 + 15 * 4096;
        assert_eq!(t.sparse_bytes(), partial + 65536);
        assert_eq!(t.sparse_bytes(), 194_048);
        assert_eq!(
            t.summary(),
            [
                "total bytes read 458752, sparse bytes 194048 (42.3%)",
                "space reduction due to 4K zero blocks 48.5%"
            ]
        );
        let mut out = Vec::new();
        t.write_summary(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "total bytes read 458752, sparse bytes 194048 (42.3%)\n\
             space reduction due to 4K zero blocks 48.5%\n"
        );
        assert_eq!(
            t.progress_line(40, 7),
            "progress 40% (read 458752 bytes, duration 7 sec)"
        );

        // Without the vmstate: 4 whole clusters, 25% each; the vmstate's clusters still
        // count as read and sparse.
        let (percents, t2) = tally(|d| !d.is_vmstate());
        let want: Vec<Option<u64>> = [25, 50, 75, 100, 125, 150, 175].map(Some).to_vec();
        assert_eq!(percents, want);
        assert_eq!(t2.sparse_bytes(), t.sparse_bytes());
        // Only the 100000-byte disk counted: 1 whole cluster, 100% per cluster read.
        let (percents, _) = tally(|d| d.name == "drive-a");
        assert_eq!(percents[..2], [Some(100), Some(200)]);
        // No whole cluster counted: no percentages at all.
        let (percents, t3) = tally(|d| d.name == "nothing");
        assert!(percents.iter().all(Option::is_none));
        assert_eq!(t3.sparse_bytes(), t.sparse_bytes());
    }

    #[test]
    fn a_percentage_is_returned_only_when_it_changes() {
        // 200 whole clusters: a new percentage every second cluster.
        let mut w = Writer::with_identity(Vec::new(), [1; 16], Some(0));
        let d = w
            .register_device("drive-a", 200 * CLUSTER_SIZE as u64)
            .unwrap();
        for c in 0..200 {
            w.write_cluster(d, c, &[7u8; CLUSTER_SIZE]).unwrap();
        }
        let bytes = w.finish().unwrap().0;
        let r = Reader::new(&bytes[..]).unwrap();
        let mut t = ReadTally::new(r.header(), |_| true);
        let mut percents = Vec::new();
        r.for_each_cluster(|h, c| {
            percents.push(t.record(&c, h.device(c.dev_id).unwrap()));
            Ok::<_, crate::Error>(())
        })
        .unwrap();
        let want: Vec<Option<u64>> = (1..=200u64)
            .map(|k| (k % 2 == 0).then_some(k / 2))
            .collect();
        assert_eq!(percents, want);
        // No zero block: no second summary line would divide by the data bytes.
        assert_eq!(
            t.summary(),
            [
                "total bytes read 13107200, sparse bytes 0 (0%)",
                "space reduction due to 4K zero blocks 0%"
            ]
        );
        assert_eq!(
            ReadTally::default().summary(),
            ["vma archive contains no image data"]
        );
    }

    #[test]
    fn all_sparse_has_no_reduction_line() {
        let mut w = Writer::with_identity(Vec::new(), [1; 16], Some(0));
        let d = w.register_device("drive-a", CLUSTER_SIZE as u64).unwrap();
        w.write_zero_cluster(d, 0).unwrap();
        let bytes = w.finish().unwrap().0;
        let r = Reader::new(&bytes[..]).unwrap();
        let mut t = ReadTally::new(r.header(), |_| true);
        r.for_each_cluster(|h, c| {
            t.record(&c, h.device(c.dev_id).unwrap());
            Ok::<_, crate::Error>(())
        })
        .unwrap();
        assert_eq!(
            t.summary(),
            ["total bytes read 65536, sparse bytes 65536 (100%)"]
        );
    }

    #[test]
    fn the_listing_is_qmrestores() {
        let bytes = archive();
        let r = Reader::new(&bytes[..]).unwrap();
        let mut out = Vec::new();
        write_listing(r.header(), "Thu Jan  1 00:00:00 1970", &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "CFG: size: 12 name: qemu-server.conf\n\
             DEV: dev_id=1 size: 100000 devname: drive-a\n\
             DEV: dev_id=2 size: 196608 devname: drive-b\n\
             VMSTATE: dev_id=3 memory: 70000\n\
             CTIME: Thu Jan  1 00:00:00 1970\n"
        );
    }

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

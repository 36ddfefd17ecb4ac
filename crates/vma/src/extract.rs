//! Extracting devices: the loop that reads every extent of an archive and writes each
//! device's clusters to a [`DeviceSink`], as `vma extract` does.
//!
//! Unlike Proxmox's reader, data is written up to the exact device size: Proxmox writes
//! whole 512-byte sectors only and drops the tail of a device whose size is not a multiple
//! of 512 (see `docs/formats/vma.md`).

use std::io::{self, Read};

use crate::error::{Error, Result};
use crate::format::CLUSTER_SIZE;
use crate::header::Device;
use crate::reader::{Cluster, ReadStats, Reader};
use crate::stats::ReadTally;

/// Where the data of one device goes: a disk image, a block device, a file.
pub trait DeviceSink {
    /// Write all of `data` at byte `offset` of the device.
    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()>;
}

static ZEROS: [u8; CLUSTER_SIZE] = [0u8; CLUSTER_SIZE];

/// Write one cluster of `dev` to `sink`: the stored blocks, one write per run of adjacent
/// blocks, clipped to the device size; unset blocks are written as zeros only with
/// `write_zeros` (a new, empty target reads as zeros already). The vmstate stream is
/// written whole (64 KiB per cluster, zeros included), as it has no size bound.
pub fn write_cluster(
    sink: &mut dyn DeviceSink,
    c: &Cluster<'_>,
    dev: &Device,
    write_zeros: bool,
) -> Result<()> {
    let base = c.device_offset();
    let fail = |offset: u64| {
        let device = dev.name.clone();
        move |source| Error::DeviceWrite {
            device,
            offset,
            source,
        }
    };
    if dev.is_vmstate() {
        let mut buf = vec![0u8; CLUSTER_SIZE];
        c.expand_into(&mut buf);
        return sink.write_at(&buf, base).map_err(fail(base));
    }
    for run in c.runs(dev.size) {
        match run.data {
            Some(at) => sink.write_at(&c.data()[at], run.offset),
            None if write_zeros => sink.write_at(&ZEROS[..run.len], run.offset),
            None => Ok(()),
        }
        .map_err(fail(run.offset))?;
    }
    Ok(())
}

/// One device to extract.
struct Target<'a> {
    sink: &'a mut dyn DeviceSink,
    write_zeros: bool,
}

/// The devices an extract writes, by device id; the others are read and checked but not
/// written.
#[derive(Default)]
pub struct Extract<'a> {
    targets: Vec<Option<Target<'a>>>,
}

impl std::fmt::Debug for Extract<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<usize> = (0..self.targets.len())
            .filter(|&i| self.targets[i].is_some())
            .collect();
        f.debug_struct("Extract").field("devices", &ids).finish()
    }
}

impl<'a> Extract<'a> {
    /// An extract that writes no device yet.
    pub fn new() -> Self {
        Extract {
            targets: (0..256).map(|_| None).collect(),
        }
    }

    /// Write device `dev_id` to `sink` (see [`write_cluster`] for `write_zeros`).
    pub fn add(&mut self, dev_id: u8, sink: &'a mut dyn DeviceSink, write_zeros: bool) {
        self.targets[usize::from(dev_id)] = Some(Target { sink, write_zeros });
    }

    /// True if device `dev_id` is written.
    pub fn writes(&self, dev_id: u8) -> bool {
        self.targets[usize::from(dev_id)].is_some()
    }

    /// Read the rest of the archive, write the chosen devices, count every cluster in
    /// `tally` (calling `progress` with each new percentage), and check that every written
    /// device (vmstate aside) is complete.
    pub fn run<R: Read, E: From<Error>>(
        mut self,
        mut reader: Reader<R>,
        tally: &mut ReadTally,
        mut progress: impl FnMut(&ReadTally, u64) -> std::result::Result<(), E>,
    ) -> std::result::Result<ReadStats, E> {
        let header = reader.header().clone();
        while let Some(ext) = reader.next_extent()? {
            for c in ext.clusters() {
                // The reader checked that every cluster names a device of the header.
                let Some(dev) = header.device(c.dev_id) else {
                    continue;
                };
                if let Some(percent) = tally.record(&c, dev) {
                    progress(tally, percent)?;
                }
                if let Some(t) = self.targets[usize::from(c.dev_id)].as_mut() {
                    write_cluster(t.sink, &c, dev, t.write_zeros)?;
                }
            }
        }
        let written: Vec<bool> = self.targets.iter().map(Option::is_some).collect();
        Ok(reader.finish_for(|id| written[usize::from(id)])?)
    }
}

//! An in-memory disk for fast tests.

use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use crate::error::Result;
use crate::{BlockStatus, Extent, Finish, ReadAt, Size, WriteAt};

/// Granularity of [`MemDisk`]'s block status.
const BLOCK: u64 = 4096;

/// A disk held in memory. Clones share the data, so a test can keep one and inspect what a
/// consumer wrote through another. Block status reports every all-zero 4 KiB block as zero.
#[derive(Debug, Clone)]
pub struct MemDisk {
    data: Arc<RwLock<Vec<u8>>>,
}

impl MemDisk {
    /// A zeroed disk of `size` bytes.
    pub fn new(size: u64) -> Self {
        Self::from_vec(vec![
            0;
            usize::try_from(size)
                .expect("in-memory disk fits in memory")
        ])
    }

    /// A disk holding `data`.
    pub fn from_vec(data: Vec<u8>) -> Self {
        MemDisk {
            data: Arc::new(RwLock::new(data)),
        }
    }

    /// A copy of the contents.
    pub fn contents(&self) -> Vec<u8> {
        self.data.read().expect("lock").clone()
    }

    fn check(&self, offset: u64, len: u64) -> Result<Range<usize>> {
        crate::check_range(Path::new("<memory>"), self.size(), offset, len)?;
        Ok(offset as usize..(offset + len) as usize)
    }
}

impl Size for MemDisk {
    fn size(&self) -> u64 {
        self.data.read().expect("lock").len() as u64
    }
}

impl ReadAt for MemDisk {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let r = self.check(offset, buf.len() as u64)?;
        buf.copy_from_slice(&self.data.read().expect("lock")[r]);
        Ok(())
    }
}

impl BlockStatus for MemDisk {
    fn extents(&self, range: Range<u64>) -> Result<Vec<Extent>> {
        let data = self.data.read().expect("lock");
        let end = range.end.min(data.len() as u64);
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = range.start;
        while pos < end {
            let next = ((pos / BLOCK + 1) * BLOCK).min(end);
            let zero = data[pos as usize..next as usize].iter().all(|b| *b == 0);
            match out.last_mut() {
                Some(last) if last.zero == zero => last.length += next - pos,
                _ => out.push(Extent {
                    offset: pos,
                    length: next - pos,
                    zero,
                }),
            }
            pos = next;
        }
        Ok(out)
    }
}

impl WriteAt for MemDisk {
    fn write_at(&mut self, data: Bytes, offset: u64) -> Result<()> {
        let r = self.check(offset, data.len() as u64)?;
        self.data.write().expect("lock")[r].copy_from_slice(&data);
        Ok(())
    }
}

impl Finish for MemDisk {
    fn finish(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Target;

    #[test]
    fn writes_reads_and_zero_extents() {
        let disk = MemDisk::new(5 * BLOCK);
        let mut target: Box<dyn Target> = Box::new(disk.clone());
        target
            .write_at(Bytes::from(vec![7u8; 10]), BLOCK + 5)
            .unwrap();
        let err = target
            .write_at(Bytes::from(vec![1u8; 2]), 5 * BLOCK - 1)
            .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::OutOfBounds);
        target.finish().unwrap();
        let mut buf = [0u8; 4];
        disk.read_at(&mut buf, BLOCK + 4).unwrap();
        assert_eq!(buf, [0, 7, 7, 7]);
        let contents = disk.contents();
        assert_eq!(contents.len() as u64, 5 * BLOCK);
        assert_eq!(contents.iter().filter(|&&b| b == 7).count(), 10);
        assert_eq!(
            &contents[(BLOCK + 5) as usize..(BLOCK + 15) as usize],
            &[7; 10]
        );
        assert_eq!(
            disk.extents(100..5 * BLOCK).unwrap(),
            vec![
                Extent {
                    offset: 100,
                    length: BLOCK - 100,
                    zero: true
                },
                Extent {
                    offset: BLOCK,
                    length: BLOCK,
                    zero: false
                },
                Extent {
                    offset: 2 * BLOCK,
                    length: 3 * BLOCK,
                    zero: true
                },
            ]
        );
    }
}

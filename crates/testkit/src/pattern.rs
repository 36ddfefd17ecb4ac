//! Deterministic pseudo-random data: the same seed gives the same bytes on every run.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::Result;

use crate::MIB;

/// xorshift64 generator; the state must not be zero (`seed | 1` is a good start).
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A pseudo-random number below `n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// `len` pseudo-random bytes from `seed` (incompressible).
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    (0..len).map(|_| (rng.next_u64() >> 32) as u8).collect()
}

/// Overwrites `len` bytes of an existing file at `offset` with pseudo-random data from
/// `seed`, streamed one MiB at a time.
pub fn write_random(path: &Path, offset: u64, len: u64, seed: u64) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut rng = Rng(seed | 1);
    let mut buf = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        for c in buf.chunks_exact_mut(8) {
            c.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        let n = left.min(MIB) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

//! Test helpers: deterministic data and a hand-built (non-Proxmox) archive builder.
#![allow(dead_code)]

use md5::Digest;
use sha2::Sha256;

pub const CS: usize = 65536;
pub const BS: usize = 4096;

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A disk image with a mix of random blocks, zero blocks and zero clusters.
pub fn mixed_image(seed: u64, size: usize) -> Vec<u8> {
    let mut img = pseudo_random(seed, size);
    for (i, block) in img.chunks_mut(BS).enumerate() {
        let cluster = i / 16;
        if cluster % 5 == 2 || i % 3 == 1 {
            block.fill(0);
        }
    }
    img
}

pub fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Deterministic permutation of 0..n.
pub fn shuffled(n: u64, seed: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..n).collect();
    let r = pseudo_random(seed, (n as usize + 1) * 8);
    for i in (1..v.len()).rev() {
        let j =
            (u64::from_le_bytes(r[i * 8..i * 8 + 8].try_into().unwrap()) % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

pub struct Slot {
    pub dev: u8,
    pub cluster: u32,
    pub mask: u16,
    /// Full 64 KiB cluster; blocks whose mask bit is set are stored.
    pub data: Vec<u8>,
}

pub struct Hand {
    pub uuid: [u8; 16],
    pub ctime: i64,
    pub configs: Vec<(String, Vec<u8>)>,
    pub devices: Vec<(String, u64)>,
    /// Store configs in reverse slot order in the blob buffer.
    pub reverse_blobs: bool,
    /// Blob buffer padding: (used / 512 + 1) * 512 instead of Proxmox growth.
    pub extents: Vec<Vec<Slot>>,
}

impl Hand {
    pub fn new(devices: Vec<(String, u64)>) -> Self {
        Hand {
            uuid: [0xAB; 16],
            ctime: 1_600_000_000,
            configs: vec![("qemu-server.conf".into(), b"name: hand\n".to_vec())],
            devices,
            reverse_blobs: true,
            extents: Vec::new(),
        }
    }

    pub fn build(&self) -> Vec<u8> {
        // Blob buffer with a leading pad byte; names first in device order (unlike Proxmox).
        let mut blob = vec![0u8];
        let push = |blob: &mut Vec<u8>, d: &[u8]| -> u32 {
            let at = blob.len() as u32;
            blob.extend_from_slice(&(d.len() as u16).to_le_bytes());
            blob.extend_from_slice(d);
            at
        };
        let mut dev_ptrs = Vec::new();
        for (name, _) in &self.devices {
            let mut n = name.as_bytes().to_vec();
            n.push(0);
            dev_ptrs.push(push(&mut blob, &n));
        }
        let mut cfg_ptrs = vec![(0u32, 0u32); self.configs.len()];
        let order: Vec<usize> = if self.reverse_blobs {
            (0..self.configs.len()).rev().collect()
        } else {
            (0..self.configs.len()).collect()
        };
        for i in order {
            let (name, data) = &self.configs[i];
            let mut n = name.as_bytes().to_vec();
            n.push(0);
            let np = push(&mut blob, &n);
            let dp = push(&mut blob, data);
            cfg_ptrs[i] = (np, dp);
        }
        let used = blob.len();
        let table = (used / 512 + 1) * 512;
        let header_size = 12288 + table;
        let mut h = vec![0u8; header_size];
        h[0..4].copy_from_slice(b"VMA\0");
        h[4..8].copy_from_slice(&1u32.to_be_bytes());
        h[8..24].copy_from_slice(&self.uuid);
        h[24..32].copy_from_slice(&self.ctime.to_be_bytes());
        h[48..52].copy_from_slice(&12288u32.to_be_bytes());
        h[52..56].copy_from_slice(&(used as u32).to_be_bytes());
        h[56..60].copy_from_slice(&(header_size as u32).to_be_bytes());
        for (i, (np, dp)) in cfg_ptrs.iter().enumerate() {
            h[2044 + 4 * i..2048 + 4 * i].copy_from_slice(&np.to_be_bytes());
            h[3068 + 4 * i..3072 + 4 * i].copy_from_slice(&dp.to_be_bytes());
        }
        for (i, (_, size)) in self.devices.iter().enumerate() {
            let at = 4096 + 32 * (i + 1);
            h[at..at + 4].copy_from_slice(&dev_ptrs[i].to_be_bytes());
            h[at + 8..at + 16].copy_from_slice(&size.to_be_bytes());
        }
        h[12288..12288 + used].copy_from_slice(&blob);
        let md5: [u8; 16] = md5::Md5::digest(&h).into();
        h[32..48].copy_from_slice(&md5);
        let mut out = h;
        for ext in &self.extents {
            out.extend_from_slice(&extent_bytes(&self.uuid, ext));
        }
        out
    }
}

pub fn extent_bytes(uuid: &[u8; 16], slots: &[Slot]) -> Vec<u8> {
    assert!(slots.len() <= 59);
    let mut e = vec![0u8; 512];
    let mut blocks = 0u16;
    for (i, s) in slots.iter().enumerate() {
        let info = (u64::from(s.mask) << 48) | (u64::from(s.dev) << 32) | u64::from(s.cluster);
        e[40 + 8 * i..48 + 8 * i].copy_from_slice(&info.to_be_bytes());
        for b in 0..16 {
            if s.mask & (1 << b) != 0 {
                e.extend_from_slice(&s.data[b * BS..(b + 1) * BS]);
                blocks += 1;
            }
        }
    }
    e[0..4].copy_from_slice(b"VMAE");
    e[6..8].copy_from_slice(&blocks.to_be_bytes());
    e[8..24].copy_from_slice(uuid);
    reseal_extent(&mut e[..512]);
    e
}

/// Recompute the MD5 of a 512-byte extent header.
pub fn reseal_extent(h: &mut [u8]) {
    h[24..40].fill(0);
    let md5: [u8; 16] = md5::Md5::digest(&h[..512]).into();
    h[24..40].copy_from_slice(&md5);
}

/// Recompute the MD5 of a header of `size` bytes at the start of `a`.
pub fn reseal_header(a: &mut [u8]) {
    let size = u32::from_be_bytes(a[56..60].try_into().unwrap()) as usize;
    a[32..48].fill(0);
    let md5: [u8; 16] = md5::Md5::digest(&a[..size]).into();
    a[32..48].copy_from_slice(&md5);
}

/// Mask of the non-zero blocks of a full cluster.
pub fn mask_of(data: &[u8]) -> u16 {
    let mut m = 0;
    for b in 0..16 {
        if data[b * BS..(b + 1) * BS].iter().any(|&x| x != 0) {
            m |= 1 << b;
        }
    }
    m
}

/// Read a whole archive through the streaming reader into per-device images
/// (index = position in header.devices). Returns the images or the first error.
pub fn read_all(bytes: &[u8]) -> Result<(vmdump_vma::Header, Vec<Vec<u8>>), vmdump_vma::Error> {
    let mut r = vmdump_vma::Reader::new(bytes)?;
    let header = r.header().clone();
    let mut imgs: Vec<Vec<u8>> = header
        .devices
        .iter()
        .map(|d| vec![0u8; d.size as usize])
        .collect();
    while let Some(ext) = r.next_extent()? {
        for c in ext.clusters() {
            let pos = header
                .devices
                .iter()
                .position(|d| d.id == c.dev_id)
                .unwrap();
            let img = &mut imgs[pos];
            let start = c.cluster as usize * CS;
            let end = (start + CS).min(img.len());
            c.expand_into(&mut img[start..end]);
        }
    }
    r.finish()?;
    Ok((header, imgs))
}

/// Write images with our writer, clusters in a shuffled order across devices.
pub fn write_images(
    names: &[&str],
    imgs: &[Vec<u8>],
    configs: &[(&str, &[u8])],
    seed: u64,
) -> Vec<u8> {
    let mut w = vmdump_vma::Writer::with_identity(Vec::new(), [0x42; 16], Some(1_700_000_000));
    for (n, d) in configs {
        w.add_config(n, d).unwrap();
    }
    let ids: Vec<_> = names
        .iter()
        .zip(imgs)
        .map(|(n, i)| w.register_device(n, i.len() as u64).unwrap())
        .collect();
    let mut work = Vec::new();
    for (k, img) in imgs.iter().enumerate() {
        for c in 0..img.len().div_ceil(CS) as u64 {
            work.push((k, c));
        }
    }
    let order = shuffled(work.len() as u64, seed);
    for i in order {
        let (k, c) = work[i as usize];
        let img = &imgs[k];
        let start = c as usize * CS;
        let end = (start + CS).min(img.len());
        w.write_cluster(ids[k], c, &img[start..end]).unwrap();
    }
    w.finish().unwrap().0
}

//! Write seed inputs for the fuzz targets: small valid archives (with the mode byte the
//! targets expect in front) so fuzzing starts past the checksums.

use std::path::Path;

use vmdump_vma::Writer;

fn archive(devices: &[(&str, u64)], seed: u8) -> Vec<u8> {
    let mut w = Writer::with_identity(Vec::new(), [seed; 16], Some(1_700_000_000));
    w.add_config("qemu-server.conf", b"memory: 512\n")
        .expect("config");
    let ids: Vec<_> = devices
        .iter()
        .map(|(n, s)| w.register_device(n, *s).expect("device"))
        .collect();
    for ((_, size), id) in devices.iter().zip(&ids) {
        for c in 0..size.div_ceil(65536) {
            let mut buf = vec![0u8; 65536];
            for (i, b) in buf
                .iter_mut()
                .enumerate()
                .step_by(4096 * (1 + c as usize % 3))
            {
                *b = seed ^ (i >> 12) as u8 ^ c as u8;
            }
            w.write_cluster(*id, c, &buf).expect("cluster");
        }
    }
    w.finish().expect("finish").0
}

fn main() -> std::io::Result<()> {
    let root = Path::new("corpus");
    let archives = [
        archive(&[("drive-scsi0", 3 * 65536 + 100)], 1),
        archive(&[("a", 4096), ("b", 65536)], 2),
        archive(&[], 3),
    ];
    for t in ["vma_stream", "vma_header", "vma_extent"] {
        std::fs::create_dir_all(root.join(t))?;
    }
    for (i, a) in archives.iter().enumerate() {
        for mode in [0u8, 1] {
            let mut v = vec![mode];
            v.extend_from_slice(a);
            std::fs::write(root.join("vma_stream").join(format!("seed-{i}-{mode}")), &v)?;
            let hs = u32::from_be_bytes([a[56], a[57], a[58], a[59]]) as usize;
            let mut h = vec![0u8];
            h.extend_from_slice(&a[..hs]);
            std::fs::write(root.join("vma_header").join(format!("seed-{i}")), &h)?;
            let mut e = a[8..24].to_vec();
            e.extend_from_slice(&a[hs..hs + 512]);
            e.push(mode);
            std::fs::write(root.join("vma_extent").join(format!("seed-{i}-{mode}")), &e)?;
        }
    }
    // Regression: device sizes whose sum overflows u64 (a CI crash of the harness itself).
    // Mode 1 re-seals the header checksum, so the reader gets past it.
    let mut big = vec![1u8];
    big.extend_from_slice(&archives[1]);
    for dev in [1usize, 2] {
        let at = 1 + 4096 + 32 * dev + 8;
        big[at..at + 8].copy_from_slice(&((1u64 << 63) + 4096).to_be_bytes());
    }
    std::fs::write(
        root.join("vma_stream").join("regress-size-sum-overflow"),
        &big,
    )?;
    // Seekable zstd files of our writer (small frames), so the table parser starts valid.
    std::fs::create_dir_all(root.join("seekable_table"))?;
    for (i, a) in archives.iter().enumerate() {
        let mut w = vmdump_compress::SeekableWriter::with_frame_size(Vec::new(), 1, 1, 4096)?;
        std::io::Write::write_all(&mut w, &a[..a.len().min(100_000)])?;
        std::fs::write(
            root.join("seekable_table").join(format!("seed-{i}")),
            w.finish()?,
        )?;
    }
    // lzop streams of our writer, and raw LZO1X blocks with a generous limit in front.
    for t in ["lzop_stream", "lzo_block", "qmp_codec"] {
        std::fs::create_dir_all(root.join(t))?;
    }
    for (i, a) in archives.iter().enumerate() {
        let mut w = vmdump_compress::LzopWriter::new(Vec::new());
        std::io::Write::write_all(&mut w, &a[..a.len().min(300_000)])?;
        std::fs::write(
            root.join("lzop_stream").join(format!("seed-{i}")),
            w.finish()?,
        )?;
        let mut b = vec![0xFF, 0xFF];
        b.extend_from_slice(&vmdump_compress::lzo1x_compress(&a[..a.len().min(60_000)]));
        std::fs::write(root.join("lzo_block").join(format!("seed-{i}")), b)?;
    }
    // A QMP conversation: greeting, a return, an event, a delimiter.
    let qmp = concat!(
        "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}}, \"capabilities\": []}}\r\n",
        "{\"return\": {}, \"id\": 1}\n",
        "{\"event\": \"JOB_STATUS_CHANGE\", \"data\": {\"status\": \"running\", \"id\": \"j\"}}\n",
    );
    let mut q = vec![200u8, 7];
    q.extend_from_slice(qmp.as_bytes());
    q.push(0xFF);
    q.extend_from_slice(b"{\"return\": 1}\n");
    std::fs::write(root.join("qmp_codec").join("seed-0"), q)?;
    Ok(())
}

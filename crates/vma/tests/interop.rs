//! Interop with an independent reader: fox-it's dissect.archive (Python).

mod common;
use common::*;
use std::process::Command;

const SCRIPT: &str = r#"
import hashlib, sys
from dissect.archive.vma import VMA
with open(sys.argv[1], "rb") as fh:
    vma = VMA(fh)
    for dev in sorted(vma.devices(), key=lambda d: d.id):
        s = dev.open()
        h = hashlib.sha256()
        left = dev.size
        while left:
            b = s.read(min(left, 1 << 20))
            if not b:
                break
            h.update(b)
            left -= len(b)
        print(dev.id, dev.name, dev.size, h.hexdigest())
"#;

#[test]
fn dissect_archive_reads_our_devices() {
    let imgs = vec![
        mixed_image(21, 540_672),
        mixed_image(22, 130 * CS),
        pseudo_random(23, 12345),
    ];
    let names = ["drive-efidisk0", "drive-scsi0", "drive-virtio1"];
    let a = write_images(&names, &imgs, &[("qemu-server.conf", b"memory: 512\n")], 99);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.vma");
    std::fs::write(&path, &a).unwrap();
    let out = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(&path)
        .output()
        .expect("python3 must be installed (scripts/setup.sh)");
    assert!(
        out.status.success(),
        "dissect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    for (i, line) in lines.iter().enumerate() {
        let want = format!(
            "{} {} {} {}",
            i + 1,
            names[i],
            imgs[i].len(),
            sha256(&imgs[i])
        );
        assert_eq!(*line, want);
    }
}

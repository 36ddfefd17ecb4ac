//! The files of `vma create` and `vma extract` ([`OutputFile`], [`ExtractDir`]): complete
//! and durable, or gone.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use vmdump_vma::{
    DeviceSink, Error, Extract, ExtractDir, MapEntry, OutputFile, ReadTally, Reader, Selection,
    Writer, CLUSTER_SIZE, VMSTATE_NAME,
};

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Data in the first and last bytes of every other 4 KiB block.
fn disk(size: usize, seed: u8) -> Vec<u8> {
    let mut d = vec![0u8; size];
    for (n, b) in d.chunks_mut(4096).enumerate().filter(|(n, _)| n % 2 == 0) {
        b[0] = seed ^ n as u8 | 1;
        let last = b.len() - 1;
        b[last] = seed;
    }
    d
}

/// An archive with a config, `drive-scsi0` (3 clusters + 1000 bytes), `drive-scsi1`
/// (1 cluster) and a vmstate stream of 2 clusters.
fn archive() -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
    let a = disk(3 * CLUSTER_SIZE + 1000, 5);
    let b = disk(CLUSTER_SIZE, 9);
    let state: Vec<u8> = (0..2 * CLUSTER_SIZE).map(|i| (i % 251) as u8).collect();
    let mut w = Writer::with_identity(Vec::new(), [1; 16], Some(1_700_000_000));
    w.add_config("qemu-server.conf", b"memory: 64\n").unwrap();
    let da = w.register_device("drive-scsi0", a.len() as u64).unwrap();
    let db = w.register_device("drive-scsi1", b.len() as u64).unwrap();
    let ds = w.register_device(VMSTATE_NAME, state.len() as u64).unwrap();
    for (id, data) in [(da, &a), (db, &b), (ds, &state)] {
        for (c, chunk) in data.chunks(CLUSTER_SIZE).enumerate() {
            w.write_cluster(id, c as u64, chunk).unwrap();
        }
    }
    (w.finish().unwrap().0, a, b, state)
}

/// Extracts `bytes` into `dir` with `select`; returns the announced `DEVINFO` targets.
fn extract(bytes: &[u8], dir: &Path, select: Selection<'_>) -> Result<Vec<(PathBuf, u64)>, Error> {
    let reader = Reader::new(bytes)?;
    let header = reader.header().clone();
    let mut target = ExtractDir::create(dir, &header)?;
    let mut announced = Vec::new();
    target.add_devices(&header, select, |p, size| -> Result<(), Error> {
        announced.push((p.to_path_buf(), size));
        Ok(())
    })?;
    let mut tally = ReadTally::new(&header, |d| !d.is_vmstate());
    target.run(reader, &mut tally, |_, _| Ok::<(), Error>(()))?;
    Ok(announced)
}

#[test]
fn extract_writes_every_device_under_its_final_name() {
    let (bytes, a, b, state) = archive();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("x");
    let announced = extract(&bytes, &dir, Selection::default()).unwrap();
    assert_eq!(
        announced,
        [
            (dir.join("tmp-disk-drive-scsi0.raw"), a.len() as u64),
            (dir.join("tmp-disk-drive-scsi1.raw"), b.len() as u64)
        ]
    );
    assert_eq!(
        names(&dir),
        [
            "disk-drive-scsi0.raw",
            "disk-drive-scsi1.raw",
            "qemu-server.conf",
            "vmstate.bin"
        ]
    );
    assert!(std::fs::read(dir.join("disk-drive-scsi0.raw")).unwrap() == a);
    assert!(std::fs::read(dir.join("disk-drive-scsi1.raw")).unwrap() == b);
    assert!(std::fs::read(dir.join("vmstate.bin")).unwrap() == state);
    assert_eq!(
        std::fs::read(dir.join("qemu-server.conf")).unwrap(),
        b"memory: 64\n"
    );
}

#[test]
fn extract_of_chosen_drives_only() {
    let (bytes, _, b, _) = archive();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("x");
    let drives = ["drive-scsi1"];
    let select = Selection {
        drives: Some(&drives),
        map: None,
    };
    extract(&bytes, &dir, select).unwrap();
    assert_eq!(
        names(&dir),
        ["disk-drive-scsi1.raw", "qemu-server.conf", "vmstate.bin"]
    );
    assert!(std::fs::read(dir.join("disk-drive-scsi1.raw")).unwrap() == b);
}

#[test]
fn extract_through_a_device_map() {
    let (bytes, a, _, _) = archive();
    let tmp = tempfile::tempdir().unwrap();
    // An existing target a bit larger than the device, full of 0xff: with `1:` the blocks
    // the archive does not store are written as zeros.
    let target = tmp.path().join("t.raw");
    std::fs::write(&target, vec![0xffu8; a.len() + 512]).unwrap();
    let entry = |line: &str| vmdump_vma::parse_map_line(line).unwrap();
    let map: HashMap<String, MapEntry> = [
        entry(&format!("format=raw:1:drive-scsi0={}", target.display())),
        entry("skip=drive-scsi1"),
    ]
    .into_iter()
    .collect();
    let select = Selection {
        drives: None,
        map: Some(&map),
    };
    let announced = extract(&bytes, &tmp.path().join("x"), select).unwrap();
    assert!(announced.is_empty());
    let got = std::fs::read(&target).unwrap();
    assert!(got[..a.len()] == a[..], "mapped target differs");
    assert!(got[a.len()..].iter().all(|&x| x == 0xff));
    assert_eq!(
        names(&tmp.path().join("x")),
        ["qemu-server.conf", "vmstate.bin"]
    );

    // A device without a line, a target of the wrong size or format: refused, and the
    // directory is gone again.
    for (lines, want) in [
        (
            vec!["skip=drive-scsi1".to_string()],
            "no device name mapping",
        ),
        (
            vec![
                format!("0:drive-scsi0={}", tmp.path().join("small.raw").display()),
                "skip=drive-scsi1".into(),
            ],
            "unexpected size 100 != ",
        ),
        (
            vec![
                format!("format=qcow2:0:drive-scsi0={}", target.display()),
                "skip=drive-scsi1".into(),
            ],
            "unsupported format 'qcow2'",
        ),
    ] {
        std::fs::write(tmp.path().join("small.raw"), [0u8; 100]).unwrap();
        let map: HashMap<String, MapEntry> = lines.iter().map(|l| entry(l)).collect();
        let select = Selection {
            drives: None,
            map: Some(&map),
        };
        let dir = tmp.path().join("y");
        let err = extract(&bytes, &dir, select).unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
        assert!(!dir.exists(), "{want}: the directory stayed");
    }
    // A target 4 MiB larger than the device is refused too (Proxmox's bound).
    std::fs::write(&target, vec![0u8; a.len() + (4 << 20)]).unwrap();
    let map: HashMap<String, MapEntry> = [
        entry(&format!("0:drive-scsi0={}", target.display())),
        entry("skip=drive-scsi1"),
    ]
    .into_iter()
    .collect();
    let select = Selection {
        drives: None,
        map: Some(&map),
    };
    let err = extract(&bytes, &tmp.path().join("z"), select).unwrap_err();
    assert!(matches!(err, Error::TargetSize { .. }), "{err}");
}

#[test]
fn a_failed_extract_removes_everything_it_created() {
    let (bytes, ..) = archive();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("x");
    for cut in [bytes.len() - 1, bytes.len() / 2] {
        let err = extract(&bytes[..cut], &dir, Selection::default()).unwrap_err();
        assert!(!dir.exists(), "{err}: left {:?}", names(&dir));
    }
    // An existing directory is refused and left alone.
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("mine"), b"x").unwrap();
    let err = extract(&bytes, &dir, Selection::default()).unwrap_err();
    assert!(matches!(err, Error::TargetDir { .. }), "{err}");
    assert!(err
        .to_string()
        .contains("unable to create target directory"));
    assert_eq!(names(&dir), ["mine"]);
}

#[test]
fn output_file_stays_only_when_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("a.vma");
    let out = OutputFile::open(&path).unwrap();
    assert!(out.is_regular());
    out.file().write_all(b"VMA").unwrap();
    drop(out);
    assert!(!path.exists(), "an uncommitted output stayed");

    let out = OutputFile::open(&path).unwrap();
    out.file().write_all(b"VMA").unwrap();
    out.commit().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"VMA");

    // An existing file is never overwritten, nor removed.
    let err = OutputFile::open(&path).unwrap_err();
    assert!(err.to_string().contains("can't open file"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"VMA");
}

/// Names from the archive that would leave the target directory are refused, and the
/// directory goes again.
#[test]
fn unsafe_names_from_the_archive_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("x");
    for bad in ["..", ".", "a/b", "../evil"] {
        for as_device in [false, true] {
            let mut w = Writer::with_identity(Vec::new(), [2; 16], Some(1));
            let (config, device) = if as_device {
                ("qemu-server.conf", bad)
            } else {
                (bad, "drive-scsi0")
            };
            w.add_config(config, b"x").unwrap();
            let id = w.register_device(device, 4096).unwrap();
            w.write_cluster(id, 0, &[1u8; 4096]).unwrap();
            let bytes = w.finish().unwrap().0;
            let err = extract(&bytes, &dir, Selection::default()).unwrap_err();
            assert!(
                matches!(&err, Error::UnsafeName { name, .. } if name == bad),
                "{bad:?}: {err}"
            );
            assert!(!dir.exists(), "{bad:?}");
            assert!(!tmp.path().join("evil").exists());
        }
    }
}

/// With `0:` in the map, blocks the archive does not store are left as they are in the
/// target; a target of exactly the device size is fine for a device of some MiB.
#[test]
fn mapped_targets_without_write_zero_keep_unstored_blocks() {
    let size = 3 << 20;
    let mut d = vec![0u8; size];
    d[..4096].fill(7);
    d[size - 4096..].fill(8);
    let mut w = Writer::with_identity(Vec::new(), [4; 16], Some(1));
    let id = w.register_device("drive-scsi0", size as u64).unwrap();
    for (c, chunk) in d.chunks(CLUSTER_SIZE).enumerate() {
        w.write_cluster(id, c as u64, chunk).unwrap();
    }
    let bytes = w.finish().unwrap().0;
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("t.raw");
    std::fs::write(&target, vec![0xffu8; size]).unwrap();
    let map: HashMap<String, MapEntry> =
        [vmdump_vma::parse_map_line(&format!("0:drive-scsi0={}", target.display())).unwrap()]
            .into_iter()
            .collect();
    let select = Selection {
        drives: None,
        map: Some(&map),
    };
    extract(&bytes, &tmp.path().join("x"), select).unwrap();
    let got = std::fs::read(&target).unwrap();
    assert!(got[..4096].iter().all(|&b| b == 7));
    assert!(got[4096..size - 4096].iter().all(|&b| b == 0xff));
    assert!(got[size - 4096..].iter().all(|&b| b == 8));
}

struct Nowhere;

impl DeviceSink for Nowhere {
    fn write_at(&mut self, _: &[u8], _: u64) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn extract_says_which_devices_it_writes() {
    let mut sink = Nowhere;
    let mut job = Extract::new();
    job.add(3, &mut sink, false);
    assert!(job.writes(3));
    assert!(!job.writes(2) && !job.writes(4));
}

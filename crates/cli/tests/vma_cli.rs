//! End-to-end tests of `vmdump vma` through the built binary.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use vmdump_testkit::{pseudo_random, sha256_bytes as sha};

const BIN: &str = env!("CARGO_BIN_EXE_vmdump");
const CS: usize = 65536;

fn vma(args: &[&str]) -> Output {
    Command::new(BIN).arg("vma").args(args).output().unwrap()
}

fn vma_tz(tz: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .env("TZ", tz)
        .arg("vma")
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Image with random clusters, zero clusters and half-zero clusters.
fn image(seed: u64, size: usize) -> Vec<u8> {
    let mut img = pseudo_random(seed, size);
    for (i, c) in img.chunks_mut(CS).enumerate() {
        match i % 4 {
            1 => c.fill(0),
            2 => {
                let n = c.len().min(CS / 2);
                c[..n].fill(0);
            }
            _ => {}
        }
    }
    img
}

/// `d` as an archive made by `vma create` holds it: zero-padded to whole 512-byte sectors,
/// the size Proxmox's `vma create` records.
fn sector_padded(d: &[u8]) -> Vec<u8> {
    let mut v = d.to_vec();
    v.resize(d.len().div_ceil(512) * 512, 0);
    v
}

/// Archive with pinned uuid/ctime written by the library.
fn pinned_archive(ctime: i64, disks: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = vmdump_vma::Writer::with_identity(Vec::new(), [9; 16], Some(ctime));
    w.add_config(
        "qemu-server.conf",
        b"memory: 512\n#qmdump#map:scsi0:drive-scsi0:local:raw:\n",
    )
    .unwrap();
    w.add_config("qemu-server.fw", b"[OPTIONS]\nenable: 1\n")
        .unwrap();
    let ids: Vec<_> = disks
        .iter()
        .map(|(n, d)| w.register_device(n, d.len() as u64).unwrap())
        .collect();
    for ((_, d), id) in disks.iter().zip(&ids) {
        for (c, chunk) in d.chunks(CS).enumerate() {
            w.write_cluster(*id, c as u64, chunk).unwrap();
        }
    }
    w.finish().unwrap().0
}

#[test]
fn list_output_is_byte_exact_in_two_timezones() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.vma");
    let d1 = image(1, 540_672);
    let d2 = image(2, 3 * CS);
    std::fs::write(
        &a,
        pinned_archive(
            1_708_300_805,
            &[("drive-efidisk0", &d1), ("drive-scsi0", &d2)],
        ),
    )
    .unwrap();
    let a = a.to_str().unwrap();
    let body = "CFG: size: 53 name: qemu-server.conf\n\
                CFG: size: 20 name: qemu-server.fw\n\
                DEV: dev_id=1 size: 540672 devname: drive-efidisk0\n\
                DEV: dev_id=2 size: 196608 devname: drive-scsi0\n";
    let out = vma_tz("UTC", &["list", a]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout),
        format!("{body}CTIME: Mon Feb 19 00:00:05 2024\n")
    );
    let out = vma_tz("Europe/Vienna", &["list", a]);
    assert_eq!(
        text(&out.stdout),
        format!("{body}CTIME: Mon Feb 19 01:00:05 2024\n")
    );
    // single-digit day is space padded like C ctime()
    std::fs::write(
        dir.path().join("b.vma"),
        pinned_archive(1_693_906_161, &[("d", &d2)]),
    )
    .unwrap();
    let out = vma_tz(
        "Europe/Vienna",
        &["list", dir.path().join("b.vma").to_str().unwrap()],
    );
    assert!(
        text(&out.stdout).ends_with("CTIME: Tue Sep  5 11:29:21 2023\n"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn config_command_and_missing_config_exit_255() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.vma");
    std::fs::write(&a, pinned_archive(1, &[("d", &[1u8; 10])])).unwrap();
    let a = a.to_str().unwrap();
    let out = vma(&["config", a]);
    assert!(out.status.success());
    assert_eq!(
        out.stdout,
        b"memory: 512\n#qmdump#map:scsi0:drive-scsi0:local:raw:\n"
    );
    let out = vma(&["config", a, "-c", "qemu-server.fw"]);
    assert_eq!(out.stdout, b"[OPTIONS]\nenable: 1\n");
    let out = vma(&["config", "-c", "nope.conf", a]);
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(
        text(&out.stderr),
        "unable to find configuration data 'nope.conf'\n"
    );
    assert!(out.stdout.is_empty());
}

fn sh(script: &str) -> Output {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .env("VMDUMP", BIN)
        .output()
        .unwrap();
    assert!(out.status.success(), "{script}: {}", text(&out.stderr));
    out
}

#[test]
fn create_then_extract_round_trip_sparse() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let d1 = image(3, 540_672);
    let d2 = image(4, 20 * CS + 4097);
    std::fs::write(p("d1.raw"), &d1).unwrap();
    std::fs::write(p("d2.raw"), &d2).unwrap();
    // a mostly-empty sparse image
    let f = std::fs::File::create(p("d3.raw")).unwrap();
    f.set_len(64 * 1024 * 1024).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"hello", 10 * 1024 * 1024).unwrap();
    drop(f);
    std::fs::write(p("qemu-server.conf"), "memory: 64\n").unwrap();
    let out = vma(&[
        "create",
        &p("a.vma"),
        "-v",
        "-c",
        &p("qemu-server.conf"),
        "-d",
        &format!("format=raw:drive-efidisk0={}", p("d1.raw")),
        "-d",
        &format!("format=raw:drive-scsi0={}", p("d2.raw")),
        "-d",
        &format!("format=raw:{}", p("d3.raw")),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("progress 100% "), "{err}");
    assert!(
        err.contains("image disk2: size=67108864 zeros=67104768 saved=4096\n"),
        "{err}"
    );
    let out = vma(&["extract", "-v", &p("a.vma"), &p("x")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let so = text(&out.stdout);
    assert!(
        so.starts_with(&format!(
        "DEVINFO {}/tmp-disk-drive-efidisk0.raw 540672\nDEVINFO {}/tmp-disk-drive-scsi0.raw {}\n",
        p("x"),
        p("x"),
        sector_padded(&d2).len()
    )),
        "{so}"
    );
    assert!(so.contains("total bytes read "), "{so}");
    for (name, want) in [
        ("drive-efidisk0", &d1),
        ("drive-scsi0", &sector_padded(&d2)),
    ] {
        let got = std::fs::read(p(&format!("x/disk-{name}.raw"))).unwrap();
        assert_eq!(sha(&got), sha(want), "{name}");
    }
    let big = p("x/disk-disk2.raw");
    let meta = std::fs::metadata(&big).unwrap();
    assert_eq!(meta.len(), 64 * 1024 * 1024);
    assert!(
        meta.blocks() * 512 < 1024 * 1024,
        "extracted file is not sparse: {} blocks",
        meta.blocks()
    );
    assert_eq!(
        sha(&std::fs::read(&big).unwrap()),
        sha(&std::fs::read(p("d3.raw")).unwrap())
    );
    assert_eq!(
        std::fs::read(p("x/qemu-server.conf")).unwrap(),
        b"memory: 64\n"
    );
    assert!(!Path::new(&p("x/tmp-disk-drive-scsi0.raw")).exists());
    // target directory must not exist
    let out = vma(&["extract", &p("a.vma"), &p("x")]);
    assert_eq!(out.status.code(), Some(255));
    assert!(text(&out.stderr).contains("unable to create target directory"));
    // -d selects devices
    let out = vma(&["extract", "-d", "drive-scsi0", &p("a.vma"), &p("y")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(Path::new(&p("y/disk-drive-scsi0.raw")).exists());
    assert!(!Path::new(&p("y/disk-drive-efidisk0.raw")).exists());
}

#[test]
fn compressed_archives_through_the_real_tools() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let d = image(5, 40 * CS + 1000);
    std::fs::write(p("d.raw"), &d).unwrap();
    sh(&format!(
        "\"$VMDUMP\" vma create {} -d format=raw:drive-scsi0={}",
        p("a.vma"),
        p("d.raw")
    ));
    let plain = std::fs::read(p("a.vma")).unwrap();
    for (tool, ext) in [("zstd -q -c", "zst"), ("lzop -c", "lzo"), ("gzip -c", "gz")] {
        // their compression, our reading from a pipe
        sh(&format!(
            "{tool} < {} | \"$VMDUMP\" vma extract - {}",
            p("a.vma"),
            p(&format!("x{ext}"))
        ));
        let got = std::fs::read(p(&format!("x{ext}/disk-drive-scsi0.raw"))).unwrap();
        assert_eq!(sha(&got), sha(&sector_padded(&d)), "{tool}");
        // our compression, their decompression
        let codec = match ext {
            "zst" => "zstd",
            "lzo" => "lzo",
            _ => "gzip",
        };
        let name = p(&format!("c.vma.{ext}"));
        sh(&format!(
            "\"$VMDUMP\" vma create --compress {codec} {name} -d format=raw:drive-scsi0={}",
            p("d.raw")
        ));
        let dec = match ext {
            "zst" => "zstd -q -d -c",
            "lzo" => "lzop -d -c",
            _ => "zcat",
        };
        let out = sh(&format!("{dec} {name} | \"$VMDUMP\" vma verify -v -"));
        assert!(text(&out.stdout).contains("DEV: dev_id=1 size: 2622464 devname: drive-scsi0"));
        // and our own reader on the compressed file directly
        let out = vma(&["verify", &name]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let out = sh(&format!("{dec} {name} | wc -c"));
        assert_eq!(text(&out.stdout).trim(), plain.len().to_string());
    }
    // exec: output like vzdump's diskless backups
    sh(&format!(
        "\"$VMDUMP\" vma create 'exec:zstd -q > {}' -d format=raw:drive-scsi0={}",
        p("e.vma.zst"),
        p("d.raw")
    ));
    let out = vma(&["list", &p("e.vma.zst")]);
    assert!(text(&out.stdout).contains("devname: drive-scsi0"));
}

#[test]
fn extract_with_map_fifo_session() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let d1 = image(6, 540_672);
    let d2 = image(7, 9 * CS + 12_288);
    std::fs::write(
        p("a.vma"),
        pinned_archive(
            1_708_300_805,
            &[("drive-efidisk0", &d1), ("drive-scsi0", &d2)],
        ),
    )
    .unwrap();
    sh(&format!("mkfifo {}", p("map.fifo")));
    // restore targets are pre-allocated, as qmrestore does; the scsi0 target holds garbage
    // so that write-zeros (1:) has to clear it.
    std::fs::write(p("t2.raw"), vec![0xEEu8; d2.len()]).unwrap();
    let mut child = Command::new(BIN)
        .env("TZ", "UTC")
        .args(["vma", "extract", "-v", "-r", &p("map.fifo"), "-", &p("tmp")])
        .stdin(std::fs::File::open(p("a.vma")).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "EOF before CTIME: {head}"
        );
        head.push_str(&line);
        if line.starts_with("CTIME: ") {
            break;
        }
    }
    assert_eq!(
        head,
        "CFG: size: 53 name: qemu-server.conf\n\
         CFG: size: 20 name: qemu-server.fw\n\
         DEV: dev_id=1 size: 540672 devname: drive-efidisk0\n\
         DEV: dev_id=2 size: 602112 devname: drive-scsi0\n\
         CTIME: Mon Feb 19 00:00:05 2024\n"
    );
    // configs are already in tmpdir when CTIME is printed
    assert_eq!(
        std::fs::read(p("tmp/qemu-server.fw")).unwrap(),
        b"[OPTIONS]\nenable: 1\n"
    );
    let mut fifo = std::fs::OpenOptions::new()
        .write(true)
        .open(p("map.fifo"))
        .unwrap();
    writeln!(fifo, "skip=drive-efidisk0").unwrap();
    writeln!(fifo, "format=raw:1:drive-scsi0={}", p("t2.raw")).unwrap();
    writeln!(fifo, "done").unwrap();
    drop(fifo);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
    assert!(rest.contains("progress "), "{rest}");
    assert!(
        rest.contains("total bytes read 1245184, sparse bytes "),
        "{rest}"
    );
    assert_eq!(sha(&std::fs::read(p("t2.raw")).unwrap()), sha(&d2));
    // no disk files in tmpdir in map mode
    assert!(!Path::new(&p("tmp/disk-drive-scsi0.raw")).exists());
}

#[test]
fn map_errors_and_create_errors_exit_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    std::fs::write(
        p("a.vma"),
        pinned_archive(1, &[("drive-scsi0", &image(8, 3 * CS))]),
    )
    .unwrap();
    std::fs::write(p("map"), "done\n").unwrap();
    let out = vma(&["extract", "-r", &p("map"), &p("a.vma"), &p("t")]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("no device name mapping for drive-scsi0"),
        "{}",
        text(&out.stderr)
    );
    std::fs::write(p("small.raw"), vec![0u8; 100]).unwrap();
    std::fs::write(p("map2"), format!("0:drive-scsi0={}\n", p("small.raw"))).unwrap();
    let out = vma(&["extract", "-r", &p("map2"), &p("a.vma"), &p("t2")]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("unexpected size 100 != 196608"),
        "{}",
        text(&out.stderr)
    );

    std::fs::write(p("d.raw"), vec![1u8; 1000]).unwrap();
    let out = vma(&[
        "create",
        &p("q.vma"),
        "-d",
        &format!("format=qcow2:{}", p("d.raw")),
    ]);
    // Not a qcow2 image: qemu-storage-daemon refuses to open it.
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("bdrv_open"),
        "{}",
        text(&out.stderr)
    );
    assert!(!Path::new(&p("q.vma")).exists());
    let out = vma(&["create", &p("q.vma"), "-d", &p("d.raw")]);
    assert!(text(&out.stderr).contains("No format specified for device"));
    // existing output is never overwritten
    let out = vma(&[
        "create",
        &p("a.vma"),
        "-d",
        &format!("format=raw:{}", p("d.raw")),
    ]);
    assert_eq!(out.status.code(), Some(255));
    assert!(text(&out.stderr).contains("can't open file"));
    // positional (deprecated) form still works, with a warning
    let out = vma(&["create", &p("pos.vma"), &format!("x={}", p("d.raw"))]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("deprecated"));
    // config-only archive
    std::fs::write(p("qemu-server.conf"), "x\n").unwrap();
    let out = vma(&["create", &p("c.vma"), "-c", &p("qemu-server.conf")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::metadata(p("c.vma")).unwrap().len(), 12800 + 512);
    let out = vma(&["verify", "-v", &p("c.vma")]);
    assert!(
        text(&out.stdout).ends_with("vma archive contains no image data\n"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn corrupt_and_truncated_archives_fail_verify_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let a = pinned_archive(1, &[("drive-scsi0", &image(9, 200 * CS))]);
    let hs = u32::from_be_bytes(a[56..60].try_into().unwrap()) as usize;
    let mut bad = a.clone();
    bad[hs + 50] ^= 1;
    std::fs::write(p("bad.vma"), &bad).unwrap();
    let out = vma(&["verify", &p("bad.vma")]);
    assert_eq!(out.status.code(), Some(255));
    assert!(text(&out.stderr).contains(&format!(
        "extent 0 at offset {hs}: header checksum mismatch"
    )));
    // truncated at an extent boundary: Proxmox's verify passes this, ours does not
    let first = 512 + 4096 * u16::from_be_bytes([a[hs + 6], a[hs + 7]]) as usize;
    std::fs::write(p("short.vma"), &a[..hs + first]).unwrap();
    let out = vma(&["verify", &p("short.vma")]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("device 1 (drive-scsi0): missing cluster 58"),
        "{}",
        text(&out.stderr)
    );
    let out = vma(&["list", &p("nonexistent.vma")]);
    assert_eq!(out.status.code(), Some(255));
}

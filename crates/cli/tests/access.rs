//! Archive access (issue 15): `vmdump map` serves the disks of an archive over NBD, read by
//! QEMU 7.2's own NBD client (`qemu-img compare`, `qemu-io`), for a plain archive, our
//! seekable `.vma.zst`, a stream `.vma.zst` written by the `zstd` tool (the cache-file
//! fallback) and a truncated archive; seekable archives against the independent readers and
//! restored with parallel decompression.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use vmdump_testkit::{run, run_output, write_random, Rng, MIB};

const BIN: &str = env!("CARGO_BIN_EXE_vmdump");
/// An unaligned size: the last cluster is partial.
const SIZE: u64 = 40 * MIB + 12 * 1024;

/// A disk with random data, text, explicit zeros and never-written holes.
fn make_disk(path: &Path) {
    std::fs::File::create(path).unwrap().set_len(SIZE).unwrap();
    write_random(path, 0, 6 * MIB, 1).unwrap();
    write_random(path, 13 * MIB + 4096, 3 * MIB + 100, 2).unwrap();
    let text: Vec<u8> = b"a line of guest text that compresses well\n"
        .iter()
        .copied()
        .cycle()
        .take(5 * MIB as usize)
        .collect();
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&text, 20 * MIB + 512).unwrap();
    f.write_all_at(&vec![0u8; MIB as usize], 30 * MIB).unwrap();
    write_random(path, SIZE - 20_000, 20_000, 3).unwrap();
}

fn create(archive: &Path, disk: &Path, extra: &[&str]) {
    let d = format!("format=raw:drive-scsi0={}", disk.display());
    let mut args = vec!["vma", "create", archive.to_str().unwrap(), "-d", &d];
    args.extend_from_slice(extra);
    run(Command::new(BIN).args(&args)).unwrap();
}

struct Map {
    child: Child,
    sock: PathBuf,
    lines: Vec<String>,
}

impl Map {
    fn start(archive: &Path, sock: &Path) -> Map {
        let mut child = Command::new(BIN)
            .args([
                "map",
                archive.to_str().unwrap(),
                "--socket",
                sock.to_str().unwrap(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = Vec::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        loop {
            let mut l = String::new();
            assert!(out.read_line(&mut l).unwrap() > 0, "map exited: {lines:?}");
            let done = l.starts_with("serving ");
            lines.push(l.trim_end().to_string());
            if done {
                break;
            }
        }
        Map {
            child,
            sock: sock.to_path_buf(),
            lines,
        }
    }

    fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.sock.display())
    }

    fn stop(mut self) {
        let pid = self.child.id().to_string();
        run(Command::new("kill").args(["-TERM", &pid])).unwrap();
        let st = self.child.wait().unwrap();
        assert!(st.success(), "vmdump map exited with {st}");
        assert!(!self.sock.exists(), "socket left behind");
    }
}

impl Drop for Map {
    /// A failed assertion must not leave the server running.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn qemu_img_compare(source: &Path, uri: &str) {
    run(Command::new("qemu-img").args([
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        source.to_str().unwrap(),
        uri,
    ]))
    .unwrap();
}

/// Bytes of a `qemu-io` `read -v` hex dump.
fn parse_dump(out: &str) -> Vec<Vec<u8>> {
    let mut reads = Vec::new();
    let mut cur = Vec::new();
    for line in out.lines() {
        if let Some((addr, rest)) = line.split_once(":  ") {
            if addr.len() == 8 && u64::from_str_radix(addr, 16).is_ok() {
                let hex = &rest[..rest.len().min(16 * 3)];
                cur.extend(
                    hex.split_whitespace()
                        .map(|b| u8::from_str_radix(b, 16).unwrap()),
                );
                continue;
            }
        }
        if line.starts_with("read ") && line.contains("bytes at offset") {
            reads.push(std::mem::take(&mut cur));
        }
    }
    reads
}

/// 1000 random 4 KiB reads (fixed seed, 512-byte aligned) through `qemu-io` equal the disk.
fn random_reads(source: &Path, uri: &str, seed: u64) {
    let disk = std::fs::read(source).unwrap();
    let mut rng = Rng(seed);
    let offsets: Vec<u64> = (0..1000)
        .map(|_| rng.below((SIZE - 4096) / 512) * 512)
        .collect();
    // 100 reads per qemu-io run keeps the command line and the dump small.
    for chunk in offsets.chunks(100) {
        let mut cmd = Command::new("qemu-io");
        cmd.args(["-r", "-f", "raw"]);
        for off in chunk {
            cmd.arg("-c").arg(format!("read -v {off} 4096"));
        }
        cmd.arg(uri);
        let out = run_output(&mut cmd).unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let reads = parse_dump(&text);
        assert_eq!(
            reads.len(),
            chunk.len(),
            "{}",
            &text[..text.len().min(2000)]
        );
        for (off, got) in chunk.iter().zip(reads) {
            let want = &disk[*off as usize..*off as usize + 4096];
            assert!(got == want, "4 KiB at {off} differ");
        }
    }
}

#[test]
fn plain_seekable_and_stream_archives_serve_the_source_disk() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    make_disk(&disk);
    let plain = dir.path().join("a.vma");
    create(&plain, &disk, &[]);
    let seekable = dir.path().join("b.vma.zst");
    create(&seekable, &disk, &["--compress", "zstd", "--threads", "2"]);
    // A one-stream .vma.zst as Proxmox writes it (zstd tool, no seek table).
    let stream = dir.path().join("c.vma.zst");
    run(Command::new("zstd").args([
        "-q",
        "-3",
        plain.to_str().unwrap(),
        "-o",
        stream.to_str().unwrap(),
    ]))
    .unwrap();

    for (k, archive) in [&plain, &seekable, &stream].into_iter().enumerate() {
        let m = Map::start(archive, &dir.path().join(format!("nbd{k}.sock")));
        assert!(
            m.lines[0].starts_with(&format!(
                "drive-scsi0 {SIZE} nbd+unix:///drive-scsi0?socket="
            )),
            "{:?}",
            m.lines
        );
        assert_eq!(m.lines.last().unwrap().split(' ').nth(1), Some("1"));
        let uri = m.uri("drive-scsi0");
        qemu_img_compare(&disk, &uri);
        if k < 2 {
            random_reads(&disk, &uri, 0x5eed + k as u64);
        }
        // Block status: the never-written tail of the first 13 MiB is reported as zeros.
        let map = run(Command::new("qemu-img").args(["map", "--output=json", "-f", "raw", &uri]))
            .unwrap();
        assert!(map.contains("\"zero\": true"), "{map}");
        assert!(map.contains("\"data\": true"), "{map}");
        m.stop();
    }
}

/// Our seekable `.vma.zst` stays an ordinary zstd file: the `zstd` tool decompresses it to an
/// archive that dissect.archive reads with the source disk's bytes, Proxmox's `vma verify`
/// accepts, and that is byte-identical to what `vma create` writes uncompressed.
#[test]
fn seekable_zstd_archives_decompress_with_zstd_and_pass_the_oracles() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    make_disk(&disk);
    let seekable = dir.path().join("b.vma.zst");
    create(&seekable, &disk, &["--compress", "zstd", "--threads", "2"]);
    let table = vmdump_compress::SeekTable::read(&std::fs::File::open(&seekable).unwrap())
        .unwrap()
        .expect("vmdump writes a seek table");
    assert!(table.frames().len() > 1, "{} frames", table.frames().len());
    let plain = vmdump_testkit::plain_vma(&seekable, dir.path()).unwrap();
    let devs = vmdump_testkit::dissect_devices(&plain).unwrap();
    assert_eq!(devs.len(), 1);
    assert_eq!(devs[0].0, "drive-scsi0");
    assert_eq!(devs[0].2, vmdump_testkit::sha256_file(&disk).unwrap());
    run(Command::new(vmdump_testkit::pve_vma()).args(["verify", plain.to_str().unwrap()])).unwrap();
}

#[test]
fn a_truncated_archive_serves_what_it_holds_and_fails_reads_of_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    make_disk(&disk);
    let plain = dir.path().join("a.vma");
    create(&plain, &disk, &[]);
    // Cut in the middle of the data of the last 40% of the stream.
    let len = std::fs::metadata(&plain).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&plain)
        .unwrap();
    f.set_len(len * 6 / 10 + 777).unwrap();
    drop(f);

    let m = Map::start(&plain, &dir.path().join("nbd.sock"));
    let uri = m.uri("drive-scsi0");
    // The start is there and correct.
    let out =
        run_output(Command::new("qemu-io").args(["-r", "-f", "raw", "-c", "read -v 0 4096", &uri]))
            .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let want = std::fs::read(&disk).unwrap();
    assert!(parse_dump(&text)[0] == want[..4096]);
    // The end is missing: an I/O error, never zeros.
    let off = SIZE / 512 * 512 - 4096;
    let out = Command::new("qemu-io")
        .args(["-r", "-f", "raw", "-c", &format!("read {off} 4096"), &uri])
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("Input/output error"), "{all}");
    // A whole-disk copy fails rather than producing a silently zero-filled image.
    let copy = dir.path().join("copy.raw");
    let st = Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &uri,
            copy.to_str().unwrap(),
        ])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(
        !st.success(),
        "qemu-img convert of a truncated export succeeded"
    );
    m.stop();
}

/// `vmdump restore` of a seekable `.vma.zst` decompresses its frames in parallel and restores
/// the same bytes; a corrupt frame fails the restore and leaves no VM behind.
#[test]
fn restore_of_a_seekable_archive_decompresses_in_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let disk = d.join("disk.raw");
    make_disk(&disk);
    std::fs::create_dir_all(d.join("etc/qemu-server")).unwrap();
    std::fs::write(
        d.join("qemu-server.conf"),
        format!(
            "memory: 256\nscsi0: local:100/vm-100-disk-0.raw,size={SIZE}\n#qmdump#map:scsi0:drive-scsi0:local::\n"
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("etc/storage.cfg"),
        format!(
            "dir: local\n\tpath {}\n\tcontent images\n",
            d.join("store").display()
        ),
    )
    .unwrap();
    let archive = d.join("s.vma.zst");
    let conf = d.join("qemu-server.conf");
    create(
        &archive,
        &disk,
        &["-c", conf.to_str().unwrap(), "--compress", "zstd"],
    );
    let restore = |archive: &Path, vmid: &str| {
        Command::new(BIN)
            .env("VMDUMP_RUN_DIR", d.join("run"))
            .arg("restore")
            .arg(archive)
            .arg(vmid)
            .args([
                "--root",
                d.join("etc").to_str().unwrap(),
                "--storage",
                "local",
            ])
            .output()
            .unwrap()
    };
    let out = restore(&archive, "200");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("frames decompressed in parallel"), "{text}");
    let restored = d.join("store/images/200/vm-200-disk-0.raw");
    assert_eq!(
        vmdump_testkit::sha256_file(&restored).unwrap(),
        vmdump_testkit::sha256_file(&disk).unwrap()
    );

    // Flip a byte inside a middle frame: the restore fails and removes what it created.
    let mut bytes = std::fs::read(&archive).unwrap();
    let table = vmdump_compress::SeekTable::read(&bytes).unwrap().unwrap();
    let f = table.frames()[table.frames().len() / 2];
    bytes[(f.compressed_offset + u64::from(f.compressed_len) / 2) as usize] ^= 0x55;
    let bad = d.join("bad.vma.zst");
    std::fs::write(&bad, bytes).unwrap();
    let out = restore(&bad, "201");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("zstd frame"), "{err}");
    assert!(
        !d.join("store/images/201").exists()
            || std::fs::read_dir(d.join("store/images/201"))
                .unwrap()
                .count()
                == 0
    );
    assert!(!d.join("etc/qemu-server/201.conf").exists());
}

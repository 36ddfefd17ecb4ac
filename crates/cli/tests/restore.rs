//! `vmdump restore` end to end: archives built with `vmdump_vma::Writer` (and one by an
//! independent Python writer), compressed with the real `zstd`/`lzop`/`gzip` tools, restored
//! by the real binary; disks compared by sha256 (qcow2 targets read back with `qemu-img`).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use vmdump_testkit::mount::TestMount;
use vmdump_testkit::{expect_success, sha256_file, Rng};
use vmdump_vma::{Writer, CLUSTER_SIZE};

const BIN: &str = env!("CARGO_BIN_EXE_vmdump");

/// A config root with two dir storages: `local` (raw default) and `other` (qcow2 default).
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let e = Env { dir };
        fs::create_dir_all(e.root()).unwrap();
        fs::create_dir_all(e.run()).unwrap();
        fs::write(
            e.root().join("storage.cfg"),
            format!(
                "dir: local\n\tpath {}\n\tcontent images,backup\n\ndir: other\n\tpath {}\n\tcontent images\n\tformat qcow2\n",
                e.store("local").display(),
                e.store("other").display()
            ),
        )
        .unwrap();
        e
    }
    fn root(&self) -> PathBuf {
        self.dir.path().join("etc")
    }
    fn run(&self) -> PathBuf {
        self.dir.path().join("run")
    }
    fn store(&self, sid: &str) -> PathBuf {
        self.dir.path().join("store").join(sid)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn images(&self, sid: &str, vmid: u32) -> PathBuf {
        self.store(sid).join("images").join(vmid.to_string())
    }
    fn conf(&self, vmid: u32) -> PathBuf {
        self.root().join(format!("qemu-server/{vmid}.conf"))
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("restore")
            .args(args)
            .arg("--root")
            .arg(self.root())
            .env("VMDUMP_RUN_DIR", self.run())
            .env_remove("VMDUMP_ROOT");
        c
    }
    fn restore(&self, archive: &Path, vmid: u32, extra: &[&str]) -> Output {
        let mut args = vec![archive.to_str().unwrap().to_string(), vmid.to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cmd(&refs).output().unwrap()
    }
    fn restore_stdin(&self, archive: &Path, vmid: u32) -> Output {
        self.cmd(&["-", &vmid.to_string()])
            .stdin(fs::File::open(archive).unwrap())
            .output()
            .unwrap()
    }
    /// Files under a VM's image directories on both storages.
    fn volumes(&self, vmid: u32) -> Vec<String> {
        let mut out = Vec::new();
        for sid in ["local", "other"] {
            if let Ok(rd) = fs::read_dir(self.images(sid, vmid)) {
                for e in rd {
                    out.push(format!(
                        "{sid}:{}",
                        e.unwrap().file_name().to_string_lossy()
                    ));
                }
            }
        }
        out.sort();
        out
    }
}

fn ok(o: &Output) -> String {
    expect_success(o, "vmdump restore")
}

fn failed(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "vmdump should have failed; stdout:\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Deterministic disk content: about half the clusters zero, the rest full, half-full or a
/// single block, with pseudo-random bytes.
fn make_disk(path: &Path, size: u64, seed: u64) {
    let f = fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    use std::os::unix::fs::FileExt;
    let clusters = size.div_ceil(CLUSTER_SIZE as u64);
    for c in 0..clusters {
        let kind = (c * 7 + seed) % 6;
        let blocks: Vec<u64> = match kind {
            0..=2 => continue,
            3 => (0..16).collect(),
            4 => (0..16).step_by(2).collect(),
            _ => vec![(c + seed) % 16],
        };
        for b in blocks {
            let off = c * CLUSTER_SIZE as u64 + b * 4096;
            if off >= size {
                continue;
            }
            let len = (size - off).min(4096) as usize;
            let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8 | 1).collect();
            f.write_all_at(&data, off).unwrap();
        }
    }
}

fn sha256(path: &Path) -> String {
    sha256_file(path).unwrap()
}

/// sha256 of an image's guest-visible bytes (any format, through `qemu-img convert` into the
/// image's directory).
fn image_sha256(path: &Path, format: &str) -> String {
    vmdump_testkit::image_sha256(path, format, path.parent().unwrap()).unwrap()
}

/// Build an archive of raw disks with `vmdump_vma::Writer`, clusters out of order (devices
/// interleaved, the second one backwards), the way a live backup writes them.
fn build_archive(out: &Path, configs: &[(&str, &str)], disks: &[(&str, &Path)]) {
    let mut w = Writer::new(fs::File::create(out).unwrap());
    for (name, data) in configs {
        w.add_config(name, data.as_bytes()).unwrap();
    }
    let mut devs = Vec::new();
    for (name, path) in disks {
        let size = fs::metadata(path).unwrap().len();
        devs.push((w.register_device(name, size).unwrap(), path, size));
    }
    let mut order = Vec::new();
    let max = devs
        .iter()
        .map(|d| d.2.div_ceil(CLUSTER_SIZE as u64))
        .max()
        .unwrap_or(0);
    for i in 0..max {
        for (k, d) in devs.iter().enumerate() {
            let n = d.2.div_ceil(CLUSTER_SIZE as u64);
            if i < n {
                order.push((k, if k % 2 == 1 { n - 1 - i } else { i }));
            }
        }
    }
    use std::os::unix::fs::FileExt;
    let files: Vec<fs::File> = devs.iter().map(|d| fs::File::open(d.1).unwrap()).collect();
    let mut buf = vec![0u8; CLUSTER_SIZE];
    for (k, c) in order {
        let (dev, _, size) = &devs[k];
        let off = c * CLUSTER_SIZE as u64;
        let len = (*size - off).min(CLUSTER_SIZE as u64) as usize;
        files[k].read_exact_at(&mut buf[..len], off).unwrap();
        w.write_cluster(*dev, c, &buf[..len]).unwrap();
    }
    w.finish().unwrap();
}

fn compress(archive: &Path, tool: &str) -> PathBuf {
    let (ext, args): (&str, &[&str]) = match tool {
        "zstd" => ("zst", &["-q", "-c"]),
        "lzop" => ("lzo", &["-c"]),
        "gzip" => ("gz", &["-c"]),
        _ => unreachable!(),
    };
    let out = archive.with_extension(format!("vma.{ext}"));
    let st = Command::new(tool)
        .args(args)
        .stdin(fs::File::open(archive).unwrap())
        .stdout(fs::File::create(&out).unwrap())
        .status()
        .unwrap();
    assert!(st.success(), "{tool}");
    out
}

const CONF: &str = "\
#test VM
agent: 1
boot: order=scsi0
cores: 1
memory: 512
name: restore-test
net0: virtio=AA:BB:CC:00:00:01,bridge=vmbr0
scsi0: local:100/vm-100-disk-0.raw,iothread=1,size=8M
scsi1: local:100/vm-100-disk-1.raw,backup=0,size=1M
smbios1: uuid=6f1c6d2a-0000-4000-8000-000000000001
virtio1: other:100/vm-100-disk-2.raw,format=raw,size=3084K
vmgenid: 6f1c6d2a-0000-4000-8000-0000000000aa
#qmdump#map:scsi0:drive-scsi0:local:raw:
#qmdump#map:virtio1:drive-virtio1:local:raw:
";

/// Two raw disks: 8 MiB and an odd size (3 MiB + 12 KiB, not cluster aligned).
fn two_disks(env: &Env) -> (PathBuf, PathBuf, PathBuf) {
    let a = env.path("src-scsi0.raw");
    let b = env.path("src-virtio1.raw");
    make_disk(&a, 8 << 20, 1);
    make_disk(&b, (3 << 20) + 12 * 1024, 2);
    let archive = env.path("vzdump-qemu-100-2025_01_01-00_00_00.vma");
    build_archive(
        &archive,
        &[
            ("qemu-server.conf", CONF),
            ("qemu-server.fw", "[OPTIONS]\nenable: 1\n"),
        ],
        &[("drive-scsi0", &a), ("drive-virtio1", &b)],
    );
    (archive, a, b)
}

fn check_two_disks(env: &Env, vmid: u32, a: &Path, b: &Path) {
    let conf = fs::read_to_string(env.conf(vmid)).unwrap();
    let d0 = format!("scsi0: local:{vmid}/vm-{vmid}-disk-0.raw,iothread=1,size=8M\n");
    let d1 = format!("virtio1: local:{vmid}/vm-{vmid}-disk-1.raw,size=3084K\n");
    assert!(conf.contains(&d0), "{conf}");
    assert!(conf.contains(&d1), "{conf}");
    assert!(conf.contains("\n#scsi1: local:100/vm-100-disk-1.raw,backup=0,size=1M\n"));
    assert!(!conf.contains("qmdump"), "{conf}");
    assert!(conf.contains("net0: virtio=AA:BB:CC:00:00:01,bridge=vmbr0\n"));
    assert!(!conf.contains("vmgenid: 6f1c6d2a-0000-4000-8000-0000000000aa"));
    assert!(conf.contains("\nvmgenid: "));
    let img = env.images("local", vmid);
    let r0 = img.join(format!("vm-{vmid}-disk-0.raw"));
    let r1 = img.join(format!("vm-{vmid}-disk-1.raw"));
    assert_eq!(
        fs::metadata(&r1).unwrap().len(),
        fs::metadata(b).unwrap().len()
    );
    assert_eq!(sha256(&r0), sha256(a), "scsi0 of VM {vmid}");
    assert_eq!(sha256(&r1), sha256(b), "virtio1 of VM {vmid}");
    // Sparse: zero clusters were not written.
    use std::os::unix::fs::MetadataExt;
    let md = fs::metadata(&r0).unwrap();
    assert!(
        md.blocks() * 512 < md.len() * 3 / 4,
        "restored raw disk is not sparse: {} of {} bytes allocated",
        md.blocks() * 512,
        md.len()
    );
    assert_eq!(
        fs::read_to_string(env.root().join(format!("firewall/{vmid}.fw"))).unwrap(),
        "[OPTIONS]\nenable: 1\n"
    );
}

#[test]
fn raw_multi_disk_all_compressions_file_and_stdin() {
    let env = Env::new();
    let (archive, a, b) = two_disks(&env);
    let mut cases = vec![(archive.clone(), 101u32, false)];
    for (i, tool) in ["zstd", "lzop", "gzip"].iter().enumerate() {
        cases.push((compress(&archive, tool), 102 + i as u32, false));
    }
    cases.push((compress(&archive, "zstd"), 105, true));
    cases.push((archive.clone(), 106, true));
    for (file, vmid, stdin) in cases {
        let out = if stdin {
            ok(&env.restore_stdin(&file, vmid))
        } else {
            ok(&env.restore(&file, vmid, &[]))
        };
        assert!(
            out.contains(&format!(
                "new volume ID is 'local:{vmid}/vm-{vmid}-disk-0.raw'"
            )),
            "{out}"
        );
        assert!(out.contains("map 'drive-scsi0' to '"), "{out}");
        assert!(out.contains("(write zeros = 0)"), "{out}");
        assert!(out.contains("progress 100% (read "), "{out}");
        // Proxmox's arithmetic: whole clusters read (177 x 64 KiB), not device bytes.
        assert!(
            out.contains("total bytes read 11599872, sparse bytes 8577024 (73.9%)\n"),
            "{out}"
        );
        assert!(
            out.contains("space reduction due to 4K zero blocks "),
            "{out}"
        );
        check_two_disks(&env, vmid, &a, &b);
    }
}

#[test]
fn qcow2_sources_and_targets() {
    let env = Env::new();
    // The VM's disks are qcow2; the backup holds their guest-visible bytes.
    let raw_a = env.path("a.raw");
    make_disk(&raw_a, 6 << 20, 3);
    let src_a = env.path("a.qcow2");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw_a)
        .arg(&src_a)
        .status()
        .unwrap();
    assert!(st.success());
    let read_a = env.path("a.readback.raw");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(&src_a)
        .arg(&read_a)
        .status()
        .unwrap();
    assert!(st.success());
    let raw_b = env.path("b.raw");
    make_disk(&raw_b, 2 << 20, 4);
    let conf = "memory: 512\nscsi0: local:100/vm-100-disk-0.qcow2,size=6M\nscsi1: local:100/vm-100-disk-1.raw,size=2M\n#qmdump#map:scsi0:drive-scsi0:local:qcow2:\n#qmdump#map:scsi1:drive-scsi1:local:raw:\n";
    let archive = env.path("q.vma");
    build_archive(
        &archive,
        &[("qemu-server.conf", conf)],
        &[("drive-scsi0", &read_a), ("drive-scsi1", &raw_b)],
    );
    let zst = compress(&archive, "zstd");

    // Format kept: qcow2 stays qcow2, raw stays raw.
    let out = ok(&env.restore(&zst, 110, &[]));
    assert!(
        out.contains("new volume ID is 'local:110/vm-110-disk-0.qcow2'"),
        "{out}"
    );
    let q = env.images("local", 110).join("vm-110-disk-0.qcow2");
    let info = Command::new("qemu-img")
        .arg("info")
        .arg(&q)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&info.stdout).contains("file format: qcow2"));
    assert_eq!(image_sha256(&q, "qcow2"), sha256(&raw_a));
    let st = Command::new("qemu-img")
        .args(["compare", "-q", "-f", "qcow2", "-F", "qcow2"])
        .arg(&src_a)
        .arg(&q)
        .status()
        .unwrap();
    assert!(
        st.success(),
        "qemu-img compare: source and restored qcow2 differ"
    );
    let r = env.images("local", 110).join("vm-110-disk-1.raw");
    assert_eq!(sha256(&r), sha256(&raw_b));
    let conf = fs::read_to_string(env.conf(110)).unwrap();
    assert!(
        conf.contains("scsi0: local:110/vm-110-disk-0.qcow2,size=6M\n"),
        "{conf}"
    );

    // --storage other (default format qcow2): the map line's format wins when the storage
    // supports it; only an empty format takes the storage default.
    let out = ok(&env.restore(&archive, 111, &["--storage", "other"]));
    assert!(
        out.contains("new volume ID is 'other:111/vm-111-disk-0.qcow2'"),
        "{out}"
    );
    assert!(
        out.contains("new volume ID is 'other:111/vm-111-disk-1.raw'"),
        "{out}"
    );
    let img = env.images("other", 111);
    assert_eq!(
        image_sha256(&img.join("vm-111-disk-0.qcow2"), "qcow2"),
        sha256(&raw_a)
    );
    assert_eq!(sha256(&img.join("vm-111-disk-1.raw")), sha256(&raw_b));

    // A raw disk whose map line has no format goes to the storage default (qcow2 on other).
    let conf2 = "memory: 512\nscsi1: local:100/vm-100-disk-1.raw,size=2M\n#qmdump#map:scsi1:drive-scsi1:other::\n";
    let archive2 = env.path("q2.vma");
    build_archive(
        &archive2,
        &[("qemu-server.conf", conf2)],
        &[("drive-scsi1", &raw_b)],
    );
    let out = ok(&env.restore(&archive2, 112, &[]));
    assert!(
        out.contains("new volume ID is 'other:112/vm-112-disk-0.qcow2'"),
        "{out}"
    );
    assert_eq!(
        image_sha256(
            &env.images("other", 112).join("vm-112-disk-0.qcow2"),
            "qcow2"
        ),
        sha256(&raw_b)
    );
}

/// An existing VM 120: scsi0 (in the backup) and scsi1 (backup=0), both with content.
fn existing_vm(env: &Env) -> (PathBuf, PathBuf, String) {
    let img = env.images("local", 120);
    fs::create_dir_all(&img).unwrap();
    let d0 = img.join("vm-120-disk-0.raw");
    let d1 = img.join("vm-120-disk-1.raw");
    make_disk(&d0, 1 << 20, 9);
    make_disk(&d1, 1 << 20, 10);
    let conf = "memory: 256\nname: old\nscsi0: local:120/vm-120-disk-0.raw,size=1M\nscsi1: local:120/vm-120-disk-1.raw,backup=0,size=1M\n";
    fs::create_dir_all(env.root().join("qemu-server")).unwrap();
    fs::write(env.conf(120), conf).unwrap();
    (d0, d1, conf.to_string())
}

#[test]
fn force_replaces_only_after_success_and_never_a_running_vm() {
    let env = Env::new();
    let (archive, a, b) = two_disks(&env);
    let (d0, d1, old_conf) = existing_vm(&env);
    let (h0, h1) = (sha256(&d0), sha256(&d1));
    let intact = |env: &Env| {
        assert_eq!(fs::read_to_string(env.conf(120)).unwrap(), old_conf);
        assert_eq!(sha256(&d0), h0);
        assert_eq!(sha256(&d1), h1);
        assert_eq!(
            env.volumes(120),
            ["local:vm-120-disk-0.raw", "local:vm-120-disk-1.raw"]
        );
    };

    // Without --force: refused.
    let err = failed(&env.restore(&archive, 120, &[]));
    assert!(err.contains("config file already exists"), "{err}");
    intact(&env);

    // Running (its QMP socket answers): refused even with --force.
    let run = env.run().join("120");
    fs::create_dir_all(&run).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(run.join("qmp.sock")).unwrap();
    let err = failed(&env.restore(&archive, 120, &["--force"]));
    assert!(err.contains("VM is running"), "{err}");
    intact(&env);
    drop(listener);
    fs::remove_file(run.join("qmp.sock")).unwrap();

    // Locked (a backup runs: `lock: backup`): refused even with --force, like qmrestore.
    fs::write(env.conf(120), format!("{old_conf}lock: backup\n")).unwrap();
    let err = failed(&env.restore(&archive, 120, &["--force"]));
    assert!(err.contains("VM is locked (backup)"), "{err}");
    fs::write(env.conf(120), &old_conf).unwrap();
    intact(&env);

    // A broken archive with --force: the old VM stays as it was.
    let bytes = fs::read(&archive).unwrap();
    let cut = env.path("cut.vma");
    fs::write(&cut, &bytes[..bytes.len() - 100_000]).unwrap();
    let err = failed(&env.restore(&cut, 120, &["--force"]));
    assert!(
        err.contains("truncated") || err.contains("missing"),
        "{err}"
    );
    intact(&env);

    // --force: new disks take free names, the replaced scsi0 disk goes, the scsi1 disk
    // (not in the backup) stays as unused0.
    let out = ok(&env.restore(&archive, 120, &["--force"]));
    assert!(
        out.contains("removed old volume 'local:120/vm-120-disk-0.raw'"),
        "{out}"
    );
    assert_eq!(
        env.volumes(120),
        [
            "local:vm-120-disk-1.raw",
            "local:vm-120-disk-2.raw",
            "local:vm-120-disk-3.raw"
        ]
    );
    let conf = fs::read_to_string(env.conf(120)).unwrap();
    assert!(
        conf.contains("scsi0: local:120/vm-120-disk-2.raw,iothread=1,size=8M\n"),
        "{conf}"
    );
    assert!(
        conf.contains("virtio1: local:120/vm-120-disk-3.raw,size=3084K\n"),
        "{conf}"
    );
    assert!(
        conf.contains("unused0: local:120/vm-120-disk-1.raw\n"),
        "{conf}"
    );
    assert!(conf.contains("name: restore-test\n"), "{conf}");
    assert_eq!(sha256(&d1), h1);
    let img = env.images("local", 120);
    assert_eq!(sha256(&img.join("vm-120-disk-2.raw")), sha256(&a));
    assert_eq!(sha256(&img.join("vm-120-disk-3.raw")), sha256(&b));
}

#[test]
fn unique_changes_macs_and_smbios_uuid_only() {
    let env = Env::new();
    let (archive, _, _) = two_disks(&env);
    ok(&env.restore(&archive, 130, &[]));
    ok(&env.restore(&archive, 131, &["--unique"]));
    let plain = fs::read_to_string(env.conf(130)).unwrap();
    let uniq = fs::read_to_string(env.conf(131)).unwrap();
    assert_eq!(plain.lines().count(), uniq.lines().count());
    let mut differing = Vec::new();
    for (p, u) in plain.lines().zip(uniq.lines()) {
        let key = p.split(':').next().unwrap();
        assert_eq!(key, u.split(':').next().unwrap());
        let p2 = p.replace("130", "131");
        if p2 != u {
            differing.push(key.to_string());
        }
    }
    assert_eq!(differing, ["net0", "smbios1", "vmgenid"]);
    let net = uniq.lines().find(|l| l.starts_with("net0:")).unwrap();
    assert!(net.starts_with("net0: virtio=BC:24:11:"), "{net}");
    assert!(net.ends_with(",bridge=vmbr0"), "{net}");
    assert!(plain.contains("net0: virtio=AA:BB:CC:00:00:01,bridge=vmbr0"));
    assert!(!uniq.contains("6f1c6d2a-0000-4000-8000-000000000001"));
}

#[test]
fn corrupt_and_truncated_archives_leave_nothing_behind() {
    let env = Env::new();
    let (archive, _, _) = two_disks(&env);
    let bytes = fs::read(&archive).unwrap();
    let header_size = u32::from_be_bytes(bytes[56..60].try_into().unwrap()) as usize;
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "mid-extent",
            bytes[..bytes.len() - 5000].to_vec(),
            "truncated",
        ),
        ("header", bytes[..5000].to_vec(), "truncated vma header"),
        ("no-data", bytes[..header_size].to_vec(), "missing"),
    ];
    // Cut at the end of the first extent: clean EOF, clusters missing.
    let block_count = u16::from_be_bytes([bytes[header_size + 6], bytes[header_size + 7]]);
    let first_end = header_size + 512 + usize::from(block_count) * 4096;
    cases.push(("extent-boundary", bytes[..first_end].to_vec(), "missing"));
    let mut md5 = bytes.clone();
    md5[header_size + 40] ^= 0xff;
    cases.push(("extent-md5", md5, "checksum"));
    let mut hdr = bytes.clone();
    hdr[100] ^= 1;
    cases.push(("header-md5", hdr, "checksum"));
    cases.push((
        "garbage",
        b"this is no archive at all".to_vec(),
        "bad header magic",
    ));
    for (i, (name, data, needle)) in cases.into_iter().enumerate() {
        let vmid = 140 + i as u32;
        let f = env.path(&format!("{name}.vma"));
        fs::write(&f, &data).unwrap();
        let err = failed(&env.restore(&f, vmid, &[]));
        assert!(err.to_lowercase().contains(needle), "{name}: {err}");
        assert!(!env.conf(vmid).exists(), "{name}: config written");
        assert!(
            env.volumes(vmid).is_empty(),
            "{name}: {:?}",
            env.volumes(vmid)
        );
    }
    // A truncated zstd stream.
    let zst = compress(&archive, "zstd");
    let z = fs::read(&zst).unwrap();
    let f = env.path("cut.vma.zst");
    fs::write(&f, &z[..z.len() * 2 / 3]).unwrap();
    let err = failed(&env.restore(&f, 150, &[]));
    assert!(err.contains("zstd"), "{err}");
    assert!(!env.conf(150).exists());
    assert!(env.volumes(150).is_empty(), "{:?}", env.volumes(150));
}

#[test]
fn interrupt_removes_new_volumes() {
    let env = Env::new();
    let (archive, _, _) = two_disks(&env);
    // 1 MiB/s over ~6 MiB of archive: several seconds; SIGINT after one.
    let child = env
        .cmd(&[archive.to_str().unwrap(), "160", "--bwlimit", "1024"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        !env.volumes(160).is_empty(),
        "volumes exist while restoring"
    );
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    let err = failed(&out);
    assert!(err.contains("aborted by signal"), "{err}");
    assert!(!env.conf(160).exists());
    assert!(env.volumes(160).is_empty(), "{:?}", env.volumes(160));
}

#[test]
fn bwlimit_throttles_reading() {
    let env = Env::new();
    let (archive, a, b) = two_disks(&env);
    let size = fs::metadata(&archive).unwrap().len();
    let start = std::time::Instant::now();
    ok(&env.restore(&archive, 170, &["--bwlimit", "4096"]));
    let secs = start.elapsed().as_secs_f64();
    let expected = size as f64 / (4096.0 * 1024.0);
    assert!(
        secs > expected * 0.8,
        "{secs} s for {size} bytes at 4 MiB/s"
    );
    check_two_disks(&env, 170, &a, &b);
}

#[test]
fn unmapped_device_and_missing_storage_are_refused() {
    let env = Env::new();
    let a = env.path("a.raw");
    make_disk(&a, 1 << 20, 5);
    let archive = env.path("nomap.vma");
    build_archive(
        &archive,
        &[("qemu-server.conf", "memory: 512\nscsi0: local:100/x.raw\n")],
        &[("drive-scsi0", &a)],
    );
    let err = failed(&env.restore(&archive, 180, &[]));
    assert!(
        err.contains("'drive-scsi0'") && err.contains("no #qmdump#map"),
        "{err}"
    );
    assert!(env.volumes(180).is_empty());
    let archive = env.path("badstore.vma");
    build_archive(
        &archive,
        &[(
            "qemu-server.conf",
            "memory: 512\nscsi0: gone:100/x.raw\n#qmdump#map:scsi0:drive-scsi0:gone:raw:\n",
        )],
        &[("drive-scsi0", &a)],
    );
    let err = failed(&env.restore(&archive, 181, &[]));
    assert!(err.contains("storage 'gone'"), "{err}");
    // --storage overrides the missing one.
    ok(&env.restore(&archive, 181, &["--storage", "local"]));
    assert_eq!(
        sha256(&env.images("local", 181).join("vm-181-disk-0.raw")),
        sha256(&a)
    );
}

/// An archive written by an independent implementation (Python, from the format notes):
/// all 59 slots used, configs in reverse order, blob buffer padded to `(n//512+1)*512`,
/// a new extent for each device, clusters in shuffled order, a zero cluster stored with
/// explicit zero data blocks.
const PY_WRITER: &str = r#"
import hashlib, os, random, struct, sys, uuid
out, conf, fw = sys.argv[1], sys.argv[2], sys.argv[3]
devs = [(sys.argv[i], sys.argv[i + 1]) for i in range(4, len(sys.argv), 2)]
u = uuid.uuid4().bytes
blobs = bytearray(b"\0")
def blob(data):
    off = len(blobs)
    blobs.extend(struct.pack("<H", len(data)) + data)
    return off
cfgs = [("qemu-server.fw", open(fw, "rb").read()), ("qemu-server.conf", open(conf, "rb").read())]
ptrs = [(blob(n.encode() + b"\0"), blob(d)) for n, d in cfgs]
sizes = [os.path.getsize(p) for _, p in devs]
dptr = [blob(n.encode() + b"\0") for n, _ in devs]
table = (len(blobs) // 512 + 1) * 512
h = bytearray(12288 + table)
h[0:4] = b"VMA\0"
struct.pack_into(">I", h, 4, 1)
h[8:24] = u
struct.pack_into(">q", h, 24, 1700000000)
struct.pack_into(">III", h, 48, 12288, len(blobs), len(h))
for i, (n, d) in enumerate(ptrs):
    struct.pack_into(">I", h, 2044 + 4 * i, n)
    struct.pack_into(">I", h, 3068 + 4 * i, d)
for i, (p, s) in enumerate(zip(dptr, sizes)):
    struct.pack_into(">IIQ", h, 4096 + 32 * (i + 1), p, 0, s)
h[12288:12288 + len(blobs)] = blobs
h[32:48] = hashlib.md5(bytes(h)).digest()
rnd = random.Random(7)
with open(out, "wb") as f:
    f.write(h)
    for dev, ((_, path), size) in enumerate(zip(devs, sizes), start=1):
        data = open(path, "rb").read()
        clusters = list(range((size + 65535) // 65536))
        rnd.shuffle(clusters)
        for start in range(0, len(clusters), 59):
            infos, body = [], bytearray()
            for c in clusters[start:start + 59]:
                chunk = data[c * 65536:(c + 1) * 65536].ljust(65536, b"\0")
                mask = 0
                for b in range(16):
                    blk = chunk[b * 4096:(b + 1) * 4096]
                    # Store non-zero blocks, and, unlike Proxmox, block 0 even when zero.
                    if (any(blk) or b == 0) and c * 65536 + b * 4096 < size:
                        mask |= 1 << b
                        body.extend(blk)
                infos.append((mask << 48) | (dev << 32) | c)
            e = bytearray(512)
            e[0:4] = b"VMAE"
            struct.pack_into(">H", e, 6, len(body) // 4096)
            e[8:24] = u
            for i, v in enumerate(infos):
                struct.pack_into(">Q", e, 40 + 8 * i, v)
            e[24:40] = hashlib.md5(bytes(e)).digest()
            f.write(e)
            f.write(body)
"#;

#[test]
fn independent_writer_archive_restores() {
    let env = Env::new();
    let a = env.path("a.raw");
    let b = env.path("b.raw");
    make_disk(&a, 5 << 20, 11);
    make_disk(&b, 540672, 12); // an efidisk-sized, unaligned device
    let conf = env.path("qemu-server.conf");
    fs::write(
        &conf,
        "bios: ovmf\nmemory: 512\nefidisk0: local:100/vm-100-disk-1.raw,efitype=4m,size=528K\nsata0: local:100/vm-100-disk-0.raw,size=5M\n#qmdump#map:sata0:drive-sata0:local:raw:\n#qmdump#map:efidisk0:drive-efidisk0:local:raw:\n",
    )
    .unwrap();
    let fw = env.path("qemu-server.fw");
    fs::write(&fw, "[OPTIONS]\nenable: 0\n").unwrap();
    let archive = env.path("py.vma");
    let st = Command::new("python3")
        .args(["-c", PY_WRITER])
        .arg(&archive)
        .arg(&conf)
        .arg(&fw)
        .args(["drive-sata0"])
        .arg(&a)
        .args(["drive-efidisk0"])
        .arg(&b)
        .status()
        .unwrap();
    assert!(st.success(), "python writer");
    // Through a pipe, gzip-compressed, on stdin.
    let gz = compress(&archive, "gzip");
    let out = ok(&env.restore_stdin(&gz, 190));
    assert!(
        out.contains("DEV: dev_id=2 size: 540672 devname: drive-efidisk0"),
        "{out}"
    );
    let img = env.images("local", 190);
    assert_eq!(sha256(&img.join("vm-190-disk-0.raw")), sha256(&a));
    assert_eq!(sha256(&img.join("vm-190-disk-1.raw")), sha256(&b));
    let conf = fs::read_to_string(env.conf(190)).unwrap();
    assert!(
        conf.contains("efidisk0: local:190/vm-190-disk-1.raw,efitype=4m,size=528K\n"),
        "{conf}"
    );
    assert!(
        conf.contains("sata0: local:190/vm-190-disk-0.raw,size=5M\n"),
        "{conf}"
    );
    assert_eq!(
        fs::read_to_string(env.root().join("firewall/190.fw")).unwrap(),
        "[OPTIONS]\nenable: 0\n"
    );
}

#[test]
fn help_names_the_options() {
    let o = Command::new(BIN)
        .args(["restore", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    for opt in ["--storage", "--force", "--unique", "--bwlimit", "--root"] {
        assert!(text.contains(opt), "{text}");
    }
    let _ = std::io::stdout().flush();
}

#[test]
fn disk_full_removes_new_volumes() {
    let env = Env::new();
    let (archive, _, _) = two_disks(&env);
    // A 1 MiB file system: the disks hold about 3 MiB of data.
    let small = env.path("small");
    let _mount = TestMount::tmpfs(&small, 1).expect("mount a tmpfs (the test needs root)");
    let cfg = env.root().join("storage.cfg");
    let mut text = fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "\ndir: small\n\tpath {}\n\tcontent images\n",
        small.display()
    ));
    fs::write(&cfg, text).unwrap();
    let err = failed(&env.restore(&archive, 195, &["--storage", "small"]));
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("write device 'drive-"), "{err}");
    assert!(!env.conf(195).exists());
    let left: Vec<_> = fs::read_dir(small.join("images/195"))
        .map(|rd| rd.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

/// Sizes stay true: a disk of 1 000 001 bytes is archived by `vmdump vma create` as
/// 1 000 448 bytes (whole sectors, as Proxmox records it), restored as that size to raw and
/// qcow2 alike, and the restored config names it; the restore's figures are those of
/// `vmdump vma verify -v` on the same archive.
#[test]
fn odd_size_disk_archive_volume_and_config_agree() {
    let env = Env::new();
    let src = env.path("src.raw");
    make_disk(&src, 1_000_001, 9);
    let conf = env.path("qemu-server.conf");
    fs::write(
        &conf,
        "memory: 64\nscsi0: local:100/vm-100-disk-0.raw,size=1000001\n#qmdump#map:scsi0:drive-scsi0:local::\n",
    )
    .unwrap();
    let archive = env.path("vzdump-qemu-100-2025_01_01-00_00_00.vma");
    let out = Command::new(BIN)
        .args(["vma", "create"])
        .arg(&archive)
        .arg("-c")
        .arg(&conf)
        .arg("-d")
        .arg(format!("format=raw:drive-scsi0={}", src.display()))
        .output()
        .unwrap();
    expect_success(&out, "vmdump vma create");
    let verify = Command::new(BIN)
        .args(["vma", "verify", "-v"])
        .arg(&archive)
        .output()
        .unwrap();
    let verify = expect_success(&verify, "vmdump vma verify");
    assert!(
        verify.contains("DEV: dev_id=1 size: 1000448 devname: drive-scsi0\n"),
        "{verify}"
    );
    let summary: Vec<&str> = verify
        .lines()
        .filter(|l| l.starts_with("total bytes read ") || l.starts_with("space reduction "))
        .collect();
    assert_eq!(summary.len(), 2, "{verify}");
    let mut want = src.clone();
    want.set_extension("padded");
    let mut padded = fs::read(&src).unwrap();
    padded.resize(1_000_448, 0);
    fs::write(&want, &padded).unwrap();

    for (vmid, storage, format, ext) in [
        (101u32, "local", "raw", "raw"),
        (102, "other", "qcow2", "qcow2"),
    ] {
        let out = ok(&env.restore(&archive, vmid, &["--storage", storage]));
        for line in &summary {
            assert!(
                out.contains(&format!("{line}\n")),
                "{line:?} missing in\n{out}"
            );
        }
        let vol = env
            .images(storage, vmid)
            .join(format!("vm-{vmid}-disk-0.{ext}"));
        let info = Command::new("qemu-img")
            .args(["info", "--output=json", "-U"])
            .arg(&vol)
            .output()
            .unwrap();
        let info = expect_success(&info, "qemu-img info");
        assert!(info.contains("\"virtual-size\": 1000448,"), "{info}");
        assert_eq!(image_sha256(&vol, format), sha256(&want), "{format}");
        let conf = fs::read_to_string(env.conf(vmid)).unwrap();
        assert!(
            conf.contains(&format!(
                "scsi0: {storage}:{vmid}/vm-{vmid}-disk-0.{ext},size=977K\n"
            )),
            "{conf}"
        );
    }
}

/// Disks whose size is not a multiple of 64 KiB (nor of 4 KiB) and whose last, partial block
/// holds data: every path that reads or writes an archive keeps those last bytes — restore to
/// raw and to qcow2, `vma extract`, and `vma create` followed by `vma extract`.
#[test]
fn odd_size_disks_keep_their_last_block_on_every_path() {
    let env = Env::new();
    // 4 KiB-aligned but not cluster-aligned; and 512-aligned with a partial last 4 KiB block.
    let sizes = [7 * 65536 + 5 * 4096, 5 * 65536 + 3 * 4096 + 1536];
    let mut srcs = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let p = env.path(&format!("odd{i}.raw"));
        make_disk(&p, *size, 10 + i as u64);
        // The last 4 KiB of the disk (all of the partial last block and more) is data.
        use std::os::unix::fs::FileExt;
        let tail: Vec<u8> = vmdump_testkit::pseudo_random(77 + i as u64, 4096)
            .into_iter()
            .map(|b| b | 1)
            .collect();
        fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .write_all_at(&tail, size - 4096)
            .unwrap();
        assert_eq!(fs::metadata(&p).unwrap().len(), *size);
        srcs.push(p);
    }
    let conf = "memory: 512\nscsi0: local:100/vm-100-disk-0.raw,size=1M\n\
                scsi1: local:100/vm-100-disk-1.raw,size=1M\n\
                #qmdump#map:scsi0:drive-scsi0:local::\n\
                #qmdump#map:scsi1:drive-scsi1:local::\n";
    let archive = env.path("vzdump-qemu-100-2025_01_01-00_00_00.vma");
    build_archive(
        &archive,
        &[("qemu-server.conf", conf)],
        &[("drive-scsi0", &srcs[0]), ("drive-scsi1", &srcs[1])],
    );

    // Restore to raw (storage `local`) and to qcow2 (storage `other`).
    ok(&env.restore(&archive, 301, &[]));
    ok(&env.restore(&archive, 302, &["--storage", "other"]));
    for (i, src) in srcs.iter().enumerate() {
        let want = sha256(src);
        let raw = env
            .images("local", 301)
            .join(format!("vm-301-disk-{i}.raw"));
        assert_eq!(fs::metadata(&raw).unwrap().len(), sizes[i], "raw size {i}");
        assert_eq!(sha256(&raw), want, "restore to raw, disk {i}");
        let qcow = env
            .images("other", 302)
            .join(format!("vm-302-disk-{i}.qcow2"));
        assert_eq!(
            image_sha256(&qcow, "qcow2"),
            want,
            "restore to qcow2, disk {i}"
        );
    }

    // `vma extract` of the same archive, and of one made by `vma create` from the sources.
    let created = env.path("created.vma");
    let st = Command::new(BIN)
        .args(["vma", "create", created.to_str().unwrap()])
        .arg("-d")
        .arg(format!("format=raw:drive-scsi0={}", srcs[0].display()))
        .arg("-d")
        .arg(format!("format=raw:drive-scsi1={}", srcs[1].display()))
        .output()
        .unwrap();
    expect_success(&st, "vmdump vma create");
    for (n, a) in [(0, &archive), (1, &created)] {
        let dir = env.path(&format!("extract{n}"));
        let o = Command::new(BIN)
            .args(["vma", "extract", a.to_str().unwrap(), dir.to_str().unwrap()])
            .output()
            .unwrap();
        expect_success(&o, "vmdump vma extract");
        for (i, src) in srcs.iter().enumerate() {
            let got = dir.join(format!("disk-drive-scsi{i}.raw"));
            assert_eq!(
                fs::metadata(&got).unwrap().len(),
                sizes[i],
                "extract{n} size {i}"
            );
            assert_eq!(sha256(&got), sha256(src), "extract{n}, disk {i}");
        }
    }
}

//! Interop with GNU tar in both directions, on a tree with every kind of metadata vzdump
//! archives, and hostile archives refused by the extractor. Needs root (device nodes,
//! owners), GNU tar, setfacl, setfattr, setcap (scripts/setup.sh installs them).

use std::path::Path;
use std::process::Command;

use vmdump_tar::{
    unpack, ErrorKind, Excludes, Kind, Meta, PackOptions, Packer, Reader, UnpackOptions, Writer,
};

fn sh(script: &str) {
    let st = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .status()
        .expect("run sh");
    assert!(st.success(), "script failed: {script}");
}

fn out(script: &str) -> String {
    let o = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .output()
        .expect("run sh");
    assert!(
        o.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The metadata zoo of the lab note (§4).
fn zoo(root: &Path) {
    let r = root.display();
    sh(&format!(
        r#"cd {r}
mkdir -p data tmp var/tmp var/run etc/vzdump deep/a
echo hello > data/xattr.txt; setfattr -n user.comment -v 'a comment' data/xattr.txt
setfattr -n trusted.secret -v s data/xattr.txt
echo acl > data/acl.txt; setfacl -m u:1234:rw data/acl.txt
mkdir data/dacl; setfacl -d -m g:777:rx data/dacl
truncate -s 1G data/sparse.img; echo middle | dd of=data/sparse.img bs=1 seek=536870912 conv=notrunc status=none
printf 'x' > data/capbin; chmod 755 data/capbin; setcap cap_net_raw+ep data/capbin
echo linked > data/hard1; ln data/hard1 data/hard2
mkfifo data/fifo; mknod data/null c 1 3
echo owned > data/owned; chown 100123:100456 data/owned
chmod 4755 data/owned
ln -s ../data/xattr.txt data/sym
python3 -c 'import socket; s=socket.socket(socket.AF_UNIX); s.bind("data/sock")'
echo j > tmp/junk; echo v > var/tmp/vt; echo p > var/run/foo.pid; echo k > var/run/keep.txt
n=deep/a/$(printf 'n%.0s' $(seq 1 120)); echo long > $n
touch -d '2020-01-02 03:04:05.123456789' data/xattr.txt
"#
    ));
}

/// A listing of everything GNU tar / our extraction must keep.
fn listing(dir: &Path) -> String {
    out(&format!(
        "cd {}; find . -path ./data/sock -prune -o -printf '%p %y %m %U:%G %s %n %Y\\n' | sort; \
         find . -type f -newermt 2000-01-01 ! -path './deep/*' -printf '%p %T@\\n' | sort; \
         getfattr -R -h -d -m '^user\\.|^security\\.capability' . 2>/dev/null | sed '/^$/d'; \
         getfacl -R -p -n . 2>/dev/null; du -k data/sparse.img | cut -f1; \
         stat -c '%t:%T' data/null",
        dir.display()
    ))
}

fn pack_ours(src: &Path, archive: &Path, excludes: Excludes) {
    let f = std::fs::File::create(archive).expect("create");
    let mut w = Writer::new(std::io::BufWriter::new(f));
    let opts = PackOptions {
        excludes,
        idmap: None,
    };
    let never = || false;
    let mut p = Packer::new(&mut w, &opts, &never);
    p.add_tree(src, b".").expect("pack");
    let stats = p.finish();
    assert_eq!(stats.sockets, 1, "the socket is skipped");
    w.finish().expect("finish");
}

fn unpack_ours(
    archive: &Path,
    dst: &Path,
    opts: &UnpackOptions,
) -> vmdump_tar::Result<vmdump_tar::UnpackStats> {
    let f = std::fs::File::open(archive).expect("open");
    let mut r = Reader::new(std::io::BufReader::new(f));
    unpack(&mut r, dst, opts, &|| false)
}

#[test]
fn both_directions_keep_every_kind_of_metadata() {
    let t = tempfile::tempdir().expect("tempdir");
    let src = t.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    zoo(&src);
    let (ex, _) = Excludes::vzdump(&[], true);

    // GNU tar with vzdump's flags, extracted by GNU tar: the reference tree.
    let gnu = t.path().join("gnu.tar");
    let flags = vmdump_tar::VZDUMP_TAR_FLAGS.join(" ");
    sh(&format!(
        "tar cpf {} {flags} --anchored --exclude=./tmp/?* --exclude=./var/tmp/?* --exclude=./var/run/?*.pid -C {} .",
        gnu.display(),
        src.display()
    ));
    let reference = t.path().join("reference");
    std::fs::create_dir(&reference).expect("mkdir");
    sh(&format!(
        "tar xpf {} --numeric-owner --sparse --acls --xattrs --xattrs-include='*' -C {}",
        gnu.display(),
        reference.display()
    ));
    let want = listing(&reference);
    assert!(want.contains("./data/null c"), "{want}");
    assert!(want.contains("user.comment"), "{want}");
    assert!(!want.contains("trusted.secret"));
    assert!(want.contains("security.capability"), "{want}");
    assert!(want.contains("user:1234:rw-"), "{want}");
    assert!(want.contains("default:group:777:r-x"), "{want}");
    assert!(want.contains("100123:100456"), "{want}");
    assert!(!want.contains("./tmp/junk") && want.contains("./var/run/keep.txt"));

    // Ours, extracted by GNU tar: the same tree.
    let ours = t.path().join("ours.tar");
    pack_ours(&src, &ours, ex);
    let by_gnu = t.path().join("by_gnu");
    std::fs::create_dir(&by_gnu).expect("mkdir");
    sh(&format!(
        "tar xpf {} --numeric-owner --sparse --acls --xattrs --xattrs-include='*' -C {}",
        ours.display(),
        by_gnu.display()
    ));
    assert_eq!(listing(&by_gnu), want, "GNU tar extracting our archive");
    // GNU tar lists our names with their './' prefix, long names and the sparse file whole.
    let list = out(&format!("tar tvf {} --numeric-owner", ours.display()));
    assert!(list.contains(" ./data/sparse.img"), "{list}");
    assert!(list.contains("1073741824"), "{list}");
    assert!(list.contains("./deep/a/nnnnnnnnnn"), "{list}");
    assert!(list.contains("./data/hard2 link to ./data/hard1"), "{list}");

    // GNU tar's archive, extracted by us (Proxmox's restore excludes ./dev/*, not used here).
    let by_us = t.path().join("by_us");
    std::fs::create_dir(&by_us).expect("mkdir");
    unpack_ours(&gnu, &by_us, &UnpackOptions::default()).expect("unpack GNU tar's archive");
    assert_eq!(listing(&by_us), want, "us extracting GNU tar's archive");
}

fn hostile(members: &[(Meta, &[u8])]) -> Vec<u8> {
    let mut w = Writer::new(Vec::new());
    for (m, data) in members {
        let mut d: &[u8] = data;
        w.append_file(m, &mut d).expect("append");
    }
    w.finish().expect("finish")
}

fn file(name: &str, data: &[u8]) -> Meta {
    Meta::new(
        name.as_bytes().to_vec(),
        Kind::File {
            size: data.len() as u64,
        },
    )
}

#[test]
fn hostile_archives_are_refused_and_write_nothing_outside() {
    let t = tempfile::tempdir().expect("tempdir");
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    let escape = outside.display().to_string();
    let cases: Vec<(&str, Vec<u8>, ErrorKind)> = vec![
        (
            "dotdot",
            hostile(&[(file("./a/../../outside/x", b"x"), b"x")]),
            ErrorKind::Refused,
        ),
        (
            "absolute",
            hostile(&[(file(&format!("{escape}/x"), b"x"), b"x")]),
            ErrorKind::Refused,
        ),
        (
            "symlink escape",
            hostile(&[
                (
                    Meta::new(
                        b"./link".to_vec(),
                        Kind::Symlink(escape.clone().into_bytes()),
                    ),
                    b"",
                ),
                (file("./link/x", b"x"), b"x"),
            ]),
            ErrorKind::Refused,
        ),
        (
            "relative symlink escape",
            hostile(&[
                (
                    Meta::new(b"./up".to_vec(), Kind::Symlink(b"../outside".to_vec())),
                    b"",
                ),
                (file("./up/x", b"x"), b"x"),
            ]),
            ErrorKind::Refused,
        ),
        (
            "hard link out",
            hostile(&[(
                Meta::new(b"./h".to_vec(), Kind::HardLink(b"../outside/x".to_vec())),
                b"",
            )]),
            ErrorKind::Refused,
        ),
    ];
    for (what, archive, kind) in cases {
        let dst = t.path().join(format!("dst-{}", what.replace(' ', "-")));
        std::fs::create_dir(&dst).expect("mkdir");
        let p = t.path().join("a.tar");
        std::fs::write(&p, &archive).expect("write");
        let e = unpack_ours(&p, &dst, &UnpackOptions::default()).expect_err(what);
        assert_eq!(e.kind(), kind, "{what}: {e}");
        assert_eq!(
            std::fs::read_dir(&outside).expect("ls").count(),
            0,
            "{what} wrote outside"
        );
    }

    // A device node is refused for an unprivileged target (outside ./dev), skipped in ./dev.
    let dev = hostile(&[
        (Meta::new(b"./dev/null".to_vec(), Kind::Char(1, 3)), b""),
        (Meta::new(b"./bin/mem".to_vec(), Kind::Char(1, 1)), b""),
    ]);
    let p = t.path().join("dev.tar");
    std::fs::write(&p, &dev).expect("write");
    let dst = t.path().join("dst-dev");
    std::fs::create_dir(&dst).expect("mkdir");
    let opts = UnpackOptions {
        idmap: Some(vmdump_tar::IdMap::unprivileged()),
        exclude_dev: true,
        refuse_devices: true,
        mounts: Vec::new(),
    };
    let e = unpack_ours(&p, &dst, &opts).expect_err("device node");
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    assert!(!dst.join("bin/mem").exists() && !dst.join("dev/null").exists());

    // Huge extended headers are refused before anything is allocated.
    let mut h = vec![0u8; 512];
    h[..10].copy_from_slice(b"./PaxHdr/x");
    h[100..108].copy_from_slice(b"0000644\0");
    h[124..136].copy_from_slice(b"77777777777\0");
    h[156] = b'x';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let sum: u32 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h.extend_from_slice(&[0u8; 1024]);
    let p = t.path().join("huge.tar");
    std::fs::write(&p, &h).expect("write");
    let dst = t.path().join("dst-huge");
    std::fs::create_dir(&dst).expect("mkdir");
    let e = unpack_ours(&p, &dst, &UnpackOptions::default()).expect_err("huge header");
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert_eq!(std::fs::read_dir(&dst).expect("ls").count(), 0);
}

//! Round trips, typed access and error positions for every config file type.

use std::path::Path;

use vmdump_config::qmdump::{self, QmdumpMap};
use vmdump_config::{
    Codec, ConfigRoot, DriveKey, Error, LxcConfig, Mode, QemuConfig, SectionKind, StorageConfig,
    StorageType, VolumeRef, VzdumpConf,
};

const VM: &str = "\
#Debian%20web%20server
#second line
agent: enabled=1,fstrim_cloned_disks=1
args: -kernel /boot/vmlinuz -append \"console=ttyS0 quiet\"
boot: order=scsi0;ide2;net0
cores: 2
efidisk0: local:100/vm-100-disk-2.raw,efitype=4m,pre-enrolled-keys=1,size=528K
ide2: none,media=cdrom
lock: backup
machine: pc-q35-8.1+pve0
memory: 2048
meta: creation-qemu=8.1.2,ctime=1700000000
name: web
net0: virtio=BC:24:11:5E:2D:01,bridge=vmbr0,firewall=1
numa: 0
ostype: l26
parent: before-upgrade
scsi0: local:100/vm-100-disk-0.qcow2,cache=writeback,discard=on,iothread=1,size=32G
scsi1: /dev/disk/by-id/ata-SAMSUNG_1,backup=0,size=500G
scsihw: virtio-scsi-single
smbios1: uuid=6f6b3f8e-0b6b-4c5e-9f6f-0d1a2b3c4d5e
sockets: 1
tpmstate0: local:100/vm-100-disk-3.raw,size=4M,version=v2.0
unused0: local:100/vm-100-disk-9.raw
virtio1: local:100/vm-100-disk-1.raw,format=raw,size=4G
vmgenid: 0e6d3a5b-8b2d-4e0f-a6c9-2f1e0d9c8b7a
x-future-key: whatever value, with: colons

[before-upgrade]
#snapshot description
cores: 1
memory: 1024
scsi0: local:100/vm-100-disk-0.qcow2,size=32G
snaptime: 1700000100
vmstate: local:100/vm-100-state-before-upgrade.raw

[PENDING]
delete: numa
memory: 4096

[special:cloudinit]
ipconfig0: ip=dhcp
";

#[test]
fn qemu_config_round_trips_byte_for_byte() {
    let cfg = QemuConfig::parse(VM, "100.conf").unwrap();
    assert_eq!(cfg.to_string(), VM);
    // Without a trailing newline and with CRLF line ends too.
    let trimmed = VM.trim_end();
    assert_eq!(
        QemuConfig::parse(trimmed, "x").unwrap().to_string(),
        trimmed
    );
    let crlf = VM.replace('\n', "\r\n");
    assert_eq!(QemuConfig::parse(&crlf, "x").unwrap().to_string(), crlf);
}

#[test]
fn qemu_typed_access() {
    let cfg = QemuConfig::parse(VM, "100.conf").unwrap();
    assert_eq!(cfg.name(), Some("web"));
    assert_eq!(cfg.memory_mib().unwrap(), 2048);
    assert_eq!(cfg.cores().unwrap(), 2);
    assert_eq!(cfg.sockets().unwrap(), 1);
    assert_eq!(cfg.machine().as_deref(), Some("pc-q35-8.1+pve0"));
    let agent = cfg.agent().unwrap();
    assert!(agent.enabled && agent.fstrim_cloned_disks && agent.freeze_fs_on_backup);
    assert_eq!(cfg.boot_order(), vec!["scsi0", "ide2", "net0"]);
    assert_eq!(
        cfg.args().unwrap(),
        vec!["-kernel", "/boot/vmlinuz", "-append", "console=ttyS0 quiet"]
    );
    assert_eq!(cfg.description(), "Debian web server\nsecond line");
    assert_eq!(cfg.lock(), Some("backup"));
    assert_eq!(
        cfg.get("x-future-key"),
        Some("whatever value, with: colons")
    );
    assert_eq!(cfg.snapshots(), vec!["before-upgrade"]);
    assert_eq!(
        cfg.sections(),
        vec![
            SectionKind::Main,
            SectionKind::Snapshot("before-upgrade".into()),
            SectionKind::Pending,
            SectionKind::Special("cloudinit".into())
        ]
    );
    let keys: Vec<String> = cfg
        .drives()
        .unwrap()
        .iter()
        .map(|d| d.key.to_string())
        .collect();
    assert_eq!(
        keys,
        ["efidisk0", "ide2", "scsi0", "scsi1", "tpmstate0", "virtio1"]
    );
    let scsi0 = cfg
        .drive(DriveKey::parse("scsi0").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(scsi0.size().unwrap(), Some(32 << 30));
    assert_eq!(scsi0.cache(), Some("writeback"));
    assert!(scsi0.iothread() && scsi0.discard());
    match scsi0.volume().unwrap() {
        VolumeRef::Volume(v) => {
            assert_eq!(v.storage, "local");
            assert_eq!(v.owner(), Some(100));
        }
        other => panic!("{other:?}"),
    }
    let nets = cfg.nets().unwrap();
    assert_eq!(nets[0].macaddr(), Some("BC:24:11:5E:2D:01"));
    assert_eq!(nets[0].bridge(), Some("vmbr0"));
    assert_eq!(
        cfg.unused(),
        vec![("unused0", "local:100/vm-100-disk-9.raw")]
    );
    // Defaults for a minimal config.
    let min = QemuConfig::parse("name: x\n", "x").unwrap();
    assert_eq!(min.memory_mib().unwrap(), 512);
    assert_eq!(min.cores().unwrap(), 1);
    assert!(!min.agent().unwrap().enabled);
    assert_eq!(
        QemuConfig::parse("agent: 1\nmemory: current=1024\n", "x")
            .unwrap()
            .memory_mib()
            .unwrap(),
        1024
    );
    assert!(
        QemuConfig::parse("agent: 1\n", "x")
            .unwrap()
            .agent()
            .unwrap()
            .enabled
    );
    assert!(
        !QemuConfig::parse("agent: 0\n", "x")
            .unwrap()
            .agent()
            .unwrap()
            .enabled
    );
}

#[test]
fn edits_change_only_their_line() {
    let mut cfg = QemuConfig::parse(VM, "100.conf").unwrap();
    let key = DriveKey::parse("scsi0").unwrap();
    let mut d = cfg.drive(key).unwrap().unwrap();
    d.set_volume("fast:100/vm-100-disk-5.raw");
    d.props.remove("cache");
    cfg.set_drive(&d);
    let mut net = cfg.nets().unwrap().remove(0);
    net.set_macaddr("02:11:22:33:44:55");
    cfg.set_net(&net);
    cfg.set("cores", "4").unwrap();
    cfg.set("hookscript", "local:snippets/hook.pl").unwrap();
    let expected = VM
        .replace(
            "scsi0: local:100/vm-100-disk-0.qcow2,cache=writeback,discard=on,iothread=1,size=32G",
            "scsi0: fast:100/vm-100-disk-5.raw,discard=on,iothread=1,size=32G",
        )
        .replace("virtio=BC:24:11:5E:2D:01", "virtio=02:11:22:33:44:55")
        .replacen("cores: 2\n", "cores: 4\n", 1)
        .replace(
            "x-future-key: whatever value, with: colons\n",
            "x-future-key: whatever value, with: colons\nhookscript: local:snippets/hook.pl\n",
        );
    assert_eq!(cfg.to_string(), expected);
    // The snapshot's scsi0 is untouched.
    assert!(cfg
        .to_string()
        .contains("\nscsi0: local:100/vm-100-disk-0.qcow2,size=32G\n"));
    assert!(cfg.set("cores", "zero").is_err());
    assert!(cfg.set("memory", "").is_err());
    assert_eq!(cfg.remove("lock").as_deref(), Some("backup"));
    assert!(!cfg.to_string().contains("lock: backup"));
}

fn parse_err(text: &str) -> String {
    QemuConfig::parse(text, "/etc/vmdump/qemu-server/100.conf")
        .unwrap_err()
        .to_string()
}

#[test]
fn malformed_qemu_configs_name_file_and_line() {
    let f = "/etc/vmdump/qemu-server/100.conf";
    let cases = [
        ("name: a\nmemory 512\n", 2, "expected 'key: value'"),
        ("name: a\n\ncores: two\n", 3, "cores"),
        ("memory: 8\n", 1, "minimum"),
        (
            "name: a\nname: b\n",
            2,
            "duplicate key 'name' (first at line 1)",
        ),
        ("scsi0: local:100/x.raw,size=big\n", 1, "size"),
        ("scsi0: local:100/x.raw,,size=1G\n", 1, "stray comma"),
        ("virtio0: size=1G\n", 1, "no volume"),
        ("agent: enabled=1,bogus=2\n", 1, "unknown option 'bogus'"),
        ("net0: virtio=nomac,bridge=vmbr0\n", 1, "invalid MAC"),
        ("args: -append \"open\n", 1, "unterminated"),
        ("name: a\n[bad snapshot]\n", 2, "malformed section header"),
        ("name: a\n[s1]\ncores: 1\n[s1]\n", 4, "duplicate section"),
        ("Name: a\n", 1, "invalid key"),
        ("name:\n", 1, "empty value"),
        ("name: a\n[snap]\nmemory: lots\n", 3, "memory"),
    ];
    for (text, line, needle) in cases {
        let e = parse_err(text);
        assert!(e.starts_with(&format!("{f}:{line}: ")), "{text:?}: {e}");
        assert!(e.contains(needle), "{text:?}: {e}");
    }
}

#[test]
fn backup_copy_strips_and_maps() {
    let mut cfg = QemuConfig::parse(VM, "100.conf").unwrap();
    // Without OVMF the efidisk is skipped, as Proxmox does.
    let (copy, disks, excluded) = qmdump::backup_config(&cfg).unwrap();
    let devs: Vec<&str> = disks.iter().map(|d| d.devname.as_str()).collect();
    assert_eq!(
        devs,
        ["drive-scsi0", "drive-tpmstate0-backup", "drive-virtio1"]
    );
    let why: Vec<(String, &str)> = excluded
        .iter()
        .map(|e| (e.key.to_string(), e.reason))
        .collect();
    assert_eq!(
        why,
        [
            ("efidisk0".to_string(), "efidisk without OVMF"),
            ("ide2".to_string(), "cdrom"),
            ("scsi1".to_string(), "backup=no")
        ]
    );
    assert!(!copy.contains("lock:"));
    assert!(!copy.contains("parent:"));
    assert!(!copy.contains("unused0"));
    assert!(!copy.contains("[before-upgrade]"));
    assert!(!copy.contains("[PENDING]"));
    assert!(!copy.contains("ipconfig0"));
    assert!(copy.starts_with("#Debian%20web%20server\n#second line\nagent: "));
    assert!(copy.contains("scsi1: /dev/disk/by-id/ata-SAMSUNG_1,backup=0,size=500G\n"));
    assert!(copy.ends_with(
        "x-future-key: whatever value, with: colons\n\n\
         #qmdump#map:scsi0:drive-scsi0:local:qcow2:\n\
         #qmdump#map:tpmstate0:drive-tpmstate0-backup:local:raw:\n\
         #qmdump#map:virtio1:drive-virtio1:local:raw:\n"
    ));
    // The copy parses as a config and its maps parse back.
    let back = QemuConfig::parse(&copy, "qemu-server.conf").unwrap();
    assert_eq!(back.memory_mib().unwrap(), 2048);
    let maps = qmdump::parse_maps(&copy, "qemu-server.conf").unwrap();
    assert_eq!(maps.len(), 3);
    assert_eq!(
        maps[0],
        QmdumpMap {
            virtdev: "scsi0".into(),
            devname: "drive-scsi0".into(),
            storeid: "local".into(),
            format: "qcow2".into()
        }
    );
    // With OVMF the efidisk is included.
    cfg.set("bios", "ovmf").unwrap();
    let (_, disks, _) = qmdump::backup_config(&cfg).unwrap();
    assert_eq!(disks[0].devname, "drive-efidisk0");
    assert_eq!(disks[0].size, Some(528 << 10));
}

#[test]
fn raw_path_disks_map_with_empty_storage() {
    let cfg = QemuConfig::parse(
        "virtio0: /dev/vg/lv0,size=1G\nsata0: /srv/img/disk.qcow2\n",
        "x",
    )
    .unwrap();
    let (copy, _, _) = qmdump::backup_config(&cfg).unwrap();
    assert!(copy.contains("#qmdump#map:virtio0:drive-virtio0::raw:\n"));
    assert!(copy.contains("#qmdump#map:sata0:drive-sata0::qcow2:\n"));
}

const STORAGE: &str = "\
# storage for vmdump
dir: local
\tpath /var/lib/vz
\tcontent iso,vztmpl,backup
\tprune-backups keep-last=3,keep-daily=7

btrfs: fast
\tpath /mnt/fast
\tcontent images,rootdir
\tnodes pve1,pve2
\tshared 0
\tdisable
\tpreallocation off
\tsome-future-key 42

lvmthin: local-lvm
\tthinpool data
\tvgname pve
\tcontent rootdir,images

pbs: backup-server
\tdatastore store1
\tserver 10.0.0.2
\tcontent backup
\tusername root@pam
";

#[test]
fn storage_cfg_round_trips_and_types() {
    let s = StorageConfig::parse(STORAGE, "storage.cfg").unwrap();
    assert_eq!(s.to_string(), STORAGE);
    let ids: Vec<&str> = s.entries().map(|e| e.id()).collect();
    assert_eq!(ids, ["local", "fast", "local-lvm", "backup-server"]);
    let local = s.storage("local").unwrap();
    assert_eq!(local.kind(), &StorageType::Dir);
    assert_eq!(local.path(), Some(Path::new("/var/lib/vz")));
    assert_eq!(local.content(), ["iso", "vztmpl", "backup"]);
    let keep = local.prune_backups().unwrap().unwrap();
    assert_eq!((keep.keep_last, keep.keep_daily), (Some(3), Some(7)));
    let fast = s.storage("fast").unwrap();
    assert_eq!(fast.kind(), &StorageType::Btrfs);
    assert!(fast.disabled());
    assert!(!fast.shared());
    assert_eq!(fast.nodes(), ["pve1", "pve2"]);
    assert_eq!(fast.get("some-future-key"), Some("42"));
    assert_eq!(
        s.storage("local-lvm").unwrap().kind(),
        &StorageType::Other("lvmthin".into())
    );
    assert!(s.base_path("local-lvm").is_err());
    assert_eq!(
        s.with_content("backup").map(|e| e.id()).collect::<Vec<_>>(),
        ["local", "backup-server"]
    );
    assert!(matches!(s.storage("nope"), Err(Error::NoSuchStorage(_))));
}

#[test]
fn storage_cfg_edits() {
    let mut s = StorageConfig::parse(STORAGE, "storage.cfg").unwrap();
    s.get_mut("local")
        .unwrap()
        .set("content", "iso,vztmpl,backup,images");
    let e = vmdump_config::StorageEntry::new(
        StorageType::Dir,
        "dump2",
        &[("path", "/srv/dump"), ("content", "backup")],
    )
    .unwrap();
    s.add(e).unwrap();
    let text = s.to_string();
    assert!(text.starts_with("# storage for vmdump\ndir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup,images\n"));
    assert!(
        text.ends_with("\tusername root@pam\n\ndir: dump2\n\tpath /srv/dump\n\tcontent backup\n")
    );
    let again = StorageConfig::parse(&text, "storage.cfg").unwrap();
    assert_eq!(again.to_string(), text);
    assert!(vmdump_config::StorageEntry::new(StorageType::Dir, "nopath", &[]).is_err());
}

#[test]
fn malformed_storage_cfg_names_line() {
    let cases = [
        (
            "dir: local\n\tpath /x\n\tcontent images,movies\n",
            3,
            "unknown content type 'movies'",
        ),
        ("dir: local\n\tcontent images\n", 1, "has no path"),
        ("\tpath /x\n", 1, "outside of a storage entry"),
        ("dir local\n", 1, "expected '<type>: <storage id>'"),
        (
            "dir: local\n\tpath /x\n\ndir: local\n\tpath /y\n",
            4,
            "duplicate storage id",
        ),
        (
            "dir: local\n\tpath /x\n\tpath /y\n",
            3,
            "duplicate property",
        ),
        (
            "dir: local\n\tpath /x\n\tprune-backups keep-all=1,keep-last=1\n",
            3,
            "keep-all",
        ),
        ("dir: local\n\tpath relative\n", 2, "not absolute"),
        ("dir: 1bad\n\tpath /x\n", 1, "invalid storage header"),
        (
            "dir: local\n\tpath /x\n\tshared maybe\n",
            3,
            "not a boolean",
        ),
    ];
    for (text, line, needle) in cases {
        let e = StorageConfig::parse(text, "/etc/vmdump/storage.cfg")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("/etc/vmdump/storage.cfg:{line}: ")),
            "{text:?}: {e}"
        );
        assert!(e.contains(needle), "{text:?}: {e}");
    }
}

const VZDUMP: &str = "\
# vzdump default settings

#tmpdir: DIR
#dumpdir: DIR
storage: backups
mode: snapshot
compress: zstd
zstd: 0
bwlimit: 102400
ionice: 7
lockwait: 180
stopwait: 10
prune-backups: keep-last=3,keep-weekly=4
remove: 1
script: /usr/local/bin/vzdump-hook
exclude-path: /tmp/?*
exclude-path: /var/cache/?*
notes-template: {{guestname}} on {{node}}
protected: 0
fleecing: enabled=1,storage=local-lvm
performance: max-workers=8
";

#[test]
fn vzdump_conf_round_trips_and_types() {
    let c = VzdumpConf::parse(VZDUMP, "vzdump.conf").unwrap();
    assert_eq!(c.to_string(), VZDUMP);
    let o = c.options();
    assert_eq!(o.mode, Some(Mode::Snapshot));
    assert_eq!(o.compress, Some(Codec::Zstd));
    assert_eq!(o.zstd, Some(0));
    assert_eq!(o.storage.as_deref(), Some("backups"));
    assert_eq!(o.bwlimit, Some(102400));
    assert_eq!(o.ionice, Some(7));
    assert_eq!(o.lockwait, Some(180));
    assert_eq!(o.prune_backups.unwrap().keep_weekly, Some(4));
    assert_eq!(o.remove, Some(true));
    assert_eq!(o.exclude_path, ["/tmp/?*", "/var/cache/?*"]);
    assert_eq!(
        o.notes_template.as_deref(),
        Some("{{guestname}} on {{node}}")
    );
    let f = o.fleecing.clone().unwrap();
    assert!(f.enabled);
    assert_eq!(f.storage.as_deref(), Some("local-lvm"));
    assert_eq!(o.performance.unwrap().max_workers, Some(8));
    assert!(o.tmpdir.is_none());
    let mut c = c;
    c.set("compress", "lzo").unwrap();
    assert_eq!(
        c.to_string(),
        VZDUMP.replace("compress: zstd", "compress: lzo")
    );
    assert!(c.set("ionice", "9").is_err());
    let c = VzdumpConf::parse("exclude-path: /tmp/?* '/var/log/a b' /srv/c\\ d\n", "v").unwrap();
    assert_eq!(
        c.options().exclude_path,
        ["/tmp/?*", "/var/log/a b", "/srv/c d"]
    );
}

#[test]
fn malformed_vzdump_conf_names_line() {
    let cases = [
        ("mode: snapshot\ncompress: brotli\n", 2, "compress"),
        ("ionice: 9\n", 1, "maximum"),
        ("maxfiles: 3\n", 1, "prune-backups"),
        ("fleecing: enabled=1,storage=a/b\n", 1, "storage id"),
        ("fleecing: enabled=1,size=3\n", 1, "unknown option 'size'"),
        ("performance: max-workers=0\n", 1, "max-workers"),
        ("dumpdir: relative/dir\n", 1, "absolute"),
        ("mode snapshot\n", 1, "expected 'key: value'"),
        ("mode: stop\nmode: suspend\n", 2, "duplicate key"),
    ];
    for (text, line, needle) in cases {
        let e = VzdumpConf::parse(text, "/etc/vmdump/vzdump.conf")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("/etc/vmdump/vzdump.conf:{line}: ")),
            "{text:?}: {e}"
        );
        assert!(e.contains(needle), "{text:?}: {e}");
    }
}

#[test]
fn unknown_vzdump_conf_keys_warn_with_their_line_and_survive_a_save() {
    let text = "# c\nbogus: 1\ncompress: zstd\n";
    let c = VzdumpConf::parse(text, "/etc/vmdump/vzdump.conf").unwrap();
    assert_eq!(
        c.warnings(),
        ["/etc/vmdump/vzdump.conf:2: unknown key 'bogus' ignored"]
    );
    assert_eq!(c.options().compress, Some(Codec::Zstd));
    assert_eq!(c.to_string(), text);
    assert_eq!(c.keys().collect::<Vec<_>>(), ["bogus", "compress"]);
}

#[test]
fn storage_cfg_unknown_property_and_unindented_line_name_their_line() {
    let text = "dir: local\n\tpath /srv\n\tcontents images\n";
    let s = StorageConfig::parse(text, "/etc/vmdump/storage.cfg").unwrap();
    assert_eq!(
        s.warnings(),
        ["/etc/vmdump/storage.cfg:3: unknown property 'contents' of storage 'local' ignored"]
    );
    // A property without its indent is reported at its own line, not as a problem of the
    // entry above it.
    let e = StorageConfig::parse("dir: local\npath /srv\n", "/etc/vmdump/storage.cfg")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("/etc/vmdump/storage.cfg:2: "), "{e}");
    assert!(e.contains("must be indented"), "{e}");
}

const CT: &str = "\
#web container
arch: amd64
cores: 2
hostname: ct-web
memory: 1024
mp0: local:200/vm-200-disk-1.raw,mp=/srv/data,backup=1,size=8G
mp1: /host/share,mp=/mnt/share
net0: name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:00:01,ip=dhcp,type=veth
ostype: debian
rootfs: local:200/vm-200-disk-0.raw,size=4G
unprivileged: 1
lxc.cgroup2.devices.allow: c 10:200 rwm

[snap1]
hostname: ct-web
rootfs: local:200/vm-200-disk-0.raw,size=4G
snaptime: 1700000000
";

#[test]
fn lxc_config_round_trips_and_types() {
    let c = LxcConfig::parse(CT, "200.conf").unwrap();
    assert_eq!(c.to_string(), CT);
    assert_eq!(c.hostname(), Some("ct-web"));
    let root = c.rootfs().unwrap().unwrap();
    assert_eq!(root.volume(), "local:200/vm-200-disk-0.raw");
    assert_eq!(root.path(), "/");
    assert!(root.backup());
    let mps = c.mount_points().unwrap();
    assert_eq!(mps.len(), 2);
    assert_eq!(mps[0].path(), "/srv/data");
    assert!(mps[0].backup());
    assert!(!mps[1].backup());
    assert_eq!(c.get("lxc.cgroup2.devices.allow"), Some("c 10:200 rwm"));
    assert_eq!(c.snapshots(), ["snap1"]);
    let e = LxcConfig::parse("hostname: a\nmp0: local:200/x.raw\n", "200.conf").unwrap_err();
    assert!(e.to_string().starts_with("200.conf:2: "), "{e}");
}

#[test]
fn config_root_layout_and_default_storage() {
    let dir = tempfile::tempdir().unwrap();
    let root = ConfigRoot::new(dir.path()).with_local_path("/srv/vmdump");
    // No storage.cfg: the implicit local dir storage.
    let s = root.storage().unwrap();
    let local = s.storage("local").unwrap();
    assert_eq!(local.path(), Some(Path::new("/srv/vmdump")));
    assert!(local.has_content("images") && local.has_content("backup"));
    assert_eq!(root.vzdump().unwrap().options().mode, None);
    assert!(root.qemu_vmids().unwrap().is_empty());
    let cfg = QemuConfig::parse("name: a\nmemory: 256\n", "x").unwrap();
    cfg.save(&root.qemu_config_path(100)).unwrap();
    cfg.save(&root.qemu_config_path(105)).unwrap();
    std::fs::write(dir.path().join("qemu-server/notes.txt"), "x").unwrap();
    std::fs::write(dir.path().join("qemu-server/0100.conf"), "x").unwrap();
    assert_eq!(root.qemu_vmids().unwrap(), [100, 105]);
    assert_eq!(
        root.qemu_config(105).unwrap().to_string(),
        "name: a\nmemory: 256\n"
    );
    let e = root.qemu_config(101).unwrap_err();
    assert!(e.to_string().contains("qemu-server/101.conf"), "{e}");
    // A storage.cfg on disk wins.
    std::fs::write(root.storage_cfg_path(), "dir: local\n\tpath /elsewhere\n").unwrap();
    assert_eq!(
        root.storage().unwrap().storage("local").unwrap().path(),
        Some(Path::new("/elsewhere"))
    );
}

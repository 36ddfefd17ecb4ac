//! Randomized round trips: whatever parses writes back byte for byte, and formatted property
//! strings parse back to the same pairs.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vmdump_config::{LxcConfig, PropertyString, QemuConfig, StorageConfig, VzdumpConf};

fn pick<'a>(rng: &mut StdRng, items: &[&'a str]) -> &'a str {
    items[rng.gen_range(0..items.len())]
}

fn random_value(rng: &mut StdRng) -> String {
    let alphabet: Vec<char> = "abcXYZ019 ,=\"\\:/._-+@".chars().collect();
    let len = rng.gen_range(1..12);
    (0..len)
        .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
        .collect()
}

#[test]
fn property_strings_survive_format_and_parse() {
    let mut rng = StdRng::seed_from_u64(0x766d_6475_6d70);
    for _ in 0..2000 {
        let mut p = PropertyString::new();
        let n = rng.gen_range(1..6);
        for i in 0..n {
            let v = random_value(&mut rng);
            if i == 0 && rng.gen_bool(0.5) {
                p.set_default("file", v.trim());
            } else {
                p.set(&format!("k{i}"), v.trim());
            }
        }
        // Values that trim to nothing are not representable; skip those draws.
        if p.iter().any(|(_, v)| v.is_empty()) {
            continue;
        }
        let text = p.to_string();
        let back =
            PropertyString::parse(&text, Some("file")).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        let a: Vec<_> = p.iter().collect();
        let b: Vec<_> = back.iter().collect();
        assert_eq!(a, b, "{text:?}");
        assert_eq!(back.to_string(), text);
    }
}

const LINES: &[&str] = &[
    "memory: 512",
    "cores: 4",
    "name: vm-a",
    "#a comment, with: colons",
    "# ",
    "",
    "   ",
    "scsi0: local:100/vm-100-disk-0.raw,size=1G",
    "virtio3: /dev/sdz,backup=0",
    "net0: virtio=02:00:00:00:00:01,bridge=vmbr0",
    "args: -device 'x,y=\"1\"'",
    "description: free text: anything",
    "lxc.apparmor.profile: unconfined",
    "meta: creation-qemu=7.2.0,ctime=1",
    "  tags:  a;b  ",
    "agent: enabled=1",
];

const HEADERS: &[&str] = &[
    "[snap1]",
    "[PENDING]",
    "[special:cloudinit]",
    "[s-2_b]",
    "[snap3]  ",
];

#[test]
fn guest_configs_round_trip_whatever_the_layout() {
    let mut rng = StdRng::seed_from_u64(42);
    let mut parsed = 0;
    for _ in 0..3000 {
        let mut text = String::new();
        let n = rng.gen_range(0..14);
        for _ in 0..n {
            let line = if rng.gen_bool(0.1) {
                pick(&mut rng, HEADERS)
            } else {
                pick(&mut rng, LINES)
            };
            text.push_str(line);
            text.push_str(if rng.gen_bool(0.1) { "\r\n" } else { "\n" });
        }
        if rng.gen_bool(0.3) {
            text.pop();
        }
        // Duplicates make many draws invalid; only the valid ones must round-trip.
        if let Ok(cfg) = QemuConfig::parse(&text, "fuzz.conf") {
            assert_eq!(cfg.to_string(), text);
            parsed += 1;
        }
        if let Ok(cfg) = LxcConfig::parse(&text, "fuzz.conf") {
            assert_eq!(cfg.to_string(), text);
        }
        if let Ok(cfg) = VzdumpConf::parse(&text, "vzdump.conf") {
            assert_eq!(cfg.to_string(), text);
        }
    }
    assert!(parsed > 300, "only {parsed} valid draws");
}

#[test]
fn storage_cfg_round_trips_whatever_the_layout() {
    let mut rng = StdRng::seed_from_u64(7);
    let props = [
        "\tpath /srv/a",
        "\tcontent images,backup",
        "    shared 1",
        "\tdisable",
        "\tnodes n1",
        "\t# inner comment",
        "\tfuture-key some value",
    ];
    let mut parsed = 0;
    for round in 0..2000 {
        let mut text = String::new();
        for i in 0..rng.gen_range(0..4) {
            if rng.gen_bool(0.3) {
                text.push_str("# top comment\n");
            }
            text.push_str(&format!(
                "{}: s{round}x{i}\n",
                pick(&mut rng, &["dir", "btrfs", "nfs"])
            ));
            text.push_str("\tpath /srv/base\n");
            for _ in 0..rng.gen_range(0..3) {
                text.push_str(props[rng.gen_range(0..props.len())]);
                text.push('\n');
            }
            for _ in 0..rng.gen_range(0..3) {
                text.push('\n');
            }
        }
        if rng.gen_bool(0.3) {
            text.pop();
        }
        if let Ok(cfg) = StorageConfig::parse(&text, "storage.cfg") {
            assert_eq!(cfg.to_string(), text);
            parsed += 1;
        }
    }
    assert!(parsed > 300, "only {parsed} valid draws");
}

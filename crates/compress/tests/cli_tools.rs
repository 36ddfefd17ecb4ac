//! Our encoders against the real `zstd`, `lzop` and `gzip` tools, both directions.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use vmdump_compress::{Codec, Decoder, Encoder, EncoderOptions};
use vmdump_testkit::pseudo_random;

fn samples() -> Vec<(&'static str, Vec<u8>)> {
    let mut mixed = Vec::new();
    for i in 0..40 {
        if i % 3 == 0 {
            mixed.extend_from_slice(&vec![0u8; 65536]);
        } else if i % 3 == 1 {
            mixed.extend_from_slice(&pseudo_random(i, 65536));
        } else {
            let t: Vec<u8> = format!("line {i} of a config file: memory: 2048\n")
                .bytes()
                .cycle()
                .take(65536 + i as usize * 7)
                .collect();
            mixed.extend_from_slice(&t);
        }
    }
    vec![
        ("empty", Vec::new()),
        ("tiny", b"VMA\0x".to_vec()),
        ("zeros", vec![0u8; 3 * 1024 * 1024 + 17]),
        ("random", pseudo_random(7, 1024 * 1024 + 5)),
        ("mixed", mixed),
    ]
}

fn tool(cmd: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd} must be installed: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn ours_encode(codec: Codec, data: &[u8], threads: u32) -> Vec<u8> {
    let opts = EncoderOptions {
        threads,
        ..Default::default()
    };
    let mut e = Encoder::new(codec, Vec::new(), &opts).unwrap();
    // odd write sizes on purpose
    for chunk in data.chunks(100_003) {
        e.write_all(chunk).unwrap();
    }
    e.finish().unwrap()
}

fn ours_decode(data: &[u8], expect: Codec) -> Vec<u8> {
    let mut d = Decoder::detect(data).unwrap();
    assert_eq!(d.codec(), expect);
    let mut out = Vec::new();
    d.read_to_end(&mut out).unwrap();
    out
}

fn both_ways(codec: Codec, cmd: &str, dec_args: &[&str], enc_args: &[&[&str]]) {
    for (name, data) in samples() {
        for threads in [0, 2] {
            let c = ours_encode(codec, &data, threads);
            assert_eq!(tool(cmd, dec_args, &c), data, "{cmd} decoding our {name}");
        }
        for args in enc_args {
            let c = tool(cmd, args, &data);
            assert_eq!(
                ours_decode(&c, codec),
                data,
                "we decode {cmd} {args:?} {name}"
            );
        }
    }
}

#[test]
fn zstd_cli_both_ways() {
    both_ways(
        Codec::Zstd,
        "zstd",
        &["-q", "-d", "-c"],
        &[
            &["-q", "-c"],
            &["-q", "-c", "-T2", "-1"],
            &["-q", "-c", "--long=27"],
        ],
    );
}

#[test]
fn lzop_cli_both_ways() {
    both_ways(
        Codec::Lzo,
        "lzop",
        &["-d", "-c"],
        &[&["-c"], &["-c", "-1"], &["-c", "-9"], &["-c", "--crc32"]],
    );
}

#[test]
fn gzip_cli_both_ways() {
    both_ways(
        Codec::Gzip,
        "gzip",
        &["-d", "-c"],
        &[&["-c"], &["-c", "--rsyncable"], &["-c", "-1"]],
    );
}

#[test]
fn concatenated_streams_decode_whole() {
    let a = pseudo_random(1, 200_000);
    let b = pseudo_random(2, 300_000);
    let mut both = a.clone();
    both.extend_from_slice(&b);
    for (codec, cmd) in [(Codec::Zstd, "zstd"), (Codec::Gzip, "gzip")] {
        let mut c = tool(cmd, &["-c"], &a);
        c.extend_from_slice(&tool(cmd, &["-c"], &b));
        assert_eq!(ours_decode(&c, codec), both, "{cmd}");
    }
    let c = tool("pigz", &["-c", "-p", "2", "--rsyncable"], &both);
    assert_eq!(ours_decode(&c, Codec::Gzip), both);
}

#[test]
fn corrupt_lzop_block_is_reported() {
    let data = pseudo_random(5, 500_000);
    let mut text: Vec<u8> = b"abcabcabd".iter().cycle().take(300_000).copied().collect();
    text.extend_from_slice(&data);
    let mut c = ours_encode(Codec::Lzo, &text, 0);
    let at = c.len() / 3;
    c[at] ^= 0x55;
    let mut d = Decoder::detect(&c[..]).unwrap();
    let mut out = Vec::new();
    let err = d.read_to_end(&mut out).unwrap_err();
    assert!(err.to_string().contains("lzop block"), "{err}");
}

#[test]
fn detection_by_name_and_magic() {
    assert_eq!(
        Codec::from_path("/x/vzdump-qemu-100-2024_01_01-00_00_00.vma.zst"),
        Codec::Zstd
    );
    assert_eq!(Codec::from_path("a.vma.lzo"), Codec::Lzo);
    assert_eq!(Codec::from_path("a.vma.gz"), Codec::Gzip);
    assert_eq!(Codec::from_path("a.vma"), Codec::None);
    assert_eq!(Codec::Zstd.vma_extension(), ".vma.zst");
    assert_eq!(ours_decode(b"VMA\0abc", Codec::None), b"VMA\0abc");
    assert_eq!(ours_decode(b"", Codec::None), b"");
}

//! NBD handshake decoders on hostile bytes: the server side (client flags, option requests)
//! and the client side (greeting, option replies, EXPORT_NAME reply) never panic, never
//! allocate beyond the protocol limits, and everything accepted re-encodes to something that
//! parses to the same value. The first byte picks the side.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use vmdump_nbd::proto::handshake::{ClientFlags, ExportNameReply, Greeting};
use vmdump_nbd::proto::option::{ClientOption, RawOption, RawReply, ReplyKind};
use vmdump_nbd::proto::request::Request;
use vmdump_nbd::proto::{MAX_OPTION_LEN, MAX_PAYLOAD};

fn server_side(buf: &mut BytesMut) {
    if !matches!(ClientFlags::decode(buf), Ok(Some(_))) {
        return;
    }
    while let Ok(Some(raw)) = RawOption::decode(buf) {
        assert!(raw.data.len() <= MAX_OPTION_LEN as usize);
        if let Ok(opt) = ClientOption::parse(&raw) {
            let again = ClientOption::parse(&opt.to_raw()).expect("re-encoded option parses");
            assert_eq!(again, opt);
        }
    }
    // Whatever is left is treated as transmission requests.
    while let Ok(Some(req)) = Request::decode(buf, MAX_PAYLOAD) {
        let mut enc = BytesMut::new();
        req.encode_header(&mut enc);
        enc.extend_from_slice(&req.payload);
        assert_eq!(Request::decode(&mut enc, MAX_PAYLOAD), Ok(Some(req)));
    }
}

fn client_side(buf: &mut BytesMut, no_zeroes: bool) {
    if !matches!(Greeting::decode(buf), Ok(Some(_))) {
        return;
    }
    while let Ok(Some(raw)) = RawReply::decode(buf) {
        assert!(raw.data.len() <= MAX_OPTION_LEN as usize);
        if let Ok(kind) = ReplyKind::parse(&raw) {
            let again =
                ReplyKind::parse(&kind.to_raw(raw.option)).expect("re-encoded reply parses");
            assert_eq!(again, kind);
        }
    }
    let _ = ExportNameReply::decode(buf, no_zeroes);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut buf = BytesMut::from(rest);
    if mode & 1 == 0 {
        server_side(&mut buf);
    } else {
        client_side(&mut buf, mode & 2 != 0);
    }
    // No decoder reserves more than one maximal message beyond the input.
    assert!(buf.capacity() <= rest.len() + MAX_PAYLOAD as usize + 64);
});

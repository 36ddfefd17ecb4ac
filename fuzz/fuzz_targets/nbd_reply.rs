//! NBD transmission replies on hostile bytes: simple and structured replies never panic or
//! over-allocate, and every accepted structured chunk re-encodes to bytes that decode to the
//! same chunk. The first byte says which cookies are pending simple READs (and how long).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use vmdump_nbd::proto::reply::{Chunk, Reply, MAX_CHUNK_PAYLOAD};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let read_len = u32::from(mode) * 16;
    let mut buf = BytesMut::from(rest);
    while let Ok(Some(reply)) =
        Reply::decode(&mut buf, |cookie| (cookie % 2 == 1).then_some(read_len))
    {
        match reply {
            Reply::Simple {
                cookie,
                error,
                data,
            } => {
                if error == 0 && cookie % 2 == 1 {
                    assert_eq!(data.map(|d| d.len()), Some(read_len as usize));
                } else {
                    assert!(data.is_none());
                }
            }
            Reply::Structured {
                cookie,
                flags,
                chunk,
            } => {
                if let Chunk::Error { message, .. } = &chunk {
                    if message.len() > usize::from(u16::MAX) {
                        continue; // lossy UTF-8 grew past the wire limit; truncation is expected
                    }
                }
                let mut enc = BytesMut::new();
                chunk.encode(&mut enc, cookie, flags);
                if let Chunk::OffsetData { data, .. } = &chunk {
                    assert!(data.len() <= MAX_CHUNK_PAYLOAD as usize);
                    enc.extend_from_slice(data);
                }
                let again = Reply::decode(&mut enc, |_| None).expect("re-encoded chunk decodes");
                assert_eq!(
                    again,
                    Some(Reply::Structured {
                        cookie,
                        flags,
                        chunk
                    })
                );
                assert!(enc.is_empty());
            }
        }
    }
});

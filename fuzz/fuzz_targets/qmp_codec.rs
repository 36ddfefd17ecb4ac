//! The QMP line splitter on hostile bytes, fed in pieces: never panics, returns only lines
//! within the limit without their terminator, keeps at most one line buffered, and gives
//! the same frames whatever the piece sizes. The first byte sets the limit, the second the
//! piece size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmdump_qmp::codec::{Decoder, Frame};

fn frames(data: &[u8], limit: usize, piece: usize) -> Vec<Result<Frame, String>> {
    let mut d = Decoder::new(limit);
    let mut out = Vec::new();
    for chunk in data.chunks(piece) {
        d.feed(chunk);
        loop {
            match d.next_frame() {
                Ok(Some(f)) => {
                    if let Frame::Line(l) = &f {
                        assert!(l.len() <= limit, "line of {} bytes past {limit}", l.len());
                        assert!(!l.contains(&b'\n'));
                        assert!(!l.is_empty());
                    }
                    out.push(Ok(f));
                }
                Ok(None) => break,
                Err(e) => out.push(Err(e.to_string())),
            }
        }
        // Whatever is left holds no complete line, so at most limit + one piece.
        assert!(
            d.buffered() <= limit + piece,
            "{} bytes buffered",
            d.buffered()
        );
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_at_checked(2) else {
        return;
    };
    let limit = usize::from(head[0]) * 4 + 1;
    let piece = usize::from(head[1]) + 1;
    let split = frames(rest, limit, piece);
    let whole = frames(rest, limit, rest.len().max(1));
    // Over-long lines are reported once per line in both cases; the frames agree.
    let lines = |v: &[Result<Frame, String>]| -> Vec<Frame> {
        v.iter().filter_map(|f| f.as_ref().ok().cloned()).collect()
    };
    if split.iter().all(Result::is_ok) && whole.iter().all(Result::is_ok) {
        assert_eq!(lines(&split), lines(&whole));
    }
});

//! Sans-I/O line codec shared by QMP and QGA.
//!
//! Both protocols send one JSON value per line (QMP ends lines with `\r\n`). The guest agent
//! additionally writes a single `0xFF` byte in front of the reply to `guest-sync-delimited`;
//! `0xFF` never occurs in UTF-8 JSON, so the decoder reports it as [`Frame::Delimiter`] and drops
//! any partial line before it (that is the point of the delimiter: resynchronising a stream
//! that may hold half a stale reply).

use serde_json::Value;

/// Longest line accepted. QMP replies such as `query-qmp-schema` are a few hundred KiB.
pub const MAX_LINE: usize = 16 * 1024 * 1024;

/// The QGA resync sentinel.
pub const DELIMITER: u8 = 0xFF;

/// One unit decoded from the byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete line without its terminator (never empty).
    Line(Vec<u8>),
    /// A `0xFF` sentinel byte.
    Delimiter,
}

/// The decoder could not make sense of the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A line exceeded [`MAX_LINE`] (or the decoder's configured limit).
    #[error("line longer than {limit} bytes")]
    LineTooLong {
        /// The limit in bytes.
        limit: usize,
    },
}

/// Incremental splitter: feed bytes as they arrive, take frames out.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    /// How far `buf` has been scanned for a terminator without finding one.
    scanned: usize,
    limit: usize,
    /// After an over-long line: skip until the next newline.
    discarding: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(MAX_LINE)
    }
}

impl Decoder {
    /// A decoder that rejects lines longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            scanned: 0,
            limit,
            discarding: false,
        }
    }

    /// Appends received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `Ok(None)` when more input is needed.
    ///
    /// After [`DecodeError::LineTooLong`] the rest of that line is skipped, so decoding can go on.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        loop {
            let rest = &self.buf[self.scanned..];
            let Some(pos) = rest.iter().position(|&b| b == b'\n' || b == DELIMITER) else {
                self.scanned = self.buf.len();
                if self.buf.len() > self.limit {
                    self.buf.clear();
                    self.scanned = 0;
                    if !self.discarding {
                        self.discarding = true;
                        return Err(DecodeError::LineTooLong { limit: self.limit });
                    }
                }
                return Ok(None);
            };
            let end = self.scanned + pos;
            let byte = self.buf[end];
            let mut line: Vec<u8> = self.buf.drain(..=end).collect();
            self.scanned = 0;
            line.pop();
            if byte == DELIMITER {
                // Whatever preceded the sentinel is a fragment of an abandoned line.
                self.discarding = false;
                return Ok(Some(Frame::Delimiter));
            }
            if std::mem::take(&mut self.discarding) {
                continue;
            }
            if line.len() > self.limit {
                return Err(DecodeError::LineTooLong { limit: self.limit });
            }
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some(Frame::Line(line)));
        }
    }
}

/// Serialises one request as a line.
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(value).expect("a serde_json::Value always serialises");
    out.push(b'\n');
    out
}

/// A short printable excerpt of raw input for error messages.
pub fn excerpt(line: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&line[..line.len().min(MAX)]).into_owned();
    if line.len() > MAX {
        format!("{text}...")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(d: &mut Decoder) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(f) = d.next_frame().expect("decode") {
            out.push(f);
        }
        out
    }

    #[test]
    fn splits_lines_across_feeds_and_strips_crlf() {
        let mut d = Decoder::default();
        d.feed(b"{\"a\":1}\r\n{\"b\"");
        assert_eq!(frames(&mut d), vec![Frame::Line(b"{\"a\":1}".to_vec())]);
        d.feed(b":2}\n\n  \r\n");
        assert_eq!(frames(&mut d), vec![Frame::Line(b"{\"b\":2}".to_vec())]);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn delimiter_drops_partial_line() {
        let mut d = Decoder::default();
        d.feed(b"{\"return\": {}, \"i");
        d.feed(b"\xff{\"return\": 7}\n");
        assert_eq!(
            frames(&mut d),
            vec![Frame::Delimiter, Frame::Line(b"{\"return\": 7}".to_vec())]
        );
    }

    #[test]
    fn over_long_line_is_reported_once_and_skipped() {
        let mut d = Decoder::new(8);
        d.feed(b"0123456789");
        assert_eq!(d.next_frame(), Err(DecodeError::LineTooLong { limit: 8 }));
        d.feed(b"abcdef\n{}\n");
        assert_eq!(frames(&mut d), vec![Frame::Line(b"{}".to_vec())]);
        d.feed(b"0123456789\n{}\n");
        assert_eq!(d.next_frame(), Err(DecodeError::LineTooLong { limit: 8 }));
        assert_eq!(frames(&mut d), vec![Frame::Line(b"{}".to_vec())]);
    }

    #[test]
    fn every_split_point_gives_the_same_frames() {
        let stream: &[u8] =
            b"{\"QMP\": {}}\r\n{\"return\": {}, \"id\": 1}\r\n\xff{\"return\": 5}\n{\"event\": \"STOP\"}\n";
        let mut whole = Decoder::default();
        whole.feed(stream);
        let expected = frames(&mut whole);
        assert_eq!(expected.len(), 5);
        for a in 0..stream.len() {
            for b in a..stream.len() {
                let mut d = Decoder::default();
                let mut got = Vec::new();
                for part in [&stream[..a], &stream[a..b], &stream[b..]] {
                    d.feed(part);
                    got.extend(frames(&mut d));
                }
                assert_eq!(got, expected, "split at {a}/{b}");
            }
        }
    }

    #[test]
    fn encode_is_one_line() {
        let v = serde_json::json!({"execute": "x", "arguments": {"s": "a\nb"}});
        let bytes = encode(&v);
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(bytes.last(), Some(&b'\n'));
    }
}

//! The archive input: bandwidth limit (token bucket on the raw read side), compression
//! detection by magic bytes, and decompression in its own thread, so that reading and
//! decompressing overlap parsing and writing (uncompressed input is read by the parser
//! directly, which saves two copies of every byte).

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use vmdump_compress::{Codec, Decoder};
use vmdump_task::RateLimit;

use crate::error::{Error, Result};

/// Decompressed chunk size handed to the parser.
const CHUNK: usize = 1 << 20;
/// Chunks in flight between the decompressor and the parser.
const DEPTH: usize = 8;

/// A reader paced by a [`RateLimit`] (vzdump's `bwlimit` on the archive input).
#[derive(Debug)]
pub struct Throttle<R> {
    inner: R,
    limit: RateLimit,
}

impl<R: Read> Throttle<R> {
    /// Limit `inner` to `rate` bytes per second (`rate` > 0).
    pub fn new(inner: R, rate: u64) -> Self {
        Throttle {
            inner,
            limit: RateLimit::new(rate),
        }
    }
}

impl<R: Read> Read for Throttle<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let max = self.limit.grant(buf.len());
        let n = self.inner.read(&mut buf[..max])?;
        self.limit.used(n);
        Ok(n)
    }
}

/// The decompressed archive stream, produced by a background thread. A failing
/// decompressor or input (truncated or corrupt compressed data) is a read error, never a
/// clean EOF.
pub struct Input {
    codec: Codec,
    /// Uncompressed input is read directly by the parser: a thread would only add copies.
    direct: Option<Box<dyn Read + Send>>,
    rx: Receiver<io::Result<Vec<u8>>>,
    free: SyncSender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
    done: bool,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Input")
            .field("codec", &self.codec)
            .finish_non_exhaustive()
    }
}

impl Input {
    /// Open an archive stream: detect the compression from the first bytes and start the
    /// decompressing thread. `rate` limits the raw (compressed) read side in bytes per
    /// second.
    pub fn open(source: Box<dyn Read + Send>, rate: Option<u64>) -> Result<Self> {
        let source: Box<dyn Read + Send> = match rate {
            Some(r) if r > 0 => Box::new(Throttle::new(source, r)),
            _ => source,
        };
        let mut decoder = Decoder::detect(source).map_err(|e| Error::Decompress {
            tool: "detect".into(),
            detail: e.to_string(),
        })?;
        let codec = decoder.codec();
        if codec == Codec::None {
            let (_, rx) = sync_channel(1);
            let (free, _) = sync_channel(1);
            return Ok(Input {
                codec,
                direct: Some(Box::new(decoder)),
                rx,
                free,
                current: Vec::new(),
                pos: 0,
                done: false,
                stop: Arc::new(AtomicBool::new(false)),
                thread: None,
            });
        }
        let (tx, rx) = sync_channel::<io::Result<Vec<u8>>>(DEPTH);
        let (free_tx, free_rx) = sync_channel::<Vec<u8>>(DEPTH + 2);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("restore-decompress".into())
                .spawn(move || loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let mut buf = free_rx.try_recv().unwrap_or_default();
                    buf.resize(CHUNK, 0);
                    let mut n = 0;
                    let res = loop {
                        match decoder.read(&mut buf[n..]) {
                            Ok(0) => break Ok(()),
                            Ok(k) => {
                                n += k;
                                if n == buf.len() {
                                    break Ok(());
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => break Err(e),
                        }
                    };
                    buf.truncate(n);
                    let end = n < CHUNK;
                    if n > 0 && tx.send(Ok(buf)).is_err() {
                        return;
                    }
                    if let Err(e) = res {
                        let _ =
                            tx.send(Err(io::Error::new(e.kind(), format!("{codec} input: {e}"))));
                        return;
                    }
                    if end {
                        return;
                    }
                })
                .map_err(|e| Error::Internal(format!("spawn decompress thread: {e}")))?
        };
        Ok(Input {
            codec,
            direct: None,
            rx,
            free: free_tx,
            current: Vec::new(),
            pos: 0,
            done: false,
            stop,
            thread: Some(thread),
        })
    }

    /// The detected compression.
    pub fn codec(&self) -> Codec {
        self.codec
    }
}

impl Read for Input {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(r) = &mut self.direct {
            return r.read(buf);
        }
        while self.pos == self.current.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    let old = std::mem::replace(&mut self.current, chunk);
                    let _ = self.free.try_send(old);
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for Input {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Unblock a thread waiting on a full queue, then wait for it.
        while self.rx.try_recv().is_ok() {}
        let (_, dead) = sync_channel(1);
        self.rx = dead;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};
    use std::time::Instant;

    #[test]
    fn throttle_limits_rate() {
        let data = vec![7u8; 600 * 1024];
        let start = Instant::now();
        let mut t = Throttle::new(&data[..], 1024 * 1024);
        let mut out = Vec::new();
        t.read_to_end(&mut out).unwrap();
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(out, data);
        // 600 KiB at 1 MiB/s with a 102 KiB initial burst: about 0.49 s.
        assert!(secs > 0.4 && secs < 1.5, "{secs}");
    }

    #[test]
    fn plain_and_gzip_streams() {
        let payload: Vec<u8> = b"VMA\0"
            .iter()
            .copied()
            .chain((0..3_000_000u32).map(|i| (i % 251) as u8))
            .collect();
        let mut plain = Input::open(Box::new(std::io::Cursor::new(payload.clone())), None).unwrap();
        assert_eq!(plain.codec(), Codec::None);
        let mut out = Vec::new();
        plain.read_to_end(&mut out).unwrap();
        assert!(out == payload);

        let mut gz = Command::new("gzip")
            .arg("-c")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = gz.stdin.take().unwrap();
        let p2 = payload.clone();
        let feeder = std::thread::spawn(move || stdin.write_all(&p2).unwrap());
        let compressed = gz.wait_with_output().unwrap().stdout;
        feeder.join().unwrap();
        let mut input =
            Input::open(Box::new(std::io::Cursor::new(compressed.clone())), None).unwrap();
        assert_eq!(input.codec(), Codec::Gzip);
        let mut out = Vec::new();
        input.read_to_end(&mut out).unwrap();
        assert!(out == payload);

        // Truncated compressed data is an error, not a short clean stream.
        let cut = compressed[..compressed.len() / 2].to_vec();
        let mut input = Input::open(Box::new(std::io::Cursor::new(cut)), None).unwrap();
        let mut out = Vec::new();
        let e = input.read_to_end(&mut out).unwrap_err();
        assert!(e.to_string().contains("gzip input"), "{e}");

        // Dropping a half-read input stops its thread.
        let input = Input::open(Box::new(std::io::Cursor::new(compressed)), None).unwrap();
        drop(input);
    }
}

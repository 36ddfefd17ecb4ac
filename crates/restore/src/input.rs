//! The archive input: bandwidth limit, compression detection by magic bytes, and a
//! decompressor running in its own thread (and process) so decompression overlaps parsing.

use std::io::{self, Read, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Compression of an archive stream, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain `.vma`.
    None,
    /// zstd frames (`.vma.zst`).
    Zstd,
    /// An lzop container (`.vma.lzo`).
    Lzo,
    /// gzip (`.vma.gz`).
    Gzip,
}

impl Compression {
    /// Detect from the first bytes (at least 4 are needed for VMA and zstd).
    pub fn detect(magic: &[u8]) -> Option<Self> {
        if magic.starts_with(b"VMA\0") {
            Some(Compression::None)
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Compression::Zstd)
        } else if magic.starts_with(&[0x89, b'L', b'Z', b'O']) {
            Some(Compression::Lzo)
        } else if magic.starts_with(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else {
            None
        }
    }

    /// The decompressor command (what Proxmox runs too).
    fn command(self) -> Option<(&'static str, &'static [&'static str])> {
        match self {
            Compression::None => None,
            Compression::Zstd => Some(("zstd", &["-q", "-d", "-c"])),
            Compression::Lzo => Some(("lzop", &["-d", "-c"])),
            Compression::Gzip => Some(("gzip", &["-d", "-c"])),
        }
    }

    /// Short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
            Compression::Lzo => "lzo",
            Compression::Gzip => "gzip",
        }
    }
}

/// A token-bucket rate limit on a reader: at most `rate` bytes per second on average, with
/// bursts of at most a tenth of a second's worth (and never less than 64 KiB).
#[derive(Debug)]
pub struct Throttle<R> {
    inner: R,
    rate: u64,
    burst: u64,
    tokens: f64,
    last: Instant,
}

impl<R: Read> Throttle<R> {
    /// Limit `inner` to `rate` bytes per second (`rate` > 0).
    pub fn new(inner: R, rate: u64) -> Self {
        let rate = rate.max(1);
        let burst = (rate / 10).max(64 * 1024);
        Throttle {
            inner,
            rate,
            burst,
            tokens: burst as f64,
            last: Instant::now(),
        }
    }
}

impl<R: Read> Read for Throttle<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let now = Instant::now();
        let add = now.duration_since(self.last).as_secs_f64() * self.rate as f64;
        self.tokens = (self.tokens + add).min(self.burst as f64);
        self.last = now;
        if self.tokens < 1.0 {
            let wait = (1.0 - self.tokens).max(self.burst as f64 / 4.0) / self.rate as f64;
            std::thread::sleep(Duration::from_secs_f64(wait));
            self.tokens += wait * self.rate as f64;
            self.last = Instant::now();
        }
        let len = buf.len();
        let max = (self.tokens as usize).clamp(1, len.max(1)).min(len);
        let n = self.inner.read(&mut buf[..max])?;
        self.tokens -= n as f64;
        Ok(n)
    }
}

/// A reader that gives back bytes already peeked before continuing with the inner reader.
struct Prefixed<R> {
    prefix: Vec<u8>,
    pos: usize,
    inner: R,
}

impl<R: Read> Read for Prefixed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.prefix.len() {
            let n = buf.len().min(self.prefix.len() - self.pos);
            buf[..n].copy_from_slice(&self.prefix[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        self.inner.read(buf)
    }
}

/// The decompressed archive stream. Reading it yields the VMA bytes; a failing decompressor
/// (truncated or corrupt compressed data) turns into a read error rather than a clean EOF.
pub struct Input {
    compression: Compression,
    kind: InputKind,
}

enum InputKind {
    Plain(Box<dyn Read + Send>),
    Tool {
        tool: &'static str,
        stdout: ChildStdout,
        child: Child,
        stderr: Option<JoinHandle<String>>,
        pump: Option<JoinHandle<()>>,
        pump_error: Arc<Mutex<Option<io::Error>>>,
        stop: Arc<AtomicBool>,
        done: bool,
    },
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Input")
            .field("compression", &self.compression)
            .finish_non_exhaustive()
    }
}

impl Input {
    /// Open an archive stream: detect the compression from the first bytes and start the
    /// decompressor. `rate` limits the raw (compressed) read side in bytes per second.
    pub fn open(source: Box<dyn Read + Send>, rate: Option<u64>) -> Result<Self> {
        let mut source: Box<dyn Read + Send> = match rate {
            Some(r) if r > 0 => Box::new(Throttle::new(source, r)),
            _ => source,
        };
        let mut magic = vec![0u8; 16];
        let mut n = 0;
        while n < magic.len() {
            match source.read(&mut magic[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(Error::Input { what: None, source }),
            }
        }
        magic.truncate(n);
        let compression = Compression::detect(&magic).ok_or_else(|| Error::Decompress {
            tool: "detect".into(),
            detail: if magic.is_empty() {
                "the archive is empty".into()
            } else {
                format!(
                    "not a vma archive and no known compression (first bytes {:02x?})",
                    &magic[..magic.len().min(8)]
                )
            },
        })?;
        let reader = Prefixed {
            prefix: magic,
            pos: 0,
            inner: source,
        };
        let Some((tool, args)) = compression.command() else {
            return Ok(Input {
                compression,
                kind: InputKind::Plain(Box::new(reader)),
            });
        };
        let mut child = Command::new(tool)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Decompress {
                tool: tool.into(),
                detail: format!("cannot start: {e}"),
            })?;
        let stdin = child.stdin.take().expect("stdin was piped");
        let stdout = child.stdout.take().expect("stdout was piped");
        let mut err = child.stderr.take().expect("stderr was piped");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let pump_error = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let pump = {
            let pump_error = pump_error.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("restore-input".into())
                .spawn(move || pump(reader, stdin, &stop, &pump_error))
                .map_err(|e| Error::Internal(format!("spawn input thread: {e}")))?
        };
        Ok(Input {
            compression,
            kind: InputKind::Tool {
                tool,
                stdout,
                child,
                stderr: Some(stderr),
                pump: Some(pump),
                pump_error,
                stop,
                done: false,
            },
        })
    }

    /// The detected compression.
    pub fn compression(&self) -> Compression {
        self.compression
    }
}

/// Copy the raw archive into the decompressor; a read error is kept for the reader side.
fn pump(
    mut from: impl Read,
    mut to: std::process::ChildStdin,
    stop: &AtomicBool,
    error: &Mutex<Option<io::Error>>,
) {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if let Ok(mut slot) = error.lock() {
                    *slot = Some(e);
                }
                return;
            }
        };
        if to.write_all(&buf[..n]).is_err() {
            // The decompressor quit (it reports why on stderr) or we are stopping.
            return;
        }
    }
}

impl Read for Input {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.kind {
            InputKind::Plain(r) => r.read(buf),
            InputKind::Tool {
                tool,
                stdout,
                child,
                stderr,
                pump,
                pump_error,
                done,
                ..
            } => {
                if *done {
                    return Ok(0);
                }
                let n = stdout.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                // EOF from the decompressor: it must have succeeded on complete input.
                *done = true;
                if let Some(p) = pump.take() {
                    let _ = p.join();
                }
                if let Some(e) = pump_error.lock().ok().and_then(|mut s| s.take()) {
                    return Err(e);
                }
                let status = child.wait()?;
                let msg = stderr
                    .take()
                    .and_then(|h| h.join().ok())
                    .unwrap_or_default();
                if !status.success() {
                    return Err(io::Error::other(format!(
                        "{tool} failed ({status}): {}",
                        msg.trim()
                    )));
                }
                Ok(0)
            }
        }
    }
}

impl Drop for Input {
    fn drop(&mut self) {
        if let InputKind::Tool {
            child,
            pump,
            stop,
            stdout,
            ..
        } = &mut self.kind
        {
            stop.store(true, Ordering::Relaxed);
            let _ = child.kill();
            // Drain so the pump's write fails fast instead of blocking on a full pipe.
            let mut sink = [0u8; 8192];
            while matches!(stdout.read(&mut sink), Ok(n) if n > 0) {}
            let _ = child.wait();
            if let Some(p) = pump.take() {
                let _ = p.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_magic() {
        assert_eq!(
            Compression::detect(b"VMA\0\0\0\0\x01"),
            Some(Compression::None)
        );
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Some(Compression::Zstd)
        );
        assert_eq!(
            Compression::detect(&[0x89, 0x4c, 0x5a, 0x4f, 0, 0x0d, 0x0a, 0x1a, 0x0a]),
            Some(Compression::Lzo)
        );
        assert_eq!(
            Compression::detect(&[0x1f, 0x8b, 8]),
            Some(Compression::Gzip)
        );
        assert_eq!(Compression::detect(b"PK\x03\x04"), None);
    }

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
        let payload: Vec<u8> = b"VMA\0".iter().copied().chain(0..=255u8).collect();
        let mut plain = Input::open(Box::new(std::io::Cursor::new(payload.clone())), None).unwrap();
        let mut out = Vec::new();
        plain.read_to_end(&mut out).unwrap();
        assert_eq!(out, payload);

        let mut gz = Command::new("gzip")
            .arg("-c")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        gz.stdin.take().unwrap().write_all(&payload).unwrap();
        let compressed = gz.wait_with_output().unwrap().stdout;
        let mut input =
            Input::open(Box::new(std::io::Cursor::new(compressed.clone())), None).unwrap();
        assert_eq!(input.compression(), Compression::Gzip);
        let mut out = Vec::new();
        input.read_to_end(&mut out).unwrap();
        assert_eq!(out, payload);

        // Truncated compressed data is an error, not a short clean stream.
        let cut = compressed[..compressed.len() - 10].to_vec();
        let mut input = Input::open(Box::new(std::io::Cursor::new(cut)), None).unwrap();
        let mut out = Vec::new();
        let e = input.read_to_end(&mut out).unwrap_err();
        assert!(e.to_string().contains("gzip failed"), "{e}");
    }
}

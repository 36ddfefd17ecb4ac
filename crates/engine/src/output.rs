//! The byte sink under the VMA stream: the `.dat` file, optionally behind an in-process zstd
//! or gzip encoder, or `lzop` (no maintained pure-Rust lzop container encoder exists; vzdump
//! runs `lzop` too).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

use crate::options::Compression;

/// Output buffer size in front of the file or the encoder.
const BUF: usize = 1 << 20;

/// A compressed or plain archive file being written.
pub enum Output {
    /// Plain VMA.
    Plain(BufWriter<File>, File),
    /// zstd frames.
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<File>>, File),
    /// gzip member.
    Gzip(flate2::write::GzEncoder<BufWriter<File>>, File),
    /// `lzop -c` writing into the file.
    Lzo(BufWriter<ChildStdin>, Child, File),
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Output::Plain(..) => "Output::Plain",
            Output::Zstd(..) => "Output::Zstd",
            Output::Gzip(..) => "Output::Gzip",
            Output::Lzo(..) => "Output::Lzo",
        })
    }
}

impl Output {
    /// Creates `path` (which must not exist) and the encoder for `compress`.
    pub fn create(
        path: &Path,
        compress: Compression,
        zstd_threads: u32,
        zstd_level: i32,
    ) -> io::Result<Self> {
        let file = File::options().write(true).create_new(true).open(path)?;
        let sync = file.try_clone()?;
        Ok(match compress {
            Compression::None => Output::Plain(BufWriter::with_capacity(BUF, file), sync),
            Compression::Zstd => {
                let mut enc = zstd::stream::write::Encoder::new(
                    BufWriter::with_capacity(BUF, file),
                    zstd_level,
                )?;
                if zstd_threads > 1 {
                    enc.multithread(zstd_threads)?;
                }
                Output::Zstd(enc, sync)
            }
            Compression::Gzip => Output::Gzip(
                flate2::write::GzEncoder::new(
                    BufWriter::with_capacity(BUF, file),
                    flate2::Compression::fast(),
                ),
                sync,
            ),
            Compression::Lzo => {
                let mut child = Command::new("lzop")
                    .arg("-c")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::from(file))
                    .stderr(Stdio::inherit())
                    .spawn()
                    .map_err(|e| io::Error::new(e.kind(), format!("cannot run lzop: {e}")))?;
                let stdin = child
                    .stdin
                    .take()
                    .ok_or_else(|| io::Error::other("lzop has no stdin"))?;
                Output::Lzo(BufWriter::with_capacity(BUF, stdin), child, sync)
            }
        })
    }

    /// Ends the compressed stream, waits for `lzop`, and fsyncs the file.
    pub fn finish(self) -> io::Result<()> {
        let file = match self {
            Output::Plain(mut w, f) => {
                w.flush()?;
                f
            }
            Output::Zstd(enc, f) => {
                enc.finish()?.flush()?;
                f
            }
            Output::Gzip(enc, f) => {
                enc.finish()?.flush()?;
                f
            }
            Output::Lzo(w, mut child, f) => {
                let stdin = w.into_inner().map_err(|e| e.into_error())?;
                drop(stdin);
                let status = child.wait()?;
                if !status.success() {
                    return Err(io::Error::other(format!(
                        "lzop failed - wrong exit status {status}"
                    )));
                }
                f
            }
        };
        file.sync_all()
    }

    /// Stops an `lzop` child on the error path (the file is deleted by the caller).
    pub fn abort(self) {
        if let Output::Lzo(_, mut child, _) = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Output::Plain(w, _) => w.write(buf),
            Output::Zstd(w, _) => w.write(buf),
            Output::Gzip(w, _) => w.write(buf),
            Output::Lzo(w, ..) => w.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Output::Plain(w, _) => w.write_all(buf),
            Output::Zstd(w, _) => w.write_all(buf),
            Output::Gzip(w, _) => w.write_all(buf),
            Output::Lzo(w, ..) => w.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::Plain(w, _) => w.flush(),
            Output::Zstd(w, _) => w.flush(),
            Output::Gzip(w, _) => w.flush(),
            Output::Lzo(w, ..) => w.flush(),
        }
    }
}

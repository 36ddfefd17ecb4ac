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

/// Bytes written between two background `fdatasync`s of the archive file. Dirty pages are
/// written back while the transfer goes on, so the final fsync (the commit) is short; without
/// it a machine with lots of RAM would write the whole archive back only at the end.
const SYNC_EVERY: u64 = 128 << 20;

/// The archive output: the encoder chain plus a background syncer.
pub struct Output {
    sink: Sink,
    written: u64,
    next_sync: u64,
    syncer: Option<(std::sync::mpsc::SyncSender<()>, std::thread::JoinHandle<()>)>,
}

/// A compressed or plain archive file being written.
pub enum Sink {
    /// Plain VMA.
    Plain(BufWriter<File>, File),
    /// zstd frames.
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<File>>, File),
    /// gzip member.
    Gzip(flate2::write::GzEncoder<BufWriter<File>>, File),
    /// `lzop -c` writing into the file.
    Lzo(BufWriter<ChildStdin>, Child, File),
    /// Finished.
    Done,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.sink {
            Sink::Plain(..) => "Output::Plain",
            Sink::Zstd(..) => "Output::Zstd",
            Sink::Gzip(..) => "Output::Gzip",
            Sink::Lzo(..) => "Output::Lzo",
            Sink::Done => "Output::Done",
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
        let background = file.try_clone()?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let syncer = std::thread::Builder::new()
            .name("archive-sync".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    // Errors show up again at the final fsync.
                    let _ = background.sync_data();
                }
            })?;
        let sink = match compress {
            Compression::None => Sink::Plain(BufWriter::with_capacity(BUF, file), sync),
            Compression::Zstd => {
                let mut enc = zstd::stream::write::Encoder::new(
                    BufWriter::with_capacity(BUF, file),
                    zstd_level,
                )?;
                if zstd_threads > 1 {
                    enc.multithread(zstd_threads)?;
                }
                Sink::Zstd(enc, sync)
            }
            Compression::Gzip => Sink::Gzip(
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
                Sink::Lzo(BufWriter::with_capacity(BUF, stdin), child, sync)
            }
        };
        Ok(Output {
            sink,
            written: 0,
            next_sync: SYNC_EVERY,
            syncer: Some((tx, syncer)),
        })
    }

    fn stop_syncer(&mut self) {
        if let Some((tx, handle)) = self.syncer.take() {
            drop(tx);
            let _ = handle.join();
        }
    }

    /// Ends the compressed stream, waits for `lzop`, and fsyncs the file.
    pub fn finish(mut self) -> io::Result<()> {
        self.stop_syncer();
        let sink = std::mem::replace(&mut self.sink, Sink::Done);
        let file = match sink {
            Sink::Done => return Ok(()),
            Sink::Plain(mut w, f) => {
                w.flush()?;
                f
            }
            Sink::Zstd(enc, f) => {
                enc.finish()?.flush()?;
                f
            }
            Sink::Gzip(enc, f) => {
                enc.finish()?.flush()?;
                f
            }
            Sink::Lzo(w, mut child, f) => {
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
    pub fn abort(mut self) {
        self.stop_syncer();
        if let Sink::Lzo(_, child, _) = &mut self.sink {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        self.stop_syncer();
    }
}

impl Output {
    fn note(&mut self, n: usize) {
        self.written += n as u64;
        if self.written >= self.next_sync {
            self.next_sync = self.written + SYNC_EVERY;
            if let Some((tx, _)) = &self.syncer {
                // A sync still running is enough; never wait for it.
                let _ = tx.try_send(());
            }
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match &mut self.sink {
            Sink::Plain(w, _) => w.write(buf),
            Sink::Zstd(w, _) => w.write(buf),
            Sink::Gzip(w, _) => w.write(buf),
            Sink::Lzo(w, ..) => w.write(buf),
            Sink::Done => Err(io::Error::other("archive already finished")),
        }?;
        self.note(n);
        Ok(n)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match &mut self.sink {
            Sink::Plain(w, _) => w.write_all(buf),
            Sink::Zstd(w, _) => w.write_all(buf),
            Sink::Gzip(w, _) => w.write_all(buf),
            Sink::Lzo(w, ..) => w.write_all(buf),
            Sink::Done => Err(io::Error::other("archive already finished")),
        }?;
        self.note(buf.len());
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.sink {
            Sink::Plain(w, _) => w.flush(),
            Sink::Zstd(w, _) => w.flush(),
            Sink::Gzip(w, _) => w.flush(),
            Sink::Lzo(w, ..) => w.flush(),
            Sink::Done => Ok(()),
        }
    }
}

//! The files of `vma create` and `vma extract`: an archive output file that only stays when
//! it is durable, and an extract directory that is complete or gone.
//!
//! Both keep the guarantee of every vmdump command: a failure (an fsync error, a full disk,
//! a damaged archive) leaves no file with a final name and nothing new behind. A new
//! file is fsynced before it counts as written; a failed fsync is an error that says
//! "fsync", never a silent exit 0. `close(2)` errors after a successful fsync are not
//! checked: the data is durable by then (std's `File` ignores them, and unsafe code is not
//! allowed here).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use crate::devmap::MapEntry;
use crate::error::{Error, Result};
use crate::extract::{DeviceSink, Extract};
use crate::header::{Device, Header};
use crate::reader::{ReadStats, Reader};
use crate::stats::ReadTally;

fn file_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::File {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Where `vma create` writes: a new regular file (removed unless [`OutputFile::commit`]
/// fsyncs it) or an existing FIFO (a reader on the other end; nothing to fsync or remove).
#[derive(Debug)]
pub struct OutputFile {
    file: File,
    path: PathBuf,
    /// A new regular file that is removed on drop unless committed.
    new: bool,
}

impl OutputFile {
    /// Open `path` for a new archive: an existing FIFO is opened for writing; anything else
    /// is created and must not exist.
    pub fn open(path: &Path) -> Result<Self> {
        let fifo = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo());
        let file = OpenOptions::new()
            .write(true)
            .create_new(!fifo)
            .open(path)
            .map_err(file_error("open file", path))?;
        Ok(OutputFile {
            file,
            path: path.to_path_buf(),
            new: !fifo,
        })
    }

    /// The open file (a [`Writer`](crate::Writer) may write through `&File`).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// True for a regular file, where the writer may seek back (see
    /// [`Writer::new_in_place`](crate::Writer::new_in_place)).
    pub fn is_regular(&self) -> bool {
        self.new && self.file.metadata().is_ok_and(|m| m.is_file())
    }

    /// The archive is complete: flush and fsync a new file (a FIFO is only flushed). On
    /// error the new file is removed.
    pub fn commit(mut self) -> Result<()> {
        self.file.flush().map_err(file_error("flush", &self.path))?;
        if self.new {
            self.file
                .sync_all()
                .map_err(file_error("fsync", &self.path))?;
            self.new = false;
        }
        Ok(())
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if self.new {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A name from the archive used as a file name must not leave the target directory.
fn safe_name(name: &str, what: &'static str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(Error::UnsafeName {
            what,
            name: name.to_string(),
        });
    }
    Ok(())
}

/// One device being extracted: the file its data goes to.
#[derive(Debug)]
struct Target {
    dev_id: u8,
    file: File,
    path: PathBuf,
    /// A new file: its size, set at the end (sparse, so only data is written).
    set_len: Option<u64>,
    write_zeros: bool,
    /// A new disk file's final name, given once all is durable.
    rename_to: Option<PathBuf>,
}

/// Which devices an extract writes and where: `vma extract`'s `-d` and `-r` choices.
#[derive(Debug, Default, Clone, Copy)]
pub struct Selection<'a> {
    /// Only these devices (the vmstate stream is always written).
    pub drives: Option<&'a [&'a str]>,
    /// Every device goes where this map (`-r`) says, into existing raw files or devices;
    /// without it each device goes to a new `disk-<name>.raw` in the directory.
    pub map: Option<&'a HashMap<String, MapEntry>>,
}

/// The target directory of `vma extract`: created new with the archive's configs, then one
/// file per extracted device. New disk files are written as `tmp-disk-<name>.raw` and get
/// their final name `disk-<name>.raw` only after every target is fsynced. Dropped before
/// [`ExtractDir::run`] succeeded, it removes every file it created and the directory.
#[derive(Debug)]
pub struct ExtractDir {
    dir: PathBuf,
    /// Files created here, removed on failure.
    created: Vec<PathBuf>,
    targets: Vec<Target>,
    done: bool,
}

impl ExtractDir {
    /// Create `dir` (it must not exist) and write the configs of `header` into it.
    pub fn create(dir: &Path, header: &Header) -> Result<Self> {
        std::fs::create_dir(dir).map_err(|source| Error::TargetDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut this = ExtractDir {
            dir: dir.to_path_buf(),
            created: Vec::new(),
            targets: Vec::new(),
            done: false,
        };
        for c in &header.configs {
            safe_name(&c.name, "config")?;
            let path = dir.join(&c.name);
            let mut f = this.create_file(&path)?;
            f.write_all(&c.data)
                .map_err(file_error("write file", &path))?;
        }
        Ok(this)
    }

    fn create_file(&mut self, path: &Path) -> Result<File> {
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(file_error("create file", path))?;
        self.created.push(path.to_path_buf());
        Ok(f)
    }

    /// Open or create the target of every device of `header` that `select` chooses. Before
    /// a new disk file is created, `announce` gets its path and size (`DEVINFO` lines).
    pub fn add_devices<E: From<Error>>(
        &mut self,
        header: &Header,
        select: Selection<'_>,
        mut announce: impl FnMut(&Path, u64) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        for d in &header.devices {
            if d.is_vmstate() {
                let path = self.dir.join("vmstate.bin");
                let file = self.create_file(&path)?;
                self.targets.push(Target {
                    dev_id: d.id,
                    file,
                    path,
                    set_len: None,
                    write_zeros: true,
                    rename_to: None,
                });
                continue;
            }
            if select
                .drives
                .is_some_and(|list| !list.contains(&d.name.as_str()))
            {
                continue;
            }
            let target = match select.map {
                Some(map) => match Self::mapped_target(d, map)? {
                    Some(t) => t,
                    None => continue,
                },
                None => {
                    safe_name(&d.name, "device")?;
                    let path = self.dir.join(format!("tmp-disk-{}.raw", d.name));
                    announce(&path, d.size)?;
                    let file = self.create_file(&path)?;
                    Target {
                        dev_id: d.id,
                        file,
                        rename_to: Some(self.dir.join(format!("disk-{}.raw", d.name))),
                        path,
                        set_len: Some(d.size),
                        write_zeros: false,
                    }
                }
            };
            self.targets.push(target);
        }
        Ok(())
    }

    /// The existing raw file or device the map names for `d`; `None` for `skip=`.
    fn mapped_target(d: &Device, map: &HashMap<String, MapEntry>) -> Result<Option<Target>> {
        let entry = map.get(&d.name).ok_or_else(|| Error::NoMapping {
            device: d.name.clone(),
        })?;
        if entry.skip {
            return Ok(None);
        }
        if let Some(format) = entry.format.as_deref().filter(|f| *f != "raw") {
            return Err(Error::TargetFormat {
                device: d.name.clone(),
                format: format.to_string(),
            });
        }
        let path = PathBuf::from(entry.path.as_deref().unwrap_or_default());
        let mut file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(file_error("open file", &path))?;
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(file_error("get size of", &path))?;
        if size < d.size || size - d.size >= 4 << 20 {
            return Err(Error::TargetSize {
                device: d.name.clone(),
                size,
                expected: d.size,
            });
        }
        Ok(Some(Target {
            dev_id: d.id,
            file,
            path,
            set_len: None,
            write_zeros: entry.write_zero,
            rename_to: None,
        }))
    }

    /// Read the rest of the archive into the targets (see [`Extract::run`]), then make them
    /// durable (size, fsync) and give new disk files their final names.
    pub fn run<R: Read, E: From<Error>>(
        mut self,
        reader: Reader<R>,
        tally: &mut ReadTally,
        progress: impl FnMut(&ReadTally, u64) -> std::result::Result<(), E>,
    ) -> std::result::Result<ReadStats, E> {
        let stats = {
            let mut sinks: Vec<FileSink<'_>> =
                self.targets.iter().map(|t| FileSink(&t.file)).collect();
            let mut job = Extract::new();
            for (t, sink) in self.targets.iter().zip(sinks.iter_mut()) {
                job.add(t.dev_id, sink, t.write_zeros);
            }
            job.run(reader, tally, progress)?
        };
        self.commit()?;
        Ok(stats)
    }

    fn commit(&mut self) -> Result<()> {
        for t in &self.targets {
            if let Some(size) = t.set_len {
                t.file
                    .set_len(size)
                    .map_err(file_error("set the size of", &t.path))?;
            }
            t.file.sync_all().map_err(file_error("fsync", &t.path))?;
        }
        for t in &self.targets {
            if let Some(to) = &t.rename_to {
                std::fs::rename(&t.path, to).map_err(|source| Error::Rename {
                    from: t.path.clone(),
                    to: to.clone(),
                    source,
                })?;
            }
        }
        self.done = true;
        Ok(())
    }
}

impl Drop for ExtractDir {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        for t in &self.targets {
            if let Some(to) = &t.rename_to {
                // A rename that went through before a later one failed.
                if !t.path.exists() {
                    let _ = std::fs::remove_file(to);
                }
            }
        }
        for path in self.created.iter().rev() {
            let _ = std::fs::remove_file(path);
        }
        // Only if nothing else appeared in it meanwhile.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// An extract target file (raw image, block device, vmstate file).
struct FileSink<'a>(&'a File);

impl DeviceSink for FileSink<'_> {
    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(data, offset)
    }
}

//! `vmdump vma`: a drop-in for Proxmox's `vma` CLI (list, config, verify, extract,
//! create).
//!
//! Output that other tools parse (`list`, `extract -r`, `-v` statistics) is reproduced
//! byte for byte: qmrestore reads the `DEV:` and `CTIME:` lines of `extract -r`. Unlike
//! Proxmox, errors end with a clean exit status 255 and a message on stderr instead of
//! an abort, `verify` also reports missing clusters, and compressed input (zstd, lzop,
//! gzip) is detected and decompressed in-process.

//!
//! This is the clap layer and the adapters (files, block devices, QEMU images) behind the
//! traits of `vmdump-vma`, which holds the logic: [`archive_disks`], [`Extract`],
//! [`ReadTally`].

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, ExitCode, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use vmdump_compress::{Codec, Decoder, Encoder, EncoderOptions};
use vmdump_vma::{
    archive_disks, ArchiveDisk, ArchiveProgress, DataMap, DeviceSink, DiskSource, Extract, Header,
    MapEntry, ReadTally, Reader, Writer,
};

/// Arguments of `vmdump vma`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Print the configs, devices and creation time of an archive (`-` = stdin).
    List {
        /// Archive path or `-`.
        file: String,
    },
    /// Write one stored config file to stdout (exit 255 if it is not stored).
    Config {
        /// Archive path or `-`.
        file: String,
        /// Config name.
        #[arg(short = 'c', default_value = "qemu-server.conf")]
        config: String,
    },
    /// Read the whole archive and check it (checksums, uuids, accounting, duplicate,
    /// out-of-range and missing clusters).
    Verify {
        /// Archive path or `-`.
        file: String,
        /// Print the contents, progress and statistics.
        #[arg(short = 'v')]
        verbose: bool,
    },
    /// Extract configs and disks into a new directory.
    Extract {
        /// Archive path or `-`.
        file: String,
        /// Target directory (must not exist).
        targetdir: String,
        /// Print progress and statistics.
        #[arg(short = 'v')]
        verbose: bool,
        /// Comma-separated device names to extract (others are skipped).
        #[arg(short = 'd')]
        drives: Option<String>,
        /// Read a device map from this FIFO after printing the contents.
        #[arg(short = 'r')]
        readmap: Option<PathBuf>,
    },
    /// Create an archive from raw disk images or block devices.
    Create {
        /// Output: a new file, a FIFO, `exec:CMD`, or `-` for stdout.
        file: String,
        /// Print progress to stderr.
        #[arg(short = 'v')]
        verbose: bool,
        /// Config file to store (its basename is stored); repeatable.
        #[arg(short = 'c')]
        configs: Vec<PathBuf>,
        /// Disk as `format=<fmt>:[<devname>=]<path>`; repeatable.
        #[arg(short = 'd')]
        disks: Vec<String>,
        /// Compress the output in-process (zstd, lzo, gzip); not in Proxmox's vma.
        #[arg(long, value_parser = parse_codec)]
        compress: Option<Codec>,
        /// Compression level (zstd default 3, gzip default 6).
        #[arg(long)]
        level: Option<i32>,
        /// zstd worker threads (0 = one per CPU).
        #[arg(long, default_value_t = 0)]
        threads: u32,
        /// Deprecated positional disks `[<devname>=]<path>` (raw).
        #[arg(value_name = "DISK")]
        positional: Vec<String>,
    },
}

fn parse_codec(s: &str) -> Result<Codec, String> {
    Codec::from_name(s).ok_or_else(|| format!("unknown codec '{s}' (zstd, lzo, gzip, none)"))
}

/// Run `vmdump vma`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.cmd {
        Command::List { file } => {
            let header = read_header_only(&file)?;
            let mut out = io::stdout().lock();
            print_content(&header, &mut out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config { file, config } => {
            let header = read_header_only(&file)?;
            match header.config(&config) {
                Some(c) => {
                    let mut out = io::stdout().lock();
                    out.write_all(&c.data)?;
                    out.flush()?;
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("unable to find configuration data '{config}'");
                    Ok(ExitCode::from(255))
                }
            }
        }
        Command::Verify { file, verbose } => verify(&file, verbose),
        Command::Extract {
            file,
            targetdir,
            verbose,
            drives,
            readmap,
        } => extract(
            &file,
            &targetdir,
            verbose,
            drives.as_deref(),
            readmap.as_deref(),
        ),
        Command::Create {
            file,
            verbose,
            configs,
            disks,
            compress,
            level,
            threads,
            positional,
        } => {
            let opts = EncoderOptions {
                level,
                threads: if threads == 0 {
                    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
                } else {
                    threads
                },
            };
            create(
                &file,
                verbose,
                &configs,
                &disks,
                &positional,
                compress.unwrap_or(Codec::None),
                &opts,
            )
        }
    }
}

// ---------------------------------------------------------------------------------
// Reading side

/// Open an archive path (`-` = stdin), detecting and removing compression.
fn open_archive(file: &str) -> anyhow::Result<Decoder<Box<dyn Read>>> {
    let raw: Box<dyn Read> = if file == "-" {
        Box::new(io::stdin())
    } else {
        Box::new(File::open(file).with_context(|| format!("unable to open archive {file}"))?)
    };
    Decoder::detect(raw).with_context(|| format!("unable to read archive {file}"))
}

fn read_header_only(file: &str) -> anyhow::Result<Header> {
    let mut input = open_archive(file)?;
    vmdump_vma::read_header(&mut input).with_context(|| format!("unable to read archive {file}"))
}

/// The `list` output: configs, devices, then ctime (qmrestore parses these lines).
fn print_content(header: &Header, out: &mut impl Write) -> io::Result<()> {
    vmdump_vma::write_listing(header, &ctime(header.ctime), out)
}

/// C `ctime()` without its newline: `Mon Feb 19 01:00:05 2024`, in local time (TZ).
fn ctime(t: i64) -> String {
    ctime_in(&chrono::Local, t)
}

/// [`ctime`] in time zone `tz`.
fn ctime_in<Tz: chrono::TimeZone>(tz: &Tz, t: i64) -> String
where
    Tz::Offset: std::fmt::Display,
{
    match tz.timestamp_opt(t, 0).single() {
        Some(dt) => dt.format("%a %b %e %H:%M:%S %Y").to_string(),
        None => format!("{t}"),
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Prints `-v` progress lines to stdout as Proxmox's reader does.
fn progress_printer<'o>(
    verbose: bool,
    out: &'o mut impl Write,
) -> impl FnMut(&ReadTally, u64) -> anyhow::Result<()> + 'o {
    let start = unix_now();
    move |tally, percent| {
        if verbose {
            let secs = (unix_now() - start).max(0) as u64;
            writeln!(out, "{}", tally.progress_line(percent, secs))?;
            out.flush()?;
        }
        Ok(())
    }
}

fn verify(file: &str, verbose: bool) -> anyhow::Result<ExitCode> {
    let input = open_archive(file)?;
    let reader = Reader::new(input).with_context(|| format!("unable to read archive {file}"))?;
    let mut out = io::stdout().lock();
    if verbose {
        print_content(reader.header(), &mut out)?;
    }
    // Proxmox's verify counts every device, vmstate included.
    let mut tally = ReadTally::new(reader.header(), |_| true);
    {
        let mut print = progress_printer(verbose, &mut out);
        reader
            .for_each_cluster(|header, c| {
                let Some(dev) = header.device(c.dev_id) else {
                    return Ok(());
                };
                match tally.record(&c, dev) {
                    Some(percent) => print(&tally, percent),
                    None => Ok(()),
                }
            })
            .context("verify failed")?;
    }
    if verbose {
        tally.write_summary(&mut out)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A name from the archive used as a file name must not escape the target directory.
fn safe_component(name: &str, what: &str) -> anyhow::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        bail!(
            "refusing unsafe {what} name '{}' from the archive",
            name.escape_debug()
        );
    }
    Ok(())
}

fn read_map(fifo: &Path) -> anyhow::Result<HashMap<String, MapEntry>> {
    let f = File::open(fifo).with_context(|| format!("unable to open fifo {}", fifo.display()))?;
    Ok(vmdump_vma::read_device_map(BufReader::new(f))?)
}

/// One device being extracted: its file, and for a new file the size to set at the end.
struct Target {
    dev_id: u8,
    file: File,
    set_len: Option<u64>,
    write_zeros: bool,
}

fn extract(
    file: &str,
    dir: &str,
    verbose: bool,
    drives: Option<&str>,
    readmap: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let input = open_archive(file)?;
    let reader = Reader::new(input).with_context(|| format!("unable to read archive {file}"))?;
    let header = reader.header().clone();
    std::fs::create_dir(dir).with_context(|| format!("unable to create target directory {dir}"))?;
    for c in &header.configs {
        safe_component(&c.name, "config")?;
        let path = format!("{dir}/{}", c.name);
        std::fs::write(&path, &c.data).with_context(|| format!("unable to write file {path}"))?;
    }
    let mut out = io::stdout().lock();
    let map = match readmap {
        Some(fifo) => {
            print_content(&header, &mut out)?;
            Some(read_map(fifo)?)
        }
        None => None,
    };
    let wanted: Option<Vec<&str>> = drives.map(|d| d.split(',').collect());

    let mut targets = Vec::new();
    let mut renames = Vec::new();
    for d in &header.devices {
        if d.is_vmstate() {
            let path = format!("{dir}/vmstate.bin");
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .with_context(|| format!("create vmstate file '{path}' failed"))?;
            targets.push(Target {
                dev_id: d.id,
                file: f,
                set_len: None,
                write_zeros: true,
            });
            continue;
        }
        if let Some(list) = &wanted {
            if !list.contains(&d.name.as_str()) {
                continue;
            }
        }
        let target = if let Some(map) = &map {
            let Some(entry) = map.get(&d.name) else {
                bail!("no device name mapping for {}", d.name);
            };
            if entry.skip {
                continue;
            }
            if let Some(fmt) = entry.format.as_deref().filter(|f| *f != "raw") {
                bail!(
                    "unsupported format '{fmt}' for device {} (only raw targets are supported so far)",
                    d.name
                );
            }
            let path = entry.path.as_deref().unwrap_or_default();
            let mut f = OpenOptions::new()
                .write(true)
                .open(path)
                .with_context(|| format!("can't open file {path}"))?;
            let len = file_size(&mut f).with_context(|| format!("can't get size of {path}"))?;
            if len < d.size || len - d.size >= 4 * 1024 * 1024 {
                bail!(
                    "vma_reader_register_bs for stream {} failed - unexpected size {len} != {}",
                    d.name,
                    d.size
                );
            }
            Target {
                dev_id: d.id,
                file: f,
                set_len: None,
                write_zeros: entry.write_zero,
            }
        } else {
            safe_component(&d.name, "device")?;
            let tmp = format!("{dir}/tmp-disk-{}.raw", d.name);
            writeln!(out, "DEVINFO {tmp} {}", d.size)?;
            out.flush()?;
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .with_context(|| format!("can't create file {tmp}"))?;
            renames.push((tmp, format!("{dir}/disk-{}.raw", d.name)));
            Target {
                dev_id: d.id,
                file: f,
                set_len: Some(d.size),
                write_zeros: false,
            }
        };
        targets.push(target);
    }

    // Proxmox's extract counts every device but the vmstate stream.
    let mut tally = ReadTally::new(&header, |d| !d.is_vmstate());
    {
        let mut sinks: Vec<FileSink<'_>> = targets.iter().map(|t| FileSink(&t.file)).collect();
        let mut job = Extract::new();
        for (t, sink) in targets.iter().zip(sinks.iter_mut()) {
            job.add(t.dev_id, sink, t.write_zeros);
        }
        job.run(reader, &mut tally, progress_printer(verbose, &mut out))
            .context("restore failed")?;
    }
    for t in &targets {
        if let Some(size) = t.set_len {
            t.file.set_len(size)?;
        }
        t.file.sync_all()?;
    }
    if verbose {
        tally.write_summary(&mut out)?;
    }
    for (tmp, fin) in renames {
        std::fs::rename(&tmp, &fin).with_context(|| format!("rename {tmp} to {fin} failed"))?;
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------
// Writing side

/// A disk to archive.
struct DiskSpec {
    name: String,
    path: String,
    /// QEMU format name; `raw` (also for block devices) is read directly, anything else
    /// through `qemu-storage-daemon` and NBD.
    format: String,
}

fn parse_disks(disks: &[String], positional: &[String]) -> anyhow::Result<Vec<DiskSpec>> {
    if !disks.is_empty() && !positional.is_empty() {
        bail!("Unexpected extra argument - specify all devices via '-d'");
    }
    let expect_format = positional.is_empty();
    let mut out = Vec::new();
    for (index, spec) in disks.iter().chain(positional).enumerate() {
        let (format, rest) = match spec.strip_prefix("format=").and_then(|r| r.split_once(':')) {
            Some((fmt, rest)) => {
                if fmt.is_empty() || !fmt.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                    bail!("invalid format '{fmt}' for '{spec}'");
                }
                (fmt.to_string(), rest)
            }
            None if expect_format => bail!("No format specified for device: '{spec}'"),
            None => {
                eprintln!(
                    "warning: Specifying a device without a format is deprecated - use '-d format=<format>:{spec}'"
                );
                ("raw".to_string(), spec.as_str())
            }
        };
        let (name, path) = match rest.split_once('=') {
            Some((n, p)) => (n.to_string(), p.to_string()),
            None => (format!("disk{index}"), rest.to_string()),
        };
        out.push(DiskSpec { name, path, format });
    }
    Ok(out)
}

/// Output of `create`.
enum Output {
    File(File),
    Exec(Child),
    Stdout(io::Stdout),
}

impl Output {
    fn writer(&mut self) -> Box<dyn Write + '_> {
        match self {
            Output::File(f) => Box::new(f),
            Output::Exec(c) => match c.stdin.as_mut() {
                Some(s) => Box::new(s),
                None => Box::new(io::sink()),
            },
            Output::Stdout(s) => Box::new(s.lock()),
        }
    }

    fn close(self) -> anyhow::Result<()> {
        match self {
            // No fsync: like vzdump's compressors writing the archive, durability is
            // left to the page cache (Proxmox's own `vma create` uses O_DIRECT).
            Output::File(mut f) => f.flush()?,
            Output::Exec(mut c) => {
                drop(c.stdin.take());
                let st = c.wait()?;
                if !st.success() {
                    bail!("output command failed: {st}");
                }
            }
            Output::Stdout(mut s) => s.flush()?,
        }
        Ok(())
    }
}

/// Clusters read per request by the read-ahead thread.
const READ_CLUSTERS: u64 = 16;
/// Clusters per request when writing in place: small reads keep the buffers in the CPU
/// cache between the read and the write (measured best of 1, 2, 4 and 16).
const IN_PLACE_READ_CLUSTERS: u64 = 4;

fn create(
    file: &str,
    verbose: bool,
    configs: &[PathBuf],
    disks: &[String],
    positional: &[String],
    codec: Codec,
    opts: &EncoderOptions,
) -> anyhow::Result<ExitCode> {
    // Validate everything before creating the output.
    let specs = parse_disks(disks, positional)?;
    let mut config_data = Vec::new();
    for c in configs {
        let data =
            std::fs::read(c).with_context(|| format!("Unable to read file: {}", c.display()))?;
        let name = c
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow!("bad config file name {}", c.display()))?
            .to_string();
        config_data.push((name, data));
    }
    let sources = specs
        .iter()
        .map(Source::open)
        .collect::<anyhow::Result<Vec<_>>>()?;

    let (mut output, remove_on_error) = if let Some(cmd) = file.strip_prefix("exec:") {
        let child = Process::new("sh")
            .arg("-c")
            .arg(cmd)
            .stdin(Stdio::piped())
            .spawn()
            .with_context(|| format!("can't popen command '{cmd}'"))?;
        (Output::Exec(child), false)
    } else if file == "-" {
        (Output::Stdout(io::stdout()), false)
    } else if std::fs::metadata(file).is_ok_and(|m| m.file_type().is_fifo()) {
        let f = OpenOptions::new()
            .write(true)
            .open(file)
            .with_context(|| format!("can't open file {file}"))?;
        (Output::File(f), false)
    } else {
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(file)
            .with_context(|| format!("can't open file {file}"))?;
        (Output::File(f), true)
    };

    let disks: Vec<ArchiveDisk<'_>> = specs
        .iter()
        .zip(&sources)
        .map(|(s, source)| ArchiveDisk {
            name: &s.name,
            source,
        })
        .collect();
    let result = write_archive(&mut output, verbose, &config_data, &disks, codec, opts)
        .and_then(|()| output.close());
    if let Err(e) = result {
        if remove_on_error {
            let _ = std::fs::remove_file(file);
        }
        return Err(e.context("creating vma archive failed"));
    }
    Ok(ExitCode::SUCCESS)
}

fn write_archive(
    output: &mut Output,
    verbose: bool,
    configs: &[(String, Vec<u8>)],
    disks: &[ArchiveDisk<'_>],
    codec: Codec,
    opts: &EncoderOptions,
) -> anyhow::Result<()> {
    let mut err = io::stderr();
    let progress = |p: ArchiveProgress| {
        if verbose {
            let _ = writeln!(
                err,
                "progress {}% {}/{} {}",
                p.percent, p.transferred, p.total, p.zero_bytes
            );
        }
    };
    let stats = match output {
        // Uncompressed into a regular file: cluster data goes out as it is read and each
        // extent header is filled in afterwards, so the read buffers stay small and hot in
        // the CPU cache (the cost is then close to `cp`'s).
        Output::File(f) if codec == Codec::None && f.metadata().is_ok_and(|m| m.is_file()) => {
            let mut w = Writer::new_in_place(&*f);
            archive_disks(&mut w, configs, disks, IN_PLACE_READ_CLUSTERS, progress)?;
            // finish() flushes the output.
            w.finish()?.1
        }
        _ => {
            // Compressors emit ~128 KiB pieces: batch them into large writes. Uncompressed
            // extents are already large, so they go straight through (no extra copy).
            let cap = if codec == Codec::None { 0 } else { 4 << 20 };
            let sink = io::BufWriter::with_capacity(cap, output.writer());
            let enc = Encoder::new(codec, sink, opts)?;
            let mut w = Writer::new(enc);
            archive_disks(&mut w, configs, disks, READ_CLUSTERS, progress)?;
            let (enc, stats) = w.finish()?;
            enc.finish()?
                .into_inner()
                .map_err(|e| anyhow!("flushing the archive failed: {}", e.error()))?;
            stats
        }
    };
    if verbose {
        let mut err = io::stderr();
        for d in &stats.devices {
            writeln!(
                err,
                "image {}: size={} zeros={} saved={}",
                d.name,
                d.size,
                d.zero_bytes,
                i128::from(d.size) - i128::from(d.zero_bytes)
            )?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Adapters: files, block devices and QEMU images behind the vma crate's traits.

fn file_size(file: &mut File) -> io::Result<u64> {
    let len = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(0))?;
    Ok(len)
}

/// An extract target file (raw image, block device, vmstate file).
struct FileSink<'a>(&'a File);

impl DeviceSink for FileSink<'_> {
    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(data, offset)
    }
}

/// A disk to archive: a raw file or block device, or any QEMU image format (served
/// read-only by a private `qemu-storage-daemon`), through `vmdump-blockdev`.
struct Source(Box<dyn vmdump_blockdev::Source>);

impl Source {
    fn open(spec: &DiskSpec) -> anyhow::Result<Self> {
        vmdump_blockdev::open_source(Path::new(&spec.path), &spec.format, None)
            .map(Source)
            .with_context(|| format!("bdrv_open '{}' failed", spec.path))
    }
}

impl DiskSource for Source {
    fn size(&self) -> u64 {
        self.0.size()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_at(buf, offset).map_err(io::Error::other)
    }

    fn data_map(&self) -> Option<Box<dyn DataMap + '_>> {
        Some(Box::new(ExtentMap {
            disk: &*self.0,
            supported: true,
            extents: Vec::new(),
            extents_end: 0,
        }))
    }
}

/// How far ahead one block-status query looks.
const BLOCK_STATUS_SPAN: u64 = 1 << 30;

/// Holes of a source from its block status (`SEEK_DATA`/`SEEK_HOLE` on raw files, NBD
/// `base:allocation` on images), queried a span at a time.
struct ExtentMap<'a> {
    disk: &'a dyn vmdump_blockdev::Source,
    supported: bool,
    /// Extents cached for `[.., extents_end)`.
    extents: Vec<vmdump_blockdev::Extent>,
    extents_end: u64,
}

impl DataMap for ExtentMap<'_> {
    fn is_hole(&mut self, start: u64, end: u64) -> bool {
        if !self.supported {
            return false;
        }
        if end > self.extents_end {
            let size = self.disk.size();
            let until = size.min(start.saturating_add(BLOCK_STATUS_SPAN)).max(end);
            match self.disk.extents(start..until) {
                Ok(extents) if !extents.is_empty() => {
                    self.extents_end = extents.last().map_or(start, |e| e.end()).min(until);
                    self.extents = extents;
                }
                _ => {
                    // No usable block status: read everything (zeros are still detected).
                    self.supported = false;
                    return false;
                }
            }
            if end > self.extents_end {
                return false;
            }
        }
        self.extents
            .iter()
            .filter(|e| e.offset < end && e.end() > start)
            .all(|e| e.zero)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_specs() {
        let d = parse_disks(
            &["format=raw:drive-scsi0=/a".into(), "format=raw:/b".into()],
            &[],
        )
        .unwrap();
        assert_eq!(
            (d[0].name.as_str(), d[0].path.as_str()),
            ("drive-scsi0", "/a")
        );
        assert_eq!((d[1].name.as_str(), d[1].path.as_str()), ("disk1", "/b"));
        assert!(parse_disks(&["/a".into()], &[]).is_err());
        assert!(parse_disks(&["format=raw:/a".into()], &["/b".into()]).is_err());
        let d = parse_disks(&["format=qcow2:drive-scsi0=/a.qcow2".into()], &[]).unwrap();
        assert_eq!(d[0].format, "qcow2");
        assert_eq!(d[0].path, "/a.qcow2");
        let e = parse_disks(&["format=q/x:/a".into()], &[]).err().unwrap();
        assert!(e.to_string().contains("invalid format 'q/x'"), "{e}");
        let d = parse_disks(&[], &["x=/a".into(), "/b".into()]).unwrap();
        assert_eq!(d[1].name, "disk1");
    }

    #[test]
    fn ctime_is_c_ctime_text() {
        // glibc: TZ=UTC date -d @1708300805 '+%a %b %e %H:%M:%S %Y'
        assert_eq!(
            ctime_in(&chrono::Utc, 1_708_300_805),
            "Mon Feb 19 00:00:05 2024"
        );
        // Single-digit days are padded with a space, as ctime() does.
        assert_eq!(ctime_in(&chrono::Utc, 0), "Thu Jan  1 00:00:00 1970");
        let cet = chrono::FixedOffset::east_opt(3600).unwrap();
        assert_eq!(ctime_in(&cet, 1_708_300_805), "Mon Feb 19 01:00:05 2024");
    }
}

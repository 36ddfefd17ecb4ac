//! `vmdump vma`: a drop-in for Proxmox's `vma` CLI (list, config, verify, extract,
//! create).
//!
//! Output that other tools parse (`list`, `extract -r`, `-v` statistics) is reproduced
//! byte for byte: qmrestore reads the `DEV:` and `CTIME:` lines of `extract -r`. Unlike
//! Proxmox, errors end with a clean exit status 255 and a message on stderr instead of
//! an abort, `verify` also reports missing clusters, and compressed input (zstd, lzop,
//! gzip) is detected and decompressed in-process.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, ExitCode, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use bytes::{Bytes, BytesMut};
use vmdump_blockdev::{BlockStatus, ReadAt, Size};
use vmdump_compress::{Codec, Decoder, Encoder, EncoderOptions};
use vmdump_vma::{Cluster, Header, Reader, Writer, BLOCK_SIZE, CLUSTER_SIZE};

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
    for c in &header.configs {
        writeln!(out, "CFG: size: {} name: {}", c.data.len(), c.name)?;
    }
    for d in &header.devices {
        if d.is_vmstate() {
            writeln!(out, "VMSTATE: dev_id={} memory: {}", d.id, d.size)?;
        } else {
            writeln!(
                out,
                "DEV: dev_id={} size: {} devname: {}",
                d.id, d.size, d.name
            )?;
        }
    }
    writeln!(out, "CTIME: {}", ctime(header.ctime))?;
    out.flush()
}

/// C `ctime()` without its newline: `Mon Feb 19 01:00:05 2024`, in local time (TZ).
fn ctime(t: i64) -> String {
    use chrono::TimeZone;
    match chrono::Local.timestamp_opt(t, 0).single() {
        Some(dt) => dt.format("%a %b %e %H:%M:%S %Y").to_string(),
        None => format!("{t}"),
    }
}

/// C `printf("%.3g")`.
fn fmt_g3(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let sci = format!("{x:.2e}");
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let strip = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    if !(-4..3).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", strip(mant), exp.abs())
    } else {
        strip(&format!("{x:.*}", (2 - exp) as usize))
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Progress and statistics of `extract -v` / `verify -v`, printed to stdout as
/// Proxmox's reader prints them.
struct ReadProgress {
    verbose: bool,
    cluster_count: u64,
    clusters_read: u64,
    last_percent: u64,
    start: i64,
    zero_cluster_bytes: u64,
    partial_zero_bytes: u64,
}

impl ReadProgress {
    fn new(verbose: bool, header: &Header) -> Self {
        ReadProgress {
            verbose,
            cluster_count: header
                .devices
                .iter()
                .map(|d| d.size / CLUSTER_SIZE as u64)
                .sum(),
            clusters_read: 0,
            last_percent: 0,
            start: unix_now(),
            zero_cluster_bytes: 0,
            partial_zero_bytes: 0,
        }
    }

    fn cluster(&mut self, c: &Cluster<'_>, out: &mut impl Write) -> io::Result<()> {
        self.clusters_read += 1;
        if c.mask == 0 {
            self.zero_cluster_bytes += CLUSTER_SIZE as u64;
        } else if c.mask != 0xFFFF {
            self.partial_zero_bytes += u64::from(16 - c.mask.count_ones()) * BLOCK_SIZE as u64;
        }
        // Proxmox divides by zero here when every device is below 64 KiB; we skip.
        if self.verbose && self.cluster_count > 0 {
            let percent = self.clusters_read * 100 / self.cluster_count;
            if percent != self.last_percent {
                writeln!(
                    out,
                    "progress {percent}% (read {} bytes, duration {} sec)",
                    self.clusters_read * CLUSTER_SIZE as u64,
                    unix_now() - self.start
                )?;
                out.flush()?;
                self.last_percent = percent;
            }
        }
        Ok(())
    }

    fn finish(&self, out: &mut impl Write) -> io::Result<()> {
        if !self.verbose {
            return Ok(());
        }
        if self.clusters_read > 0 {
            let total = self.clusters_read * CLUSTER_SIZE as u64;
            writeln!(
                out,
                "total bytes read {total}, sparse bytes {} ({}%)",
                self.zero_cluster_bytes,
                fmt_g3(100.0 * self.zero_cluster_bytes as f64 / total as f64)
            )?;
            let data = total - self.zero_cluster_bytes;
            if data > 0 {
                writeln!(
                    out,
                    "space reduction due to 4K zero blocks {}%",
                    fmt_g3(100.0 * self.partial_zero_bytes as f64 / data as f64)
                )?;
            }
        } else {
            writeln!(out, "vma archive contains no image data")?;
        }
        out.flush()
    }
}

fn verify(file: &str, verbose: bool) -> anyhow::Result<ExitCode> {
    let input = open_archive(file)?;
    let reader = Reader::new(input).with_context(|| format!("unable to read archive {file}"))?;
    let mut out = io::stdout().lock();
    if verbose {
        print_content(reader.header(), &mut out)?;
    }
    let mut progress = ReadProgress::new(verbose, reader.header());
    reader
        .for_each_cluster(|_, c| progress.cluster(&c, &mut out).map_err(anyhow::Error::from))
        .context("verify failed")?;
    progress.finish(&mut out)?;
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

/// One line of the `-r` device map.
#[derive(Debug, Default, PartialEq, Eq)]
struct MapEntry {
    path: Option<String>,
    format: Option<String>,
    write_zero: bool,
    skip: bool,
}

/// Parse a map line: `[format=F:][throttling.bps=N:][throttling.group=G:][cache=C:]<0|1>:<dev>=<path>`
/// or `skip=<dev>`. Returns the device name and the entry.
fn parse_map_line(line: &str) -> anyhow::Result<(String, MapEntry)> {
    if let Some(rest) = line.strip_prefix("skip") {
        let Some(dev) = rest.strip_prefix('=').filter(|d| !d.is_empty()) else {
            bail!("read map failed - option 'skip' has no value ('{line}')");
        };
        return Ok((
            dev.to_string(),
            MapEntry {
                skip: true,
                ..Default::default()
            },
        ));
    }
    let mut rest = line;
    let mut opts: HashMap<&str, String> = HashMap::new();
    'options: loop {
        for opt in ["format", "throttling.bps", "throttling.group", "cache"] {
            if let Some(v) = rest.strip_prefix(opt).and_then(|r| r.strip_prefix('=')) {
                let Some((value, tail)) = v.split_once(':') else {
                    bail!("read map failed - option '{opt}' not terminated ('{line}')");
                };
                if opts.insert(opt, value.to_string()).is_some() {
                    bail!("read map failed - duplicate value for option '{opt}'");
                }
                rest = tail;
                continue 'options;
            }
        }
        break;
    }
    if let Some(bps) = opts.get("throttling.bps") {
        let parsed = if let Some(hex) = bps.strip_prefix("0x") {
            u64::from_str_radix(hex, 16).ok()
        } else {
            bps.parse::<u64>().ok()
        };
        if parsed.is_none() {
            bail!("read map failed - not a number: {bps}");
        }
    }
    let (write_zero, target) = if let Some(t) = rest.strip_prefix("0:") {
        (false, t)
    } else if let Some(t) = rest.strip_prefix("1:") {
        (true, t)
    } else {
        bail!("read map failed - parse error ('{line}')");
    };
    let Some((dev, path)) = target.split_once('=') else {
        bail!("read map failed - no dev name specified ('{line}')");
    };
    Ok((
        dev.to_string(),
        MapEntry {
            path: Some(path.to_string()),
            format: opts.remove("format"),
            write_zero,
            skip: false,
        },
    ))
}

fn read_map(fifo: &Path) -> anyhow::Result<HashMap<String, MapEntry>> {
    let f = File::open(fifo).with_context(|| format!("unable to open fifo {}", fifo.display()))?;
    let mut map = HashMap::new();
    for line in BufReader::new(f).lines() {
        let line = line.with_context(|| format!("read map failed - {}", fifo.display()))?;
        if line.is_empty() || line == "done" {
            break;
        }
        let (dev, entry) = parse_map_line(&line)?;
        map.insert(dev, entry);
    }
    Ok(map)
}

/// Where the clusters of one device go during extract.
enum Target {
    Raw {
        file: File,
        size: u64,
        write_zero: bool,
        set_len: bool,
    },
    Vmstate {
        file: File,
    },
}

static ZEROS: [u8; CLUSTER_SIZE] = [0u8; CLUSTER_SIZE];

impl Target {
    fn write(&mut self, c: &Cluster<'_>, dev: &str) -> anyhow::Result<()> {
        match self {
            Target::Vmstate { file } => {
                let mut buf = vec![0u8; CLUSTER_SIZE];
                c.expand_into(&mut buf);
                file.write_all(&buf)
                    .with_context(|| format!("write vmstate failed for {dev}"))?;
            }
            Target::Raw {
                file,
                size,
                write_zero,
                ..
            } => {
                let base = c.device_offset();
                let end = (*size).min(base + CLUSTER_SIZE as u64);
                let ctx = || format!("write to {dev} at offset {base} failed");
                if c.mask == 0xFFFF {
                    file.write_all_at(&c.data()[..(end - base) as usize], base)
                        .with_context(ctx)?;
                    return Ok(());
                }
                // Runs of stored blocks are contiguous in the extent: one write per run.
                let mut i = 0usize;
                let mut stored = 0usize;
                while i < 16 {
                    let set = c.mask & (1 << i) != 0;
                    let mut j = i;
                    while j < 16 && (c.mask & (1 << j) != 0) == set {
                        j += 1;
                    }
                    let start = base + (i * BLOCK_SIZE) as u64;
                    if start >= end {
                        break;
                    }
                    let run_end = end.min(base + (j * BLOCK_SIZE) as u64);
                    let len = (run_end - start) as usize;
                    if set {
                        let off = stored * BLOCK_SIZE;
                        file.write_all_at(&c.data()[off..off + len], start)
                            .with_context(ctx)?;
                        stored += j - i;
                    } else if *write_zero {
                        file.write_all_at(&ZEROS[..len], start).with_context(ctx)?;
                    }
                    i = j;
                }
            }
        }
        Ok(())
    }
}

fn target_size(file: &mut File) -> io::Result<u64> {
    let len = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(0))?;
    Ok(len)
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

    let mut targets: Vec<Option<Target>> = (0..256).map(|_| None).collect();
    let mut renames = Vec::new();
    for d in &header.devices {
        if d.is_vmstate() {
            let path = format!("{dir}/vmstate.bin");
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .with_context(|| format!("create vmstate file '{path}' failed"))?;
            targets[usize::from(d.id)] = Some(Target::Vmstate { file: f });
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
            let len = target_size(&mut f).with_context(|| format!("can't get size of {path}"))?;
            if len < d.size || len - d.size >= 4 * 1024 * 1024 {
                bail!(
                    "vma_reader_register_bs for stream {} failed - unexpected size {len} != {}",
                    d.name,
                    d.size
                );
            }
            Target::Raw {
                file: f,
                size: d.size,
                write_zero: entry.write_zero,
                set_len: false,
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
            Target::Raw {
                file: f,
                size: d.size,
                write_zero: false,
                set_len: true,
            }
        };
        targets[usize::from(d.id)] = Some(target);
    }

    let mut progress = ReadProgress::new(verbose, &header);
    let restored: Vec<bool> = targets.iter().map(Option::is_some).collect();
    let result = (|| -> anyhow::Result<()> {
        let mut input = reader;
        while let Some(ext) = input.next_extent()? {
            for c in ext.clusters() {
                progress.cluster(&c, &mut out)?;
                if let Some(t) = targets[usize::from(c.dev_id)].as_mut() {
                    let name = header.device(c.dev_id).map_or("?", |d| d.name.as_str());
                    t.write(&c, name)?;
                }
            }
        }
        input.finish_for(|id| restored[usize::from(id)])?;
        Ok(())
    })();
    result.context("restore failed")?;

    for t in targets.iter_mut().flatten() {
        match t {
            Target::Raw {
                file,
                size,
                set_len,
                ..
            } => {
                if *set_len {
                    file.set_len(*size)?;
                }
                file.sync_all()?;
            }
            Target::Vmstate { file } => file.sync_all()?,
        }
    }
    progress.finish(&mut out)?;
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

/// An open disk to archive.
enum Source {
    /// A raw image file or block device, read with `pread`.
    Raw { file: File, size: u64 },
    /// Any other QEMU image format (qcow2, vmdk, ...), served read-only by a private
    /// `qemu-storage-daemon` that is stopped when this is dropped.
    Image(vmdump_blockdev::Image),
}

impl Source {
    fn open(spec: &DiskSpec) -> anyhow::Result<Self> {
        let ctx = || format!("bdrv_open '{}' failed", spec.path);
        if spec.format == "raw" {
            let mut file = File::open(&spec.path).with_context(ctx)?;
            let size = target_size(&mut file)
                .with_context(|| format!("can't get size of {}", spec.path))?;
            return Ok(Source::Raw { file, size });
        }
        let image = vmdump_blockdev::Image::open(Path::new(&spec.path), Some(&spec.format), true)
            .with_context(ctx)?;
        Ok(Source::Image(image))
    }

    fn size(&self) -> u64 {
        match self {
            Source::Raw { size, .. } => *size,
            Source::Image(image) => image.size(),
        }
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> anyhow::Result<()> {
        match self {
            Source::Raw { file, .. } => Ok(file.read_exact_at(buf, offset)?),
            Source::Image(image) => Ok(image.read_at(buf, offset)?),
        }
    }
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

/// Where the data of a source lies, so holes are not read: SEEK_DATA/SEEK_HOLE on raw
/// files, NBD block status (`base:allocation`, zero flag) on other image formats.
struct DataMap {
    supported: bool,
    data_start: u64,
    data_end: u64,
    /// Image sources: block-status extents cached for `[.., extents_end)`.
    extents: Vec<vmdump_blockdev::Extent>,
    extents_end: u64,
}

/// How far ahead one block-status query looks on an image source.
const BLOCK_STATUS_SPAN: u64 = 1 << 30;

impl DataMap {
    fn new(source: &Source) -> Self {
        let supported = match source {
            Source::Raw { file, .. } => file.metadata().map(|m| m.is_file()).unwrap_or(false),
            Source::Image(_) => true,
        };
        DataMap {
            supported,
            data_start: 0,
            data_end: 0,
            extents: Vec::new(),
            extents_end: 0,
        }
    }

    /// True if `[start, end)` lies entirely in a hole (reads as zeros).
    fn is_hole(&mut self, source: &Source, start: u64, end: u64, size: u64) -> bool {
        if !self.supported {
            return false;
        }
        let file = match source {
            Source::Raw { file, .. } => file,
            Source::Image(image) => return self.image_is_hole(image, start, end, size),
        };
        if start >= self.data_end {
            match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(start)) {
                Ok(ds) => {
                    self.data_start = ds;
                    self.data_end = rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(ds))
                        .unwrap_or(size)
                        .max(ds + 1);
                }
                Err(rustix::io::Errno::NXIO) => {
                    self.data_start = size;
                    self.data_end = u64::MAX;
                }
                Err(_) => {
                    self.supported = false;
                    return false;
                }
            }
        }
        self.data_start >= end
    }

    fn image_is_hole(
        &mut self,
        image: &vmdump_blockdev::Image,
        start: u64,
        end: u64,
        size: u64,
    ) -> bool {
        if end > self.extents_end {
            let until = size.min(start.saturating_add(BLOCK_STATUS_SPAN)).max(end);
            match image.extents(start..until) {
                Ok(extents) if !extents.is_empty() => {
                    self.extents_end = extents
                        .last()
                        .map_or(start, |e| e.offset + e.length)
                        .min(until);
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
            .filter(|e| e.offset < end && e.offset + e.length > start)
            .all(|e| e.zero)
    }
}

/// Clusters read per request by the read-ahead thread.
const READ_CLUSTERS: u64 = 16;
/// Clusters per request when writing in place: small reads keep the buffers in the CPU
/// cache between the read and the write (measured best of 1, 2, 4 and 16).
const IN_PLACE_READ_CLUSTERS: u64 = 4;

/// A run of clusters of one device: read data, or a hole (all zero, not read).
struct Chunk {
    dev: usize,
    first: u64,
    count: u64,
    data: Option<Bytes>,
}

/// Produce the clusters of every source in order; stops at the first error or when the
/// consumer hangs up.
fn read_ahead(
    specs: &[DiskSpec],
    sources: &[Source],
    read_clusters: u64,
    tx: &std::sync::mpsc::SyncSender<anyhow::Result<Chunk>>,
    pool: &std::sync::mpsc::Receiver<BytesMut>,
) {
    for (dev, (s, f)) in specs.iter().zip(sources).enumerate() {
        let size = &f.size();
        let mut map = DataMap::new(f);
        let clusters = size.div_ceil(CLUSTER_SIZE as u64);
        let cluster_end = |c: u64| (*size).min((c + 1) * CLUSTER_SIZE as u64);
        let mut c = 0u64;
        while c < clusters {
            let start = c * CLUSTER_SIZE as u64;
            let hole = map.is_hole(f, start, cluster_end(c), *size);
            // Extend the run while clusters stay of the same kind.
            let mut n = 1u64;
            while c + n < clusters
                && n < read_clusters
                && map.is_hole(f, (c + n) * CLUSTER_SIZE as u64, cluster_end(c + n), *size) == hole
            {
                n += 1;
            }
            let chunk = if hole {
                Ok(Chunk {
                    dev,
                    first: c,
                    count: n,
                    data: None,
                })
            } else {
                // A recycled buffer, or a new one while the writer still holds them all
                // (bounded: the channel depth plus the buffers one extent spans).
                let mut buf = pool.try_recv().unwrap_or_default();
                let len = (cluster_end(c + n - 1) - start) as usize;
                buf.resize(len, 0);
                match f.read_exact_at(&mut buf, start) {
                    Ok(()) => Ok(Chunk {
                        dev,
                        first: c,
                        count: n,
                        data: Some(buf.freeze()),
                    }),
                    Err(e) => Err(e.context(format!("read error on {} at offset {start}", s.path))),
                }
            };
            let failed = chunk.is_err();
            if tx.send(chunk).is_err() || failed {
                return;
            }
            c += n;
        }
    }
}

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

    let result = write_archive(
        &mut output,
        verbose,
        &config_data,
        &specs,
        &sources,
        codec,
        opts,
    )
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
    specs: &[DiskSpec],
    sources: &[Source],
    codec: Codec,
    opts: &EncoderOptions,
) -> anyhow::Result<()> {
    let stats = match output {
        // Uncompressed into a regular file: cluster data goes out as it is read and each
        // extent header is filled in afterwards, so the read buffers stay small and hot in
        // the CPU cache (the cost is then close to `cp`'s).
        Output::File(f) if codec == Codec::None && f.metadata().is_ok_and(|m| m.is_file()) => {
            let mut w = Writer::new_in_place(&*f);
            fill(
                &mut w,
                verbose,
                configs,
                specs,
                sources,
                IN_PLACE_READ_CLUSTERS,
            )?;
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
            fill(&mut w, verbose, configs, specs, sources, READ_CLUSTERS)?;
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

/// Store the configs and every cluster of every source in `w`, reading `read_clusters`
/// clusters per request.
fn fill<W: Write>(
    w: &mut Writer<W>,
    verbose: bool,
    configs: &[(String, Vec<u8>)],
    specs: &[DiskSpec],
    sources: &[Source],
    read_clusters: u64,
) -> anyhow::Result<()> {
    for (name, data) in configs {
        w.add_config(name, data).with_context(|| {
            format!("Unable to append config data {name} (len = {})", data.len())
        })?;
    }
    let mut ids = Vec::new();
    for (s, source) in specs.iter().zip(sources) {
        ids.push(
            w.register_device(&s.name, source.size())
                .with_context(|| format!("vma_writer_register_stream '{}' failed", s.name))?,
        );
    }
    let total: u64 = sources.iter().map(Source::size).sum();
    let mut transferred = 0u64;
    let mut zero_bytes = 0u64;
    let mut last_percent = -1i64;
    let mut err = io::stderr();
    // A reader thread reads ahead in runs of up to `read_clusters` clusters (holes are
    // found with SEEK_DATA and never read), so disk reads overlap archive writes. The
    // writer takes slices of the read buffers instead of copying them; a buffer goes back
    // to the reader once nothing refers to it any more (oldest first).
    let (tx, rx) = std::sync::mpsc::sync_channel::<anyhow::Result<Chunk>>(4);
    let (pool_tx, pool_rx) = std::sync::mpsc::channel::<BytesMut>();
    // An extent spans at most 59 clusters, so the writer never holds more read buffers.
    let mut held = vmdump_vma::Recycler::new(vmdump_vma::SLOTS_PER_EXTENT);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        // Owned here so that an early error drops it and unblocks the reader.
        let pool_tx = pool_tx;
        scope.spawn(move || read_ahead(specs, sources, read_clusters, &tx, &pool_rx));
        for chunk in rx {
            let chunk = chunk?;
            let (dev, size) = (chunk.dev, sources[chunk.dev].size());
            for k in 0..chunk.count {
                let c = chunk.first + k;
                let start = c * CLUSTER_SIZE as u64;
                let len = (size.min(start + CLUSTER_SIZE as u64) - start) as usize;
                match &chunk.data {
                    None => {
                        w.write_zero_cluster(ids[dev], c)?;
                        zero_bytes += CLUSTER_SIZE as u64;
                    }
                    Some(buf) => {
                        let off = k as usize * CLUSTER_SIZE;
                        zero_bytes +=
                            w.write_cluster_shared(ids[dev], c, &buf.slice(off..off + len))?;
                    }
                }
                transferred += len as u64;
                if verbose {
                    let percent = (transferred * 100 / total.max(1)) as i64;
                    if percent != last_percent {
                        writeln!(
                            err,
                            "progress {percent}% {transferred}/{total} {zero_bytes}"
                        )?;
                        last_percent = percent;
                    }
                }
            }
            if let Some(buf) = chunk.data {
                held.hold(buf);
            }
            while let Some(free) = held.reclaim() {
                let _ = pool_tx.send(free);
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn g3_matches_printf() {
        assert_eq!(fmt_g3(98.4567), "98.5");
        assert_eq!(fmt_g3(100.0), "100");
        assert_eq!(fmt_g3(5.0812), "5.08");
        assert_eq!(fmt_g3(0.20711), "0.207");
        assert_eq!(fmt_g3(0.000012345), "1.23e-05");
        assert_eq!(fmt_g3(3.0), "3");
        assert_eq!(fmt_g3(96.44), "96.4");
        assert_eq!(fmt_g3(0.0), "0");
        assert_eq!(fmt_g3(99.96), "100");
    }

    #[test]
    fn map_lines() {
        let (d, e) = parse_map_line("format=raw:0:drive-scsi0=/dev/pve/vm-1-disk-0").unwrap();
        assert_eq!(d, "drive-scsi0");
        assert_eq!(e.path.as_deref(), Some("/dev/pve/vm-1-disk-0"));
        assert_eq!(e.format.as_deref(), Some("raw"));
        assert!(!e.write_zero);
        let (d, e) =
            parse_map_line("format=qcow2:throttling.bps=0x100:cache=none:1:drive-x=/a/b=c")
                .unwrap();
        assert_eq!(d, "drive-x");
        assert_eq!(e.path.as_deref(), Some("/a/b=c"));
        assert!(e.write_zero);
        let (d, e) = parse_map_line("skip=drive-efidisk0").unwrap();
        assert_eq!(d, "drive-efidisk0");
        assert!(e.skip);
        assert!(parse_map_line("skip=").is_err());
        assert!(parse_map_line("2:x=y").is_err());
        assert!(parse_map_line("0:/no/devname").is_err());
        assert!(parse_map_line("format=raw").is_err());
        assert!(parse_map_line("format=raw:format=raw:0:a=b").is_err());
        assert!(parse_map_line("throttling.bps=abc:0:a=b").is_err());
    }

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
    fn ctime_format() {
        // Only check the shape here; the CLI tests pin TZ and the exact text.
        let s = ctime(0);
        assert_eq!(s.len(), 24, "{s}");
    }
}

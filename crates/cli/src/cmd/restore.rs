//! `vmdump restore`: restore of VMA archives (the qmrestore of vmdump).
//!
//! Log lines go to stdout in qmrestore's words (`new volume ID is ...`, `map ... to ...`,
//! `progress N% ...`; a bar instead of the percentages on a terminal); errors go to stderr
//! and exit 1. SIGINT/SIGTERM abort the restore, which then removes what it created (and
//! says so, volume by volume).

use std::fs::File;
use std::io::Read;
use std::process::ExitCode;

use anyhow::{bail, Context};
use vmdump_config::VmId;
use vmdump_task::Level;

use crate::cmd::backup::non_negative;
use crate::output::outln;
use crate::ui::{cancel_on_signals, Style, Ui};

/// Arguments of `vmdump restore`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The archive (`.vma`, `.vma.zst`, `.vma.lzo`, `.vma.gz`), or `-` for stdin.
    archive: String,
    /// The VM id to restore to (100..999999999).
    vmid: VmId,
    /// Restore every disk to this storage (default: the storage each disk came from, or
    /// `local`).
    #[arg(long)]
    storage: Option<String>,
    /// Overwrite an existing VM (it must be stopped); its old disks are removed after the
    /// restore succeeded.
    #[arg(long)]
    force: bool,
    /// Assign new random MAC addresses and a new smbios1 uuid.
    #[arg(long)]
    unique: bool,
    /// Limit the read rate of the archive, in KiB/s (0: unlimited).
    #[arg(long, value_name = "KiB/s", allow_hyphen_values = true, value_parser = non_negative)]
    bwlimit: Option<u64>,
    /// Containers: root volume as `<storage>:<GiB>` (advanced mode: replaces the backed-up
    /// layout; 0 makes a directory on a dir storage).
    #[arg(long)]
    rootfs: Option<String>,
    #[command(flatten)]
    mps: MountPointArgs,
    /// Containers: start after the restore.
    #[arg(long)]
    start: bool,
    /// Containers: restore as unprivileged (1) or privileged (0) instead of as backed up.
    #[arg(long, value_parser = super::boolean, action = clap::ArgAction::Set)]
    unprivileged: Option<bool>,
    /// VMs: start the VM at once on the archive's disks and copy them to the target storage
    /// in the background (live-restore); returns when the copy is complete. `--bwlimit`
    /// limits the copy.
    #[arg(long)]
    live: bool,
    /// With --live: return as soon as the VM runs (the copy continues; its log is
    /// `<run dir>/live-restore/<vmid>.log`).
    #[arg(long, requires = "live")]
    background: bool,
    /// With --live: directory for the decompressed copy of a compressed archive without a
    /// seek table (default /var/tmp).
    #[arg(long, value_name = "DIR", requires = "live")]
    cache_dir: Option<std::path::PathBuf>,
}

/// How many mount points a container has at most (`mp0` … `mp255`, as Proxmox).
const MAX_MOUNT_POINTS: usize = 256;

/// `--mp0` … `--mp255` (`pct restore`'s `--mpN`), in ascending order: options made at run
/// time (clap's derive cannot spell 256 of them); only `--mp0` shows in the help.
#[derive(Debug, Default, Clone)]
struct MountPointArgs(Vec<(String, String)>);

fn mp_names() -> &'static [String] {
    static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| (0..MAX_MOUNT_POINTS).map(|i| format!("mp{i}")).collect())
}

impl clap::FromArgMatches for MountPointArgs {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Ok(MountPointArgs(
            mp_names()
                .iter()
                .filter_map(|n| m.get_one::<String>(n).map(|v| (n.clone(), v.clone())))
                .collect(),
        ))
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Args for MountPointArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        mp_names().iter().enumerate().fold(cmd, |cmd, (i, n)| {
            let arg = clap::Arg::new(n.as_str())
                .long(n.as_str())
                .value_name("SPEC")
                .hide(i > 0);
            cmd.arg(if i == 0 {
                arg.help(
                    "Containers, advanced mode: mount point N for N in 0..=255 (--mp0 ... \
                     --mp255), as `<storage>:<GiB>,mp=/path[,backup=1]`",
                )
            } else {
                arg
            })
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// How many raw bytes are read ahead to tell a container archive from a VMA archive.
const SNIFF: usize = 256 * 1024;

/// Reads the start of `source` and tells whether it is a container (tar) archive; returns
/// the bytes read, to be put back in front of the rest.
fn sniff(source: &mut dyn Read) -> anyhow::Result<(bool, Vec<u8>)> {
    let mut head = vec![0u8; SNIFF];
    let mut n = 0;
    while n < head.len() {
        let k = source.read(&mut head[n..]).context("read archive")?;
        if k == 0 {
            break;
        }
        n += k;
    }
    head.truncate(n);
    let mut plain = Vec::new();
    if let Ok(dec) = vmdump_compress::Decoder::detect(std::io::Cursor::new(head.clone())) {
        let _ = dec.take(512).read_to_end(&mut plain);
    }
    Ok((vmdump_restore::is_container_archive(&plain), head))
}

/// Run `vmdump restore`.
pub fn run(args: Args, global: &crate::Global) -> anyhow::Result<ExitCode> {
    let mut opts = vmdump_restore::Options::new(global.config_root(), args.vmid);
    opts.run_dir = global.run_base();
    opts.storage = args.storage;
    opts.force = args.force;
    opts.unique = args.unique;
    opts.bwlimit = args.bwlimit.filter(|&b| b > 0);

    if args.live {
        if args.archive == "-" {
            bail!("--live needs an archive file (it is read in place), not stdin");
        }
        let mut file =
            File::open(&args.archive).with_context(|| format!("open archive {}", args.archive))?;
        if sniff(&mut file)?.0 {
            bail!("--live restores VM archives only, not container archives");
        }
        let live = super::live_restore::LiveArgs {
            archive: args.archive.into(),
            background: args.background,
            cache_dir: args.cache_dir,
        };
        return super::live_restore::run(live, opts, global);
    }
    let mut source_frames = None;
    let source: Box<dyn Read + Send> = if args.archive == "-" {
        Box::new(std::io::stdin())
    } else {
        let file =
            File::open(&args.archive).with_context(|| format!("open archive {}", args.archive))?;
        if file.metadata().is_ok_and(|m| m.is_dir()) {
            bail!("'{}' is a directory, not an archive", args.archive);
        }
        let (src, frames) = seekable_source(file, opts.bwlimit.is_some())?;
        source_frames = frames;
        src
    };
    let mut source = source;
    let (is_ct, head) = sniff(&mut source)?;
    let source: Box<dyn Read + Send> = Box::new(std::io::Cursor::new(head).chain(source));
    if is_ct {
        let mut copts = vmdump_restore::CtOptions::new(global.config_root(), args.vmid);
        copts.run_dir = global.run_base();
        copts.storage = opts.storage.clone();
        copts.force = args.force;
        copts.unique = args.unique;
        copts.start = args.start;
        copts.unprivileged = args.unprivileged;
        copts.bwlimit = opts.bwlimit;
        copts.rootfs = args.rootfs.clone();
        copts.mps = args.mps.0.clone();
        cancel_on_signals(copts.cancel.clone());
        let ui = Ui::new(Style::Qmrestore);
        ui.record_task("vzrestore", &args.vmid.to_string());
        let name = if args.archive == "-" {
            "<stdin>"
        } else {
            &args.archive
        };
        ui.print(Level::Info, &format!("restore container archive: {name}"));
        let result = vmdump_restore::restore_ct(source, &copts, &ui);
        ui.finish_task(
            result
                .as_ref()
                .map(|_| ())
                .map_err(|e| vmdump_task::one_line(e)),
        );
        return match result {
            Ok(summary) => {
                outln!(
                    "restored CT {} ({} volume(s)), config {}",
                    args.vmid,
                    summary.volumes.len(),
                    summary.config_path.display()
                )?;
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                Err(anyhow::Error::new(e).context(format!("restore of CT {} failed", args.vmid)))
            }
        };
    }
    cancel_on_signals(opts.cancel.clone());
    let ui = Ui::new(Style::Qmrestore);
    ui.record_task("qmrestore", &args.vmid.to_string());
    let name = if args.archive == "-" {
        "<stdin>"
    } else {
        &args.archive
    };
    ui.print(Level::Info, &format!("restore vma archive: {name}"));
    if let Some(frames) = source_frames {
        ui.print(
            Level::Info,
            &format!("seekable zstd archive: {frames} frames decompressed in parallel"),
        );
    }
    ui.start(format!("VM {}", args.vmid));
    let result = vmdump_restore::restore(source, &opts, &ui);
    ui.done();
    ui.finish_task(
        result
            .as_ref()
            .map(|_| ())
            .map_err(|e| vmdump_task::one_line(e)),
    );
    match result {
        Ok(summary) => {
            outln!(
                "restored VM {} ({} disk(s)), config {}",
                args.vmid,
                summary.disks.len(),
                summary.config_path.display()
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("restore of VM {} failed", args.vmid))),
    }
}

/// A seekable `.vma.zst` (one with a seek table) is decompressed frame by frame on several
/// threads; anything else, or any archive under a read-rate limit (which applies to the
/// compressed bytes), is read as one stream. Returns the source and, when parallel, the
/// number of frames.
fn seekable_source(
    file: File,
    limited: bool,
) -> anyhow::Result<(Box<dyn Read + Send>, Option<usize>)> {
    let mut head = [0u8; 4];
    let is_zstd = std::os::unix::fs::FileExt::read_at(&file, &mut head, 0).is_ok_and(|n| n == 4)
        && head == vmdump_compress::ZSTD_MAGIC;
    if limited || !is_zstd || !file.metadata().is_ok_and(|m| m.is_file()) {
        return Ok((Box::new(file), None));
    }
    let file = std::sync::Arc::new(file);
    let Some(table) = vmdump_compress::SeekTable::read(&*file).context("read the seek table")?
    else {
        return Ok((
            Box::new(std::sync::Arc::try_unwrap(file).expect("one owner")),
            None,
        ));
    };
    let frames = table.frames().len();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let dec = vmdump_compress::ParallelDecoder::new(file, table, threads)
        .context("start the decompression threads")?;
    Ok((Box::new(dec), Some(frames)))
}

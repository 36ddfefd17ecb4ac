//! `faultfs <backing> <mountpoint> [--write-rate <size>] [--fill-after <size>]
//! [--fill-only <pattern>] [--fail-fsync <pattern>] [--fail-flush <pattern>]`: mounts the test suite's fault-injecting
//! FUSE passthrough ([`vmdump_testkit::FaultFs`]) for a benchmark or by hand, prints `mounted`
//! and runs until SIGINT or SIGTERM, then unmounts. Sizes as in guest configs (`30M`, `1G`,
//! plain bytes); `--write-rate` is bytes per second.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use vmdump_testkit::FaultFs;

const USAGE: &str = "usage: faultfs <backing> <mountpoint> [--write-rate <size>] \
[--fill-after <size> [--fill-only <pattern>]] [--fail-fsync <pattern>] [--fail-flush <pattern>]";

#[derive(Default)]
struct Args {
    dirs: Vec<PathBuf>,
    write_rate: Option<u64>,
    fill_after: Option<u64>,
    fill_only: Option<String>,
    fail_fsync: Option<String>,
    fail_flush: Option<String>,
}

fn size(flag: &str, v: &str) -> Result<u64> {
    vmdump_config::parse_size(v).with_context(|| format!("{flag}: not a size: {v:?}"))
}

fn parse(mut it: impl Iterator<Item = String>) -> Result<Args> {
    let mut a = Args::default();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--write-rate" => a.write_rate = Some(size(&arg, &value()?)?),
            "--fill-after" => a.fill_after = Some(size(&arg, &value()?)?),
            "--fill-only" => a.fill_only = Some(value()?),
            "--fail-fsync" => a.fail_fsync = Some(value()?),
            "--fail-flush" => a.fail_flush = Some(value()?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            s if s.starts_with('-') => bail!("unknown option {s}\n{USAGE}"),
            _ => a.dirs.push(PathBuf::from(arg)),
        }
    }
    if a.fill_only.is_some() && a.fill_after.is_none() {
        bail!("--fill-only needs --fill-after\n{USAGE}");
    }
    if a.dirs.len() != 2 {
        bail!("{USAGE}");
    }
    Ok(a)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = parse(std::env::args().skip(1))?;
    let fs = FaultFs::mount(&args.dirs[0], &args.dirs[1])?;
    let f = fs.faults();
    f.write_rate(args.write_rate);
    match (&args.fill_only, args.fill_after) {
        (Some(pattern), Some(bytes)) => f.fill_after_in(pattern, bytes),
        _ => f.fill_after(args.fill_after),
    }
    f.fail_fsync(args.fail_fsync.as_deref());
    f.fail_flush(args.fail_flush.as_deref());
    println!(
        "mounted {} on {}",
        fs.backing().display(),
        fs.mountpoint().display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    let written = fs.faults().written();
    fs.unmount()?;
    println!("unmounted; {written} bytes written");
    Ok(())
}

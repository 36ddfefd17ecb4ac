//! `vmdump map <archive> [--socket PATH | --listen ADDR]`: serve every disk of an archive
//! read-only over NBD, one export per disk named by its device name, until SIGINT/SIGTERM.
//!
//! Prints one line per export (`<name> <size> <uri>`) and then `serving <n> disk(s) on
//! <addr>`: clients may connect from that line on.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use crate::output::outln;
use anyhow::{bail, Context};
use vmdump_blockdev::{AccessKind, Archive, Size, SourceExport};
use vmdump_nbd::{Server, ServerOptions};

/// Default NBD port.
const NBD_PORT: u16 = 10809;

/// Arguments of `vmdump map`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The archive (`.vma`, `.vma.zst`, `.vma.lzo`, `.vma.gz`).
    archive: PathBuf,
    /// Serve on this unix socket (default: `<run dir>/map-<pid>.sock`).
    #[arg(long, value_name = "PATH", conflicts_with = "listen")]
    socket: Option<PathBuf>,
    /// Serve on TCP at this loopback address (`127.0.0.1:10809`, `[::1]`, `localhost:10810`;
    /// port 10809 when omitted). The exports have no authentication, so only loopback
    /// addresses are accepted.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Directory for the decompressed copy of a compressed archive without a seek table
    /// (default /var/tmp).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

/// Parse `--listen`: an IP or `localhost`, with an optional port; loopback only.
pub fn parse_listen(s: &str) -> anyhow::Result<SocketAddr> {
    let addr = if let Ok(a) = s.parse::<SocketAddr>() {
        a
    } else if let Ok(ip) = s.trim_matches(['[', ']']).parse::<IpAddr>() {
        SocketAddr::new(ip, NBD_PORT)
    } else {
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .with_context(|| format!("bad port in '{s}'"))?,
            ),
            None => (s, NBD_PORT),
        };
        if host != "localhost" {
            bail!(
                "'{s}' is not an address (use an IP address or localhost, with an optional :port)"
            );
        }
        SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port)
    };
    if !addr.ip().is_loopback() {
        bail!(
            "refusing to serve on {addr}: NBD exports have no authentication; listen on a loopback address (127.0.0.1, ::1)"
        );
    }
    Ok(addr)
}

/// Run `vmdump map`.
pub fn run(args: Args, global: &crate::Global) -> anyhow::Result<ExitCode> {
    let listen = args.listen.as_deref().map(parse_listen).transpose()?;
    if args.archive.is_dir() {
        bail!(
            "'{}' is a directory, not an archive",
            args.archive.display()
        );
    }
    let archive = Archive::open(&args.archive, args.cache_dir.as_deref())
        .with_context(|| format!("open archive {}", args.archive.display()))?;
    let disks = archive.disks();
    if disks.is_empty() {
        bail!("archive {} holds no disks", args.archive.display());
    }
    if let AccessKind::Cached { codec } = archive.kind() {
        eprintln!(
            "note: {} is {codec} without a seek table: decompressed into a cache file",
            args.archive.display()
        );
    }
    if let Some(at) = archive.truncated_at() {
        eprintln!(
            "warning: {} is truncated (at offset {at} of the uncompressed stream): the clusters it lost read as I/O errors",
            args.archive.display()
        );
    }
    let mut server = Server::new(ServerOptions::default());
    for d in &disks {
        server.add_export(
            d.name(),
            SourceExport::new(
                Arc::new(d.clone()),
                Some(format!("{} of {}", d.name(), args.archive.display())),
            ),
        );
    }
    let socket = match (&listen, args.socket) {
        (Some(_), _) => None,
        (None, Some(p)) => Some(p),
        (None, None) => {
            let base = global.run_base();
            std::fs::create_dir_all(&base)
                .with_context(|| format!("create run directory {}", base.display()))?;
            Some(base.join(format!("map-{}.sock", std::process::id())))
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(async move {
        let mut handle = match (&socket, listen) {
            (Some(path), _) => server
                .serve_unix(path)
                .await
                .with_context(|| format!("listen on {}", path.display()))?,
            (None, Some(addr)) => server
                .serve_tcp(addr)
                .await
                .with_context(|| format!("listen on {addr}"))?,
            (None, None) => unreachable!("a socket or an address"),
        };
        let at = handle.local_addr().clone();
        for d in &disks {
            let uri = match &at {
                vmdump_nbd::server::ListenAddr::Unix(p) => {
                    format!("nbd+unix:///{}?socket={}", d.name(), p.display())
                }
                vmdump_nbd::server::ListenAddr::Tcp(a) => format!("nbd://{a}/{}", d.name()),
            };
            outln!("{} {} {uri}", d.name(), d.size())?;
        }
        outln!("serving {} disk(s) on {at}", disks.len())?;
        use std::io::Write as _;
        std::io::stdout().flush().ok();
        use tokio::signal::unix::{signal, SignalKind};
        let mut int = signal(SignalKind::interrupt()).context("signal handler")?;
        let mut term = signal(SignalKind::terminate()).context("signal handler")?;
        loop {
            tokio::select! {
                _ = int.recv() => break,
                _ = term.recv() => break,
                ev = handle.next_event() => match ev {
                    Some(ev) => tracing::debug!("nbd: {ev:?}"),
                    None => break,
                },
            }
        }
        handle.shutdown().await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::parse_listen;

    #[test]
    fn listen_takes_loopback_addresses_only() {
        assert_eq!(
            parse_listen("127.0.0.1").unwrap().to_string(),
            "127.0.0.1:10809"
        );
        assert_eq!(
            parse_listen("localhost:10810").unwrap().to_string(),
            "127.0.0.1:10810"
        );
        assert_eq!(parse_listen("[::1]:7").unwrap().to_string(), "[::1]:7");
        assert_eq!(parse_listen("::1").unwrap().to_string(), "[::1]:10809");
        let e = parse_listen("0.0.0.0:10809").unwrap_err().to_string();
        assert!(e.contains("no authentication"), "{e}");
        assert!(parse_listen("example:1").is_err());
        assert!(parse_listen("localhost:x").is_err());
    }
}

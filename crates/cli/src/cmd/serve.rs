//! `vmdump serve` (the REST API and web UI over HTTPS) and `vmdump token` (its API tokens).
//! The server is `vmdump-server`; this is only its command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use vmdump_server::{CertSource, Settings, TokenStore};

use crate::output::outln;

/// Arguments of `vmdump serve`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address and port to listen on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:8006")]
    listen: SocketAddr,
    /// Certificate chain (PEM); default: a self-signed one made on first start in the
    /// server directory.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Private key of --cert (PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Serve plain HTTP instead of HTTPS (only on a loopback address).
    #[arg(long, conflicts_with_all = ["cert", "key"])]
    http: bool,
    /// The server's directory: self-signed certificate and key, audit log.
    #[arg(long, env = "VMDUMP_SERVER_DIR", default_value = vmdump_server::DEFAULT_SERVER_DIR)]
    server_dir: PathBuf,
    /// The scheduler's state directory (last runs of jobs).
    #[arg(long, env = "VMDUMP_STATE_DIR", default_value = vmdump_jobs::state::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

/// Arguments of `vmdump token`.
#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    #[command(subcommand)]
    action: TokenAction,
    /// The server's directory (its audit log records token changes).
    #[arg(long, global = true, env = "VMDUMP_SERVER_DIR", default_value = vmdump_server::DEFAULT_SERVER_DIR)]
    server_dir: PathBuf,
}

#[derive(clap::Subcommand, Debug)]
enum TokenAction {
    /// Make an API token; prints its secret once, as the last line.
    Add {
        /// Token name (a letter, then letters, digits, '_', '.', '-').
        name: String,
        /// The token may list and read, never start, change or delete.
        #[arg(long)]
        read_only: bool,
    },
    /// List the tokens (names and rights; secrets are not kept).
    List,
    /// Remove a token (its sessions end).
    Remove {
        /// Token name.
        name: String,
    },
}

/// Run `vmdump serve`.
pub fn run(args: Args, global: &crate::Global) -> anyhow::Result<ExitCode> {
    let tls = if args.http {
        None
    } else {
        Some(match (args.cert, args.key) {
            (Some(cert), Some(key)) => CertSource::Files { cert, key },
            _ => CertSource::SelfSigned,
        })
    };
    let settings = Settings {
        root: global.config_root(),
        run_dir: global.run_base(),
        state_dir: args.state_dir,
        server_dir: args.server_dir,
        tasks: vmdump_task::TaskDir::from_env(),
        listen: args.listen,
        tls,
    };
    // Few threads: every thread's allocator arena keeps its peak, and the server is mostly
    // idle (listing a storage runs on the blocking pool).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(async move {
        let server = vmdump_server::Server::bind(settings).await?;
        let addr = server.local_addr()?;
        match server.fingerprint() {
            Some(fp) => {
                let _ = outln!("certificate fingerprint (SHA-256): {fp}");
                let _ = outln!("serving https://{addr}/");
            }
            None => {
                let _ = outln!("serving http://{addr}/");
            }
        }
        server
            .run(async {
                let term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
                match term {
                    Ok(mut term) => {
                        tokio::select! {
                            _ = tokio::signal::ctrl_c() => {}
                            _ = term.recv() => {}
                        }
                    }
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                    }
                }
            })
            .await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Run `vmdump token`.
pub fn token(args: TokenArgs, global: &crate::Global) -> anyhow::Result<ExitCode> {
    let root = global.config_root();
    let store = TokenStore::new(root.dir());
    match args.action {
        TokenAction::Add { name, read_only } => {
            let secret = store.add(&name, read_only)?;
            vmdump_server::audit_cli(
                &args.server_dir,
                "token add",
                &format!("{name}{}", if read_only { " (read-only)" } else { "" }),
            );
            outln!(
                "token '{name}' ({}) added; its secret is shown only now:",
                if read_only { "read-only" } else { "read-write" }
            )?;
            outln!("{secret}")?;
        }
        TokenAction::List => {
            let rows: Vec<Vec<String>> = store
                .list()?
                .iter()
                .map(|t| {
                    vec![
                        t.name.clone(),
                        if t.read_only {
                            "read-only"
                        } else {
                            "read-write"
                        }
                        .to_string(),
                        crate::output::local_time(t.created),
                    ]
                })
                .collect();
            crate::output::table(&["name", "rights", "created"], &rows)?;
        }
        TokenAction::Remove { name } => {
            if !store.remove(&name)? {
                bail!("no token named '{name}'");
            }
            vmdump_server::audit_cli(&args.server_dir, "token remove", &name);
            outln!("token '{name}' removed")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

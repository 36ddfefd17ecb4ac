//! The REST API and web UI of vmdump (`vmdump serve`): one HTTPS server in the binary.
//!
//! # Design
//!
//! - **Transport**: hyper (HTTP/1.1) over tokio-rustls, one task per connection, axum for
//!   routing. The certificate is configured or made self-signed on first start
//!   ([`tls`], rcgen). Plain HTTP only when asked, and only on a loopback address.
//! - **API** ([`api`]): versioned JSON under `/api/v1`, described by `/api/v1/openapi.json`.
//!   Handlers only validate, call the libraries and shape JSON: listing, notes, protection,
//!   removal and retention plans are `vmdump-store`'s; jobs and their runs `vmdump-jobs`';
//!   backups the engine's (through a job run); restores `vmdump-restore`'s; guest state
//!   `vmdump-guest`'s and `vmdump-lxc`'s; option values are parsed by `vmdump-config`'s
//!   types, as on the command line.
//! - **Tasks**: every backup, restore and prune runs as a task of the on-disk registry
//!   (`vmdump_task::registry`), shared with the CLI and the scheduler: the API lists them,
//!   answers their state and streams a running task's log as server-sent events by following
//!   its log file, whichever process runs it.
//! - **Security** ([`auth`]): bearer tokens ([`tokens`], hashed in a root-only file) or a
//!   browser session opened with a token (short-lived cookie + CSRF token); read-only tokens
//!   get 403 on every change; failed logins are rate-limited per address; bodies are limited
//!   to [`api::BODY_LIMIT`] (413); every change is written to the [`audit`] log; the UI is
//!   served with a strict content security policy.
//! - **UI** ([`ui`]): plain HTML, JavaScript and CSS compiled into the binary, no build step,
//!   nothing fetched from elsewhere.

#![warn(missing_docs)]

pub mod api;
pub mod audit;
pub mod auth;
mod error;
mod tasks;
pub mod tls;
pub mod tokens;
pub mod ui;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

pub use error::{Error, Result};
pub use tls::CertSource;
pub use tokens::{Token, TokenStore};

/// The OpenAPI description of `/api/v1`, served at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The default server directory (certificate, key, audit log).
pub const DEFAULT_SERVER_DIR: &str = "/var/lib/vmdump/server";

/// What the server serves and where it keeps its files.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The configuration root (storage.cfg, guests, jobs.cfg, tokens.cfg).
    pub root: vmdump_config::ConfigRoot,
    /// Base of the run directories and locks.
    pub run_dir: PathBuf,
    /// The scheduler's state directory (last runs of jobs).
    pub state_dir: PathBuf,
    /// Certificate, key and audit log.
    pub server_dir: PathBuf,
    /// The task registry.
    pub tasks: vmdump_task::TaskDir,
    /// The address to listen on.
    pub listen: SocketAddr,
    /// HTTPS with this certificate, or plain HTTP (`None`; loopback only).
    pub tls: Option<CertSource>,
}

/// The state every handler shares.
pub struct App {
    /// The settings.
    pub settings: Settings,
    /// API tokens.
    pub tokens: TokenStore,
    /// Sessions and the failed-login limit.
    pub auth: auth::Auth,
    /// The audit log.
    pub audit: audit::Audit,
    /// Cancel tokens of the tasks this server runs.
    pub running: Mutex<HashMap<String, vmdump_task::Cancel>>,
    /// Whether cookies get `Secure` (HTTPS).
    pub secure: bool,
}

/// A bound server, ready to run.
pub struct Server {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    fingerprint: Option<String>,
    app: Arc<App>,
}

impl Server {
    /// Checks the settings, loads (or makes) the certificate and binds the address.
    pub async fn bind(settings: Settings) -> Result<Self> {
        if settings.tls.is_none() && !settings.listen.ip().is_loopback() {
            return Err(Error::Invalid(format!(
                "plain HTTP is only served on a loopback address, not on {}",
                settings.listen
            )));
        }
        let (tls, fingerprint) = match &settings.tls {
            Some(src) => {
                let loaded = tls::load(src, &settings.server_dir)?;
                (
                    Some(TlsAcceptor::from(loaded.config)),
                    Some(loaded.fingerprint),
                )
            }
            None => (None, None),
        };
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| Error::Listen {
                    addr: settings.listen,
                    source,
                })?;
        let app = Arc::new(App {
            tokens: TokenStore::new(settings.root.dir()),
            auth: auth::Auth::default(),
            audit: audit::Audit::new(&settings.server_dir),
            running: Mutex::new(HashMap::new()),
            secure: settings.tls.is_some(),
            settings,
        });
        Ok(Server {
            listener,
            tls,
            fingerprint,
            app,
        })
    }

    /// The bound address (the port, when port 0 was asked for).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr().map_err(|source| Error::Listen {
            addr: self.app.settings.listen,
            source,
        })
    }

    /// The certificate's SHA-256 fingerprint (HTTPS only).
    pub fn fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }

    /// Serves until `shutdown` completes.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        let router = api::router(Arc::clone(&self.app));
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, do not spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let router = router.clone();
            let tls = self.tls.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |mut req: hyper::Request<hyper::body::Incoming>| {
                        req.extensions_mut()
                            .insert(axum::extract::ConnectInfo(peer));
                        router.clone().oneshot(req)
                    },
                );
                let http = hyper::server::conn::http1::Builder::new();
                let res = match tls {
                    Some(acceptor) => {
                        let Ok(Ok(s)) =
                            tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                                .await
                        else {
                            return;
                        };
                        http.serve_connection(TokioIo::new(s), svc).await
                    }
                    None => http.serve_connection(TokioIo::new(stream), svc).await,
                };
                if let Err(e) = res {
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
            });
        }
        Ok(())
    }
}

/// Appends an entry for a change made outside the API (`vmdump token add|remove`) to the
/// audit log in `server_dir`.
pub fn audit_cli(server_dir: &std::path::Path, action: &str, detail: &str) {
    audit::Audit::new(server_dir).append(&serde_json::json!({
        "time": chrono::Utc::now().timestamp(),
        "user": "root@cli",
        "action": action,
        "detail": detail,
    }));
}

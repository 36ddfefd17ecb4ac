//! The server's certificate: a configured PEM pair, or a self-signed one made on first start
//! (`<server dir>/cert.pem`, `key.pem` readable by root only) and reused afterwards.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Where the certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// `<server dir>/cert.pem` and `key.pem`, made self-signed when missing.
    SelfSigned,
    /// A configured certificate chain and key (PEM).
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
}

/// A loaded certificate: the TLS acceptor's config and the leaf's SHA-256 fingerprint.
pub struct Loaded {
    /// For `tokio_rustls::TlsAcceptor`.
    pub config: Arc<rustls::ServerConfig>,
    /// `AB:CD:...` of the leaf certificate, for the admin to compare.
    pub fingerprint: String,
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| Error::io("create", path, e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io("write", path, e))
}

/// Makes `cert.pem` and `key.pem` in `dir` unless both exist.
fn ensure_self_signed(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() && h != "localhost" {
            names.push(h.to_string());
        }
    }
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|e| Error::Tls(format!("cannot make a self-signed certificate: {e}")))?;
    let _ = std::fs::remove_file(&key);
    let _ = std::fs::remove_file(&cert);
    write_new(&key, &made.key_pair.serialize_pem(), 0o600)?;
    write_new(&cert, &made.cert.pem(), 0o644)?;
    tracing::info!(cert = %cert.display(), "made a self-signed certificate");
    Ok((cert, key))
}

/// Loads (or first makes) the certificate.
pub fn load(source: &CertSource, server_dir: &Path) -> Result<Loaded> {
    let (cert, key) = match source {
        CertSource::SelfSigned => ensure_self_signed(server_dir)?,
        CertSource::Files { cert, key } => (cert.clone(), key.clone()),
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| Error::Tls(format!("{}: {e}", cert.display())))?;
    let Some(leaf) = chain.first() else {
        return Err(Error::Tls(format!("{}: no certificate", cert.display())));
    };
    let fingerprint = Sha256::digest(leaf.as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let key = PrivateKeyDer::from_pem_file(&key)
        .map_err(|e| Error::Tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Loaded {
        config: Arc::new(config),
        fingerprint,
    })
}

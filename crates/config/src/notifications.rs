//! `notifications.cfg`: where job summaries go, in section-config syntax (a simplified form of
//! Proxmox VE's file of the same name), beside jobs.cfg in the config root.
//!
//! ```text
//! smtp: mail
//!         server smtp.example.com
//!         port 587
//!         mode starttls
//!         username backup
//!         password secret
//!         from-address vmdump@example.com
//!         mailto admin@example.com,ops@example.com
//!
//! sendmail: local
//!         mailto root
//!
//! webhook: chat
//!         url https://hooks.example.com/vmdump
//! ```
//!
//! `mode` is `starttls` (default), `tls` or `insecure`; `port` defaults to 587, 465 and 25
//! for these. Every target can be switched off with `disable 1`. Unlike Proxmox, the SMTP
//! password is kept in this file: make it readable by root only.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::propstring::parse_bool;
use crate::root::ConfigRoot;
use crate::storage::{StorageConfig, StorageEntry};

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpMode {
    /// Plain connection upgraded with STARTTLS (required).
    Starttls,
    /// TLS from the start (SMTPS).
    Tls,
    /// No TLS at all.
    Insecure,
}

/// One notification target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotificationTarget {
    /// An SMTP server.
    Smtp {
        /// Target name.
        name: String,
        /// Host name.
        server: String,
        /// Port.
        port: u16,
        /// TLS mode.
        mode: SmtpMode,
        /// Login, if the server wants one.
        username: Option<String>,
        /// Password for `username`.
        password: Option<String>,
        /// Sender address.
        from: String,
        /// Recipients.
        mailto: Vec<String>,
    },
    /// The local `sendmail` program.
    Sendmail {
        /// Target name.
        name: String,
        /// Sender address.
        from: String,
        /// Recipients.
        mailto: Vec<String>,
    },
    /// An HTTP(S) endpoint receiving the summary as JSON (`POST`).
    Webhook {
        /// Target name.
        name: String,
        /// URL.
        url: String,
    },
}

impl NotificationTarget {
    /// The target's name.
    pub fn name(&self) -> &str {
        match self {
            NotificationTarget::Smtp { name, .. }
            | NotificationTarget::Sendmail { name, .. }
            | NotificationTarget::Webhook { name, .. } => name,
        }
    }
}

/// Default sender when `from-address` is not set.
pub const DEFAULT_FROM: &str = "vmdump@localhost";

fn list(v: &str) -> Vec<String> {
    v.split([',', ' ', ';'])
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn target_from(e: &StorageEntry) -> Result<Option<NotificationTarget>> {
    if e.get("disable")
        .is_some_and(|v| parse_bool(v) == Some(true))
    {
        return Ok(None);
    }
    let name = e.id().to_string();
    let need = |key: &str| {
        e.get(key)
            .map(str::to_string)
            .ok_or_else(|| Error::value(key, format!("target '{}' needs '{key}'", e.id())))
    };
    let from = e.get("from-address").unwrap_or(DEFAULT_FROM).to_string();
    Ok(Some(match e.kind().as_str() {
        "smtp" => {
            let mode = match e.get("mode").unwrap_or("starttls") {
                "starttls" => SmtpMode::Starttls,
                "tls" => SmtpMode::Tls,
                "insecure" => SmtpMode::Insecure,
                other => {
                    return Err(Error::value(
                        "mode",
                        format!("'{other}' is not one of starttls, tls, insecure"),
                    ))
                }
            };
            let port = match e.get("port") {
                Some(p) => p
                    .parse()
                    .map_err(|_| Error::value("port", format!("'{p}' is not a port")))?,
                None => match mode {
                    SmtpMode::Starttls => 587,
                    SmtpMode::Tls => 465,
                    SmtpMode::Insecure => 25,
                },
            };
            NotificationTarget::Smtp {
                name,
                server: need("server")?,
                port,
                mode,
                username: e.get("username").map(str::to_string),
                password: e.get("password").map(str::to_string),
                from,
                mailto: list(&need("mailto")?),
            }
        }
        "sendmail" => NotificationTarget::Sendmail {
            name,
            from,
            mailto: list(&need("mailto")?),
        },
        "webhook" => {
            let url = need("url")?;
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return Err(Error::value(
                    "url",
                    format!("'{url}' is not an http(s) URL"),
                ));
            }
            NotificationTarget::Webhook { name, url }
        }
        other => {
            return Err(Error::value(
                "type",
                format!("unknown notification target type '{other}'"),
            ))
        }
    }))
}

/// Parses notifications.cfg text; returns the enabled targets.
pub fn parse_targets(text: &str, source: &str) -> Result<Vec<NotificationTarget>> {
    let sections = StorageConfig::parse(text, source)?;
    let mut out = Vec::new();
    for e in sections.entries() {
        if let Some(t) = target_from(e).map_err(|err| err.at(source, e.line()))? {
            out.push(t);
        }
    }
    Ok(out)
}

impl ConfigRoot {
    /// `<root>/notifications.cfg`.
    pub fn notifications_cfg_path(&self) -> PathBuf {
        self.dir().join("notifications.cfg")
    }

    /// The enabled notification targets (none when the file is missing).
    pub fn notification_targets(&self) -> Result<Vec<NotificationTarget>> {
        let path = self.notifications_cfg_path();
        load_targets(&path)
    }
}

fn load_targets(path: &Path) -> Result<Vec<NotificationTarget>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = crate::file::read_text(path)?;
    parse_targets(&text, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let text = "smtp: mail\n\tserver smtp.example.com\n\tusername u\n\tpassword p\n\tmailto a@x,b@x\n\nsendmail: local\n\tmailto root\n\nwebhook: hook\n\turl http://127.0.0.1:9/x\n\nwebhook: off\n\turl http://x\n\tdisable 1\n";
        let t = parse_targets(text, "notifications.cfg").expect("valid");
        assert_eq!(t.len(), 3);
        match &t[0] {
            NotificationTarget::Smtp {
                port,
                mode,
                mailto,
                from,
                ..
            } => {
                assert_eq!((*port, *mode), (587, SmtpMode::Starttls));
                assert_eq!(mailto, &["a@x", "b@x"]);
                assert_eq!(from, DEFAULT_FROM);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            parse_targets("smtp: m\n\tmailto a@x\n", "n").is_err(),
            "no server"
        );
        assert!(parse_targets("webhook: w\n\turl ftp://x\n", "n").is_err());
        assert!(parse_targets("pager: p\n\tnumber 1\n", "n").is_err());
    }
}

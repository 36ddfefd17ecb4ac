//! One summary per job run, sent to every configured target: SMTP (STARTTLS, TLS or plain,
//! with optional login), the local `sendmail`, or a webhook receiving JSON.
//!
//! The text follows vzdump's mail (pve-manager `templates/default/vzdump-*.hbs`): subject
//! `vzdump backup status (<host>): backup successful|backup failed: <err>`, a table of guests
//! (VMID, Name, Status, Time, Size, Filename), the total time and size, then the guests'
//! logs with each line prefixed `<vmid>: ` — replaced by a pointer when they exceed 1 MiB.
//! A failed delivery is logged and returned, never propagated: it must not fail a backup.

use std::time::Duration;

use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{Message, SendmailTransport, SmtpTransport, Transport};
use serde::Serialize;
use vmdump_config::notifications::{NotificationTarget, SmtpMode};
use vmdump_engine::{format_hms, format_size};

use crate::error::Error;
use vmdump_task::one_line;

/// Logs longer than this are not sent (vzdump's limit).
pub const LOG_CAP: usize = 1024 * 1024;
/// How long one delivery may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// When to notify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// After every run.
    Always,
    /// Only when a guest failed.
    Failure,
}

impl Policy {
    /// vzdump's `mailnotification` (`always`, the default, or `failure`).
    pub fn from_option(v: Option<&str>) -> Self {
        match v {
            Some("failure") => Policy::Failure,
            _ => Policy::Always,
        }
    }
}

/// One guest's line in the summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestLine {
    /// Guest id.
    pub vmid: u32,
    /// Guest name (`VM <vmid>` when it has none).
    pub name: String,
    /// `ok` or `err`.
    pub status: &'static str,
    /// Error message of a failed guest.
    pub error: Option<String>,
    /// Duration in seconds.
    pub time: u64,
    /// Archive size in bytes.
    pub size: u64,
    /// The archive.
    pub filename: Option<String>,
    /// The guest's task-log lines.
    #[serde(skip)]
    pub log: Vec<String>,
}

/// The summary of one job run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// This host.
    pub hostname: String,
    /// Scheduled job id (none for a plain `vmdump backup`).
    #[serde(rename = "job-id")]
    pub job_id: Option<String>,
    /// `info` when every guest succeeded, else `error` (the notification severity).
    pub severity: &'static str,
    /// Guests in run order.
    pub guests: Vec<GuestLine>,
    /// Total wall time in seconds.
    pub total_time: u64,
    /// Sum of the archive sizes.
    pub total_size: u64,
    /// A job-level error (lock, configuration), if the job died before or between guests.
    pub job_error: Option<String>,
}

impl Summary {
    /// Whether everything succeeded.
    pub fn ok(&self) -> bool {
        self.job_error.is_none() && self.guests.iter().all(|g| g.status == "ok")
    }

    /// vzdump's subject line.
    pub fn subject(&self) -> String {
        if self.ok() {
            format!(
                "vzdump backup status ({}): backup successful",
                self.hostname
            )
        } else {
            let err = self.job_error.as_deref().unwrap_or("job errors");
            format!(
                "vzdump backup status ({}): backup failed: {err}",
                self.hostname
            )
        }
    }

    /// The mail body: table, totals, logs (capped).
    pub fn body(&self) -> String {
        let mut rows = vec![[
            "VMID".to_string(),
            "Name".into(),
            "Status".into(),
            "Time".into(),
            "Size".into(),
            "Filename".into(),
        ]];
        for g in &self.guests {
            rows.push([
                g.vmid.to_string(),
                g.name.clone(),
                g.status.to_string(),
                format_hms(Duration::from_secs(g.time)),
                if g.status == "ok" {
                    format_size(g.size)
                } else {
                    "0".into()
                },
                g.filename
                    .clone()
                    .or_else(|| g.error.clone())
                    .unwrap_or_default(),
            ]);
        }
        let mut widths = [0usize; 6];
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in &rows {
            let cells: Vec<String> = r
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&format!(
            "Total running time: {}\nTotal size: {}\n",
            format_hms(Duration::from_secs(self.total_time)),
            format_size(self.total_size)
        ));
        if let Some(e) = &self.job_error {
            out.push_str(&format!("\nJob error: {e}\n"));
        }
        out.push_str("\nLogs:\n\n");
        let mut logs = String::new();
        for g in &self.guests {
            for line in &g.log {
                logs.push_str(&format!("{}: {line}\n", g.vmid));
            }
            logs.push('\n');
        }
        if logs.len() > LOG_CAP {
            out.push_str(
                "Log output was too long to be sent. See the .log files beside the archives.\n",
            );
        } else {
            out.push_str(&logs);
        }
        out
    }
}

/// The result of one delivery.
#[derive(Debug)]
pub struct Delivery {
    /// Target name.
    pub target: String,
    /// Delivered, or why not.
    pub result: Result<(), Error>,
}

/// Sends `summary` to every target if `policy` says so. Failures are logged (warn) and
/// returned; nothing here fails the job.
pub fn deliver(targets: &[NotificationTarget], summary: &Summary, policy: Policy) -> Vec<Delivery> {
    if policy == Policy::Failure && summary.ok() {
        return Vec::new();
    }
    targets
        .iter()
        .map(|t| {
            let result = send(t, summary).map_err(|msg| Error::Notify {
                target: t.name().to_string(),
                msg,
            });
            match &result {
                Ok(()) => tracing::info!(target = t.name(), "notification sent"),
                Err(e) => tracing::warn!(error = %e, "notification not delivered"),
            }
            Delivery {
                target: t.name().to_string(),
                result,
            }
        })
        .collect()
}

fn send(target: &NotificationTarget, summary: &Summary) -> Result<(), String> {
    match target {
        NotificationTarget::Smtp {
            server,
            port,
            mode,
            username,
            password,
            from,
            mailto,
            ..
        } => {
            let msg = message(from, mailto, summary)?;
            let tls = match mode {
                SmtpMode::Insecure => Tls::None,
                SmtpMode::Starttls => Tls::Required(tls_params(server)?),
                SmtpMode::Tls => Tls::Wrapper(tls_params(server)?),
            };
            let mut b = SmtpTransport::builder_dangerous(server.as_str())
                .port(*port)
                .tls(tls)
                .timeout(Some(TIMEOUT));
            if let Some(user) = username {
                b = b.credentials(Credentials::new(
                    user.clone(),
                    password.clone().unwrap_or_default(),
                ));
            }
            b.build().send(&msg).map(|_| ()).map_err(|e| one_line(&e))
        }
        NotificationTarget::Sendmail { from, mailto, .. } => {
            let msg = message(from, mailto, summary)?;
            SendmailTransport::new()
                .send(&msg)
                .map_err(|e| one_line(&e))
        }
        NotificationTarget::Webhook { url, .. } => {
            let payload = Webhook {
                title: summary.subject(),
                message: summary.body(),
                summary,
            };
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(TIMEOUT))
                .build()
                .into();
            agent
                .post(url.as_str())
                .send_json(&payload)
                .map(|_| ())
                .map_err(|e| one_line(&e))
        }
    }
}

/// What a webhook receives.
#[derive(Serialize)]
struct Webhook<'a> {
    title: String,
    message: String,
    #[serde(flatten)]
    summary: &'a Summary,
}

fn tls_params(server: &str) -> Result<TlsParameters, String> {
    TlsParameters::new(server.to_string()).map_err(|e| one_line(&e))
}

fn message(from: &str, mailto: &[String], summary: &Summary) -> Result<Message, String> {
    let from: Mailbox = from.parse().map_err(|e| format!("sender '{from}': {e}"))?;
    let mut b = Message::builder()
        .from(from)
        .subject(summary.subject())
        .header(ContentType::TEXT_PLAIN);
    for to in mailto {
        let to = if to.contains('@') {
            to.clone()
        } else {
            // A local user, as vzdump's mailto allows.
            format!("{to}@localhost")
        };
        b = b.to(to
            .parse::<Mailbox>()
            .map_err(|e| format!("recipient '{to}': {e}"))?);
    }
    b.body(summary.body()).map_err(|e| e.to_string())
}

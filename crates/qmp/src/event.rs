//! Asynchronous QMP events and subscriptions to them.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::error::{Error, Result};

/// Names of the events the backup and the VM runtime wait for.
pub mod name {
    /// A job changed status (`data: {id, status}`).
    pub const JOB_STATUS_CHANGE: &str = "JOB_STATUS_CHANGE";
    /// A block job finished, successfully or with `data.error`.
    pub const BLOCK_JOB_COMPLETED: &str = "BLOCK_JOB_COMPLETED";
    /// A block job was cancelled.
    pub const BLOCK_JOB_CANCELLED: &str = "BLOCK_JOB_CANCELLED";
    /// A block job hit an I/O error (`data.operation`, `data.action`).
    pub const BLOCK_JOB_ERROR: &str = "BLOCK_JOB_ERROR";
    /// A block job waits for `job-finalize` (auto-finalize off).
    pub const BLOCK_JOB_PENDING: &str = "BLOCK_JOB_PENDING";
    /// A mirror-style job is ready to complete.
    pub const BLOCK_JOB_READY: &str = "BLOCK_JOB_READY";
    /// The VM shut down (`data.guest`, `data.reason`).
    pub const SHUTDOWN: &str = "SHUTDOWN";
    /// The VM was paused.
    pub const STOP: &str = "STOP";
    /// The VM runs again.
    pub const RESUME: &str = "RESUME";
    /// `system_powerdown` pressed the ACPI power button.
    pub const POWERDOWN: &str = "POWERDOWN";
    /// A block export is gone (`data.id`).
    pub const BLOCK_EXPORT_DELETED: &str = "BLOCK_EXPORT_DELETED";
}

/// One QMP event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Event name, e.g. `BLOCK_JOB_COMPLETED` (see [`name`]).
    pub name: String,
    /// The `data` member (`Value::Null` when absent).
    pub data: Value,
    /// QEMU's timestamp: seconds and microseconds since the epoch.
    pub timestamp: (i64, i64),
}

impl Event {
    /// Builds an event from a decoded message, `None` if it is not an event.
    pub fn from_message(msg: &Value) -> Option<Self> {
        let name = msg.get("event")?.as_str()?.to_string();
        let ts = msg.get("timestamp");
        let part = |k: &str| {
            ts.and_then(|t| t.get(k))
                .and_then(Value::as_i64)
                .unwrap_or(0)
        };
        Some(Self {
            name,
            data: msg.get("data").cloned().unwrap_or(Value::Null),
            timestamp: (part("seconds"), part("microseconds")),
        })
    }

    /// Whether the event has this name.
    pub fn is(&self, name: &str) -> bool {
        self.name == name
    }

    /// A string member of `data`.
    pub fn data_str(&self, key: &str) -> Option<&str> {
        self.data.get(key).and_then(Value::as_str)
    }

    /// The job the event is about: `data.id` (job events) or `data.device` (block job events).
    pub fn job_id(&self) -> Option<&str> {
        self.data_str("id").or_else(|| self.data_str("device"))
    }

    /// For `JOB_STATUS_CHANGE`: the job id and its new status (`running`, `pending`, ...).
    pub fn job_status(&self) -> Option<(&str, &str)> {
        if !self.is(name::JOB_STATUS_CHANGE) {
            return None;
        }
        Some((self.data_str("id")?, self.data_str("status")?))
    }

    /// The `data.error` message of a `BLOCK_JOB_COMPLETED` that failed (e.g. after a target
    /// I/O error); `None` for a successful completion.
    pub fn job_error(&self) -> Option<&str> {
        self.data_str("error")
    }

    /// Deserialises `data` into a caller type.
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.data.clone()).map_err(|e| Error::Protocol {
            peer: "qmp",
            detail: format!("event {} data: {e}", self.name),
        })
    }
}

/// A subscription to the events of one [`crate::Client`], from the moment it was created.
///
/// Subscribe **before** sending the command whose events you want: QEMU may emit them before
/// its reply (for example `POWERDOWN` arrives ahead of `system_powerdown`'s return).
#[derive(Debug)]
pub struct Events {
    rx: broadcast::Receiver<Event>,
}

impl Events {
    pub(crate) fn new(rx: broadcast::Receiver<Event>) -> Self {
        Self { rx }
    }

    /// The next event; [`Error::Closed`] once the connection is gone and all events are read.
    pub async fn next(&mut self) -> Result<Event> {
        loop {
            match self.rx.recv().await {
                Ok(ev) => return Ok(ev),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "qmp event subscriber lagged, events lost");
                }
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(Error::Closed { peer: "qmp" })
                }
            }
        }
    }

    /// An event already received, without waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        loop {
            match self.rx.try_recv() {
                Ok(ev) => return Some(ev),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "qmp event subscriber lagged, events lost");
                }
                Err(_) => return None,
            }
        }
    }

    /// Waits for the first event matching `pred`, skipping others, for at most `timeout`.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> Result<Event> {
        let wait = async {
            loop {
                let ev = self.next().await?;
                if pred(&ev) {
                    return Ok(ev);
                }
                tracing::trace!(event = %ev.name, "skipped while waiting");
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| Error::Timeout {
                what: "waiting for a qmp event".into(),
                after: timeout,
            })?
    }

    /// Waits for the next event named `name` for at most `timeout`.
    pub async fn wait_named(&mut self, name: &str, timeout: Duration) -> Result<Event> {
        self.wait_for(timeout, |e| e.is(name))
            .await
            .map_err(|e| match e {
                Error::Timeout { after, .. } => Error::Timeout {
                    what: format!("waiting for event {name}"),
                    after,
                },
                other => other,
            })
    }
}

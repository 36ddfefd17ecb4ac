//! The VM as a whole: `stop`, `cont`, `query-status`, `system_powerdown`, `quit`,
//! `human-monitor-command`.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::expect_empty;
use crate::client::parse_return;
use crate::error::{Error, Result};
use crate::Client;

/// QEMU's run state (`query-status`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum RunState {
    /// Started with `-S`, never ran.
    Prelaunch,
    /// Running.
    Running,
    /// Stopped by `stop`.
    Paused,
    /// The guest powered off and QEMU runs with `-no-shutdown`.
    Shutdown,
    /// Paused on an I/O error (`werror=stop`).
    IoError,
    /// Incoming migration pending.
    Inmigrate,
    /// Suspended to RAM by the guest.
    Suspended,
    /// Internal error.
    InternalError,
    /// Guest panicked.
    GuestPanicked,
    /// Any other state QEMU may report.
    #[serde(other)]
    Other,
}

/// `query-status` result.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StatusInfo {
    /// The run state.
    pub status: RunState,
    /// Whether guest CPUs run.
    pub running: bool,
    /// Everything else QEMU reported.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl Client {
    /// `stop`: pause the guest (event `STOP`).
    pub async fn stop(&self) -> Result<()> {
        let ret = self.execute("stop", None).await?;
        expect_empty("stop", &ret);
        Ok(())
    }

    /// `cont`: resume (event `RESUME`); also leaves `prelaunch`.
    pub async fn cont(&self) -> Result<()> {
        let ret = self.execute("cont", None).await?;
        expect_empty("cont", &ret);
        Ok(())
    }

    /// `query-status`.
    pub async fn query_status(&self) -> Result<StatusInfo> {
        let ret = self.execute("query-status", None).await?;
        parse_return("query-status", ret)
    }

    /// `system_powerdown`: press the ACPI power button (event `POWERDOWN`). A guest without
    /// ACPI handling ignores it; callers need a deadline and a fallback.
    pub async fn system_powerdown(&self) -> Result<()> {
        let ret = self.execute("system_powerdown", None).await?;
        expect_empty("system_powerdown", &ret);
        Ok(())
    }

    /// `quit`: QEMU exits. A connection closing before the reply counts as success.
    pub async fn quit(&self) -> Result<()> {
        match self.execute("quit", None).await {
            Ok(_) | Err(Error::Closed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `human-monitor-command`: runs an HMP command line and returns its output.
    pub async fn human_monitor_command(&self, command_line: &str) -> Result<String> {
        let ret = self
            .execute(
                "human-monitor-command",
                Some(json!({"command-line": command_line})),
            )
            .await?;
        parse_return("human-monitor-command", ret)
    }
}

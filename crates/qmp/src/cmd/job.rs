//! Jobs: `job-finalize/dismiss/cancel`, `block-job-cancel/set-speed`, `query-block-jobs`,
//! `query-jobs`.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::expect_empty;
use crate::client::parse_return;
use crate::error::Result;
use crate::Client;

/// A block job as `query-block-jobs` reports it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockJobInfo {
    /// The job id.
    pub device: String,
    /// Job type (`backup`, `mirror`, ...).
    #[serde(rename = "type")]
    pub job_type: String,
    /// Bytes to process (for incremental jobs: dirty bytes).
    #[serde(default)]
    pub len: u64,
    /// Bytes processed.
    #[serde(default)]
    pub offset: u64,
    /// Rate limit in bytes per second, 0 = none.
    #[serde(default)]
    pub speed: u64,
    /// Job status (`running`, `pending`, `concluded`, ...).
    #[serde(default)]
    pub status: String,
    /// Error of a concluded job, e.g. `Operation canceled`.
    pub error: Option<String>,
    /// Everything else QEMU reported.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// A job as `query-jobs` reports it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct JobInfo {
    /// Job id.
    pub id: String,
    /// Job type.
    #[serde(rename = "type")]
    pub job_type: String,
    /// Status.
    pub status: String,
    /// Progress so far.
    #[serde(default)]
    pub current_progress: u64,
    /// Estimated total.
    #[serde(default)]
    pub total_progress: u64,
    /// Error of a concluded job.
    pub error: Option<String>,
    /// Everything else QEMU reported.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl Client {
    async fn job_cmd(&self, command: &str, args: Value) -> Result<()> {
        let ret = self.execute(command, Some(args)).await?;
        expect_empty(command, &ret);
        Ok(())
    }

    /// `job-finalize` (for a grouped transaction this finalizes every job of the group).
    pub async fn job_finalize(&self, id: &str) -> Result<()> {
        self.job_cmd("job-finalize", json!({"id": id})).await
    }

    /// `job-dismiss` of a concluded job.
    pub async fn job_dismiss(&self, id: &str) -> Result<()> {
        self.job_cmd("job-dismiss", json!({"id": id})).await
    }

    /// `job-cancel`.
    pub async fn job_cancel(&self, id: &str) -> Result<()> {
        self.job_cmd("job-cancel", json!({"id": id})).await
    }

    /// `block-job-cancel`; returns at once, `BLOCK_JOB_CANCELLED` follows.
    pub async fn block_job_cancel(&self, device: &str, force: bool) -> Result<()> {
        self.job_cmd(
            "block-job-cancel",
            json!({"device": device, "force": force}),
        )
        .await
    }

    /// `block-job-set-speed` (0 = unlimited).
    pub async fn block_job_set_speed(&self, device: &str, speed: u64) -> Result<()> {
        self.job_cmd(
            "block-job-set-speed",
            json!({"device": device, "speed": speed}),
        )
        .await
    }

    /// `query-block-jobs`.
    pub async fn query_block_jobs(&self) -> Result<Vec<BlockJobInfo>> {
        let ret = self.execute("query-block-jobs", None).await?;
        parse_return("query-block-jobs", ret)
    }

    /// `query-jobs`.
    pub async fn query_jobs(&self) -> Result<Vec<JobInfo>> {
        let ret = self.execute("query-jobs", None).await?;
        parse_return("query-jobs", ret)
    }
}

//! `blockdev-mirror` and `job-complete`: live-restore moves a running guest's disk from a
//! temporary overlay onto its volume (the mirror copies, `job-complete` pivots the device).

use serde::Serialize;
use serde_json::json;

use super::block::SyncMode;
use super::{args, expect_empty};
use crate::error::Result;
use crate::Client;

/// `copy-mode` of `blockdev-mirror`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CopyMode {
    /// Guest writes are copied later from the dirty bitmap (QEMU's default).
    Background,
    /// Guest writes reach the target synchronously, before they complete ("active" mirror).
    WriteBlocking,
}

/// Arguments of `blockdev-mirror`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevMirror {
    /// Job id.
    pub job_id: String,
    /// Source node name (the node the guest device uses).
    pub device: String,
    /// Target node name (same size; no parent).
    pub target: String,
    /// What to copy (`full`: the whole backing chain).
    pub sync: SyncMode,
    /// How guest writes reach the target while the job runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_mode: Option<CopyMode>,
    /// Rate limit in bytes per second (0 or none: unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed: Option<u64>,
    /// `report`, `ignore`, `enospc`, `stop`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_source_error: Option<String>,
    /// `report`, `ignore`, `enospc`, `stop`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_target_error: Option<String>,
    /// `false` keeps the concluded job (and its error) until `job-dismiss`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_dismiss: Option<bool>,
}

impl BlockdevMirror {
    /// A job with QEMU's defaults for everything optional.
    pub fn new(
        job_id: impl Into<String>,
        device: impl Into<String>,
        target: impl Into<String>,
        sync: SyncMode,
    ) -> Self {
        Self {
            job_id: job_id.into(),
            device: device.into(),
            target: target.into(),
            sync,
            copy_mode: None,
            speed: None,
            on_source_error: None,
            on_target_error: None,
            auto_dismiss: None,
        }
    }
}

impl Client {
    /// Starts a `blockdev-mirror` job; it reaches `ready` once the target caught up.
    pub async fn blockdev_mirror(&self, mirror: &BlockdevMirror) -> Result<()> {
        let ret = self
            .execute("blockdev-mirror", args("blockdev-mirror", mirror)?)
            .await?;
        expect_empty("blockdev-mirror", &ret);
        Ok(())
    }

    /// `job-complete` of a ready job (a mirror pivots the device onto its target).
    pub async fn job_complete(&self, id: &str) -> Result<()> {
        let ret = self
            .execute("job-complete", Some(json!({"id": id})))
            .await?;
        expect_empty("job-complete", &ret);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_arguments_use_qemu_names() {
        let mut m = BlockdevMirror::new("j", "src", "tgt", SyncMode::Full);
        m.copy_mode = Some(CopyMode::WriteBlocking);
        m.auto_dismiss = Some(false);
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(
            v,
            json!({"job-id": "j", "device": "src", "target": "tgt", "sync": "full",
                   "copy-mode": "write-blocking", "auto-dismiss": false})
        );
    }
}

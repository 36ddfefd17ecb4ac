//! `transaction`: several actions at one point in time.

use serde::Serialize;
use serde_json::json;

use super::bitmap::{BitmapAdd, BitmapMerge, BitmapRef};
use super::block::BlockdevBackup;
use super::expect_empty;
use crate::error::{Error, Result};
use crate::Client;

/// One transaction action (`{"type": ..., "data": ...}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "data", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Action {
    /// Start a backup job.
    BlockdevBackup(BlockdevBackup),
    /// Create a dirty bitmap.
    #[serde(rename = "block-dirty-bitmap-add")]
    BitmapAdd(BitmapAdd),
    /// Delete a dirty bitmap.
    #[serde(rename = "block-dirty-bitmap-remove")]
    BitmapRemove(BitmapRef),
    /// Merge bitmaps (never with an empty source list).
    #[serde(rename = "block-dirty-bitmap-merge")]
    BitmapMerge(BitmapMerge),
    /// Clear a bitmap.
    #[serde(rename = "block-dirty-bitmap-clear")]
    BitmapClear(BitmapRef),
    /// Start recording.
    #[serde(rename = "block-dirty-bitmap-enable")]
    BitmapEnable(BitmapRef),
    /// Stop recording.
    #[serde(rename = "block-dirty-bitmap-disable")]
    BitmapDisable(BitmapRef),
}

/// `completion-mode` of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CompletionMode {
    /// Each job completes on its own (QEMU's default).
    Individual,
    /// The jobs succeed or fail together; with `auto-finalize: false` one `job-finalize`
    /// finalizes all of them. QEMU 7.2 accepts only job actions (`blockdev-backup`) with it:
    /// bitmap actions make the whole transaction fail.
    Grouped,
}

impl Client {
    /// Runs `actions` atomically. Refused without sending when the list is empty or a merge
    /// has no sources.
    pub async fn transaction(
        &self,
        actions: &[Action],
        completion: Option<CompletionMode>,
    ) -> Result<()> {
        const CMD: &str = "transaction";
        if actions.is_empty() {
            return Err(Error::Refused {
                command: CMD.into(),
                reason: "no actions",
            });
        }
        for action in actions {
            if let Action::BitmapMerge(m) = action {
                m.check()?;
            }
        }
        let mut args = json!({"actions": actions});
        if let Some(mode) = completion {
            args["properties"] = json!({"completion-mode": mode});
        }
        let ret = self.execute(CMD, Some(args)).await?;
        expect_empty(CMD, &ret);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::block::SyncMode;

    #[test]
    fn actions_serialise_like_qapi() {
        let mut b = BlockdevBackup::new("bka", "da", "ta", SyncMode::Full);
        b.auto_finalize = Some(false);
        let v = serde_json::to_value([
            Action::BlockdevBackup(b),
            Action::BitmapMerge(BitmapMerge::new("disk0", "bk-tmp", &["bm0"])),
        ])
        .expect("serialise");
        assert_eq!(
            v,
            json!([
                {"type": "blockdev-backup", "data": {"job-id": "bka", "device": "da", "target": "ta", "sync": "full", "auto-finalize": false}},
                {"type": "block-dirty-bitmap-merge", "data": {"node": "disk0", "target": "bk-tmp", "bitmaps": ["bm0"]}}
            ])
        );
    }
}

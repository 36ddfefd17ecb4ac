//! Block graph: `blockdev-add/del`, `blockdev-backup`, `query-block`,
//! `query-named-block-nodes`, `qom-set`.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::bitmap::DirtyBitmapInfo;
use super::{args, expect_empty};
use crate::client::parse_return;
use crate::error::Result;
use crate::Client;

/// `sync` mode of `blockdev-backup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Copy the whole disk.
    Full,
    /// Copy only the top image's allocated clusters.
    Top,
    /// Copy nothing by itself; only copy-before-write (classic fleecing).
    None,
    /// Copy the clusters dirty in `bitmap`, then apply `bitmap-mode`.
    Incremental,
    /// Copy the clusters dirty in `bitmap`.
    Bitmap,
}

/// `bitmap-mode` of `blockdev-backup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BitmapSyncMode {
    /// Clear the bitmap when the job succeeds (the default for `incremental`).
    OnSuccess,
    /// Never clear it.
    Never,
    /// Always clear the copied clusters.
    Always,
}

/// Unstable performance knobs (`x-perf`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct BackupPerf {
    /// Use copy_range (offload).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_copy_range: Option<bool>,
    /// Parallel copy workers (default 64).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_workers: Option<u32>,
    /// Largest request in bytes; 65536 works around the 7.2 hbitmap bug in the hybrid layout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_chunk: Option<u64>,
}

/// Arguments of `blockdev-backup` (also usable as a transaction action).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevBackup {
    /// Job id (the `device` of the block-job events).
    pub job_id: String,
    /// Source node name.
    pub device: String,
    /// Target node name (same size as the source).
    pub target: String,
    /// What to copy.
    pub sync: SyncMode,
    /// Rate limit in bytes per second (zeroes count too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed: Option<u64>,
    /// Dirty bitmap for `incremental` / `bitmap`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bitmap: Option<String>,
    /// What happens to `bitmap` at the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bitmap_mode: Option<BitmapSyncMode>,
    /// Compress the target (qcow2 targets only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compress: Option<bool>,
    /// `report`, `ignore`, `enospc`, `stop`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_source_error: Option<String>,
    /// `report`, `ignore`, `enospc`, `stop`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_target_error: Option<String>,
    /// `false` makes the job wait in `pending` for `job-finalize`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_finalize: Option<bool>,
    /// `false` keeps the concluded job until `job-dismiss`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_dismiss: Option<bool>,
    /// Node name of the copy-before-write filter the job inserts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter_node_name: Option<String>,
    /// Unstable performance knobs.
    #[serde(rename = "x-perf", skip_serializing_if = "Option::is_none")]
    pub x_perf: Option<BackupPerf>,
}

impl BlockdevBackup {
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
            speed: None,
            bitmap: None,
            bitmap_mode: None,
            compress: None,
            on_source_error: None,
            on_target_error: None,
            auto_finalize: None,
            auto_dismiss: None,
            filter_node_name: None,
            x_perf: None,
        }
    }
}

/// Image information of a block node.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ImageInfo {
    /// Image file name.
    #[serde(default)]
    pub filename: String,
    /// Format (`raw`, `qcow2`, ...).
    #[serde(default)]
    pub format: String,
    /// Guest-visible size in bytes.
    #[serde(default)]
    pub virtual_size: u64,
    /// Everything else QEMU reported.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// A block node (`query-named-block-nodes`, or `inserted` of `query-block`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockDeviceInfo {
    /// Node name (auto-generated ones start with `#block`).
    #[serde(default)]
    pub node_name: String,
    /// Driver (`qcow2`, `raw`, `file`, `copy-before-write`, ...).
    #[serde(default)]
    pub drv: String,
    /// File name or JSON description.
    #[serde(default)]
    pub file: String,
    /// Read-only.
    #[serde(default)]
    pub ro: bool,
    /// Image details.
    pub image: Option<ImageInfo>,
    /// Nodes below this one that provide data (backing files and filtered children); `None`
    /// when QEMU did not say.
    #[serde(default, rename = "backing_file_depth")]
    pub backing_file_depth: Option<u64>,
    /// Dirty bitmaps on this node.
    #[serde(default)]
    pub dirty_bitmaps: Vec<DirtyBitmapInfo>,
    /// Everything else QEMU reported.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// A block backend (`query-block`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockInfo {
    /// Backend name (empty for `-blockdev` + `-device`).
    #[serde(default)]
    pub device: String,
    /// QOM path of the device, e.g. `/machine/peripheral/vda/virtio-backend`.
    pub qdev: Option<String>,
    /// The root node, if a medium is inserted.
    pub inserted: Option<BlockDeviceInfo>,
    /// Everything else QEMU reported.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl Client {
    /// `blockdev-add` with driver-specific options, e.g.
    /// `json!({"driver": "qcow2", "node-name": "fl0", "file": {...}})`.
    pub async fn blockdev_add(&self, options: Value) -> Result<()> {
        let ret = self.execute("blockdev-add", Some(options)).await?;
        expect_empty("blockdev-add", &ret);
        Ok(())
    }

    /// `blockdev-del` of a node nobody uses any more.
    pub async fn blockdev_del(&self, node_name: &str) -> Result<()> {
        let ret = self
            .execute("blockdev-del", Some(json!({"node-name": node_name})))
            .await?;
        expect_empty("blockdev-del", &ret);
        Ok(())
    }

    /// Starts a `blockdev-backup` job; completion is reported by events.
    pub async fn blockdev_backup(&self, backup: &BlockdevBackup) -> Result<()> {
        let ret = self
            .execute("blockdev-backup", args("blockdev-backup", backup)?)
            .await?;
        expect_empty("blockdev-backup", &ret);
        Ok(())
    }

    /// `query-block`: the guest's block backends.
    pub async fn query_block(&self) -> Result<Vec<BlockInfo>> {
        let ret = self.execute("query-block", None).await?;
        parse_return("query-block", ret)
    }

    /// `query-named-block-nodes` (with `flat: true`: every node once).
    pub async fn query_named_block_nodes(&self) -> Result<Vec<BlockDeviceInfo>> {
        let ret = self
            .execute("query-named-block-nodes", Some(json!({"flat": true})))
            .await?;
        parse_return("query-named-block-nodes", ret)
    }

    /// `qom-set`, e.g. pointing a device's `drive` at a cbw filter node.
    pub async fn qom_set(&self, path: &str, property: &str, value: Value) -> Result<()> {
        let ret = self
            .execute(
                "qom-set",
                Some(json!({"path": path, "property": property, "value": value})),
            )
            .await?;
        expect_empty("qom-set", &ret);
        Ok(())
    }
}

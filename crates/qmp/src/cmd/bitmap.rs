//! Dirty bitmaps: `block-dirty-bitmap-add/remove/merge/clear`.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{args, expect_empty};
use crate::error::{Error, Result};
use crate::Client;

/// Arguments of `block-dirty-bitmap-add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct BitmapAdd {
    /// Node the bitmap tracks.
    pub node: String,
    /// Bitmap name.
    pub name: String,
    /// Bytes per bit (power of two, default chosen by QEMU: the cluster size).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub granularity: Option<u64>,
    /// Store in the qcow2 image on clean close (fails on raw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistent: Option<bool>,
    /// Created disabled: it records nothing until enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
}

impl BitmapAdd {
    /// A recording, non-persistent bitmap with QEMU's default granularity.
    pub fn new(node: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            name: name.into(),
            granularity: None,
            persistent: None,
            disabled: None,
        }
    }
}

/// A bitmap addressed by node and name (`remove`, `clear`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BitmapRef {
    /// Node name.
    pub node: String,
    /// Bitmap name.
    pub name: String,
}

impl BitmapRef {
    /// `name` on `node`.
    pub fn new(node: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            name: name.into(),
        }
    }
}

/// A merge source or export bitmap: a name on the same node, or node + name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum BitmapSource {
    /// A bitmap on the target's node (or found through filters and backing files).
    Name(String),
    /// A bitmap on an explicit node.
    Node {
        /// Node name.
        node: String,
        /// Bitmap name.
        name: String,
    },
}

/// Arguments of `block-dirty-bitmap-merge`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BitmapMerge {
    /// Node of the target bitmap.
    pub node: String,
    /// Target bitmap name.
    pub target: String,
    /// Sources; never empty (an empty list crashes QEMU 7.2).
    pub bitmaps: Vec<BitmapSource>,
}

impl BitmapMerge {
    /// Merge `sources` (bitmap names on `node`) into `target`.
    pub fn new(node: impl Into<String>, target: impl Into<String>, sources: &[&str]) -> Self {
        Self {
            node: node.into(),
            target: target.into(),
            bitmaps: sources
                .iter()
                .map(|s| BitmapSource::Name((*s).to_string()))
                .collect(),
        }
    }

    /// Rejects the empty source list that makes QEMU 7.2 segfault.
    pub(crate) fn check(&self) -> Result<()> {
        if self.bitmaps.is_empty() {
            return Err(Error::Refused {
                command: "block-dirty-bitmap-merge".into(),
                reason: "empty source list (QEMU 7.2 segfaults on it)",
            });
        }
        Ok(())
    }
}

/// A dirty bitmap as `query-named-block-nodes` / `query-block` report it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DirtyBitmapInfo {
    /// Name (absent for anonymous bitmaps of running jobs).
    pub name: Option<String>,
    /// Dirty bytes.
    #[serde(default)]
    pub count: u64,
    /// Bytes per bit.
    #[serde(default)]
    pub granularity: u64,
    /// Records writes.
    #[serde(default)]
    pub recording: bool,
    /// In use by a job.
    #[serde(default)]
    pub busy: bool,
    /// Stored in the image.
    #[serde(default)]
    pub persistent: bool,
    /// Left over from an unclean shutdown: only removal works.
    #[serde(default)]
    pub inconsistent: bool,
    /// Everything else QEMU reported.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl Client {
    /// `block-dirty-bitmap-add`.
    pub async fn block_dirty_bitmap_add(&self, bitmap: &BitmapAdd) -> Result<()> {
        const CMD: &str = "block-dirty-bitmap-add";
        let ret = self.execute(CMD, args(CMD, bitmap)?).await?;
        expect_empty(CMD, &ret);
        Ok(())
    }

    /// `block-dirty-bitmap-remove`.
    pub async fn block_dirty_bitmap_remove(&self, node: &str, name: &str) -> Result<()> {
        const CMD: &str = "block-dirty-bitmap-remove";
        let ret = self
            .execute(CMD, Some(json!({"node": node, "name": name})))
            .await?;
        expect_empty(CMD, &ret);
        Ok(())
    }

    /// `block-dirty-bitmap-merge`; an empty source list is refused without sending anything.
    pub async fn block_dirty_bitmap_merge(&self, merge: &BitmapMerge) -> Result<()> {
        const CMD: &str = "block-dirty-bitmap-merge";
        merge.check()?;
        let ret = self.execute(CMD, args(CMD, merge)?).await?;
        expect_empty(CMD, &ret);
        Ok(())
    }

    /// `block-dirty-bitmap-clear`.
    pub async fn block_dirty_bitmap_clear(&self, node: &str, name: &str) -> Result<()> {
        const CMD: &str = "block-dirty-bitmap-clear";
        let ret = self
            .execute(CMD, Some(json!({"node": node, "name": name})))
            .await?;
        expect_empty(CMD, &ret);
        Ok(())
    }
}

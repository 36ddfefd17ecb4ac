//! QEMU's built-in NBD server: `nbd-server-start/stop`, `block-export-add/del`.

use std::path::PathBuf;

use serde::Serialize;
use serde_json::json;

use super::bitmap::BitmapSource;
use super::{args, expect_empty};
use crate::error::Result;
use crate::Client;

/// An NBD export of a block node (`block-export-add` with `type: nbd`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct NbdExport {
    /// Export id (for `block-export-del` and `BLOCK_EXPORT_DELETED`).
    pub id: String,
    /// Node to export.
    pub node_name: String,
    /// NBD export name clients ask for (defaults to the node name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Free-form description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Allow writes (needed for TRIM on a snapshot-access export).
    pub writable: bool,
    /// Dirty bitmaps offered as `qemu:dirty-bitmap:<name>` meta contexts. A read-only export
    /// only accepts disabled bitmaps in 7.2 ("Enabled bitmap ... incompatible with readonly
    /// export"); through snapshot-access use the `{node, name}` form.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bitmaps: Vec<BitmapSource>,
    /// Offer `qemu:allocation-depth`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocation_depth: Option<bool>,
}

impl NbdExport {
    /// A read-only export `name` of `node_name` with id `id`.
    pub fn new(
        id: impl Into<String>,
        node_name: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            node_name: node_name.into(),
            name: Some(name.into()),
            description: None,
            writable: false,
            bitmaps: Vec::new(),
            allocation_depth: None,
        }
    }
}

impl Client {
    /// `nbd-server-start` listening on a unix socket.
    pub async fn nbd_server_start_unix(&self, path: impl Into<PathBuf>) -> Result<()> {
        let path = path.into();
        let ret = self
            .execute(
                "nbd-server-start",
                Some(json!({"addr": {"type": "unix", "data": {"path": path}}})),
            )
            .await?;
        expect_empty("nbd-server-start", &ret);
        Ok(())
    }

    /// `nbd-server-stop`.
    pub async fn nbd_server_stop(&self) -> Result<()> {
        let ret = self.execute("nbd-server-stop", None).await?;
        expect_empty("nbd-server-stop", &ret);
        Ok(())
    }

    /// `block-export-add` of an NBD export on the running server.
    pub async fn block_export_add(&self, export: &NbdExport) -> Result<()> {
        const CMD: &str = "block-export-add";
        let mut a = args(CMD, export)?.unwrap_or_default();
        a["type"] = json!("nbd");
        let ret = self.execute(CMD, Some(a)).await?;
        expect_empty(CMD, &ret);
        Ok(())
    }

    /// `block-export-del`; `hard` disconnects clients instead of waiting for them.
    /// `BLOCK_EXPORT_DELETED` follows once the export is gone.
    pub async fn block_export_del(&self, id: &str, hard: bool) -> Result<()> {
        let mode = if hard { "hard" } else { "safe" };
        let ret = self
            .execute("block-export-del", Some(json!({"id": id, "mode": mode})))
            .await?;
        expect_empty("block-export-del", &ret);
        Ok(())
    }
}

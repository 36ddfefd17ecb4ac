//! Typed wrappers for the commands the backup and the VM runtime use. Each is a thin
//! `impl Client` block over [`crate::Client::execute`]; query results keep unknown members in
//! an `other` map so nothing QEMU says is lost.

pub mod bitmap;
pub mod block;
pub mod job;
pub mod machine;
pub mod mirror;
pub mod nbd_server;
pub mod transaction;

use serde_json::Value;

use crate::error::{Error, Result};

/// Serialises command arguments; our argument types always serialise.
pub(crate) fn args<T: serde::Serialize>(command: &str, value: &T) -> Result<Option<Value>> {
    serde_json::to_value(value)
        .map(Some)
        .map_err(|e| Error::Protocol {
            peer: "qmp",
            detail: format!("{command}: arguments do not serialise: {e}"),
        })
}

/// Expects an empty `return` (`{}`); anything else is tolerated and logged.
pub(crate) fn expect_empty(command: &str, ret: &Value) {
    if !matches!(ret, Value::Object(m) if m.is_empty()) {
        tracing::debug!(command, reply = %ret, "unexpected non-empty return");
    }
}

//! Guest filesystem freeze around the job start, through the guest agent. Thaw is sent on every
//! path, with its own deadline and retries: the agent never thaws by itself on Linux.

use std::path::Path;
use std::time::{Duration, Instant};

use vmdump_qmp::qga;

use crate::log::TaskLog;

/// Deadlines: the ping that decides whether the agent runs, and the freeze itself.
fn timeouts() -> qga::Timeouts {
    qga::Timeouts {
        command: Duration::from_secs(5),
        sync: Duration::from_secs(3),
        freeze: Duration::from_secs(60),
        shutdown: Duration::from_secs(3),
    }
}

/// Freezes the guest's filesystems if the agent answers. Returns the agent connection when a
/// thaw is needed afterwards (also after a failed or timed-out freeze), with the instant the
/// freeze command was sent (the start of the frozen window).
pub async fn freeze(socket: &Path, log: &TaskLog<'_>) -> Option<(qga::Client, Instant)> {
    let agent = match qga::Client::connect_with(socket, timeouts()).await {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(error = %e, "guest agent not reachable");
            log.warn("skipping guest-agent 'fs-freeze', agent configured but not running?");
            return None;
        }
    };
    if let Err(e) = agent.ping().await {
        tracing::debug!(error = %e, "guest agent ping failed");
        log.warn("skipping guest-agent 'fs-freeze', agent configured but not running?");
        return None;
    }
    match agent.fsfreeze_status().await {
        Ok(qga::FreezeStatus::Frozen) => {
            log.info("guest filesystems are already frozen, skipping fs-freeze");
            return None;
        }
        Ok(_) => {}
        Err(e) => {
            log.warn(&format!("guest-fsfreeze-status failed: {e}"));
        }
    }
    log.info("issuing guest-agent 'fs-freeze' command");
    let at = Instant::now();
    if let Err(e) = agent.fsfreeze_freeze().await {
        log.warn(&format!("guest-fsfreeze-freeze problems - {e}"));
    }
    // Even after an error the agent may have frozen some filesystems: always thaw.
    Some((agent, at))
}

/// Thaws, retrying for about 20 s; failures are logged.
pub async fn thaw(agent: &qga::Client, log: &TaskLog<'_>) {
    log.info("issuing guest-agent 'fs-thaw' command");
    let mut last = None;
    for _ in 0..4 {
        match agent.fsfreeze_thaw().await {
            Ok(_) => return,
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    if let Some(e) = last {
        log.error(&format!("guest-fsfreeze-thaw problems - {e}"));
    }
}

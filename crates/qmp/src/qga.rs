//! The QEMU guest agent client (`qga::Client`).
//!
//! The agent speaks QMP-style JSON lines over a virtio-serial port that QEMU exposes as a unix
//! socket, with no greeting. Two things make it different from QMP:
//!
//! - **Nobody answers while the VM is paused** (`-S`, `stop`), and the socket accepts the
//!   request anyway. Every request therefore has a short deadline.
//! - **Stale replies.** A request that timed out is still executed once the guest runs, and its
//!   reply then arrives in front of the next one. After every timeout (and on connect) the
//!   client resynchronises with `guest-sync-delimited`: it sends `0xFF` (which also resets the
//!   agent's parser after a half-written request), then the sync request with a fresh random id,
//!   discards input up to the `0xFF` sentinel the agent puts before its reply, then discards
//!   replies until `{"return": <id>}`. Requests also carry an `id`, which the agent echoes;
//!   replies with another id are dropped.
//!
//! A request that timed out may still take effect later. After a timed-out
//! `guest-fsfreeze-freeze` the caller must send `guest-fsfreeze-thaw` (the agent never thaws on
//! its own on Linux).

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use crate::codec::{encode, excerpt, Frame, DELIMITER};
use crate::connection::{request, FrameReader, Reply};
use crate::error::{Error, Result};

const PEER: &str = "qga";

/// Deadlines of the agent client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Ordinary commands (ping, info, status, thaw, exec): 5 s.
    pub command: Duration,
    /// One `guest-sync-delimited` round trip: 3 s.
    pub sync: Duration,
    /// `guest-fsfreeze-freeze` (syncs every filesystem first): 60 s.
    pub freeze: Duration,
    /// How long to wait for an error reply to `guest-shutdown` (success sends none): 3 s.
    pub shutdown: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            command: Duration::from_secs(5),
            sync: Duration::from_secs(3),
            freeze: Duration::from_secs(60),
            shutdown: Duration::from_secs(3),
        }
    }
}

/// `guest-fsfreeze-status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FreezeStatus {
    /// Filesystems are writable.
    Thawed,
    /// Filesystems are frozen; most agent commands are disabled.
    Frozen,
}

/// `guest-shutdown` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Power off.
    Powerdown,
    /// Halt.
    Halt,
    /// Reboot.
    Reboot,
}

/// One command in `guest-info`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CommandInfo {
    /// Command name.
    pub name: String,
    /// Enabled in this agent (and state: most are disabled while frozen).
    pub enabled: bool,
    /// Whether the command replies on success (`guest-shutdown` does not).
    #[serde(default = "yes")]
    pub success_response: bool,
}

fn yes() -> bool {
    true
}

/// `guest-info`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AgentInfo {
    /// Agent version, e.g. `7.2.22`.
    pub version: String,
    /// Commands the agent knows (the wire name is `supported_commands`, with an underscore).
    pub supported_commands: Vec<CommandInfo>,
}

/// `guest-exec-status`, with the output already decoded from base64.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecStatus {
    /// The process has ended.
    pub exited: bool,
    /// Exit code, once exited normally.
    pub exit_code: Option<i64>,
    /// Signal number, when killed by one.
    pub signal: Option<i64>,
    /// Captured standard output.
    pub stdout: Vec<u8>,
    /// Captured standard error.
    pub stderr: Vec<u8>,
}

#[derive(Debug)]
struct Conn {
    reader: FrameReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    synced: bool,
    next_id: u64,
}

/// A guest agent connection. Requests are serialised (the agent handles one at a time); share it
/// between tasks behind an `Arc`.
#[derive(Debug)]
pub struct Client {
    conn: tokio::sync::Mutex<Conn>,
    timeouts: Timeouts,
    path: PathBuf,
}

impl Client {
    /// Connects and synchronises with default [`Timeouts`]. Fails with a timeout when the agent
    /// does not answer (not running yet, or the VM is paused).
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self> {
        Self::connect_with(path, Timeouts::default()).await
    }

    /// Connects and synchronises with the given deadlines.
    pub async fn connect_with(path: impl AsRef<Path>, timeouts: Timeouts) -> Result<Self> {
        let client = Self::open(path, timeouts).await?;
        client.sync().await?;
        Ok(client)
    }

    /// Connects and synchronises, retrying until `wait` has passed while the socket is missing
    /// or the agent does not answer yet (guest still booting). Other errors return at once.
    pub async fn connect_retry(
        path: impl AsRef<Path>,
        timeouts: Timeouts,
        wait: Duration,
    ) -> Result<Self> {
        let path = path.as_ref();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let err = match Self::connect_with(path, timeouts).await {
                Ok(client) => return Ok(client),
                Err(e) => e,
            };
            let retry = match &err {
                Error::Timeout { .. } | Error::Closed { .. } => true,
                Error::Connect { source, .. } => matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ),
                _ => false,
            };
            if !retry || tokio::time::Instant::now() >= deadline {
                return Err(err);
            }
            tracing::debug!(error = %err, "guest agent not ready yet");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Connects without talking to the agent; the first request synchronises first. Useful for
    /// a VM that may be paused.
    pub async fn open(path: impl AsRef<Path>, timeouts: Timeouts) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|source| Error::Connect {
                path: path.clone(),
                source,
            })?;
        let (read, writer) = stream.into_split();
        Ok(Self {
            conn: tokio::sync::Mutex::new(Conn {
                reader: FrameReader::new(read, PEER),
                writer,
                synced: false,
                next_id: seed_id(),
            }),
            timeouts,
            path,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The deadlines in use.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Resynchronises the stream now (also done automatically after a timeout).
    pub async fn sync(&self) -> Result<()> {
        let mut conn = self.conn.lock().await;
        conn.synced = false;
        conn.resync(self.timeouts.sync).await
    }

    /// Runs a command with the ordinary deadline.
    pub async fn execute(&self, command: &str, args: Option<Value>) -> Result<Value> {
        self.execute_with_timeout(command, args, self.timeouts.command)
            .await
    }

    /// Runs a command with an explicit deadline (resynchronising first if needed).
    pub async fn execute_with_timeout(
        &self,
        command: &str,
        args: Option<Value>,
        timeout: Duration,
    ) -> Result<Value> {
        let mut conn = self.conn.lock().await;
        if !conn.synced {
            conn.resync(self.timeouts.sync).await?;
        }
        conn.exchange(command, args, timeout).await
    }

    /// `guest-ping`.
    pub async fn ping(&self) -> Result<()> {
        self.execute("guest-ping", None).await.map(drop)
    }

    /// `guest-info`.
    pub async fn info(&self) -> Result<AgentInfo> {
        let ret = self.execute("guest-info", None).await?;
        parse("guest-info", ret)
    }

    /// `guest-fsfreeze-status`.
    pub async fn fsfreeze_status(&self) -> Result<FreezeStatus> {
        let ret = self.execute("guest-fsfreeze-status", None).await?;
        parse("guest-fsfreeze-status", ret)
    }

    /// `guest-fsfreeze-freeze`: freezes all guest filesystems, returns how many. On a timeout
    /// the freeze may still happen: always follow up with [`Client::fsfreeze_thaw`].
    pub async fn fsfreeze_freeze(&self) -> Result<u64> {
        let ret = self
            .execute_with_timeout("guest-fsfreeze-freeze", None, self.timeouts.freeze)
            .await?;
        parse("guest-fsfreeze-freeze", ret)
    }

    /// `guest-fsfreeze-freeze-list`: freezes the given mountpoints only.
    pub async fn fsfreeze_freeze_list(&self, mountpoints: &[&str]) -> Result<u64> {
        let ret = self
            .execute_with_timeout(
                "guest-fsfreeze-freeze-list",
                Some(json!({"mountpoints": mountpoints})),
                self.timeouts.freeze,
            )
            .await?;
        parse("guest-fsfreeze-freeze-list", ret)
    }

    /// `guest-fsfreeze-thaw`: returns how many filesystems were thawed (0 if none was frozen).
    pub async fn fsfreeze_thaw(&self) -> Result<u64> {
        let ret = self.execute("guest-fsfreeze-thaw", None).await?;
        parse("guest-fsfreeze-thaw", ret)
    }

    /// `guest-shutdown`. The agent sends no reply on success, so a timeout or a closed
    /// connection counts as success; only an error reply fails. Confirm with QMP's `SHUTDOWN`
    /// event: a paused VM also "succeeds" here.
    pub async fn shutdown(&self, mode: ShutdownMode) -> Result<()> {
        let mode = match mode {
            ShutdownMode::Powerdown => "powerdown",
            ShutdownMode::Halt => "halt",
            ShutdownMode::Reboot => "reboot",
        };
        let result = self
            .execute_with_timeout(
                "guest-shutdown",
                Some(json!({"mode": mode})),
                self.timeouts.shutdown,
            )
            .await;
        match result {
            Ok(_) | Err(Error::Timeout { .. }) | Err(Error::Closed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `guest-exec` of `path` with `args`, capturing output; returns the guest pid.
    pub async fn exec(&self, path: &str, args: &[&str]) -> Result<i64> {
        let ret = self
            .execute(
                "guest-exec",
                Some(json!({"path": path, "arg": args, "capture-output": true})),
            )
            .await?;
        ret.get("pid")
            .and_then(Value::as_i64)
            .ok_or_else(|| Error::Protocol {
                peer: PEER,
                detail: format!("guest-exec: reply without pid: {ret}"),
            })
    }

    /// `guest-exec-status` of a pid from [`Client::exec`].
    pub async fn exec_status(&self, pid: i64) -> Result<ExecStatus> {
        let ret = self
            .execute("guest-exec-status", Some(json!({"pid": pid})))
            .await?;
        let data = |key: &str| -> Result<Vec<u8>> {
            match ret.get(key).and_then(Value::as_str) {
                None => Ok(Vec::new()),
                Some(b64) => base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| Error::Protocol {
                        peer: PEER,
                        detail: format!("guest-exec-status: {key} is not base64: {e}"),
                    }),
            }
        };
        Ok(ExecStatus {
            exited: ret.get("exited").and_then(Value::as_bool).unwrap_or(false),
            exit_code: ret.get("exitcode").and_then(Value::as_i64),
            signal: ret.get("signal").and_then(Value::as_i64),
            stdout: data("out-data")?,
            stderr: data("err-data")?,
        })
    }

    /// Runs `sh -c script` in the guest and waits (polling every 50 ms, at most `timeout`) for
    /// it to exit.
    pub async fn run_shell(&self, script: &str, timeout: Duration) -> Result<ExecStatus> {
        let pid = self.exec("/bin/sh", &["-c", script]).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let status = self.exec_status(pid).await?;
            if status.exited {
                return Ok(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("guest command {}", excerpt(script.as_bytes())),
                    after: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Conn {
    fn take_id(&mut self) -> u64 {
        self.next_id = (self.next_id + 1) & ID_MASK;
        self.next_id
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer.write_all(bytes).await.map_err(|source| {
            if matches!(
                source.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) {
                Error::Closed { peer: PEER }
            } else {
                Error::Io { peer: PEER, source }
            }
        })
    }

    /// The next frame; end of stream is [`Error::Closed`].
    async fn frame(&mut self) -> Result<Frame> {
        self.reader
            .next()
            .await?
            .ok_or(Error::Closed { peer: PEER })
    }

    async fn resync(&mut self, timeout: Duration) -> Result<()> {
        let id = self.take_id();
        let result = tokio::time::timeout(timeout, async {
            let mut out = vec![DELIMITER];
            out.extend(encode(&request(
                "guest-sync-delimited",
                Some(json!({"id": id})),
                None,
            )));
            self.write(&out).await?;
            // Discard up to the sentinel ...
            loop {
                match self.frame().await? {
                    Frame::Delimiter => break,
                    Frame::Line(l) => tracing::debug!(line = %excerpt(&l), "qga resync: discarded"),
                }
            }
            // ... then until our id comes back.
            loop {
                let Frame::Line(line) = self.frame().await? else {
                    continue;
                };
                let reply = serde_json::from_slice::<Value>(&line)
                    .ok()
                    .and_then(Reply::from_message);
                match reply {
                    Some(Reply { outcome: Ok(v), .. }) if v.as_u64() == Some(id) => return Ok(()),
                    _ => tracing::debug!(line = %excerpt(&line), "qga resync: discarded"),
                }
            }
        })
        .await;
        match result {
            Ok(Ok(())) => {
                tracing::debug!(id, "qga synchronised");
                self.synced = true;
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Timeout {
                what: "guest-sync-delimited".into(),
                after: timeout,
            }),
        }
    }

    async fn exchange(
        &mut self,
        command: &str,
        args: Option<Value>,
        timeout: Duration,
    ) -> Result<Value> {
        let id = self.take_id();
        let line = encode(&request(command, args, Some(Value::from(id))));
        let result = tokio::time::timeout(timeout, async {
            self.write(&line).await?;
            loop {
                let Frame::Line(raw) = self.frame().await? else {
                    continue;
                };
                let Some(reply) = serde_json::from_slice::<Value>(&raw)
                    .ok()
                    .and_then(Reply::from_message)
                else {
                    tracing::debug!(line = %excerpt(&raw), "qga: discarded non-reply");
                    continue;
                };
                if reply.id.as_ref().and_then(Value::as_u64) != Some(id) {
                    tracing::debug!(line = %excerpt(&raw), "qga: discarded stale reply");
                    continue;
                }
                return reply.outcome.map_err(|e| e.into_error(command));
            }
        })
        .await;
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if matches!(
                    e,
                    Error::Closed { .. } | Error::Io { .. } | Error::Protocol { .. }
                ) {
                    self.synced = false;
                }
                Err(e)
            }
            Err(_) => {
                self.synced = false;
                Err(Error::Timeout {
                    what: command.to_string(),
                    after: timeout,
                })
            }
        }
    }
}

/// Ids stay below 2^31 so any JSON integer handling keeps them exact.
const ID_MASK: u64 = 0x7fff_ffff;

/// A per-connection starting id, so replies meant for an earlier client never match ours.
fn seed_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (nanos ^ (u64::from(std::process::id()) << 16)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33
}

fn parse<T: serde::de::DeserializeOwned>(command: &str, ret: Value) -> Result<T> {
    serde_json::from_value(ret.clone()).map_err(|e| Error::Protocol {
        peer: PEER,
        detail: format!(
            "{command}: unexpected reply {} ({e})",
            excerpt(ret.to_string().as_bytes())
        ),
    })
}

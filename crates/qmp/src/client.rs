//! The QMP client: one unix-socket connection, a background reader task, replies matched to
//! requests by `id`, events fanned out to subscribers.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

use crate::codec::{encode, excerpt};
use crate::connection::{request, FrameReader, RemoteError, Reply};
use crate::error::{Error, Result};
use crate::event::{Event, Events};
use crate::greeting::Greeting;

/// Default per-command deadline.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Events buffered per subscriber before the slowest one starts losing them.
const EVENT_CAPACITY: usize = 4096;

const PEER: &str = "qmp";

type Pending = HashMap<u64, oneshot::Sender<std::result::Result<Value, RemoteError>>>;

/// State shared between the client handles and the reader task.
#[derive(Debug, Default)]
struct Shared {
    /// Requests waiting for their reply; `None` once the connection is closed.
    pending: Mutex<Option<Pending>>,
}

#[derive(Debug)]
struct Inner {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    /// Never read; only used to create subscriptions (`resubscribe`).
    events: broadcast::Receiver<Event>,
    greeting: Greeting,
    timeout: Duration,
    reader: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A QMP connection in command mode. Cheap to clone; all clones share the connection, and
/// commands from several tasks may be in flight at once.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Connects to a QMP unix socket, reads the greeting and leaves capability negotiation
    /// mode, with [`DEFAULT_TIMEOUT`] per command.
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self> {
        Self::connect_with_timeout(path, DEFAULT_TIMEOUT).await
    }

    /// Like [`Client::connect`] with a different per-command deadline (also used for the
    /// greeting and negotiation).
    pub async fn connect_with_timeout(path: impl AsRef<Path>, timeout: Duration) -> Result<Self> {
        let path = path.as_ref();
        let stream = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| Error::Timeout {
                what: format!("connect to {}", path.display()),
                after: timeout,
            })?
            .map_err(|source| Error::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        let (read, mut write) = stream.into_split();
        let mut reader = FrameReader::new(read, PEER);
        let greeting = tokio::time::timeout(timeout, negotiate(&mut reader, &mut write))
            .await
            .map_err(|_| Error::Timeout {
                what: "qmp greeting and qmp_capabilities".into(),
                after: timeout,
            })??;
        tracing::debug!(version = %greeting.version, path = %path.display(), "qmp connected");

        let shared = Arc::new(Shared {
            pending: Mutex::new(Some(HashMap::new())),
        });
        let (tx, events) = broadcast::channel(EVENT_CAPACITY);
        let reader = tokio::spawn(read_loop(reader, Arc::clone(&shared), tx));
        Ok(Self {
            inner: Arc::new(Inner {
                writer: tokio::sync::Mutex::new(write),
                shared,
                next_id: AtomicU64::new(1),
                events,
                greeting,
                timeout,
                reader,
            }),
        })
    }

    /// Connects like [`Client::connect_with_timeout`], retrying while the socket does not
    /// exist yet, refuses connections (QEMU still starting) or has a full backlog (QEMU has not
    /// yet taken a closed connection off its monitor), for at most `wait`.
    pub async fn connect_retry(
        path: impl AsRef<Path>,
        timeout: Duration,
        wait: Duration,
    ) -> Result<Self> {
        let path = path.as_ref();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match Self::connect_with_timeout(path, timeout).await {
                Err(Error::Connect { source, .. })
                    if tokio::time::Instant::now() < deadline
                        && matches!(
                            source.kind(),
                            std::io::ErrorKind::NotFound
                                | std::io::ErrorKind::ConnectionRefused
                                | std::io::ErrorKind::WouldBlock
                        ) =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    /// The greeting QEMU sent (its version).
    pub fn greeting(&self) -> &Greeting {
        &self.inner.greeting
    }

    /// The per-command deadline.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Whether the connection has ended (QEMU exited or closed the socket).
    pub fn is_closed(&self) -> bool {
        self.inner
            .shared
            .pending
            .lock()
            .map(|p| p.is_none())
            .unwrap_or(true)
    }

    /// A subscription to all events from now on.
    pub fn events(&self) -> Events {
        Events::new(self.inner.events.resubscribe())
    }

    /// Waits for an event matching `pred` that arrives after this call, for at most `timeout`.
    /// To catch events caused by a command, subscribe with [`Client::events`] before sending it.
    pub async fn wait_event(
        &self,
        timeout: Duration,
        pred: impl FnMut(&Event) -> bool,
    ) -> Result<Event> {
        self.events().wait_for(timeout, pred).await
    }

    /// Runs a command with the client's deadline and returns its `return` value.
    pub async fn execute(&self, command: &str, args: Option<Value>) -> Result<Value> {
        self.execute_with_timeout(command, args, self.inner.timeout)
            .await
    }

    /// Runs a command with an explicit deadline. On timeout the late reply is dropped when it
    /// arrives; the connection stays usable.
    pub async fn execute_with_timeout(
        &self,
        command: &str,
        args: Option<Value>,
        timeout: Duration,
    ) -> Result<Value> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.lock_pending()?;
            let Some(map) = pending.as_mut() else {
                return Err(Error::Closed { peer: PEER });
            };
            map.insert(id, tx);
        }
        let line = encode(&request(command, args, Some(Value::from(id))));
        tracing::trace!(command, id, "qmp send");
        let outcome = tokio::time::timeout(timeout, async {
            {
                let mut w = self.inner.writer.lock().await;
                if let Err(source) = w.write_all(&line).await {
                    return Err(if is_disconnect(&source) {
                        Error::Closed { peer: PEER }
                    } else {
                        Error::Io { peer: PEER, source }
                    });
                }
            }
            rx.await.map_err(|_| Error::Closed { peer: PEER })
        })
        .await;
        match outcome {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(remote))) => Err(remote.into_error(command)),
            Ok(Err(e)) => {
                self.forget(id);
                Err(e)
            }
            Err(_) => {
                self.forget(id);
                Err(Error::Timeout {
                    what: command.to_string(),
                    after: timeout,
                })
            }
        }
    }

    /// Runs a command with serialisable arguments and deserialises the result.
    pub async fn call<A: Serialize, T: DeserializeOwned>(
        &self,
        command: &str,
        args: &A,
    ) -> Result<T> {
        let args = serde_json::to_value(args).map_err(|e| Error::Protocol {
            peer: PEER,
            detail: format!("{command}: arguments do not serialise: {e}"),
        })?;
        let ret = self.execute(command, Some(args)).await?;
        parse_return(command, ret)
    }

    /// Runs a command without arguments and deserialises the result.
    pub async fn query<T: DeserializeOwned>(&self, command: &str) -> Result<T> {
        let ret = self.execute(command, None).await?;
        parse_return(command, ret)
    }

    fn lock_pending(&self) -> Result<std::sync::MutexGuard<'_, Option<Pending>>> {
        self.inner
            .shared
            .pending
            .lock()
            .map_err(|_| Error::Closed { peer: PEER })
    }

    fn forget(&self, id: u64) {
        if let Ok(mut p) = self.inner.shared.pending.lock() {
            if let Some(map) = p.as_mut() {
                map.remove(&id);
            }
        }
    }
}

/// Deserialises a `return` value into the caller's type.
pub(crate) fn parse_return<T: DeserializeOwned>(command: &str, ret: Value) -> Result<T> {
    serde_json::from_value(ret).map_err(|e| Error::Protocol {
        peer: PEER,
        detail: format!("{command}: unexpected reply: {e}"),
    })
}

fn is_disconnect(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::NotConnected
            | std::io::ErrorKind::UnexpectedEof
    )
}

async fn negotiate(
    reader: &mut FrameReader<OwnedReadHalf>,
    write: &mut OwnedWriteHalf,
) -> Result<Greeting> {
    let first = next_json(reader).await?;
    let greeting =
        Greeting::parse(&first).map_err(|detail| Error::Protocol { peer: PEER, detail })?;
    let req = encode(&request("qmp_capabilities", None, Some(Value::from(0u64))));
    write
        .write_all(&req)
        .await
        .map_err(|source| Error::Io { peer: PEER, source })?;
    loop {
        let msg = next_json(reader).await?;
        if Event::from_message(&msg).is_some() {
            continue;
        }
        let Some(reply) = Reply::from_message(msg.clone()) else {
            return Err(Error::Protocol {
                peer: PEER,
                detail: format!("unexpected message during negotiation: {msg}"),
            });
        };
        return match reply.outcome {
            Ok(_) => Ok(greeting),
            Err(remote) => Err(remote.into_error("qmp_capabilities")),
        };
    }
}

async fn next_json(reader: &mut FrameReader<OwnedReadHalf>) -> Result<Value> {
    loop {
        match reader.next_message().await? {
            None => return Err(Error::Closed { peer: PEER }),
            Some(None) => continue,
            Some(Some(v)) => return Ok(v),
        }
    }
}

async fn read_loop(
    mut reader: FrameReader<OwnedReadHalf>,
    shared: Arc<Shared>,
    events: broadcast::Sender<Event>,
) {
    loop {
        let msg = match reader.next_message().await {
            Ok(Some(Some(msg))) => msg,
            Ok(Some(None)) => continue,
            Ok(None) => {
                tracing::debug!("qmp connection closed by peer");
                break;
            }
            Err(e @ Error::Protocol { .. }) => {
                // A malformed line does not desynchronise a line protocol: log and go on.
                tracing::warn!(error = %e, "qmp: ignoring malformed message");
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "qmp read failed");
                break;
            }
        };
        if let Some(event) = Event::from_message(&msg) {
            tracing::debug!(event = %event.name, data = %event.data, "qmp event");
            // No subscribers is fine.
            let _ = events.send(event);
            continue;
        }
        let text = msg.to_string();
        let Some(reply) = Reply::from_message(msg) else {
            tracing::warn!(message = %excerpt(text.as_bytes()), "qmp: ignoring unknown message");
            continue;
        };
        let Some(id) = reply.id.as_ref().and_then(Value::as_u64) else {
            tracing::warn!(message = %excerpt(text.as_bytes()), "qmp: reply without our id");
            continue;
        };
        let waiter = shared
            .pending
            .lock()
            .ok()
            .and_then(|mut p| p.as_mut().and_then(|m| m.remove(&id)));
        match waiter {
            Some(tx) => {
                let _ = tx.send(reply.outcome);
            }
            None => tracing::debug!(id, "qmp: late reply after timeout dropped"),
        }
    }
    // Closing: fail every waiter (dropping the senders) and refuse new requests.
    if let Ok(mut p) = shared.pending.lock() {
        p.take();
    }
}

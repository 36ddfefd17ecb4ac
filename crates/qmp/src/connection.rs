//! The I/O edge: a socket read half plus the sans-I/O [`Decoder`], and reply parsing shared by
//! both protocols.

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::codec::{excerpt, Decoder, Frame};
use crate::error::{Error, Result};

/// Reads frames from a socket.
#[derive(Debug)]
pub(crate) struct FrameReader<R> {
    io: R,
    decoder: Decoder,
    peer: &'static str,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(io: R, peer: &'static str) -> Self {
        Self {
            io,
            decoder: Decoder::default(),
            peer,
        }
    }

    /// The next frame, `None` at end of stream.
    pub(crate) async fn next(&mut self) -> Result<Option<Frame>> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => return Ok(Some(frame)),
                Ok(None) => {}
                Err(e) => {
                    return Err(Error::Protocol {
                        peer: self.peer,
                        detail: e.to_string(),
                    })
                }
            }
            let n = self.io.read(&mut chunk).await.map_err(|source| Error::Io {
                peer: self.peer,
                source,
            })?;
            if n == 0 {
                if self.decoder.buffered() > 0 {
                    tracing::debug!(peer = self.peer, "stream ended inside a line");
                }
                return Ok(None);
            }
            self.decoder.feed(&chunk[..n]);
        }
    }

    /// The next JSON message, skipping nothing; `None` at end of stream. A delimiter is
    /// reported as `Some(None)`.
    pub(crate) async fn next_message(&mut self) -> Result<Option<Option<Value>>> {
        match self.next().await? {
            None => Ok(None),
            Some(Frame::Delimiter) => Ok(Some(None)),
            Some(Frame::Line(line)) => match serde_json::from_slice(&line) {
                Ok(v) => Ok(Some(Some(v))),
                Err(e) => Err(Error::Protocol {
                    peer: self.peer,
                    detail: format!("invalid json ({e}): {}", excerpt(&line)),
                }),
            },
        }
    }
}

/// A command reply: `{"return": ...}` or `{"error": {"class", "desc"}}`, with an optional `id`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reply {
    pub(crate) id: Option<Value>,
    pub(crate) outcome: std::result::Result<Value, RemoteError>,
}

/// The `error` member of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RemoteError {
    pub(crate) class: String,
    pub(crate) desc: String,
}

impl RemoteError {
    pub(crate) fn into_error(self, command: &str) -> Error {
        Error::Remote {
            command: command.to_string(),
            class: self.class,
            desc: self.desc,
        }
    }
}

impl Reply {
    /// Interprets a message as a reply; `None` when it is neither `return` nor `error`.
    pub(crate) fn from_message(mut msg: Value) -> Option<Self> {
        let obj = msg.as_object_mut()?;
        let id = obj.remove("id");
        if let Some(ret) = obj.remove("return") {
            return Some(Self {
                id,
                outcome: Ok(ret),
            });
        }
        let err = obj.remove("error")?;
        let field = |k: &str| {
            err.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        Some(Self {
            id,
            outcome: Err(RemoteError {
                class: field("class"),
                desc: field("desc"),
            }),
        })
    }
}

/// Builds `{"execute": cmd, "arguments": args, "id": id}`; `arguments` is left out when null.
pub(crate) fn request(command: &str, args: Option<Value>, id: Option<Value>) -> Value {
    let mut obj = serde_json::Map::new();
    obj.insert("execute".into(), Value::String(command.to_string()));
    if let Some(args) = args.filter(|a| !a.is_null()) {
        obj.insert("arguments".into(), args);
    }
    if let Some(id) = id {
        obj.insert("id".into(), id);
    }
    Value::Object(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replies_are_classified() {
        let r = Reply::from_message(json!({"return": {}, "id": 3})).expect("reply");
        assert_eq!(r.id, Some(json!(3)));
        assert_eq!(r.outcome, Ok(json!({})));
        let r = Reply::from_message(json!({"error": {"class": "GenericError", "desc": "x"}}))
            .expect("reply");
        assert_eq!(r.id, None);
        assert_eq!(
            r.outcome,
            Err(RemoteError {
                class: "GenericError".into(),
                desc: "x".into()
            })
        );
        assert!(Reply::from_message(json!({"event": "STOP"})).is_none());
    }

    #[test]
    fn request_omits_null_arguments() {
        assert_eq!(request("stop", None, None), json!({"execute": "stop"}));
        assert_eq!(
            request("x", Some(json!({"a": 1})), Some(json!(9))),
            json!({"execute": "x", "arguments": {"a": 1}, "id": 9})
        );
    }
}

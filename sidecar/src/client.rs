//! The Rust client of the protocol: connects over WebSocket, keeps the
//! cursor, acknowledges drains and reconnects with resume.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::protocol::{ClientMessage, Cursor, Record, ServerMessage, Subscribe};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad url {0:?}: {1}")]
    Url(String, String),
    #[error("websocket: {0}")]
    Ws(#[from] Box<tokio_tungstenite::tungstenite::Error>),
    #[error("bad server message: {0}")]
    Decode(#[from] serde_json::Error),
}

impl ClientError {
    /// The HTTP status the server refused the WebSocket handshake with
    /// (401: a token is needed).
    pub fn refused_with(&self) -> Option<u16> {
        match self {
            ClientError::Ws(e) => match &**e {
                tokio_tungstenite::tungstenite::Error::Http(resp) => Some(resp.status().as_u16()),
                _ => None,
            },
            _ => None,
        }
    }
}

/// A byte stream a connection runs over: a TCP socket, or a Kubernetes
/// port-forward (`kubectl logstream`).
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

type Ws = tokio_tungstenite::WebSocketStream<Box<dyn Io>>;

/// Bytes read from the socket at a time (see [`Connection::over`]).
const READ_BUFFER: usize = 16 << 10;

/// What to connect to.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// `http://host:port`, `ws://host:port` or a full `/ws` URL.
    pub base: String,
    pub sub: Subscribe,
    pub token: Option<String>,
}

impl ClientOptions {
    /// The `/ws` URL with the subscription as query parameters.
    pub fn url(&self, resume: Option<&Cursor>) -> Result<String, ClientError> {
        let mut base = self.base.trim_end_matches('/').to_string();
        if let Some(rest) = base.strip_prefix("http://") {
            base = format!("ws://{rest}");
        } else if let Some(rest) = base.strip_prefix("https://") {
            base = format!("wss://{rest}");
        }
        if !base.ends_with("/ws") {
            base.push_str("/ws");
        }
        let mut sub = self.sub.clone();
        if let Some(c) = resume {
            sub.resume = Some(c.clone());
        }
        let q = serde_urlencoded::to_string(&sub)
            .map_err(|e| ClientError::Url(base.clone(), e.to_string()))?;
        Ok(if q.is_empty() {
            base
        } else {
            format!("{base}?{q}")
        })
    }
}

/// One open connection.
pub struct Connection {
    ws: Ws,
    /// Position after the last message received.
    pub cursor: Cursor,
}

impl Connection {
    /// Connects over TCP to the URL of `opts`.
    pub async fn open(
        opts: &ClientOptions,
        resume: Option<&Cursor>,
    ) -> Result<Connection, ClientError> {
        let url = opts.url(resume)?;
        let bad = |e: &dyn std::fmt::Display| ClientError::Url(url.clone(), e.to_string());
        let uri: tokio_tungstenite::tungstenite::http::Uri = url.parse().map_err(|e| bad(&e))?;
        if uri.scheme_str() != Some("ws") {
            return Err(bad(&"only ws:// and http:// URLs are supported"));
        }
        let host = uri.host().ok_or_else(|| bad(&"no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = tokio::net::TcpStream::connect((host, uri.port_u16().unwrap_or(80)))
            .await
            .map_err(|e| ClientError::Ws(Box::new(e.into())))?;
        // Small frames (acks) must not wait for a delayed ACK.
        tcp.set_nodelay(true)
            .map_err(|e| ClientError::Ws(Box::new(e.into())))?;
        Connection::over(Box::new(tcp), opts, resume).await
    }

    /// Runs the WebSocket handshake for the URL of `opts` over an already
    /// open byte stream (the host in the URL only names the `Host` header).
    pub async fn over(
        io: Box<dyn Io>,
        opts: &ClientOptions,
        resume: Option<&Cursor>,
    ) -> Result<Connection, ClientError> {
        let url = opts.url(resume)?;
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::Url(url.clone(), e.to_string()))?;
        if let Some(t) = &opts.token {
            let v = HeaderValue::from_str(&format!("Bearer {t}"))
                .map_err(|e| ClientError::Url(url.clone(), e.to_string()))?;
            req.headers_mut().insert("authorization", v);
        }
        // tungstenite zero-fills its whole read buffer (128 KiB by default)
        // before every read: 5 % of an aggregator's CPU pulling 50 sidecars.
        // Frames larger than this are read in several calls.
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER);
        let (ws, _) = tokio_tungstenite::client_async_with_config(req, io, Some(config))
            .await
            .map_err(Box::new)?;
        Ok(Connection {
            ws,
            cursor: resume.cloned().unwrap_or_default(),
        })
    }

    /// Next protocol message; `None` once the server closed. Draining
    /// notices are acknowledged here, after everything before them.
    pub async fn next(&mut self) -> Result<Option<ServerMessage>, ClientError> {
        loop {
            let Some(msg) = self.ws.next().await else {
                return Ok(None);
            };
            match msg.map_err(Box::new)? {
                Message::Text(t) => {
                    let m = ServerMessage::parse(t.as_str())?;
                    match &m {
                        ServerMessage::Records { cursor, .. }
                        | ServerMessage::Subscribed { cursor } => self.cursor.merge(cursor),
                        ServerMessage::Gap { .. } => {}
                        ServerMessage::Draining { cursor } => {
                            self.cursor.merge(cursor);
                            self.send(&ClientMessage::Ack {
                                cursor: self.cursor.clone(),
                            })
                            .await?;
                        }
                        _ => {}
                    }
                    return Ok(Some(m));
                }
                Message::Close(_) => {
                    // Answer the close so the server need not wait for it.
                    let _ = self.ws.close(None).await;
                    return Ok(None);
                }
                _ => continue,
            }
        }
    }

    pub async fn send(&mut self, m: &ClientMessage) -> Result<(), ClientError> {
        let s = serde_json::to_string(m)?;
        self.ws.send(Message::text(s)).await.map_err(Box::new)?;
        Ok(())
    }

    /// Sends raw text (tests of malformed input).
    pub async fn send_text(&mut self, s: &str) -> Result<(), ClientError> {
        self.ws
            .send(Message::text(s.to_string()))
            .await
            .map_err(Box::new)?;
        Ok(())
    }

    /// The close frame's code, if the next frame is a close.
    pub async fn next_raw(&mut self) -> Option<Result<Message, ClientError>> {
        self.ws
            .next()
            .await
            .map(|r| r.map_err(|e| ClientError::Ws(Box::new(e))))
    }
}

/// Follows a stream forever: reconnects with backoff and resumes with the
/// cursor, so no record is lost or repeated while it is in the server's history.
pub async fn follow(
    opts: ClientOptions,
    mut on: impl FnMut(&ServerMessage, Option<&Record>),
) -> Result<(), ClientError> {
    let mut cursor: Option<Cursor> = None;
    let mut backoff = Duration::from_millis(200);
    loop {
        match Connection::open(&opts, cursor.as_ref()).await {
            Ok(mut c) => {
                backoff = Duration::from_millis(200);
                while let Ok(Some(m)) = c.next().await {
                    if let ServerMessage::Records { records, .. } = &m {
                        for r in records {
                            on(&m, Some(r));
                        }
                    } else {
                        on(&m, None);
                    }
                    if let ServerMessage::Reconnect { after_ms, .. } = &m {
                        tokio::time::sleep(Duration::from_millis(*after_ms)).await;
                        break;
                    }
                }
                if !c.cursor.0.is_empty() {
                    cursor = Some(c.cursor.clone());
                }
            }
            Err(e) => tracing::warn!(error = %e, "connect failed"),
        }
        let jitter = Duration::from_millis(u64::from(std::process::id() % 100));
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

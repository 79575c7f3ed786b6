//! The WebSocket transport. [`serve`] is generic over the socket halves so
//! tests can drive it with channels.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::compress;
use super::frame;
use super::query::admit_stream;
use super::stream::{self, Next};
use super::{AppState, ConnGuard};
use crate::filter::Filter;
use crate::hub::format_ts;
use crate::metrics::Transport;
use crate::protocol::{ClientMessage, Cursor, Format, ServerMessage, close};
use crate::session::Session;

/// Marks a request whose connection the accept loop answers itself
/// (server/listen.rs): the handler then hands the accepted connection back in
/// the response instead of waiting for hyper's upgrade.
#[derive(Clone, Copy)]
pub(crate) struct DirectUpgrade;

/// An accepted WebSocket client, ready to be served once the socket speaks
/// WebSocket. In a response extension (which must be `Clone`) for the accept
/// loop to take.
#[derive(Clone)]
pub(crate) struct Accepted(Arc<std::sync::Mutex<Option<Admitted>>>);

pub(crate) struct Admitted {
    st: Arc<AppState>,
    serve: Serve,
    /// permessage-deflate was negotiated: the socket inflates what the
    /// client compresses, and batches go out compressed.
    deflate: bool,
}

/// What an accepted socket is for.
enum Serve {
    /// The protocol's stream, in its connection slot.
    Stream(ConnGuard, Box<Session>),
    /// Another service on this socket (Loki's tail; it holds its own slot).
    Job(Box<dyn Job>),
    /// Nothing: over the connection limit, the client gets a close frame.
    Refused,
}

/// The socket an accepted WebSocket runs on, as one object: the accept
/// loop's TCP socket or hyper's upgraded connection.
pub(crate) trait Socket:
    Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + DataSink + Unpin + Send
{
}

impl<T> Socket for T where
    T: Sink<Message, Error = WsError>
        + Stream<Item = Result<Message, WsError>>
        + DataSink
        + Unpin
        + Send
{
}

type WsError = tokio_tungstenite::tungstenite::Error;

/// A WebSocket service other than the protocol's stream, run on an accepted
/// socket (the server does not know the Loki API; the Loki API gives it a
/// job).
pub(crate) trait Job: Send {
    fn run<'a>(
        self: Box<Self>,
        socket: &'a mut dyn Socket,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

impl Admitted {
    /// Over the connection limit.
    #[cfg(test)]
    pub(crate) fn refused(st: Arc<AppState>) -> Admitted {
        Admitted {
            st,
            serve: Serve::Refused,
            deflate: false,
        }
    }

    /// A client served by `job` (which holds its own connection slot).
    pub(crate) fn job(st: Arc<AppState>, job: Box<dyn Job>) -> Admitted {
        Admitted {
            st,
            serve: Serve::Job(job),
            deflate: false,
        }
    }
}

impl Accepted {
    pub(crate) fn take(&self) -> Option<Admitted> {
        self.0.lock().ok()?.take()
    }
}

pub async fn handler(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    peer: ConnectInfo<std::net::SocketAddr>,
    raw: RawQuery,
    mut req: Request,
) -> Response {
    let accept = match handshake_accept(&headers) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let q = match admit_stream(&st, &headers, peer, raw).await {
        Ok(q) => q,
        Err(r) => return r,
    };
    // The session is made (and positioned) before the upgrade and boxed: the
    // connection then holds a pointer, not the subscription, the filter
    // and the session side by side, which keeps idle connections small.
    let serve = match st.try_connect(Transport::ws) {
        Some(guard) => {
            let session = Session::new(st.hub.clone(), &q.sub, q.filter, st.cfg.session);
            Serve::Stream(guard, Box::new(session))
        }
        None => Serve::Refused,
    };
    let admitted = Admitted {
        st: st.clone(),
        serve,
        deflate: false,
    };
    switch(&st, &mut req, accept, admitted)
}

/// The 101 answer to an accepted WebSocket handshake: on the accept loop's
/// direct path the client rides in the response to the loop; otherwise it
/// waits for hyper's upgrade on a task of its own.
pub(crate) fn switch(
    st: &Arc<AppState>,
    req: &mut Request,
    accept: header::HeaderValue,
    mut admitted: Admitted,
) -> Response {
    let mut resp = Response::new(Body::empty());
    let extensions = if st.compression.cfg.enabled {
        let offers = req.headers().get_all(header::SEC_WEBSOCKET_EXTENSIONS);
        compress::accept_deflate(offers.iter().filter_map(|v| v.to_str().ok()))
            .and_then(|a| header::HeaderValue::from_str(&a).ok())
    } else {
        None
    };
    admitted.deflate = extensions.is_some();
    if req.extensions().get::<DirectUpgrade>().is_some() {
        resp.extensions_mut()
            .insert(Accepted(Arc::new(std::sync::Mutex::new(Some(admitted)))));
    } else {
        let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
            return (
                StatusCode::UPGRADE_REQUIRED,
                "this connection cannot be upgraded\n",
            )
                .into_response();
        };
        let tasks = st.sessions.clone();
        st.sessions.spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    spawn_on(&tasks, TokioIo::new(upgraded), admitted);
                }
                Err(e) => tracing::debug!(error = %e, "websocket upgrade"),
            }
        });
    }
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("upgrade"),
    );
    h.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(e) = extensions {
        h.insert(header::SEC_WEBSOCKET_EXTENSIONS, e);
    }
    resp
}

/// Runs an accepted client on `io` (the handshake done), inflating what it
/// sends when it negotiated compression: two socket types, so a connection
/// without compression carries nothing of it.
pub(crate) fn spawn_on<T: Wire + 'static>(
    tasks: &tokio_util::task::TaskTracker,
    io: T,
    admitted: Admitted,
) {
    let st = admitted.st.clone();
    if admitted.deflate {
        // Boxed: the task holds a pointer where it would hold the socket.
        let io = Box::new(Inflating::new(io, st.cfg.max_message_bytes));
        if let Some(ws) = socket(io, &st) {
            drop(st);
            spawn_admitted(tasks, ws, admitted);
        }
    } else if let Some(ws) = socket(io, &st) {
        drop(st);
        spawn_admitted(tasks, ws, admitted);
    }
}

/// Checks the WebSocket handshake headers (RFC 6455 4.2.1) and returns the
/// `Sec-WebSocket-Accept` answer, or the refusal.
#[allow(clippy::result_large_err)]
pub(crate) fn handshake_accept(headers: &HeaderMap) -> Result<header::HeaderValue, Response> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let refuse = |why: &str| (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response();
    if !has_token(header::CONNECTION, "upgrade") {
        return Err(refuse("Connection header did not include 'upgrade'"));
    }
    if !has_token(header::UPGRADE, "websocket") {
        return Err(refuse("`Upgrade` header did not include 'websocket'"));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(refuse(
            "`Sec-WebSocket-Version` header did not include '13'",
        ));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(refuse("`Sec-WebSocket-Key` header missing"));
    };
    // RFC 6455 4.1/4.2.1: a random 16-byte value, base64-encoded.
    use base64::Engine as _;
    if base64::engine::general_purpose::STANDARD
        .decode(key.as_bytes())
        .map_or(true, |k| k.len() != 16)
    {
        return Err(refuse(
            "`Sec-WebSocket-Key` must be 16 bytes, base64-encoded (24 characters)",
        ));
    }
    header::HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
        .map_err(|_| refuse("bad `Sec-WebSocket-Key`"))
}

/// `io` as the server end of a WebSocket whose handshake is done.
///
/// tokio-tungstenite's constructor is async but does no I/O: it is polled
/// once here instead of awaited, so the connection's state never holds it
/// beside the socket it returns (which made idle connections ~300 B bigger).
pub(crate) fn socket<S>(io: S, st: &AppState) -> Option<WebSocketStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let made = WebSocketStream::from_raw_socket(io, Role::Server, Some(config(st))).now_or_never();
    if made.is_none() {
        tracing::error!("WebSocket setup did not complete at once");
    }
    made
}

/// The socket limits of a connection (server/state.rs sizes them).
fn config(st: &AppState) -> WebSocketConfig {
    let cfg = &st.cfg;
    WebSocketConfig::default()
        .read_buffer_size(cfg.ws_read_buffer_bytes)
        .write_buffer_size(cfg.ws_buffer_bytes)
        .max_write_buffer_size(cfg.ws_max_write_buffer(false))
        .max_message_size(Some(cfg.max_message_bytes))
        .max_frame_size(Some(cfg.ws_max_frame()))
}

/// Runs an accepted socket on a task of `tasks`: the protocol's stream (or
/// the close of a client over the limit), or the job it was accepted for.
/// Two task types, not one future with both: the job's branch made every
/// stream's task 32 bytes larger, past an allocator size class (about 240
/// bytes more per idle connection, bench/RESULTS.md).
pub(crate) fn spawn_admitted<S: Socket + 'static>(
    tasks: &tokio_util::task::TaskTracker,
    mut socket: S,
    mut admitted: Admitted,
) {
    match std::mem::replace(&mut admitted.serve, Serve::Refused) {
        Serve::Job(job) => {
            drop(admitted);
            tasks.spawn(async move { job.run(&mut socket).await });
        }
        serve => {
            admitted.serve = serve;
            // Captured, not passed: the task holds each once.
            tasks.spawn(async move { run_admitted(&mut socket, &mut admitted).await });
        }
    }
}

/// Serves an accepted client on its WebSocket to the end.
///
/// Both are borrowed: the caller's task owns them (captured, not rebound,
/// so each is held once).
async fn run_admitted<S: Socket>(socket: &mut S, admitted: &mut Admitted) {
    match &mut admitted.serve {
        Serve::Stream(guard, session) => {
            Box::pin(serve(socket, &admitted.st, session, guard)).await;
        }
        Serve::Job(_) | Serve::Refused => {
            let msg = close_msg(close::TRY_AGAIN_LATER, "connection limit reached");
            let _ = Box::pin(socket.send(msg)).await;
        }
    }
}

pub(crate) fn close_msg(code: u16, reason: &str) -> Message {
    // A close frame's reason is at most 123 bytes (control frames carry 125).
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from(reason[..end].to_string()),
    }))
}

fn text(s: String) -> Message {
    Message::Text(Utf8Bytes::from(s))
}

/// How a connection sends batches of records.
///
/// tungstenite formats every frame into a write buffer that keeps its
/// largest size for as long as the connection lives: after one 64 KiB batch
/// (a `tail=1000` replay) an idle connection held ~74 KB instead of ~2 KB.
/// Record batches therefore go to the socket directly, framed with
/// tungstenite's own header code, and nothing of them stays behind. On a
/// connection that negotiated permessage-deflate a batch worth it goes as
/// the compressed message every such client shares
/// (server/compress.rs).
pub trait DataSink {
    /// Sends `text` as one text message; `TimedOut` when the client takes
    /// nothing for the send timeout.
    fn send_text<'a>(
        &'a mut self,
        text: String,
        st: &'a AppState,
    ) -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send + 'a>>;
}

/// What a WebSocket runs on: the accept loop's TCP socket, hyper's upgraded
/// connection, or either with compressed client messages inflated.
pub(crate) trait Wire: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {
    /// permessage-deflate was negotiated.
    const DEFLATE: bool = false;
}

impl Wire for tokio::net::TcpStream {}
impl Wire for TokioIo<hyper::upgrade::Upgraded> {}
impl Wire for tokio::io::DuplexStream {}
impl<T: Wire> Wire for Inflating<T> {
    const DEFLATE: bool = true;
}
impl<T: Wire> Wire for Box<Inflating<T>> {
    const DEFLATE: bool = true;
}

impl<T: Wire> DataSink for WebSocketStream<T> {
    fn send_text<'a>(
        &'a mut self,
        text: String,
        st: &'a AppState,
    ) -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send + 'a>> {
        Box::pin(async move {
            let stall = st.cfg.send_timeout;
            // Whatever tungstenite queued (pongs, control frames) goes first,
            // so frames never interleave.
            match tokio::time::timeout(stall, SinkExt::flush(self)).await {
                Ok(r) => r.map_err(std::io::Error::other)?,
                Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
            }
            let c = &st.compression;
            let payload = if T::DEFLATE && c.worth(text.len()) {
                let plain = text.len();
                let (packed, found) = c.pack(bytes::Bytes::from(text)).await;
                let msg = packed.message();
                st.metrics
                    .compressed(Transport::ws, plain, msg.len(), found);
                Err(msg)
            } else {
                Ok(text)
            };
            let header = FrameHeader {
                opcode: OpCode::Data(Data::Text),
                rsv1: payload.is_err(),
                ..FrameHeader::default()
            };
            let body: &[u8] = match &payload {
                Ok(text) => text.as_bytes(),
                Err(msg) => msg,
            };
            let mut head = Vec::with_capacity(10);
            header
                .format(body.len() as u64, &mut head)
                .map_err(std::io::Error::other)?;
            let io = self.get_mut();
            let mut out = bytes::Buf::chain(&head[..], body);
            super::write::write_all_progressing(io, &mut out, stall).await
        })
    }
}

/// Why a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    ClientClosed,
    /// The connection dropped without a closing handshake.
    ClientGone,
    Drained,
    DrainTimeout,
    TooSlow,
    TooBig,
    SendFailed,
    SendTimeout,
    PeerSilent,
    /// The client broke the framing rules (tungstenite's description).
    ProtocolError(String),
    /// A text message that is not UTF-8.
    BadText,
    /// Over a message rate limit.
    RateLimited(super::limits::Limited),
}

/// Runs one WebSocket client to the end.
///
/// Everything is borrowed from the connection task and every send is boxed
/// while in flight: what an idle connection holds is only what it waits on
/// (see bench/ANALYSIS.md on memory per connection).
pub async fn serve<S, E>(
    ws: &mut S,
    st: &Arc<AppState>,
    session: &mut Session,
    _guard: &ConnGuard,
) -> End
where
    S: Sink<Message> + Stream<Item = Result<Message, E>> + DataSink + Unpin,
    E: std::error::Error + Send + Sync + 'static,
{
    let end = Box::pin(run(ws, st, session)).await;
    tracing::debug!(?end, "websocket session ended");
    let (code, reason, dropped) = match &end {
        End::ClientClosed => (None, "", None),
        End::Drained | End::DrainTimeout => (Some(close::GOING_AWAY), "server shutting down", None),
        // Counted as a drop where the policy was applied (stream.rs).
        End::TooSlow => (Some(close::POLICY), "slow consumer", None),
        End::TooBig => (
            Some(close::TOO_BIG),
            "message too big",
            Some("message_too_big"),
        ),
        End::SendFailed | End::ClientGone => (None, "", None),
        End::SendTimeout => (None, "", Some("send_timeout")),
        End::PeerSilent => (Some(close::POLICY), "no pong", Some("pong_timeout")),
        End::ProtocolError(why) => (Some(close::PROTOCOL), why.as_str(), Some("protocol_error")),
        End::BadText => (
            Some(close::INVALID_DATA),
            "text message is not UTF-8",
            Some("invalid_utf8"),
        ),
        End::RateLimited(why) => (Some(close::POLICY), why.message(), Some("rate_limited")),
    };
    if let Some(reason) = dropped {
        st.metrics.dropped(reason);
    }
    if end == End::ClientClosed {
        // tungstenite queued the reply to the client's close frame; flush it,
        // or the client sees the connection drop (1006) instead of a clean close.
        let _ = Box::pin(tokio::time::timeout(Duration::from_secs(1), ws.close())).await;
    }
    if let Some(code) = code {
        let send = ws.send(close_msg(code, reason));
        let _ = Box::pin(tokio::time::timeout(Duration::from_secs(1), send)).await;
        // Closing handshake with a responsive peer: wait briefly for its
        // close so it reads ours before the socket goes away.
        // (A flooding client too: closing under its unread messages would
        // reset the connection and lose the close frame on its side.)
        let responsive = matches!(end, End::TooBig | End::Drained | End::RateLimited(_));
        if responsive {
            let _ = Box::pin(tokio::time::timeout(Duration::from_secs(1), async {
                while let Some(Ok(m)) = ws.next().await {
                    if matches!(m, Message::Close(_)) {
                        break;
                    }
                }
            }))
            .await;
        }
    }
    end
}

async fn run<S, E>(ws: &mut S, st: &Arc<AppState>, session: &mut Session) -> End
where
    S: Sink<Message> + Stream<Item = Result<Message, E>> + DataSink + Unpin,
    E: std::error::Error + Send + Sync + 'static,
{
    let cfg = &st.cfg;
    let metrics = &st.metrics;
    let send_timeout = cfg.send_timeout;
    // Awaits a send under the send timeout, ending the connection when it
    // fails; boxed, so it costs nothing while the connection idles.
    macro_rules! sent {
        ($send:expr) => {
            match Box::pin(tokio::time::timeout(send_timeout, $send)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return End::SendFailed,
                Err(_) => return End::SendTimeout,
            }
        };
    }
    macro_rules! send {
        // The message is built in its own statement so its temporaries are
        // gone before the await.
        ($msg:expr) => {{
            let msg = { $msg };
            sent!(ws.send(msg))
        }};
    }
    let format = session.filter.format;
    send!(text(frame::notice(&stream::hello(session, cfg), format)));
    let mut head = session.watch();
    // Pings follow the server's shared clock (server/listen.rs).
    let mut pinged = st.ping_epoch.load(Ordering::Relaxed);
    let mut last_heard = Instant::now();
    let mut draining: Option<Cursor> = None;
    // Boxed and made only once draining starts: an idle connection keeps no timer for it.
    let mut drain_deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        if draining.is_none() {
            head.borrow_and_update();
            // Once the client asked for watermarks, every round ends with
            // one (on the last batch or alone): it need not ask for most.
            // The state lives in the session: every idle connection
            // carries this future.
            session.begin_round();
            // Until Idle or an end: even at the head one more step is taken,
            // or a close seen before the wake-up above would be missed
            // (regression: a drain waited for the next ping). The drain
            // wakes the hub's waiters (server/listen.rs), so a reconnect is
            // seen at once.
            loop {
                match stream::next(session, st) {
                    Next::Records(entries) => {
                        let data = match format {
                            Format::Json => {
                                let mark = session.batch_watermark();
                                frame::records_json(&entries, &session.cursor(), mark)
                            }
                            Format::Raw => frame::raw_lines(&entries),
                        };
                        let bytes = data.len();
                        if let Err(end) = Box::pin(send_batch(ws, data, session, st)).await {
                            return end;
                        }
                        metrics.sent(Transport::ws, entries.len(), bytes);
                    }
                    Next::Gap {
                        missed,
                        reason,
                        cursor,
                    } => {
                        let m = ServerMessage::Gap {
                            missed,
                            reason,
                            cursor,
                        };
                        send!(text(frame::notice(&m, format)));
                    }
                    Next::TooSlow => return End::TooSlow,
                    Next::Idle => {
                        if let Some(ts) = session.end_round() {
                            // Built inside the send: nothing of it is held
                            // across the await.
                            send!(text(frame::message(&ServerMessage::Watermark {
                                ts: format_ts(ts),
                                cursor: session.cursor(),
                            })));
                        }
                        break;
                    }
                    Next::Reconnect(m) => {
                        send!(text(frame::notice(&m, format)));
                        return End::Drained;
                    }
                    Next::Drained(cursor) => {
                        let m = ServerMessage::Draining {
                            cursor: cursor.clone(),
                        };
                        send!(text(frame::notice(&m, format)));
                        draining = Some(cursor);
                        drain_deadline = Some(Box::pin(tokio::time::sleep(cfg.ack_timeout)));
                        break;
                    }
                }
            }
        }
        // One future at most (the hub's); the socket and the timers are
        // polled by hand, so the wait adds little to an idle connection.
        let woke = tokio::select! {
            changed = head.changed(), if draining.is_none() => Wake::Hub(changed.is_ok()),
            w = std::future::poll_fn(|cx| poll_wake(ws, &mut drain_deadline, cx)) => w,
        };
        match woke {
            Wake::Hub(true) => {
                let epoch = st.ping_epoch.load(Ordering::Relaxed);
                if epoch != pinged {
                    pinged = epoch;
                    if last_heard.elapsed() >= cfg.pong_timeout {
                        return End::PeerSilent;
                    }
                    send!(Message::Ping(bytes::Bytes::new()));
                }
            }
            // The hub is gone: nothing more will come.
            Wake::Hub(false) => return End::Drained,
            Wake::Client(msg) => {
                last_heard = Instant::now();
                // Handled by a plain function: the parsed message never
                // lives across an await, so it takes no room in the
                // connection's state while it idles.
                match on_client_message(msg, session, draining.as_ref(), st) {
                    Step::Continue => {}
                    Step::Reply(m) => send!(m),
                    Step::End(end) => return end,
                }
                // A new filter may wait on another wake class (the loop
                // pulls before it waits again: nothing is missed); only
                // then is the hub watched anew (an aggregator's watermark
                // asks come by the hundred a second).
                if session.take_resubscribed() {
                    head = session.watch();
                }
            }
            Wake::DrainTimeout => return End::DrainTimeout,
        }
    }
}

/// Sends one batch of records. While the client is slow to take it, the
/// slow-client policy keeps being applied: a client that stopped reading is
/// closed after its grace, or its gap decided then (reported next), instead
/// of when this write finally completes or stalls for the send timeout.
async fn send_batch<S: DataSink>(
    ws: &mut S,
    data: String,
    session: &mut Session,
    st: &AppState,
) -> Result<(), End> {
    let check =
        (session.limits().slow_grace / 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut send = ws.send_text(data, st);
    loop {
        match tokio::time::timeout(check, &mut send).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(End::SendTimeout);
            }
            Ok(Err(_)) => return Err(End::SendFailed),
            Err(_) if stream::too_slow(session, st) => return Err(End::TooSlow),
            Err(_) => {}
        }
    }
}

enum Wake<E> {
    /// The hub moved (`false`: it is gone).
    Hub(bool),
    Client(Option<Result<Message, E>>),
    DrainTimeout,
}

/// The client's next message or the drain deadline.
fn poll_wake<S, E>(
    ws: &mut S,
    drain_deadline: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<Wake<E>>
where
    S: Stream<Item = Result<Message, E>> + Unpin,
{
    use std::task::Poll;
    if let Poll::Ready(m) = ws.poll_next_unpin(cx) {
        return Poll::Ready(Wake::Client(m));
    }
    if let Some(d) = drain_deadline
        && d.as_mut().poll(cx).is_ready()
    {
        return Poll::Ready(Wake::DrainTimeout);
    }
    Poll::Pending
}

/// What a client message asks of the connection.
enum Step {
    Continue,
    Reply(Message),
    End(End),
}

fn on_client_message<E>(
    msg: Option<Result<Message, E>>,
    session: &mut Session,
    draining: Option<&Cursor>,
    st: &AppState,
) -> Step
where
    E: std::error::Error + Send + Sync + 'static,
{
    let metrics = &st.metrics;
    let msg = match msg {
        None => return Step::End(End::ClientClosed),
        Some(Err(e)) => return Step::End(read_failure(&e)),
        Some(Ok(m)) => m,
    };
    // The session is boxed for the connection's life: its address names
    // the connection in the message buckets (no room taken per connection).
    let conn = std::ptr::from_ref::<Session>(session) as usize;
    let parsed = match &msg {
        Message::Text(t) => Some(serde_json::from_str::<ClientMessage>(t.as_str())),
        _ => None,
    };
    let counted = match &msg {
        Message::Text(_) | Message::Binary(_) | Message::Ping(_) => true,
        Message::Close(_) | Message::Pong(_) | Message::Frame(_) => false,
    };
    let subscribe = matches!(parsed, Some(Ok(ClientMessage::Subscribe(_))));
    // A merging client asks for a watermark whenever a line of another
    // source waits on this one (up to a few hundred a second): counted
    // apart from the other messages, with room for that.
    let watermark = matches!(parsed, Some(Ok(ClientMessage::Watermark)));
    let limited = if watermark {
        st.limits.watermark_on(conn)
    } else if counted {
        st.limits.message_on(conn, subscribe)
    } else {
        Ok(())
    };
    if let Err(why) = limited {
        st.limited(why);
        return Step::End(End::RateLimited(why));
    }
    let error = |code: &str, message: String| {
        metrics.client_errors.inc();
        Step::Reply(text(frame::message(&ServerMessage::Error {
            code: code.into(),
            message,
        })))
    };
    match msg {
        Message::Text(_) => match parsed {
            Some(Ok(ClientMessage::Subscribe(sub))) => match Filter::compile(&sub) {
                Ok(f) => {
                    session.resubscribe(&sub, f);
                    Step::Reply(text(frame::message(&ServerMessage::Subscribed {
                        cursor: session.cursor(),
                    })))
                }
                Err(e) => error("bad_filter", e.to_string()),
            },
            Some(Ok(ClientMessage::Ack { cursor })) => match draining {
                Some(want) if want.0.iter().all(|(sid, seq)| cursor.covers(*sid, *seq)) => {
                    Step::End(End::Drained)
                }
                _ => Step::Continue,
            },
            Some(Ok(ClientMessage::Ping)) => {
                Step::Reply(text(frame::message(&ServerMessage::Pong)))
            }
            // Stamped and answered by the round that follows.
            Some(Ok(ClientMessage::Watermark)) if st.cfg.gives_watermarks() => {
                session.ask_watermark();
                Step::Continue
            }
            Some(Ok(ClientMessage::Watermark)) => error(
                "unsupported",
                format!(
                    "a{} {} gives no watermarks (its hello lists no `watermarks` feature)",
                    if st.cfg.role.starts_with('a') {
                        "n"
                    } else {
                        ""
                    },
                    st.cfg.role
                ),
            ),
            Some(Err(e)) => error("bad_message", e.to_string()),
            // Parsed above for every text message.
            None => Step::Continue,
        },
        Message::Binary(_) => error(
            "bad_message",
            "binary frames are not part of the protocol; send JSON text".into(),
        ),
        Message::Close(_) => Step::End(End::ClientClosed),
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Step::Continue,
    }
}

/// A compressed message the inflating layer refused (an I/O error to
/// tungstenite): too big, or not valid compressed data.
fn refused_inflate(io: &std::io::Error) -> Option<End> {
    match io.get_ref()?.downcast_ref::<InflateError>()? {
        InflateError::TooBig => Some(End::TooBig),
        InflateError::Invalid(why) => Some(End::ProtocolError((*why).into())),
    }
}

/// The close code and a fixed reason for a read that failed because the
/// client broke the protocol (for transports that end with a static
/// reason, such as the Loki tail); `None` for other failures.
pub(crate) fn violation_close<E: std::error::Error + 'static>(
    e: &E,
) -> Option<(u16, &'static str, &'static str)> {
    match read_failure(e) {
        End::ProtocolError(_) => Some((close::PROTOCOL, "protocol violation", "protocol_error")),
        End::BadText => Some((
            close::INVALID_DATA,
            "text message is not UTF-8",
            "invalid_utf8",
        )),
        End::TooBig => Some((close::TOO_BIG, "message too big", "message_too_big")),
        _ => None,
    }
}

/// How a failed read ends the connection: the close code tells the client
/// what it did (RFC 6455 7.4.1), where a bare reset would not.
fn read_failure<E: std::error::Error + 'static>(e: &E) -> End {
    use tokio_tungstenite::tungstenite::Error as WsError;
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(end) = err
            .downcast_ref::<std::io::Error>()
            .and_then(refused_inflate)
        {
            return end;
        }
        if let Some(t) = err.downcast_ref::<WsError>() {
            return match t {
                WsError::Capacity(_) => End::TooBig,
                // The peer went away without a close frame: not a
                // violation, and nothing can be sent to it any more.
                WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => End::ClientGone,
                WsError::Protocol(p) => End::ProtocolError(p.to_string()),
                WsError::Utf8(_) => End::BadText,
                WsError::Io(io) => refused_inflate(io).unwrap_or(End::ClientClosed),
                _ => End::ClientClosed,
            };
        }
        cur = err.source();
    }
    End::ClientClosed
}

mod inflate;
pub use inflate::{InflateError, Inflating};

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
